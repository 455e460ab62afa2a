"""Runs one Arrow-producing function over a list of small tasks on Spark and collects the output.

`map_arrow(tasks, fn, schema, spark)` is generic: it knows nothing of scoring. Each task is a
JSON-able dict (e.g. ``{"uri": "s3://bucket/key.parquet", "row_groups": [0, 1]}``); the driver
turns the tasks into a DataFrame of one row per task, spreads them over the partitions, runs
``fn(task)`` in the Python workers through ``mapInArrow`` and collects the record batches, in task
order, as one ``pa.Table`` on the driver (so the output must fit in the driver's memory).

Where it runs is configuration (``score.spark`` in params.yaml, passed in by the caller):

- ``master``: ``local[2]`` by default; any ``spark-submit`` master URL (``spark://host:7077``,
  ``yarn``, ``k8s://...``) runs on that cluster.
- ``remote``: a Spark Connect URL (``sc://host:15002``); when set it wins over ``master``.
- ``app_name``, ``conf`` (extra Spark conf, e.g. ``spark.executor.memory``), ``partitions``
  (default: one task per partition), ``executor_env`` (names of driver environment variables to
  copy into ``spark.executorEnv.<NAME>``).

Environment: ``fn`` reads its inputs itself (pyarrow in the workers; no JVM-side S3), so the
worker processes need the same CAMPAIGNOPS_*, AWS_* and MLFLOW_* variables as the driver. In local
mode the Python workers inherit the driver's environment. On a cluster they do not: the
executors' environment must be set there (``spark.executorEnv.<NAME>`` in the cluster's
spark-defaults, or listed by name in ``executor_env``, which copies the driver's values into the
conf at session start; with Spark Connect the server's own conf decides, it cannot be set from
here). Values copied that way are Spark conf: only names are logged here, and Spark redacts conf
keys matching ``spark.redaction.regex`` in its UI and event logs. ``fn`` is pickled with
cloudpickle by reference to its module, so the executors need this package installed.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

TASK_INDEX = "__campaignops_task_index"
TASK_FIELD = pa.field(TASK_INDEX, pa.int64(), nullable=False)
LOCALHOST = "127.0.0.1"


def map_arrow(tasks: list[dict], fn: Callable[[dict], Iterator[pa.RecordBatch]], schema: pa.Schema,
              spark: dict | None = None, *, session=None) -> pa.Table:
    """``fn(task)`` for every task, run by Spark's Python workers, concatenated in task order.

    ``fn`` must be picklable by cloudpickle (a module-level function or a functools.partial of
    one) and yield record batches with (at least) the columns of ``schema``; they are cast to it.
    ``session`` reuses a caller's SparkSession (left running); otherwise one is built from the
    ``spark`` config and stopped at the end.
    """
    if not tasks:
        return schema.empty_table()
    cfg = dict(spark or {})
    partitions = max(1, min(int(cfg.get("partitions") or len(tasks)), len(tasks)))
    rows = [(i, json.dumps(task)) for i, task in enumerate(tasks)]
    log.info("spark: %d tasks on %d partitions (%s)", len(tasks), partitions,
             "session given" if session is not None else "Spark Connect" if cfg.get("remote") else cfg.get("master") or "local[2]")
    with _session(cfg, session) as s:
        df = s.createDataFrame(rows, f"{TASK_INDEX} long, task string").repartitionByRange(partitions, TASK_INDEX)
        out = df.mapInArrow(partial(_run_tasks, fn, schema), _spark_schema(schema.append(TASK_FIELD)))
        table = out.toArrow()
    return table.sort_by(TASK_INDEX).drop_columns([TASK_INDEX]).cast(schema)


def executor_env_conf(names: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``spark.executorEnv.<NAME>`` conf for each listed name set in ``environ`` (default: the
    driver's environment); nothing else is copied. Logs names only, never values."""
    environ = os.environ if environ is None else environ
    names = list(names)
    missing = [n for n in names if n not in environ]
    if missing:
        log.warning("spark executor_env: not set on the driver, not copied: %s", ", ".join(missing))
    copied = [n for n in names if n in environ]
    if copied:
        log.info("spark executor_env: copying %s to the executors", ", ".join(copied))
    return {f"spark.executorEnv.{n}": environ[n] for n in copied}


def session_conf(cfg: Mapping) -> dict[str, str]:
    """The Spark conf a session gets from the ``spark`` config: Arrow on, local-mode settings
    (no UI, driver on 127.0.0.1), listed executor environment, then the caller's ``conf``."""
    conf = {"spark.sql.execution.arrow.pyspark.enabled": "true"}
    remote = cfg.get("remote")
    if not remote and str(cfg.get("master") or "local[2]").startswith("local"):
        conf.update({"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                     "spark.driver.host": LOCALHOST, "spark.driver.bindAddress": LOCALHOST})
    if cfg.get("executor_env") and remote:
        log.warning("spark executor_env is ignored with Spark Connect (remote): set spark.executorEnv.* "
                    "in the Connect server's conf")
    elif cfg.get("executor_env"):
        conf.update(executor_env_conf(cfg["executor_env"]))
    conf.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (cfg.get("conf") or {}).items()})
    return conf


def _run_tasks(fn, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Worker side of map_arrow: each input row is one task; its output batches get its index."""
    for batch in batches:
        for index, task in zip(batch.column(TASK_INDEX).to_pylist(), batch.column("task").to_pylist()):
            for out in fn(json.loads(task)):
                out = out.select(schema.names).cast(schema)
                yield out.append_column(TASK_FIELD, pa.array(np.full(out.num_rows, index, dtype=np.int64)))


def _spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema, prefer_timestamp_ntz=True)


@contextmanager
def _session(cfg: Mapping, session=None):
    """The caller's session as is, or a new one from ``cfg`` that is stopped on exit."""
    if session is not None:
        yield session
        return
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(cfg.get("app_name") or "campaignops")
    for key, value in session_conf(cfg).items():
        builder = builder.config(key, value)
    if cfg.get("remote"):
        s, ours = builder.remote(cfg["remote"]).create(), True  # a Connect session of our own
    else:
        master = cfg.get("master") or "local[2]"
        ours = SparkContext._active_spark_context is None  # else getOrCreate joins the caller's
        # Read when the SparkContext and its JVM start: the workers run this interpreter, and
        # local Spark stays on loopback (this machine's hostname resolves to 127.0.0.1).
        env = {"PYSPARK_PYTHON": sys.executable}
        if master.startswith("local"):
            env["SPARK_LOCAL_IP"] = LOCALHOST
        with _env_defaults(env):
            s = builder.master(master).getOrCreate()
        s.sparkContext.setLogLevel("WARN")
    try:
        yield s
    finally:
        if ours:
            s.stop()


@contextmanager
def _env_defaults(defaults: Mapping[str, str]):
    """Sets the variables not already set, for the duration of the block."""
    added = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)
