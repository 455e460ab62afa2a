"""The whole chain in one process with in-process fakes (moto S3, SQLite MLflow): generate →
ingest → validate → features → train → evaluate → promote → score → rollback."""
from __future__ import annotations

import os

import boto3
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
    first = promote.run(settings)
    assert first["promoted"] and first["champion_version"] is not None

    budget = 50.0
    out = score.run(settings, budget=budget, store=store)
    assert out["model"]["version"] == first["champion_version"]
    assert out["rows"] == report["tables"]["users"]["rows_valid"]
    assert out["spent"] <= budget + 1e-9
    assert out["inputs"]["validation_run_id"] == report["run_id"]
    scores = store.read_table(store.key(out["output"])).to_pandas()
    assert scores["user_id"].is_unique and len(scores) == out["rows"]
    targeted = scores[scores["variant_id"].notna()]
    assert len(targeted) == out["users_targeted"] and (targeted["net_value"] > 0).all()
    assert abs(targeted["cost"].sum() - out["spent"]) < 1e-6

    # Re-evaluating the same model against itself as champion keeps it; a retrain promotes v2;
    # rollback brings v1 back.
    again = evaluate.run(settings)
    assert again["champion_version"] == first["champion_version"] and again["passed"]
    assert promote.run(settings)["promoted"] is False
    train.run(settings)
    evaluate.run(settings)
    second = promote.run(settings)
    assert second["promoted"] and second["previous_version"] == first["champion_version"]
    back = promote.rollback(settings)
    assert back["champion_version"] == first["champion_version"]
