"""DAG files parse the way Airflow's best practices ask: no database access at parse time, and the
parse time per file measured (printed; `benchmarks/bench_dag_parse.py` compares it with importing
Airflow's SDK alone — timings are reported, not enforced)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))

# Runs in a fresh interpreter: counts every DBAPI connection SQLAlchemy opens and every engine created
# while the DAG file is imported (airflow.sdk itself is imported first, outside the measurement).
PROBE = r"""
import importlib.util, json, sys, time
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy import create_engine as _ce
import sqlalchemy
calls = {"connect": 0, "engines": 0}
@event.listens_for(Engine, "connect")
def _on_connect(*a, **k):
    calls["connect"] += 1
t0 = time.perf_counter()
import airflow.sdk  # noqa: F401  (the baseline every DAG file pays)
sdk_s = time.perf_counter() - t0
path = sys.argv[1]
from airflow.sdk.definitions._internal.contextmanager import DagContext
spec = importlib.util.spec_from_file_location("dag_under_test", path)
module = importlib.util.module_from_spec(spec)
sys.modules["dag_under_test"] = module
DagContext.current_autoregister_module_name = "dag_under_test"   # what the DAG processor sets
t1 = time.perf_counter()
spec.loader.exec_module(module)
parse_s = time.perf_counter() - t1
dags = sorted(dag.dag_id for dag, _ in DagContext.autoregistered_dags)
print(json.dumps({"sdk_s": sdk_s, "parse_s": parse_s, "db_connects": calls["connect"], "dags": dags}))
"""


def parse_stats(path: Path, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=[p.stem for p in DAG_FILES])
def test_dag_file_parses_without_touching_the_database(dag_file, tmp_path):
    import os

    # A metadata DB that cannot exist: any parse-time query would fail or be counted.
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/no-such-dir/airflow.db"}
    stats = parse_stats(dag_file, env)
    print(f"\n{dag_file.name}: parse {stats['parse_s'] * 1000:.0f} ms (airflow.sdk import {stats['sdk_s'] * 1000:.0f} ms)")
    assert stats["dags"] == [dag_file.stem]
    assert stats["db_connects"] == 0
