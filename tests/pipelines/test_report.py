"""Report pieces on a randomized world with known truth: plot data, segment slices, the
campaign effect forecast (coverage, predicted vs actual), permutation importance, HTML."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from campaignops.models.explain import permutation_importance, subsample_exposures
from campaignops.pipelines import report as r
from campaignops.pipelines.evaluate import holdout_metrics
from tests.pipelines.test_evaluate import randomized_world


@pytest.fixture(scope="module")
def world():
    frame, truth = randomized_world(4000, seed=3)
    p = frame.merge(truth.rename(columns={"variant_id": "arm_id"}), on=["exposure_id", "arm_id"])["p_response"]
    return frame, truth, p.to_numpy()


def test_curves_from_truth_are_monotone_and_calibrated(world):
    frame, truth, p = world
    c = r.curves(frame, p, truth)
    # One curve per (campaign, arm): C1 has 2 variants, C2 has 3.
    assert sorted(c["qini"]) == ["C1:C1-V1", "C1:C1-V2", "C2:C2-V1", "C2:C2-V2", "C2:C2-V3"]
    assert all(v["auc"] > 0 for v in c["qini"].values())
    for d in c["uplift_by_decile"].values():
        assert d["predicted"][0] > d["predicted"][-1]             # decile 1 = highest predicted uplift
        assert np.allclose(d["predicted"], d["true"])               # truth as the model
        assert np.mean(d["observed"][:3]) > np.mean(d["observed"][-3:])
    pva = c["predicted_vs_actual"]
    assert np.max(np.abs(np.array(pva["predicted"]) - np.array(pva["actual"]))) < 0.08
    assert pva["actual"][-1] > pva["actual"][0]


def test_segment_slices_match_holdout_metrics_on_the_slice(world):
    frame, truth, p = world
    ids = frame["exposure_id"].unique()
    labels = pd.Series(np.where(np.arange(len(ids)) % 2, "odd", "even"), index=ids)
    rows = r.segment_slices(frame, p, truth, {"parity": labels})
    assert [x["value"] for x in rows] == ["even", "odd"]
    k = frame["exposure_id"].map(labels).eq("odd").to_numpy()
    expect = holdout_metrics(frame[k].reset_index(drop=True), p[k], truth)
    assert rows[1]["auc"] == pytest.approx(expect["auc"]) and rows[1]["exposures"] == len(ids) // 2


def test_forecast_intervals_cover_and_predicted_vs_actual(world):
    frame, truth, p = world
    rng = np.random.default_rng(0)
    sent = rng.random(5000) < 0.6
    pp = rng.uniform(0.05, 0.4, 5000)
    fc = r.forecast_effect(pp, pp * 50.0, sent, n_boot=300, seed=1)
    assert fc["orders"]["lo"] < pp.sum() < fc["orders"]["hi"]
    assert fc["aov"]["forecast"] == pytest.approx(50.0) and fc["targeted"]["forecast"] == sent.sum()
    assert fc["conversion_rate"]["forecast"] == pytest.approx(pp.mean())
    # Realised outcomes drawn from the truth: the actuals fall inside the 90% intervals.
    ex = frame.drop_duplicates("exposure_id").set_index("exposure_id")
    rev_actual = ex["responded"] * 40.0
    out = r.forecast_vs_actual(frame, p, p * 40.0, rev_actual, n_boot=300, seed=0)
    cmp = out["predicted_vs_actual"]
    assert out["matched_exposures"] > 500
    assert cmp["orders"]["within_interval"] and cmp["participation_rate"]["within_interval"]
    assert cmp["aov"]["actual"] == pytest.approx(40.0) and cmp["aov"]["forecast"] == pytest.approx(40.0)
    assert out["forecast"]["targeted"]["forecast"] > 0


def test_permutation_importance_finds_the_feature_the_model_uses(world):
    frame, truth, p = world
    idx = subsample_exposures(frame, 1500, seed=0)
    assert frame.iloc[idx]["exposure_id"].nunique() == 1500
    sub = frame.iloc[idx].reset_index(drop=True)
    psub = p[idx]
    n = len(sub)
    x = {"seq": np.zeros((n, 3), np.int32), "variant": np.zeros((n, 2), np.float32),
         "profile": np.c_[psub, np.random.default_rng(0).normal(size=n)].astype(np.float32)}
    # The "model" reads profile column 0 (the true probability); column 1 is noise.
    out = permutation_importance(lambda xx: xx["profile"][:, 0].astype(float), x, sub, truth, ["signal", "noise"])
    by = {o["feature"]: o for o in out}
    assert by["signal"]["auc_drop"] > 0.05 and by["signal"]["policy_value_fraction_drop"] > 0.2
    assert by["noise"]["auc_drop"] == pytest.approx(0.0) and by["sequence"]["auc_drop"] == pytest.approx(0.0)
    assert out[0]["feature"] == "signal"


def test_write_report_html_and_figures(world, tmp_path):
    frame, truth, p = world
    evaluation = {"run_id": "r1", "passed": True, "reasons": [],
                  "candidate": holdout_metrics(frame, p, truth),
                  "baselines": {"tlearner_gbt": holdout_metrics(frame, np.full(len(p), 0.1), truth)},
                  "thresholds": {"baseline_tolerance_sd": 2.0},
                  "vs_baselines": {"tlearner_gbt": {"metric": "policy_value_true", "lead": 0.0123, "sd": 0.0021,
                                                    "verdict": "ahead"}}}
    attributions = [{"feature": "a", "group": "profile", "auc_drop": 0.1},
                    {"feature": "sequence", "group": "sequence", "auc_drop": 0.02}]
    paths = r.write_report(tmp_path, evaluation, frame, p, truth, [{"segment": "s", "value": "x", "auc": 0.6}],
                           attributions, None)
    page = paths["html"].read_text()
    assert "baseline tlearner_gbt" in page and page.count("<img") == 5
    assert "earn its place" in page and "<td>0.0123</td><td>0.0021</td><td>ahead</td>" in page
    for name in ("qini_per_arm.png", "uplift_by_decile.png", "calibration.png", "predicted_vs_actual.png",
                 "attributions.png"):
        assert paths[name].read_bytes()[:4] == b"\x89PNG"
