"""The stack's state directory is private: the directory and each server's own directory 0700, the
servers' SQLite databases (MLflow tracking and auth, Airflow's metadata) and every secret 0600 -
also when an older stack left them 0644. No servers: the files are prepared before they start
(tests/infra/test_stack_e2e.py checks the modes after the real servers ran)."""
from __future__ import annotations

import os
import stat

import pytest

from campaignops.infra import stack


@pytest.fixture
def settings(workspace):
    workspace.env.clear()
    return workspace


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_dir_databases_and_secrets_are_private(settings):
    stack.prepare_state(settings)
    for spec in (stack._s3_spec, stack._mlflow_spec, stack._airflow_spec):
        spec(settings)
    dirs = [settings.state_dir, settings.state_dir / "s3", settings.state_dir / "seaweed",
            settings.state_dir / "mlflow", stack.airflow_home(settings)]
    assert {str(d): oct(_mode(d)) for d in dirs} == {str(d): "0o700" for d in dirs}
    files = [settings.env_file, stack.server_secrets_file(settings), stack.people_file(settings),
             settings.state_dir / "s3" / "s3.json", settings.state_dir / "s3" / "security.toml",
             settings.state_dir / "mlflow" / "mlflow.db", settings.state_dir / "mlflow" / "basic_auth.db",
             settings.state_dir / "mlflow" / "basic_auth.ini", stack.airflow_home(settings) / "airflow.db",
             stack.airflow_home(settings) / "simple_auth_manager_passwords.json"]
    assert {f.name: oct(_mode(f)) for f in files} == {f.name: "0o600" for f in files}


def test_databases_an_older_stack_left_readable_are_tightened(settings):
    home = settings.state_dir / "mlflow"
    home.mkdir(parents=True)
    os.chmod(settings.state_dir, 0o755)
    db, journal = home / "mlflow.db", home / "mlflow.db-journal"
    for path in (db, journal):
        path.write_bytes(b"SQLite format 3\x00")
        os.chmod(path, 0o644)
    stack.prepare_state(settings)
    stack._mlflow_spec(settings)
    assert _mode(settings.state_dir) == 0o700 and _mode(home) == 0o700
    assert _mode(db) == 0o600 and _mode(journal) == 0o600
    assert db.read_bytes() == b"SQLite format 3\x00"         # the data is kept


def test_sqlite_keeps_the_mode_of_a_prepared_database(settings):
    """What the servers do with the file we prepare: SQLite opens the empty 0600 file as a new
    database and creates its journal with the same mode."""
    import sqlite3

    stack.prepare_state(settings)
    stack._airflow_spec(settings)
    db = stack.airflow_home(settings) / "airflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table t (x)")
        conn.execute("insert into t values (1)")
    assert _mode(db) == 0o600 and db.stat().st_size > 0
    assert not [p for p in db.parent.iterdir() if p.name.startswith("airflow.db") and _mode(p) != 0o600]
