"""The embedded local stack: SeaweedFS (S3 API), MLflow (basic auth) and Airflow 3 (standalone).

Plain functions for the CLI (`campaignops stack up|down|status`):

- ``up(settings, services=SERVICES)`` starts what is not already running and healthy, each service
  in its own process group, and waits until each is healthy.
- ``down(settings)`` stops the services recorded in the pidfiles with everything they started
  (their process groups, sessions and descendants: infra/processes.py), and nothing else.
- ``status(settings)`` reports pid / running / healthy per service.

State lives under ``settings.state_dir`` (its paths, credentials and secrets: infra/stack_secrets.py)::

    (the directory and each server's own directory 0700; secrets, databases and logs 0600)
    stack.env            client credentials (0600), read by Settings: AWS_*, CAMPAIGNOPS_AIRFLOW_*,
                         MLFLOW_TRACKING_USERNAME/PASSWORD
    server-secrets.env   server-only secrets (0600): Flask / JWT / API secret keys, Fernet key
    run/<svc>.pid        JSON: pid, pgid, start time (from /proc), command line
    logs/<svc>.log       stdout+stderr of the service
    seaweed/             SeaweedFS data; s3/ holds s3.json and security.toml (0600)
    mlflow/              tracking db, auth db, auth ini (0600)
    airflow/             AIRFLOW_HOME (sqlite db, logs, passwords file); Airflow runs as
                         infra/airflow_launcher.py (db migrate + api-server, scheduler,
                         dag-processor, triggerer in one process group)
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from campaignops.config import Settings, _read_env_file
from campaignops.infra import distributed, processes, seaweed_tls
from campaignops.infra.stack_secrets import (  # noqa: F401  (people_file, ensure_credentials, ...: the stack's API too)
    ADMIN_USER, CLIENT_SECRETS, PEOPLE, ensure_credentials, logfile, logs_dir, people, people_file, pidfile,
    prepare_state, private_db, private_dir, run_dir, server_secrets, server_secrets_file, write_private,
)

log = logging.getLogger("campaignops.stack")

SERVICES: tuple[str, ...] = ("s3", "mlflow", "airflow")          # profile local (the default)
# Every service in start order; profile distributed adds Airflow's Postgres and Redis (infra/distributed.py).
ALL_SERVICES: tuple[str, ...] = ("s3", "mlflow", "postgres", "redis", "airflow")
PROFILE_SERVICES = {"local": SERVICES, "distributed": ALL_SERVICES}
# Services that write nothing but their own state (under state_dir): started with umask 077, so all
# they create is private. Airflow is not one: its tasks write the workspace (reports, DVC outputs).
PRIVATE_WRITERS: tuple[str, ...] = ("s3", "mlflow", "postgres", "redis")
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


class StackError(RuntimeError):
    """A service failed to start, stop, or become healthy."""


# --------------------------------------------------------------------------- process bookkeeping


def read_pidfile(settings: Settings, service: str) -> dict | None:
    path = pidfile(settings, service)
    try:
        info = json.loads(path.read_text())
        int(info["pid"]), int(info["pgid"]), int(info["start_time"])
        return info
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _is_ours(info: dict) -> bool:
    """The pidfile's leader process still runs and is the very process we started."""
    return processes.start_time(int(info["pid"])) == int(info["start_time"])


def _leader_gone_tree_left(info: dict) -> bool:
    """Leader exited but processes of its group or session remain. A pgid / sid cannot be reused
    while a process carries it, so those are ours (e.g. orphaned workers or tasks)."""
    pid = int(info["pid"])
    return processes.start_time(pid) is None and bool(processes.tree(int(info["pgid"])))


def running_pid(settings: Settings, service: str) -> int | None:
    info = read_pidfile(settings, service)
    return int(info["pid"]) if info and _is_ours(info) else None


def _stop(infos: dict[str, dict], timeout: float) -> list[str]:
    """Stop each of our services with everything it started (processes.stop), SIGKILL after `timeout`."""
    targets = {service: int(info["pgid"]) for service, info in infos.items()
               if _is_ours(info) or _leader_gone_tree_left(info)}
    processes.stop(targets, timeout)
    return list(targets)


# --------------------------------------------------------------------------- ports


def _port_busy(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GRPC_PORTS_FILE = "grpc_ports.json"   # in state/s3/: the gRPC ports the running weed was given


def _grpc_port(settings: Settings, name: str) -> int:
    """gRPC port of a SeaweedFS component: CAMPAIGNOPS_<NAME>_GRPC_PORT, else weed's own default
    (http port + 10000) when valid and free, else any free port (internal to the weed process)."""
    env = settings._get(f"CAMPAIGNOPS_{name.upper()}_GRPC_PORT")
    if env:
        return int(env)
    candidate = settings.port(name) + 10000
    if candidate <= 65535 and not _port_busy(candidate):
        return candidate
    return _free_port()


def _http_ports(settings: Settings, service: str) -> dict[str, int]:
    if service == "s3":
        return {n: settings.port(n) for n in ("s3", "weed_master", "weed_volume", "weed_filer")}
    return {service: settings.port(service)}


# --------------------------------------------------------------------------- service definitions


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _base_env(settings: Settings) -> dict[str, str]:
    """settings.process_env() with the stack's own credentials winning (the servers are configured
    with those), and the venv's bin directory on PATH."""
    env = settings.process_env()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "CAMPAIGNOPS_AIRFLOW_USER", "CAMPAIGNOPS_AIRFLOW_PASSWORD"):
        if settings.env.get(key):
            env[key] = settings.env[key]
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir] + [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _s3_spec(settings: Settings) -> tuple[list[str], dict[str, str], Path]:
    creds, server = settings.env, server_secrets(settings)
    conf_dir = private_dir(settings.state_dir / "s3")
    data_dir = private_dir(settings.state_dir / "seaweed")
    s3_config = {
        "identities": [{
            "name": "campaignops",
            "credentials": [{"accessKey": creds["AWS_ACCESS_KEY_ID"], "secretKey": creds["AWS_SECRET_ACCESS_KEY"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    }
    write_private(conf_dir / "s3.json", json.dumps(s3_config, indent=2) + "\n")
    # weed reads ./security.toml first: JWT-sign volume and filer access so the filer/volume HTTP
    # ports are not an unauthenticated side door around the S3 credentials.
    # Every gRPC port (master, volume, filer, S3 gateway) mutual TLS with the stack's own CA:
    # without it any local process could call e.g. CollectionDelete. infra/seaweed_tls.py.
    tls = seaweed_tls.ensure(private_dir(conf_dir / "tls"), write_private)
    write_private(conf_dir / "security.toml", (
        f'[jwt.signing]\nkey = "{server["SEAWEED_JWT_SIGNING_KEY"]}"\n'
        f'[jwt.signing.read]\nkey = "{server["SEAWEED_JWT_SIGNING_READ_KEY"]}"\n'
        f'[jwt.filer_signing]\nkey = "{server["SEAWEED_JWT_FILER_KEY"]}"\n'
        f'[jwt.filer_signing.read]\nkey = "{server["SEAWEED_JWT_FILER_READ_KEY"]}"\n'
        + seaweed_tls.security_toml(tls)
    ))
    ip = settings.host
    grpc_ports = {name: _grpc_port(settings, name) for name in ("weed_master", "weed_volume", "weed_filer", "s3")}
    write_private(conf_dir / GRPC_PORTS_FILE, json.dumps(grpc_ports, indent=2) + "\n")
    cmd = [
        _bin("weed"), "server",
        f"-dir={data_dir}", f"-ip={ip}", f"-ip.bind={ip}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=1024", "-volume.max=0",
        "-volume.preStopSeconds=1",
        # The master's HTTP API has no authentication at all (GET /col/delete wipes a bucket, also
        # from a web page in a local browser); the filer's duplicates the S3 API. The components
        # and the S3 gateway talk over gRPC (and JWT-signed volume HTTP), so both are switched off:
        # the master's HTTP port keeps only its read-only status page. docs/security.md.
        "-disableHttp",
        f"-master.port={settings.port('weed_master')}", f"-master.port.grpc={grpc_ports['weed_master']}",
        f"-volume.port={settings.port('weed_volume')}", f"-volume.port.grpc={grpc_ports['weed_volume']}",
        f"-filer.port={settings.port('weed_filer')}", f"-filer.port.grpc={grpc_ports['weed_filer']}",
        "-s3", f"-s3.port={settings.port('s3')}", f"-s3.port.grpc={grpc_ports['s3']}",
        f"-s3.config={conf_dir / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]
    # No client credentials in weed's environment: given AWS_ACCESS_KEY_ID it adds a second admin
    # identity and logs its access key id; s3.json is the one source of identities.
    env = {k: v for k, v in _base_env(settings).items() if k not in CLIENT_SECRETS and not k.startswith("AWS_")}
    return cmd, env, conf_dir


def _mlflow_spec(settings: Settings) -> tuple[list[str], dict[str, str], Path]:
    creds, server = settings.env, server_secrets(settings)
    home = private_dir(settings.state_dir / "mlflow")
    for db in ("mlflow.db", "basic_auth.db"):
        private_db(home / db)
    ini = home / "basic_auth.ini"
    write_private(ini, (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{home / 'basic_auth.db'}\n"
        f"admin_username = {creds['MLFLOW_TRACKING_USERNAME']}\n"
        f"admin_password = {creds['MLFLOW_TRACKING_PASSWORD']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
    ))
    env = _base_env(settings)
    env.update({
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": server["MLFLOW_FLASK_SERVER_SECRET_KEY"],
        # The GenAI job runner starts ~7 huey consumers (~250 MB each); the platform needs none.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    })
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        env.pop(key, None)  # the ini is the one source
    cmd = [
        _bin("mlflow"), "server",
        "--host", settings.host, "--port", str(settings.port("mlflow")),
        "--workers", "2",
        "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", f"s3://{settings.bucket}/mlflow",
    ]
    if mlflow_auth_available():
        cmd += ["--app-name", "basic-auth"]
    else:
        log.warning("Flask-WTF is not installed (mlflow[auth]); MLflow starts WITHOUT authentication")
    return cmd, env, home


def mlflow_auth_available() -> bool:
    """MLflow's basic-auth app needs Flask-WTF (the `mlflow[auth]` extra)."""
    import importlib.util

    return importlib.util.find_spec("flask_wtf") is not None


def airflow_home(settings: Settings) -> Path:
    return settings.state_dir / "airflow"


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for Airflow processes (also usable to run `airflow ...` CLI commands against the
    stack's metadata database)."""
    home = airflow_home(settings)
    server = server_secrets(settings)
    port = settings.port("airflow")
    base = f"http://{settings.host}:{port}"
    env = _base_env(settings)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.workspace / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": settings._get("CAMPAIGNOPS_AIRFLOW_PARALLELISM", "4"),
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
            [f"{settings.env.get('CAMPAIGNOPS_AIRFLOW_USER', ADMIN_USER)}:admin",
             *(f"{name}:{role}" for name, role in PEOPLE.items())]),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "simple_auth_manager_passwords.json"),
        # Paused until someone unpauses them (the demo does, after the data has landed), so the
        # daily schedule never fires into an empty bucket on first start.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__CORE__FERNET_KEY": server["AIRFLOW__CORE__FERNET_KEY"],
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": settings.host,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": server["AIRFLOW__API__SECRET_KEY"],
        "AIRFLOW__API_AUTH__JWT_SECRET": server["AIRFLOW__API_AUTH__JWT_SECRET"],
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # Off only where every run is triggered by hand and measured (the sandbox: e2e tests, DAG
        # benchmark); there, unpausing would also start the daily run for the latest interval.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": settings._get("CAMPAIGNOPS_AIRFLOW_SCHEDULES", "True"),
        # OpenLineage events of every task (inputs/outputs: the tasks' inlets/outlets, pipelines/assets.py):
        # appended to a file by default; CAMPAIGNOPS_OPENLINEAGE_TRANSPORT (the provider's JSON transport
        # config, e.g. {"type": "http", "url": "http://marquez:5000"}) sends them elsewhere.
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "campaignops",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": settings._get("CAMPAIGNOPS_OPENLINEAGE_TRANSPORT", json.dumps(
            {"type": "file", "log_file_path": str(openlineage_file(settings)), "append": True})),
    })
    openlineage_file(settings).parent.mkdir(parents=True, exist_ok=True)
    if distributed.profile(settings) == "distributed":   # Postgres metadata DB, CeleryExecutor, Redis broker
        env.update(distributed.airflow_overrides(settings, server))
    return env


def openlineage_file(settings: Settings) -> Path:
    """Where the default transport appends the OpenLineage events (one JSON event per line)."""
    return settings.state_dir / "openlineage" / "events.jsonl"


def _airflow_spec(settings: Settings) -> tuple[list[str], dict[str, str], Path]:
    home = private_dir(airflow_home(settings))
    private_db(home / "airflow.db")
    user = settings.env.get("CAMPAIGNOPS_AIRFLOW_USER", ADMIN_USER)
    write_private(home / "simple_auth_manager_passwords.json",
                   json.dumps({user: settings.env["CAMPAIGNOPS_AIRFLOW_PASSWORD"], **people(settings)}) + "\n")
    launcher = Path(__file__).with_name("airflow_launcher.py")
    return [sys.executable, str(launcher)], airflow_env(settings), home


# --------------------------------------------------------------------------- health checks


def _url(settings: Settings, service: str) -> str:
    return {"s3": settings.s3_endpoint, "mlflow": settings.mlflow_uri, "airflow": settings.airflow_url}[service]


def _local_url(settings: Settings, service: str) -> str:
    """The URL of the service this module started (not an override from the environment)."""
    scheme = {"postgres": "postgresql", "redis": "redis"}.get(service, "http")
    return f"{scheme}://{settings.host}:{settings.port(service)}"


def _check_s3(settings: Settings, timeout: float = 3) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=_local_url(settings, "s3"), region_name="us-east-1",
        aws_access_key_id=settings.env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=settings.env.get("AWS_SECRET_ACCESS_KEY"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      connect_timeout=timeout, read_timeout=timeout),
    )
    client.list_buckets()


def _check_mlflow(settings: Settings, timeout: float = 3) -> None:
    import requests

    base = _local_url(settings, "mlflow")
    r = requests.get(f"{base}/health", timeout=timeout)
    if r.status_code != 200 or r.text.strip() != "OK":
        raise StackError(f"/health answered {r.status_code}: {r.text[:200]}")
    auth = (settings.env.get("MLFLOW_TRACKING_USERNAME", ""), settings.env.get("MLFLOW_TRACKING_PASSWORD", ""))
    r = requests.get(f"{base}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                     auth=auth, timeout=timeout)
    if r.status_code != 200:
        raise StackError(f"authenticated experiments/search answered {r.status_code}: {r.text[:200]}")


def _check_airflow(settings: Settings, timeout: float = 3) -> None:
    import requests

    base = _local_url(settings, "airflow")
    r = requests.get(f"{base}/api/v2/monitor/health", timeout=timeout)
    r.raise_for_status()
    health = r.json()
    for component in ("metadatabase", "scheduler", "dag_processor"):
        status_ = (health.get(component) or {}).get("status")
        if component in health and status_ != "healthy":
            raise StackError(f"{component} is {status_!r}")
    if (health.get("scheduler") or {}).get("status") != "healthy":
        raise StackError("scheduler not healthy yet")
    r = requests.post(f"{base}/auth/token", timeout=timeout, json={
        "username": settings.env.get("CAMPAIGNOPS_AIRFLOW_USER", ADMIN_USER),
        "password": settings.env.get("CAMPAIGNOPS_AIRFLOW_PASSWORD", ""),
    })
    if r.status_code not in (200, 201):
        raise StackError(f"POST /auth/token answered {r.status_code}: {r.text[:200]}")
    token = r.json()["access_token"]
    r = requests.get(f"{base}/api/v2/dags", params={"limit": 1}, timeout=timeout,
                     headers={"Authorization": f"Bearer {token}"})
    if r.status_code != 200:
        raise StackError(f"GET /api/v2/dags with token answered {r.status_code}: {r.text[:200]}")


def _postgres_spec(settings: Settings) -> tuple[list[str], dict[str, str], Path]:
    data = distributed.ensure_cluster(settings, server_secrets(settings)["CAMPAIGNOPS_POSTGRES_PASSWORD"])
    return distributed.postgres_command(settings, data), {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"}, data.parent


def _redis_spec(settings: Settings) -> tuple[list[str], dict[str, str], Path]:
    conf = distributed.redis_conf(settings, server_secrets(settings)["CAMPAIGNOPS_REDIS_PASSWORD"])
    return distributed.redis_command(conf), {"PATH": os.environ.get("PATH", "")}, conf.parent


def _check_postgres(settings: Settings, timeout: float = 3) -> None:
    distributed.check_postgres(settings, server_secrets(settings)["CAMPAIGNOPS_POSTGRES_PASSWORD"], timeout)


def _check_redis(settings: Settings, timeout: float = 3) -> None:
    distributed.check_redis(settings, server_secrets(settings)["CAMPAIGNOPS_REDIS_PASSWORD"], timeout)


_SPECS = {"s3": _s3_spec, "mlflow": _mlflow_spec, "postgres": _postgres_spec, "redis": _redis_spec,
          "airflow": _airflow_spec}
_CHECKS = {"s3": _check_s3, "mlflow": _check_mlflow, "postgres": _check_postgres, "redis": _check_redis,
           "airflow": _check_airflow}
_RUN_AS = {"postgres": distributed.pg_os_user}   # the server refuses root: run as Debian's `postgres`


def services_for(settings: Settings) -> tuple[str, ...]:
    """The services of the stack's profile (infra/distributed.py: CAMPAIGNOPS_PROFILE or the recorded one)."""
    return PROFILE_SERVICES[distributed.profile(settings)]


def check(settings: Settings, service: str, timeout: float = 3) -> tuple[bool, str]:
    """(healthy?, reason) for one service, with short timeouts."""
    try:
        _CHECKS[service](settings, timeout)
        return True, "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        return False, f"{type(exc).__name__}: {exc}"[:300]


# --------------------------------------------------------------------------- up / down / status


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _fail(settings: Settings, service: str, message: str) -> StackError:
    path = logfile(settings, service)
    return StackError(f"{service}: {message}\n--- last lines of {path} ---\n{log_tail(path)}")


def _start(settings: Settings, service: str) -> subprocess.Popen:
    busy = [f"{n}={p}" for n, p in _http_ports(settings, service).items() if _port_busy(p, settings.host)]
    if busy:
        raise StackError(
            f"{service}: port(s) already in use by another process: {', '.join(busy)}; "
            f"free them or set CAMPAIGNOPS_<NAME>_PORT (e.g. CAMPAIGNOPS_{busy[0].split('=')[0].upper()}_PORT)")
    cmd, env, cwd = _SPECS[service](settings)
    user = _RUN_AS[service]() if service in _RUN_AS else None
    private_dir(logs_dir(settings))
    private_dir(run_dir(settings))
    log_path = logfile(settings, service)
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        os.chmod(log_path, 0o600)
        out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {service}: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                umask=0o077 if service in PRIVATE_WRITERS else -1,
                                user=user, group=user, extra_groups=[] if user else None)
    start_time = None
    for _ in range(50):
        start_time = processes.start_time(proc.pid)
        if start_time is not None:
            break
        time.sleep(0.01)
    info = {"service": service, "pid": proc.pid, "pgid": proc.pid, "start_time": start_time or 0,
            "cmdline": cmd, "started_at": time.time(), "url": _local_url(settings, service)}
    write_private(pidfile(settings, service), json.dumps(info, indent=2) + "\n")
    return proc


def _wait_healthy(settings: Settings, service: str, timeout: float, proc: subprocess.Popen | None,
                  info: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    reason = "not checked"
    while True:
        if proc is not None and proc.poll() is not None:
            raise _fail(settings, service, f"process exited with code {proc.returncode} before becoming healthy")
        if proc is None and info is not None and not _is_ours(info):
            raise _fail(settings, service, "process exited before becoming healthy")
        ok, reason = check(settings, service)
        if ok:
            return
        if time.monotonic() > deadline:
            raise _fail(settings, service, f"not healthy after {timeout:.0f}s (last check: {reason})")
        time.sleep(1)


def up(settings: Settings, services: Iterable[str] | None = None,
       progress: Callable[[str], None] | None = None, profile: str | None = None) -> None:
    """Start the requested services (default: the profile's) in dependency order unless already
    running and healthy; wait until each is healthy. `profile` (local | distributed) is recorded
    for later `down`/`status`. On failure the service just started is stopped again and StackError
    (quoting the tail of its log) is raised."""
    say = progress or log.info
    prepare_state(settings)
    if profile is not None and profile != distributed.profile(settings):
        running = [s for s in ALL_SERVICES if running_pid(settings, s)]
        if running:
            raise StackError(f"the stack runs with profile {distributed.profile(settings)!r} ({', '.join(running)}): "
                             f"`campaignops stack down` first, then `stack up --profile {profile}`")
    if profile is not None:
        distributed.record_profile(settings, profile)
    wanted = set(services_for(settings) if services is None else services)
    unknown = wanted - set(ALL_SERVICES)
    if unknown:
        raise ValueError(f"unknown service(s): {sorted(unknown)}; choose from {ALL_SERVICES}")
    timeout = float(settings.params["stack"].get("start_timeout_s", 180))
    for service in ALL_SERVICES:
        if service not in wanted:
            continue
        t0 = time.monotonic()
        info = read_pidfile(settings, service)
        if info and _is_ours(info):
            ok, _ = check(settings, service)
            if not ok:  # maybe still starting (another `up`): give it the usual time
                _wait_healthy(settings, service, timeout, None, info)
            say(f"{service}: already running (pid {info['pid']}) at {_local_url(settings, service)}")
        else:
            if info:  # stale pidfile; clean up leftovers of our old group, if any
                _stop({service: info}, timeout=5)
                pidfile(settings, service).unlink(missing_ok=True)
            proc = _start(settings, service)
            try:
                _wait_healthy(settings, service, timeout, proc)
            except BaseException:
                stale = read_pidfile(settings, service)
                if stale:
                    _stop({service: stale}, timeout=5)
                pidfile(settings, service).unlink(missing_ok=True)
                raise
            say(f"{service}: healthy at {_local_url(settings, service)} (pid {proc.pid}, "
                f"{time.monotonic() - t0:.1f}s)")
        if service == "s3":
            _ensure_bucket(settings)
        if service == "postgres":
            distributed.ensure_database(settings, server_secrets(settings)["CAMPAIGNOPS_POSTGRES_PASSWORD"])
        if service == "mlflow" and mlflow_auth_available():
            _ensure_mlflow_people(settings)


def _ensure_mlflow_people(settings: Settings) -> None:
    """The people's MLflow accounts (basic-auth users; the server's default permission READ lets
    them read everything and change nothing), created by the service account, passwords kept in
    step with people_file()."""
    import requests

    base, auth = _local_url(settings, "mlflow"), (settings.env["MLFLOW_TRACKING_USERNAME"],
                                                  settings.env["MLFLOW_TRACKING_PASSWORD"])
    for name, password in people(settings).items():
        r = requests.post(f"{base}/api/2.0/mlflow/users/create", auth=auth, timeout=10,
                          json={"username": name, "password": password})
        if r.status_code == 200:
            continue
        if "RESOURCE_ALREADY_EXISTS" not in r.text and "already exists" not in r.text:
            raise StackError(f"MLflow: creating user {name!r} answered {r.status_code}: {r.text[:200]}")
        r = requests.patch(f"{base}/api/2.0/mlflow/users/update-password", auth=auth, timeout=10,
                           json={"username": name, "password": password})
        if r.status_code != 200:
            raise StackError(f"MLflow: updating user {name!r} answered {r.status_code}: {r.text[:200]}")


def _ensure_bucket(settings: Settings) -> None:
    import boto3
    from botocore.config import Config

    from campaignops.pipelines.storage import ObjectStore

    client = boto3.client(
        "s3", endpoint_url=_local_url(settings, "s3"), region_name="us-east-1",
        aws_access_key_id=settings.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=settings.env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
    )
    ObjectStore(settings, client=client).ensure_bucket()
    # Versioning: an object deleted or overwritten through the S3 API stays recoverable as an older
    # version (list_object_versions / get_object VersionId=...); see docs/security.md.
    if client.get_bucket_versioning(Bucket=settings.bucket).get("Status") != "Enabled":
        client.put_bucket_versioning(Bucket=settings.bucket, VersioningConfiguration={"Status": "Enabled"})


def down(settings: Settings, services: Iterable[str] | None = None, timeout: float = 10.0) -> list[str]:
    """Stop the process groups recorded in the pidfiles (SIGTERM, then SIGKILL after `timeout`).
    A pidfile whose pid now belongs to another process is discarded without killing anything.
    Returns the services that were stopped."""
    wanted = set(ALL_SERVICES if services is None else services)   # whatever runs, whichever profile
    infos: dict[str, dict] = {}
    for service in reversed(ALL_SERVICES):
        info = read_pidfile(settings, service) if service in wanted else None
        if info is not None:
            infos[service] = info
    stopped = _stop(infos, timeout)
    for service in wanted & set(ALL_SERVICES):
        pidfile(settings, service).unlink(missing_ok=True)
    return [s for s in reversed(ALL_SERVICES) if s in stopped]


def status(settings: Settings, services: Iterable[str] | None = None) -> list[dict]:
    """One dict per service (default: the profile's): service, url, pid, running, healthy, detail, log."""
    out = []
    if settings.env_file.exists() and not settings.env:
        settings.env.update(_read_env_file(settings.env_file))
    for service in (services_for(settings) if services is None else services):
        info = read_pidfile(settings, service)
        running = bool(info and _is_ours(info))
        healthy, detail = check(settings, service, timeout=5) if running else (False, "not running")
        out.append({
            "service": service, "url": _local_url(settings, service),
            "pid": int(info["pid"]) if running else None, "running": running, "healthy": healthy,
            "detail": detail, "log": str(logfile(settings, service)),
        })
    return out
