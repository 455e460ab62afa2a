"""User segmentation fitted once on the population strictly before the first exposure: RFM score
edges and k-means segments over log1p(recency, purchases, monetary, events) in the profile
window (fit, stable names, assignment), and the profile columns they derive (rfm_*, segment_*).
The fitted definitions are stored in meta.json and reused unchanged at scoring time.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

RFM_QUANTILES = (0.2, 0.4, 0.6, 0.8)
SEGMENT_FEATURES = ("recency_days", "purchases", "monetary", "events")
RAW_COLS = ("_recency_days", "_purchases", "_monetary", "_events")  # internal, never persisted
FIT_USERS = 50_000  # users the RFM edges / activity tiers are fitted on
SEGMENT_FIT_ROWS = 20_000  # users the k-means is fitted on (a uniform sample: rows are in pseudonym order)


def derive_profile(table: pa.Table, fit: dict, window_days: int) -> pa.Table:
    """Add RFM scores and segment one-hots (fitted definitions) and drop the internal raw columns."""
    raw = raw_matrix(table, window_days)
    rfm = fit["rfm_edges"]
    has_p = raw[:, 1] > 0
    r = np.where(has_p, 1.0 - np.searchsorted(rfm["recency_days"], raw[:, 0], side="right") / 5.0, 0.0)
    f = np.where(has_p, (np.searchsorted(rfm["purchases"], raw[:, 1], side="right") + 1) / 5.0, 0.0)
    m = np.where(has_p, (np.searchsorted(rfm["monetary"], raw[:, 2], side="right") + 1) / 5.0, 0.0)
    seg = assign_segments(raw, fit["segments"])
    cols = {"rfm_r": r, "rfm_f": np.minimum(f, 1.0), "rfm_m": np.minimum(m, 1.0)}
    for i in range(len(fit["segments"]["names"])):
        cols[f"segment_{i}"] = (seg == i).astype(np.float64)
    for name in RAW_COLS:
        table = table.remove_column(table.schema.get_field_index(name))
    for name, values in cols.items():
        table = table.append_column(name, pa.array(values, pa.float64()))
    return table


def raw_matrix(table: pa.Table, window_days: int) -> np.ndarray:
    """[n, 4] recency days (capped at the window; none: the window), purchases, monetary, events."""
    rec = table.column("_recency_days").to_numpy(zero_copy_only=False).astype(np.float64)
    rec = np.where(np.isnan(rec), float(window_days), np.minimum(rec, float(window_days)))
    return np.stack([rec, *(table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                            for c in RAW_COLS[1:])], axis=1)


def _segment_space(raw: np.ndarray, seg: dict) -> np.ndarray:
    return (np.log1p(raw) - np.asarray(seg["mean"])) / np.asarray(seg["std"])


def assign_segments(raw: np.ndarray, seg: dict) -> np.ndarray:
    c = np.asarray(seg["centroids"], dtype=np.float64)
    x = _segment_space(raw, seg)
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1).argmin(1) if len(x) else np.zeros(0, np.int64)


def fit_segments(raw: np.ndarray, k: int, seed: int, window_days: int) -> dict:
    """k-means (k-means++ init, fixed seed) on log1p(recency days, purchases, monetary, events),
    standardized; clusters named by their centroid's recency and value tiers."""
    logs = np.log1p(raw[:SEGMENT_FIT_ROWS]) if len(raw) else np.zeros((1, raw.shape[1]))  # rows: pseudonym order
    mean, std = logs.mean(0), np.maximum(logs.std(0), 1e-6)
    x = (logs - mean) / std
    uniq = np.unique(np.round(x, 9), axis=0)
    k = max(1, min(k, len(uniq)))
    rng = np.random.default_rng(seed)
    cent = [uniq[rng.integers(len(uniq))]]
    for _ in range(1, k):
        d = ((uniq[:, None, :] - np.asarray(cent)[None]) ** 2).sum(-1).min(1)
        cent.append(uniq[rng.choice(len(uniq), p=d / d.sum())] if d.sum() > 0 else uniq[len(cent)])
    cent = np.asarray(cent)
    for _ in range(50):
        lab = ((x[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([x[lab == i].mean(0) if (lab == i).any() else cent[i] for i in range(k)])
        if np.allclose(new, cent):
            break
        cent = new
    # Stable order: by monetary then purchases (ascending), so names/ids do not depend on init.
    units = np.expm1(cent * std + mean)
    order = np.lexsort((units[:, 1], units[:, 2]))
    cent, units = cent[order], units[order]
    names = _segment_names(units, window_days)
    return {"features": list(SEGMENT_FEATURES), "mean": mean.tolist(), "std": std.tolist(),
            "centroids": cent.tolist(), "names": names,
            "centroid_units": [dict(zip(SEGMENT_FEATURES, map(float, u))) for u in units]}


def _segment_names(units: np.ndarray, window_days: int) -> list[str]:
    names = []
    value_rank = np.argsort(np.argsort(units[:, 2]))  # 0 = lowest monetary
    n = len(units)
    for i, (rec, purchases, monetary, events) in enumerate(units):
        if events < 0.5:
            names.append("no_history")
            continue
        if purchases < 0.5:
            rtier = "browsing" if rec >= window_days - 1e-6 else "lapsed"
            names.append(f"{'active' if events >= 5 else 'occasional'}_{rtier}")
            continue
        rtier = "recent" if rec <= window_days / 6 else ("lapsing" if rec <= window_days / 2 else "dormant")
        vtier = "high_value" if value_rank[i] >= n - max(1, n // 3) else ("low_value" if value_rank[i] < max(1, n // 3) else "mid_value")
        names.append(f"{rtier}_{vtier}")
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def fit_rfm(raw: np.ndarray) -> dict:
    buyers = raw[raw[:, 1] > 0]

    def q(col, default):
        return np.quantile(buyers[:, col], RFM_QUANTILES).tolist() if len(buyers) else list(default)

    return {"recency_days": q(0, (3, 7, 14, 30)), "purchases": q(1, (1, 2, 3, 5)), "monetary": q(2, (20, 50, 100, 200)),
            "quantiles": list(RFM_QUANTILES)}
