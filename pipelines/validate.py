"""The DVC `validate` stage: raw batch (S3) → data/validated/<table>.parquet + quarantine.

1. Batch level, per file: readable parquet, contract columns (set and order) and types, row
   counts as the manifest says. Any failure rejects the whole batch (`BatchRejected`), naming
   the file, the column and the rule; nothing is written.
2. Row level: each table's Great Expectations suite (validation/suites.py) with result_format
   COMPLETE, plus the cross-table rules in DuckDB (referential integrity, campaign windows)
   against the parent rows that passed their own rules.
3. Every failing row goes to s3://<bucket>/quarantine/<table>/<batch>/<run_id>.parquet with
   `_rule` (every rule id it broke, ";"-joined), `_source_file` and `_source_row`; valid rows
   (contract columns and types) go to data/validated/<table>.parquet, the whole directory
   replaced atomically. rows in = rows valid + rows quarantined, per table.
4. GX Data Docs and result.json go to s3://<bucket>/validation/<batch>/<run_id>/; the same
   summary to reports/validation.json. A table whose quarantine share exceeds
   params validate.max_quarantine_rate fails the run (`ValidationFailed`) after the quarantine
   and the reports are written, and data/validated is then left as it was.
"""
from __future__ import annotations

import io
import json
import logging
import mimetypes
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import layout
from campaignops.pipelines.storage import ObjectStore, atomic_dir, write_json
from campaignops.validation import suites
from campaignops.validation.contract import SCHEMAS, TABLES

log = logging.getLogger(__name__)

# Parents are validated before the tables that reference them.
ORDER = ("users", "campaigns", "events", "exposures")
assert set(ORDER) == set(TABLES)

META_COLS = ("_rule", "_source_file", "_source_row")


class ValidationFailed(RuntimeError):
    """The batch failed validation (quarantine rate over threshold, or rejected outright)."""


class BatchRejected(ValidationFailed):
    """A batch-level rule failed (unreadable file, schema, manifest mismatch): nothing was written."""


@dataclass
class RawTable:
    name: str
    data: pa.Table                 # contract columns, contract types, all files concatenated
    files: list[str]               # S3 keys, in read order
    file_idx: np.ndarray           # per row: index into `files`
    source_row: np.ndarray         # per row: row number within its file
    hits: dict[str, np.ndarray] = field(default_factory=dict)  # rule id → violating row numbers
    gx: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.data.num_rows


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def parse_now(value) -> datetime:
    import pandas as pd

    if value is None:
        raise BatchRejected("raw manifest has no 'now' (the batch's as-of time) [rule batch.manifest.now]")
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.to_pydatetime()


# --------------------------------------------------------------------------- batch level

def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual == expected or pa.types.is_null(actual):  # an all-null column may be written untyped
        return True
    if pa.types.is_string(expected):
        return pa.types.is_large_string(actual) or pa.types.is_string_view(actual)
    return False


def check_schema(t: pa.Table, table: str, uri: str) -> pa.Table:
    """Batch-level rules for one file; returns it cast to the exact contract schema."""
    schema = SCHEMAS[table]
    names, expected = t.column_names, schema.names
    missing = [c for c in expected if c not in names]
    extra = [c for c in names if c not in expected]
    if missing or extra or names != expected:
        detail = []
        if missing:
            detail.append(f"missing column(s) {missing}")
        if extra:
            detail.append(f"unexpected column(s) {extra}")
        if not detail:
            detail.append(f"column order {names} differs from the contract's {expected}")
        raise BatchRejected(f"[rule {table}.schema.columns] {uri}: " + "; ".join(detail))
    for f in schema:
        actual = t.schema.field(f.name).type
        if not _compatible(actual, f.type):
            raise BatchRejected(f"[rule {table}.schema.types] {uri}: column {f.name!r} has type {actual}, "
                                f"the contract requires {f.type}")
    return t.cast(schema)


def read_part(store: ObjectStore, table: str, key: str, etag: str | None) -> pa.Table:
    uri = store.uri(key)
    try:
        resp = store.client.get_object(Bucket=store.bucket, Key=key)
    except Exception as exc:
        raise BatchRejected(f"[rule {table}.file.present] {uri}: cannot be read from S3 ({exc}); "
                            "was the batch changed or deleted after ingest?") from exc
    actual = str(resp.get("ETag", "")).strip('"')
    if etag and actual and actual != etag:
        raise BatchRejected(f"[rule {table}.file.unchanged] {uri}: ETag {actual} differs from {etag} recorded at "
                            "ingest; the raw batch changed, rerun ingest")
    body = resp["Body"].read()
    try:
        t = pq.read_table(io.BytesIO(body))
    except Exception as exc:
        raise BatchRejected(f"[rule {table}.file.readable] {uri}: not a readable parquet file "
                            f"({type(exc).__name__}: {exc})") from exc
    return check_schema(t, table, uri)


def read_raw(store: ObjectStore, table: str, entry: dict) -> RawTable:
    """Read a table's parts one at a time, batch-checking each; keep file/row provenance."""
    objects = entry.get("objects") or [{"key": k} for k in entry.get("files", [])]
    parts, file_idx, source_row, files = [], [], [], []
    for i, obj in enumerate(objects):
        t = read_part(store, table, obj["key"], obj.get("etag"))
        parts.append(t)
        files.append(obj["key"])
        file_idx.append(np.full(t.num_rows, i, dtype=np.int32))
        source_row.append(np.arange(t.num_rows, dtype=np.int64))
    data = pa.concat_tables(parts) if parts else SCHEMAS[table].empty_table()
    data = data.combine_chunks() if data.num_rows else data
    raw = RawTable(table, data, files,
                   np.concatenate(file_idx) if file_idx else np.zeros(0, np.int32),
                   np.concatenate(source_row) if source_row else np.zeros(0, np.int64))
    expected = entry.get("rows")
    if expected is not None and int(expected) != raw.n:
        raise BatchRejected(f"[rule {table}.manifest.rows] the manifest says {expected} rows for {table}, its "
                            f"{len(files)} file(s) hold {raw.n}")
    return raw


# --------------------------------------------------------------------------- row level: GX

def _gx_context(root: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="file", project_root_dir=str(root))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


RESULT_FORMAT = {"result_format": "COMPLETE", "return_unexpected_index_query": False,
                 "partial_unexpected_count": 20}


def run_gx(raws: dict[str, RawTable], now: datetime, run_id: str, gx_root: Path) -> Path:
    """Run each table's suite through a checkpoint (results + Data Docs in `gx_root`); fill
    `raw.hits` with row-level violations and `raw.gx` with the result summary. Returns the
    Data Docs site directory."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    ctx = _gx_context(gx_root)
    source = ctx.data_sources.add_pandas("raw")
    gx_run = RunIdentifier(run_name=run_id, run_time=datetime.now(timezone.utc))
    for table in ORDER:
        raw = raws[table]
        batch_def = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("batch")
        suite = ctx.suites.add(suites.build_suite(table, now))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"raw.{table}", data=batch_def, suite=suite))
        checkpoint = ctx.checkpoints.add(gx.Checkpoint(
            name=f"raw.{table}", validation_definitions=[vd], result_format=RESULT_FORMAT, actions=[]))
        df = suites.to_pandas(raw.data)  # RangeIndex = the row's position in `raw.data`
        t0 = time.perf_counter()
        result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=gx_run)
        del df
        (result_id, vr), = result.run_results.items()
        batch_failures, hits = [], {}
        for r in vr.results:
            rid = r.expectation_config.meta["rule_id"]
            level = r.expectation_config.meta.get("level")
            exc = r.exception_info or {}
            if exc.get("raised_exception"):
                raise RuntimeError(f"GX could not evaluate rule {rid} on {table}: {exc.get('exception_message')}")
            if level == suites.BATCH:
                if not r.success:
                    batch_failures.append(f"{rid} (observed {r.result.get('observed_value')!r})")
                continue
            idx = r.result.get("unexpected_index_list") or []
            if r.result.get("unexpected_count", 0) and not idx:
                raise RuntimeError(f"GX returned no unexpected indices for failed rule {rid} on {table}")
            if idx:
                hits[rid] = np.unique(np.asarray(idx, dtype=np.int64))
        if batch_failures:
            raise BatchRejected(f"table {table}: batch-level rule(s) failed: {'; '.join(batch_failures)}")
        raw.hits.update(hits)
        raw.gx = {"result_id": str(result_id), "success": bool(vr.success),
                  "evaluated": vr.statistics.get("evaluated_expectations"),
                  "successful": vr.statistics.get("successful_expectations"),
                  "seconds": round(time.perf_counter() - t0, 3)}
    ctx.build_data_docs()  # once, from the stored results of all four checkpoints
    return gx_root / "gx" / "uncommitted" / "data_docs" / "local_site"


# --------------------------------------------------------------------------- row level: cross-table

def _bad_mask(raw: RawTable) -> np.ndarray:
    bad = np.zeros(raw.n, dtype=bool)
    for idx in raw.hits.values():
        bad[idx] = True
    return bad


def run_cross_table(raws: dict[str, RawTable]) -> None:
    import duckdb

    con = duckdb.connect()
    for parent in ("users", "campaigns"):
        con.register(f"valid_{parent}", raws[parent].data.filter(pa.array(~_bad_mask(raws[parent]))))
    for table in ORDER:
        checks = suites.cross_table_sql(table)
        if not checks:
            continue
        raw = raws[table]
        con.register(table, raw.data.append_column("_row", pa.array(np.arange(raw.n, dtype=np.int64))))
        for rid, sql in checks.items():
            rows = con.sql(sql).fetchnumpy()["_row"]
            if len(rows):
                raw.hits[rid] = np.unique(np.asarray(rows, dtype=np.int64))
        con.unregister(table)
    con.close()


# --------------------------------------------------------------------------- split

def split(raw: RawTable, rule_order: list[str]) -> tuple[pa.Table, pa.Table]:
    """(valid rows, quarantined rows with _rule/_source_file/_source_row)."""
    order = [r for r in rule_order if r in raw.hits] + sorted(set(raw.hits) - set(rule_order))
    assert len(order) <= 64, "rule bitmask holds at most 64 rules per table"
    mask = np.zeros(raw.n, dtype=np.uint64)
    for bit, rid in enumerate(order):
        mask[raw.hits[rid]] |= np.uint64(1) << np.uint64(bit)
    bad_rows = np.flatnonzero(mask)
    valid = raw.data.filter(pa.array(mask == 0))
    codes, inverse = np.unique(mask[bad_rows], return_inverse=True)
    labels = [";".join(rid for bit, rid in enumerate(order) if int(code) >> bit & 1) for code in codes]
    quarantined = raw.data.take(pa.array(bad_rows))
    quarantined = quarantined.append_column(
        "_rule", pa.DictionaryArray.from_arrays(pa.array(inverse.astype(np.int32)), pa.array(labels, pa.string()))
        .cast(pa.string()))
    quarantined = quarantined.append_column(
        "_source_file", pa.DictionaryArray.from_arrays(pa.array(raw.file_idx[bad_rows]), pa.array(raw.files, pa.string()))
        .cast(pa.string()))
    quarantined = quarantined.append_column("_source_row", pa.array(raw.source_row[bad_rows]))
    assert valid.num_rows + quarantined.num_rows == raw.n, f"{raw.name}: rows in != valid + quarantined"
    return valid, quarantined


# --------------------------------------------------------------------------- outputs

def upload_dir(store: ObjectStore, local: Path, prefix: str) -> int:
    n = 0
    for root, _, names in os.walk(local):
        for name in sorted(names):
            path = Path(root) / name
            key = prefix + path.relative_to(local).as_posix()
            ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
            store.client.upload_file(str(path), store.bucket, key, ExtraArgs={"ContentType": ctype})
            n += 1
    return n


def _top_rules(counts: dict[str, int], k: int = 5) -> str:
    return ", ".join(f"{rid}={n}" for rid, n in list(counts.items())[:k])


def run(settings: Settings, store: ObjectStore | None = None) -> dict:
    """Validate the ingested raw batch (data/raw_manifest.json). Returns the report dict."""
    t_start = time.perf_counter()
    started = datetime.now(timezone.utc)
    ws = settings.workspace
    manifest_path = ws / layout.RAW_MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: run `campaignops ingest` first")
    manifest = json.loads(manifest_path.read_text())
    batch = manifest["batch"]
    now = parse_now(manifest.get("now"))
    store = store or ObjectStore(settings)
    threshold = float(settings.params["validate"]["max_quarantine_rate"])
    run_id = new_run_id()
    prefix = layout.validation_prefix(batch, run_id)
    result_uri, docs_uri = store.uri(prefix + "result.json"), store.uri(prefix + "docs/index.html")
    timings: dict[str, float] = {}
    log.info("validate batch %s run %s", batch, run_id)

    # 1. batch level
    t0 = time.perf_counter()
    raws: dict[str, RawTable] = {}
    try:
        for table in ORDER:
            entry = manifest.get("tables", {}).get(table)
            if entry is None:
                raise BatchRejected(f"[rule {table}.manifest.present] the raw manifest lists no {table} table")
            raws[table] = read_raw(store, table, entry)
    except BatchRejected as exc:
        store.put_json(prefix + "result.json", {"run_id": run_id, "batch": batch, "status": "rejected",
                                                "passed": False, "error": str(exc)})
        raise
    timings["read"] = time.perf_counter() - t0

    # 2. row level
    with tempfile.TemporaryDirectory(prefix="campaignops-gx-") as gx_tmp:
        t0 = time.perf_counter()
        docs_dir = run_gx(raws, now, run_id, Path(gx_tmp))
        timings["gx"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_cross_table(raws)
        timings["cross_table"] = time.perf_counter() - t0
        docs_files = upload_dir(store, docs_dir, prefix + "docs/")

    # 3. split + quarantine
    t0 = time.perf_counter()
    tables: dict[str, dict] = {}
    valid_tables: dict[str, pa.Table] = {}
    failures = []
    for table in ORDER:
        raw = raws[table]
        rule_order = [r.id for r in suites.rules(table, now)]
        valid, quarantined = split(raw, rule_order)
        counts = {rid: int(len(idx)) for rid, idx in raw.hits.items()}
        counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        q_key = None
        if quarantined.num_rows:
            q_key = layout.quarantine_prefix(table, batch) + f"{run_id}.parquet"
            store.write_table(quarantined, q_key)
        rate = quarantined.num_rows / raw.n if raw.n else 0.0
        tables[table] = {
            "rows_in": raw.n, "rows_valid": valid.num_rows, "rows_quarantined": quarantined.num_rows,
            "quarantine_rate": round(rate, 6), "files": len(raw.files), "rule_counts": counts,
            "quarantine_uri": store.uri(q_key) if q_key else None, "gx": raw.gx,
        }
        if rate > threshold:
            failures.append({"table": table, "rate": rate, "threshold": threshold, "rows_in": raw.n,
                             "rows_quarantined": quarantined.num_rows, "top_rules": dict(list(counts.items())[:5])})
        valid_tables[table] = valid
        del raws[table]  # free the raw copy early
    timings["quarantine"] = time.perf_counter() - t0

    passed = not failures
    report = {
        "run_id": run_id, "batch": batch, "now": now.isoformat(), "status": "passed" if passed else "failed",
        "passed": passed, "max_quarantine_rate": threshold, "tables": tables, "failures": failures,
        "rows_in": sum(t["rows_in"] for t in tables.values()),
        "rows_valid": sum(t["rows_valid"] for t in tables.values()),
        "rows_quarantined": sum(t["rows_quarantined"] for t in tables.values()),
        "gx_success": all(t["gx"].get("success") for t in tables.values()),
        "rules": {t: [r.id for r in suites.rules(t, now)] for t in ORDER},
        "result_uri": result_uri, "docs_uri": docs_uri, "docs_files": docs_files,
        "raw_manifest_etag": manifest.get("manifest_etag"),
        "started_at": started.isoformat(), "timings_s": {},
    }

    # 4. outputs: validated data only when the batch passed; reports always
    if passed:
        t0 = time.perf_counter()
        with atomic_dir(ws / layout.VALIDATED_DIR) as tmp:
            for table in ORDER:
                pq.write_table(valid_tables[table], tmp / f"{table}.parquet", compression="zstd")
        timings["write_validated"] = time.perf_counter() - t0
        report["validated_dir"] = str(layout.VALIDATED_DIR)
    timings["total"] = time.perf_counter() - t_start
    report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    report["finished_at"] = datetime.now(timezone.utc).isoformat()
    store.put_json(prefix + "result.json", report)
    write_json(ws / layout.REPORTS_DIR / "validation.json", report)

    if not passed:
        lines = [f"{f['table']}: {f['rate']:.2%} of {f['rows_in']} rows quarantined > max {threshold:.2%}; "
                 f"top rules: {_top_rules(f['top_rules'])}" for f in failures]
        raise ValidationFailed(f"batch {batch!r} failed validation (run {run_id}): " + " | ".join(lines)
                               + f". Quarantine: {store.uri('quarantine/')}<table>/{batch}/{run_id}.parquet; "
                               f"report: {result_uri}; docs: {docs_uri}. data/validated was left unchanged.")
    return report
