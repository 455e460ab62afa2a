"""Leave-campaign-out figures on hand-built campaigns with a known truth."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from campaignops.pipelines import new_campaigns as nc
from campaignops.validation.contract import CONTROL


def campaign(n=20000, seed=0, explore=None, campaign_id="C"):
    """One campaign, arms V1 and V2 + control, heterogeneous true response and revenue.
    explore=None: randomized (no propensity logged); else the logger sends each user its truly
    best arm with probability 1 − explore and logs that propensity."""
    rng = np.random.default_rng(seed)
    arms = ["V1", "V2", CONTROL]
    base = rng.uniform(0.02, 0.3, n)
    lift = np.c_[rng.uniform(-0.05, 0.25, n), rng.uniform(-0.05, 0.1, n), np.zeros(n)]
    T = base[:, None] + lift
    if explore is None:
        logged = rng.integers(0, 3, n)
        prop = np.full(n, np.nan)
    else:
        best = T.argmax(axis=1)
        probs = np.full((n, 3), explore / 3) + (1 - explore) * np.eye(3)[best]
        logged = np.array([rng.choice(3, p=row) for row in probs])
        prop = probs[np.arange(n), logged]
    y = (rng.random(n) < T[np.arange(n), logged]).astype(int)
    order_value = 40.0
    frame = pd.DataFrame({
        "exposure_id": np.repeat([f"{campaign_id}x{i:05d}" for i in range(n)], 3),
        "campaign_id": campaign_id,
        "variant_id": np.repeat(np.array(arms)[logged], 3),
        "arm_id": np.tile(arms, n),
        "responded": np.repeat(y, 3),
        "revenue": np.repeat(y * order_value, 3).astype(float),
        "propensity": np.repeat(prop, 3),
        "p_true": T.ravel(),
        "revenue_true": T.ravel() * order_value,
    })
    return frame


def test_a_model_that_knows_the_truth_forecasts_the_truth_and_the_actual_agrees_within_its_error():
    f = campaign(explore=None).drop(columns="propensity")
    figs = nc.campaign_figures(f, f["p_true"].to_numpy(), f["revenue_true"].to_numpy(), 0.3)
    for arm in ("V1", "V2"):
        r = figs["arms"][arm]["incremental_responses"]
        assert r["forecast"] == pytest.approx(r["truth"])
        assert abs(r["actual"] - r["truth"]) < 3 * r["actual_se"]
        g = figs["arms"][arm]["incremental_gmv"]
        assert g["forecast"] == pytest.approx(g["truth"]) and abs(g["actual"] - g["truth"]) < 3 * g["actual_se"]
    assert figs["targeting"]["share_of_oracle"] == pytest.approx(1.0)
    assert figs["targeting"]["random_share_of_oracle"] < 0.5
    assert figs["qini"] > 0.05


def test_targeted_logs_are_reweighted_by_their_propensities():
    """The logger sent each user its best arm 70% of the time: the users logged at V1 respond
    more than the audience would, and the naive difference of means overstates V1's effect."""
    f = campaign(n=40000, explore=0.3, seed=1)
    p = f["p_true"].to_numpy()
    weighted = nc.campaign_figures(f, p, f["revenue_true"].to_numpy(), 0.3)["arms"]["V1"]
    naive = nc.campaign_figures(f.drop(columns="propensity"), p, f["revenue_true"].to_numpy(), 0.3)["arms"]["V1"]
    truth, se = weighted["incremental_responses"]["truth"], weighted["incremental_responses"]["actual_se"]
    assert abs(weighted["incremental_responses"]["actual"] - truth) < 3 * se
    assert naive["incremental_responses"]["actual"] - truth > 3 * se


def test_share_of_the_oracle_at_equal_sends_ranks_wrong_models_below_right_ones():
    f = campaign(n=6000, seed=2)
    p_true = f["p_true"].to_numpy()
    noise = np.random.default_rng(3).random(len(f))
    inverted = np.where(f["arm_id"] == CONTROL, p_true, 2 * np.repeat(
        f.groupby("exposure_id", sort=False)["p_true"].transform("first").to_numpy()[::3], 3) - p_true)
    right = nc.campaign_figures(f, p_true, p_true, 0.3)["targeting"]
    rand = nc.campaign_figures(f, noise, noise, 0.3)["targeting"]
    wrong = nc.campaign_figures(f, inverted, inverted, 0.3)["targeting"]
    assert right["share_of_oracle"] == pytest.approx(1.0)
    assert right["sends"] == 1800 == rand["sends"] == wrong["sends"]
    assert wrong["share_of_oracle"] < rand["share_of_oracle"] < right["share_of_oracle"]
    assert abs(rand["share_of_oracle"] - rand["random_share_of_oracle"]) < 0.1


def test_pooled_sums_forecasts_and_weights_shares_by_the_oracle():
    a, b = campaign(n=4000, seed=4, campaign_id="A"), campaign(n=4000, seed=5, campaign_id="B")
    figs = {c: nc.campaign_figures(f, f["p_true"].to_numpy() * k, f["revenue_true"].to_numpy(), 0.3)
            for c, f, k in (("A", a, 1.0), ("B", b, 2.0))}
    pooled = nc.pooled(figs)
    ir = pooled["incremental_responses"]
    assert ir["forecast"] == pytest.approx(figs["A"]["incremental_responses"]["forecast"]
                                           + figs["B"]["incremental_responses"]["forecast"])
    assert ir["forecast_to_truth"] == pytest.approx(ir["forecast"] / ir["truth"])
    assert 1.2 < ir["forecast_to_truth"] < 2.0                     # B's forecast is doubled
    assert pooled["campaigns"] == 2 and pooled["share_of_oracle"] == pytest.approx(1.0)
    flat = nc.flat_metrics({"pooled": pooled})
    assert flat["new_campaigns.share_of_oracle"] == pytest.approx(1.0)
    assert "new_campaigns.incremental_responses.forecast_to_truth" in flat


def test_the_last_campaigns_with_treated_and_control_exposures_are_left_out():
    def t(rows):
        return pa.Table.from_pylist([{"campaign_id": c, "variant_id": v, "exposure_ts": ts} for c, v, ts in rows])

    tables = {"train": t([("A", "a1", 1), ("A", CONTROL, 2), ("B", "b1", 3), ("B", CONTROL, 3)]),
              "valid": t([("C", "c1", 5), ("D", "d1", 4)]),          # C, D: no control: not measurable
              "holdout": t([("E", CONTROL, 6), ("E", "e1", 7), ("B", "b1", 8)])}
    assert nc.campaigns_to_leave_out(tables, 2) == ["B", "E"]
    assert nc.campaigns_to_leave_out(tables, 5) == ["A", "B", "E"]
    assert nc.campaigns_to_leave_out(tables, 0) == []
    assert nc.campaigns_to_leave_out(tables, 5, min_exposures=3) == ["B"]


def test_the_gate_refuses_under_the_floor_or_behind_the_champion_and_says_which_campaigns():
    cfg = {"min_share_of_oracle": 0.4, "champion_tolerance": 0.05}
    report = {"left_out": ["C7", "C8"], "pooled": {"share_of_oracle": 0.35}}
    (floor,) = nc.gate_reasons(report, None, cfg)
    assert "0.350" in floor and "0.4" in floor and "C7, C8" in floor
    report["pooled"]["share_of_oracle"] = 0.5
    assert nc.gate_reasons(report, None, cfg) == []
    assert nc.gate_reasons(report, {nc.SHARE_METRIC: 0.54}, cfg) == []          # within the tolerance
    (behind,) = nc.gate_reasons(report, {nc.SHARE_METRIC: 0.6}, cfg)
    assert "trails the champion's 0.600" in behind
    # No truth (a real log): no share, nothing to gate on; no floor configured: only the champion rule.
    assert nc.gate_reasons({"pooled": {"qini": 0.1}}, {nc.SHARE_METRIC: 0.9}, cfg) == []
    assert nc.gate_reasons({"pooled": {"share_of_oracle": 0.1}}, None, {**cfg, "min_share_of_oracle": None}) == []
    assert nc.gate_reasons(report, {nc.SHARE_METRIC: 0.9}, {**cfg, "champion_tolerance": None}) == []
