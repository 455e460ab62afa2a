"""Which family is served (pipelines/family.py), the holdout predictions artifact and a champion
the candidate's data cannot feed (pipelines/evaluate.py), on hand-built inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from campaignops.pipelines import evaluate, family
from campaignops.validation.contract import CONTROL

CFG = {"serve": "best", "margin": 0.002, "margin_sd": 2.0}
URIS = {"tlearner_gbt": "runs:/r/baseline_tlearner_gbt", "mlp_noseq": "runs:/r/baseline_mlp_noseq"}


def leads(**by_name):
    """vs_baselines as evaluate.baseline_metrics returns it: lead = network − baseline."""
    return {n: {"metric": "policy_value_true", "lead": lead, "sd": sd, "verdict": "tie"}
            for n, (lead, sd) in by_name.items()}


def test_a_baseline_is_served_only_beyond_the_practical_and_statistical_margin():
    # gbt leads the network by 0.010 with sd 0.002: beyond max(0.002, 2 × 0.002) → served
    c = family.choose(leads(tlearner_gbt=(-0.010, 0.002), mlp_noseq=(-0.003, 0.001)), URIS, "runs:/r/model", CFG)
    assert c["served"] == "tlearner_gbt" and c["model_uri"] == URIS["tlearner_gbt"]
    assert "+0.0100" in c["reason"] and c["options"]["mlp_noseq"]["beats_network"]   # both beat it; gbt by more
    # the same lead with a wide sd is a tie: the network stays
    c = family.choose(leads(tlearner_gbt=(-0.010, 0.006)), URIS, "runs:/r/model", CFG)
    assert c["served"] == family.NETWORK and c["model_uri"] == "runs:/r/model"
    assert "closest, tlearner_gbt" in c["reason"] and c["options"]["tlearner_gbt"]["needed"] == pytest.approx(0.012)
    # below the absolute margin even with a tiny sd: the network stays
    assert family.choose(leads(tlearner_gbt=(-0.0015, 1e-5)), URIS, "u", CFG)["served"] == family.NETWORK
    # a network ahead, an undetermined lead, or a baseline without a logged model: the network
    assert family.choose(leads(tlearner_gbt=(0.01, 0.001)), URIS, "u", CFG)["served"] == family.NETWORK
    assert family.choose(leads(tlearner_gbt=(float("nan"), float("nan"))), URIS, "u", CFG)["served"] == family.NETWORK
    assert family.choose(leads(tlearner_logreg=(-0.05, 0.001)), URIS, "u", CFG)["served"] == family.NETWORK
    assert family.choose({}, {}, "u", CFG)["reason"].endswith("(no baselines trained)")


def test_serve_pins_a_family():
    ahead = leads(tlearner_gbt=(-0.05, 0.001))
    assert family.choose(ahead, URIS, "u", {**CFG, "serve": "network"})["served"] == family.NETWORK
    pinned = family.choose(leads(tlearner_gbt=(0.05, 0.001)), URIS, "u", {**CFG, "serve": "mlp_noseq"})
    assert pinned["served"] == "mlp_noseq" and "pins" in pinned["reason"]
    with pytest.raises(ValueError, match="logged no such model"):
        family.choose(ahead, {}, "u", {**CFG, "serve": "tlearner_gbt"})


def test_config_names_the_bad_setting(tmp_path):
    from conftest import project_settings

    settings = project_settings(tmp_path)
    settings.params["evaluate"]["family"] = {"serve": "forest", "margin": 0.0, "margin_sd": 0.0}
    with pytest.raises(ValueError, match="evaluate.family.serve: 'forest'"):
        family.config(settings)
    settings.params["evaluate"]["family"] = {"serve": "best", "margin": -1, "margin_sd": 0.0}
    with pytest.raises(ValueError, match="evaluate.family.margin"):
        family.config(settings)


def test_holdout_predictions_carry_every_arms_uplift_and_the_source_row():
    frame = pd.DataFrame({"exposure_id": ["x1"] * 3 + ["x2"] * 3, "campaign_id": ["C9"] * 3 + ["C8"] * 3,
                          "variant_id": ["V1"] * 3 + [CONTROL] * 3, "arm_id": ["V1", "V2", CONTROL] * 2,
                          "responded": [1] * 3 + [0] * 3, "revenue": [5.0] * 3 + [0.0] * 3})
    p = np.array([0.3, 0.2, 0.1, 0.5, 0.4, 0.45])
    sources = pd.DataFrame({"exposure_id": ["x1"], "source_exposure_id": ["C9-r0000017"],   # importer.source_ids
                            "source_row": pd.array([17], dtype="Int64")})
    out = evaluate.holdout_predictions(frame, {"network": p, "tlearner_gbt": p / 2}, sources)
    assert len(out) == len(frame) and list(out["treatment"]) == list(frame["variant_id"])
    assert np.allclose(out["uplift_network"], [0.2, 0.1, 0.0, 0.05, -0.05, 0.0])
    assert np.allclose(out["uplift_tlearner_gbt"], out["uplift_network"] / 2)
    assert out["source_row"].tolist()[:3] == [17] * 3 and out["source_row"].isna().tolist()[3:] == [True] * 3
    assert list(out["exposure_id"]) == list(frame["exposure_id"])           # the frame's row order kept
    assert "source_row" not in evaluate.holdout_predictions(frame, {"network": p})   # generated worlds: none


class _Unfeedable:
    meta = {"profile_cols": ["affinity_00"]}

    def predict_arrays(self, x):
        raise KeyError('Field "affinity_00" does not exist in schema')


def test_a_champion_the_holdout_cannot_feed_is_reported_not_comparable(monkeypatch):
    monkeypatch.setattr(evaluate, "predict_expanded", lambda model, expanded: model.predict_arrays(None))
    metrics, why = evaluate.champion_on_holdout(_Unfeedable(), "3", None, None, None)
    assert metrics is None and "version 3" in why and "affinity_00" in why and "KeyError" in why


def test_revenue_error_is_gated_against_the_champion():
    good = {"auc": 0.7, "logloss": 0.3, "qini": 0.1, "policy_value_ips": 0.2, "revenue_rmse": 10.0}
    thresholds = {"min_auc": 0.6, "max_logloss": 0.6, "min_qini": 0.0, "champion_tolerance": 0.005,
                  "revenue_rmse_tolerance": 0.1}
    assert evaluate.gate(good, {**good, "revenue_rmse": 9.5}, thresholds)[0]
    ok, reasons = evaluate.gate(good, {**good, "revenue_rmse": 8.0}, thresholds)
    assert not ok and "revenue_rmse 10.0000 exceeds the champion's 8.0000 by more than 10%" in reasons[0]
    assert evaluate.gate(good, {**good, "revenue_rmse": 8.0}, {**thresholds, "revenue_rmse_tolerance": None})[0]
