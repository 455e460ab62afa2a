"""What the training run tells an auditor in MLflow (in-process: moto S3, SQLite MLflow): its name
and description, its input datasets with the digests of its `dataset.*` tags, the workspace's
dvc.lock as artifact lineage/dvc.lock, and the experiment opened in the model-training view."""
from __future__ import annotations

import os

import pytest
import yaml

from campaignops.pipelines import tracking, train
from conftest import land_features, moto_store

LOCK = """schema: '2.0'
stages:
  features:
    cmd: campaignops features
    outs:
    - path: data/features
      hash: md5
      md5: e4d26679da2b72c1f422751046739e80.dir
"""


@pytest.fixture
def trained(workspace, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # MLflow with a SQLite store writes artifacts under ./mlruns
    params = yaml.safe_load((workspace.workspace / "params.yaml").read_text())
    params["train"].update(epochs=1, baselines=["tlearner_logreg"])
    (workspace.workspace / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for k, v in workspace.env.items():
        monkeypatch.setenv(k, v)
    saved = dict(os.environ)
    try:
        with moto_store(workspace) as store:
            land_features(workspace, store, users=600, date="2026-06-02")
            (workspace.workspace / "dvc.lock").write_text(LOCK)
            yield workspace, train.run(workspace)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_the_training_run_names_its_batch_inputs_and_lineage(trained):
    settings, record = trained
    import mlflow

    client = mlflow.MlflowClient()
    run = client.get_run(record["run_id"])
    assert run.info.run_name == "retrain 2026-06-02"                 # batch id = its date
    note = run.data.tags["mlflow.note.content"]
    assert "raw batch `2026-06-02`" in note and "e4d26679da2b72c1f422751046739e80.dir" in note
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "valid", "holdout", "arms"}
    for name, d in inputs.items():
        sha = run.data.tags[f"dataset.{name}.parquet.sha256"]
        tags = {t.key: t.value for t in d.tags}
        assert tags["sha256"] == sha and d.dataset.digest == sha[:36]   # MLflow caps a digest at 36 chars
        assert tags["dvc.md5"] == "e4d26679da2b72c1f422751046739e80.dir"
        assert d.dataset.source.endswith(f"data/features/{name}.parquet") or f"{name}.parquet" in d.dataset.source
    assert {t.value for d in inputs.values() for t in d.tags if t.key == "mlflow.data.context"} == \
        {"training", "validation", "holdout", "arms"}
    assert int({t.key: t.value for t in inputs["train"].tags}["rows"]) == record["metrics"]["train_rows"]
    lock = client.download_artifacts(record["run_id"], train.DVC_LOCK_ARTIFACT, str(settings.workspace / "dl"))
    assert open(lock).read() == LOCK
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_run_name_keeps_a_batch_id_other_than_its_date():
    assert train.run_name({"batch": "demo", "now": "2026-06-01T00:00:00+00:00"}) == "retrain 2026-06-01 demo"
    assert train.run_name({"batch": "2026-06-03", "now": "2026-06-03T00:00:00"}) == "retrain 2026-06-03"
    assert train.locked_md5(LOCK, "features", "data/features") == "e4d26679da2b72c1f422751046739e80.dir"
    assert train.locked_md5(None, "features", "data/features") is None
