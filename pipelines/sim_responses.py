"""Who got which arm of a campaign, and how they responded: the legacy randomized policy, or the
platform's own decision (its committed scores run), turned into exposures with outcomes drawn from
the world's truth, plus the truth rows and summaries written beside them.

Policies:
- past campaigns (before day 0): the legacy randomized policy, drawn from the chunk's stream
  exactly as the undated generator always drew it: exposure_share of the users signed up by the
  send time are exposed at a uniform time in the campaign window, control_share of them get
  control, the rest a variant uniformly;
- a campaign starting on a simulated day: if the platform committed a scores run it acted on
  (scores/<campaign>/latest.json), every scored user gets the run's arm (chosen_variant if send,
  else control) with the run's propensity; otherwise the legacy policy sends it at its start. A
  campaign the platform sends in waves (an allocation plan: pipelines/sim_waves.py) is sent
  as its allocation versions decided, each user on its wave's day.

Draws for simulated days are keyed by (seed, campaign, user, purpose), not taken from a stream:
a user's exposure, arm and outcome are the same whichever day's batch regenerates them, and the
response under every arm shares one uniform (common random numbers), so a policy that picks a
better arm for a user turns that user's outcome from 0 to 1, never the reverse.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from campaignops.pipelines.sim_world import DAY_MS, Campaign, Users, World, _fixed_strings, _take, _ts_array
from campaignops.validation.contract import CONTROL, SCHEMAS, TRUTH_SCHEMA

BASKET_LOG_MEAN, BASKET_SD = math.log(55.0), 0.45
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
PLATFORM, LEGACY = "platform", "legacy_random"


# --------------------------------------------------------------------------- keyed draws

def keyed_uniform(seed: int, campaign_id: str, purpose: str, numbers: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) per user number from a hash of (seed, campaign, purpose, number)
    (splitmix64): independent of row order, chunking and the day the row is generated on."""
    salt = np.uint64(int.from_bytes(hashlib.sha256(f"{seed}|{campaign_id}|{purpose}".encode()).digest()[:8], "little"))
    z = np.asarray(numbers, dtype=np.int64).astype(np.uint64) * _GOLDEN + salt
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def keyed_normal(seed: int, campaign_id: str, purpose: str, numbers: np.ndarray) -> np.ndarray:
    """Standard normal per user number (Box–Muller over two keyed uniforms)."""
    u1 = keyed_uniform(seed, campaign_id, purpose + ".1", numbers)
    u2 = keyed_uniform(seed, campaign_id, purpose + ".2", numbers)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * math.pi * u2)


# --------------------------------------------------------------------------- sends

@dataclass
class Sends:
    """One campaign's sends to a chunk's users."""
    camp: Campaign
    ui: np.ndarray          # user index in the chunk
    t: np.ndarray           # exposure time, ms
    arm: np.ndarray         # index into camp.arms (0 = control)
    propensity: np.ndarray  # P(logged arm | user) under the policy that chose it
    policy: str


def _legacy_propensity(w: World, camp: Campaign, arm: np.ndarray) -> np.ndarray:
    """Randomization probability of the logged arm among the exposed users."""
    return np.where(arm == 0, w.control_share, (1.0 - w.control_share) / len(camp.variants))


def past_sends(rng: np.random.Generator, w: World, u: Users, n: int, camp: Campaign) -> Sends:
    """The legacy policy on a past campaign, from the chunk's stream (users 0..n-1 of the chunk)."""
    t_all = camp.start_ms + np.floor(rng.random(n) * (camp.end_ms - camp.start_ms + 1)).astype(np.int64)
    exposed = (rng.random(n) < w.exposure_share) & (u.signup[:n] < t_all)
    ui = np.flatnonzero(exposed)
    m = len(ui)
    treated = rng.random(m) >= w.control_share
    arm = np.where(treated, 1 + rng.integers(0, len(camp.arms) - 1, m), 0)
    return Sends(camp, ui, t_all[ui], arm, _legacy_propensity(w, camp, arm), LEGACY)


def legacy_sends(seed: int, w: World, u: Users, camp: Campaign) -> Sends:
    """The legacy policy on a simulated day's campaign: keyed draws, every send at its start."""
    eligible = np.flatnonzero(u.signup < camp.start_ms)
    nums = u.number[eligible]
    ui = eligible[keyed_uniform(seed, camp.campaign_id, "expose", nums) < w.exposure_share]
    r = keyed_uniform(seed, camp.campaign_id, "arm", u.number[ui])
    cs, n_var = w.control_share, len(camp.variants)
    arm = np.where(r < cs, 0, 1 + np.minimum(((r - cs) / (1.0 - cs) * n_var).astype(np.int64), n_var - 1))
    return Sends(camp, ui, np.full(len(ui), camp.start_ms, np.int64), arm, _legacy_propensity(w, camp, arm), LEGACY)


@dataclass
class Decision:
    """The platform's decision on one campaign: the committed scores run latest.json points at."""
    campaign_id: str
    numbers: np.ndarray       # scored user numbers, sorted
    arm: np.ndarray           # index into the campaign's arms (0 = control)
    propensity: np.ndarray
    run_id: str
    manifest_key: str
    wave: np.ndarray | None = None   # day of the campaign each user is sent on (None: all at its start)

    @property
    def rows(self) -> int:
        return len(self.numbers)


def latest_key(campaign_id: str) -> str:
    from campaignops.pipelines.run_commit import LATEST

    return f"scores/{campaign_id}/{LATEST}"


def load_decision(store, camp: Campaign) -> Decision | None:
    """The scores run the platform acted on for `camp` (None if it scored none): user, arm
    (chosen_variant if send, else control) and propensity of every scored user."""
    from campaignops.pipelines.run_commit import read_run

    latest = store.get_bytes_or_none(latest_key(camp.campaign_id))
    if latest is None:
        return None
    pointer = json.loads(latest)
    key = store.key(pointer["manifest"])
    manifest = json.loads(store.get_bytes(key))
    scores = read_run(store, manifest).select(["user_id", "chosen_variant", "send", "propensity"])
    run_id = str(manifest.get("score_run_id") or (manifest.get("commit") or {}).get("run_id") or pointer.get("run_id"))
    return decision(scores, camp, f"scores run {store.uri(key)}", run_id, key)


def decision(scores: pa.Table, camp: Campaign, where: str, run_id: str, key: str,
             wave: np.ndarray | None = None) -> Decision:
    """A Decision from rows (user_id, chosen_variant, send, propensity[, their `wave`]), checked:
    this world's user ids, the campaign's arms, propensities in (0, 1], each user once."""
    ids = scores.column("user_id").cast(pa.string())
    if not pc.all(pc.starts_with(ids, "u")).as_py():
        raise ValueError(f"{where}: user ids must be this world's 'u<number>' ids")
    try:
        numbers = pc.cast(pc.utf8_slice_codeunits(ids, 1), pa.int64()).to_numpy()
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{where}: user ids must be this world's 'u<number>' ids ({exc})") from None
    variant = pc.if_else(scores.column("send"), scores.column("chosen_variant").cast(pa.string()), CONTROL)
    arm_ids = [a.variant_id for a in camp.arms]
    idx = pc.index_in(variant, value_set=pa.array(arm_ids, pa.string()))
    if idx.null_count:
        unknown = sorted(pc.unique(pc.filter(variant, pc.is_null(idx))).to_pylist(), key=str)
        raise ValueError(f"{where}: variants {unknown} are not arms of {camp.campaign_id} ({arm_ids})")
    arm = idx.to_numpy()
    prop = scores.column("propensity").to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.all((prop > 0) & (prop <= 1)):
        raise ValueError(f"{where}: propensities must be in (0, 1]")
    order = np.argsort(numbers, kind="stable")
    if len(numbers) and (np.diff(numbers[order]) == 0).any():
        raise ValueError(f"{where}: a user is scored twice")
    return Decision(camp.campaign_id, numbers[order], arm[order].astype(np.int64), prop[order], run_id, key,
                    None if wave is None else np.asarray(wave, np.int64)[order])


def platform_sends(d: Decision, u: Users, camp: Campaign) -> Sends:
    """The decision's rows for the chunk's users, each sent at the campaign start (or its wave's day)."""
    pos = np.minimum(np.searchsorted(d.numbers, u.number), max(d.rows - 1, 0))
    hit = (d.numbers[pos] == u.number) if d.rows else np.zeros(u.n, bool)
    ui = np.flatnonzero(hit)
    late = ui[u.signup[ui] >= camp.start_ms]
    if len(late):
        raise ValueError(f"scores run {d.manifest_key} targets user number {int(u.number[late[0]])}, who signs up only "
                         f"after {camp.campaign_id} starts: the run was not scored on this world (seed, users)")
    t = np.full(len(ui), camp.start_ms, np.int64)
    if d.wave is not None:                   # sent in waves: each user on its day of the campaign
        t += d.wave[pos[hit]] * DAY_MS
    return Sends(camp, ui, t, d.arm[pos[hit]], d.propensity[pos[hit]], PLATFORM)


# --------------------------------------------------------------------------- outcomes

def _basket_log_mean(u: Users, ui: np.ndarray) -> np.ndarray:
    return BASKET_LOG_MEAN + 0.5 * (0.5 - u.ps[ui])


def _revenue(s: Sends, responded: np.ndarray, basket: np.ndarray) -> np.ndarray:
    dr = np.array([a.discount_rate for a in s.camp.arms])[s.arm]
    return np.round(responded * basket * (1.0 - dr), 2)


def drawn_outcomes(rng: np.random.Generator, u: Users, s: Sends, p: np.ndarray):
    """(responded, revenue) of a past campaign's sends, from the chunk's stream."""
    responded = (rng.random(len(s.ui)) < p[np.arange(len(s.ui)), s.arm]).astype(np.int8)
    basket = np.exp(rng.normal(_basket_log_mean(u, s.ui), BASKET_SD))
    return responded, _revenue(s, responded, basket)


def keyed_outcomes(seed: int, u: Users, s: Sends, p: np.ndarray):
    """(responded, revenue) of a simulated day's sends: one keyed uniform per (campaign, user)
    against the true p of the logged arm (common random numbers across arms)."""
    nums, cid = u.number[s.ui], s.camp.campaign_id
    responded = (keyed_uniform(seed, cid, "respond", nums) < p[np.arange(len(s.ui)), s.arm]).astype(np.int8)
    basket = np.exp(_basket_log_mean(u, s.ui) + BASKET_SD * keyed_normal(seed, cid, "basket", nums))
    return responded, _revenue(s, responded, basket)


def exposures_table(w: World, u: Users, s: Sends, responded: np.ndarray, revenue: np.ndarray) -> pa.Table:
    m, cid = len(s.ui), s.camp.campaign_id
    return pa.Table.from_arrays([
        _fixed_strings([f"{cid}-u", (u.number[s.ui], w.id_width)], m),
        _fixed_strings(["u", (u.number[s.ui], w.id_width)], m),
        pa.array(np.full(m, cid), pa.string()),
        _take([a.variant_id for a in s.camp.arms], s.arm),
        _ts_array(s.t), pa.array(responded, pa.int8()), pa.array(revenue, pa.float64()),
        pa.array(s.propensity, pa.float64()),
    ], schema=SCHEMAS["exposures"])


def truth_table(w: World, u: Users, camp: Campaign, ui: np.ndarray, p: np.ndarray, er: np.ndarray,
                exposed: bool) -> pa.Table:
    """p_response and expected_revenue of users `ui` under every arm; keyed by exposure_id when
    `exposed`, else (the upcoming campaign) with a null exposure_id."""
    m, n_arms, cid = len(ui), len(camp.arms), camp.campaign_id
    user_ids = _fixed_strings(["u", (u.number[ui], w.id_width)], m)
    rep = pa.array(np.repeat(np.arange(m), n_arms))
    exposure_id = _fixed_strings([f"{cid}-u", (u.number[ui], w.id_width)], m).take(rep) if exposed \
        else pa.nulls(m * n_arms, pa.string())
    return pa.Table.from_arrays([
        exposure_id, user_ids.take(rep), pa.array(np.full(m * n_arms, cid), pa.string()),
        _take([a.variant_id for a in camp.arms], np.tile(np.arange(n_arms), m)),
        pa.array(p.reshape(-1), pa.float64()), pa.array(np.round(er.reshape(-1), 4), pa.float64()),
    ], schema=TRUTH_SCHEMA)


def break_outcomes(exposures: pa.Table, rng: np.random.Generator) -> pa.Table:
    """A broken CRM export: (responded, revenue) pairs shuffled across the rows."""
    perm = pa.array(rng.permutation(exposures.num_rows))
    for col in ("responded", "revenue"):
        i = exposures.schema.get_field_index(col)
        exposures = exposures.set_column(i, col, exposures.column(col).take(perm))
    return exposures


# --------------------------------------------------------------------------- truth summaries

class TruthStats:
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
