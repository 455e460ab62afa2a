"""Benchmark of DAG parse time: each file in dags/ imported in a fresh interpreter (the way the DAG
processor loads it, airflow.sdk already imported), against a minimal one-task DAG in the same run.

    .venv/bin/python benchmarks/bench_dag_parse.py [--repeat 5]

Prints per file the median parse time, the airflow.sdk import every file pays anyway, database
connections opened at parse (must be 0) and the ratio to the minimal DAG's parse time. The probe is
tests/dags/test_parse.py's (the test checks no-DB and registration; timings are reported here)."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "dags"))
from test_parse import DAG_FILES, parse_stats  # noqa: E402

MINIMAL = '''
from datetime import datetime
from airflow.sdk import dag, task

@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def minimal():
    @task
    def one():
        return 1
    one()

minimal()
'''


def measure(path: Path, env: dict, repeat: int) -> dict:
    runs = [parse_stats(path, env) for _ in range(repeat)]
    return {"parse_ms": statistics.median(r["parse_s"] for r in runs) * 1000,
            "sdk_ms": statistics.median(r["sdk_s"] for r in runs) * 1000,
            "db_connects": max(r["db_connects"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "AIRFLOW_HOME": tmp,
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp}/no-such-dir/airflow.db"}
        minimal = Path(tmp) / "minimal.py"
        minimal.write_text(MINIMAL)
        base = measure(minimal, env, args.repeat)
        print(f"{'file':<24}{'parse ms':>10}{'sdk ms':>9}{'db conn':>9}{'x minimal':>11}")
        print(f"{'(minimal one-task DAG)':<24}{base['parse_ms']:>10.0f}{base['sdk_ms']:>9.0f}{base['db_connects']:>9}{1:>11.1f}")
        for path in DAG_FILES:
            m = measure(path, env, args.repeat)
            print(f"{path.name:<24}{m['parse_ms']:>10.0f}{m['sdk_ms']:>9.0f}{m['db_connects']:>9}"
                  f"{m['parse_ms'] / base['parse_ms']:>11.1f}")


if __name__ == "__main__":
    main()
