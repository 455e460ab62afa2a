"""Evaluation metrics for campaign response and multi-variant uplift models.

Pure numpy: every function takes array-likes, converts them with ``np.asarray``
and returns plain Python floats (scalars) or numpy arrays.

Conventions
-----------
* Binary labels (``y``) and treatment flags (``treatment``) must contain only
  0/1 (bool is fine).  Invalid input (empty arrays, length mismatch, non-finite
  values, probabilities outside [0, 1], a single class where the metric needs
  both) raises ``ValueError`` with a message naming the argument.
* The uplift metrics (``qini_curve``, ``qini_auc_score``, ``uplift_curve``,
  ``uplift_auc_score``, ``uplift_at_k``) reproduce scikit-uplift 0.5.1
  (``sklift.metrics``) exactly, including its tie handling and curve points.
  Where sklift silently returns nan/inf for a degenerate normalisation
  (perfect-curve area equal to the baseline area) we raise ``ValueError``.
* They also take ``sample_weight`` (sklift 0.5.1's do not): a row of weight w counts
  as w rows in every count of the curves, of their perfect and random references and
  of uplift@k's top share (a float k is a share of the total weight), so integer weights
  give the metric of the data with each row repeated w times.  Evaluation passes
  inverse-propensity weights so targeted logs are judged as if randomized
  (models/arms.py).  ``sample_weight=None`` runs the unweighted code unchanged.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "auc",
    "log_loss",
    "ece",
    "reliability_curve",
    "qini_curve",
    "perfect_qini_curve",
    "qini_auc_score",
    "uplift_curve",
    "perfect_uplift_curve",
    "uplift_auc_score",
    "uplift_at_k",
    "snips_policy_value",
    "fraction_of_oracle",
    "revenue_rmse",
    "budgeted_choice",
]


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _vector(x, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """Return ``x`` as a finite 1-D float64 array."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric or bool, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _binary(x, name: str, *, both_classes: bool) -> np.ndarray:
    """Return ``x`` as a 1-D float64 array of 0/1, optionally requiring both values."""
    a = _vector(x, name)
    is_one = a == 1.0
    is_zero = a == 0.0
    if not np.all(is_one | is_zero):
        raise ValueError(f"{name} must contain only 0 and 1, got values {np.unique(a)[:10]}")
    if both_classes:
        n_one = int(is_one.sum())
        if n_one == 0 or n_one == a.size:
            raise ValueError(
                f"{name} contains a single class ({int(a[0])}); both 0 and 1 are required"
            )
    return a


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inconsistent lengths: {lengths}")
    return next(iter(lengths.values()))


def _probability(p, name: str = "p") -> np.ndarray:
    a = _vector(p, name)
    if np.any(a < 0.0) or np.any(a > 1.0):
        raise ValueError(f"{name} must lie in [0, 1]")
    return a


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area under the piecewise-linear curve through (x, y)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


# --------------------------------------------------------------------------- #
# binary classification / calibration
# --------------------------------------------------------------------------- #
def auc(y, p) -> float:
    """ROC AUC of scores ``p`` for binary labels ``y`` (ties count 1/2); ValueError if ``y`` has one class."""
    y = _binary(y, "y", both_classes=True)
    p = _vector(p, "p")
    _same_length(y=y, p=p)
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    # average (1-based) rank of each tie block
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    ends = np.r_[starts[1:], ps.size]
    block_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(block_rank, ends - starts)
    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    rank_sum_pos = float(np.dot(ranks, y[order]))
    return (rank_sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)


def log_loss(y, p, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy of probabilities ``p`` (clipped to [eps, 1-eps]) for labels ``y``."""
    y = _binary(y, "y", both_classes=False)
    p = _probability(p)
    _same_length(y=y, p=p)
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def _bin_ids(p: np.ndarray, n_bins: int) -> np.ndarray:
    # Same convention as sklearn.calibration.calibration_curve(strategy="uniform"):
    # n_bins equal-width bins on [0, 1], right-closed, the first one also holding 0.
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    return np.searchsorted(edges[1:-1], p, side="left")


def reliability_curve(y, p, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of ``p``: (mean predicted, observed positive rate, count); NaN for empty bins."""
    y = _binary(y, "y", both_classes=False)
    p = _probability(p)
    _same_length(y=y, p=p)
    ids = _bin_ids(p, n_bins)
    counts = np.bincount(ids, minlength=n_bins).astype(np.int64)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(ids, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / counts, np.nan)
        rate = np.where(counts > 0, sum_y / counts, np.nan)
    return mean_p, rate, counts


def ece(y, p, n_bins: int = 10) -> float:
    """Expected calibration error: sum over non-empty bins of (count/n) * |mean p - positive rate|."""
    mean_p, rate, counts = reliability_curve(y, p, n_bins)
    nz = counts > 0
    return float(np.sum(counts[nz] * np.abs(mean_p[nz] - rate[nz])) / counts.sum())


# --------------------------------------------------------------------------- #
# single-treatment uplift metrics (scikit-uplift definitions)
# --------------------------------------------------------------------------- #
def _weights(sample_weight, n: int) -> np.ndarray | None:
    """``sample_weight`` as a finite, positive 1-D float64 array of length n (None stays None)."""
    if sample_weight is None:
        return None
    w = _vector(sample_weight, "sample_weight")
    if w.size != n:
        raise ValueError(f"sample_weight has {w.size} rows, y {n}")
    if np.any(w <= 0.0):
        raise ValueError(f"sample_weight must be positive, got minimum {w.min()!r}")
    return w


def _uplift_inputs(y, uplift, treatment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = _binary(y, "y", both_classes=True)
    t = _binary(treatment, "treatment", both_classes=True)
    u = _vector(uplift, "uplift")
    _same_length(y=y, uplift=u, treatment=t)
    return y, u, t


def _cumulative_counts(y, uplift, t, w=None):
    """Cumulative (n_all, n_trmnt, y_trmnt, n_ctrl, y_ctrl) at each distinct-score threshold, best
    first; with weights `w` the counts are sums of weights."""
    order = np.argsort(uplift, kind="mergesort")[::-1]
    y, u, t = y[order], uplift[order], t[order]
    thresholds = np.r_[np.flatnonzero(np.diff(u)), u.size - 1]
    if w is not None:
        w = w[order]
        return (np.cumsum(w)[thresholds], np.cumsum(w * t)[thresholds], np.cumsum(w * y * t)[thresholds],
                np.cumsum(w * (1.0 - t))[thresholds], np.cumsum(w * y * (1.0 - t))[thresholds])
    n_trmnt = np.cumsum(t, dtype=np.float64)[thresholds]
    y_trmnt = np.cumsum(y * t, dtype=np.float64)[thresholds]
    y_ctrl = np.cumsum(y * (1.0 - t), dtype=np.float64)[thresholds]
    n_all = thresholds + 1
    n_ctrl = n_all - n_trmnt
    return n_all, n_trmnt, y_trmnt, n_ctrl, y_ctrl


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b != 0)


def _start_at_origin(x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.size == 0 or v[0] != 0 or x[0] != 0:
        return np.r_[0, x], np.r_[0.0, v]
    return x, v


def _qini_curve(y, u, t, w=None):
    n_all, n_t, y_t, n_c, y_c = _cumulative_counts(y, u, t, w)
    return _start_at_origin(n_all, y_t - y_c * _safe_div(n_t, n_c))


def _uplift_curve(y, u, t, w=None):
    n_all, n_t, y_t, n_c, y_c = _cumulative_counts(y, u, t, w)
    return _start_at_origin(n_all, (_safe_div(y_t, n_t) - _safe_div(y_c, n_c)) * n_all)


def qini_curve(y, uplift, treatment, sample_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve (x = number targeted, Y_t - Y_c * N_t/N_c) at each distinct uplift threshold; as sklift
    (weighted: x and the counts are sums of ``sample_weight``)."""
    y, u, t = _uplift_inputs(y, uplift, treatment)
    return _qini_curve(y, u, t, _weights(sample_weight, y.size))


def uplift_curve(y, uplift, treatment, sample_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """Uplift curve (x = number targeted, (rate_t - rate_c) * x) at each distinct threshold; as sklift
    (weighted: x, counts and rates are of ``sample_weight``)."""
    y, u, t = _uplift_inputs(y, uplift, treatment)
    return _uplift_curve(y, u, t, _weights(sample_weight, y.size))


def _perfect_qini(y, t, negative_effect: bool, w=None):
    if negative_effect:
        return _qini_curve(y, y * t - y * (1.0 - t), t, w)
    if w is not None:
        n_t, n_c = (w * t).sum(), (w * (1.0 - t)).sum()
        ratio_random = float((w * y * t).sum() - n_t * (w * y * (1.0 - t)).sum() / n_c)
        n = float(w.sum())
    else:
        n_t, n_c = t.sum(), (1.0 - t).sum()
        ratio_random = float((y * t).sum() - n_t * (y * (1.0 - t)).sum() / n_c)
        n = float(y.size)
    if ratio_random < 0:
        # sklift's curve would be non-monotone in x (sklearn.metrics.auc raises too)
        raise ValueError(
            "negative_effect=False is undefined when the overall treatment effect is negative "
            f"(random-targeting Qini end point {ratio_random:.6g} < 0)"
        )
    return np.array([0.0, ratio_random, n]), np.array([0.0, ratio_random, ratio_random])


def _perfect_uplift(y, t, w=None):
    cr, tn = (y == 1) & (t == 0), (y == 0) & (t == 1)   # control responders, treated non-responders
    cr_num, tn_num = (np.sum(cr), np.sum(tn)) if w is None else (np.sum(w[cr]), np.sum(w[tn]))
    summand = y if cr_num > tn_num else t
    return _uplift_curve(y, 2.0 * (y == t) + summand, t, w)


def perfect_qini_curve(y, treatment, negative_effect: bool = True, sample_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve of the best possible ranking (sklift's ``perfect_qini_curve``)."""
    y = _binary(y, "y", both_classes=True)
    t = _binary(treatment, "treatment", both_classes=True)
    _same_length(y=y, treatment=t)
    return _perfect_qini(y, t, bool(negative_effect), _weights(sample_weight, y.size))


def perfect_uplift_curve(y, treatment, sample_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """Uplift curve of the best possible ranking (sklift's ``perfect_uplift_curve``)."""
    y = _binary(y, "y", both_classes=True)
    t = _binary(treatment, "treatment", both_classes=True)
    _same_length(y=y, treatment=t)
    return _perfect_uplift(y, t, _weights(sample_weight, y.size))


def _normalised_area(actual, perfect) -> float:
    x_a, v_a = actual
    x_p, v_p = perfect
    baseline = _trapezoid(np.array([0.0, x_p[-1]]), np.array([0.0, v_p[-1]]))
    perfect_area = _trapezoid(x_p, v_p) - baseline
    if perfect_area == 0:
        raise ValueError("the perfect curve has the same area as random targeting; score undefined")
    return (_trapezoid(x_a, v_a) - baseline) / perfect_area


def qini_auc_score(y, uplift, treatment, negative_effect: bool = True, sample_weight=None) -> float:
    """Qini coefficient: (model area - random area) / (perfect area - random area), as sklift."""
    if not isinstance(negative_effect, (bool, np.bool_)):
        raise TypeError(f"negative_effect must be bool, got {type(negative_effect)}")
    y, u, t = _uplift_inputs(y, uplift, treatment)
    w = _weights(sample_weight, y.size)
    return _normalised_area(_qini_curve(y, u, t, w), _perfect_qini(y, t, bool(negative_effect), w))


def uplift_auc_score(y, uplift, treatment, sample_weight=None) -> float:
    """Normalised AUUC: (model area - random area) / (perfect area - random area) of the uplift curve, as sklift."""
    y, u, t = _uplift_inputs(y, uplift, treatment)
    w = _weights(sample_weight, y.size)
    return _normalised_area(_uplift_curve(y, u, t, w), _perfect_uplift(y, t, w))


def uplift_at_k(y, uplift, treatment, k: float | int = 0.3, strategy: str = "overall", sample_weight=None) -> float:
    """Response rate treated minus control among the top-k by uplift (sklift semantics; nan if a group is empty).
    Weighted: rates are weighted means and a float k takes the best rows up to that share of the
    total weight (of each group's, by_group); an int k still counts rows."""
    y, u, t = _uplift_inputs(y, uplift, treatment)
    w = _weights(sample_weight, y.size)
    if strategy not in ("overall", "by_group"):
        raise ValueError(f"strategy must be 'overall' or 'by_group', got {strategy!r}")
    n = y.size
    kind = np.asarray(k).dtype.kind
    if isinstance(k, (bool, np.bool_)) or kind not in "iuf":
        raise ValueError(f"k must be an int or a float, got {k!r}")
    if (kind in "iu" and not 0 < k < n) or (kind == "f" and not 0.0 < k < 1.0):
        raise ValueError(
            f"k={k} should be either a positive int smaller than the number of samples {n} "
            "or a float in the (0, 1) range"
        )
    order = np.argsort(u, kind="mergesort")[::-1]
    ys, ts = y[order], t[order]
    ws = np.ones(n) if w is None else w[order]

    def _mean(a: np.ndarray, wa: np.ndarray) -> float:
        if not a.size:
            return float("nan")
        return float(a.mean()) if w is None else float(np.dot(a, wa) / wa.sum())

    def _top(wa: np.ndarray) -> int:   # rows within share k of the weight `wa` (best first)
        return int(np.searchsorted(np.cumsum(wa), k * wa.sum(), side="right"))

    if strategy == "overall":
        size = int(k) if kind != "f" else int(n * k) if w is None else _top(ws)
        top_y, top_t, top_w = ys[:size], ts[:size], ws[:size]
        return _mean(top_y[top_t == 1], top_w[top_t == 1]) - _mean(top_y[top_t == 0], top_w[top_t == 0])
    n_ctrl_total, n_trmnt_total = int((t == 0).sum()), int((t == 1).sum())
    if kind != "f":
        n_ctrl = n_trmnt = int(k)
    elif w is None:
        n_ctrl, n_trmnt = int(n_ctrl_total * k), int(n_trmnt_total * k)
    else:
        n_ctrl, n_trmnt = _top(ws[ts == 0]), _top(ws[ts == 1])
    if n_ctrl > n_ctrl_total or n_trmnt > n_trmnt_total:
        raise ValueError(f"k={k} exceeds the size of the control ({n_ctrl_total}) "
                         f"or treatment ({n_trmnt_total}) group")
    treated, control = ts == 1, ts == 0
    return (_mean(ys[treated][:n_trmnt], ws[treated][:n_trmnt])
            - _mean(ys[control][:n_ctrl], ws[control][:n_ctrl]))


# --------------------------------------------------------------------------- #
# off-policy / policy value
# --------------------------------------------------------------------------- #
def _ips_weights(chosen_arm, logged_arm, reward, propensity):
    chosen, logged = np.asarray(chosen_arm), np.asarray(logged_arm)
    if chosen.ndim != 1 or logged.ndim != 1:
        raise ValueError("chosen_arm and logged_arm must be 1-D")
    r = _vector(reward, "reward")
    prop = _vector(propensity, "propensity")
    _same_length(chosen_arm=chosen, logged_arm=logged, reward=r, propensity=prop)
    if np.any(prop <= 0.0) or np.any(prop > 1.0):
        raise ValueError("propensity must lie in (0, 1]")
    return (chosen == logged) / prop, r


def snips_policy_value(chosen_arm, logged_arm, reward, propensity) -> float:
    """Self-normalised IPS: sum(w * reward) / sum(w), w = 1[chosen == logged] / propensity; ValueError if no match."""
    w, r = _ips_weights(chosen_arm, logged_arm, reward, propensity)
    total = w.sum()
    if total == 0:
        raise ValueError("no logged action matches the policy's choice; SNIPS is undefined")
    return float(np.sum(w * r) / total)


def fraction_of_oracle(policy: float, control: float, oracle: float) -> float:
    """Share of the achievable uplift reached: (policy - control) / (oracle - control); 1 = oracle, 0 = control-only."""
    gap = float(oracle) - float(control)
    if gap == 0:
        raise ValueError("oracle value equals control value; fraction of oracle is undefined")
    return (float(policy) - float(control)) / gap


def revenue_rmse(y_true, y_pred) -> float:
    """Root mean squared error between true and predicted revenue."""
    a, b = _vector(y_true, "y_true"), _vector(y_pred, "y_pred")
    _same_length(y_true=a, y_pred=b)
    return float(np.sqrt(np.mean((a - b) ** 2)))


# --------------------------------------------------------------------------- #
# decision rule
# --------------------------------------------------------------------------- #
def budgeted_choice(uplift_value: np.ndarray, cost: np.ndarray, budget: float | None,
                    min_value: float = 0.0) -> np.ndarray:
    """Per row pick argmax(value - cost) over arms with value - cost > min_value (else -1), then fill the budget greedily.

    Rule: arms whose net value ``uplift_value - cost[arm]`` is not strictly above
    ``min_value`` are ineligible (a send must pay for itself); among eligible arms
    the one with the largest net value is chosen (ties -> lowest arm index).  Rows
    with no eligible arm get -1.  If ``budget`` is given, eligible rows are ranked by their best
    net value (descending, ties -> lower row index) and taken in that order while
    the cumulative cost of their chosen arms stays <= ``budget``; from the first
    row that would exceed it on, every row gets -1 (a prefix, not a knapsack).
    Costs must be >= 0.  Returns int64 indices of shape (n,).
    """
    v = np.asarray(uplift_value, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"uplift_value must be 2-D (rows, arms), got shape {v.shape}")
    if c.ndim != 1 or c.size != v.shape[1]:
        raise ValueError(f"cost must be 1-D of length {v.shape[1]}, got shape {c.shape}")
    if v.shape[1] == 0:
        raise ValueError("uplift_value has no arms")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(c))):
        raise ValueError("uplift_value and cost must be finite")
    if np.any(c < 0):
        raise ValueError("cost must be non-negative")
    if budget is not None and (not np.isfinite(budget) or budget < 0):
        raise ValueError(f"budget must be a finite non-negative number or None, got {budget!r}")
    n = v.shape[0]
    choice = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return choice
    net = np.where(v - c > min_value, v - c, -np.inf)
    best = np.argmax(net, axis=1)
    best_net = net[np.arange(n), best]
    eligible = np.flatnonzero(best_net > -np.inf)
    if budget is None:
        choice[eligible] = best[eligible]
        return choice
    order = eligible[np.argsort(-best_net[eligible], kind="stable")]
    spent = np.cumsum(c[best[order]])
    taken = order[spent <= budget]  # spent is non-decreasing, so this is a prefix
    choice[taken] = best[taken]
    return choice
