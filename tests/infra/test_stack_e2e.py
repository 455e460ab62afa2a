"""Start the real stack (SeaweedFS, MLflow, Airflow) on free ports in a temp state dir, check that
each service requires and accepts the generated credentials, then stop it."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
from campaignops.infra.sandbox import PORTS, free_port  # noqa: E402


@pytest.fixture
def stack_settings(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    (ws / "dags").mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", ws / "params.yaml")
    monkeypatch.setenv("CAMPAIGNOPS_WORKSPACE", str(ws))
    monkeypatch.setenv("CAMPAIGNOPS_STATE", str(tmp_path / "state"))
    for name in PORTS:
        monkeypatch.setenv(f"CAMPAIGNOPS_{name.upper()}_PORT", str(free_port()))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "CAMPAIGNOPS_AIRFLOW_PASSWORD", "CAMPAIGNOPS_AIRFLOW_URL",
                "CAMPAIGNOPS_S3_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    from campaignops.config import load_settings
    from campaignops.infra import stack

    settings = load_settings()
    yield settings
    stack.down(settings)


def test_stack_up_auth_status_down(stack_settings, monkeypatch):
    import boto3
    import botocore
    from botocore import UNSIGNED
    from botocore.config import Config

    from campaignops.infra import stack
    from campaignops.infra.airflow_client import AirflowClient, AirflowError
    from campaignops.pipelines.storage import ObjectStore

    s = stack_settings
    timings: list[str] = []
    t0 = time.monotonic()
    stack.up(s, progress=timings.append)
    print(f"up took {time.monotonic() - t0:.1f}s: {timings}")
    assert s.env["AWS_ACCESS_KEY_ID"] and s.env_file.stat().st_mode & 0o777 == 0o600

    # S3: anonymous refused, authenticated works, bucket exists
    anon = boto3.client("s3", endpoint_url=s.s3_endpoint, region_name="us-east-1",
                        config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}))
    with pytest.raises(botocore.exceptions.ClientError):
        anon.list_buckets()
    with pytest.raises(botocore.exceptions.ClientError):
        anon.list_objects_v2(Bucket=s.bucket)
    store = ObjectStore(s)
    assert s.bucket in {b["Name"] for b in store.client.list_buckets()["Buckets"]}
    store.put_json("probe/x.json", {"ok": 1})
    assert store.get_json("probe/x.json") == {"ok": 1}
    # the filer HTTP port is no side door around the S3 credentials
    assert requests.get(f"http://127.0.0.1:{s.port('weed_filer')}/buckets/{s.bucket}/probe/x.json",
                        timeout=5).status_code == 401

    # MLflow: health open, API needs credentials, authenticated client works
    base = s.mlflow_uri
    assert requests.get(f"{base}/health", timeout=5).text.strip() == "OK"
    search = f"{base}/api/2.0/mlflow/experiments/search?max_results=5"
    if stack.mlflow_auth_available():
        assert requests.get(search, timeout=5).status_code == 401
        assert requests.get(search, auth=("admin", "wrong"), timeout=5).status_code == 401
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, s.env[key])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.mlflow_uri)
    from mlflow import MlflowClient

    client = MlflowClient(s.mlflow_uri)
    assert any(e.name == "Default" for e in client.search_experiments())

    # Airflow: generated password works, wrong one refused
    af = AirflowClient.from_settings(s)
    assert af.token()
    r = af.request("GET", "/api/v2/dags")
    assert r.status_code == 200
    with pytest.raises(AirflowError):
        AirflowClient(s.airflow_url, s.airflow_user, "wrong-password").token()
    assert requests.get(f"{s.airflow_url}/api/v2/dags", timeout=5).status_code in (401, 403)

    # idempotent: a second up leaves the running services alone
    pids = {r["service"]: r["pid"] for r in stack.status(s)}
    again: list[str] = []
    stack.up(s, progress=again.append)
    assert all("already running" in line for line in again), again
    rows = stack.status(s)
    assert all(r["running"] and r["healthy"] for r in rows), rows
    assert {r["service"]: r["pid"] for r in rows} == pids

    # down stops every process group it started
    groups = {svc: stack._group_members(pid) for svc, pid in pids.items()}
    assert sorted(stack.down(s)) == sorted(stack.SERVICES)
    for svc, pid in pids.items():
        assert stack._group_members(pid) == [], f"{svc} group still alive"
        for member in groups[svc]:
            assert stack._proc_start_time(member) is None, f"{svc} process {member} still alive"
    assert not any(r["running"] for r in stack.status(s))
    assert not list((s.state_dir / "run").glob("*.pid"))
