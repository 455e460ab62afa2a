"""The report of an allocation version (report.json beside its manifest): per segment and variant
the evidence, the posterior beside the model, P(best), the exploration floor and the shares before,
targeted and after the capped move; in total the expected net value per send and the spend before
and after. Built from what pipelines/adjust.py decided; read by people and by the tests."""
from __future__ import annotations

from campaignops.pipelines import adjust_policy as policy


def adjustment_report(names: list[str], variants: list[str], post: policy.Posterior, d: dict, obs: dict,
                      level: float) -> dict:
    """Per segment and variant: the evidence, the posterior beside the model, P(best) and the shares
    before / target / after the capped move; in total the expected net value per send before and
    after under the posterior mean."""
    lo, hi = post.interval(level)
    seg, n_seg = d["seg"], len(names)
    before, after, target = (policy.segment_shares(x, seg, n_seg) for x in (d["g_prev"], d["g"], d["q"]))
    segments = {}
    for s, name in enumerate(names):
        segments[name] = {
            "remaining_model_sends": int((seg == s).sum()), "bandit_floor": float(d["floor"][s]),
            "move": {"target_distance": float(d["tv"][s]), "lambda": float(d["lam"][s]),
                     "moved": float(d["lam"][s] * d["tv"][s]), "capped": bool(d["lam"][s] < 1)},
            "variants": {v: {"sends": int(post.sends[s, i]), "responses": int(post.responses[s, i]),
                             "observed_rate": float(post.responses[s, i] / post.sends[s, i]) if post.sends[s, i] else None,
                             "model_rate": float(post.model_mean[s, i]), "posterior_mean": float(post.mean[s, i]),
                             "lo": float(lo[s, i]), "hi": float(hi[s, i]),
                             "model_bias": float(post.mean[s, i] - post.model_mean[s, i]),
                             "p_best": float(target[s, i]), "share_before": float(before[s, i]),
                             "share_after": float(after[s, i])} for i, v in enumerate(variants)}}
    shifted = (d["pred"] + (post.mean - post.model_mean)[seg]) * d["vpr"] - d["costs"]   # under the posterior mean
    n = max(len(seg), 1)
    g_prev, g = d["g_prev"], d["g"]
    return {"kind": "adjustment", "level": level,
            "observed": {"waves": obs["waves"], "rows": obs["rows"], "sends": obs["sends"],
                         "responses": int(obs["y"].sum())},
            "prior_strength": dict(zip(variants, map(float, post.strength))),
            "segments": segments,
            "total": {"remaining_model_sends": int(len(seg)),
                      "shares_before": dict(zip(variants, map(float, g_prev.sum(0) / n))),
                      "shares_after": dict(zip(variants, map(float, g.sum(0) / n))),
                      "expected_net_value_per_send": {"before": float((g_prev * shifted).sum() / n),
                                                      "after": float((g * shifted).sum() / n)},
                      "expected_spend": {"before": float((g_prev @ d["costs"]).sum()),
                                         "after": float((g @ d["costs"]).sum())}}}
