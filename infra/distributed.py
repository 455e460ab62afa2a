"""The `distributed` stack profile: Airflow on a Postgres metadata database with the CeleryExecutor,
a Redis broker and several Celery workers — the production shape, from Debian's packages, on this
machine. Same DAGs, same code: only the Airflow environment differs (configuration, not a fork).

Postgres: a private cluster (initdb once, scram-sha-256, TCP on 127.0.0.1 only, no unix socket),
database `airflow`, owner `campaignops`, password generated into the server secrets (0600). The
server refuses to run as root: when the stack runs as root the cluster runs as the `postgres` user
Debian's package creates, with its data under that user's home (a root-only state dir is not
reachable for it); otherwise under `<state>/postgres`.
Redis: one server on 127.0.0.1 with `requirepass` (config file 0600), no persistence (the broker
holds only queued task messages; Airflow's state is in Postgres).
Celery: `params.yaml` stack.celery_workers workers (each `airflow celery worker -c
stack.celery_concurrency`, distinct hostnames, --skip-serve-logs: the API server reads the task
logs from the shared local log folder), run by infra/airflow_launcher.py beside the other
components.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from campaignops.config import Settings

PROFILES = ("local", "distributed")
PROFILE_ENV = "CAMPAIGNOPS_PROFILE"
DB_USER = "campaignops"
DB_NAME = "airflow"
PG_OS_USER = "postgres"       # Debian's postgresql package's system user
SERVER_SECRETS = ("CAMPAIGNOPS_POSTGRES_PASSWORD", "CAMPAIGNOPS_REDIS_PASSWORD")


class DistributedError(RuntimeError):
    """A prerequisite of the distributed profile is missing (binaries, the postgres user)."""


# --------------------------------------------------------------------------- profile


def profile_file(settings: Settings) -> Path:
    return settings.state_dir / "run" / "profile"


def profile(settings: Settings) -> str:
    """The stack's profile: CAMPAIGNOPS_PROFILE, else what the last `stack up --profile` recorded, else local."""
    value = os.environ.get(PROFILE_ENV) or settings.env.get(PROFILE_ENV)
    if not value and profile_file(settings).is_file():
        value = profile_file(settings).read_text().strip()
    value = value or "local"
    if value not in PROFILES:
        raise DistributedError(f"unknown stack profile {value!r}: one of {', '.join(PROFILES)}")
    return value


def record_profile(settings: Settings, value: str) -> None:
    if value not in PROFILES:
        raise DistributedError(f"unknown stack profile {value!r}: one of {', '.join(PROFILES)}")
    path = profile_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")


def stack_params(settings: Settings) -> dict:
    return settings.params.get("stack") or {}


# --------------------------------------------------------------------------- Postgres


def pg_bin(name: str) -> str:
    """A Postgres server binary: PATH first, else Debian's /usr/lib/postgresql/<newest>/bin."""
    found = shutil.which(name)
    if found and name not in ("initdb", "postgres"):   # /usr/bin has wrappers for clients only
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                      if p.parent.name.isdigit() else 0)
    for bindir in reversed(versions):
        if (bindir / name).exists():
            return str(bindir / name)
    if found:
        return found
    raise DistributedError(f"Postgres binary {name!r} not found: `make install` installs Debian's postgresql package")


def pg_os_user() -> str | None:
    """The user the Postgres server runs as: None (this user) unless running as root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise DistributedError("running as root, and Postgres refuses root: no `postgres` system user "
                               "(install Debian's postgresql package)") from None
    return PG_OS_USER


def pg_data_dir(settings: Settings) -> Path:
    user = pg_os_user()
    if user is None:
        return settings.state_dir / "postgres" / "data"
    tag = hashlib.sha256(str(settings.state_dir.resolve()).encode()).hexdigest()[:12]
    return Path(pwd.getpwnam(user).pw_dir) / f"campaignops-{tag}" / "data"


def _as_pg_user(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    user = pg_os_user()
    return subprocess.run(cmd, user=user, group=user, extra_groups=[] if user else None, capture_output=True,
                          text=True, **kw)


def ensure_cluster(settings: Settings, password: str) -> Path:
    """initdb once (superuser `campaignops`, scram-sha-256). Returns the data dir."""
    data = pg_data_dir(settings)
    if (data / "PG_VERSION").is_file():
        return data
    user = pg_os_user()
    data.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if user:
        info = pwd.getpwnam(user)
        os.chown(data.parent, info.pw_uid, info.pw_gid)
    pwfile = data.parent / "initdb.pw"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    if user:
        os.chown(pwfile, info.pw_uid, info.pw_gid)
    try:
        proc = _as_pg_user([pg_bin("initdb"), "-D", str(data), "-U", DB_USER, "-A", "scram-sha-256",
                            f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions"], cwd=data.parent)
    finally:
        pwfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise DistributedError(f"initdb {data} failed: {proc.stderr.strip()[-1500:]}")
    return data


def remove_cluster(settings: Settings) -> None:
    """Delete the cluster's data (a throwaway stack's teardown; the server must be stopped)."""
    data = pg_data_dir(settings)
    shutil.rmtree(data.parent if data.parent.name.startswith("campaignops-") else data, ignore_errors=True)


def postgres_command(settings: Settings, data: Path) -> list[str]:
    return [pg_bin("postgres"), "-D", str(data), "-p", str(settings.port("postgres")),
            "-c", f"listen_addresses={settings.host}", "-c", "unix_socket_directories=",
            "-c", "max_connections=200", "-c", "logging_collector=off"]


def ensure_database(settings: Settings, password: str, timeout: float = 60) -> None:
    """Wait for the server, then create database `airflow` when missing."""
    import psycopg2

    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            con = psycopg2.connect(host=settings.host, port=settings.port("postgres"), user=DB_USER,
                                   password=password, dbname="postgres", connect_timeout=3)
            break
        except psycopg2.OperationalError as exc:
            last = exc
            time.sleep(0.5)
    else:
        raise DistributedError(f"Postgres on {settings.host}:{settings.port('postgres')} did not accept "
                               f"connections within {timeout:.0f} s: {str(last).strip()[:300]}")
    try:
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{DB_NAME}" OWNER "{DB_USER}"')
    finally:
        con.close()


def check_postgres(settings: Settings, password: str, timeout: float = 3) -> None:
    import psycopg2

    con = psycopg2.connect(host=settings.host, port=settings.port("postgres"), user=DB_USER, password=password,
                           dbname="postgres", connect_timeout=max(1, int(timeout)))
    con.close()


# --------------------------------------------------------------------------- Redis


def redis_conf(settings: Settings, password: str) -> Path:
    """The server's config file (0600: it holds requirepass)."""
    rdir = settings.state_dir / "redis"
    rdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = rdir / "redis.conf"
    text = "\n".join([f"port {settings.port('redis')}", f"bind {settings.host}", "protected-mode yes",
                      f"requirepass {password}", 'save ""', "appendonly no", f"dir {rdir}",
                      "daemonize no", 'logfile ""', ""])
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return conf


def redis_command(conf: Path) -> list[str]:
    binary = shutil.which("redis-server")
    if not binary:
        raise DistributedError("redis-server not found: `make install` installs Debian's redis-server package")
    return [binary, str(conf)]


def check_redis(settings: Settings, password: str, timeout: float = 3) -> None:
    import redis

    redis.Redis(host=settings.host, port=settings.port("redis"), password=password,
                socket_timeout=timeout, socket_connect_timeout=timeout).ping()


# --------------------------------------------------------------------------- Airflow


def airflow_overrides(settings: Settings, secrets: dict[str, str]) -> dict[str, str]:
    """What the distributed profile changes in Airflow's environment."""
    pg = f"{DB_USER}:{secrets['CAMPAIGNOPS_POSTGRES_PASSWORD']}@{settings.host}:{settings.port('postgres')}/{DB_NAME}"
    p = stack_params(settings)
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{pg}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://:{secrets['CAMPAIGNOPS_REDIS_PASSWORD']}@{settings.host}:"
                                       f"{settings.port('redis')}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{pg}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(p.get("celery_concurrency", 2)),
        "CAMPAIGNOPS_AIRFLOW_CELERY_WORKERS": str(p.get("celery_workers", 2)),
    }


def worker_commands(airflow: str, workers: int, concurrency: int | None = None) -> dict[str, list[str]]:
    """The launcher's Celery worker components: `celery-worker-<i>` → its command."""
    out = {}
    for i in range(1, workers + 1):
        cmd = [airflow, "celery", "worker", "--celery-hostname", f"worker{i}@%h", "--skip-serve-logs"]
        if concurrency:
            cmd += ["--concurrency", str(concurrency)]
        out[f"celery-worker-{i}"] = cmd
    return out
