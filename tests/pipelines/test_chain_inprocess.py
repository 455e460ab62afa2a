"""The whole chain in one process with in-process fakes (moto S3, SQLite MLflow): generate →
ingest → validate → features → train → evaluate → promote → score → rollback."""
from __future__ import annotations

import os

import boto3
import numpy as np
import pytest
import yaml
from moto import mock_aws

from campaignops.pipelines import evaluate, features, ingest, promote, score, synth, train, validate
from campaignops.pipelines.storage import ObjectStore


@pytest.fixture
def chain_env(workspace, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # MLflow with a SQLite store writes artifacts under ./mlruns
    params = yaml.safe_load((workspace.workspace / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    params["evaluate"].update(min_auc=0.0, max_logloss=10.0, min_qini=-10.0, min_policy_value_fraction=-10.0)
    params["evaluate"]["new_campaigns"].update(campaigns=1, min_share_of_oracle=None)
    (workspace.workspace / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for k, v in workspace.env.items():
        monkeypatch.setenv(k, v)
    saved = dict(os.environ)  # the steps export endpoints (apply_env); keep them out of other tests
    try:
        with mock_aws():
            store = ObjectStore(workspace, client=boto3.client("s3", region_name="us-east-1"))
            store.client.create_bucket(Bucket=workspace.bucket)
            yield workspace, store
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_chain_registers_a_champion_and_scores_every_user(chain_env):
    settings, store = chain_env
    manifest = synth.generate(settings, users=1500, store=store, progress=False)
    ingest.ingest(settings, store=store)
    report = validate.run(settings, store=store)
    meta = features.build(settings, store=store)
    assert meta["has_truth"] and sum(meta["rows"].values()) == manifest["tables"]["exposures"]["rows"]
    train.run(settings)
    ev = evaluate.run(settings)
    assert ev["passed"] and ev["champion"] is None and 0.0 <= ev["candidate"]["auc"] <= 1.0
    assert set(ev["vs_baselines"]) == set(ev["baselines"]) == set(settings.params["train"]["baselines"])
    for name, v in ev["vs_baselines"].items():    # the candidate's paired lead over each baseline
        assert v["metric"] == "policy_value_true" and v["verdict"] in ("ahead", "tie", "behind")
        assert v["sd"] > 0 or v["lead"] == 0          # no spread only when both pick the same arms
        assert v["lead"] == pytest.approx(ev["candidate"]["policy_value_true"]
                                          - ev["baselines"][name]["policy_value_true"], abs=1e-12)
    # Leave-campaign-out: the newest campaign predicted by a refit that never saw it, in the
    # report and logged to the run for the next candidate's gate.
    unseen = ev["new_campaigns"]
    (left_out,) = unseen["left_out"]
    figs = unseen["campaigns"][left_out]
    assert figs["exposures"] > 0 and figs["arms"] and 0 <= figs["targeting"]["sends"] <= figs["exposures"]
    for arm in figs["arms"].values():
        r = arm["incremental_responses"]
        assert np.isfinite(r["forecast"]) and np.isfinite(r["truth"]) and r["actual_se"] > 0
    import mlflow

    logged_metrics = mlflow.MlflowClient().get_run(ev["run_id"]).data.metrics
    assert logged_metrics["new_campaigns.share_of_oracle"] == pytest.approx(unseen["pooled"]["share_of_oracle"])
    # each holdout metric once, under one name (evaluate.log_metrics_once)
    assert logged_metrics["holdout_rows"] == ev["candidate"]["holdout_rows"] and "holdout_holdout_rows" not in logged_metrics
    assert len(mlflow.MlflowClient().get_metric_history(ev["run_id"], "holdout_auc")) == 1
    page = (settings.workspace / "reports/evaluation.html").read_text()
    assert "New campaigns: each left out" in page
    # Dynamic adjustment on the holdout (synthetic: outcomes from the truth) and the family served.
    adj = ev["adjustment"]
    assert set(adj["scenarios"]) == {"right", "wrong"}
    assert adj["sends"] == round(ev["candidate"]["send_share"] * ev["candidate"]["holdout_rows"])  # the model's sends
    for row in adj["scenarios"].values():
        assert all(np.isfinite(row[k]) and row[k] >= 0 for k in ("static_regret", "uniform_regret", "adjusted_regret"))
    assert logged_metrics["adjustment.right.adjusted_regret"] == pytest.approx(adj["scenarios"]["right"]["adjusted_regret"])
    assert "Dynamic adjustment: regret vs the oracle" in page and "Served family:" in page
    assert ev["family"]["served"] in ("network", *ev["baselines"]) and ev["model_uri"] == ev["family"]["model_uri"]
    first = promote.run(settings, store=store)
    assert first["promoted"] and first["champion_version"] is not None

    budget = 50.0
    out = score.run(settings, budget=budget, store=store)
    assert out["model"]["version"] == first["champion_version"]
    assert out["rows"] == report["tables"]["users"]["rows_valid"]
    assert out["spent"] <= budget + 1e-9
    assert out["inputs"]["validation_run_id"] == report["run_id"] and out["inputs"]["stale_validation"] is None
    scores = score.read_scores(store, out).to_pandas()
    assert scores["user_id"].is_unique and len(scores) == out["rows"]
    arms = [a["variant_id"] for a in out["arms"]]
    # every user carries every arm's prediction, targeted or not
    for arm in arms:
        assert scores[f"p_{arm}"].between(0, 1).all()
    for arm in arms[:-1]:
        assert np.allclose(scores[f"uplift_{arm}"], scores[f"p_{arm}"] - scores["p_control"])
    sent = scores[scores["send"]]
    assert len(sent) == out["users_targeted"] and abs(sent["cost"].sum() - out["spent"]) < 1e-6
    greedy = scores[scores["send"] & ~scores["explored"]]
    assert len(greedy) == out["users_targeted_by_model"] and (greedy["net_value"] > 0).all()
    share = settings.params["score"]["exploration"]["share"]
    assert scores["explored"].sum() == out["exploration"]["users"] > 0
    assert np.allclose(scores["propensity"], share / len(arms) + (1 - share) * (scores["chosen_variant"]
                                                                                 == scores["greedy_variant"]))
    assert out["forecast"]["total"]["sends"] == out["users_targeted"]
    truth = out["truth_check"]                                             # synthetic: measured, reported
    assert truth["forecast_incremental_responses"] == pytest.approx(
        out["forecast"]["total"]["incremental_responses"]["forecast"])
    assert np.isfinite(truth["true_incremental_responses"]) and truth["oracle_same_count"] >= 0
    latest_key = f"scores/{out['campaign_id']}/latest.json"
    if out["status"] == "targeted":       # latest.json names the run a team acts on
        assert store.get_json(latest_key)["manifest"] == out["output"]["manifest"]
    else:                                  # a 2-epoch model may see no positive uplift at all
        assert out["users_targeted_by_model"] == 0 and not store.exists(latest_key)
    again = score.run(settings, budget=budget, store=store)                 # same request: a no-op
    assert again["reused"] and again["score_run_id"] == out["score_run_id"]
    run_keys = store.list_keys(out["output"]["prefix"].split(store.bucket + "/", 1)[1])
    assert len([k for k in run_keys if not k.endswith("/" + score.LINEAGE_PAGE)]) == 1 + len(out["parts"])
    settings.params["score"]["value_per_response"] = 0.0                    # no send can pay for itself
    nobody = score.run(settings, budget=budget, store=store)
    assert nobody["status"] == "no_targets" and nobody["users_targeted_by_model"] == 0
    assert nobody["users_targeted"] == nobody["exploration"]["sends"] > 0   # the exploration slice still sends
    if out["status"] == "targeted":
        assert store.get_json(latest_key)["manifest"] == out["output"]["manifest"]
    else:
        assert not store.exists(latest_key)
    settings.params["score"]["value_per_response"] = 30.0

    # Re-evaluating the same candidate reuses the verdict logged to its run (nothing re-logged);
    # a repeated promote returns the recorded event (no new version); a retrain promotes v2; rollback brings v1 back.
    client = mlflow.MlflowClient()
    logged = [f.path for f in client.list_artifacts(ev["run_id"], "evaluation")]
    again = evaluate.run(settings)
    assert again["reused"] and again["passed"] and again["champion_version"] == ev["champion_version"]
    assert [f.path for f in client.list_artifacts(ev["run_id"], "evaluation")] == logged
    first_champion = client.get_model_version_by_alias(settings.params["train"]["model_name"], "champion").version
    repeat = promote.run(settings, store=store)     # a retried promote answers with the recorded event
    assert str(repeat["champion_version"]) == str(first_champion)
    name = settings.params["train"]["model_name"]
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    # The retrain serves the family the gate chose: with evaluate.family.serve pinning the GBT
    # T-learner, promote registers the run's baseline model (tag family) and scoring predicts with it.
    from campaignops.models.baselines import TLearner

    settings.params["evaluate"]["family"] = {"serve": "tlearner_gbt", "margin": 0.002, "margin_sd": 2.0}
    settings.params["evaluate"].update(report=False, champion_tolerance=1.0)   # serving, not the gate, is tested here
    settings.params["evaluate"]["new_campaigns"]["campaigns"] = 0
    record = train.run(settings)
    assert set(record["baseline_uris"]) == set(settings.params["train"]["baselines"])
    ev2 = evaluate.run(settings)
    assert ev2["family"]["served"] == "tlearner_gbt" and ev2["model_uri"] == record["baseline_uris"]["tlearner_gbt"]
    assert ev2["served"]["auc"] == pytest.approx(ev2["baselines"]["tlearner_gbt"]["auc"])
    import pyarrow.parquet as pq

    cols = pq.read_schema(settings.workspace / "reports/holdout_predictions.parquet").names
    assert {"p_network", "uplift_network", "p_tlearner_gbt", "uplift_tlearner_gbt", "treatment", "responded"} <= set(cols)
    assert any(f.path.endswith("holdout_predictions.parquet") for f in client.list_artifacts(ev2["run_id"], "evaluation"))
    second = promote.run(settings, store=store)
    assert second["promoted"] and second["previous_version"] == first["champion_version"]
    version = client.get_model_version(name, second["champion_version"])
    assert version.tags["family"] == "tlearner_gbt" and version.run_id == ev2["run_id"]
    assert isinstance(mlflow.pyfunc.load_model(f"models:/{name}@champion").unwrap_python_model().model, TLearner)
    by_gbt = score.run(settings, budget=budget, store=store)
    assert by_gbt["model"]["family"] == "tlearner_gbt" and by_gbt["model"]["version"] == second["champion_version"]
    gbt_scores = score.read_scores(store, by_gbt).to_pandas()
    assert len(gbt_scores) == out["rows"] and gbt_scores[[f"p_{a}" for a in arms]].stack().between(0, 1).all()
    back = promote.rollback(settings, store=store)
    assert back["champion_version"] == first["champion_version"]
