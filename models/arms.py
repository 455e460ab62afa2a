"""Exposures scored under every arm of their campaign: the wide (exposure × arm) view and the
per-arm Qini of p(arm) − p(control), used by evaluation and by training's `val_qini` monitor.

`frame` has one row per (exposure, arm scored) with exposure_id, campaign_id, variant_id (the
arm actually logged), arm_id (the arm scored), responded and optionally propensity (P(logged
arm | user) under the policy that chose it, NaN / None when unknown); value vectors are aligned
with it.

Targeted logs: the platform sends each user the arm its model favours, so the users logged at
an arm are not like those logged at control. Each exposure is then weighted by its campaign's
share of that arm over its propensity (a stabilised inverse-propensity weight): the weighted
rows stand for a randomized campaign with the same arm shares. Rows without a propensity, and
randomized logs whose propensity is the arm's share, weigh exactly 1, so their Qini is the
unweighted one."""
from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd

from campaignops.validation.contract import CONTROL


def arm_matrix(frame: pd.DataFrame, values: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Pivot per (exposure, arm) values into [n_exposures, n_slots]: treatment arms in variant
    order, control in the last slot, NaN where a campaign has fewer arms. Also returns the
    arm id held by each slot, indexed by exposure_id (sorted)."""
    df = frame[["exposure_id", "arm_id"]].copy()
    df["value"] = values
    is_control = (df["arm_id"] == CONTROL).to_numpy()
    slot = np.zeros(len(df), dtype=np.int64)
    slot[~is_control] = df[~is_control].groupby("exposure_id").cumcount().to_numpy()
    n_slots = int(slot[~is_control].max()) + 2
    slot[is_control] = n_slots - 1
    df["slot"] = slot
    wide = df.pivot(index="exposure_id", columns="slot", values="value").reindex(columns=range(n_slots))
    arms = df.pivot(index="exposure_id", columns="slot", values="arm_id").reindex(columns=range(n_slots))
    return arms, wide.to_numpy(dtype=np.float64)


def logged_exposures(frame: pd.DataFrame, arms: pd.DataFrame) -> pd.DataFrame:
    """One row per exposure (what was logged), in the row order of `arm_matrix`'s output."""
    return frame.drop_duplicates("exposure_id").set_index("exposure_id").loc[arms.index]


def logged_view(frame: pd.DataFrame, p: np.ndarray):
    """(arms, P, exposures, arm_ids, logged_slot): `arm_matrix` of p, the logged exposures in its
    row order, the arm ids as an array and the slot of each exposure's logged arm."""
    arms, P = arm_matrix(frame, p)
    exposures = logged_exposures(frame, arms)
    arm_ids = arms.to_numpy()
    logged_slot = np.argmax(arm_ids == exposures["variant_id"].to_numpy()[:, None], axis=1)
    return arms, P, exposures, arm_ids, logged_slot


def arm_share(exposures: pd.DataFrame) -> np.ndarray:
    """Per exposure (one row each): the share of its campaign's exposures logged at its arm."""
    return (exposures.groupby(["campaign_id", "variant_id"])["responded"].transform("size")
            / exposures.groupby("campaign_id")["responded"].transform("size")).to_numpy()


def logging_propensity(exposures: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per exposure (one row each): (the probability its logged arm had, its arm share). The
    probability is the logged `propensity` where known, else the arm share (a randomized log)."""
    share = arm_share(exposures)
    if "propensity" not in exposures:
        return share, share
    logged = exposures["propensity"].to_numpy(dtype=np.float64, na_value=np.nan)
    known = ~np.isnan(logged)
    bad = known & ((logged <= 0.0) | (logged > 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = exposures["exposure_id"].iloc[i] if "exposure_id" in exposures else exposures.index[i]
        raise ValueError(f"holdout propensity must lie in (0, 1]: {int(bad.sum())} exposures do not, e.g. "
                         f"exposure {where!r} of campaign {exposures['campaign_id'].iloc[i]!r} has {logged[i]!r}; "
                         "the validated exposures should have quarantined them: re-run validate and features")
    return np.where(known, logged, share), share


def balancing_weight(exposures: pd.DataFrame) -> np.ndarray:
    """Per exposure: arm share / propensity (the module's stabilised weight; exactly 1 where the
    propensity is unknown or equals the share)."""
    propensity, share = logging_propensity(exposures)
    return share / propensity


class ArmGroup(NamedTuple):
    """The exposures of one campaign logged at one treatment arm or at its control. `rows` masks
    the rows of `arm_matrix`'s output; `hit[i, s]` marks the slot holding the arm for row i of
    the selection (exactly one per row), so `matrix[:, :-1][rows][hit]` reads that arm's column."""
    campaign: str
    arm: str
    rows: np.ndarray
    hit: np.ndarray
    y: np.ndarray
    uplift: np.ndarray    # p(arm) − p(control)
    treated: np.ndarray   # 1 = logged at the arm, 0 = at control
    weight: np.ndarray | None   # balancing_weight of the rows; None when all are 1 (randomized)


def arm_groups(frame: pd.DataFrame, p: np.ndarray, wide: tuple | None = None) -> Iterator[ArmGroup]:
    """One ArmGroup per (campaign, treatment arm) that has both treated and control exposures
    and was scored (finite p) for all of them, with the rows' balancing weights. `wide`:
    `arm_matrix(frame, p)` if the caller already has it."""
    from campaignops.models.metrics import _binary

    arms, P = wide if wide is not None else arm_matrix(frame, p)
    exposures = logged_exposures(frame, arms)
    arm_ids = arms.to_numpy()[:, :-1]
    uplift = P[:, :-1] - P[:, -1:]
    logged = exposures["variant_id"].to_numpy()
    campaign = exposures["campaign_id"].to_numpy()
    y = _binary(exposures["responded"].to_numpy(), "responded", both_classes=False)
    weight = balancing_weight(exposures)
    treated_pairs = pd.DataFrame({"c": campaign, "a": logged})[logged != CONTROL].drop_duplicates()
    for cid, arm in treated_pairs.itertuples(index=False):
        rows = (campaign == cid) & ((logged == arm) | (logged == CONTROL))
        hit = arm_ids[rows] == arm
        if not hit.any(axis=1).all():        # the arm was not scored for some of these exposures
            continue
        u = uplift[rows][hit]
        t = (logged[rows] == arm).astype(np.int64)
        if t.min() == t.max() or not np.isfinite(u).all():
            continue
        w = weight[rows]
        yield ArmGroup(cid, arm, rows, hit, y[rows], u, t, None if (w == 1.0).all() else w)


def arm_qinis(frame: pd.DataFrame, p: np.ndarray, wide: tuple | None = None) -> dict[tuple, float]:
    """Qini coefficient per (campaign, treatment arm) of p(arm) − p(control) on the exposures
    logged at that arm or at the campaign's control, weighted by their balancing weights
    (`wide` as in `arm_groups`)."""
    from campaignops.models.metrics import qini_auc_score

    return {(g.campaign, g.arm): qini_auc_score(g.y, g.uplift, g.treated, sample_weight=g.weight)
            for g in arm_groups(frame, p, wide)}


def mean_qini(frame: pd.DataFrame, p: np.ndarray, wide: tuple | None = None) -> float:
    """Mean of `arm_qinis` (NaN when no arm has both treated and control exposures)."""
    values = list(arm_qinis(frame, p, wide).values())
    return float(np.mean(values)) if values else float("nan")


def random_qini_sd(frame: pd.DataFrame, draws: int = 200, seed: int = 0) -> float:
    """Standard deviation of `mean_qini` for a random ranking on the same exposures: the noise
    scale of the Qini on this holdout (a model that ranks no better than chance lands within a
    couple of these of 0). NaN when there is nothing to rank or draws is 0."""
    from campaignops.models.metrics import qini_auc_score

    groups = [(g.y, g.treated, g.weight) for g in arm_groups(frame, np.zeros(len(frame)))]
    if not groups or draws <= 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    means = [np.mean([qini_auc_score(y, rng.random(len(y)), t, sample_weight=w) for y, t, w in groups])
             for _ in range(draws)]
    return float(np.std(means))
