"""The stack's private state directory: where pidfiles and logs go, the generated client
credentials (``stack.env``) and server-only secrets (``server-secrets.env``), and the people's
accounts (``people.env``). Everything secret is written atomically and 0600, directories 0700;
values are generated once and reused afterwards."""
from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path
from typing import Callable

from campaignops.config import Settings, _read_env_file

ADMIN_USER = "admin"      # the pipeline's service account: the only one that may register versions / move aliases
# People's accounts (roles enforced by the servers): an engineer may trigger DAGs and read
# everything; an auditor may read everything and change nothing. Airflow: SimpleAuthManager roles
# `user` / `viewer`; MLflow: basic-auth users with the server's default READ permission.
PEOPLE = {"engineer": "user", "auditor": "viewer"}

# Client credentials kept in settings.env_file; generated once, reused afterwards.
CLIENT_SECRETS: dict[str, Callable[[], str]] = {
    "AWS_ACCESS_KEY_ID": lambda: "CO" + secrets.token_hex(9).upper(),
    "AWS_SECRET_ACCESS_KEY": lambda: secrets.token_urlsafe(30),
    "CAMPAIGNOPS_AIRFLOW_USER": lambda: ADMIN_USER,
    "CAMPAIGNOPS_AIRFLOW_PASSWORD": lambda: secrets.token_urlsafe(18),
    "MLFLOW_TRACKING_USERNAME": lambda: ADMIN_USER,
    "MLFLOW_TRACKING_PASSWORD": lambda: secrets.token_urlsafe(18),
}
# Server-only secrets (not handed to clients through Settings.env / process_env()).
SERVER_SECRETS: dict[str, Callable[[], str]] = {
    "MLFLOW_FLASK_SERVER_SECRET_KEY": lambda: secrets.token_urlsafe(32),
    "AIRFLOW__API_AUTH__JWT_SECRET": lambda: secrets.token_urlsafe(64),
    "AIRFLOW__API__SECRET_KEY": lambda: secrets.token_urlsafe(32),
    "AIRFLOW__CORE__FERNET_KEY": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    "SEAWEED_JWT_SIGNING_KEY": lambda: secrets.token_urlsafe(32),
    "SEAWEED_JWT_SIGNING_READ_KEY": lambda: secrets.token_urlsafe(32),
    "SEAWEED_JWT_FILER_KEY": lambda: secrets.token_urlsafe(32),
    "SEAWEED_JWT_FILER_READ_KEY": lambda: secrets.token_urlsafe(32),
    "CAMPAIGNOPS_POSTGRES_PASSWORD": lambda: secrets.token_urlsafe(24),   # profile distributed
    "CAMPAIGNOPS_REDIS_PASSWORD": lambda: secrets.token_urlsafe(24),
}


def run_dir(settings: Settings) -> Path:
    return settings.state_dir / "run"


def logs_dir(settings: Settings) -> Path:
    return settings.state_dir / "logs"


def pidfile(settings: Settings, service: str) -> Path:
    return run_dir(settings) / f"{service}.pid"


def logfile(settings: Settings, service: str) -> Path:
    return logs_dir(settings) / f"{service}.log"


def server_secrets_file(settings: Settings) -> Path:
    return settings.state_dir / "server-secrets.env"


def people_file(settings: Settings) -> Path:
    """The people's accounts (CAMPAIGNOPS_<NAME>_PASSWORD per PEOPLE entry), mode 0600; not handed
    to the pipeline's processes."""
    return settings.state_dir / "people.env"


def people(settings: Settings) -> dict[str, str]:
    """{username: password} of the people's accounts, generated once."""
    values = ensure_env_file(people_file(settings),
                              {f"CAMPAIGNOPS_{name.upper()}_PASSWORD": lambda: secrets.token_urlsafe(18)
                               for name in PEOPLE},
                              "campaignops people's accounts (engineer: trigger + read, auditor: read) - keep private")
    return {name: values[f"CAMPAIGNOPS_{name.upper()}_PASSWORD"] for name in PEOPLE}


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 (never readable by others, even briefly)."""
    if not path.parent.exists():
        private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: only the stack's user may enter it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def private_db(path: Path) -> None:
    """Make a server's SQLite database 0600 before the server opens it: created empty (SQLite takes
    an empty file for a new database, and gives its journal files the database's mode), or
    tightened if an older stack created it 0644."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for companion in (path, *(path.with_name(path.name + s) for s in ("-journal", "-wal", "-shm"))):
        if companion.exists():
            os.chmod(companion, 0o600)


def ensure_env_file(path: Path, wanted: dict[str, Callable[[], str]], header: str) -> dict[str, str]:
    existing = _read_env_file(path)
    missing = {k: gen() for k, gen in wanted.items() if not existing.get(k)}
    if missing or not path.exists():
        merged = {**existing, **missing}
        body = "".join(f"{k}={v}\n" for k, v in merged.items())
        write_private(path, f"# {header}\n{body}")
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return _read_env_file(path)


def ensure_credentials(settings: Settings) -> dict[str, str]:
    """Create (first time) or reuse the client credentials in ``settings.env_file`` (mode 0600),
    then reload ``settings.env`` in place so this process sees them. Returns the file's values."""
    values = ensure_env_file(
        settings.env_file, CLIENT_SECRETS,
        "campaignops local stack credentials - generated, keep private (git-ignored state dir)",
    )
    settings.env.clear()
    settings.env.update(values)
    return values


def prepare_state(settings: Settings) -> None:
    """The state directory, private (0700), with the client credentials and server secrets."""
    private_dir(settings.state_dir)
    ensure_credentials(settings)
    server_secrets(settings)


def server_secrets(settings: Settings) -> dict[str, str]:
    return ensure_env_file(server_secrets_file(settings), SERVER_SECRETS,
                            "campaignops stack server-side secrets - do not share")
