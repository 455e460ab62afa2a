"""Lineage (pipelines/lineage.py) on one in-process chain (moto S3, SQLite MLflow): traced from the
scores manifest, the campaign, the model version and the run; then tampered with."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import yaml

from campaignops.config import Settings
from campaignops.pipelines import evaluate, layout, lineage, lineage_render, promote, score, train
from campaignops.pipelines.storage import ObjectStore
from conftest import TEST_ENV, land_features, moto_store, project_settings


def _dvc_push(store: ObjectStore, root, rel: str) -> str:
    """What `dvc push` leaves in the remote for output `rel` (DVC 3 md5 layout); returns its md5."""
    path = root / rel
    if path.is_file():
        data = path.read_bytes()
        md5 = hashlib.md5(data).hexdigest()
        store.put_bytes(lineage._dvc_key(md5), data)
        return md5
    entries = []
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        data = f.read_bytes()
        md5 = hashlib.md5(data).hexdigest()
        store.put_bytes(lineage._dvc_key(md5), data)
        entries.append({"md5": md5, "relpath": f.relative_to(path).as_posix()})
    listing = json.dumps(sorted(entries, key=lambda e: e["relpath"]), sort_keys=True).encode()
    md5 = hashlib.md5(listing).hexdigest() + ".dir"
    store.put_bytes(lineage._dvc_key(md5), listing)
    return md5


def _write_lock(settings: Settings, store: ObjectStore, stages: dict[str, list[str]]) -> None:
    lock = {"schema": "2.0", "stages": {
        stage: {"cmd": f"campaignops {stage}", "outs": [{"path": p, "hash": "md5", "md5": _dvc_push(store, settings.workspace, p)}
                                                        for p in paths]} for stage, paths in stages.items()}}
    (settings.workspace / "dvc.lock").write_text(yaml.safe_dump(lock))


pytestmark = pytest.mark.slow   # one in-process chain (~2 min) for the module


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lineage")
    ws = tmp / "ws"
    ws.mkdir()
    settings = project_settings(ws)
    p = settings.params
    p["train"].update(epochs=1, baselines=[])
    p["evaluate"].update(min_auc=0.0, max_logloss=10.0, min_qini=-10.0, min_policy_value_fraction=-10.0,
                         qini_noise_draws=0, report=False, reference_uplift_models=[])
    p["evaluate"]["new_campaigns"]["campaigns"] = 0
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
    mp.setenv("CAMPAIGNOPS_TRIGGERED_BY", "auditor-test")
    for k, v in TEST_ENV.items():
        mp.setenv(k, v)
    saved = dict(os.environ)
    try:
        with moto_store(settings) as store:
            land_features(settings, store, users=1000)
            _write_lock(settings, store, {"validate": ["data/validated", "reports/validation.json"],
                                          "features": ["data/features"]})
            record = train.run(settings)
            import mlflow

            client = mlflow.MlflowClient()
            if not any(f.path == lineage.DVC_LOCK_ARTIFACT for f in client.list_artifacts(record["run_id"], "lineage")):
                client.log_artifact(record["run_id"], str(ws / "dvc.lock"), "lineage")   # what train logs
            _write_lock(settings, store, {"validate": ["data/validated", "reports/validation.json"],
                                          "features": ["data/features"], "train": ["data/model"]})
            evaluate.run(settings)
            promoted = promote.run(settings, store=store)
            assert promoted["promoted"]
            manifest = score.run(settings, budget=50.0, store=store,
                                 context={"dag_id": "campaign_score", "dag_run_id": "manual__2024-01-01"})
            if not store.exists(f"scores/{manifest['campaign_id']}/latest.json"):   # a 1-epoch model may target nobody
                from campaignops.pipelines.run_commit import update_latest

                update_latest(store, f"scores/{manifest['campaign_id']}/", manifest)
            yield settings, store, client, manifest, promoted["champion_version"], record["run_id"]
    finally:
        os.environ.clear()
        os.environ.update(saved)
        mp.undo()


def _by_name(chain: dict) -> dict:
    return {h["name"]: h for h in chain["hops"]}


EXPECTED_HOPS = ["scores parts", "scores manifest", "model version", "MLflow run", "code + dvc.lock",
                 "validated data (DVC)", "features (DVC)", "model files (DVC)", "validation (training data)",
                 "raw batch (training data)"]


def test_trace_from_the_manifest_verifies_every_hop(chain):
    settings, store, client, manifest, version, run_id = chain
    out = lineage.trace(settings, manifest["output"]["manifest"], store=store, mlflow_client=client)
    assert [h["name"] for h in out["hops"]] == EXPECTED_HOPS
    hops = _by_name(out)
    for name in EXPECTED_HOPS:
        if name != "code + dvc.lock":   # the temp workspace is no git checkout
            assert hops[name]["status"] == "verified", (name, hops[name]["detail"], hops[name]["checks"])
    code = hops["code + dvc.lock"]
    assert code["status"] == "unverifiable"
    assert {c["what"]: c["status"] for c in code["checks"]}["dvc.validate.data/validated (run dvc.lock vs version tag)"] \
        == "verified"
    # the three hash schemes linked: DVC md5 objects re-hashed to the run's and the manifest's sha256
    feats = {c["what"]: c for c in hops["features (DVC)"]["checks"]}
    assert feats["train.parquet sha256 (run tag)"]["status"] == "verified"
    assert any(c["what"].startswith("users.parquet sha256 (scores manifest)") and c["status"] == "verified"
               for c in hops["validated data (DVC)"]["checks"])
    m = hops["scores manifest"]
    assert m["facts"]["triggered_by"] == "auditor-test" and m["facts"]["dag_run_id"] == "manual__2024-01-01"
    assert any(l["label"] == "Airflow dag run" and "/dags/campaign_score/runs/manual__2024-01-01" in l["url"]
               for l in m["links"])
    assert hops["model version"]["facts"]["tags"]["mlflow_run_id"] == run_id
    # the Data Docs index in S3 lists its runs as static rows (readable without the CDN scripts)
    docs = store.get_bytes(store.key(json.loads(store.get_bytes(store.key(manifest["inputs"]["validation_result_uri"])))
                                     ["docs_uri"])).decode()
    assert "data-offline-rows" in docs and "<td" in docs and "validations/raw/users/" in docs
    docs_key = store.key(json.loads(store.get_bytes(store.key(manifest["inputs"]["validation_result_uri"])))["docs_uri"])
    assert store.head(docs_key)["ContentType"] == "text/html"      # opens in a browser from an S3 link
    # scoring stored the page beside its manifest
    page_key = store.key(manifest["output"]["prefix"]) + "lineage.html"
    page = store.get_bytes(page_key).decode()
    assert store.head(page_key)["ContentType"] == "text/html; charset=utf-8"
    assert "<script" not in page and "scores parts" in page and "raw batch (training data)" in page


@pytest.mark.parametrize("ref", ["campaign", "version", "models_uri", "run"])
def test_trace_from_other_references(chain, ref):
    settings, store, client, manifest, version, run_id = chain
    name = settings.params["train"]["model_name"]
    value = {"campaign": manifest["campaign_id"], "version": version, "models_uri": f"models:/{name}/{version}",
             "run": run_id}[ref]
    out = lineage.trace(settings, value, store=store, mlflow_client=client)
    hops = _by_name(out)
    expected = EXPECTED_HOPS if ref == "campaign" else EXPECTED_HOPS[2:]
    assert [h["name"] for h in out["hops"]] == expected
    for n in ("model version", "MLflow run", "features (DVC)", "validation (training data)", "raw batch (training data)"):
        assert hops[n]["status"] == "verified", (n, hops[n]["detail"])
    assert out["status"] == "unverifiable"     # only the git sha (no git checkout)


def test_render_html_is_self_contained_and_text_lists_hops(chain):
    settings, store, client, manifest, *_ = chain
    out = lineage.trace(settings, manifest["campaign_id"], store=store, mlflow_client=client)
    page = lineage_render.render_html(out)
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert "<script" not in page and "<link" not in page and "src=" not in page
    text = lineage_render.render_text(out, width=220)
    assert all(n in text for n in ("scores parts", "raw batch")) and "verified" in text
    part = manifest["parts"][0]["sha256"]
    assert part[:16] in text                     # a verified hop shows the hash it verified, not just a count
    lines = lineage_render.check_lines({"checks": [
        {"what": "x sha256", "status": "mismatch", "detail": "", "expected": "a" * 64, "actual": "b" * 64},
        *[{"what": f"c{i}", "status": "verified", "detail": "", "expected": 1, "actual": 1} for i in range(9)]]})
    assert lines[0].startswith("MISMATCH x sha256: expected aaaa") and "actual bbbb" in lines[0]
    assert len(lines) == lineage_render.TEXT_CHECKS_PER_HOP + 1 and lines[-1].startswith("… 4 more")


def test_unknown_reference_is_an_error(chain):
    settings, store, client, *_ = chain
    with pytest.raises(lineage.LineageError):
        lineage.trace(settings, "NOPE_NO_CAMPAIGN", store=store, mlflow_client=client)


def test_tampering_is_a_mismatch_and_a_deleted_manifest_is_missing(chain, tmp_path):
    """Last in the module: it changes the stored objects."""
    from typer.testing import CliRunner

    from campaignops import cli

    settings, store, client, manifest, *_ = chain
    part = manifest["parts"][0]["key"]
    data = bytearray(store.get_bytes(part))
    data[len(data) // 2] ^= 0xFF
    store.put_bytes(part, bytes(data))
    raw_key = layout.raw_manifest_key(_by_name(lineage.trace(settings, manifest["output"]["manifest"], store=store,
                                                             mlflow_client=client))
                                      ["model version"]["facts"]["tags"]["data.batch"])
    store.delete_keys([raw_key])
    out = lineage.trace(settings, manifest["output"]["manifest"], store=store, mlflow_client=client)
    hops = _by_name(out)
    assert hops["scores parts"]["status"] == "mismatch" and "sha256" in hops["scores parts"]["detail"]
    assert hops["raw batch (training data)"]["status"] == "missing"
    assert hops["model version"]["status"] == "verified" and out["status"] == "mismatch"

    # the CLI: same chain, a mismatch exits 1; --json and --html
    import campaignops.pipelines.lineage as mod

    orig = mod.trace
    mp = pytest.MonkeyPatch()
    mp.setattr(mod, "trace", lambda s, ref, **kw: orig(settings, ref, store=store, mlflow_client=client, **kw))
    mp.setattr(cli, "load_settings", lambda: settings)
    try:
        page = tmp_path / "lineage.html"
        res = CliRunner().invoke(cli.app, ["lineage", manifest["output"]["manifest"], "--json", "--html", str(page)])
        assert res.exit_code == 1, res.output
        assert json.loads(res.output)["status"] == "mismatch"
        assert "mismatch" in page.read_text()
        res = CliRunner().invoke(cli.app, ["lineage", "NOPE_NO_CAMPAIGN"])
        assert res.exit_code == 2
    finally:
        mp.undo()


def test_data_docs_index_rows_are_static_html(tmp_path):
    from campaignops.validation.docs_offline import MARK, make_offline

    page = """<html><head></head><body>
<table
  id="t-1-body-table"
  class="table-sm"
  data-toggle="table"
>
</table>
<script>
  $('#t-1-body-table').bootstrapTable(
    Object.assign(
      {
        columns: [{'field': 'validation_success', 'title': 'Status'}, {'field': 'run_name', 'title': 'Run Name'}],
        data: [{'validation_success': '<i class="fas fa-times text-danger"></i>', 'run_name': 'r1', '_table_row_link_path': 'validations/a.html'}],
        toolbar: '#t-1-body-table-toolbar'
      },
      {'search': 'true'}
    )
  );
</script></body></html>"""
    (tmp_path / "index.html").write_text(page)
    assert make_offline(tmp_path) == 1 and make_offline(tmp_path) == 0      # idempotent
    out = (tmp_path / "index.html").read_text()
    assert MARK in out and "<th>Run Name</th>" in out and "<a href='validations/a.html'>r1</a>" in out
    assert "failed" in out and "bootstrapTable(" in out                     # online, bootstrap-table still runs
