"""Scoring engines: every user of a scoring-features parquet (local file or S3 object) under every
arm of a campaign, streamed in Arrow record batches, to compact per-user prediction arrays.

Each user's behaviour sequence is encoded once and all arms are evaluated by the network's arm
head (models/split.py); the `naive` path (the full network once per arm on the expanded rows) is
kept as the benchmark's baseline and as the fallback for a graph the splitter does not know.
`local` runs in this process; `spark` runs the same per-batch function on Spark executors, one
task per parquet row group (pipelines/spark_engine.py), and gives the same predictions."""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
ENGINES = ("local", "spark")


@dataclass
class Predictions:
    user_ids: pa.ChunkedArray   # in the source's row order
    p: np.ndarray               # [users, arms] response probability, float32
    revenue: np.ndarray         # [users, arms] expected revenue, float32


class ArmScorer:
    """A loaded network and its metadata, scoring batches of users under a fixed list of arms.
    `predict_arrays` (a pyfunc model's, for a family without a Keras network: a T-learner
    baseline) replaces the network: it is called once per arm on the users with that arm's columns."""

    def __init__(self, keras_model, meta: dict, arms: list[dict], naive: bool = False, predict_arrays=None):
        self.model, self.meta, self.arms = keras_model, meta, arms
        self.predict_arrays = predict_arrays
        self.split = None
        if not naive and predict_arrays is None:
            from campaignops.models.split import split

            try:
                self.split = split(keras_model)
            except ValueError as exc:
                log.warning("scoring with the full network per arm: %s", exc)

    @classmethod
    def for_model(cls, python_model, arms: list[dict], naive: bool = False) -> "ArmScorer":
        """The scorer of a loaded pyfunc model (models/pyfunc.py) of any family."""
        from campaignops.models.pyfunc import TLearnerResponseModel

        if isinstance(python_model, TLearnerResponseModel):
            return cls(None, python_model.meta, arms, predict_arrays=python_model.predict_arrays)
        return cls(python_model.model, python_model.meta, arms, naive=naive)

    def predict(self, batch: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        from campaignops.models.inputs import encode_arms, encode_user

        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        if self.split is None:
            return self._predict_naive(table)
        user = encode_user(table, self.meta)
        p, r = self.split.predict(user, encode_arms(table, self.arms, self.meta, user["seq"]))
        return p.astype(np.float32), (r * self.meta["revenue_scale"]).astype(np.float32)

    def _predict_naive(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """The full network (or predict_arrays) once per arm on the users with that arm's columns attached."""
        from campaignops.models.inputs import ARM_COLUMNS, encode
        from campaignops.models.uplift_net import predict

        ps, rs = [], []
        for arm in self.arms:
            rows = table
            for c in ARM_COLUMNS:
                rows = rows.append_column(c, pa.array([arm[c]] * table.num_rows))
            if self.predict_arrays is not None:
                p, r = self.predict_arrays(encode(rows, self.meta))
            else:
                p, r = predict(self.model, encode(rows, self.meta))
                r = r * self.meta["revenue_scale"]
            ps.append(p)
            rs.append(r)
        return np.stack(ps, 1).astype(np.float32), np.stack(rs, 1).astype(np.float32)


def open_parquet(source: str, filesystem=None) -> pq.ParquetFile:
    """A parquet file by local path or s3://bucket/key (then `filesystem` is a pyarrow S3FileSystem)."""
    if source.startswith("s3://"):
        return pq.ParquetFile(filesystem.open_input_file(source[len("s3://"):]))
    return pq.ParquetFile(source)


def record_batches(f: pq.ParquetFile, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The batches of f.iter_batches(batch_rows) (the same rows in each), read one row group at a
    time: a reader over all row groups keeps what it pre-buffered (pyarrow's pre_buffer, on by
    default and what makes S3 reads fast) until it is exhausted, i.e. the whole compressed file
    by the last batch (230 MB at 1.25M users); one reader per row group drops it as it goes."""
    pending, size = [], 0
    for rg in range(f.metadata.num_row_groups):
        for batch in f.iter_batches(batch_size=batch_rows, row_groups=[rg]):
            while batch.num_rows:
                take = min(batch_rows - size, batch.num_rows)
                pending.append(batch.slice(0, take))
                size += take
                batch = batch.slice(take)
                if size == batch_rows:
                    yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                    pending, size = [], 0
    if size:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


def read_ahead(items: Iterator) -> Iterator:
    """`items` in order, the next one read by a background thread while the caller works on the
    current one (Arrow's S3 reads and parquet decoding release the GIL, and so does the network):
    at most one item more in memory."""
    from concurrent.futures import ThreadPoolExecutor

    done = object()
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        pending = pool.submit(next, items, done)
        while (item := pending.result()) is not done:
            pending = pool.submit(next, items, done)
            yield item


def predict_stream(scorer: ArmScorer, source: str, filesystem=None, batch_rows: int = 16384,
                   progress: Callable[[int, int], None] | None = None) -> Predictions:
    """Every user of `source` under every arm, reading one record batch at a time (memory is one
    batch plus the compact [users, arms] output)."""
    f = open_parquet(source, filesystem)
    n = f.metadata.num_rows
    n_arms = len(scorer.arms)
    p = np.empty((n, n_arms), np.float32)
    rev = np.empty((n, n_arms), np.float32)
    ids, done = [], 0
    for batch in read_ahead(record_batches(f, batch_rows)):
        bp, br = scorer.predict(batch)
        p[done:done + batch.num_rows], rev[done:done + batch.num_rows] = bp, br
        ids.append(batch.column("user_id"))
        done += batch.num_rows
        if progress:
            progress(done, n)
    return Predictions(pa.chunked_array(ids, pa.string()), p, rev)


# --------------------------------------------------------------------------- spark

def prediction_schema(n_arms: int) -> pa.Schema:
    return pa.schema([("user_id", pa.string())] + [(f"p{i}", pa.float32()) for i in range(n_arms)]
                     + [(f"r{i}", pa.float32()) for i in range(n_arms)])


@functools.lru_cache(maxsize=2)
def _cached_scorer(model_uri: str, arms_key: str, naive: bool) -> ArmScorer:
    import json

    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    return ArmScorer.for_model(model, json.loads(arms_key), naive=naive)


def spark_task(task: dict, model_uri: str, arms_key: str, s3: dict | None, naive: bool = False
               ) -> Iterator[pa.RecordBatch]:
    """One Spark task: the task's row groups of the features parquet, scored (runs on executors;
    the model is loaded once per Python worker)."""
    scorer = _cached_scorer(model_uri, arms_key, naive)
    fs = s3_filesystem(**s3) if s3 else None
    f = open_parquet(task["uri"], fs)
    schema = prediction_schema(len(scorer.arms))
    for rg in task["row_groups"]:
        table = f.read_row_group(rg)
        p, r = scorer.predict(table)
        cols = [table.column("user_id")] + [pa.array(p[:, i]) for i in range(p.shape[1])] \
            + [pa.array(r[:, i]) for i in range(r.shape[1])]
        yield from pa.Table.from_arrays(cols, schema=schema).to_batches()


def predict_spark(model_uri: str, arms: list[dict], source: str, s3: dict | None, spark: dict | None,
                  naive: bool = False) -> Predictions:
    """predict_stream's result computed by Spark: one task per row group of `source`."""
    import json

    from campaignops.pipelines.spark_engine import map_arrow

    f = open_parquet(source, s3_filesystem(**s3) if s3 else None)
    tasks = [{"uri": source, "row_groups": [i]} for i in range(f.metadata.num_row_groups)]
    arms_key = json.dumps(arms, sort_keys=True, default=float)
    fn = functools.partial(spark_task, model_uri=model_uri, arms_key=arms_key, s3=s3, naive=naive)
    t0 = time.perf_counter()
    table = map_arrow(tasks, fn, prediction_schema(len(arms)), spark=spark)
    log.info("spark: %d tasks, %d users in %.1f s", len(tasks), table.num_rows, time.perf_counter() - t0)
    n_arms = len(arms)
    p = np.stack([table.column(f"p{i}").to_numpy() for i in range(n_arms)], 1).astype(np.float32)
    r = np.stack([table.column(f"r{i}").to_numpy() for i in range(n_arms)], 1).astype(np.float32)
    return Predictions(table.column("user_id"), p, r)


def s3_filesystem(endpoint: str | None = None, region: str = "us-east-1"):
    """pyarrow's S3 filesystem for the project's S3 (credentials from the AWS_* environment, never
    passed around: Spark tasks carry only the endpoint)."""
    import os

    from pyarrow import fs

    kw = {"region": region, "access_key": os.environ.get("AWS_ACCESS_KEY_ID"),
          "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY")}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kw.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    return fs.S3FileSystem(**{k: v for k, v in kw.items() if v is not None})
