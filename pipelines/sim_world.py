"""The synthetic world itself: users and their latent traits, the campaign calendar and the true
response of any user to any arm at any time (behaviour events: sim_events.py; pipelines/synth.py
writes batches of it).

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

Time: the world's origin `now` is the simulation's start date (day 0). Its history (users,
events, the past campaigns) ends there and is drawn exactly as the undated generator always drew
it. With a horizon of D days (`data.sim.days`) the world goes on: every day k < D draws its own
events and its new signups from a stream keyed by (chunk, day), so day k does not depend on the
horizon's length, and one new campaign starts on each day 0..D (day 0's is the undated batch's
upcoming campaign). Newcomers signing up on day k are numbered after every earlier user
(new_user_numbers). sim_clock.py says what a snapshot as of a date holds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from campaignops.validation.contract import CAMPAIGN_TYPES, CHANNELS, CONTROL, SCHEMAS

NOW = datetime(2026, 6, 1)          # default origin (naive UTC) of the world: params data.sim.start_date
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
CAMPAIGN_DAYS = 7
CAMPAIGN_SPAN_DAYS = 60             # past campaigns start within the last ~60 days
RECENT_DAYS = 14                    # window of the recency term of the true response
RECENT_BOOST_DAYS = 30              # recent events concentrate in the last 30 days before now
INTEREST_SHARE = 0.7                # share of events in the interest active at event time
GENDERS_P = (("F", 0.48), ("M", 0.48), ("U", 0.04))
REGIONS = ("north", "south", "east", "west", "central", "coastal")
OCCUPATIONS = ("student", "professional", "service", "manual", "self_employed", "retired")
OCC_PS_SHIFT = np.array([0.15, -0.12, 0.05, 0.05, -0.05, 0.08])  # price-sensitivity shift
CHANNEL_COST = {"email": 0.05, "push": 0.05, "app": 0.08, "sms": 0.15}
# Keyed sub-streams of a chunk's seed (SeedSequence spawn keys no spawn() call ever produces).
DAY_STREAM, SPILL_STREAM, SIGNUP_ATTR_STREAM, CALENDAR_STREAM = 1 << 40, (1 << 40) + 1, (1 << 40) + 2, (1 << 40) + 3


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


def substream(ss: np.random.SeedSequence, *tags: int) -> np.random.Generator:
    """An independent generator keyed by (ss, tags): drawing from it never moves ss's own stream."""
    return np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, *tags)))


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


def _arms(rng: np.random.Generator, cid: str, n_variants: int, n_categories: int, channels=None) -> list[Arm]:
    """Control plus n_variants arms of distinct types; `channels` (indices) or drawn per arm."""
    top = max(1, min(4, n_categories))
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
        channel = CHANNELS[int(channels[v])] if channels is not None else CHANNELS[int(rng.integers(len(CHANNELS)))]
        target = int(rng.integers(top)) if typ == "bundle" else int(rng.integers(n_categories))
        cost = round(CHANNEL_COST[channel] + 0.6 * dr + float(rng.uniform(0, 0.03)), 3)
        arms.append(Arm(cid, f"{cid}-V{v + 1}", typ, round(dr, 2), channel, target, cost))
    return arms


def make_campaigns(rng: np.random.Generator, n_past: int, n_variants: int, n_categories: int,
                   now_ms: int, cover_channels: bool = False) -> list[Campaign]:
    """n_past campaigns inside the last ~60 days (each ~7 days, ending before now) plus one
    upcoming campaign starting at now (the last one)."""
    out = []
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
        channels = past_channels[c * n_variants:(c + 1) * n_variants] if past_channels is not None and c < n_past \
            else None
        out.append(Campaign(cid, int(start), int(end), _arms(rng, cid, n_variants, n_categories, channels)))
    return out


def horizon_campaigns(rng: np.random.Generator, first_number: int, days: int, n_variants: int,
                      n_categories: int, now_ms: int) -> list[Campaign]:
    """The campaigns starting on days 1..days after now (midnight, CAMPAIGN_DAYS long), numbered
    on from first_number; arms drawn like the upcoming campaign's. Campaign k is drawn k-th from
    `rng`, so a longer horizon keeps the earlier campaigns."""
    out = []
    for k in range(1, days + 1):
        cid = f"C{first_number + k - 1:03d}"
        start = now_ms + k * DAY_MS
        out.append(Campaign(cid, start, start + CAMPAIGN_DAYS * DAY_MS, _arms(rng, cid, n_variants, n_categories)))
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


# --------------------------------------------------------------------------- the world

@dataclass
class World:
    now_ms: int                     # the world's origin: end of the drawn history, day 0 of the clock
    history_ms: int
    events_per_user: float
    n_categories: int
    control_share: float
    campaigns: list[Campaign]       # past, day 0's (upcoming at now), then one per horizon day
    id_width: int
    crm_attributes: bool = False
    exposure_share: float = 0.6     # share of users exposed to each past campaign
    horizon_days: int = 0           # days drawn after now (0: the world ends at now)
    users: int = 0                  # users signed up before now
    new_per_day: int = 0            # users signing up on each horizon day

    @property
    def hist_start(self) -> int:
        return self.now_ms - self.history_ms

    @property
    def n_past(self) -> int:
        return sum(c.start_ms < self.now_ms for c in self.campaigns)


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
    rate: np.ndarray | None = None   # events per ms after now (set once the history is drawn)

    def concat(self, other: "Users") -> "Users":
        arrays = {f.name: np.concatenate([getattr(self, f.name), getattr(other, f.name)])
                  for f in fields(self) if f.name != "n"}
        return Users(self.n + other.n, **arrays)


def _users(rng: np.random.Generator, w: World, first: int, n: int, signup: np.ndarray | None = None,
           number: np.ndarray | None = None) -> tuple[Users, pa.Table, np.ndarray]:
    """Users first+1..first+n signed up before now; or, with `signup` and `number`, users
    signing up at those times after now (their interest is the current one from signup on)."""
    new = signup is not None
    age = np.clip(np.rint(rng.normal(40, 14, n)), 18, 75).astype(np.int32)
    a = (age - 18) / 57.0
    gender = _row_choice(rng, np.tile([p for _, p in GENDERS_P], (n, 1)))
    region = rng.integers(0, len(REGIONS), n)
    occ_p = np.stack([np.clip(0.45 - 1.5 * a, 0.02, None),            # student
                      np.full(n, 0.3), np.full(n, 0.2), np.full(n, 0.18), np.full(n, 0.1),
                      np.clip(2.0 * (a - 0.7), 0.0, None)], axis=1)   # retired
    occ = _row_choice(rng, occ_p)
    if not new:
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
    if new:
        switch = signup.copy()
    else:
        sw_lo = lo + 0.2 * (w.now_ms - lo)
        switch = (sw_lo + rng.random(n) * (w.now_ms - 3 * DAY_MS - sw_lo)).astype(np.int64)
    young = np.array([0.15, 0.10, 0.35, 0.40])   # email, sms, push, app
    older = np.array([0.45, 0.35, 0.10, 0.10])
    pref = _row_choice(rng, (1 - a)[:, None] * young + a[:, None] * older)
    if number is None:
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


def new_users_of_day(rng: np.random.Generator, w: World, day: int, numbers: np.ndarray):
    """Users `numbers` signing up during horizon day `day`: (Users with their event rate, users table)."""
    n = len(numbers)
    signup = (w.now_ms + day * DAY_MS + np.floor(rng.random(n) * DAY_MS)).astype(np.int64)
    u, table, _ = _users(rng, w, 0, n, signup=signup, number=numbers)
    activity = rng.lognormal(-0.18, 0.6, n)
    recent_w = rng.beta(0.7, 2.5, n)
    boost = recent_w * w.history_ms / (RECENT_BOOST_DAYS * DAY_MS) + (1 - recent_w)
    u.rate = w.events_per_user * activity * 0.95 / w.history_ms * boost
    return u, table


def new_user_numbers(w: World, first: int, n: int, day: int) -> np.ndarray:
    """The numbers of the users signing up on horizon `day` that the chunk of base users
    first+1..first+n draws: each day's w.new_per_day newcomers are numbered after every earlier
    user and shared among chunks by position, so numbers depend neither on the horizon's length
    nor on the order chunks run in."""
    per = w.new_per_day
    lo, hi = first * per // w.users, (first + n) * per // w.users
    return w.users + day * per + np.arange(lo, hi, dtype=np.int64) + 1


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


def make_world(p: dict, users: int, seed: int, horizon_days: int = 0) -> tuple[World, np.random.SeedSequence]:
    """The world of params `data:` `p` (campaigns drawn from the seed's first child) and the seed
    sequence whose children seed the user chunks. `horizon_days` > 0 extends it past its origin
    (params data.sim.start_date): new users, events and one new campaign per day."""
    world_seed, chunks_seed = np.random.SeedSequence(seed).spawn(2)
    sim = p.get("sim") or {}
    origin = datetime.fromisoformat(str(sim["start_date"])) if sim.get("start_date") else NOW
    now_ms = _ms(origin)
    n_past, n_var, n_cat = int(p["n_past_campaigns"]), int(p["variants_per_campaign"]), int(p["n_categories"])
    campaigns = make_campaigns(np.random.default_rng(world_seed), n_past, n_var, n_cat, now_ms,
                               cover_channels=bool(p.get("channel_coverage", False)))
    new_per_day = 0
    if horizon_days > 0:
        campaigns += horizon_campaigns(substream(world_seed, CALENDAR_STREAM), n_past + 2, horizon_days, n_var,
                                       n_cat, now_ms)
        new_per_day = int(round(users * float(sim.get("new_users_per_day", 0.0))))
    last_number = users + horizon_days * new_per_day
    w = World(now_ms=now_ms, history_ms=int(p["history_days"]) * DAY_MS, events_per_user=float(p["events_per_user"]),
              n_categories=n_cat, control_share=float(p["control_share"]), campaigns=campaigns,
              id_width=max(7, len(str(last_number))), crm_attributes=bool(p.get("crm_attributes", False)),
              exposure_share=float(p.get("exposure_share", 0.6)), horizon_days=int(horizon_days), users=users,
              new_per_day=new_per_day)
    return w, chunks_seed
