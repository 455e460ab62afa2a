"""Per-feature attributions by permutation importance on the holdout.

Rows are user × arm (every arm of each exposure). A user-level feature (one profile column, or
the behaviour sequence as one block) is permuted across *exposures*, consistently for all of an
exposure's arm rows, so the model still sees one user under every arm; the arm attributes are
permuted as one block across rows. Importance = metric(original) − metric(permuted), averaged
over `repeats`; positive means the model relies on the feature."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

METRICS = ("auc", "qini", "policy_value_fraction")


def permutation_importance(predict: Callable[[dict], np.ndarray], x: dict[str, np.ndarray], frame: pd.DataFrame,
                           truth: pd.DataFrame | None, profile_cols: list[str], repeats: int = 1,
                           seed: int = 0, metric_fn=None) -> list[dict]:
    """[{feature, group, <metric>_drop...}] for every profile column, "sequence" and "arm"."""
    if metric_fn is None:
        from campaignops.pipelines.evaluate import holdout_metrics as metric_fn
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(frame["exposure_id"])
    first_row = np.zeros(len(uniques), dtype=np.int64)
    first_row[codes[::-1]] = np.arange(len(codes))[::-1]   # first row of each exposure
    base = metric_fn(frame, predict(x), truth)
    keys = [k for k in METRICS if k in base and np.isfinite(base[k])]

    def score(mutate) -> dict:
        drops = {k: 0.0 for k in keys}
        for _ in range(repeats):
            perm = rng.permutation(len(uniques))
            src = first_row[perm[codes]]          # row whose user-level values each row takes
            m = metric_fn(frame, predict(mutate(src)), truth)
            for k in keys:
                drops[k] += (base[k] - m[k]) / repeats
        return drops

    out = []
    for j, col in enumerate(profile_cols):
        def mutate(src, j=j):
            prof = x["profile"].copy()
            prof[:, j] = x["profile"][src, j]
            return {**x, "profile": prof}
        out.append({"feature": col, "group": "profile", **{f"{k}_drop": v for k, v in score(mutate).items()}})
    seq_keys = [k for k in x if k.startswith("seq")]   # tokens and their per-step channels, as one block
    out.append({"feature": "sequence", "group": "sequence",
                **{f"{k}_drop": v for k, v in score(lambda src: {**x, **{k: x[k][src] for k in seq_keys}}).items()}})

    def mutate_arm(_src):
        return {**x, "variant": x["variant"][rng.permutation(len(codes))]}
    out.append({"feature": "arm", "group": "arm", **{f"{k}_drop": v for k, v in score(mutate_arm).items()}})
    out.sort(key=lambda r: -r.get(f"{keys[0]}_drop", 0.0) if keys else 0.0)
    return out


def subsample_exposures(frame: pd.DataFrame, max_exposures: int | None, seed: int = 0) -> np.ndarray:
    """Row indices keeping all arm rows of at most `max_exposures` random exposures."""
    ids = frame["exposure_id"].unique()
    if max_exposures is None or len(ids) <= max_exposures:
        return np.arange(len(frame))
    keep = set(np.random.default_rng(seed).choice(ids, max_exposures, replace=False))
    return np.flatnonzero(frame["exposure_id"].isin(keep).to_numpy())
