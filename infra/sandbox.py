"""A throwaway copy of the project with its own stack on free ports: the end-to-end tests and
the DAG benchmark run the real chain there, never in the developer's checkout or stack."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
PORTS = ("s3", "weed_master", "weed_volume", "weed_filer", "mlflow", "airflow", "postgres", "redis")
# Endpoints and credentials a developer's shell may export: a sandbox must not talk to their stack.
CALLER_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CAMPAIGNOPS_S3_ENDPOINT", "MLFLOW_TRACKING_URI",
              "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "CAMPAIGNOPS_AIRFLOW_URL",
              "CAMPAIGNOPS_AIRFLOW_PASSWORD")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_workspace(tmp: Path, params_update=None) -> Path:
    """Copy the project's tracked (and untracked, not ignored) files to tmp/ws as its own git
    repo, so DVC runs there. `params_update(params)` may edit params.yaml before the commit."""
    ws = tmp / "ws"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and f != "dvc.lock":   # a sandbox starts unlocked (the checkout's lock is its own runs')
            (ws / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, ws / f)
    if params_update is not None:
        params = yaml.safe_load((ws / "params.yaml").read_text())
        params_update(params)
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "sandbox"]):
        subprocess.run(cmd, cwd=ws, check=True)
    return ws


@contextmanager
def sandbox_stack(tmp: Path, params_update=None, profile: str = "local") -> Iterator:
    """Workspace copy + stack up on free ports (env vars set in this process); yields Settings;
    stops exactly what it started and restores the environment — also when the process is sent
    SIGTERM (`kill`, a CI timeout), which otherwise ends Python without running this cleanup."""
    ws = make_workspace(tmp, params_update)
    # Schedules on: asset-triggered runs are created by the scheduler's DAG-run loop. The DAGs'
    # cron timetables do not fire on unpause (CronTriggerTimetable, catchup off).
    env = {"CAMPAIGNOPS_AIRFLOW_SCHEDULES": "True", "CAMPAIGNOPS_PROFILE": profile}
    try:
        with running_stack(ws, tmp / "state", env=env) as settings:
            yield settings
    finally:
        if profile == "distributed":   # the Postgres cluster may live outside the state dir (root)
            from campaignops.config import Settings
            from campaignops.infra import distributed

            distributed.remove_cluster(Settings(workspace=ws, state_dir=(tmp / "state").resolve()))


@contextmanager
def running_stack(ws: Path, state: Path, services=None, env: dict[str, str] | None = None,
                  stop_timeout: float | None = None) -> Iterator:
    """`services` (default: all) of the stack for workspace `ws` (holding params.yaml) with its
    state in `state`, on free ports, with no endpoint or credential from the caller's environment;
    yields Settings. Stops what it started (SIGKILL after `stop_timeout` s, default stack.down's:
    a throwaway SeaweedFS takes 10 s to give up on SIGTERM) and restores the environment (also on
    SIGTERM)."""
    env = {"CAMPAIGNOPS_WORKSPACE": str(ws), "CAMPAIGNOPS_STATE": str(state), **(env or {})}
    for name in PORTS:
        env[f"CAMPAIGNOPS_{name.upper()}_PORT"] = str(free_port())
    saved = dict(os.environ)   # steps export endpoints and keys (config.apply_env): restore all of it
    for key in CALLER_ENV:
        os.environ.pop(key, None)
    os.environ.update(env)
    from campaignops.config import load_settings
    from campaignops.infra import stack as stack_mod

    wanted = {} if services is None else {"services": tuple(services)}
    stop = {} if stop_timeout is None else {"timeout": stop_timeout}
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        stack_mod.up(load_settings(), **wanted)
        yield load_settings()
    finally:
        try:
            stack_mod.down(load_settings(), **wanted, **stop)
        finally:
            os.environ.clear()
            os.environ.update(saved)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)
