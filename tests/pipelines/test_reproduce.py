"""`campaignops reproduce` (pipelines/reproduce.py) with the real git and dvc binaries: a temp git repo
holding the project, a raw batch in an S3 server (moto's, on a free port, so the dvc and campaignops
subprocesses reach it), validate + features run by `dvc repro` and pushed, a model version whose run
logged the dvc.lock; then that version rebuilt from its commit after HEAD moved on, and a tampered
version reported as a mismatch naming what differs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from campaignops.config import Settings
from campaignops.pipelines import reproduce as rep

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _copy_project(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("tests/", "benchmarks/", "docs/")) and rel != "dvc.lock":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _sh(repo: Path, env: dict, *args: str) -> str:
    proc = subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_shim_imports_the_checkout_not_this_installation(tmp_path):
    checkout = tmp_path / "checkout"
    _copy_project(checkout)
    (checkout / "pipelines" / "marker_for_test.py").write_text("WHERE = 'checkout'\n")
    root, bindir = rep._shim(tmp_path / "shim", checkout)
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", "import campaignops.pipelines.marker_for_test as m, "
                          "campaignops.pipelines.features as f; print(m.WHERE, f.__file__)"],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    where, path = out.stdout.split()
    assert where == "checkout" and Path(path).resolve() == (checkout / "pipelines" / "features.py").resolve()
    shim = subprocess.run([str(bindir / "campaignops"), "--help"], capture_output=True, text=True, cwd=checkout)
    assert shim.returncode == 0 and "reproduce" in shim.stdout, shim.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """(settings, client, store, env, first commit sha, lock text) after one versioned features run."""
    from moto.server import ThreadedMotoServer

    import boto3
    import mlflow

    from campaignops.pipelines import synth
    from campaignops.pipelines.storage import ObjectStore

    tmp = tmp_path_factory.mktemp("reproduce")
    repo = tmp / "repo"
    _copy_project(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env_vars = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                    "CAMPAIGNOPS_S3_ENDPOINT": endpoint, "CAMPAIGNOPS_ID_SALT": "reproduce-test-salt"}
        settings = Settings(workspace=repo, state_dir=tmp / "state", env=env_vars)
        store = ObjectStore(settings, client=boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                                          aws_access_key_id="test", aws_secret_access_key="test"))
        store.ensure_bucket()
        git_env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                   "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
        _sh(repo, git_env, "git", "init", "--quiet")
        _sh(repo, git_env, "git", "add", "-A")
        _sh(repo, git_env, "git", "commit", "--quiet", "-m", "project")
        sha = _sh(repo, git_env, "git", "rev-parse", "HEAD").strip()

        manifest = synth.generate(settings, users=300, store=store, progress=False)
        env = settings.process_env()
        env.update(env_vars)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["DVC_NO_ANALYTICS"] = "1"
        dvc = str(BIN / "dvc")
        _sh(repo, env, dvc, "remote", "modify", "--local", "store", "endpointurl", endpoint)
        _sh(repo, env, str(BIN / "campaignops"), "ingest", "--batch", manifest["batch"])
        _sh(repo, env, dvc, "repro", "--no-run-cache", "features")
        _sh(repo, env, dvc, "push", "--quiet")
        lock_text = (repo / "dvc.lock").read_text()

        # HEAD moves on: the features code changes after the run (reproduce must use the run's commit).
        (repo / "pipelines" / "features.py").write_text((repo / "pipelines" / "features.py").read_text()
                                                        + "\n# changed after the run\n")
        _sh(repo, git_env, "git", "commit", "--quiet", "-am", "later change")

        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        client = mlflow.MlflowClient()
        yield settings, client, store, params["train"]["model_name"], manifest["batch"], sha, lock_text
    finally:
        server.stop()


def _version(client, name: str, sha: str, batch: str, lock_text: str) -> str:
    import mlflow

    exp = mlflow.set_experiment("reproduce-test")
    with mlflow.start_run(experiment_id=exp.experiment_id) as run:
        mlflow.set_tag("git_sha", sha)
        mlflow.log_param("data.batch", batch)
        mlflow.log_text(lock_text, rep.DVC_LOCK_ARTIFACT)
    try:
        client.create_registered_model(name)
    except Exception:
        pass   # registered by an earlier call
    mv = client.create_model_version(name, f"runs:/{run.info.run_id}/lineage", run.info.run_id,
                                     tags={"git_sha": sha, "mlflow_run_id": run.info.run_id, "data.batch": batch})
    return str(mv.version)


pytestmark = pytest.mark.slow   # each reproduce clones, pulls and re-runs the features stage (~30 s)


def test_a_version_rebuilds_to_the_recorded_hashes(project):
    settings, client, store, name, batch, sha, lock_text = project
    version = _version(client, name, sha, batch, lock_text)
    result = rep.reproduce(settings, version, client=client, store=store)
    checks = {c["name"]: c for c in result["checks"]}
    assert result["status"] == rep.MATCHED, rep.render_text(result)
    assert checks["code"]["reproduced"] == sha
    assert checks["code pipelines/features.py"]["status"] == rep.MATCHED     # the run's commit, not HEAD
    assert checks["data data/validated"]["status"] == rep.MATCHED
    assert checks["data data/raw_manifest.json"]["status"] == rep.MATCHED
    out = checks["output data/features"]
    assert out["status"] == rep.MATCHED and out["recorded"].endswith(".dir")
    files = [c for c in result["checks"] if c["name"].startswith("file data/features/")]
    assert len(files) >= 4 and all(c["status"] == rep.MATCHED for c in files)
    assert result["workspace"] is None   # removed
    assert "matched" in rep.render_text(result)


def test_a_tampered_record_is_a_mismatch_naming_what_differs(project):
    settings, client, store, name, batch, sha, lock_text = project
    lock = yaml.safe_load(lock_text)
    stage = lock["stages"]["features"]
    out = next(o for o in stage["outs"] if o["path"] == "data/features")
    out["md5"] = "0" * 32 + ".dir"
    dep = next(d for d in stage["deps"] if d["path"] == "pipelines/features.py")
    dep["md5"] = "f" * 32   # the run's code differed from its commit (a dirty tree)
    version = _version(client, name, sha + "-dirty", batch, yaml.safe_dump(lock))
    result = rep.reproduce(settings, f"models:/{name}/{version}", client=client, store=store)
    bad = {c["name"] for c in result["checks"] if c["status"] != rep.MATCHED}
    assert result["status"] == rep.MISMATCH
    assert {"output data/features", "code pipelines/features.py"} <= bad
    assert "data data/validated" not in bad
    text = rep.render_text(result)
    assert "MISMATCH" in text and "dirty" in text


def test_unknown_version_and_a_run_without_a_lock(project):
    settings, client, store, name, batch, sha, lock_text = project
    with pytest.raises(rep.ReproduceError):
        rep.reproduce(settings, "999", client=client, store=store)
    import mlflow

    with mlflow.start_run() as run:
        mlflow.set_tag("git_sha", sha)
    mv = client.create_model_version(name, f"runs:/{run.info.run_id}/x", run.info.run_id,
                                     tags={"git_sha": sha, "mlflow_run_id": run.info.run_id})
    result = rep.reproduce(settings, str(mv.version), client=client, store=store)
    assert result["status"] == rep.MISSING and "dvc.lock" in result["checks"][0]["detail"]
