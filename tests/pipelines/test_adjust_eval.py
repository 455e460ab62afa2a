"""Dynamic-adjustment regret on the evaluation holdout (pipelines/adjust_eval.py): in a constructed
world adjustment beats the static allocation when the model overstates a variant, costs at most a
little when the model is right, uniform is worse than a right model; seeded; report and metrics."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from campaignops.pipelines import adjust_eval
from campaignops.validation.contract import CONTROL
from conftest import project_settings

CFG = {"waves": 7, "outcome_delay_days": 1, "seeds": 3, "draws": 50, "bias_slot": 1, "bias": 0.06,
       "exploration_share": 0.1, "max_prior_strength": 10000.0, "min_exploration_share": 0.05,
       "max_daily_move": 0.25, "value_per_response": 30.0}


def world(n: int = 4000, seed: int = 0):
    """Three segments, two variants and control: variant 0 is the better one in segments 0 and 1,
    variant 1 in segment 2, by clear margins; P = T (the model is right)."""
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, 3, n)
    base = rng.uniform(0.03, 0.12, n)
    lift = np.array([[0.06, 0.02], [0.05, 0.01], [0.01, 0.05]])[seg] + rng.uniform(-0.01, 0.01, (n, 2))
    T = np.column_stack([base + lift[:, 0], base + lift[:, 1], base])
    return T.copy(), T, np.array([f"segment_{s}" for s in seg], dtype=object)


@pytest.fixture(scope="module")
def result():
    P, T, seg = world()
    return adjust_eval.run(P, T, seg, None, CFG, seed=0)


def test_adjustment_beats_static_when_the_model_overstates_a_variant(result):
    wrong = result["scenarios"]["wrong"]
    assert wrong["adjusted_regret"] < 0.7 * wrong["static_regret"]
    assert max(wrong["adjusted_regret_by_seed"]) < wrong["static_regret"]       # every seed, not only the mean


def test_adjustment_costs_at_most_a_little_when_the_model_is_right(result):
    right = result["scenarios"]["right"]
    assert right["adjusted_regret"] <= right["static_regret"] * 1.05
    assert right["static_oracle_share"] == 1.0                                  # P = T: the model's arm is the oracle's


def test_uniform_is_worse_than_a_right_model(result):
    right = result["scenarios"]["right"]
    assert right["uniform_regret"] > 2 * right["static_regret"]
    assert right["uniform_vs_static"] == pytest.approx(right["uniform_regret"] / right["static_regret"])
    cum = right["cumulative"]
    assert len(cum["static"]) == CFG["waves"] and np.all(np.diff(cum["adjusted"]) >= 0)
    assert cum["static"][-1] == pytest.approx(right["static_regret"])


def test_deterministic_for_a_seed(result):
    P, T, seg = world()
    again = adjust_eval.run(P, T, seg, None, CFG, seed=0)
    for name in ("right", "wrong"):
        got, want = again["scenarios"][name], result["scenarios"][name]
        assert got["adjusted_regret_by_seed"] == want["adjusted_regret_by_seed"]
        assert got["static_regret_by_seed"] == want["static_regret_by_seed"]
    other = adjust_eval.run(P, T, seg, None, {**CFG, "seeds": 1}, seed=1)
    assert other["scenarios"]["wrong"]["adjusted_regret"] != result["scenarios"]["wrong"]["adjusted_regret_by_seed"][0]


def test_campaigns_with_fewer_arms_costs_and_the_sends():
    """Two campaigns (2 and 1 variants, the missing slot NaN), per-slot costs: currency regret; users
    the model would not send are left out; the biased slot only exists in the first campaign."""
    P, T, seg = world(2000)
    camp = np.array(["C1", "C2"])[np.arange(2000) % 2]
    P[camp == "C2", 1] = T[camp == "C2", 1] = np.nan
    P[:100, :2] = P[:100, 2:3] - 0.01                                           # the model sends nobody of these
    cost = np.array([0.2, 0.1, 0.0])
    r = adjust_eval.run(P, T, seg, cost, {**CFG, "seeds": 1}, seed=0, campaigns=camp)
    assert r["unit"] == "currency" and r["campaigns"] == 2 and r["sends"] == 1900
    assert r["scenarios"]["wrong"]["static_regret"] > r["scenarios"]["right"]["static_regret"]
    assert all(np.isfinite(v) for v in adjust_eval.flat_metrics(r).values())
    with pytest.raises(ValueError, match="bias_slot"):
        adjust_eval.run(P, T, seg, cost, {**CFG, "bias_slot": 2}, seed=0)


def test_html_section_and_flat_metrics(result):
    html = adjust_eval.html_section(result)
    assert "<table>" in html and "adjusted / static" in html and "overstating slot 1 by +0.06" in html and "by seed" in html
    assert adjust_eval.html_section(None) == "" and adjust_eval.flat_metrics({}) == {}
    escaped = adjust_eval.html_section({**result, "scenarios": {"<b>": result["scenarios"]["right"]}})
    assert "&lt;b&gt;" in escaped and "<b>" not in escaped
    m = adjust_eval.flat_metrics(result)
    assert m["adjustment.right.static_regret"] == pytest.approx(result["scenarios"]["right"]["static_regret"])
    assert {"adjustment.wrong.adjusted_regret", "adjustment.wrong.adjusted_vs_static", "adjustment.sends"} <= set(m)


def test_config_reads_params(tmp_path):
    s = project_settings(tmp_path, lambda p: p["evaluate"]["adjustment"].update(seeds=2, bias=0.03))
    cfg = adjust_eval.config(s)
    assert cfg["seeds"] == 2 and cfg["bias"] == 0.03 and cfg["enabled"] is True
    assert cfg["max_daily_move"] == s.params["adjust"]["max_daily_move"]            # the bandit's own parameters
    assert cfg["value_per_response"] == s.params["score"]["value_per_response"]
    assert cfg["exploration_share"] == s.params["score"]["exploration"]["share"]


def test_holdout_inputs_in_policy_choice_order():
    """Campaign, segment_* label and per-slot cost per exposure, aligned with evaluate.PolicyChoice."""
    from campaignops.pipelines.evaluate import policy_choice

    rows = []
    for i, (camp, arms) in enumerate([("C2", ["C2-a", CONTROL]), ("C1", ["C1-a", "C1-b", CONTROL]),
                                      ("C1", ["C1-a", "C1-b", CONTROL])]):
        for a in arms:
            rows.append({"exposure_id": f"x{2 - i}", "campaign_id": camp, "variant_id": arms[0], "arm_id": a,
                         "responded": 0, "segment_0": float(i == 1), "segment_1": float(i == 2),
                         "cost_per_send": {"C2-a": 0.5, "C1-a": 0.2, "C1-b": 0.1}.get(a, 0.0)})
    expanded = pd.DataFrame(rows)
    choice = policy_choice(expanded, np.linspace(0.1, 0.5, len(expanded)), None)
    got = adjust_eval.holdout_inputs(choice, expanded)
    assert list(choice.arms.index) == ["x0", "x1", "x2"]
    assert list(got["campaigns"]) == ["C1", "C1", "C2"] and list(got["segments"]) == ["segment_1", "segment_0", "none"]
    np.testing.assert_allclose(got["cost"][2, [0, 2]], [0.5, 0.0])
    assert np.isnan(got["cost"][2, 1])
    np.testing.assert_allclose(got["cost"][0], [0.2, 0.1, 0.0])
    import pyarrow as pa

    again = adjust_eval.holdout_inputs(choice, pa.Table.from_pandas(expanded))
    assert list(again["segments"]) == list(got["segments"])
