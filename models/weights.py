"""Inverse-propensity weights of logged exposures, so a model fitted to the outcomes of a targeted
policy learns the response of the whole population, not of the users the policy favoured.

An exposure logged with propensity p (the probability that the logging policy gave this user
this arm) stands for 1/p users: a user the policy would rarely have sent this arm, but did (its
exploration), counts for the many like them who were sent another arm. Weights are clipped at
`max_weight` (one rarely chosen arm must not dominate the fit) and normalised to mean 1 within
each campaign (a campaign keeps its share of the training data). An unknown (null) propensity
counts 1 before normalisation: such rows keep the plain, unweighted fit.
"""
from __future__ import annotations

import numpy as np

MAX_WEIGHT = 50.0   # default clip (params train.max_weight): above arms / exploration share = 4 / 0.1


def inverse_propensity(campaign_id, propensity, max_weight: float = MAX_WEIGHT) -> np.ndarray:
    """Per-row weights: min(1 / propensity, max_weight), 1 where the propensity is null / NaN,
    divided by their mean within the row's campaign (float64, mean 1 per campaign)."""
    if not max_weight >= 1.0:
        raise ValueError(f"params train.max_weight: need >= 1 (a clip of 1 / propensity), got {max_weight!r}")
    campaign = np.asarray(campaign_id, dtype=object)
    p = np.asarray(propensity, dtype=np.float64)   # None → NaN
    if p.shape != campaign.shape:
        raise ValueError(f"propensity has {p.shape} rows, campaign_id {campaign.shape}")
    known = ~np.isnan(p)
    bad = known & ((p <= 0.0) | (p > 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"exposure propensity must lie in (0, 1]: {int(bad.sum())} rows do not, e.g. row {i} of "
                         f"campaign {campaign[i]!r} has {p[i]!r}; the validated exposures should have quarantined them")
    w = np.ones(len(p))
    w[known] = np.minimum(1.0 / p[known], float(max_weight))
    if not len(w):
        return w
    _, group = np.unique(campaign, return_inverse=True)
    mean = np.bincount(group, weights=w) / np.bincount(group)
    return w / mean[group]


def summary(weights: np.ndarray, propensity, max_weight: float) -> dict:
    """What the weighting did: min / max weight, effective sample size (sum w)² / sum w² and its
    share of the rows, rows without a propensity, rows whose 1 / propensity was clipped."""
    w = np.asarray(weights, dtype=np.float64)
    p = np.asarray(propensity, dtype=np.float64)
    known = ~np.isnan(p)
    ess = float(w.sum() ** 2 / (w ** 2).sum()) if len(w) else 0.0
    return {"min": float(w.min()) if len(w) else 0.0, "max": float(w.max()) if len(w) else 0.0,
            "ess": ess, "ess_share": ess / len(w) if len(w) else 0.0,
            "null_propensity_rows": int((~known).sum()),
            "clipped_rows": int((known & (p < 1.0 / float(max_weight))).sum())}
