"""Dynamic-adjustment regret on the evaluation holdout: what campaign_adjust (pipelines/adjust.py)
would have gained over the model's static allocation, in a synthetic world where the holdout's
true response probabilities are known. In memory and cheap (no store, no simulator days): the
bandit step is pipelines/adjust_policy.py's, with the product's `adjust:` parameters.

The experiment (pipelines/adjust_sim.py's, on the holdout). Per campaign of the holdout, the users
sent are those the model's policy sends (evaluate.PolicyChoice: best predicted arm, control = no
send); adjustment re-decides only their variant. They are split evenly at random into `waves`
daily waves. A share score.exploration.share of them is the scoring run's exploration slice: a
uniform variant, kept by every allocation (as adjust keeps it), its outcomes informing the
posterior and counting towards the exploration floor. Three allocations of the same sends:
- static: the model's variant, the one with the best predicted net value (what the scoring run's
  targeting gives a send: pipelines/targeting.assign), the slice's drawn one for the slice;
- uniform: every variant equally likely (its expectation);
- adjusted: wave 0 is the plan (the model's variant); on day d the outcomes of the waves sent by
  d − outcome_delay_days (Bernoulli draws from the truth) update the Beta posterior per (segment,
  variant) centred on the model (adjust_policy.posterior), the remaining model sends' exploitation
  distribution moves towards the Thompson target at most `max_daily_move` per segment
  (adjust_policy.thompson, move), the bandit tops the slice up to `min_exploration_share` of each
  segment's sends (bandit_floor, with_floor) and the day's wave draws its arms from that policy —
  the steps of adjust._decide, on arrays.

Regret of a send = the oracle's net value minus the send's, both under the truth: net value of
variant v = (p(v) − p(no send))·value_per_response − cost_v, the oracle's the best variant for that
user. With per-arm costs (the holdout's arm attribute cost_per_send) and score.value_per_response
the regret is in currency, as adjust_sim's; without costs it is in incremental responses
(value 1, cost 0: the variants are then compared by response alone, as evaluate's policy does).
Every figure is the mean over `seeds` seeds of the waves, the slice, the outcomes and the draws
(a seed gives both rows below the same waves, slice and outcome uniforms: paired). Per-day
cumulative regret counts every campaign as starting on day 0. The static row's regret includes
the slice's (as adjust_sim's does), so a right model's static regret is mostly the slice's.

Two rows: "right" — the model as it is (its own errors included); "wrong" — the same model with
one variant slot's predicted response raised by `bias` for everyone (adjust_sim's biased model),
same sends. The claim the report checks: adjusted beats static when the model is wrong about a
variant, and is not worse (beyond the price of the exploration floor) when it is right.

Segments: the product's — the features' segment_* one-hots (as adjust reads them from the scoring
features, pipelines/feedback.load_segments); `holdout_inputs` reads them, the campaigns and the
per-arm costs off the holdout table in PolicyChoice's row order."""
from __future__ import annotations

import time

import numpy as np

from campaignops.pipelines import adjust_policy as policy

SCENARIOS = ("right", "wrong")
DEFAULTS = {"enabled": True, "waves": 7, "outcome_delay_days": 1, "seeds": 3, "bias_slot": 0, "bias": 0.05,
            "exploration_share": 0.1,
            "max_prior_strength": 10000.0, "min_exploration_share": 0.05, "max_daily_move": 0.25, "draws": 200,
            "value_per_response": 30.0}


def config(settings) -> dict:
    """params evaluate.adjustment (the experiment) with the bandit's own parameters from `adjust:`
    (max_prior_strength, min_exploration_share, max_daily_move, draws; evaluate.adjustment.draws
    may lower the draws) and score.value_per_response."""
    from campaignops.pipelines.adjust import adjust_params

    p = settings.params
    cfg = dict((p.get("evaluate") or {}).get("adjustment") or {})
    bandit = adjust_params(settings)
    out = {"enabled": bool(cfg.get("enabled", DEFAULTS["enabled"])),
           "waves": int(cfg.get("waves", DEFAULTS["waves"])),
           "outcome_delay_days": int(cfg.get("outcome_delay_days", (p.get("data") or {}).get("sim", {}).get(
               "outcome_delay_days", DEFAULTS["outcome_delay_days"]))),
           "seeds": int(cfg.get("seeds", DEFAULTS["seeds"])),
           "bias_slot": int(cfg.get("bias_slot", DEFAULTS["bias_slot"])),
           "bias": float(cfg.get("bias", DEFAULTS["bias"])),
           "max_prior_strength": bandit["max_prior_strength"],
           "min_exploration_share": bandit["min_exploration_share"],
           "max_daily_move": bandit["max_daily_move"],
           "draws": int(cfg.get("draws") or bandit["draws"]),
           "exploration_share": float(((p.get("score") or {}).get("exploration") or {}).get(
               "share", DEFAULTS["exploration_share"])),
           "value_per_response": float((p.get("score") or {}).get("value_per_response",
                                                                   DEFAULTS["value_per_response"]))}
    if out["waves"] < 1 or out["seeds"] < 1 or out["outcome_delay_days"] < 1:
        raise ValueError("params.yaml evaluate.adjustment.waves, seeds and outcome_delay_days must be >= 1")
    return out


def holdout_inputs(choice, expanded) -> dict:
    """(campaigns, segments, cost) per exposure in the row order of `choice` (evaluate.PolicyChoice)
    from the holdout table `expanded` (one row per exposure × arm scored, pyarrow or pandas): the
    campaign id, the segment_* one-hot that is set ("none" when none is, "all" without segment
    columns) and the cost_per_send of each slot (NaN for slots a campaign does not have; None when
    the table has no costs: regret in responses)."""
    import pandas as pd

    from campaignops.models.arms import arm_matrix

    names = list(expanded.column_names if hasattr(expanded, "column_names") else expanded.columns)
    seg_cols = [c for c in names if c.startswith("segment_")]
    cols = ["exposure_id", "arm_id", "campaign_id", *seg_cols, *(["cost_per_send"] if "cost_per_send" in names else [])]
    df = expanded.select(cols).to_pandas() if hasattr(expanded, "select") and not isinstance(expanded, pd.DataFrame) \
        else expanded[cols]
    first = df.drop_duplicates("exposure_id").set_index("exposure_id").loc[choice.arms.index]
    if seg_cols:
        onehot = first[seg_cols].to_numpy(np.float64)
        segments = np.where(onehot.max(axis=1) > 0, np.array(seg_cols, dtype=object)[onehot.argmax(axis=1)], "none")
    else:
        segments = np.full(len(first), "all", dtype=object)
    cost = None
    if "cost_per_send" in df:
        arms, cost = arm_matrix(df, df["cost_per_send"].to_numpy(np.float64))
        if not arms.index.equals(choice.arms.index):
            cost = pd.DataFrame(cost, index=arms.index).loc[choice.arms.index].to_numpy()
    return {"campaigns": first["campaign_id"].to_numpy(object), "segments": segments, "cost": cost}


# --------------------------------------------------------------------------- the experiment

def run(P: np.ndarray, T: np.ndarray, segments, cost: np.ndarray | None = None, cfg: dict | None = None,
        seed: int = 0, campaigns=None, send: np.ndarray | None = None) -> dict:
    """Cumulative regret vs the oracle of the static, uniform and adjusted allocations of the model's
    sends, for the model as it is ("right") and biased on one variant slot ("wrong").

    P, T: [exposures, slots] predicted and true response, treatment slots first and control/no send
    in the last slot, NaN where a campaign lacks a slot (models.arms.arm_matrix; PolicyChoice.P, .T).
    segments: a label per exposure. cost: per-slot cost, [slots] or [exposures, slots] (the control
    slot's is ignored); None = regret in responses. campaigns: a label per exposure (slots mean
    different variants in different campaigns; None = one campaign). send: which exposures the model
    sends (default: the best predicted slot is not control, PolicyChoice.chosen). cfg: config()."""
    t0 = time.perf_counter()
    cfg = {**DEFAULTS, **(cfg or {})}
    P, T = np.asarray(P, np.float64), np.asarray(T, np.float64)
    if P.shape != T.shape or P.ndim != 2 or P.shape[1] < 2:
        raise ValueError(f"P and T must be [exposures, slots >= 2] of the same shape, got {P.shape} and {T.shape}")
    n, n_slots = P.shape
    control = n_slots - 1
    if cost is None:
        vpr, unit, cost_m = 1.0, "responses", np.zeros((n, n_slots))
    else:
        vpr, unit = float(cfg["value_per_response"]), "currency"
        cost_m = np.broadcast_to(np.asarray(cost, np.float64), (n, n_slots))
    if send is None:
        send = np.nanargmax(np.where(np.isnan(P), -np.inf, P), axis=1) != control
    send = np.asarray(send, bool)
    campaigns = np.zeros(n, np.int64) if campaigns is None else np.asarray(campaigns, dtype=object)
    segments = np.asarray(segments, dtype=object)
    wrong = P.copy()
    if not 0 <= cfg["bias_slot"] < control:
        raise ValueError(f"evaluate.adjustment.bias_slot must name a treatment slot (0..{control - 1}), "
                         f"got {cfg['bias_slot']}")
    wrong[:, cfg["bias_slot"]] = np.clip(wrong[:, cfg["bias_slot"]] + cfg["bias"], 1e-4, 1 - 1e-4)

    groups = []
    for c in dict.fromkeys(campaigns[send]):
        rows = np.flatnonzero(send & (campaigns == c))
        slots = [s for s in range(control) if np.isfinite(P[rows, s]).all() and np.isfinite(T[rows, s]).all()]
        if not slots or not np.isfinite(T[rows, control]).all():
            continue
        cols = [*slots, control]
        _, seg = np.unique(segments[rows].astype(str), return_inverse=True)
        costs = cost_m[rows][:, slots]
        if not np.isfinite(costs).all():
            raise ValueError(f"campaign {c!r}: a cost of one of its arms is not finite")
        groups.append({"rows": rows, "cols": cols, "seg": seg, "costs": costs[0], "p_true": T[rows][:, slots],
                       "true_net": policy.net_values(T[rows][:, cols], costs[0], vpr)})
    W = int(cfg["waves"])
    out = {"unit": unit, "sends": int(sum(len(g["rows"]) for g in groups)), "campaigns": len(groups),
           "segments": int(sum(g["seg"].max() + 1 for g in groups)), "waves": W,
           "oracle_net_value": float(sum(g["true_net"].max(axis=1).sum() for g in groups)),
           "config": {k: cfg[k] for k in ("waves", "outcome_delay_days", "seeds", "bias_slot", "bias", "draws",
                                          "exploration_share",
                                          "max_prior_strength", "min_exploration_share", "max_daily_move")},
           "scenarios": {}}
    for name, model in zip(SCENARIOS, (P, wrong)):
        # Seed k draws the same waves, slice and outcome uniforms for both rows (paired); the rows differ
        # by the model only.
        runs = [_one(groups, model, vpr, cfg, (int(seed), k)) for k in range(cfg["seeds"])]
        cum = {a: np.mean([r[a] for r in runs], axis=0) for a in ("static", "uniform", "adjusted")}
        total = {a: float(cum[a][-1]) for a in cum}
        adjusted_each = [float(r["adjusted"][-1]) for r in runs]
        out["scenarios"][name] = {
            "bias": None if name == "right" else {"slot": cfg["bias_slot"], "size": cfg["bias"]},
            "static_regret": total["static"], "uniform_regret": total["uniform"],
            "adjusted_regret": total["adjusted"], "adjusted_regret_by_seed": adjusted_each,
            "static_regret_by_seed": [float(r["static"][-1]) for r in runs],
            "adjusted_vs_static": total["adjusted"] / total["static"] if total["static"] > 0 else float("nan"),
            "uniform_vs_static": total["uniform"] / total["static"] if total["static"] > 0 else float("nan"),
            "static_oracle_share": float(runs[0]["static_is_oracle"].mean()) if out["sends"] else float("nan"),
            "cumulative": {a: cum[a].tolist() for a in cum}}
    out["seconds"] = time.perf_counter() - t0
    return out


def _one(groups: list[dict], model: np.ndarray, vpr: float, cfg: dict, key: tuple) -> dict:
    """One seed: per-day cumulative regret of the three allocations, summed over the campaigns. Per
    campaign, the design (waves, slice, its arms, the uniforms of the arm draws and of the outcomes)
    comes from one stream and the posterior draws from another, so the same seed gives both rows the
    same design (common random numbers)."""
    W = int(cfg["waves"])
    cum = {a: np.zeros(W) for a in ("static", "uniform", "adjusted")}
    oracle_hits = []
    for j, g in enumerate(groups):
        design, draws = np.random.default_rng([*key, j, 0]), np.random.default_rng([*key, j, 1])
        pred = model[g["rows"]][:, g["cols"]]
        true_net = g["true_net"]
        n, k = true_net.shape
        best = true_net.max(axis=1)
        wave = design.permutation(n) % W
        explored = design.random(n) < cfg["exploration_share"]       # the scoring run's slice: a uniform variant
        static_arm = np.where(explored, design.integers(0, k, n),
                              policy.net_values(pred, g["costs"], vpr).argmax(axis=1))
        u = design.random((n, 2))                                    # the arm draw's and the outcome's uniform
        arm = _adjusted_arms(pred[:, :-1], g, wave, explored, static_arm, u, vpr, cfg, draws)
        idx = np.arange(n)
        for a, r in (("static", best - true_net[idx, static_arm]), ("uniform", best - true_net.mean(axis=1)),
                     ("adjusted", best - true_net[idx, arm])):
            cum[a] += np.cumsum(np.bincount(wave, weights=r, minlength=W))
        oracle_hits.append(true_net[idx[~explored], static_arm[~explored]] >= best[~explored])
    return {**cum, "static_is_oracle": np.concatenate(oracle_hits) if oracle_hits else np.zeros(0, bool)}


def _adjusted_arms(pred: np.ndarray, g: dict, wave: np.ndarray, explored: np.ndarray, static_arm: np.ndarray,
                   u: np.ndarray, vpr: float, cfg: dict, rng: np.random.Generator) -> np.ndarray:
    """The arm each send gets when the campaign is adjusted day by day (adjust._decide's steps): the
    model's sends are re-drawn, the exploration slice keeps its arms and counts towards the floor."""
    W, delay, seg = int(cfg["waves"]), int(cfg["outcome_delay_days"]), g["seg"]
    S, (n, k) = int(seg.max()) + 1, pred.shape
    model = ~explored
    h = np.eye(k)[static_arm]           # exploitation distribution: the plan = the model's arm
    pi = h.copy()                       # the policy in effect (the plan has no floor)
    arm = static_arm.copy()
    y = np.zeros(n)
    for d in range(W):
        landed = wave <= d - delay
        if d > 0 and landed.any():
            post = policy.posterior(seg[landed], arm[landed], y[landed], pred[landed], seg, pred, S,
                                    cfg["max_prior_strength"])
            rest = model & (wave >= d)
            q = policy.thompson(pred[rest], seg[rest], g["costs"], vpr, post, int(cfg["draws"]), rng)
            h[rest] = policy.move(h[rest], q, seg[rest], S, cfg["max_daily_move"])[0]
            slice_sends = np.bincount(seg[explored & (wave >= d)], minlength=S)
            floor = policy.bandit_floor(cfg["min_exploration_share"], slice_sends,
                                        slice_sends + np.bincount(seg[rest], minlength=S))
            pi[rest] = policy.with_floor(h[rest], floor[seg[rest]])
        now = np.flatnonzero(model & (wave == d))
        arm[now] = policy.draw(pi[now], u[now, 0])
        sent = wave == d
        y[sent] = u[sent, 1] < g["p_true"][sent, arm[sent]]
    return arm


# --------------------------------------------------------------------------- report and metrics

def flat_metrics(result: dict | None) -> dict[str, float]:
    """MLflow metrics adjustment.<right|wrong>.<figure> (finite values only) and adjustment.sends."""
    if not result or not result.get("scenarios"):
        return {}
    out = {"adjustment.sends": result["sends"]}
    for name, s in result["scenarios"].items():
        for k in ("static_regret", "uniform_regret", "adjusted_regret", "adjusted_vs_static", "uniform_vs_static",
                  "static_oracle_share"):
            out[f"adjustment.{name}.{k}"] = s[k]
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and np.isfinite(v)}


def html_section(result: dict | None) -> str:
    """The evaluation report's section: total regret vs the oracle of the static, uniform and
    adjusted allocations, the model as it is and overstating one variant."""
    from campaignops.pipelines.report import _table

    if not result or not result.get("scenarios"):
        return ""
    c = result["config"]
    label = {"right": "model as it is", "wrong": f"model overstating slot {c['bias_slot']} by {c['bias']:+g}"}
    rows = []
    for name, s in result["scenarios"].items():
        paired = [a / b for a, b in zip(s["adjusted_regret_by_seed"], s["static_regret_by_seed"]) if b > 0]
        rows.append({"model": label.get(name, name), "static regret": f"{s['static_regret']:,.1f}",
                     "uniform regret": f"{s['uniform_regret']:,.1f}", "adjusted regret": f"{s['adjusted_regret']:,.1f}",
                     "adjusted / static": f"{s['adjusted_vs_static']:.3f}",
                     "by seed": f"{min(paired):.3f}–{max(paired):.3f}" if paired else "",
                     "uniform / static": f"{s['uniform_vs_static']:.2f}",
                     "static arm = oracle's": f"{s['static_oracle_share']:.3f}"})
    unit = "currency units (value per response × uplift − cost)" if result["unit"] == "currency" \
        else "incremental responses"
    return "\n".join([
        "<h2>Dynamic adjustment: regret vs the oracle on the holdout</h2>",
        f"<p>The model's {result['sends']} holdout sends (campaigns: {result['campaigns']}, segments: "
        f"{result['segments']}) in {result['waves']} daily waves; adjusted = campaign_adjust's Thompson step each day on the "
        f"outcomes landed (drawn from the truth), mean of {c['seeds']} seeds; a share {c['exploration_share']:g} "
        "of the sends is the scoring run's exploration slice (uniform variant) in every allocation. Regret in "
        f"{unit}; the oracle's net value {result['oracle_net_value']:,.1f}. Adjustment should beat static when "
        "the model is wrong and cost little when it is right (Thompson mixing of near-tied variants).</p>",
        _table(rows)])
