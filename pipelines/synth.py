"""Synthetic campaign world with known truth: users, events, campaigns and randomized exposures
written to raw/<batch>/ as parquet parts (the raw data contract), the true response probability
of every arm under raw/<batch>/_truth/, and raw/<batch>/_manifest.json written last.

The world (latent traits are never written, only their consequences and the truth):
- each user has a price sensitivity, a cart-abandonment tendency, an activity level, a share of
  recent activity, an "old" and a "current" interest category with a switch time inside the
  history, a preferred channel (correlated with age) and a base propensity;
- events follow the interest active at their time, purchases follow carts (abandonment),
  reviews follow purchases, prices follow price sensitivity;
- CRM flags (app installed, push / e-mail / SMS opt-in; the optional table user_attributes,
  `data.crm_attributes`) are noisy consequences of the preferred channel, known from signup;
- with `data.channel_coverage`, past campaigns' arms cycle through every channel, so each
  channel has a send history (otherwise channels are drawn per arm);
- the true response logit of a user to an arm at time t is
      base + 0.45·(log1p(#events in the 14 days before t) − 1.3) − 0.05·[sent]
      + channel_multiplier · arm_term,
  where arm_term is price-driven for discount/coupon (negative for insensitive users: sleeping
  dogs), abandonment-driven for free_shipping and driven by the interest active at t matching
  the target category for bundle; channel_multiplier is 1.6 on the preferred channel, else 0.6.

Users are generated in chunks (vectorized numpy, one part file per chunk and table), so memory
is bounded by the chunk size, not by the number of users. Output is a deterministic function of
(seed, users, chunk_size, params).
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import layout
from campaignops.validation.contract import (
    CAMPAIGN_TYPES,
    CHANNELS,
    CONTROL,
    SCHEMAS,
    TABLES,
    TRUTH_SCHEMA,
)

NOW = datetime(2026, 6, 1)          # the world's scoring time (naive UTC), fixed for reproducibility
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
CHUNK_USERS = 50_000
CAMPAIGN_DAYS = 7
CAMPAIGN_SPAN_DAYS = 60             # past campaigns start within the last ~60 days
RECENT_DAYS = 14                    # window of the recency term of the true response
INTEREST_SHARE = 0.7                # share of events in the interest active at event time
GENDERS_P = (("F", 0.48), ("M", 0.48), ("U", 0.04))
REGIONS = ("north", "south", "east", "west", "central", "coastal")
OCCUPATIONS = ("student", "professional", "service", "manual", "self_employed", "retired")
OCC_PS_SHIFT = np.array([0.15, -0.12, 0.05, 0.05, -0.05, 0.08])  # price-sensitivity shift
TRUTH_TABLE = "_truth"
ATTRIBUTES_TABLE = "user_attributes"


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

    def upload_file(self, path: Path | str, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

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


# --------------------------------------------------------------------------- helpers

def _ms(dt: datetime) -> int:
    return int(dt.replace(tzinfo=timezone.utc).timestamp() * 1000)


def _ts_array(ms: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(ms, dtype=np.int64).view("datetime64[ms]"), type=pa.timestamp("ms"))


def _fixed_strings(parts: list, n: int) -> pa.Array:
    """Fixed-width strings built from constant pieces (str) and zero-padded numbers
    ((int array, width)), without a Python loop over rows."""
    cols = []
    for p in parts:
        if isinstance(p, str):
            b = np.frombuffer(p.encode(), dtype=np.uint8)
            cols.append(np.broadcast_to(b, (n, len(b))))
        else:
            nums, width = p
            nums = np.asarray(nums, dtype=np.int64)
            if n and nums.max(initial=0) >= 10 ** width:
                raise ValueError(f"number {nums.max()} does not fit {width} digits")
            powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
            cols.append(((nums[:, None] // powers) % 10 + 48).astype(np.uint8))
    mat = np.ascontiguousarray(np.hstack(cols)) if cols else np.zeros((n, 0), np.uint8)
    width = mat.shape[1]
    if n * width >= 2**31:
        raise ValueError("string column too large for one chunk; lower chunk_size")
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(width)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(mat.reshape(-1)))


def _take(values, idx: np.ndarray) -> pa.Array:
    return pa.array(list(values), pa.string()).take(pa.array(np.asarray(idx, dtype=np.int64)))


def _row_choice(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a row-stochastic matrix."""
    cum = np.cumsum(probs, axis=1)
    cum /= cum[:, -1:]
    return (rng.random(len(probs))[:, None] > cum).sum(axis=1).clip(0, probs.shape[1] - 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def categories(n: int) -> list[str]:
    return [f"c{i:02d}" for i in range(n)]


def interest_weights(n: int) -> np.ndarray:
    """Skewed popularity of categories as interests (c00 most popular)."""
    w = 1.0 / (np.arange(n) + 1.5)
    return w / w.sum()


# --------------------------------------------------------------------------- campaigns

@dataclass
class Arm:
    campaign_id: str
    variant_id: str      # CONTROL for the no-send arm
    type: str | None
    discount_rate: float
    channel: str | None
    target: int          # category index, -1 for none
    cost: float


@dataclass
class Campaign:
    campaign_id: str
    start_ms: int
    end_ms: int
    arms: list[Arm]      # arms[0] is control, then the variants

    @property
    def variants(self) -> list[Arm]:
        return self.arms[1:]


CHANNEL_COST = {"email": 0.05, "push": 0.05, "app": 0.08, "sms": 0.15}


def make_campaigns(rng: np.random.Generator, n_past: int, n_variants: int, n_categories: int,
                   now_ms: int, cover_channels: bool = False) -> list[Campaign]:
    """n_past campaigns inside the last ~60 days (each ~7 days, ending before now) plus one
    upcoming campaign starting at now (the last one)."""
    out = []
    top = max(1, min(4, n_categories))
    span = CAMPAIGN_SPAN_DAYS - CAMPAIGN_DAYS - 1
    # cover_channels: past arms cycle through every channel (a shuffled round-robin), so each
    # channel the team sends on has a history; otherwise (and for the upcoming campaign) every arm
    # draws its channel freely, and a later campaign may use a channel no earlier one did.
    past_channels = None
    if cover_channels:
        cycle = -(-n_past * n_variants // len(CHANNELS))
        past_channels = np.concatenate([rng.permutation(len(CHANNELS)) for _ in range(cycle)])
    offsets = np.linspace(0, span, n_past) if n_past > 1 else np.array([span / 2])
    for c in range(n_past + 1):
        cid = f"C{c + 1:03d}"
        if c < n_past:
            start = now_ms - CAMPAIGN_SPAN_DAYS * DAY_MS + int(offsets[c] * DAY_MS) + int(rng.integers(0, 12)) * HOUR_MS
            end = start + CAMPAIGN_DAYS * DAY_MS - int(rng.integers(0, 24)) * HOUR_MS
            end = min(end, now_ms - HOUR_MS)
        else:
            start, end = now_ms, now_ms + CAMPAIGN_DAYS * DAY_MS
        types = [CAMPAIGN_TYPES[i] for i in rng.permutation(len(CAMPAIGN_TYPES))]
        arms = [Arm(cid, CONTROL, None, 0.0, None, -1, 0.0)]
        for v in range(n_variants):
            typ = types[v % len(types)]
            if typ == "discount":
                dr = float(np.round(rng.uniform(0.15, 0.45) / 0.05) * 0.05)
            elif typ == "coupon":
                dr = float(np.round(rng.uniform(0.05, 0.3) / 0.05) * 0.05)
            elif typ == "bundle":
                dr = float(np.round(rng.uniform(0.0, 0.15) / 0.05) * 0.05)
            else:
                dr = 0.0
            channel = CHANNELS[int(past_channels[c * n_variants + v])] if past_channels is not None and c < n_past else \
                CHANNELS[int(rng.integers(len(CHANNELS)))]
            target = int(rng.integers(top)) if typ == "bundle" else int(rng.integers(n_categories))
            cost = round(CHANNEL_COST[channel] + 0.6 * dr + float(rng.uniform(0, 0.03)), 3)
            arms.append(Arm(cid, f"{cid}-V{v + 1}", typ, round(dr, 2), channel, target, cost))
        out.append(Campaign(cid, int(start), int(end), arms))
    return out


def campaigns_table(campaigns: list[Campaign], cats: list[str]) -> pa.Table:
    rows = [(c, a) for c in campaigns for a in c.variants]
    return pa.Table.from_arrays([
        pa.array([a.campaign_id for _, a in rows], pa.string()),
        pa.array([a.variant_id for _, a in rows], pa.string()),
        pa.array([a.type for _, a in rows], pa.string()),
        pa.array([a.discount_rate for _, a in rows], pa.float64()),
        pa.array([a.channel for _, a in rows], pa.string()),
        pa.array([cats[a.target] if a.target >= 0 else None for _, a in rows], pa.string()),
        pa.array([a.cost for _, a in rows], pa.float64()),
        _ts_array(np.array([c.start_ms for c, _ in rows], dtype=np.int64)),
        _ts_array(np.array([c.end_ms for c, _ in rows], dtype=np.int64)),
    ], schema=SCHEMAS["campaigns"])


# --------------------------------------------------------------------------- one chunk

@dataclass
class World:
    now_ms: int
    history_ms: int
    events_per_user: float
    n_categories: int
    control_share: float
    campaigns: list[Campaign]
    id_width: int
    crm_attributes: bool = False
    exposure_share: float = 0.6     # share of users exposed to each past campaign

    @property
    def hist_start(self) -> int:
        return self.now_ms - self.history_ms


@dataclass
class Users:
    n: int
    number: np.ndarray     # 1-based global user number
    age: np.ndarray
    signup: np.ndarray     # ms
    ps: np.ndarray         # price sensitivity
    abandon: np.ndarray    # cart-abandonment tendency
    base: np.ndarray       # base propensity (logit)
    old: np.ndarray        # interest categories
    cur: np.ndarray
    switch: np.ndarray     # ms: interest old → cur
    pref: np.ndarray       # preferred channel index


def _users(rng: np.random.Generator, w: World, first: int, n: int) -> tuple[Users, pa.Table, np.ndarray]:
    age = np.clip(np.rint(rng.normal(40, 14, n)), 18, 75).astype(np.int32)
    a = (age - 18) / 57.0
    gender = _row_choice(rng, np.tile([p for _, p in GENDERS_P], (n, 1)))
    region = rng.integers(0, len(REGIONS), n)
    occ_p = np.stack([np.clip(0.45 - 1.5 * a, 0.02, None),            # student
                      np.full(n, 0.3), np.full(n, 0.2), np.full(n, 0.18), np.full(n, 0.1),
                      np.clip(2.0 * (a - 0.7), 0.0, None)], axis=1)   # retired
    occ = _row_choice(rng, occ_p)
    in_hist = rng.random(n) < 0.3
    signup = np.where(in_hist,
                      w.hist_start + (rng.random(n) * 0.6 * w.history_ms),
                      w.hist_start - rng.random(n) * 730 * DAY_MS - HOUR_MS).astype(np.int64)

    ps = np.clip(rng.beta(2.0, 2.0, n) + OCC_PS_SHIFT[occ], 0.02, 0.98)
    abandon = rng.beta(2.0, 3.0, n)
    base = rng.normal(-2.6, 0.55, n)
    iw = interest_weights(w.n_categories)
    old = rng.choice(w.n_categories, n, p=iw)
    cur = rng.choice(w.n_categories, n, p=iw)
    same = cur == old
    cur[same] = (cur[same] + rng.integers(1, w.n_categories, same.sum())) % w.n_categories
    lo = np.maximum(signup, w.hist_start)
    sw_lo = lo + 0.2 * (w.now_ms - lo)
    switch = (sw_lo + rng.random(n) * (w.now_ms - 3 * DAY_MS - sw_lo)).astype(np.int64)
    young = np.array([0.15, 0.10, 0.35, 0.40])   # email, sms, push, app
    older = np.array([0.45, 0.35, 0.10, 0.10])
    pref = _row_choice(rng, (1 - a)[:, None] * young + a[:, None] * older)
    number = np.arange(first + 1, first + n + 1, dtype=np.int64)

    u = Users(n, number, age, signup, ps, abandon, base, old, cur, switch, pref)
    table = pa.Table.from_arrays([
        _fixed_strings(["u", (number, w.id_width)], n),
        pa.array(age, pa.int32()),
        _take([g for g, _ in GENDERS_P], gender),
        _take(REGIONS, region),
        _take(OCCUPATIONS, occ),
        _ts_array(signup),
    ], schema=SCHEMAS["users"])
    return u, table, lo


def _events(rng: np.random.Generator, w: World, u: Users, lo: np.ndarray):
    """Events of a chunk's users, sorted by (user, ts). Returns (table, user index, ts ms)."""
    n = u.n
    span = (w.now_ms - lo).astype(np.float64)
    activity = rng.lognormal(-0.18, 0.6, n)
    recent_w = rng.beta(0.7, 2.5, n)
    counts = rng.poisson(w.events_per_user * activity * span / w.history_ms * 0.95)
    counts = np.minimum(counts, 50_000)
    ui = np.repeat(np.arange(n), counts)
    m = len(ui)
    recent = rng.random(m) < recent_w[ui]
    width = np.where(recent, np.minimum(span[ui], 30.0 * DAY_MS), span[ui])
    ts = (w.now_ms - 1 - np.floor(rng.random(m) * width)).astype(np.int64)
    active = np.where(ts < u.switch[ui], u.old[ui], u.cur[ui])
    cat = np.where(rng.random(m) < INTEREST_SHARE, active, rng.integers(0, w.n_categories, m))
    etype = np.where(rng.random(m) < 0.22, 1, 0).astype(np.int8)  # 0 browse, 1 cart
    cat_level = np.linspace(-0.4, 0.4, w.n_categories)
    price = np.exp(rng.normal(math.log(45.0) - 0.9 * u.ps[ui] + cat_level[cat], 0.55))

    # purchases follow carts (unless abandoned), reviews follow purchases
    carts = np.flatnonzero(etype == 1)
    bought = carts[rng.random(len(carts)) >= u.abandon[ui[carts]]]
    p_ts = ts[bought] + rng.exponential(1.5 * HOUR_MS, len(bought)).astype(np.int64) + 1
    keep = p_ts < w.now_ms
    bought, p_ts = bought[keep], p_ts[keep]
    rev = rng.random(len(bought)) < 0.15
    r_src, r_ts = bought[rev], p_ts[rev] + rng.exponential(2 * DAY_MS, rev.sum()).astype(np.int64) + 1
    keep = r_ts < w.now_ms
    r_src, r_ts = r_src[keep], r_ts[keep]

    src = np.concatenate([np.arange(m), bought, r_src])
    ts = np.concatenate([ts, p_ts, r_ts])
    etype = np.concatenate([etype, np.full(len(bought), 2, np.int8), np.full(len(r_src), 3, np.int8)])
    ui = ui[src]
    order = np.lexsort((etype, ts, ui))
    ui, ts, etype, src = ui[order], ts[order], etype[order], src[order]
    cat, price = cat[src], np.round(price[src], 2)

    total = len(ui)
    per_user = np.bincount(ui, minlength=n)
    starts = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    seq = np.arange(total) - starts[ui] + 1
    cats = categories(w.n_categories)
    table = pa.Table.from_arrays([
        _fixed_strings(["e", (u.number[ui], w.id_width), "-", (seq, 6)], total),
        _fixed_strings(["u", (u.number[ui], w.id_width)], total),
        _take(("browse", "cart", "purchase", "review"), etype),
        _take(cats, cat),
        pa.array(price, pa.float64()),
        _ts_array(ts),
    ], schema=SCHEMAS["events"])
    return table, ui, ts


# CRM attributes (the optional raw table user_attributes), noisy consequences of the latent
# preferred channel, known from signup: P(flag = 1 | preferred channel in `pref`) vs otherwise.
CRM_FLAGS = (                                   # name, preferred channels, p if preferred, p otherwise
    ("app_installed", ("push", "app"), 0.9, 0.3),
    ("push_opt_in", ("push",), 0.85, 0.3),
    ("email_opt_in", ("email",), 0.95, 0.55),
    ("sms_opt_in", ("sms",), 0.85, 0.2),
)


def _attributes(rng: np.random.Generator, w: World, u: Users) -> pa.Table:
    """One row per user and CRM flag (value_num 0/1, as_of = signup)."""
    names, values = [], []
    for name, chans, p_in, p_out in CRM_FLAGS:
        hit = np.isin(u.pref, [CHANNELS.index(c) for c in chans])
        values.append((rng.random(u.n) < np.where(hit, p_in, p_out)).astype(np.float64))
        names.append(name)
    k = len(names)
    return pa.Table.from_arrays([
        _fixed_strings(["u", (np.repeat(u.number, k), w.id_width)], u.n * k),
        pa.array(np.tile(names, u.n), pa.string()),
        _ts_array(np.repeat(u.signup, k)),
        pa.array(np.stack(values, axis=1).reshape(-1), pa.float64()),
        pa.nulls(u.n * k, pa.string()),
    ], schema=SCHEMAS["user_attributes"])


class _Recency:
    """Counts each user's events in [t − 14 days, t) via binary search on (user, ts) keys."""

    SHIFT = np.int64(1) << np.int64(42)

    def __init__(self, ui: np.ndarray, ts: np.ndarray, origin: int):
        self.origin = origin
        self.keys = ui.astype(np.int64) * self.SHIFT + (ts - origin)   # sorted: events sorted by (ui, ts)

    def count(self, ui: np.ndarray, t: np.ndarray) -> np.ndarray:
        hi = ui.astype(np.int64) * self.SHIFT + (t - self.origin)
        lo = hi - RECENT_DAYS * DAY_MS
        return np.searchsorted(self.keys, hi, "left") - np.searchsorted(self.keys, lo, "left")


def true_arms(u: Users, ui: np.ndarray, t: np.ndarray, n_recent: np.ndarray, camp: Campaign):
    """True response probability and expected revenue of users `ui` at times `t` under every
    arm of `camp` (column 0 = control). Returns (p [m, A], expected_revenue [m, A])."""
    interest = np.where(t < u.switch[ui], u.old[ui], u.cur[ui])
    ps, ab = u.ps[ui], u.abandon[ui]
    common = u.base[ui] + 0.45 * (np.log1p(n_recent) - 1.3)
    basket = np.exp(math.log(55.0) + 0.5 * (0.5 - ps) + 0.45**2 / 2)
    p = np.empty((len(ui), len(camp.arms)))
    er = np.empty_like(p)
    for j, arm in enumerate(camp.arms):       # loop over the few arms, vectorized over users
        if arm.variant_id == CONTROL:
            logit = common
        else:
            dr = arm.discount_rate
            if arm.type == "discount":
                term = 5.0 * dr * (ps - 0.4)
            elif arm.type == "coupon":
                term = 4.0 * dr * (ps - 0.3) + 0.04
            elif arm.type == "free_shipping":
                term = 1.6 * (ab - 0.33)
            else:  # bundle
                term = 1.3 * (interest == arm.target) - 0.2 + 2.0 * dr * (ps - 0.4)
            mult = np.where(u.pref[ui] == CHANNELS.index(arm.channel), 1.6, 0.6)
            logit = common - 0.05 + mult * term
        p[:, j] = _sigmoid(logit)
        er[:, j] = p[:, j] * basket * (1.0 - arm.discount_rate)
    return p, er


class _Stats:
    """Truth summaries accumulated over chunks (manifest["truth"]["stats"])."""

    def __init__(self, campaigns: list[Campaign]):
        self.c = {c.campaign_id: {"n": 0, "sum_p": np.zeros(len(c.arms)), "sum_best": 0.0, "no_pos": 0,
                                  "best_counts": np.zeros(len(c.arms), np.int64), "responses": 0,
                                  "assigned_p": 0.0, "assigned": np.zeros(len(c.arms), np.int64)}
                  for c in campaigns}
        self.campaigns = {c.campaign_id: c for c in campaigns}

    def add(self, cid: str, p: np.ndarray, assigned: np.ndarray | None = None, responded: np.ndarray | None = None):
        s = self.c[cid]
        s["n"] += len(p)
        s["sum_p"] += p.sum(axis=0)
        s["sum_best"] += float(p.max(axis=1).sum())
        s["no_pos"] += int((p[:, 1:].max(axis=1) <= p[:, 0]).sum())
        s["best_counts"] += np.bincount(p.argmax(axis=1), minlength=p.shape[1])
        if assigned is not None:
            s["responses"] += int(responded.sum())
            s["assigned_p"] += float(p[np.arange(len(p)), assigned].sum())
            s["assigned"] += np.bincount(assigned, minlength=p.shape[1])

    def summary(self, upcoming: str) -> dict:
        out, past = {}, {"n": 0, "oracle": 0.0, "control": 0.0, "best_fixed": 0.0, "no_pos": 0,
                         "responses": 0, "assigned_p": 0.0, "uplift_by_type": {}, "n_by_type": {}}
        for cid, s in self.c.items():
            n = max(s["n"], 1)
            arms = self.campaigns[cid].arms
            mean_p = s["sum_p"] / n
            best_fixed = int(np.argmax(mean_p))
            entry = {
                "n": s["n"],
                "mean_p": {a.variant_id: round(float(x), 5) for a, x in zip(arms, mean_p)},
                "mean_uplift": {a.variant_id: round(float(x - mean_p[0]), 5) for a, x in zip(arms[1:], mean_p[1:])},
                "oracle_value": round(s["sum_best"] / n, 5),
                "control_value": round(float(mean_p[0]), 5),
                "best_fixed_arm": arms[best_fixed].variant_id,
                "best_fixed_value": round(float(mean_p[best_fixed]), 5),
                "share_no_positive_uplift": round(s["no_pos"] / n, 4),
                "best_arm_share": {a.variant_id: round(float(x) / n, 4) for a, x in zip(arms, s["best_counts"])},
            }
            if cid != upcoming:
                entry["observed_response_rate"] = round(s["responses"] / n, 5)
                entry["mean_p_assigned"] = round(s["assigned_p"] / n, 5)
                entry["assigned_share"] = {a.variant_id: round(float(x) / n, 4) for a, x in zip(arms, s["assigned"])}
                past["n"] += s["n"]
                past["oracle"] += s["sum_best"]
                past["control"] += float(s["sum_p"][0])
                past["best_fixed"] += float(s["sum_p"][best_fixed])
                past["no_pos"] += s["no_pos"]
                past["responses"] += s["responses"]
                past["assigned_p"] += s["assigned_p"]
                for a, x in zip(arms[1:], s["sum_p"][1:]):
                    past["uplift_by_type"][a.type] = past["uplift_by_type"].get(a.type, 0.0) + float(x - s["sum_p"][0])
                    past["n_by_type"][a.type] = past["n_by_type"].get(a.type, 0) + s["n"]
            out[cid] = entry
        n = max(past["n"], 1)
        out["past"] = {
            "exposures": past["n"],
            "observed_response_rate": round(past["responses"] / n, 5),
            "mean_p_assigned": round(past["assigned_p"] / n, 5),
            "oracle_value": round(past["oracle"] / n, 5),
            "control_value": round(past["control"] / n, 5),
            "best_fixed_arm_value": round(past["best_fixed"] / n, 5),
            "share_no_positive_uplift": round(past["no_pos"] / n, 4),
            "mean_uplift_by_type": {t: round(v / past["n_by_type"][t], 5) for t, v in sorted(past["uplift_by_type"].items())},
        }
        return out


def _chunk(rng: np.random.Generator, w: World, first: int, n: int, stats: _Stats) -> dict[str, pa.Table]:
    u, users, lo = _users(rng, w, first, n)
    events, ev_ui, ev_ts = _events(rng, w, u, lo)
    rec = _Recency(ev_ui, ev_ts, w.hist_start - 800 * DAY_MS)
    del ev_ts

    exp_parts, truth_parts = [], []
    for camp in w.campaigns:
        upcoming = camp.start_ms >= w.now_ms
        if upcoming:
            ui = np.arange(n)
            t = np.full(n, w.now_ms, dtype=np.int64)
        else:
            t_all = camp.start_ms + np.floor(rng.random(n) * (camp.end_ms - camp.start_ms + 1)).astype(np.int64)
            exposed = (rng.random(n) < w.exposure_share) & (u.signup < t_all)
            ui = np.flatnonzero(exposed)
            t = t_all[ui]
        m, n_arms = len(ui), len(camp.arms)
        p, er = true_arms(u, ui, t, rec.count(ui, t), camp)
        arm_ids = [a.variant_id for a in camp.arms]
        user_ids = _fixed_strings(["u", (u.number[ui], w.id_width)], m)
        if upcoming:
            exposure_id = pa.nulls(m * n_arms, pa.string())
            stats.add(camp.campaign_id, p)
        else:
            exposure_id = _fixed_strings([f"{camp.campaign_id}-u", (u.number[ui], w.id_width)], m)
            treated = rng.random(m) >= w.control_share
            assigned = np.where(treated, 1 + rng.integers(0, n_arms - 1, m), 0)
            rows = np.arange(m)
            responded = (rng.random(m) < p[rows, assigned]).astype(np.int8)
            dr = np.array([a.discount_rate for a in camp.arms])[assigned]
            basket = np.exp(rng.normal(math.log(55.0) + 0.5 * (0.5 - u.ps[ui]), 0.45))
            revenue = np.round(responded * basket * (1.0 - dr), 2)
            exp_parts.append(pa.Table.from_arrays([
                exposure_id, user_ids, pa.array(np.full(m, camp.campaign_id), pa.string()),
                _take(arm_ids, assigned), _ts_array(t), pa.array(responded, pa.int8()),
                pa.array(revenue, pa.float64()),
            ], schema=SCHEMAS["exposures"]))
            stats.add(camp.campaign_id, p, assigned, responded)
            exposure_id = exposure_id.take(pa.array(np.repeat(rows, n_arms)))
        rep = pa.array(np.repeat(np.arange(m), n_arms))
        truth_parts.append(pa.Table.from_arrays([
            exposure_id, user_ids.take(rep), pa.array(np.full(m * n_arms, camp.campaign_id), pa.string()),
            _take(arm_ids, np.tile(np.arange(n_arms), m)),
            pa.array(p.reshape(-1), pa.float64()), pa.array(np.round(er.reshape(-1), 4), pa.float64()),
        ], schema=TRUTH_SCHEMA))
    exposures = pa.concat_tables(exp_parts) if exp_parts else SCHEMAS["exposures"].empty_table()
    out = {"users": users, "events": events, "exposures": exposures, TRUTH_TABLE: pa.concat_tables(truth_parts)}
    if w.crm_attributes:   # drawn last: the other tables do not depend on whether it is written
        out[ATTRIBUTES_TABLE] = _attributes(rng, w, u)
    return out


# --------------------------------------------------------------------------- entry point

def _part_key(batch: str, table: str, i: int) -> str:
    prefix = layout.truth_prefix(batch) if table == TRUTH_TABLE else layout.raw_prefix(batch, table)
    return f"{prefix}part-{i:05d}.parquet"


def make_world(p: dict, users: int, seed: int) -> tuple[World, np.random.SeedSequence]:
    """The world of params `data:` `p` (campaigns drawn from the seed's first child) and the seed
    sequence whose children seed the user chunks."""
    world_seed, chunks_seed = np.random.SeedSequence(seed).spawn(2)
    now_ms = _ms(NOW)
    campaigns = make_campaigns(np.random.default_rng(world_seed), int(p["n_past_campaigns"]),
                               int(p["variants_per_campaign"]), int(p["n_categories"]), now_ms,
                               cover_channels=bool(p.get("channel_coverage", False)))
    w = World(now_ms=now_ms, history_ms=int(p["history_days"]) * DAY_MS, events_per_user=float(p["events_per_user"]),
              n_categories=int(p["n_categories"]), control_share=float(p["control_share"]), campaigns=campaigns,
              id_width=max(7, len(str(users))), crm_attributes=bool(p.get("crm_attributes", False)),
              exposure_share=float(p.get("exposure_share", 0.6)))
    return w, chunks_seed


def generate(settings: Settings, users: int | None = None, seed: int | None = None, batch: str | None = None,
             store=None, progress: bool = True, chunk_size: int = CHUNK_USERS) -> dict:
    """Write a synthetic world to raw/<batch>/ (one parquet part per chunk of users and table,
    truth under raw/<batch>/_truth/, the manifest last). Returns the manifest."""
    p = settings.params["data"]
    users = int(users if users is not None else p["users"])
    seed = int(seed if seed is not None else p["seed"])
    batch = str(batch if batch is not None else p["batch"])
    if users < 1 or chunk_size < 1:
        raise ValueError("users and chunk_size must be positive")
    if store is None:
        from campaignops.pipelines.storage import ObjectStore

        store = ObjectStore(settings)

    w, chunks_seed = make_world(p, users, seed)
    campaigns = w.campaigns
    n_chunks = math.ceil(users / chunk_size)
    tables = (*TABLES, ATTRIBUTES_TABLE) if w.crm_attributes else TABLES
    cats = categories(w.n_categories)
    stats = _Stats(campaigns)

    # A rerun leaves nothing stale: the commit marker goes first, then every old part.
    store.delete_prefix(layout.raw_manifest_key(batch))
    store.delete_prefix(f"raw/{batch}/")

    files: dict[str, list[str]] = {t: [] for t in (*tables, TRUTH_TABLE)}
    rows: dict[str, int] = {t: 0 for t in files}
    tmpdir = Path(tempfile.mkdtemp(prefix="synth-"))

    def put(table: str, data: pa.Table) -> None:
        key = _part_key(batch, table, len(files[table]))
        path = tmpdir / f"{table}.parquet"
        pq.write_table(data, path, compression="zstd")
        store.upload_file(path, key)
        path.unlink()
        files[table].append(key)
        rows[table] += data.num_rows

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    try:
        put("campaigns", campaigns_table(campaigns, cats))
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("users"), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task(f"synth {batch}", total=users)
            for i, cs in enumerate(chunks_seed.spawn(n_chunks)):
                first = i * chunk_size
                n = min(chunk_size, users - first)
                parts = _chunk(np.random.default_rng(cs), w, first, n, stats)
                for table, data in parts.items():
                    put(table, data)
                del parts
                bar.advance(task, n)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    upcoming = campaigns[-1]
    manifest = {
        "batch": batch,
        "seed": seed,
        "users": users,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "now": NOW.isoformat(),
        "upcoming_campaign_id": upcoming.campaign_id,
        "generator": {"name": "campaignops.pipelines.synth", "chunk_size": chunk_size,
                      "history_days": int(p["history_days"]), "events_per_user": w.events_per_user,
                      "n_categories": w.n_categories, "control_share": w.control_share,
                      "exposure_share": w.exposure_share,
                      "n_past_campaigns": len(campaigns) - 1, "crm_attributes": w.crm_attributes},
        "tables": {t: {"files": files[t], "rows": rows[t]} for t in tables},
        "truth": {"files": files[TRUTH_TABLE], "rows": rows[TRUTH_TABLE],
                  "stats": stats.summary(upcoming.campaign_id)},
    }
    store.put_json(layout.raw_manifest_key(batch), manifest)  # last: the commit marker
    return manifest
