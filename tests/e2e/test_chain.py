"""End to end on the real stack (SeaweedFS, MLflow, Airflow) on free ports: generate a world
with injected bad rows, run campaign_retrain and campaign_score through Airflow's REST API,
and check the registry, the scores in S3 and the quarantine."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def small_world(params: dict) -> None:
    params["data"]["users"] = 6000
    params["score"]["part_rows"] = 2500     # several output parts: the kill test stops between them
    params["train"]["epochs"] = 6
    # A small world trains a weak model; this test is about the chain, the gate has unit tests.
    params["evaluate"].update(min_auc=0.5, max_logloss=1.0, min_qini=-1.0, min_policy_value_fraction=-10.0)


def inject_bad_events(store, manifest: dict) -> int:
    """Append rows that break rules to the first events part; keep the manifest consistent."""
    key = manifest["tables"]["events"]["files"][0]
    events = store.read_table(key)
    bad = events.slice(0, 3).to_pylist()
    bad[0]["price"] = -5.0
    bad[1]["event_type"] = "teleport"
    bad[2]["event_id"] = events.column("event_id")[10].as_py()  # duplicate key (not an exact copy)
    bad[2]["price"] = 123.45
    for i, row in enumerate(bad[:2]):
        row["event_id"] = f"bad-{i}"
    store.write_table(pa.concat_tables([events, pa.Table.from_pylist(bad, events.schema)]), key)
    manifest["tables"]["events"]["rows"] += len(bad)
    store.put_json(f"raw/{manifest['batch']}/_manifest.json", manifest)
    return len(bad)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from campaignops.infra.sandbox import sandbox_stack

    with sandbox_stack(tmp_path_factory.mktemp("e2e"), small_world) as settings:
        yield settings


def test_retrain_and_score_through_airflow(stack):
    from campaignops.config import apply_env
    from campaignops.infra.airflow_client import AirflowClient
    from campaignops.pipelines import synth
    from campaignops.pipelines.storage import ObjectStore

    settings = stack
    apply_env(settings)
    store = ObjectStore(settings)
    manifest = synth.generate(settings, progress=False)
    n_bad = inject_bad_events(store, manifest)

    client = AirflowClient.from_settings(settings)
    for dag_id, conf in (("campaign_retrain", {"batch": manifest["batch"]}),
                         ("campaign_score", {"campaign_id": manifest["upcoming_campaign_id"], "budget": 500.0})):
        client.wait_for_dag(dag_id, timeout=300)
        client.unpause(dag_id)
        run_id = client.trigger(dag_id, conf)
        assert client.wait_for_run(dag_id, run_id, timeout=1500) == "success"

    # Registry: a version with alias champion, tagged for audit, artifacts in S3.
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_uri)
    name = settings.params["train"]["model_name"]
    champion = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    assert champion.tags["validation.run_id"] and champion.tags["git_sha"] != "unknown"
    assert any(k.startswith("dvc.train.") for k in champion.tags)
    artifact_keys = store.list_keys("mlflow/")
    assert any(k.endswith("model.keras") for k in artifact_keys), artifact_keys[:20]

    # Scores: one row per valid user, manifest naming the champion version.
    from campaignops.pipelines.run_commit import committed_runs

    campaign_prefix = f"scores/{manifest['upcoming_campaign_id']}/"
    scored_manifest = committed_runs(store, campaign_prefix)[-1]
    if scored_manifest["status"] == "targeted":
        assert store.get_json(campaign_prefix + "latest.json")["manifest"] == scored_manifest["output"]["manifest"]
    assert scored_manifest["context"]["dag_id"] == "campaign_score" and scored_manifest["context"]["dag_run_id"]
    assert scored_manifest["model"]["version"] == str(champion.version)
    from campaignops.pipelines.score import read_scores

    scores = read_scores(store, scored_manifest)
    assert scores.num_rows == manifest["tables"]["users"]["rows"]
    assert len(set(scores.column("user_id").to_pylist())) == scores.num_rows
    assert scored_manifest["spent"] <= 500.0 + 1e-9
    assert set(scores.column("model_version").to_pylist()) == {str(champion.version)}

    # Quarantine holds the injected rows with their rule.
    keys = store.list_keys(f"quarantine/events/{manifest['batch']}/")
    assert keys
    quarantined = pa.concat_tables([store.read_table(k) for k in keys]).to_pylist()
    rules = {r["event_id"]: r["_rule"] for r in quarantined}
    assert "price" in rules["bad-0"] and "event_type" in rules["bad-1"]
    dup_id = [r for r in quarantined if r["event_id"] not in ("bad-0", "bad-1")]
    assert len(dup_id) == 2 and all("unique" in r["_rule"] for r in dup_id)  # every copy of a duplicated key
    assert all(r["_source_file"] and r["_source_row"] is not None for r in quarantined)
    assert len(quarantined) == n_bad + 1
    report = json.loads((settings.workspace / "reports" / "validation.json").read_text())
    assert report["run_id"] == champion.tags["validation.run_id"]
    assert store.list_keys(f"validation/{manifest['batch']}/{report['run_id']}/docs/")  # Data Docs in S3

    # DVC: outputs pushed to the S3 remote; an unchanged repro does nothing.
    from campaignops.pipelines.versioning import repro

    assert store.list_keys("dvc/")
    for stage in ("validate", "features", "train"):
        assert repro(settings, stage, push=False)["ran"] is False


def test_killed_scoring_leaves_no_partial_run_and_a_rerun_is_byte_identical(stack):
    """SIGKILL the scorer (failpoints) at six points; nothing partial is ever visible, the rerun
    commits, and a run committed right before a kill has the same bytes as an uninterrupted one."""
    import os
    import subprocess
    import sys

    from campaignops.config import apply_env
    from campaignops.pipelines.run_commit import committed_runs
    from campaignops.pipelines.score import read_scores
    from campaignops.pipelines.storage import ObjectStore

    settings = stack
    apply_env(settings)
    store = ObjectStore(settings)
    campaign = json.loads((settings.workspace / "data" / "raw_manifest.json").read_text())["upcoming_campaign_id"]
    prefix = f"scores/{campaign}/"
    before = {m["score_run_id"] for m in committed_runs(store, prefix)}
    latest_before = store.get_bytes_or_none(prefix + "latest.json")

    def score(failpoint=None):
        env = dict(os.environ)
        env.pop("CAMPAIGNOPS_FAILPOINT", None)
        if failpoint:
            env["CAMPAIGNOPS_FAILPOINT"] = failpoint
        return subprocess.run([sys.executable, "-m", "campaignops.cli", "score", "--campaign-id", campaign,
                               "--budget", "321"], env=env, capture_output=True, text=True, timeout=600)

    def new_runs():
        return [m for m in committed_runs(store, prefix) if m["score_run_id"] not in before]

    for point in ("features_written", "predicted", "part_uploaded:1", "part_uploaded:2", "before_commit"):
        proc = score(point)
        assert proc.returncode == -9, (point, proc.returncode, proc.stderr[-2000:])
        assert new_runs() == [], point                         # nothing partial is visible
        assert store.get_bytes_or_none(prefix + "latest.json") == latest_before, point
    proc = score()
    assert proc.returncode == 0, proc.stderr[-2000:]
    [first] = new_runs()
    run_prefix = store.key(first["output"]["prefix"])
    assert sorted(store.list_keys(run_prefix)) == sorted([run_prefix + "manifest.json"] + [p["key"] for p in first["parts"]])
    assert len(first["parts"]) >= 3
    reference = read_scores(store, first)

    # Drop the run and commit it again, killed right after the manifest put: the same bytes, and
    # the next request repairs what the killed writer did not finish (latest.json).
    store.delete_keys(store.list_keys(run_prefix))
    proc = score("after_commit")
    assert proc.returncode == -9
    [again] = new_runs()
    assert [p["sha256"] for p in again["parts"]] == [p["sha256"] for p in first["parts"]]
    assert read_scores(store, again).equals(reference)
    proc = score()
    assert proc.returncode == 0 and '"reused": true' in proc.stdout
    if again["status"] == "targeted":
        assert store.get_json(prefix + "latest.json")["manifest"] == again["output"]["manifest"]


def test_spark_engine_through_the_dag_agrees_with_the_local_engine(stack):
    """campaign_score with engine=spark (Spark local mode inside the Airflow task), then the same
    request on the local engine: the same assignments and propensities, predictions within 1e-6."""
    import numpy as np

    from campaignops.config import apply_env
    from campaignops.infra.airflow_client import AirflowClient
    from campaignops.pipelines import score
    from campaignops.pipelines.run_commit import committed_runs
    from campaignops.pipelines.storage import ObjectStore

    settings = stack
    apply_env(settings)
    store = ObjectStore(settings)
    campaign = json.loads((settings.workspace / "data" / "raw_manifest.json").read_text())["upcoming_campaign_id"]
    client = AirflowClient.from_settings(settings)
    run_id = client.trigger("campaign_score", {"campaign_id": campaign, "budget": 450.0, "engine": "spark"})
    assert client.wait_for_run("campaign_score", run_id, timeout=1200) == "success"
    [spark] = [m for m in committed_runs(store, f"scores/{campaign}/")
               if m["request"]["engine"] == "spark" and m["budget"] == 450.0]
    spark_scores = score.read_scores(store, spark).to_pandas()
    store.delete_keys(store.list_keys(store.key(spark["output"]["prefix"])))
    local = score.run(settings, campaign_id=campaign, budget=450.0, engine="local", store=store)
    assert local["score_run_id"] == spark["score_run_id"] and not local.get("reused")
    local_scores = score.read_scores(store, local).to_pandas()
    assert local_scores["user_id"].tolist() == spark_scores["user_id"].tolist()
    for col in ("chosen_variant", "greedy_variant", "explored", "propensity", "rank"):
        assert local_scores[col].tolist() == spark_scores[col].tolist(), col
    p_cols = [c for c in local_scores.columns if c.startswith("p_")]
    assert np.abs(local_scores[p_cols].to_numpy() - spark_scores[p_cols].to_numpy()).max() < 1e-6
