"""Issue 17 item 3: a rejected batch must not break scoring. Through `dvc repro validate` (as the
Airflow task runs it) a schema-broken batch after a good one fails with a clear error, and the
good batch's data/validated and reports/validation.json are still there (dvc.yaml `persist`; the
step writes them only when a batch passes). Scoring then refuses by default, naming the failed
batch, or scores the last good batch when asked, and its manifest names that batch and its
validation run, checked against the files by their sha256."""
from __future__ import annotations

import json

import pytest

from campaignops.pipelines import ingest, layout, score, versioning
from campaignops.pipelines.score_request import RequestError, check_request
from dvc_project import BIN, start_project
from worlds import land_world, small_world, without_column

pytestmark = pytest.mark.skipif(not (BIN / "dvc").exists(), reason="dvc not installed in the venv")

BROKEN = "broken1"


def _snapshot(ws) -> dict[str, bytes]:
    files = sorted((ws / layout.VALIDATED_DIR).iterdir()) + [ws / layout.REPORTS_DIR / "validation.json"]
    return {p.name: p.read_bytes() for p in files}


def _land_broken(project) -> None:
    """A batch whose exposures files lack the revenue column; ingested, so validate reads it next."""
    world, schemas = without_column(small_world(users=40), "exposures", "revenue")
    land_world(project.store, world, BROKEN, schemas=schemas)
    ingest.ingest(project.settings, batch=BROKEN, store=project.store)


def _repro_fails_naming_the_file(project) -> str:
    with pytest.raises(RuntimeError) as err:
        versioning.repro(project.settings, "validate")
    msg = str(err.value)
    assert "exposures.schema.columns" in msg and f"raw/{BROKEN}/exposures/part-00000.parquet" in msg, msg
    assert "'revenue'" in msg
    return msg


def test_a_rejected_batch_keeps_the_last_good_validated_data_through_dvc(tmp_path_factory):
    project, stop = start_project(tmp_path_factory.mktemp("rejected"))
    try:
        settings, ws = project.settings, project.settings.workspace
        land_world(project.store, small_world(users=40), "good1")
        ingest.ingest(settings, batch="good1", store=project.store)
        assert versioning.repro(settings, "validate")["ran"]
        good = json.loads((ws / "reports/validation.json").read_text())
        before = _snapshot(ws)
        lock = (ws / "dvc.lock").read_text()

        _land_broken(project)
        _repro_fails_naming_the_file(project)
        assert _snapshot(ws) == before                  # the good data and its report survived
        assert (ws / "dvc.lock").read_text() == lock    # the lock still pins the good outputs
        failed = json.loads((ws / "reports/validation_failed.json").read_text())
        assert failed["batch"] == BROKEN and failed["status"] == "rejected"
        assert failed["failures"][0]["rule"] == "exposures.schema.columns"

        # scoring refuses the rejected batch by default, naming it ...
        with pytest.raises(RequestError, match=rf"batch '{BROKEN}' failed validation .*exposures\.schema\.columns"):
            check_request(settings, None, "100")
        # ... and, asked to, reads the good batch and records which one, checked by content
        req = check_request(settings, None, "100", allow_last_validated=True)
        assert req.validation["batch"] == "good1" and req.validation["run_id"] == good["run_id"]
        key = score.request_key(settings, req, "1")
        assert score.validated_data(settings, key) == {"batch": "good1", "run_id": good["run_id"],
                                                       "result_uri": good["result_uri"], "verified": True}
        # the outputs the failed stage left are still what the lock says: `dvc status` sees only the new input
        status = project.dvc("status", "validate", "--json").stdout
        changed = json.loads(status)["validate"]
        assert {"changed deps": {"data/raw_manifest.json": "modified"}} in changed, changed
        assert not any("changed outs" in c for c in changed if isinstance(c, dict)), changed
    finally:
        stop()


@pytest.mark.slow
def test_scoring_after_a_rejected_batch_names_the_good_validated_batch(tmp_path_factory, monkeypatch):
    """The whole path: good synthetic batch → validate and features through DVC, train, evaluate,
    promote; then a schema-broken batch; scoring runs on the good batch and its manifest says so."""
    from campaignops.pipelines import evaluate, promote, synth, train

    def quick(params):   # one epoch, no baselines, a gate any model passes: the test is about the data
        params["train"].update(epochs=1, baselines=[])
        params["evaluate"].update(min_auc=0.0, max_logloss=10.0, min_qini=-10.0, min_policy_value_fraction=-10.0,
                                  qini_noise_draws=0, report=False, reference_uplift_models=[])
        params["evaluate"]["new_campaigns"]["campaigns"] = 0

    tmp = tmp_path_factory.mktemp("rejected-score")
    project, stop = start_project(tmp, quick)
    try:
        settings, ws = project.settings, project.settings.workspace
        monkeypatch.chdir(tmp)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        for k, v in settings.env.items():
            monkeypatch.setenv(k, v)

        raw = synth.generate(settings, users=1000, store=project.store, progress=False)
        ingest.ingest(settings, batch=raw["batch"], store=project.store)
        assert versioning.repro(settings, "validate")["ran"]
        assert versioning.repro(settings, "features")["ran"]
        good = json.loads((ws / "reports/validation.json").read_text())
        train.run(settings)
        evaluate.run(settings)
        assert promote.run(settings, store=project.store)["promoted"]

        _land_broken(project)
        _repro_fails_naming_the_file(project)
        with pytest.raises(RequestError, match=f"batch '{BROKEN}' failed validation"):
            score.run(settings, budget=50.0, store=project.store)
        manifest = score.run(settings, campaign_id=raw["upcoming_campaign_id"], budget=50.0, store=project.store,
                             allow_last_validated=True)
        inputs = manifest["inputs"]
        assert inputs["raw_batch"] == BROKEN and inputs["validated_batch"] == raw["batch"] == good["batch"]
        assert inputs["validation_run_id"] == good["run_id"] and BROKEN in inputs["stale_validation"]
        assert inputs["validated_data"] == {"batch": good["batch"], "run_id": good["run_id"],
                                            "result_uri": good["result_uri"], "verified": True}
        assert inputs["validated_sha256"] == good["validated_sha256"]
        assert manifest["rows"] == good["tables"]["users"]["rows_valid"]
        assert project.store.get_json(project.store.key(manifest["output"]["manifest"]))["inputs"] == inputs
    finally:
        stop()
