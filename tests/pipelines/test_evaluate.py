"""Holdout metrics and the promotion gate on hand-built arrays with known answers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from campaignops.models.arms import arm_matrix
from campaignops.pipelines.evaluate import gate, holdout_metrics
from campaignops.validation.contract import CONTROL

THRESHOLDS = {"min_auc": 0.6, "max_logloss": 0.6, "min_qini": 0.0, "min_policy_value_fraction": 0.5,
              "champion_tolerance": 0.005}


def randomized_world(n=6000, seed=0):
    """Two campaigns (2 and 3 variants) with heterogeneous true response; random assignment."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for i in range(n):
        camp, k = ("C1", 2) if i % 2 else ("C2", 3)
        arms = [f"{camp}-V{j}" for j in range(1, k + 1)] + [CONTROL]
        base = rng.uniform(0.02, 0.2)
        p = {a: float(np.clip(base + (rng.uniform(-0.05, 0.3) if a != CONTROL else 0), 0, 1)) for a in arms}
        logged = arms[rng.integers(len(arms))]
        y = int(rng.random() < p[logged])
        for a in arms:
            rows.append({"exposure_id": f"x{i:05d}", "campaign_id": camp, "variant_id": logged, "arm_id": a,
                         "responded": y})
            truth.append({"exposure_id": f"x{i:05d}", "variant_id": a, "p_response": p[a]})
    return pd.DataFrame(rows), pd.DataFrame(truth)


def test_arm_matrix_puts_control_last_and_pads_missing_arms():
    frame, truth = randomized_world(10)
    arms, values = arm_matrix(frame, np.arange(len(frame), dtype=float))
    assert (arms.iloc[:, -1] == CONTROL).all()
    assert values.shape == (10, 4)
    c1 = arms.index[arms.iloc[:, 0].str.startswith("C1")]
    assert np.isnan(values[arms.index.get_indexer(c1), 2]).all()  # C1 has 2 variants only


def test_truth_as_predictions_reaches_the_oracle():
    frame, truth = randomized_world()
    p = frame.merge(truth.rename(columns={"variant_id": "arm_id"}), on=["exposure_id", "arm_id"])["p_response"]
    m = holdout_metrics(frame, p.to_numpy(), truth)
    assert m["policy_value_fraction"] == pytest.approx(1.0)
    assert m["qini"] > 0.05
    assert m["policy_value_ips"] > m["control_value_ips"]
    noise = np.random.default_rng(1).uniform(0, 1, len(frame))
    r = holdout_metrics(frame, noise, truth)
    assert r["policy_value_fraction"] < 0.5 and abs(r["auc"] - 0.5) < 0.05


def test_gate_reasons_name_the_failing_metric_and_champion():
    good = {"auc": 0.7, "logloss": 0.3, "qini": 0.1, "policy_value_fraction": 0.9, "policy_value_true": 0.2}
    assert gate(good, None, THRESHOLDS) == (True, [])
    ok, reasons = gate({**good, "auc": 0.55}, None, THRESHOLDS)
    assert not ok and any("auc" in r for r in reasons)
    ok, reasons = gate(good, {**good, "policy_value_true": 0.21}, THRESHOLDS)
    assert not ok and "champion" in reasons[0]
    assert gate(good, {**good, "policy_value_true": 0.204}, THRESHOLDS)[0]  # within tolerance


def test_policy_lead_is_the_difference_in_policy_value_with_a_paired_bootstrap_sd():
    from campaignops.pipelines.evaluate import lead_verdict, policy_choice, policy_lead

    frame, truth = randomized_world()
    p_true = frame.merge(truth.rename(columns={"variant_id": "arm_id"}), on=["exposure_id", "arm_id"])["p_response"]
    oracle = p_true.to_numpy()
    noise = np.random.default_rng(1).uniform(0, 1, len(frame))
    for t in (truth, None):    # true policy value (synthetic) and SNIPS on the logs (real data)
        a, b = holdout_metrics(frame, oracle, t), holdout_metrics(frame, noise, t)
        lead = policy_lead(policy_choice(frame, oracle, t), policy_choice(frame, noise, t), draws=200)
        key = "policy_value_true" if t is not None else "policy_value_ips"
        assert lead["metric"] == key
        assert lead["lead"] == pytest.approx(a[key] - b[key], abs=1e-12)
        assert 0 < lead["sd"] < abs(lead["lead"]) / 3      # the oracle's lead over noise is far beyond its sd
        assert lead_verdict(lead["lead"], lead["sd"], 2.0) == "ahead"
        back = policy_lead(policy_choice(frame, noise, t), policy_choice(frame, oracle, t), draws=200)
        assert back["lead"] == pytest.approx(-lead["lead"]) and back["sd"] == pytest.approx(lead["sd"])
        assert lead_verdict(back["lead"], back["sd"], 2.0) == "behind"
    # same choices: no lead, no spread
    same = policy_lead(policy_choice(frame, oracle, truth), policy_choice(frame, oracle + 1e-3, truth), draws=50)
    assert same["lead"] == 0 and same["sd"] == 0 and lead_verdict(same["lead"], same["sd"], 2.0) == "tie"
    # The sd is that of the paired difference: far below the sd of either model's value alone.
    rng = np.random.default_rng(2)
    near = oracle + rng.normal(0, 0.01, len(oracle))
    lead = policy_lead(policy_choice(frame, oracle, truth), policy_choice(frame, near, truth), draws=200)
    n = frame["exposure_id"].nunique()
    assert lead["sd"] < truth.groupby("exposure_id")["p_response"].max().std() / np.sqrt(n) / 3
    assert lead_verdict(0.01, 0.004, 2.0) == "ahead" and lead_verdict(0.007, 0.004, 2.0) == "tie"
    assert lead_verdict(-0.009, 0.004, 2.0) == "behind" and lead_verdict(-0.001, float("nan"), 2.0) == "behind"
    assert lead_verdict(float("nan"), 0.01, 2.0) == "undetermined"


def test_qini_floor_allows_a_random_rankings_noise_but_not_a_clear_loss():
    good = {"auc": 0.7, "logloss": 0.3, "qini": -0.015, "policy_value_fraction": 0.9, "policy_value_true": 0.2,
            "qini_random_sd": 0.01}
    noisy = {**THRESHOLDS, "qini_tolerance_sd": 2.0}
    assert gate(good, None, noisy) == (True, [])                            # within 2 sd of 0
    ok, reasons = gate({**good, "qini": -0.025}, None, noisy)               # beyond 2 sd
    assert not ok and "qini" in reasons[0] and "random-ranking sd 0.0100" in reasons[0]
    assert not gate(good, None, {**noisy, "qini_tolerance_sd": 0.0})[0]     # plain threshold
    assert not gate({**good, "qini_random_sd": float("nan")}, None, noisy)[0]  # sd not measured
    assert not gate({k: v for k, v in good.items() if k != "qini_random_sd"}, None, noisy)[0]


def test_truth_looked_up_once_gives_the_same_metrics_on_the_frame_and_its_subsets():
    from campaignops.pipelines.evaluate import attach_truth

    frame, truth = randomized_world(600, seed=5)
    p = np.random.default_rng(2).random(len(frame))
    attached = attach_truth(frame, truth)
    assert "p_true" in attached and "p_true" not in frame and attach_truth(frame, None) is frame
    assert holdout_metrics(attached, p, truth) == pytest.approx(holdout_metrics(frame, p, truth), nan_ok=True)
    sub = attached["exposure_id"].isin(attached["exposure_id"].unique()[::3]).to_numpy()
    plain_sub = frame[sub].reset_index(drop=True)
    assert (holdout_metrics(attached[sub].reset_index(drop=True), p[sub], truth)
            == pytest.approx(holdout_metrics(plain_sub, p[sub], truth), nan_ok=True))
    assert holdout_metrics(plain_sub, p[sub], truth)["oracle_value"] != pytest.approx(
        holdout_metrics(frame, p, truth)["oracle_value"])


def targeted_world(n=20000, seed=3, explore=0.2):
    """One campaign, two arms + control; the logging policy sends each user its truly best arm
    with probability 1 − explore, else an arm uniformly at random, and logs that propensity."""
    rng = np.random.default_rng(seed)
    arms = ["V1", "V2", CONTROL]
    rows, truth = [], []
    for i in range(n):
        base = rng.uniform(0.02, 0.3)
        p = {"V1": base + rng.uniform(-0.05, 0.25), "V2": base + rng.uniform(-0.05, 0.25), CONTROL: base}
        best = max(arms, key=p.get)
        prop = {a: explore / 3 + (1 - explore) * (a == best) for a in arms}
        logged = arms[rng.choice(3, p=[prop[a] for a in arms])]
        y = int(rng.random() < p[logged])
        for a in arms:
            rows.append({"exposure_id": f"x{i:05d}", "campaign_id": "C", "variant_id": logged, "arm_id": a,
                         "responded": y, "propensity": prop[logged]})
            truth.append({"exposure_id": f"x{i:05d}", "variant_id": a, "p_response": p[a]})
    return pd.DataFrame(rows), pd.DataFrame(truth)


def test_on_targeted_logs_ips_uses_the_logged_propensities_and_recovers_the_true_value():
    """The holdout of a live platform is chosen by its own targeting: SNIPS with the logged
    propensities estimates a policy's true value; treating the log as randomized (arm shares,
    what a log without propensities gets) does not."""
    frame, truth = targeted_world()
    noise = np.random.default_rng(4).random(len(frame))        # a policy unrelated to the logger's
    logged = holdout_metrics(frame, noise, truth)
    as_if_random = holdout_metrics(frame.drop(columns="propensity"), noise, truth)
    true = logged["policy_value_true"]
    assert as_if_random["policy_value_true"] == true
    assert abs(logged["policy_value_ips"] - true) < 0.015
    assert abs(as_if_random["policy_value_ips"] - true) > 2 * abs(logged["policy_value_ips"] - true)
