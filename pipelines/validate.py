"""The DVC `validate` stage: raw batch (S3) → data/validated/<table>.parquet + quarantine.

1. Batch level, per file (pipelines/validate_staging.py): each part fetched, readable, the
   contract's columns and types, row counts as the manifest says; any failure rejects the whole
   batch (`BatchRejected`) naming the file, the column/row where known and the rule.
2-3. Cleaning and row level (pipelines/validate_rules.py, DuckDB over the staged parts): exact
   duplicates removed, every GX row rule's SQL twin and the cross-table rules, parents first.
4. GX (pipelines/validate_gx.py): each table's suite through a checkpoint on every row of small
   tables or a sample, cross-checked rule by rule with the SQL twin (`ContractMismatch`).
5. Quarantine (pipelines/validate_quarantine.py) with `_rule`, `_source_file`, `_source_row`; the
   quarantine rate and the volume band (pipelines/validate_volume.py) can fail the batch
   (`ValidationFailed`) after the quarantine and the reports are written.
6. Outputs, only when the batch passed: data/validated replaced atomically, then
   reports/validation.json (pipelines/validate_report.py) with the sha256 of every table written.
   Invariant, per table: rows in = rows valid + rows quarantined + rows deduplicated.

Nothing in data/validated or reports/validation.json changes unless the batch passes: a failed or
rejected run writes reports/validation_failed.json beside them, so the last good validated data
and its report survive (dvc.yaml marks both `persist: true`, so `dvc repro` does not delete them
before the stage runs either).
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import layout
from campaignops.pipelines.storage import ObjectStore, atomic_dir
from campaignops.pipelines.validate_gx import ContractMismatch, cross_check, gx_pass, run_gx
from campaignops.pipelines.validate_quarantine import META_COLS, quarantine_rate, rate_failure, split, write_quarantine
from campaignops.pipelines.validate_report import (
    INVARIANT,
    build_report,
    failure_message,
    rejected_report,
    table_hashes,
    upload_dir,
    write_reports,
)
from campaignops.pipelines.validate_rules import OPTIONAL_ORDER, ORDER, Engine, RawTable
from campaignops.pipelines.validate_staging import (
    BatchRejected,
    Staged,
    ValidationFailed,
    check_columns,
    check_schema,
    check_schema_only,
    fetch_part,
    parse_now,
    read_csv_part,
    stage_batch,
    stage_file,
    stage_table,
)
from campaignops.pipelines.validate_volume import HISTORY_KEY, check_volume, read_history, record_history
from campaignops.validation import suites
from campaignops.validation.contract import SCHEMAS

log = logging.getLogger(__name__)

__all__ = [  # the step's entry and what tests, benchmarks and other steps import from here
    "run", "new_run_id", "BatchRejected", "ValidationFailed", "ContractMismatch", "Engine", "RawTable", "Staged",
    "ORDER", "OPTIONAL_ORDER", "META_COLS", "HISTORY_KEY", "INVARIANT", "check_columns", "check_schema",
    "check_schema_only", "check_volume", "cross_check", "fetch_part", "parse_now", "read_csv_part", "read_history",
    "record_history", "run_gx", "split", "stage_file", "stage_table", "suites", "upload_dir",
]


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _cfg(settings: Settings) -> dict:
    v = settings.params.get("validate", {})
    return {"max_quarantine_rate": float(v["max_quarantine_rate"]),
            "volume_min_ratio": float(v.get("volume_min_ratio", 0.5)),
            "volume_max_ratio": float(v.get("volume_max_ratio", 2.0)),
            "max_string_length": int(v.get("max_string_length", suites.MAX_STRING_LENGTH)),
            "gx_sample_rows": int(v.get("gx_sample_rows", 50_000)),
            "memory_limit": v.get("memory_limit")}


def _write_local_parquet(batches, path: Path, schema: pa.Schema) -> int:
    n = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for b in batches:
            w.write_table(b)
            n += b.num_rows
    return n


def write_validated(workspace: Path, engine: Engine, order: tuple[str, ...], tables: dict[str, dict]) -> dict[str, str]:
    """The valid rows of every table to data/validated, replaced atomically (declared fills counted
    into tables[t]["fills"]). Returns the sha256 of every file written."""
    with atomic_dir(workspace / layout.VALIDATED_DIR) as tmp:
        for table in order:
            fills: dict[str, int] = {}
            n = _write_local_parquet(engine.valid_batches(table, fills), tmp / f"{table}.parquet", SCHEMAS[table])
            tables[table]["fills"] = fills
            if n != tables[table]["rows_valid"]:
                raise AssertionError(f"{table}: wrote {n} valid rows, expected {tables[table]['rows_valid']} "
                                     f"({INVARIANT} broken)")
        return table_hashes(tmp)


def _table_results(store, engine: Engine, summaries: dict, frames: dict, order, batch: str, run_id: str,
                   cfg: dict, source: str | None) -> tuple[dict, list[dict], dict]:
    """Quarantine, rate and volume per table: (tables, failures, volume history)."""
    history = read_history(store)
    tables: dict[str, dict] = {}
    failures = []
    for table in order:
        s = summaries[table]
        q_key = write_quarantine(store, engine, table, s, batch, run_id)
        volume = check_volume(history, table, batch, s["rows_in"], cfg["volume_min_ratio"], cfg["volume_max_ratio"],
                              source)
        tables[table] = {**s, "quarantine_rate": round(quarantine_rate(s), 6),
                         "quarantine_uri": store.uri(q_key) if q_key else None,
                         "gx": frames[table].gx, "volume": volume, "fills": {}}
        if (rate := rate_failure(table, s, cfg["max_quarantine_rate"])) is not None:
            failures.append(rate)
        if volume["status"] == "failed":
            failures.append({"table": table, "rule": f"{table}.rows.volume", "message": volume["message"]})
    return tables, failures, history


def run(settings: Settings, store: ObjectStore | None = None) -> dict:
    """Validate the ingested raw batch (data/raw_manifest.json). Returns the report dict."""
    t_start = time.perf_counter()
    ws = settings.workspace
    manifest_path = ws / layout.RAW_MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: run `campaignops ingest` first")
    manifest = json.loads(manifest_path.read_text())
    batch = manifest["batch"]
    store = store or ObjectStore(settings)
    cfg = _cfg(settings)
    run_id = new_run_id()
    order = ORDER + tuple(t for t in OPTIONAL_ORDER if t in manifest.get("tables", {}))
    gen = manifest.get("generator") or {}
    source = ":".join(str(x) for x in (gen.get("name"), gen.get("mapping")) if x) or None  # volume history key
    prefix = layout.validation_prefix(batch, run_id)
    meta = {"run_id": run_id, "batch": batch, "result_uri": store.uri(prefix + "result.json"),
            "docs_uri": store.uri(prefix + "docs/index.html"),
            "started_at": datetime.now(timezone.utc).isoformat()}
    timings: dict[str, float] = {}
    log.info("validate batch %s run %s", batch, run_id)

    work = Path(tempfile.mkdtemp(prefix="campaignops-validate-"))
    engine = None
    try:
        try:
            now = parse_now(manifest.get("now"))
            t0 = time.perf_counter()
            staged = stage_batch(store, manifest, order, work)            # 1. batch level (per file)
            timings["read"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            (work / "duckdb").mkdir()
            engine = Engine(now, cfg["max_string_length"], cfg["memory_limit"], work / "duckdb")
            summaries = {t: engine.evaluate(staged[t]) for t in order}   # 2-3. cleaning + row level
            timings["rules"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            frames, docs_dir = gx_pass(engine, staged, summaries, order, now, run_id, work / "gx", cfg)  # 4. GX
        except BatchRejected as exc:
            write_reports(ws, store, prefix, rejected_report(meta, exc))
            raise
        docs_files = upload_dir(store, docs_dir, prefix + "docs/")
        timings["gx"] = time.perf_counter() - t0

        t0 = time.perf_counter()                                           # 5. quarantine + rate + volume
        tables, failures, history = _table_results(store, engine, summaries, frames, order, batch, run_id, cfg, source)
        timings["quarantine"] = time.perf_counter() - t0
        report = build_report(meta, tables, failures, order, now, cfg, docs_files, manifest)

        if report["passed"]:                                               # 6. outputs, only when it passed
            t0 = time.perf_counter()
            report["validated_sha256"] = write_validated(ws, engine, order, tables)
            timings["write_validated"] = time.perf_counter() - t0
            report["validated_dir"] = str(layout.VALIDATED_DIR)
            record_history(store, history, batch, run_id, tables, source=source)
        for t in tables.values():
            assert t["rows_in"] == t["rows_valid"] + t["rows_quarantined"] + t["rows_deduplicated"], INVARIANT
        timings["total"] = time.perf_counter() - t_start
        report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        report["finished_at"] = datetime.now(timezone.utc).isoformat()
        write_reports(ws, store, prefix, report)
    finally:
        if engine is not None:
            engine.close()
        shutil.rmtree(work, ignore_errors=True)

    if not report["passed"]:
        raise ValidationFailed(failure_message(report, store.uri("quarantine/")))
    return report
