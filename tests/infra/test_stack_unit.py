"""infra.stack and infra.airflow_client without servers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from campaignops.infra import processes, stack
from campaignops.infra.airflow_client import AirflowClient, DagRunFailed, _render_log


@pytest.fixture
def settings(workspace):
    workspace.env.clear()
    return workspace


def test_credentials_generated_once_private_and_reloaded(settings):
    first = stack.ensure_credentials(settings)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CAMPAIGNOPS_AIRFLOW_USER",
                "CAMPAIGNOPS_AIRFLOW_PASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert first[key], key
        assert settings.env[key] == first[key]  # same process sees them
    assert settings.env_file.stat().st_mode & 0o777 == 0o600
    assert len(first["AWS_SECRET_ACCESS_KEY"]) >= 30 and len(first["CAMPAIGNOPS_AIRFLOW_PASSWORD"]) >= 20
    assert stack.ensure_credentials(settings) == first  # stable across calls
    settings.env.clear()
    assert stack.ensure_credentials(settings) == first
    # server-side secrets live elsewhere, so they are not handed to tasks via Settings.env
    server = stack.server_secrets(settings)
    assert "AIRFLOW__API_AUTH__JWT_SECRET" in server and "AIRFLOW__API_AUTH__JWT_SECRET" not in first
    assert stack.server_secrets_file(settings).stat().st_mode & 0o777 == 0o600
    assert stack.server_secrets(settings) == server


def test_missing_key_is_added_without_touching_others(settings):
    first = stack.ensure_credentials(settings)
    lines = [l for l in settings.env_file.read_text().splitlines() if not l.startswith("MLFLOW_TRACKING_PASSWORD")]
    settings.env_file.write_text("\n".join(lines) + "\n")
    os.chmod(settings.env_file, 0o644)
    again = stack.ensure_credentials(settings)
    assert again["MLFLOW_TRACKING_PASSWORD"] and again["AWS_SECRET_ACCESS_KEY"] == first["AWS_SECRET_ACCESS_KEY"]
    assert settings.env_file.stat().st_mode & 0o777 == 0o600


def _spawn_group():
    """A process group like the ones `up` starts: a leader with a child."""
    return subprocess.Popen([sys.executable, "-c", "import subprocess,time; subprocess.Popen(['sleep','60']); time.sleep(60)"],
                            start_new_session=True)


def _write_pidfile(settings, service, pid, start_time):
    stack.run_dir(settings).mkdir(parents=True, exist_ok=True)
    stack.pidfile(settings, service).write_text(json.dumps(
        {"service": service, "pid": pid, "pgid": pid, "start_time": start_time, "cmdline": []}))


def test_down_ignores_pid_that_belongs_to_another_process(settings):
    other = _spawn_group()
    try:
        real = processes.start_time(other.pid)
        _write_pidfile(settings, "mlflow", other.pid, real - 1)  # same pid, different process
        assert stack.status(settings)[1]["running"] is False
        assert stack.down(settings, timeout=1) == []
        assert other.poll() is None, "down() killed a process it did not start"
        assert not stack.pidfile(settings, "mlflow").exists()
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()


def test_down_stops_whole_group_of_our_process(settings):
    proc = _spawn_group()
    time.sleep(0.5)
    members = processes.group_members(proc.pid)
    assert len(members) == 2
    _write_pidfile(settings, "airflow", proc.pid, processes.start_time(proc.pid))
    assert stack.running_pid(settings, "airflow") == proc.pid
    assert stack.down(settings, timeout=5) == ["airflow"]
    proc.wait(timeout=5)
    assert processes.group_members(proc.pid) == []
    assert not stack.pidfile(settings, "airflow").exists()


# A leader like the Airflow launcher: a child that moved to its own process group (what Airflow
# does with each task) and a grandchild that started a session of its own; the leader ignores SIGTERM
# for a moment, the group child ignores it altogether (as the task worker did).
_ESCAPING_TREE = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import os, signal, subprocess, sys, time; os.setpgid(0, 0); "
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "subprocess.Popen(['sleep', '60'], start_new_session=True); time.sleep(60)"])
time.sleep(60)
"""


def test_down_stops_processes_that_left_the_group_or_the_session(settings):
    proc = subprocess.Popen([sys.executable, "-c", _ESCAPING_TREE], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(processes.tree(proc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = processes.tree(proc.pid)
        assert len(tree) == 3, tree
        assert len({processes.stat(pid).pgid for pid in tree}) == 3     # three groups, two sessions
        _write_pidfile(settings, "airflow", proc.pid, processes.start_time(proc.pid))
        assert stack.down(settings, timeout=1) == ["airflow"]
        proc.wait(timeout=5)
        assert processes.alive(tree) == {}, f"left running: {processes.alive(tree)}"
    finally:
        for pid in processes.alive(processes.tree(proc.pid)):
            os.kill(pid, signal.SIGKILL)


def test_weed_serves_no_admin_http_and_gets_no_client_keys(settings):
    """The master's HTTP API (/col/delete, /submit, /vol/grow: no authentication) is switched off,
    and weed never sees the S3 keys (given them it logs the access key id)."""
    stack.prepare_state(settings)
    cmd, env, _ = stack._s3_spec(settings)
    assert "-disableHttp" in cmd
    secrets = {settings.env[k] for k in stack.CLIENT_SECRETS if len(settings.env[k]) > 8}
    assert not secrets & set(env.values()) and not [k for k in env if k.startswith("AWS_")]


def test_status_without_stack(settings):
    rows = stack.status(settings)
    assert [r["service"] for r in rows] == list(stack.SERVICES)
    assert all(not r["running"] and not r["healthy"] and r["pid"] is None for r in rows)


def test_up_rejects_unknown_service(settings):
    with pytest.raises(ValueError):
        stack.up(settings, services=("s3", "kafka"))


def test_grpc_port_stays_in_range(settings, monkeypatch):
    monkeypatch.setenv("CAMPAIGNOPS_S3_PORT", "60000")
    assert 0 < stack._grpc_port(settings, "s3") <= 65535
    monkeypatch.setenv("CAMPAIGNOPS_S3_GRPC_PORT", "40001")
    assert stack._grpc_port(settings, "s3") == 40001


def test_airflow_env_points_workers_at_api_port(settings, monkeypatch):
    monkeypatch.setenv("CAMPAIGNOPS_AIRFLOW_PORT", "18080")
    stack.ensure_credentials(settings)
    env = stack.airflow_env(settings)
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["AIRFLOW__API__PORT"] == "18080" and env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(settings.workspace / "dags")
    assert env["AIRFLOW_HOME"].startswith(str(settings.state_dir))
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert env["AWS_ACCESS_KEY_ID"] == settings.env["AWS_ACCESS_KEY_ID"]
    assert env["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] == "True"          # the local stack runs the daily DAG


def test_sandbox_stacks_create_asset_triggered_runs(settings, monkeypatch, tmp_path):
    """The sandbox (e2e tests, DAG benchmark) keeps the scheduler's DAG-run creation on: a landed
    raw batch (asset event) must start campaign_retrain there too. Unpausing a DAG does not start
    a daily run beside the one triggered and measured: tests/dags checks the timetables."""
    from campaignops.infra import sandbox

    seen = {}
    monkeypatch.setattr(sandbox, "make_workspace", lambda tmp, update=None: tmp / "ws")
    monkeypatch.setattr(stack, "up", lambda s: seen.setdefault("env", stack.airflow_env(s)))
    monkeypatch.setattr(stack, "down", lambda s: None)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "params.yaml").write_text((settings.workspace / "params.yaml").read_text())
    with sandbox.sandbox_stack(tmp_path):
        pass
    assert seen["env"]["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] == "True"
    assert "CAMPAIGNOPS_AIRFLOW_SCHEDULES" not in os.environ            # the environment is restored


def test_sandbox_stack_stops_its_servers_when_the_process_is_terminated(settings, monkeypatch, tmp_path):
    """`kill <pid>` of a benchmark or test run must not leave its SeaweedFS/MLflow/Airflow behind."""
    from campaignops.infra import sandbox

    calls = []
    monkeypatch.setattr(sandbox, "make_workspace", lambda tmp, update=None: tmp / "ws")
    monkeypatch.setattr(stack, "up", lambda s: calls.append("up"))
    monkeypatch.setattr(stack, "down", lambda s: calls.append("down"))
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "params.yaml").write_text((settings.workspace / "params.yaml").read_text())
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        with sandbox.sandbox_stack(tmp_path):
            os.kill(os.getpid(), signal.SIGTERM)
    assert exc.value.code == 128 + signal.SIGTERM and calls == ["up", "down"]
    assert signal.getsignal(signal.SIGTERM) == before and "CAMPAIGNOPS_AIRFLOW_SCHEDULES" not in os.environ


class _Resp:
    def __init__(self, status, body):
        self.status_code, self._body = status, body
        self.content = json.dumps(body).encode()
        self.text = self.content.decode()

    def json(self):
        return self._body


class _FakeSession:
    def __init__(self, routes):
        self.routes, self.calls = routes, []

    def post(self, url, **kw):
        return self.request("POST", url, **kw)

    def request(self, method, url, **kw):
        path = url.split("://", 1)[1].split("/", 1)[1]
        self.calls.append((method, "/" + path, kw))
        for (m, prefix), resp in self.routes.items():
            if m == method and ("/" + path).startswith(prefix):
                return resp
        return _Resp(404, {"detail": "not found"})


def test_wait_for_run_names_failed_tasks_with_log_tail():
    client = AirflowClient("http://af", "admin", "pw")
    client._session = _FakeSession({
        ("POST", "/auth/token"): _Resp(201, {"access_token": "t"}),
        ("GET", "/api/v2/dags/d/dagRuns/r1/taskInstances/train/logs/2"): _Resp(200, {"content": [
            {"timestamp": "2024-01-01T00:00:00", "level": "info", "event": "starting"},
            {"level": "error", "event": "Task failed with exception",
             "error_detail": [{"exc_type": "ValueError", "exc_value": "bad AUC", "frames": []}]}]}),
        ("GET", "/api/v2/dags/d/dagRuns/r1/taskInstances"): _Resp(200, {"total_entries": 3, "task_instances": [
            {"task_id": "ingest", "state": "success", "try_number": 1, "map_index": -1},
            {"task_id": "train", "state": "failed", "try_number": 2, "map_index": -1},
            {"task_id": "register", "state": "upstream_failed", "try_number": 0, "map_index": -1}]}),
        ("GET", "/api/v2/dags/d/dagRuns/r1"): _Resp(200, {"state": "failed"}),
    })
    with pytest.raises(DagRunFailed) as info:
        client.wait_for_run("d", "r1", timeout=5, poll=0)
    msg = str(info.value)
    assert info.value.failed_tasks == ["train"]
    assert "failed task(s): train" in msg and "register" in msg and "ValueError: bad AUC" in msg


def test_trigger_sends_null_logical_date():
    client = AirflowClient("http://af", "admin", "pw")
    client._session = _FakeSession({
        ("POST", "/auth/token"): _Resp(201, {"access_token": "t"}),
        ("POST", "/api/v2/dags/d/dagRuns"): _Resp(200, {"dag_run_id": "manual__1"}),
    })
    assert client.trigger("d", {"batch": "x"}) == "manual__1"
    method, path, kw = client._session.calls[-1]
    assert kw["json"] == {"logical_date": None, "conf": {"batch": "x"}}
    assert kw["headers"]["Authorization"] == "Bearer t"


def test_render_log_plain_and_structured():
    assert _render_log("plain") == "plain"
    assert "INFO hello" in _render_log([{"level": "info", "event": "hello"}, "raw line"])


def test_people_accounts_are_private_stable_and_given_their_roles(settings):
    stack.ensure_credentials(settings)
    first = stack.people(settings)
    assert set(first) == {"engineer", "auditor"} and all(len(p) >= 20 for p in first.values())
    assert stack.people_file(settings).stat().st_mode & 0o777 == 0o600
    assert stack.people(settings) == first                       # generated once, reused
    users = stack.airflow_env(settings)["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")
    assert users == [f"{settings.env['CAMPAIGNOPS_AIRFLOW_USER']}:admin", "engineer:user", "auditor:viewer"]
    assert not set(first.values()) & set(stack._base_env(settings).values())   # never in the pipeline's env
    stack._airflow_spec(settings)
    passwords = json.loads((stack.airflow_home(settings) / "simple_auth_manager_passwords.json").read_text())
    assert {k: passwords[k] for k in first} == first


def test_profile_selects_services_and_airflow_environment(settings, monkeypatch):
    from campaignops.infra import distributed

    assert stack.services_for(settings) == stack.SERVICES
    local = stack.airflow_env(settings)
    assert local["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor" and local["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite")
    distributed.record_profile(settings, "distributed")
    assert stack.services_for(settings) == ("s3", "mlflow", "postgres", "redis", "airflow")
    env = stack.airflow_env(settings)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://campaignops:")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:") and "@127.0.0.1:" in env["AIRFLOW__CELERY__BROKER_URL"]
    assert int(env["CAMPAIGNOPS_AIRFLOW_CELERY_WORKERS"]) >= 2
    workers = distributed.worker_commands("airflow", 2, 2)
    assert len({tuple(c) for c in workers.values()}) == 2 and all("--skip-serve-logs" in c for c in workers.values())
    monkeypatch.setenv("CAMPAIGNOPS_PROFILE", "cluster")
    with pytest.raises(distributed.DistributedError):
        stack.services_for(settings)


def test_celery_provider_imports_with_the_locked_celery(tmp_path):
    """The workers' code path imports (celery 5.7 broke the provider's import of its DB backend)."""
    import subprocess
    import sys

    env = {**__import__("os").environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
           "AIRFLOW__CELERY__BROKER_URL": "redis://127.0.0.1:1/0"}
    out = subprocess.run([sys.executable, "-c", "import airflow.providers.celery.executors.celery_executor_utils"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
