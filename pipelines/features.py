"""The DVC `features` stage: data/validated → data/features, point-in-time model features of every
exposure (train/valid/holdout: behaviour sequence, user profile, user attributes), the campaigns'
arms, profile snapshots and meta.json with the fitted definitions scoring reuses.

Every feature of a point (an exposure, or a user at a cut-off) uses only data known at the point's
time: events strictly before it, past campaigns that had *ended* before it, and user attributes
with as_of <= it (a value as of `as_of` is known from then on, pipelines/attributes.py).
Population-level definitions (price buckets, RFM score edges, segment centroids, activity tiers)
are fitted once on data strictly before the earliest exposure (`profile_fit.fit_as_of`; the
attribute columns on rows with as_of <= it), stored in meta.json and reused unchanged at scoring
time (pipelines/scoring_frames.py). Each exposure row carries the probability with which the
logging policy chose its arm (`propensity`, null when unknown) for inverse-propensity weighting
in training; `features.exposure_window_days` keeps older exposures out of the training rows
(they stay in the users' campaign history) and meta.json `exposures` reports how many it left out.

Persisted outputs carry pseudonymous ids only (pipelines/privacy.py). The work is done by DuckDB in
chunks of users (contiguous ranges of the user pseudonym), so memory is bounded by the chunk size
and the output order (user pseudonym, exposure pseudonym) does not depend on the number of chunks.
Events and ground truth are split by chunk in one streamed pass each; every output, truth included,
is appended chunk by chunk (a background thread writes while the next chunk is computed).

Its parts: pipelines/sequences.py (event vocabulary, packed steps, sequences), profiles.py (the
point-in-time profile query), segments.py (RFM and k-means fits), profile_snapshots.py (snapshot
tags and their diff).
"""
from __future__ import annotations

import json
import math
import queue
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import attributes, layout, privacy
from campaignops.pipelines.profile_snapshots import SnapshotDiff, tag_snapshot
from campaignops.pipelines.profiles import exposure_history, point_features, profile_columns
from campaignops.pipelines.scoring_frames import campaign_arms, connect
from campaignops.pipelines.segments import FIT_USERS, fit_rfm, fit_segments, raw_matrix
from campaignops.pipelines.sequences import (
    MAX_BUCKETS,
    indexed_events,
    prepare_events,
    vocabulary,
    vocabulary_tables,
)
from campaignops.pipelines.storage import ObjectStore, atomic_dir, sha256_file
from campaignops.validation.contract import CAMPAIGN_TYPES, CHANNELS


def _configure(con: duckdb.DuckDBPyConnection, p: dict, tmp: Path) -> None:
    if p.get("memory_limit"):
        con.execute(f"SET memory_limit = '{p['memory_limit']}'")
    if int(p.get("threads") or 0) > 0:
        con.execute(f"SET threads = {int(p['threads'])}")
    con.execute(f"SET temp_directory = '{tmp / 'spill'}'")
    con.execute("SET preserve_insertion_order = false")


def _fit_base(con: duckdb.DuckDBPyConnection, p: dict) -> dict:
    """Definitions fitted before the per-user pass: fit time and price/gap bucket edges."""
    fit_ts = con.execute("SELECT min(exposure_ts) FROM exposures").fetchone()[0]
    if fit_ts is None:
        fit_ts = con.execute("SELECT max(ts) + INTERVAL 1 MILLISECOND FROM events").fetchone()[0]
    qs = [float(q) for q in p.get("price_quantiles", [0.25, 0.5, 0.75])]
    edges = []
    if qs:
        row = con.execute("SELECT quantile_cont(price, $1::DOUBLE[]) FROM events WHERE ts < $2", [qs, fit_ts]).fetchone()[0]
        edges = sorted(set(round(float(e), 6) for e in row)) if row else []
    gap_edges = [float(h) for h in p.get("gap_bucket_hours", [1, 24, 168])]
    if len(edges) + 2 > MAX_BUCKETS or len(gap_edges) + 3 > MAX_BUCKETS:
        raise ValueError(f"at most {MAX_BUCKETS - 3} gap / {MAX_BUCKETS - 2} price bucket edges")
    return {"fit_as_of": fit_ts.isoformat(sep=" "), "price_edges": edges, "gap_edges_hours": sorted(gap_edges),
            "interest_half_life_days": float(p.get("interest_half_life_days", 14))}


def _exposure_points(con: duckdb.DuckDBPyConnection, p: dict, now_ts: str, holdout_after: str | None = None) -> dict:
    """TEMP TABLE xpts: every exposure with its pseudonyms, chunk, logged propensity (null when
    the batch's exposures do not carry the column) and time split. Exposures older than `now`
    minus features.exposure_window_days have split NULL: they stay in every user's campaign
    history but are no training row, and the split shares are taken over the rest.
    `holdout_after` (an imported log's holdout chosen at import, pipelines/import_holdout.py): the
    holdout is the exposures after it, train : valid before it as features.split's. Returns
    meta.json's `exposures` report (window, rows used and left out, rows with a propensity, the
    import's cut when there is one)."""
    days = p.get("exposure_window_days")
    since = None if days is None else \
        con.execute(f"SELECT TIMESTAMP '{now_ts}' - INTERVAL {int(days)} DAY").fetchone()[0].isoformat(sep=" ")
    used = "true" if since is None else f"exposure_ts >= TIMESTAMP '{since}'"
    x_used = "true" if since is None else f"x.{used}"
    has_propensity = "propensity" in {r[0] for r in con.execute("DESCRIBE exposures").fetchall()}
    q_train, q_valid = p["split"]["train"], p["split"]["train"] + p["split"]["valid"]
    # The split ranks exposures by time, ties broken by their pseudonym: a campaign sent to
    # everyone at one instant (a platform send) is shared between the splits it straddles, not
    # all put on one side of a timestamp quantile (which could leave the holdout empty).
    rank_key = f"exposure_ts, {privacy.pseudonym_sql('exposure_id', 'x')}"
    ranked = f"""SELECT exposure_id, row_number() OVER (ORDER BY {rank_key}) AS rk, count(*) OVER () AS n
                 FROM exposures WHERE {used}"""
    holdout_rule, q1, q2 = "", q_train, q_valid
    if holdout_after is not None:
        t2 = f"TIMESTAMP '{holdout_after.replace('T', ' ')}'"
        ranked += f" AND exposure_ts <= {t2}"
        holdout_rule, q1, q2 = f"WHEN x.exposure_ts > {t2} THEN 'holdout'", q_train / q_valid, 1.0
    con.execute(f"""CREATE TEMP TABLE xpts AS
      WITH ranked AS ({ranked})
      SELECT row_number() OVER () AS point_id, x.exposure_id AS xid, x.user_id, x.exposure_ts AS ts, i.b,
             {privacy.pseudonym_sql('x.exposure_id', 'x')} AS exposure_id, i.ukey AS user_key,
             x.campaign_id, x.variant_id, x.exposure_ts, x.responded, x.revenue,
             {"x.propensity::DOUBLE" if has_propensity else "NULL::DOUBLE"} AS propensity,
             CASE WHEN NOT ({x_used}) THEN NULL {holdout_rule}
                  WHEN r.rk <= round({q1} * r.n) THEN 'train'
                  WHEN r.rk <= round({q2} * r.n) THEN 'valid' ELSE 'holdout' END AS split
      FROM exposures x LEFT JOIN ranked r USING (exposure_id) JOIN ids i USING (user_id)""")
    total, dropped, known = con.execute("SELECT count(*), count(*) FILTER (WHERE split IS NULL), "
                                        "count(propensity) FILTER (WHERE split IS NOT NULL) FROM xpts").fetchone()
    if total and dropped == total:
        raise ValueError(f"params features.exposure_window_days={days}: every one of the {total} exposures is older "
                         f"than {since} (now {now_ts}); widen the window or set it to null (all exposures)")
    report = {"window_days": days, "window_since": since, "used": total - dropped, "outside_window": dropped,
              "with_propensity": known}
    if holdout_after is not None:
        report["holdout_after"] = holdout_after  # the import's cut, not features.split's quantile
    return report


def build(settings: Settings, store: ObjectStore | None = None) -> dict:
    """The DVC `features` stage: data/validated → data/features (train/valid/holdout + arms + meta,
    profile / profile_prev snapshots and segments.json), all keyed by pseudonymous ids."""
    ws = settings.workspace
    p = settings.params["features"]
    seq_len, window, recent = int(p["seq_len"]), int(p["profile_window_days"]), list(p["recent_days"])
    raw_manifest = json.loads((ws / layout.RAW_MANIFEST).read_text())
    salt = privacy.id_salt(settings)
    work = Path(tempfile.mkdtemp(prefix="features-"))
    try:
        con = connect(ws / layout.VALIDATED_DIR)
        _configure(con, p, work)
        privacy.bind_salt(con, salt)
        meta = _build(settings, con, p, seq_len, window, recent, raw_manifest, store, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return meta


def _build(settings, con, p, seq_len, window, recent, raw_manifest, store, work):
    ws = settings.workspace
    vocab = vocabulary(con)
    fit = _fit_base(con, p)
    n_cat = len(vocab["categories"])
    now_ts = con.execute("SELECT coalesce(max(start_ts) FILTER (WHERE start_ts >= (SELECT max(ts) FROM events)), "
                     "max(ts) + INTERVAL 1 MILLISECOND) FROM campaigns, events").fetchone()[0] \
        if not raw_manifest.get("now") else raw_manifest["now"]
    now_ts = str(now_ts).replace("T", " ")
    prev_days = int(p.get("profile_refresh_days", 30))
    prev_ts = con.execute(f"SELECT TIMESTAMP '{now_ts}' - INTERVAL {prev_days} DAY").fetchone()[0].isoformat(sep=" ")

    # Pseudonyms and chunk numbers of every user (contiguous pseudonym ranges).
    n_events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    n_chunks = max(1, math.ceil(n_events / int(p.get("chunk_events", 4_000_000))))
    con.execute(f"""CREATE TEMP TABLE ids AS
      SELECT user_id, ukey, {privacy.bucket_sql('ukey', n_chunks)} AS b FROM (
        SELECT user_id, {privacy.pseudonym_sql('user_id', 'u')} AS ukey
        FROM (SELECT user_id FROM users UNION SELECT user_id FROM exposures))""")
    exposures = _exposure_points(con, p, now_ts, ((raw_manifest.get("import") or {}).get("holdout") or {}).get("after"))
    if n_chunks > 1:  # one pass to split events by chunk (indexed); each chunk then reads only its own part
        vocabulary_tables(con, vocab)
        con.execute(f"""COPY (SELECT e.*, i.b FROM ({indexed_events('events', vocab)}) e JOIN ids i USING (user_id))
                        TO '{work / 'events'}' (FORMAT parquet, PARTITION_BY (b))""")
    truth_src = _stage_truth(settings, store, raw_manifest, work)
    if truth_src and n_chunks > 1:  # truth too, still with raw ids (re-keyed per chunk)
        con.execute(f"""COPY (SELECT t.*, i.b FROM {truth_src} t JOIN ids i USING (user_id))
                        TO '{work / 'truth'}' (FORMAT parquet, PARTITION_BY (b))""")

    # Population definitions (RFM edges, segments, activity tiers) are fitted strictly before
    # fit_as_of on the FIT_USERS users with the smallest pseudonyms: a uniform sample that does
    # not depend on the chunking.
    con.execute(f"""CREATE OR REPLACE TEMP TABLE fpts AS SELECT user_id AS point_id, user_id,
                    TIMESTAMP '{fit['fit_as_of']}' AS ts, ukey FROM ids ORDER BY ukey LIMIT {FIT_USERS}""")
    fit_src, indexed = "events", False
    if n_chunks > 1:  # the smallest pseudonyms live in the first chunks: read only their parts
        last = con.execute("SELECT max(b) FROM ids WHERE user_id IN (SELECT user_id FROM fpts)").fetchone()[0] or 0
        parts = [f"'{work / 'events' / f'b={b}' / '*.parquet'}'" for b in range(last + 1)
                 if (work / "events" / f"b={b}").exists()]
        if parts:
            fit_src, indexed = f"(SELECT * EXCLUDE (b) FROM read_parquet([{', '.join(parts)}]))", True
    prepare_events(con, f"(SELECT * FROM {fit_src} WHERE user_id IN (SELECT user_id FROM fpts))", vocab, fit,
                   indexed=indexed)
    snap = point_features(con, "fpts", vocab, seq_len, window, recent, fit, derive=False, order_by="p.ukey",
                          sequences=False, as_of=fit["fit_as_of"])
    raw = raw_matrix(snap, window)
    fit["rfm_edges"] = fit_rfm(raw)
    fit["segments"] = fit_segments(raw, int(p.get("segments", 6)), int(p.get("segment_seed", 0)), window)
    act = snap.column("activity_rate").to_numpy()
    fit["activity_edges"] = np.quantile(act, [1 / 3, 2 / 3]).tolist() if len(act) else [0.5, 1.5]
    fit["fit_users"] = snap.num_rows
    fit["attributes"] = attributes.prepare(con, ws / layout.VALIDATED_DIR, fit["fit_as_of"],
                                           int(p.get("attribute_max_categories", attributes.MAX_CATEGORIES)))
    del snap, raw

    counts = {"train": 0, "valid": 0, "holdout": 0}
    out_tmp = work / "out"
    out_tmp.mkdir()
    diff = SnapshotDiff(vocab, window)
    with _ParquetOutputs(out_tmp) as out:
        for b in range(n_chunks):
            _build_chunk(con, b, n_chunks, work, vocab, fit, seq_len, window, recent, now_ts, prev_ts, truth_src,
                         counts, diff, out.write)
    any_schema = out.schemas.get("train") or out.schemas.get("valid") or out.schemas.get("holdout")
    for split in counts:
        if split not in out.schemas and any_schema is not None:
            pq.write_table(any_schema.empty_table(), out_tmp / f"{split}.parquet")

    arms = campaign_arms(con)
    profile_cols = profile_columns(recent, n_cat, len(fit["segments"]["names"])) + attributes.columns(fit["attributes"])
    out_dir = ws / layout.FEATURES_DIR
    with atomic_dir(out_dir) as tmp:
        for f in out_tmp.iterdir():
            shutil.move(str(f), tmp / f.name)
        pq.write_table(arms, tmp / "arms.parquet")
        segments = diff.segments_summary(fit, now_ts, prev_ts)
        (tmp / "segments.json").write_text(json.dumps(segments, indent=2, sort_keys=True) + "\n")
        meta = {
            "vocab": vocab,
            "seq_len": seq_len,
            "profile_window_days": window,
            "recent_days": recent,
            "profile_cols": profile_cols,
            "campaign_types": list(CAMPAIGN_TYPES),
            "channels": list(CHANNELS),
            "rows": counts,
            "batch": raw_manifest.get("batch"),
            "now": raw_manifest.get("now"),
            "upcoming_campaign_id": raw_manifest.get("upcoming_campaign_id"),
            "has_truth": bool(truth_src),
            "profile_fit": fit,
            "seq_channels": {
                "seq_gap": {"size": len(fit["gap_edges_hours"]) + 3, "edges_hours": fit["gap_edges_hours"],
                            "doc": "0 pad, 1 first event of the user, 2+ #edges <= hours since previous event"},
                "seq_price": {"size": len(fit["price_edges"]) + 2, "edges": fit["price_edges"],
                              "doc": "0 pad, 1 + #edges <= price"},
            },
            "profile_as_of": now_ts,
            "profile_prev_as_of": prev_ts,
            "profile_diff": diff.summary(),
            "segments": fit["segments"]["names"],
            "ids": {"pseudonymized": True, "scheme": "sha256(salt, kind, id)[:128 bits], salt not stored",
                    "kinds": {"u": "user_id", "x": "exposure_id"}},
            "chunks": n_chunks,
            "exposures": exposures,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        files = sorted(tmp.iterdir())
        with ThreadPoolExecutor(2) as pool:  # hashlib releases the GIL: two files at a time
            meta["hashes"] = dict(zip((f.name for f in files), pool.map(sha256_file, files)))
    return meta


def _build_chunk(con, b, n_chunks, work, vocab, fit, seq_len, window, recent, now_ts, prev_ts, truth_src,
                 counts, diff, write) -> None:
    """Exposure features, profile snapshots and truth of user chunk b, handed to `write`."""
    if n_chunks == 1:
        prepare_events(con, "events", vocab, fit)
    elif (work / "events" / f"b={b}").exists():
        prepare_events(con, f"(SELECT * EXCLUDE (b) FROM read_parquet('{work / 'events' / f'b={b}' / '*.parquet'}'))",
                       vocab, fit, indexed=True)
    else:
        prepare_events(con, "(SELECT * FROM events WHERE false)", vocab, fit)
    con.execute(f"CREATE OR REPLACE TEMP TABLE cpts AS SELECT * EXCLUDE (b, xid) FROM xpts WHERE b = {b}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _hx AS {exposure_history('cpts')}")  # history: every exposure
    con.execute("DELETE FROM cpts WHERE split IS NULL")  # older than the exposure window: no training row
    x = point_features(con, "cpts",
                       vocab, seq_len, window, recent, fit, keep_point_id=False,
                       order_by="p.user_key, p.exposure_id", history="_hx")
    x = x.rename_columns(["user_id" if c == "user_key" else c for c in x.column_names])
    x = _reorder_exposure_columns(attributes.attach(con, x, fit["attributes"], ts_col="exposure_ts"))
    for split in counts:
        part = x.filter(pc.equal(x.column("split"), split))
        counts[split] += part.num_rows
        write(split, part)
    snaps = {}
    for name, ts in (("profile", now_ts), ("profile_prev", prev_ts)):
        con.execute(f"""CREATE OR REPLACE TEMP TABLE spts AS SELECT user_id AS point_id, user_id,
                        TIMESTAMP '{ts}' AS ts, ukey AS user_key FROM ids WHERE b = {b}""")
        s = point_features(con, "spts", vocab, seq_len, window, recent, fit, keep_point_id=False,
                           order_by="p.user_key", sequences=False, as_of=ts, history="_hx")
        s = attributes.attach(con, tag_snapshot(s, vocab, fit, ts), fit["attributes"], as_of=ts)
        snaps[name] = s
        write(name, s)
    diff.add(snaps["profile"], snaps["profile_prev"], fit)
    if truth_src:
        write("truth", _truth_chunk(con, truth_src, work, b, n_chunks))


def _reorder_exposure_columns(x: pa.Table) -> pa.Table:
    head = ["exposure_id", "user_id", "campaign_id", "variant_id", "exposure_ts", "responded", "revenue", "propensity",
            "split"]
    return x.select([*head, *(c for c in x.column_names if c not in head)])


class _ParquetOutputs:
    """One parquet file per output name, appended to in call order by a background thread (pyarrow
    releases the GIL), so writing chunk b overlaps computing chunk b + 1; at most a few tables wait."""

    def __init__(self, out_dir: Path, depth: int = 3):
        self.out_dir, self.schemas = out_dir, {}
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="features-writer", daemon=True)

    def __enter__(self) -> "_ParquetOutputs":
        self._thread.start()
        return self

    def write(self, name: str, table: pa.Table) -> None:
        if self._error:
            raise self._error
        if name not in self.schemas:
            self.schemas[name] = table.schema
        self._queue.put((name, table))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._append(*item)
                except BaseException as e:  # re-raised in the building thread
                    self._error = e

    def _append(self, name: str, table: pa.Table) -> None:
        schema = self.schemas[name]
        if name not in self._writers:  # dictionaries only for strings: numbers and sequences rarely repeat
            self._writers[name] = pq.ParquetWriter(self.out_dir / f"{name}.parquet", schema, compression="zstd",
                                                   use_dictionary=[f.name for f in schema if pa.types.is_string(f.type)])
        if table.num_rows:
            self._writers[name].write_table(table.cast(schema))

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()
        for w in self._writers.values():
            w.close()
        if self._error and not exc[0]:
            raise self._error


def _stage_truth(settings: Settings, store: ObjectStore | None, raw_manifest: dict, work: Path) -> str:
    """Ground truth exists only for synthetic batches; real data has none (evaluation then uses
    IPS). Copies its parts into the work dir (file by file) and returns a DuckDB relation reading
    them, or '' without truth."""
    keys = raw_manifest.get("truth", {}).get("files") or []
    if not keys:
        return ""
    store = store or ObjectStore(settings)
    (work / "truth_raw").mkdir()
    paths = []
    for i, key in enumerate(keys):
        path = work / "truth_raw" / f"part-{i:05d}.parquet"
        if hasattr(store, "download_file"):
            store.download_file(key, path)
        else:
            path.write_bytes(store.get_bytes(key))
        paths.append(f"'{path}'")
    return f"read_parquet([{', '.join(paths)}])"


def _truth_chunk(con: duckdb.DuckDBPyConnection, src: str, work: Path, b: int, n_chunks: int) -> pa.Table:
    """The truth rows of user chunk b, re-keyed with the pseudonyms already computed (a join, not
    a second round of hashing), in (user, exposure, campaign, arm) pseudonym order."""
    part = work / "truth" / f"b={b}"
    if n_chunks == 1:
        rows, ids, xpts = src, "ids", "xpts"
    else:
        rows = f"(SELECT * EXCLUDE (b) FROM read_parquet('{part / '*.parquet'}'))" if part.exists() else \
            f"(SELECT * FROM {src} WHERE false)"
        ids, xpts = f"(SELECT * FROM ids WHERE b = {b})", f"(SELECT * FROM xpts WHERE b = {b})"
    return con.sql(f"""SELECT x.exposure_id, i.ukey AS user_id, t.* EXCLUDE (exposure_id, user_id)
                       FROM {rows} t JOIN {ids} i USING (user_id) LEFT JOIN {xpts} x ON x.xid = t.exposure_id
                       ORDER BY i.ukey, x.exposure_id NULLS LAST, t.campaign_id, t.variant_id""").to_arrow_table()
