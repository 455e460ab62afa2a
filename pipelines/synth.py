"""Synthetic campaign batches with known truth: the world (sim_world.py) as of a date
(sim_clock.py), with the exposures its campaigns' policies produced (sim_responses.py), written to
raw/<batch>/ as parquet parts (the raw data contract), the true response probability of every arm
under raw/<batch>/_truth/, and raw/<batch>/_manifest.json written last (a conditional put: a raw
batch id is immutable; landing the identical batch again is a no-op, other content under a landed
id is refused with ingest.BatchExists — pipelines/ingest.py has the rules).

Without a date, the batch is the world at its origin (params data.sim.start_date) with no horizon:
4 past randomized campaigns and the upcoming one. With a date (day d of the simulation), the
batch is the world's snapshot as of that midnight: users, events and campaigns known by then and
the exposures of every campaign whose outcomes have resolved, including the campaigns the
platform itself scored (their committed scores runs decide who got which arm). Batch id = the
ISO date.

Users are generated in chunks (vectorized numpy, one part file per chunk and table), so memory
is bounded by the chunk size, not by the number of users. Output is a deterministic function of
(seed, users, chunk_size, params, date, the scores runs in the store).
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import layout, sim_clock, sim_events, sim_responses, sim_waves, sim_world
from campaignops.validation.contract import SCHEMAS, TABLES

CHUNK_USERS = 50_000
TRUTH_TABLE = "_truth"
ATTRIBUTES_TABLE = "user_attributes"
BROKEN_STREAM = (1 << 40) + 16      # keyed sub-stream of a chunk's seed that shuffles broken outcomes


# --------------------------------------------------------------------------- stores

class LocalStore:
    """A directory with the ObjectStore interface generate() uses (benchmarks, local runs)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.bucket = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def key(self, uri: str) -> str:
        """Inverse of uri()."""
        prefix = self.root.as_uri().rstrip("/") + "/"
        if not uri.startswith(prefix):
            raise ValueError(f"{uri!r} is not under {self.root}")
        return uri[len(prefix):]

    def upload_file(self, path: Path | str, key: str, content_type: str | None = None) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def get_bytes_or_none(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def put_json(self, key: str, obj) -> None:
        self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def get_json(self, key: str):
        return json.loads(self.get_bytes(key))

    def write_table(self, table: pa.Table, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, dest, compression="zstd")

    def read_table(self, key: str) -> pa.Table:
        return pq.read_table(self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        if not self.root.exists():
            return []
        keys = [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()]
        return sorted(k for k in keys if k.startswith(prefix))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for k in keys:
            self._path(k).unlink()
        return len(keys)

    def delete_keys(self, keys) -> int:
        keys = list(keys)
        for k in keys:
            self._path(k).unlink(missing_ok=True)
        return len(keys)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` only if absent (atomic: the bytes go to a temp file, hard-linked into place)."""
        import os

        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".put-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.link(tmp, dest)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)


# --------------------------------------------------------------------------- one chunk

@dataclass
class Day:
    """What a batch needs beyond the world: its clock, the platform's decisions, options."""
    clock: sim_clock.Clock
    seed: int
    decisions: dict[str, sim_responses.Decision]
    broken_outcomes: bool = False
    rows: dict[str, int] = field(default_factory=dict)   # exposures per campaign, over chunks


def _horizon(cs: np.random.SeedSequence, w: sim_world.World, day: Day, first: int, n: int, u: sim_world.Users,
             spill: sim_events.EventDraws):
    """The chunk's world after its origin, up to the snapshot's day: the reviews of the purchases
    the history spills past its end, then each day's signups and events (streams keyed by (chunk,
    day)). Returns (users, new users' tables, event draws, (rng, users) for their CRM flags)."""
    reviews = sim_events._follow_ups(sim_world.substream(cs, sim_world.SPILL_STREAM), u, spill, purchases=False)
    tables, draws, flags = [], [spill, reviews], []
    for d in range(day.clock.day):
        rng = sim_world.substream(cs, sim_world.DAY_STREAM, d)
        new, table = sim_world.new_users_of_day(rng, w, d, sim_world.new_user_numbers(w, first, n, d))
        u = u.concat(new)
        tables.append(table)
        flags.append((sim_world.substream(cs, sim_world.SIGNUP_ATTR_STREAM, d), new))
        draws.append(sim_events.day_events(rng, w, u, d))
    return u, tables, draws, flags


def _sends(rng, w: sim_world.World, day: Day, u: sim_world.Users, n: int, camp: sim_world.Campaign, status: str):
    """The campaign's sends to the chunk's users: a past campaign's from the chunk's stream, a
    simulated day's by the platform's decision if it scored the campaign, else the legacy policy."""
    if status == sim_clock.PAST:
        s = sim_responses.past_sends(rng, w, u, n, camp)
    elif camp.campaign_id in day.decisions:
        s = sim_responses.platform_sends(day.decisions[camp.campaign_id], u, camp)
    else:
        s = sim_responses.legacy_sends(day.seed, w, u, camp)
    return s


def _chunk(cs: np.random.SeedSequence, w: sim_world.World, day: Day, first: int, n: int,
           stats: sim_responses.TruthStats) -> dict[str, pa.Table]:
    """The chunk's tables as of the day. The chunk's own stream draws exactly what the undated
    generator drew, in its order (users, history, past campaigns, CRM flags); everything after
    the origin comes from keyed streams."""
    clock = day.clock
    rng = np.random.default_rng(cs)
    u, users, lo = sim_world._users(rng, w, first, n)
    history, spill = sim_events._history(rng, w, u, lo)
    base, user_tables, draws, flags = u, [users], [history], []
    if clock.day:
        u, more, later, flags = _horizon(cs, w, day, first, n, u, spill)
        user_tables += more
        draws += later
    events, ev_ui, ev_ts = sim_events.events_table(w, u, sim_events.EventDraws.concat(draws))
    rec = sim_events._Recency(ev_ui, ev_ts, w.hist_start - 800 * sim_world.DAY_MS)
    del ev_ts

    exp_parts, truth_parts = [], []
    for camp in clock.known(w.campaigns):
        status = clock.status(camp)
        if status == sim_clock.PENDING:          # sent; its outcomes have not resolved yet
            continue
        if status == sim_clock.UPCOMING:         # every user's truth at its start
            ui, t = np.arange(u.n), np.full(u.n, camp.start_ms, np.int64)
            p, er = sim_world.true_arms(u, ui, t, rec.count(ui, t), camp)
            stats.add(camp.campaign_id, p)
            truth_parts.append(sim_responses.truth_table(w, u, camp, ui, p, er, exposed=False))
            continue
        s = _sends(rng, w, day, u, n, camp, status)
        p, er = sim_world.true_arms(u, s.ui, s.t, rec.count(s.ui, s.t), camp)
        responded, revenue = sim_responses.drawn_outcomes(rng, u, s, p) if status == sim_clock.PAST \
            else sim_responses.keyed_outcomes(day.seed, u, s, p)
        exp_parts.append(sim_responses.exposures_table(w, u, s, responded, revenue))
        stats.add(camp.campaign_id, p, s.arm, responded)
        day.rows[camp.campaign_id] = day.rows.get(camp.campaign_id, 0) + len(s.ui)
        truth_parts.append(sim_responses.truth_table(w, u, camp, s.ui, p, er, exposed=True))
    exposures = pa.concat_tables(exp_parts) if exp_parts else SCHEMAS["exposures"].empty_table()
    if day.broken_outcomes:
        exposures = sim_responses.break_outcomes(exposures, sim_world.substream(cs, BROKEN_STREAM))
    out = {"users": pa.concat_tables(user_tables), "events": sim_clock.before(events, "ts", clock.date_ms),
           "exposures": exposures, TRUTH_TABLE: pa.concat_tables(truth_parts)}
    if w.crm_attributes:   # drawn last: the other tables do not depend on whether it is written
        out[ATTRIBUTES_TABLE] = pa.concat_tables([sim_world._attributes(rng, w, base)]
                                                 + [sim_world._attributes(r, w, new) for r, new in flags])
    return out


# --------------------------------------------------------------------------- entry point

def _part_key(batch: str, table: str, i: int, path: Path) -> str:
    """part-NNNNN-<sha256[:16]>.parquet: content-addressed, so a lander with other bytes never
    overwrites a landed batch's part (pipelines/ingest.py)."""
    from campaignops.pipelines.ingest import part_key

    return part_key(layout.truth_prefix(batch) if table == TRUTH_TABLE else layout.raw_prefix(batch, table), i, path)


def _decisions(store, w: sim_world.World, clock: sim_clock.Clock) -> dict[str, sim_responses.Decision]:
    """The platform's committed scores runs of the simulated days' campaigns resolved by the date."""
    out = {}
    for camp in w.campaigns:
        if clock.status(camp) == sim_clock.RESOLVED:
            d = sim_waves.load_decision(store, camp, clock)
            d = d if d is not None else sim_responses.load_decision(store, camp)
            if d is not None:
                out[camp.campaign_id] = d
    return out


def _sim_block(w: sim_world.World, day: Day, new_users: int) -> dict:
    """manifest["sim"]: the day, the clock's params and, per campaign known by then, its status
    and, once its exposures are in, the policy that chose them (and the platform's scores run)."""
    clock, campaigns = day.clock, {}
    for camp in clock.known(w.campaigns):
        status = clock.status(camp)
        entry = {"status": status, "start": sim_clock.utc_datetime(camp.start_ms).isoformat()}
        if status in (sim_clock.PAST, sim_clock.RESOLVED):
            d = day.decisions.get(camp.campaign_id)
            entry.update(policy=sim_responses.PLATFORM if d else sim_responses.LEGACY,
                         exposures=day.rows.get(camp.campaign_id, 0))
            if d and d.wave is not None:    # sent in waves: the allocation versions decided the landed ones
                entry.update(allocation_version=d.run_id, allocation_manifest=d.manifest_key, landed_users=d.rows,
                             waves_landed=sorted({int(x) for x in d.wave}))
            elif d:
                entry.update(scores_run_id=d.run_id, scores_manifest=d.manifest_key, scored_users=d.rows)
        campaigns[camp.campaign_id] = entry
    return {"day": clock.day, "start_date": sim_clock.utc_datetime(clock.start_ms).date().isoformat(),
            "horizon_days": clock.days, "outcome_delay_days": clock.delay_days, "new_users_per_day": w.new_per_day,
            "new_users": new_users, "broken_outcomes": day.broken_outcomes, "campaigns": campaigns}


def generate(settings: Settings, users: int | None = None, seed: int | None = None, batch: str | None = None,
             store=None, progress: bool = True, chunk_size: int = CHUNK_USERS, date=None,
             broken_outcomes: bool = False, replace: bool = False) -> dict:
    """Write a synthetic batch to raw/<batch>/ (one parquet part per chunk of users and table,
    truth under raw/<batch>/_truth/, the manifest last). Returns the manifest.

    `date` (ISO date within params data.sim's calendar): the world's snapshot as of that midnight,
    batch id = the date by default; the campaigns of simulated days use the scores runs committed
    in `store` by now. `broken_outcomes`: shuffle responded/revenue across each part's exposures
    (a broken CRM export, for tests of the evaluation gate).

    A batch id is immutable: if raw/<batch>/_manifest.json exists, the batch is generated and only
    compared (nothing is written): the identical batch returns the landed manifest, other content
    raises ingest.BatchExists (a ValueError) naming the batch. `replace`: delete and rewrite a
    landed batch instead — for what-if simulations in a scratch store only (adjust_sim), never for
    the platform's raw data."""
    p = settings.params["data"]
    users = int(users if users is not None else p["users"])
    seed = int(seed if seed is not None else p["seed"])
    if users < 1 or chunk_size < 1:
        raise ValueError("users and chunk_size must be positive")
    clock = sim_clock.make_clock(p, date)
    batch = str(batch if batch is not None else (clock.date.date().isoformat() if date is not None else p["batch"]))
    if store is None:
        from campaignops.pipelines.storage import ObjectStore

        store = ObjectStore(settings)

    w, chunks_seed = sim_world.make_world(p, users, seed, clock.days)
    calendar = clock.known(w.campaigns)
    upcoming = clock.upcoming(w.campaigns)
    day = Day(clock, seed, _decisions(store, w, clock), bool(broken_outcomes))
    n_chunks = math.ceil(users / chunk_size)
    tables = (*TABLES, ATTRIBUTES_TABLE) if w.crm_attributes else TABLES
    cats = sim_world.categories(w.n_categories)
    stats = sim_responses.TruthStats([c for c in calendar if clock.status(c) != sim_clock.PENDING])

    from campaignops.pipelines import ingest

    if replace:   # a scratch store's what-if rerun: the commit marker goes first, then every old part
        store.delete_prefix(layout.raw_manifest_key(batch))
        store.delete_prefix(f"raw/{batch}/")
    landed = ingest.landed_manifest(store, batch)   # set: generate only to compare, write nothing

    files: dict[str, list[str]] = {t: [] for t in (*tables, TRUTH_TABLE)}
    rows: dict[str, int] = {t: 0 for t in files}
    written: list[str] = []
    tmpdir = Path(tempfile.mkdtemp(prefix="synth-"))

    def put(table: str, data: pa.Table) -> None:
        path = tmpdir / f"{table}.parquet"
        pq.write_table(data, path, compression="zstd")
        key = _part_key(batch, table, len(files[table]), path)
        if landed is None:
            store.upload_file(path, key)
            written.append(key)
        path.unlink()
        files[table].append(key)
        rows[table] += data.num_rows

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    try:
        put("campaigns", sim_world.campaigns_table(calendar, cats))
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("users"), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task(f"synth {batch}", total=users)
            for i, cs in enumerate(chunks_seed.spawn(n_chunks)):
                first = i * chunk_size
                n = min(chunk_size, users - first)
                parts = _chunk(cs, w, day, first, n, stats)
                for table, data in parts.items():
                    put(table, data)
                del parts
                bar.advance(task, n)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    for cid, d in day.decisions.items():
        if day.rows.get(cid, 0) != d.rows:
            raise ValueError(f"scores run {d.manifest_key} scores {d.rows} users, {day.rows.get(cid, 0)} of them are "
                             f"users of this world: it was not scored on this world (seed {seed}, users {users})")

    manifest = {
        "batch": batch,
        "seed": seed,
        "users": rows["users"],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "now": clock.date.isoformat(),
        "date": clock.date.date().isoformat(),
        "upcoming_campaign_id": upcoming.campaign_id,
        "generator": {"name": "campaignops.pipelines.synth", "chunk_size": chunk_size,
                      "history_days": int(p["history_days"]), "events_per_user": w.events_per_user,
                      "n_categories": w.n_categories, "control_share": w.control_share,
                      "exposure_share": w.exposure_share,
                      "n_past_campaigns": w.n_past, "crm_attributes": w.crm_attributes},
        "sim": _sim_block(w, day, rows["users"] - users),
        "tables": {t: {"files": files[t], "rows": rows[t]} for t in tables},
        "truth": {"files": files[TRUTH_TABLE], "rows": rows[TRUTH_TABLE],
                  "stats": stats.summary(upcoming.campaign_id)},
    }
    if landed is not None:   # the id is taken: the same batch is a no-op, other content is refused
        return ingest.settle_landed(store, batch, landed, manifest)
    return ingest.commit_batch(store, batch, manifest, written)  # last: the commit marker (conditional put)
