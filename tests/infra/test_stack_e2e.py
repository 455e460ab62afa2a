"""Start the real stack (SeaweedFS, MLflow, Airflow) on free ports in a temp state dir, check that
each service requires and accepts the generated credentials and keeps its state private, then stop
it in the middle of a running Airflow task: nothing the stack started may survive `down`."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
from campaignops.infra.sandbox import PORTS, free_port  # noqa: E402


NAP_MARKER = "campaignops-e2e-nap"
# A task that runs until stopped and leaves two grandchildren: one in the task's process group, one
# that escaped into a session of its own (what `subprocess.Popen(start_new_session=True)` in a task does).
NAP_DAG = f'''"""A task that naps until it is stopped (tests/infra/test_stack_e2e.py)."""
import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False, tags=["test"])
def nap():
    @task
    def sleep_long():
        import subprocess, sys, time
        for new_session in (False, True):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)", "{NAP_MARKER}"],
                             start_new_session=new_session)
        time.sleep(900)

    sleep_long()


nap()
'''


def _project_processes(state_dir: Path, leaders=()) -> dict[int, str]:
    """Every live process (not a zombie) whose environment or command line names `state_dir`, or
    that is in the session or process group of one of `leaders` (an Airflow task worker renames
    itself, `airflow worker -- <id>`, and its title overwrites the environment /proc shows)."""
    out = {}
    needle = str(state_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
            if (needle in cmdline or needle in (entry / "environ").read_bytes() or NAP_MARKER.encode() in cmdline
                    or {int(fields[2]), int(fields[3])} & set(leaders)):
                out[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
    return out


def _naps() -> list[int]:
    return [pid for pid, cmd in _project_processes(Path("/nonexistent")).items() if NAP_MARKER in cmd]


@pytest.fixture
def stack_settings(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    (ws / "dags").mkdir(parents=True)
    (ws / "dags" / "nap.py").write_text(NAP_DAG)
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
    for pid in _naps():            # never leave the test's own nap processes behind, whatever happened
        os.kill(pid, signal.SIGKILL)


def test_stack_up_auth_status_down(stack_settings, monkeypatch):
    import boto3
    import botocore
    from botocore import UNSIGNED
    from botocore.config import Config

    from campaignops.infra import processes as stack_procs
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
    # the filer HTTP port is no side door around the S3 credentials (its HTTP API is off: 404)
    r = requests.get(f"http://127.0.0.1:{s.port('weed_filer')}/buckets/{s.bucket}/probe/x.json", timeout=5)
    assert r.status_code in (401, 404) and '"ok"' not in r.text

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

    # The state dir is private: the directory 0700, the servers' databases and every secret 0600,
    # after the real servers created them (SQLite would make them 0644).
    assert stat.S_IMODE(s.state_dir.stat().st_mode) == 0o700
    private = [s.env_file, stack.server_secrets_file(s), stack.people_file(s), s.state_dir / "mlflow" / "mlflow.db",
               s.state_dir / "mlflow" / "basic_auth.db", s.state_dir / "mlflow" / "basic_auth.ini",
               stack.airflow_home(s) / "airflow.db", stack.airflow_home(s) / "simple_auth_manager_passwords.json",
               s.state_dir / "s3" / "s3.json", s.state_dir / "s3" / "security.toml"]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in private} == {p.name: "0o600" for p in private}
    # The stored objects and the filer's metadata (weed writes its small volume-info .vif files 0644
    # whatever the umask; they hold the volume's version and replication, no data).
    stored = [p for p in (s.state_dir / "seaweed").rglob("*") if p.is_file() and p.suffix != ".vif"]
    assert any(p.suffix == ".dat" for p in stored)
    for path in [*stored, *stack.logs_dir(s).iterdir()]:
        assert not path.stat().st_mode & 0o077, f"{path} is readable by others"

    # down in the middle of a running task: the task, its children and the one that left its
    # session all stop (Airflow puts each task in its own process group, so they used to survive).
    af.wait_for_dag("nap", timeout=180)
    af.unpause("nap")
    af.trigger("nap")
    deadline = time.monotonic() + 180
    while len(_naps()) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(_naps()) == 2, "the nap task did not start within 180 s"
    running = _project_processes(s.state_dir, pids.values())
    workers = [pid for pid, cmd in running.items() if cmd.startswith("airflow worker")]
    assert workers, running                     # the task's worker: its own process group
    print(f"{len(running)} project processes before down")

    # down stops every process it started, and theirs
    groups = {svc: stack_procs.group_members(pid) for svc, pid in pids.items()}
    t0 = time.monotonic()
    assert sorted(stack.down(s)) == sorted(stack.SERVICES)
    print(f"down took {time.monotonic() - t0:.1f}s")
    for svc, pid in pids.items():
        assert stack_procs.group_members(pid) == [], f"{svc} group still alive"
        for member in groups[svc]:
            assert stack_procs.start_time(member) is None, f"{svc} process {member} still alive"
    assert _project_processes(s.state_dir, pids.values()) == {}, "processes left after down"
    assert not any(r["running"] for r in stack.status(s))
    assert not list((s.state_dir / "run").glob("*.pid"))
