"""What a campaign actually did, measured from its own logged outcomes: inverse-propensity (and
doubly robust) estimates of the incremental responses and GMV of its sends, per variant, in total
and per segment, the greedy policy's value over no-send, and — on synthetic batches — the truth;
each set beside the scoring run's forecast. Pure functions of arrays and frames; the estimator is
derived in pipelines/feedback.py's docstring."""
from __future__ import annotations

from fnmatch import fnmatch

import numpy as np
import pandas as pd
from scipy.stats import norm

# metric -> (outcome column of the exposures, prefix of the model's per-arm columns in the scores)
METRICS = {"incremental_responses": ("responded", "p_"),
           "incremental_conversions": ("responded", "p_"),    # = responses in this contract (forecast.py)
           "incremental_gmv": ("revenue", "revenue_")}


class FeedbackError(ValueError):
    """Feedback cannot be computed for this request; the message says why and what to do."""


class OutcomesNotReady(FeedbackError):
    """The campaign's outcome rows have not landed (yet) in the batch looked at."""


# --------------------------------------------------------------------------- the estimator

def propensity_matrix(greedy: np.ndarray, n_arms: int, share: float) -> np.ndarray:
    """π[i, a] = share/A + (1 − share)·[a = g(i)]: every arm's probability under the scoring policy."""
    P = np.full((len(greedy), n_arms), share / n_arms)
    P[np.arange(len(greedy)), greedy] += 1.0 - share
    return P


def send_terms(y: np.ndarray, logged: np.ndarray, P: np.ndarray, arm: int | None = None,
               m_control: np.ndarray | None = None) -> np.ndarray:
    """Per-user terms whose sum estimates the incremental outcome of the users sent `arm` (None:
    any treatment): their outcome minus the control rows' outcomes weighted π(arm)/π(control). With
    `m_control` (the model's no-send prediction) the doubly robust form: residuals on both sides."""
    control = P.shape[1] - 1
    sent = logged != control if arm is None else logged == arm
    w = (1.0 - P[:, control] if arm is None else P[:, arm]) / P[:, control]
    r = y if m_control is None else y - m_control
    return np.where(sent, r, 0.0) - np.where(logged == control, r * w, 0.0)


def policy_terms(y: np.ndarray, logged: np.ndarray, greedy: np.ndarray, P: np.ndarray,
                 m: np.ndarray | None = None) -> np.ndarray:
    """Per-user terms whose sum estimates Σ_i μ_i(g_i) − μ_i(control): the greedy policy (every user
    gets the model's arm, no exploration) over no-send. IPW, or doubly robust with the model m [n, A]."""
    control = P.shape[1] - 1
    rows = np.arange(len(y))
    on_g, on_c = (logged == greedy) / P[rows, greedy], (logged == control) / P[:, control]
    if m is None:
        q = y * (on_g - on_c)
    else:
        mg, mc = m[rows, greedy], m[:, control]
        q = (mg - mc) + on_g * (y - mg) - on_c * (y - mc)
    return np.where(greedy != control, q, 0.0)


def interval(terms: np.ndarray, level: float) -> dict:
    """Σ terms with its standard error sqrt(n·var(terms)) (users independent) and a normal interval."""
    n = len(terms)
    est = float(terms.sum())
    se = float(np.sqrt(n * terms.var(ddof=1))) if n > 1 else 0.0
    z = float(norm.ppf(0.5 + level / 2))
    return {"estimate": est, "se": se, "lo": est - z * se, "hi": est + z * se}


def naive_difference(y: np.ndarray, sent: np.ndarray) -> float:
    """(mean outcome of the sent − of the not sent) × sends: biased under targeting (tests show how much)."""
    if not sent.any() or sent.all():
        return float("nan")
    return float((y[sent].mean() - y[~sent].mean()) * sent.sum())


# --------------------------------------------------------------------------- the comparison

def arrays(manifest: dict, scores: pd.DataFrame, outcomes: pd.DataFrame, params: dict) -> dict:
    """Join the scores run with its outcome rows (by user) and check that they belong together."""
    arms = [a["variant_id"] for a in manifest["arms"]]
    share = float(manifest["exploration"]["share"])
    cid = manifest["campaign_id"]
    if share <= 0:
        raise FeedbackError(f"scores run {manifest['score_run_id']} of {cid} has no exploration (share 0): no "
                            "randomized no-send counterfactual for its sends, so its effect cannot be measured; "
                            "score with score.exploration.share > 0")
    dup = outcomes["user_id"].duplicated()
    if dup.any():
        raise FeedbackError(f"campaign {cid}: {int(dup.sum())} users have more than one outcome row "
                            f"(e.g. {outcomes['user_id'][dup].iloc[0]!r}); one exposure per scored user expected")
    idx = {a: i for i, a in enumerate(arms)}
    unknown = ~outcomes["variant_id"].isin(arms)
    if unknown.any():
        raise FeedbackError(f"campaign {cid}: outcome rows with variants not in scores run "
                            f"{manifest['score_run_id']}: {sorted(outcomes['variant_id'][unknown].unique())[:5]}")
    j = scores.merge(outcomes.rename(columns={"propensity": "logged_propensity"}), on="user_id", how="inner")
    coverage = {"scored_users": int(len(scores)), "outcome_rows": int(len(outcomes)), "joined": int(len(j)),
                "scored_without_outcome": int(len(scores) - len(j)),
                "outcomes_without_score": int(len(outcomes) - len(j))}
    if len(j) < float(params.get("min_outcome_coverage", 0.99)) * len(scores):
        raise OutcomesNotReady(f"campaign {cid}: only {len(j)} of {len(scores)} scored users of run "
                               f"{manifest['score_run_id']} have outcome rows (feedback.min_outcome_coverage "
                               f"{params.get('min_outcome_coverage', 0.99)}): the outcomes have not fully landed")
    logged = j["variant_id"].map(idx).to_numpy(np.int64)
    chosen = j["chosen_variant"].map(idx).to_numpy(np.int64)
    greedy = j["greedy_variant"].map(idx).to_numpy(np.int64)
    P = propensity_matrix(greedy, len(arms), share)
    rows = np.arange(len(j))
    mismatch = logged != chosen
    coverage["arm_mismatches"] = int(mismatch.sum())
    if mismatch.mean() > float(params.get("max_arm_mismatch", 0.001)):
        raise FeedbackError(f"campaign {cid}: {int(mismatch.sum())} of {len(j)} outcome rows logged another arm "
                            f"than scores run {manifest['score_run_id']} chose (feedback.max_arm_mismatch): "
                            "were these sends made from another run? pass --scores-run")
    gap = np.abs(P[rows, chosen] - j["propensity"].to_numpy(np.float64))
    if "logged_propensity" in j:
        lp = j["logged_propensity"].to_numpy(np.float64)
        gap = np.concatenate([gap, np.abs(P[rows, logged] - lp)[~np.isnan(lp)]])
    coverage["propensity_max_abs_diff"] = float(gap.max()) if len(gap) else 0.0
    if coverage["propensity_max_abs_diff"] > 1e-6:
        raise FeedbackError(f"campaign {cid}: logged propensities differ from share/A + (1 − share)·[arm = greedy] "
                            f"by up to {coverage['propensity_max_abs_diff']:.3g}: not the targeting policy of "
                            "pipelines/targeting.py, so the per-arm propensities are unknown")
    return {"frame": j, "arms": arms, "logged": logged, "chosen": chosen, "greedy": greedy, "P": P,
            "share": share, "coverage": coverage}


def truth_matrices(truth: pd.DataFrame | None, users: pd.Series, arms: list[str]):
    """(p_response, expected_revenue) [users, arms] from the world's truth rows (NaN where absent)."""
    if truth is None or truth.empty:
        return None
    t = truth.sort_values("exposure_id", na_position="last").drop_duplicates(["user_id", "variant_id"])
    out = []
    for col in ("p_response", "expected_revenue"):
        w = t.pivot(index="user_id", columns="variant_id", values=col)
        out.append(w.reindex(index=users.to_numpy(), columns=arms).to_numpy(np.float64))
    return tuple(out)


def _metric(fc: dict | None, ipw: dict, dr: dict, truth: float | None) -> dict:
    out = {"forecast": fc, "actual": ipw, "actual_dr": dr, "truth": truth,
           "within_interval": None, "forecast_within_actual_interval": None, "forecast_over_actual": None,
           "forecast_over_truth": None}
    if fc:
        f = fc["forecast"]
        out["within_interval"] = bool(fc["lo"] <= ipw["estimate"] <= fc["hi"])
        out["forecast_within_actual_interval"] = bool(ipw["lo"] <= f <= ipw["hi"])
        out["forecast_over_actual"] = f / ipw["estimate"] if ipw["estimate"] else None
        out["forecast_over_truth"] = f / truth if truth else None
    return out


def _scope(a: dict, mask: np.ndarray, arm: int | None, forecast: dict | None, T, level: float) -> dict:
    """Forecast vs actual vs truth of the sends of `arm` (None: every treatment) among rows `mask`."""
    control = len(a["arms"]) - 1
    logged, P, j = a["logged"][mask], a["P"][mask], a["frame"][mask]
    sent = logged != control if arm is None else logged == arm
    block = {"sends": {"forecast": forecast.get("sends") if forecast else None, "actual": int(sent.sum())},
             "metrics": {}}
    for name, (col, prefix) in METRICS.items():
        y = j[col].to_numpy(np.float64)
        mc = j[prefix + a["arms"][-1]].to_numpy(np.float64)
        truth = None
        if T is not None:
            t = T[0 if col == "responded" else 1][mask]
            gain = t[np.arange(len(t)), logged] - t[:, control]
            truth = float(np.nansum(gain[sent]))
        block["metrics"][name] = _metric((forecast or {}).get(name), interval(send_terms(y, logged, P, arm), level),
                                         interval(send_terms(y, logged, P, arm, mc), level), truth)
    return block


def compare(manifest: dict, scores: pd.DataFrame, outcomes: pd.DataFrame, params: dict,
            truth: pd.DataFrame | None = None, segments: pd.DataFrame | None = None) -> dict:
    """The report's measurements: forecast vs actual vs truth per variant, in total, per segment;
    the greedy policy's value; the truth of the sends vs the oracle's; the gate's verdict."""
    a = arrays(manifest, scores, outcomes, params)
    level = float(params.get("level", 0.9))
    arms, j = a["arms"], a["frame"]
    T = truth_matrices(truth, j["user_id"], arms)
    everyone = np.ones(len(j), bool)
    fc = manifest["forecast"]
    report = {"campaign_id": manifest["campaign_id"], "scores_run_id": manifest["score_run_id"], "level": level,
              "forecast_level": fc.get("level"), "arms": arms,
              "exploration": {"share": a["share"], "arms": len(arms)}, "coverage": a["coverage"],
              "total": _scope(a, everyone, None, fc["total"], T, level),
              "by_variant": {v: _scope(a, everyone, i, fc["by_variant"].get(v), T, level)
                             for i, v in enumerate(arms[:-1])}}
    report["by_segment"] = _segments(a, manifest, segments, T, level)
    report["policy_value"] = _policy_value(a, T, level)
    report["truth"] = _truth(a, T)
    report["naive"] = {"incremental_responses": naive_difference(j["responded"].to_numpy(np.float64),
                                                                 a["logged"] != len(arms) - 1)}
    report["gate"] = gate(report, params.get("gate", {}))
    report["outside_interval"] = report["gate"].pop("outside_interval")   # what the check fails on
    return report


def _segments(a: dict, manifest: dict, segments: pd.DataFrame | None, T, level: float) -> dict:
    """Per segment of the scoring features (segment_* one-hots): its sends' forecast (forecast.py on
    the segment's users) vs actual vs truth."""
    from campaignops.pipelines.forecast import campaign_forecast

    if segments is None or segments.empty:
        return {}
    arms, j = a["arms"], a["frame"]
    label = j[["user_id"]].merge(segments, on="user_id", how="left")["segment"].fillna("none").to_numpy()
    p = j[[f"p_{x}" for x in arms]].to_numpy(np.float64)
    rev = j[[f"revenue_{x}" for x in arms]].to_numpy(np.float64)
    costs = np.array([x["cost_per_send"] for x in manifest["arms"]], np.float64)
    vpr = float(manifest.get("request", {}).get("value_per_response", 0.0))
    out = {}
    for s in sorted(set(label)):
        mask = label == s
        f = campaign_forecast(p[mask], rev[mask], a["chosen"][mask], arms, costs, vpr,
                              level=float(manifest["forecast"].get("level", 0.9)))["total"]
        out[str(s)] = {"users": int(mask.sum()), **_scope(a, mask, None, f, T, level)}
    return out


def _policy_value(a: dict, T, level: float) -> dict:
    """Σ_i μ_i(g_i) − μ_i(control) over every scored user: the model's own estimate (direct method),
    IPW, doubly robust (the model as outcome model) and, on synthetic data, the truth."""
    arms, j, g = a["arms"], a["frame"], a["greedy"]
    rows, control = np.arange(len(j)), len(arms) - 1
    out = {"definition": "every user gets the model's greedy arm (no exploration) vs nobody is sent; "
                         "sum over the scored users with an outcome row",
           "users_greedy_send": int((g != control).sum())}
    for name in ("incremental_responses", "incremental_gmv"):
        col, prefix = METRICS[name]
        y = j[col].to_numpy(np.float64)
        m = j[[prefix + x for x in arms]].to_numpy(np.float64)
        truth = None
        if T is not None:
            t = T[0 if col == "responded" else 1]
            truth = float(np.nansum(np.where(g != control, t[rows, g] - t[:, control], 0.0)))
        out[name] = {"model": float(np.where(g != control, m[rows, g] - m[:, control], 0.0).sum()),
                     "ipw": interval(policy_terms(y, a["logged"], g, a["P"]), level),
                     "dr": interval(policy_terms(y, a["logged"], g, a["P"], m), level), "truth": truth}
    return out


def _truth(a: dict, T) -> dict | None:
    """The sends' true incremental responses vs the oracle's at the same number of sends (top users
    by their true best uplift among the treatments)."""
    if T is None:
        return None
    t = T[0]
    control = t.shape[1] - 1
    rows, logged = np.arange(len(t)), a["logged"]
    sent = logged != control
    gain = t[rows, logged] - t[:, control]
    ours = float(np.nansum(gain[sent]))
    model_sends = float(np.nansum(gain[sent & (logged == a["greedy"])]))
    best = np.sort(np.maximum(np.nan_to_num(t[:, :control] - t[:, control:], nan=0.0).max(axis=1), 0.0))[::-1]
    oracle = float(best[:int(sent.sum())].sum())
    return {"sends": int(sent.sum()), "incremental_responses": ours,
            "incremental_responses_greedy_arm_sends": model_sends, "oracle_same_sends": oracle,
            "share_of_oracle": ours / oracle if oracle > 0 else None,
            "users_without_truth": int(np.isnan(t).any(axis=1).sum())}


def gate(report: dict, params: dict) -> dict:
    """Metrics (`<scope>.<metric>`, scope = total or a variant) matching feedback.gate.metrics whose
    actual is outside the forecast's interval; with rule `both` only those whose forecast is also
    outside the actual's own interval (the measurement's noise alone does not flag a metric)."""
    patterns = list(params.get("metrics", ["*.incremental_responses", "*.incremental_gmv"]))
    rule = params.get("rule", "both")
    if rule not in ("both", "forecast_interval"):
        raise FeedbackError(f"feedback.gate.rule must be both or forecast_interval, got {rule!r}")
    flagged, checked = [], []
    for scope, block in [("total", report["total"]), *report["by_variant"].items()]:
        for name, m in block["metrics"].items():
            key = f"{scope}.{name}"
            if m["within_interval"] is None or not any(fnmatch(key, p) for p in patterns):
                continue
            checked.append(key)
            if not m["within_interval"] and (rule == "forecast_interval" or not m["forecast_within_actual_interval"]):
                flagged.append(key)
    return {"rule": rule, "metrics": patterns, "checked": checked, "passed": not flagged, "outside_interval": flagged}
