"""map_arrow on local Spark equals the same function run serially, in task order; its conf helpers."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from campaignops.pipelines import spark_engine

SCHEMA = pa.schema([("user_id", pa.string()), ("x2", pa.int32()), ("row_group", pa.int32())])


def double_row_groups(task: dict):
    """Reads the task's row groups of a local parquet file and doubles x: one batch per row group."""
    f = pq.ParquetFile(task["path"])
    for rg in task["row_groups"]:
        t = f.read_row_group(rg)
        yield from pa.table({
            "x2": pc.multiply(t["x"], 2).cast(pa.int32()),
            "user_id": t["user_id"],  # out of schema order: map_arrow selects and casts
            "row_group": pa.array([rg] * t.num_rows, pa.int32()),
        }).to_batches()


@pytest.mark.spark
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
def test_map_arrow_local_equals_serial_in_task_order(tmp_path: Path):
    # The workers cannot import this test module: ship double_row_groups by value.
    from pyspark import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    path = tmp_path / "exposures.parquet"
    n = 600
    pq.write_table(pa.table({"user_id": [f"u{i}" for i in range(n)], "x": pa.array(range(n), pa.int64())}),
                   path, row_group_size=100)
    # Six tasks, not in file order, one of them two row groups and one none.
    groups = [[3], [0, 5], [], [1], [4], [2]]
    tasks = [{"path": str(path), "row_groups": g} for g in groups]

    got = spark_engine.map_arrow(tasks, double_row_groups, SCHEMA, {"master": "local[2]", "app_name": "test"})

    want = pa.Table.from_batches([b for t in tasks for b in double_row_groups(t)]).select(SCHEMA.names)
    assert got.schema == SCHEMA
    assert got.equals(want.cast(SCHEMA))
    assert got["row_group"].to_pylist()[::100] == [3, 0, 5, 1, 4, 2]


def test_map_arrow_without_tasks_starts_no_spark():
    assert spark_engine.map_arrow([], double_row_groups, SCHEMA).equals(SCHEMA.empty_table())


def test_executor_env_copies_only_listed_names(caplog):
    environ = {"AWS_ACCESS_KEY_ID": "key-id-1", "AWS_SECRET_ACCESS_KEY": "secret-value-2",
               "MLFLOW_TRACKING_URI": "http://mlflow:5000", "HOME": "/root"}
    with caplog.at_level(logging.INFO, logger=spark_engine.__name__):
        conf = spark_engine.executor_env_conf(["AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI", "CAMPAIGNOPS_UNSET"],
                                              environ)
    assert conf == {"spark.executorEnv.AWS_SECRET_ACCESS_KEY": "secret-value-2",
                    "spark.executorEnv.MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert "CAMPAIGNOPS_UNSET" in caplog.text and "AWS_SECRET_ACCESS_KEY" in caplog.text
    assert "secret-value-2" not in caplog.text
    assert spark_engine.executor_env_conf([], environ) == {}


def test_session_conf_local_cluster_and_connect(monkeypatch):
    monkeypatch.setenv("CAMPAIGNOPS_BUCKET", "b")
    local = spark_engine.session_conf({"conf": {"spark.executor.memory": "2g", "spark.ui.enabled": True}})
    assert local["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert local["spark.driver.host"] == local["spark.driver.bindAddress"] == "127.0.0.1"
    assert local["spark.executor.memory"] == "2g" and local["spark.ui.enabled"] == "true"  # the caller's conf wins
    assert not any(k.startswith("spark.executorEnv.") for k in local)

    cluster = spark_engine.session_conf({"master": "spark://head:7077", "executor_env": ["CAMPAIGNOPS_BUCKET"]})
    assert "spark.driver.host" not in cluster and "spark.ui.enabled" not in cluster
    assert cluster["spark.executorEnv.CAMPAIGNOPS_BUCKET"] == "b"

    connect = spark_engine.session_conf({"remote": "sc://head:15002", "executor_env": ["CAMPAIGNOPS_BUCKET"]})
    assert connect == {"spark.sql.execution.arrow.pyspark.enabled": "true"}
