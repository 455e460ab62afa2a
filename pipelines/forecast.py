"""The campaign forecast a scoring run commits to, and — on synthetic batches — how it compares
with the world's truth.

For the chosen targeting (exploration slice included: those sends happen too), per arm and in
total: sends, expected incremental responses (= conversions = orders in this contract: a
response is one purchase attributed to the send), incremental GMV (expected revenue under the
arm minus under no-send), spend, incremental value (responses × value per response) and ROI =
(incremental GMV − spend) / spend. Each with a central interval over the outcome noise of the
targeted users (independent Bernoulli responses under the arm and under no-send; normal
approximation of the sums). The interval says how much the realised effect varies around the
model's expectation; it does not include the model's own error — the truth check (synthetic) and
the feedback loop measure that."""
from __future__ import annotations

import numpy as np
from scipy.stats import norm


def _interval(mean: float, var: float, level: float) -> dict:
    z = float(norm.ppf(0.5 + level / 2))
    sd = float(np.sqrt(max(var, 0.0)))
    return {"forecast": float(mean), "lo": float(mean - z * sd), "hi": float(mean + z * sd)}


def _block(p_arm, p_ctl, r_arm, r_ctl, cost, value_per_response: float, level: float) -> dict:
    """Forecast of one group of sends (arrays over its users)."""
    inc = p_arm - p_ctl
    var_resp = p_arm * (1 - p_arm) + p_ctl * (1 - p_ctl)
    # order value given a response: revenue / p (0 where p is 0)
    v_arm = np.divide(r_arm, p_arm, out=np.zeros_like(r_arm), where=p_arm > 0)
    v_ctl = np.divide(r_ctl, p_ctl, out=np.zeros_like(r_ctl), where=p_ctl > 0)
    var_gmv = v_arm ** 2 * p_arm * (1 - p_arm) + v_ctl ** 2 * p_ctl * (1 - p_ctl)
    spend = float(cost.sum())
    gmv = _interval(float((r_arm - r_ctl).sum()), float(var_gmv.sum()), level)
    roi = {k: (gmv[k] - spend) / spend if spend > 0 else None for k in ("forecast", "lo", "hi")}
    resp = _interval(float(inc.sum()), float(var_resp.sum()), level)
    return {"sends": int(len(inc)), "spend": spend,
            "incremental_responses": resp, "incremental_conversions": resp, "incremental_orders": resp,
            "incremental_gmv": gmv,
            "incremental_value": {k: v * value_per_response for k, v in resp.items()},
            "roi": roi}


def campaign_forecast(p: np.ndarray, revenue: np.ndarray, chosen: np.ndarray, arm_ids: list[str],
                      arm_costs: np.ndarray, value_per_response: float, level: float = 0.9) -> dict:
    """p, revenue [users, arms] (control last); chosen arm index per user; arm_costs [arms]."""
    control = len(arm_ids) - 1
    p, revenue = np.asarray(p, np.float64), np.asarray(revenue, np.float64)
    rows = np.arange(len(p))

    def block(mask):
        r = rows[mask]
        return _block(p[r, chosen[r]], p[r, control], revenue[r, chosen[r]], revenue[r, control],
                      arm_costs[chosen[r]], value_per_response, level)

    sent = chosen != control
    out = {"level": level, "definitions": "incremental = under the chosen arm minus under no-send, summed over "
                                          "the users sent; a response is one conversion / order in this contract; "
                                          "intervals cover outcome noise only, not model error",
           "total": block(sent), "by_variant": {a: block(chosen == i) for i, a in enumerate(arm_ids[:-1])}}
    return out


def truth_check(true_p: np.ndarray, chosen: np.ndarray, forecast: dict, explored: np.ndarray) -> dict:
    """On synthetic batches: the targeting's true incremental responses (true_p [users, arms], control
    last, NaN where unknown), the oracle's at the same number of sends, and forecast ÷ truth."""
    control = true_p.shape[1] - 1
    gain = true_p[:, :-1] - true_p[:, -1:]
    rows = np.arange(len(true_p))
    sent = chosen != control
    ours = float(np.nansum(np.where(sent, gain[rows, np.minimum(chosen, control - 1)], 0.0)))
    n = int(sent.sum())
    best = np.sort(np.maximum(np.nan_to_num(gain, nan=0.0).max(axis=1), 0))[::-1]
    oracle = float(best[:n].sum())
    fc = forecast["total"]["incremental_responses"]["forecast"]
    greedy_sent = sent & ~explored
    model_only = float(np.nansum(np.where(greedy_sent, gain[rows, np.minimum(chosen, control - 1)], 0.0)))
    return {"true_incremental_responses": ours,
            "true_incremental_responses_model_sends": model_only,
            "oracle_same_count": oracle,
            "fraction_of_oracle_same_count": ours / oracle if n and oracle > 0 else None,
            "forecast_incremental_responses": fc,
            "forecast_over_truth": fc / ours if ours != 0 else None,
            "forecast_within_interval": bool(forecast["total"]["incremental_responses"]["lo"] <= ours
                                             <= forecast["total"]["incremental_responses"]["hi"])}
