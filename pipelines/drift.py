"""Train/serve skew and drift: the Population Stability Index (PSI) of a batch's feature
distributions against a reference snapshot (e.g. the training frame).

    PSI = sum_i (c_i - r_i) * ln(c_i / r_i)

over bins i, with r_i / c_i the reference / current share of rows in bin i. Numerics are binned
at the reference's quantiles (`bins` of them; the outer edges are open, so values outside the
reference's range fall in the first/last bin); categoricals use one bin per category seen in
either frame. Nulls are a bin of their own in both cases, so a column that turns null is drift.
Empty bins get a share of EPS so the log is defined (the usual convention).

Rule of thumb: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 major shift. The threshold lives in
params.yaml `drift.max_psi`; `check_drift` raises `DriftDetected` naming each feature over it.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

EPS = 1e-4
NULL = "<null>"


class DriftDetected(RuntimeError):
    """One or more features' PSI is over the threshold."""

    def __init__(self, message: str, features: dict[str, float]):
        super().__init__(message)
        self.features = features


def _psi_from_counts(ref: np.ndarray, cur: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=float)
    cur = np.asarray(cur, dtype=float)
    if ref.sum() == 0 or cur.sum() == 0:
        raise ValueError("PSI needs at least one row in both the reference and the current data")
    r = np.maximum(ref / ref.sum(), EPS)
    c = np.maximum(cur / cur.sum(), EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def _as_array(values) -> np.ndarray:
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):
        try:
            return values.to_numpy(zero_copy_only=False)  # pyarrow
        except TypeError:
            return values.to_numpy()                       # pandas / polars
    return np.asarray(values)


def bin_edges(reference, bins: int = 10) -> np.ndarray:
    """Inner edges: the reference's distinct quantiles (at most bins - 1 of them)."""
    ref = _as_array(reference).astype(float)
    ref = ref[~np.isnan(ref)]
    if bins < 2:
        raise ValueError("bins must be >= 2")
    if not len(ref):
        return np.zeros(0)
    qs = np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(qs)


def _numeric_counts(values, edges: np.ndarray) -> np.ndarray:
    v = _as_array(values).astype(float)
    nulls = np.isnan(v)
    # bin i holds edges[i-1] < x <= edges[i]; bin 0 is x <= edges[0]; last bin x > edges[-1]
    idx = np.searchsorted(edges, v[~nulls], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    return np.append(counts, nulls.sum())


def psi(reference, current, bins: int = 10) -> float:
    """PSI of a numeric column: bins at the reference's quantiles, nulls a bin of their own."""
    edges = bin_edges(reference, bins)
    return _psi_from_counts(_numeric_counts(reference, edges), _numeric_counts(current, edges))


def _labels(values) -> list:
    out = []
    for x in _as_array(values).tolist():
        if x is None or (isinstance(x, float) and math.isnan(x)):
            out.append(NULL)
        else:
            out.append(str(x))
    return out


def categorical_psi(reference, current) -> float:
    """PSI of a categorical column: one bin per category in either frame (nulls one bin)."""
    ref, cur = _labels(reference), _labels(current)
    cats = sorted(set(ref) | set(cur))
    pos = {c: i for i, c in enumerate(cats)}
    rc = np.bincount([pos[x] for x in ref], minlength=len(cats))
    cc = np.bincount([pos[x] for x in cur], minlength=len(cats))
    return _psi_from_counts(rc, cc)


def _column(frame, name: str):
    try:
        return frame[name] if not hasattr(frame, "column") else frame.column(name)
    except KeyError as exc:
        raise KeyError(f"drift: column {name!r} is not in the frame") from exc


def _is_numeric(col) -> bool:
    arr = _as_array(col)
    if arr.dtype.kind in "iufb":
        return True
    if arr.dtype.kind == "M":
        return False
    return False


def drift_report(reference_frame, current_frame, columns: Sequence[str] | None = None, bins: int = 10,
                 categorical: Iterable[str] = ()) -> dict:
    """PSI per column of two frames (pandas, polars or pyarrow). Numeric dtypes are binned,
    everything else (and names in `categorical`) is compared by category. Columns default to
    those the frames share."""
    if columns is None:
        ref_cols = list(getattr(reference_frame, "column_names", None) or reference_frame.columns)
        cur_cols = set(getattr(current_frame, "column_names", None) or current_frame.columns)
        columns = [c for c in ref_cols if c in cur_cols]
    categorical = set(categorical)
    features = {}
    for name in columns:
        ref, cur = _column(reference_frame, name), _column(current_frame, name)
        if name not in categorical and _is_numeric(ref) and _is_numeric(cur):
            value, kind = psi(ref, cur, bins), "numeric"
        else:
            value, kind = categorical_psi(ref, cur), "categorical"
        features[name] = {"psi": round(value, 6), "kind": kind, "n_reference": len(ref), "n_current": len(cur)}
    worst = max(features.items(), key=lambda kv: kv[1]["psi"], default=(None, {"psi": 0.0}))
    return {"bins": bins, "features": features, "max_psi": worst[1]["psi"], "max_psi_feature": worst[0]}


def check_drift(report: dict, threshold: float) -> dict:
    """Raise DriftDetected naming every feature whose PSI exceeds `threshold`; else return report."""
    over = {name: f["psi"] for name, f in report["features"].items() if f["psi"] > threshold}
    if over:
        listed = ", ".join(f"{n} (PSI {v:.3f})" for n, v in sorted(over.items(), key=lambda kv: -kv[1]))
        raise DriftDetected(
            f"drift over threshold PSI {threshold:g} in {len(over)} feature(s): {listed}. The current data's "
            "distribution differs from the reference snapshot; check the upstream source or retrain "
            "before trusting scores.", over)
    return report


def thresholds(params: dict) -> tuple[float, int]:
    """(max_psi, bins) from params.yaml `drift:`."""
    d = params.get("drift", {})
    return float(d.get("max_psi", 0.2)), int(d.get("bins", 10))
