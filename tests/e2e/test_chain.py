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
    latest = store.get_json(f"scores/{manifest['upcoming_campaign_id']}/latest.json")
    scored_manifest = store.get_json(store.key(latest["manifest"]))
    assert scored_manifest["model"]["version"] == str(champion.version)
    scores = store.read_table(store.key(scored_manifest["output"]))
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
