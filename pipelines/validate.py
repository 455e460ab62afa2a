"""The DVC `validate` stage: raw batch (S3) → data/validated/<table>.parquet + quarantine.

1. Batch level, per file (`stage_file`): the part is fetched to a local work dir (ETag as seen at
   ingest), must be non-empty readable parquet or UTF-8 comma-separated CSV (read with the
   contract's types), with the contract columns (set and order; trailing optional columns,
   contract.OPTIONAL_COLUMNS, may be omitted and are added as nulls) and types; row counts as the
   manifest says. Any failure rejects the whole batch (`BatchRejected`), naming the file, the
   column/row where known and the rule; nothing is written.
2. Cleaning (declared in validation/suites.py, counted in the report): exact duplicate events
   are removed (first copy kept).
3. Row level, out of core (`Engine`, DuckDB over the staged parquet parts): every GX row rule
   translated to SQL (`suites.sql_predicates`) plus the cross-table rules (referential
   integrity, campaign windows) against the parent rows that passed their own rules. Memory is
   bounded by DuckDB's memory limit and by one part file, not by the batch.
4. The GX suite of each table runs through a checkpoint (Data Docs, result store) on every row
   of tables up to params validate.gx_sample_rows, else on a sample holding the failing rows
   (up to half the sample) and random clean rows. GX's failing rows on that frame must equal
   the SQL twin's on the same frame, rule by rule, or the run stops (`ContractMismatch`): GX is
   the contract, the SQL pass finds its rows at scale.
5. Every failing row goes to s3://<bucket>/quarantine/<table>/<batch>/<run_id>.parquet with
   `_rule` (every rule id it broke, ";"-joined), `_source_file` and `_source_row`; valid rows
   (contract columns and types, declared fills applied and counted) go to
   data/validated/<table>.parquet, the directory replaced atomically.
   Invariant, per table: rows in = rows valid + rows quarantined + rows deduplicated.
6. GX Data Docs and result.json go to s3://<bucket>/validation/<batch>/<run_id>/; the same
   summary to reports/validation.json when the batch passed (it describes data/validated), to
   reports/validation_failed.json when it failed. Batch-level failures after the row pass — a
   table whose quarantine share exceeds validate.max_quarantine_rate, or whose row count is outside
   [volume_min_ratio, volume_max_ratio] × the previous batch's (validation/_history.json) —
   fail the run (`ValidationFailed`) after the quarantine and the reports are written, and
   data/validated is then left as it was.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import mimetypes
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import layout
from campaignops.pipelines.storage import ObjectStore, atomic_dir, write_json
from campaignops.validation import suites
from campaignops.validation.contract import (
    ALL_TABLES,
    MAY_BE_EMPTY,
    OPTIONAL_COLUMNS,
    SCHEMAS,
    TABLES,
    accepts_columns,
)

log = logging.getLogger(__name__)

# Parents are validated before the tables that reference them. Optional tables (contract
# OPTIONAL_TABLES) are validated when the manifest lists them.
ORDER = ("users", "campaigns", "events", "exposures")
OPTIONAL_ORDER = ("user_attributes",)
assert set(ORDER) == set(TABLES) and set(ORDER + OPTIONAL_ORDER) == set(ALL_TABLES)

META_COLS = ("_rule", "_source_file", "_source_row")
HISTORY_KEY = "validation/_history.json"
INVARIANT = "rows_in = rows_valid + rows_quarantined + rows_deduplicated (per table)"
CSV_SUFFIXES = (".csv",)
SMALL_TABLE_ROWS = 1_000_000  # valid rows of smaller tables are written with one query, larger per part


class ValidationFailed(RuntimeError):
    """The batch failed validation (quarantine rate or volume over threshold, or rejected outright)."""


class BatchRejected(ValidationFailed):
    """A batch-level rule failed (unreadable file, schema, manifest mismatch): nothing was written."""


class ContractMismatch(RuntimeError):
    """GX and its SQL twin disagree on which rows break a rule: a bug in the translation."""


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


def check_columns(names: list[str], table: str, uri: str) -> None:
    """The contract's columns in order; trailing optional columns (contract.OPTIONAL_COLUMNS) may be missing."""
    if accepts_columns(table, names):
        return
    expected = SCHEMAS[table].names
    missing = [c for c in expected if c not in names and c not in OPTIONAL_COLUMNS.get(table, ())]
    extra = [c for c in names if c not in expected]
    detail = []
    if missing:
        detail.append(f"missing column(s) {missing}")
    if extra:
        detail.append(f"unexpected column(s) {extra}")
    if not detail:
        detail.append(f"column order {list(names)} differs from the contract's {expected}")
    raise BatchRejected(f"[rule {table}.schema.columns] {uri}: " + "; ".join(detail))


def check_schema_only(schema: pa.Schema, table: str, uri: str) -> bool:
    """Batch-level rules on a file's schema. True if it is exactly the contract's (no cast needed)."""
    check_columns(schema.names, table, uri)
    present = [f for f in SCHEMAS[table] if f.name in schema.names]
    for f in present:
        actual = schema.field(f.name).type
        if not _compatible(actual, f.type):
            raise BatchRejected(f"[rule {table}.schema.types] {uri}: column {f.name!r} has type {actual}, "
                                f"the contract requires {f.type}")
    return len(present) == len(SCHEMAS[table]) and all(schema.field(f.name).type == f.type for f in present)


def check_schema(t: pa.Table, table: str, uri: str) -> pa.Table:
    """Batch-level rules for one file; returns it cast to the exact contract schema (omitted
    optional columns added as nulls)."""
    check_schema_only(t.schema, table, uri)
    for f in SCHEMAS[table]:
        if f.name not in t.column_names:
            t = t.append_column(f.name, pa.nulls(t.num_rows, f.type))
    return t.select(SCHEMAS[table].names).cast(SCHEMAS[table])


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def read_csv_part(path: Path, table: str, uri: str) -> pa.Table:
    """A CSV part with a header, read with the contract's types. Clear errors for a wrong
    encoding (not UTF-8), a wrong delimiter, wrong columns and unparseable values."""
    import pyarrow.csv as pacsv

    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchRejected(f"[rule {table}.file.encoding] {uri}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset "
                            f"{exc.start}, line {_line_of(data, exc.start)}); re-export the file as UTF-8") from exc
    header = data.split(b"\n", 1)[0].decode().rstrip("\r").lstrip("\ufeff")
    names = next(csv.reader([header])) if header else []
    if not accepts_columns(table, names):
        for sep in (";", "\t", "|"):
            if len(header.split(sep)) > 1 and [c.strip('"') for c in header.split(sep)] == SCHEMAS[table].names:
                raise BatchRejected(f"[rule {table}.file.delimiter] {uri}: the header is {sep!r}-delimited; the "
                                    "contract requires comma-separated CSV with a header row")
        if len(names) == 1 and any(s in header for s in (";", "\t", "|")):
            raise BatchRejected(f"[rule {table}.file.delimiter] {uri}: header {header[:200]!r} has a single column; "
                                "wrong delimiter? The contract requires comma-separated CSV with a header row")
        check_columns(names, table, uri)
    opts = pacsv.ConvertOptions(column_types={f.name: f.type for f in SCHEMAS[table]}, strings_can_be_null=True,
                                null_values=[""], quoted_strings_can_be_null=False,
                                timestamp_parsers=[pacsv.ISO8601])
    try:
        t = pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(block_size=64 << 20),
                           parse_options=pacsv.ParseOptions(newlines_in_values=True), convert_options=opts)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        msg = str(exc)
        rule = "schema.types" if "conversion error" in msg else "file.readable"
        raise BatchRejected(f"[rule {table}.{rule}] {uri}: CSV cannot be read with the contract's types: "
                            f"{msg[:500]}") from exc
    return check_schema(t, table, uri)


def stage_file(path: Path, table: str, uri: str, workdir: Path) -> tuple[Path, int]:
    """Batch-level rules for one local part. Returns (parquet path with the exact contract
    schema, rows): the part itself when it already matches, else a normalized copy in workdir."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise BatchRejected(f"[rule {table}.file.readable] {uri}: empty file (0 bytes)")
    if uri.lower().endswith(CSV_SUFFIXES):
        t = read_csv_part(path, table, uri)
    else:
        try:
            pf = pq.ParquetFile(path)
            schema, rows = pf.schema_arrow, pf.metadata.num_rows
        except Exception as exc:
            raise BatchRejected(f"[rule {table}.file.readable] {uri}: not a readable parquet file "
                                f"({type(exc).__name__}: {exc}); truncated or corrupt?") from exc
        if check_schema_only(schema, table, uri):
            return path, rows
        try:
            t = check_schema(pf.read(), table, uri)
        except BatchRejected:
            raise
        except Exception as exc:
            raise BatchRejected(f"[rule {table}.file.readable] {uri}: parquet data cannot be read "
                                f"({type(exc).__name__}: {exc})") from exc
    out = Path(tempfile.mkstemp(prefix=f"{table}-", suffix=".parquet", dir=workdir)[1])
    pq.write_table(t, out, compression="zstd")
    return out, t.num_rows


def fetch_part(store, table: str, key: str, etag: str | None, workdir: Path) -> Path:
    """A local path holding the part: the file itself for a local store, else downloaded (streamed)."""
    uri = store.uri(key)
    if not hasattr(store, "client"):  # synth.LocalStore
        path = store._path(key)
        if not path.is_file():
            raise BatchRejected(f"[rule {table}.file.present] {uri}: does not exist")
        return path
    try:
        resp = store.client.get_object(Bucket=store.bucket, Key=key)
    except Exception as exc:
        raise BatchRejected(f"[rule {table}.file.present] {uri}: cannot be read from S3 ({exc}); "
                            "was the batch changed or deleted after ingest?") from exc
    actual = str(resp.get("ETag", "")).strip('"')
    if etag and actual and actual != etag:
        raise BatchRejected(f"[rule {table}.file.unchanged] {uri}: ETag {actual} differs from {etag} recorded at "
                            "ingest; the raw batch changed, rerun ingest")
    suffix = ".csv" if key.lower().endswith(CSV_SUFFIXES) else ".parquet"
    fd, name = tempfile.mkstemp(prefix=f"raw-{table}-", suffix=suffix, dir=workdir)
    with os.fdopen(fd, "wb") as f:
        for chunk in resp["Body"].iter_chunks(8 << 20):
            f.write(chunk)
    return Path(name)


@dataclass
class Staged:
    """A table's parts after the batch-level rules: local parquet paths with the contract schema."""
    table: str
    files: list[str]      # source keys/uris as reported (`_source_file`)
    paths: list[Path]
    rows: list[int]
    allow_empty: bool = False  # declared empty by design in the manifest (contract MAY_BE_EMPTY)

    @property
    def n(self) -> int:
        return sum(self.rows)


def stage_table(store, table: str, entry: dict, workdir: Path) -> Staged:
    objects = entry.get("objects") or [{"key": k} for k in entry.get("files", [])]
    st = Staged(table, [], [], [], allow_empty=bool(entry.get("empty_by_design")) and table in MAY_BE_EMPTY)
    for obj in objects:
        key = obj["key"]
        local = fetch_part(store, table, key, obj.get("etag"), workdir)
        path, rows = stage_file(local, table, store.uri(key), workdir)
        st.files.append(key)
        st.paths.append(path)
        st.rows.append(rows)
    expected = entry.get("rows")
    if expected is not None and int(expected) != st.n:
        raise BatchRejected(f"[rule {table}.manifest.rows] the manifest says {expected} rows for {table}, its "
                            f"{len(st.files)} file(s) hold {st.n}")
    return st


# --------------------------------------------------------------------------- GX

def _gx_context(root: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="file", project_root_dir=str(root))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


RESULT_FORMAT = {"result_format": "COMPLETE", "return_unexpected_index_query": False,
                 "partial_unexpected_count": 20}


def run_gx(raws: dict[str, RawTable], now: datetime, run_id: str, gx_root: Path,
           max_len: int = suites.MAX_STRING_LENGTH, allow_empty: frozenset[str] = frozenset()) -> Path:
    """Run each table's suite through a checkpoint (results + Data Docs in `gx_root`); fill
    `raw.hits` with row-level violations and `raw.gx` with the result summary. Returns the
    Data Docs site directory."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    ctx = _gx_context(gx_root)
    source = ctx.data_sources.add_pandas("raw")
    gx_run = RunIdentifier(run_name=run_id, run_time=datetime.now(timezone.utc))
    for table in [t for t in (*ORDER, *OPTIONAL_ORDER) if t in raws]:
        raw = raws[table]
        batch_def = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("batch")
        suite = ctx.suites.add(suites.build_suite(table, now, max_len, allow_empty=table in allow_empty))
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
    site = gx_root / "gx" / "uncommitted" / "data_docs" / "local_site"
    from campaignops.validation.docs_offline import make_offline

    make_offline(site)  # the index's tables as static HTML: readable without the CDN scripts
    return site



# --------------------------------------------------------------------------- row level: DuckDB engine

def _sql_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


class Engine:
    """Row-level rules for a whole batch, out of core: DuckDB over the staged parquet parts.

    Per table: `v_<t>` (all rows with `_f` file index and `_r` row in file), `d_<t>` (exact
    duplicates removed by cleaning), `n_<t>` (the rest), `b_<t>` (_f, _r, _rule of every failing
    row of n_<t>). `valid_users` / `valid_campaigns` hold the parents that passed."""

    def __init__(self, now: datetime, max_len: int = suites.MAX_STRING_LENGTH, memory_limit: str | None = None,
                 temp_dir: Path | None = None, threads: int | None = None):
        import duckdb

        self.now, self.max_len = now, int(max_len)
        self.con = duckdb.connect()
        if memory_limit:
            self.con.execute(f"SET memory_limit = {_sql_str(memory_limit)}")
        if temp_dir:
            self.con.execute(f"SET temp_directory = {_sql_str(str(temp_dir))}")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.con.execute("SET preserve_insertion_order = false")
        # DuckDB folds isnan(x) to false from parquet min/max statistics, which exclude NaN
        # (DuckDB 2.0); NaN must reach the not_null rules, so no statistics propagation.
        self.con.execute("SET disabled_optimizers = 'statistics_propagation'")
        self.staged: dict[str, Staged] = {}
        self.summary: dict[str, dict] = {}

    def close(self) -> None:
        self.con.close()

    def _part_sql(self, st: Staged, i: int) -> str:
        return (f"SELECT * EXCLUDE (file_row_number), {i}::INTEGER AS _f, file_row_number::BIGINT AS _r "
                f"FROM read_parquet({_sql_str(str(st.paths[i]))}, file_row_number = true)")

    def _run(self, st: Staged, sql: str, what: str, fetch=None):
        try:
            return fetch(self.con.sql(sql)) if fetch else self.con.execute(sql)
        except Exception as exc:
            msg = str(exc)
            culprit = None
            for path, key in zip(st.paths, st.files):
                if str(path) in msg:
                    msg, culprit = msg.replace(str(path), key), key
            if culprit is None and "parquet" not in msg.lower():
                raise
            raise BatchRejected(f"[rule {st.table}.file.readable] {culprit or st.table}: data cannot be read while "
                                f"{what} ({type(exc).__name__}: {msg[:500]}); truncated or corrupt parquet?") from exc

    def evaluate(self, st: Staged) -> dict:
        """Clean and flag one table (parents first). Returns its counts and rule counts."""
        t = st.table
        self.staged[t] = st
        if st.n == 0 and not (st.allow_empty and st.paths):
            raise BatchRejected(f"[rule {t}.rows.non_empty] table {t} has no rows in its {len(st.files)} file(s) "
                                f"({', '.join(st.files) or 'none listed'}); a batch needs every table")
        con = self.con
        con.execute(f"CREATE OR REPLACE TEMP VIEW v_{t} AS " + " UNION ALL ".join(
            self._part_sql(st, i) for i in range(len(st.paths))))
        keys = suites.DEDUP_KEYS.get(t)
        if keys:
            cols = ", ".join(f'"{k}"' for k in keys)
            self._run(st, f"""
                CREATE OR REPLACE TEMP TABLE d_{t} AS
                WITH c AS (SELECT hash({cols}) AS h FROM v_{t} GROUP BY h HAVING count(*) > 1),
                cand AS (SELECT _f, _r, {cols} FROM v_{t} WHERE hash({cols}) IN (SELECT h FROM c))
                SELECT _f, _r FROM (SELECT _f, _r, row_number() OVER (PARTITION BY {cols} ORDER BY _f, _r) AS rn
                                    FROM cand) WHERE rn > 1""", "finding exact duplicates")
            con.execute(f"""CREATE OR REPLACE TEMP VIEW n_{t} AS SELECT * FROM v_{t} v
                            WHERE NOT EXISTS (SELECT 1 FROM d_{t} d WHERE d._f = v._f AND d._r = v._r)""")
        else:
            con.execute(f"CREATE OR REPLACE TEMP VIEW n_{t} AS SELECT * FROM v_{t}")
        preds = suites.sql_predicates(t, self.now, f"n_{t}", self.max_len) + suites.cross_table_predicates(t)
        cases = ", ".join(f"CASE WHEN {p} THEN {_sql_str(rid)} END" for rid, p in preds)
        self._run(st, f"""CREATE OR REPLACE TEMP TABLE b_{t} AS
                          SELECT _f, _r, _rule FROM (SELECT _f, _r, concat_ws(';', {cases}) AS _rule FROM n_{t} x)
                          WHERE _rule <> ''""", "checking row rules")
        if t == "users":
            con.execute("""CREATE OR REPLACE TEMP TABLE valid_users AS SELECT user_id FROM n_users v
                           WHERE NOT EXISTS (SELECT 1 FROM b_users b WHERE b._f = v._f AND b._r = v._r)""")
        elif t == "campaigns":
            con.execute("""CREATE OR REPLACE TEMP TABLE valid_campaigns AS
                           SELECT campaign_id, variant_id, start_ts, end_ts FROM n_campaigns v
                           WHERE NOT EXISTS (SELECT 1 FROM b_campaigns b WHERE b._f = v._f AND b._r = v._r)""")
        dup_count = f"(SELECT count(*) FROM d_{t})" if keys else "0"
        n_dup, n_bad = con.execute(f"SELECT {dup_count}, (SELECT count(*) FROM b_{t})").fetchall()[0]
        counts = {}
        if n_bad:
            counts = dict(con.execute(f"""SELECT r, count(*) AS n FROM (SELECT unnest(string_split(_rule, ';')) AS r
                                          FROM b_{t}) GROUP BY r ORDER BY n DESC, r""").fetchall())
        s = {"rows_in": st.n, "rows_deduplicated": int(n_dup), "rows_quarantined": int(n_bad),
             "rows_valid": st.n - int(n_dup) - int(n_bad), "rule_counts": {k: int(v) for k, v in counts.items()},
             "files": len(st.files)}
        self.summary[t] = s
        return s

    def quarantine(self, t: str) -> pa.Table:
        """Failing rows (raw values) with _rule, _source_file, _source_row, in file/row order."""
        st = self.staged[t]
        if not self.summary[t]["rows_quarantined"]:
            return pa.schema(list(SCHEMAS[t]) + [pa.field("_rule", pa.string()), pa.field("_source_file", pa.string()),
                                                 pa.field("_source_row", pa.int64())]).empty_table()
        cols = ", ".join(f'v."{c}"' for c in SCHEMAS[t].names)
        q = self._run(st, f"""SELECT {cols}, b._rule, b._f, b._r FROM n_{t} v JOIN b_{t} b USING (_f, _r)
                              ORDER BY b._f, b._r""", "writing the quarantine", lambda r: r.to_arrow_table())
        data = q.select(SCHEMAS[t].names).cast(SCHEMAS[t])
        files = pa.DictionaryArray.from_arrays(q.column("_f").combine_chunks(), pa.array(st.files, pa.string()))
        return (data.append_column("_rule", q.column("_rule").cast(pa.string()))
                .append_column("_source_file", files.cast(pa.string()))
                .append_column("_source_row", q.column("_r").cast(pa.int64())))

    def valid_batches(self, t: str, fills: dict[str, int] | None = None):
        """Valid rows, one part file at a time in file/row order, contract schema, declared fills
        applied (and counted into `fills`)."""
        st = self.staged[t]
        cols = ", ".join(f'"{c}"' for c in SCHEMAS[t].names)
        fill = suites.FILLS.get(t, {})
        if fills is not None:
            fills.update({c: fills.get(c, 0) for c in fill})
        s = self.summary[t]
        dedup = bool(suites.DEDUP_KEYS.get(t)) and s["rows_deduplicated"] > 0
        # one query per part file keeps memory bounded by a part; small tables: one query
        groups = [None] if st.n <= SMALL_TABLE_ROWS else range(len(st.paths))
        for i in groups:
            src = f"n_{t}" if i is None else f"({self._part_sql(st, i)})"
            conds = []
            if dedup and i is not None:
                conds.append(f"NOT EXISTS (SELECT 1 FROM d_{t} d WHERE d._f = {i} AND d._r = v._r)")
            if s["rows_quarantined"]:
                conds.append(f"NOT EXISTS (SELECT 1 FROM b_{t} b WHERE b._f = v._f AND b._r = v._r)")
            where = ("WHERE " + " AND ".join(conds)) if conds else ""
            sql = f"SELECT {cols} FROM {src} v {where} ORDER BY _f, _r"
            reader = self._run(st, sql, "writing valid rows", lambda r: r.to_arrow_reader(256_000))
            for batch in reader:
                tbl = pa.Table.from_batches([batch]).cast(SCHEMAS[t])
                for c, value in fill.items():
                    col = tbl.column(c)
                    if col.null_count:
                        if fills is not None:
                            fills[c] += col.null_count
                        tbl = tbl.set_column(tbl.schema.get_field_index(c), c, pc.fill_null(col, value))
                yield tbl

    def sample(self, t: str, k: int, seed: int = 7) -> RawTable:
        """The frame GX validates: every non-duplicate row if there are at most k, else up to k/2
        failing rows (file/row order) and a seeded random sample of clean rows."""
        st = self.staged[t]
        cols = ", ".join(f'v."{c}"' for c in SCHEMAS[t].names)
        n = self.summary[t]["rows_in"] - self.summary[t]["rows_deduplicated"]
        if n <= k:
            sql = f"SELECT {cols}, v._f, v._r FROM n_{t} v ORDER BY v._f, v._r"
        else:
            k_bad = min(self.summary[t]["rows_quarantined"], k // 2)
            sql = f"""
              (SELECT {cols}, v._f, v._r FROM n_{t} v JOIN b_{t} b USING (_f, _r) ORDER BY v._f, v._r LIMIT {k_bad})
              UNION ALL
              (SELECT * FROM (SELECT {cols}, v._f, v._r FROM n_{t} v
                              WHERE NOT EXISTS (SELECT 1 FROM b_{t} b WHERE b._f = v._f AND b._r = v._r))
               USING SAMPLE reservoir({k - k_bad} ROWS) REPEATABLE ({seed}))"""
        q = self._run(st, sql, "sampling for GX", lambda r: r.to_arrow_table())
        order = pc.sort_indices(q, [("_f", "ascending"), ("_r", "ascending")])
        q = q.take(order)
        return RawTable(t, q.select(SCHEMAS[t].names).cast(SCHEMAS[t]), list(st.files),
                        q.column("_f").to_numpy().astype(np.int32), q.column("_r").to_numpy().astype(np.int64))

    def sql_hits(self, raw: RawTable) -> dict[str, np.ndarray]:
        """The SQL twin's failing rows (positions in raw.data) for the GX row rules on raw.data."""
        t = raw.name
        self.con.register("gx_frame", raw.data.append_column("_i", pa.array(np.arange(raw.n, dtype=np.int64))))
        preds = suites.sql_predicates(t, self.now, "gx_frame", self.max_len)
        out = {}
        for rid, p in preds:
            idx = self.con.execute(f"SELECT _i FROM gx_frame x WHERE {p} ORDER BY _i").fetchnumpy()["_i"]
            if len(idx):
                out[rid] = np.asarray(idx, dtype=np.int64)
        self.con.unregister("gx_frame")
        return out


def cross_check(raw: RawTable, sql_hits: dict[str, np.ndarray]) -> None:
    """GX's failing rows must equal the SQL twin's, rule by rule, on the same frame."""
    for rid in sorted(set(raw.hits) | set(sql_hits)):
        g = set(np.asarray(raw.hits.get(rid, []), dtype=np.int64).tolist())
        s = set(np.asarray(sql_hits.get(rid, []), dtype=np.int64).tolist())
        if g != s:
            only_g, only_s = sorted(g - s)[:5], sorted(s - g)[:5]
            ex = [(raw.files[raw.file_idx[i]], int(raw.source_row[i])) for i in (only_g or only_s)[:3]]
            raise ContractMismatch(f"rule {rid} on {raw.name}: GX flags {len(g)} row(s), the SQL twin {len(s)}; "
                                   f"only GX: {only_g}, only SQL: {only_s} (e.g. file/row {ex}). Fix "
                                   "suites.sql_predicates to match the expectation.")


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
            if hasattr(store, "client"):
                store.client.upload_file(str(path), store.bucket, key, ExtraArgs={"ContentType": ctype})
            else:
                store.upload_file(path, key)
            n += 1
    return n


def _top_rules(counts: dict[str, int], k: int = 5) -> str:
    return ", ".join(f"{rid}={n}" for rid, n in list(counts.items())[:k])



# --------------------------------------------------------------------------- volume history

def read_history(store) -> dict:
    try:
        if store.exists(HISTORY_KEY):
            return store.get_json(HISTORY_KEY)
    except Exception as exc:  # a broken history must not block validation; it is rewritten on success
        log.warning("cannot read %s (%s); volume check treats this batch as the first", HISTORY_KEY, exc)
    return {"tables": {}}


def check_volume(history: dict, table: str, batch: str, rows_in: int, lo: float, hi: float,
                 source: str | None = None) -> dict:
    """Compare rows in with the latest *other* batch recorded for the table from the same source
    (producer and mapping: an imported log is not compared with synthetic batches)."""
    previous = [h for h in history.get("tables", {}).get(table, [])
                if h.get("batch") != batch and h.get("source", source) == source]
    if not previous:
        return {"status": "first", "rows_in": rows_in, "note": f"no previous batch of {table} on record: "
                "volume not checked (first batch); this batch becomes the reference"}
    prev = previous[-1]
    # 0 after 0 (a table empty by design in both batches) is no change; rows after 0 is unbounded
    ratio = rows_in / prev["rows_in"] if prev["rows_in"] else (1.0 if rows_in == 0 else float("inf"))
    ok = lo <= ratio <= hi
    out = {"status": "ok" if ok else "failed", "rows_in": rows_in, "previous_batch": prev["batch"],
           "previous_rows_in": prev["rows_in"], "ratio": round(ratio, 4), "band": [lo, hi]}
    if not ok:
        out["message"] = (f"[rule {table}.rows.volume] {table}: {rows_in} rows is {ratio:.2f}x the {prev['rows_in']} "
                          f"rows of previous batch {prev['batch']!r}, outside the band [{lo}, {hi}] "
                          "(params validate.volume_min_ratio/volume_max_ratio). If the change is expected, widen "
                          f"the band for one run or remove {table}'s entries from {HISTORY_KEY}; else check the "
                          "producer for a partial or duplicated export.")
    return out


def record_history(store, history: dict, batch: str, run_id: str, tables: dict, keep: int = 20,
                   source: str | None = None) -> None:
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for t, info in tables.items():
        hist = [h for h in history.setdefault("tables", {}).get(t, []) if h.get("batch") != batch]
        hist.append({"batch": batch, "run_id": run_id, "rows_in": info["rows_in"], "at": at,
                     **({"source": source} if source else {})})
        history["tables"][t] = hist[-keep:]
    store.put_json(HISTORY_KEY, history)


# --------------------------------------------------------------------------- entry point

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
    cfg = _cfg(settings)
    threshold = cfg["max_quarantine_rate"]
    run_id = new_run_id()
    order = ORDER + tuple(t for t in OPTIONAL_ORDER if t in manifest.get("tables", {}))
    gen = manifest.get("generator") or {}
    source = ":".join(str(x) for x in (gen.get("name"), gen.get("mapping")) if x) or None  # volume history key
    prefix = layout.validation_prefix(batch, run_id)
    result_uri, docs_uri = store.uri(prefix + "result.json"), store.uri(prefix + "docs/index.html")
    timings: dict[str, float] = {}
    log.info("validate batch %s run %s", batch, run_id)

    work = Path(tempfile.mkdtemp(prefix="campaignops-validate-"))
    engine = None
    try:
        # 1. batch level (per file)
        t0 = time.perf_counter()
        staged: dict[str, Staged] = {}
        try:
            for table in order:
                entry = manifest.get("tables", {}).get(table)
                if entry is None:
                    raise BatchRejected(f"[rule {table}.manifest.present] the raw manifest lists no {table} table")
                staged[table] = stage_table(store, table, entry, work)
            timings["read"] = time.perf_counter() - t0

            # 2-3. cleaning + row level (DuckDB), parents first
            t0 = time.perf_counter()
            (work / "duckdb").mkdir()
            engine = Engine(now, cfg["max_string_length"], cfg["memory_limit"], work / "duckdb")
            summaries = {t: engine.evaluate(staged[t]) for t in order}
            timings["rules"] = time.perf_counter() - t0
        except BatchRejected as exc:
            store.put_json(prefix + "result.json", {"run_id": run_id, "batch": batch, "status": "rejected",
                                                    "passed": False, "error": str(exc)})
            raise

        # 4. GX on every row (small tables) or a sample, cross-checked with the SQL twin
        t0 = time.perf_counter()
        gx_frames = {t: engine.sample(t, cfg["gx_sample_rows"]) for t in order}
        gx_tmp = work / "gx"
        docs_dir = run_gx(gx_frames, now, run_id, gx_tmp, cfg["max_string_length"],
                          frozenset(t for t in order if staged[t].allow_empty))
        for t, raw in gx_frames.items():
            cross_check(raw, engine.sql_hits(raw))
            raw.gx.update({"rows": raw.n, "whole_table": raw.n == summaries[t]["rows_in"] - summaries[t]["rows_deduplicated"],
                           "cross_checked_rules": len(suites.sql_predicates(t, now, "x", cfg["max_string_length"]))})
        docs_files = upload_dir(store, docs_dir, prefix + "docs/")
        timings["gx"] = time.perf_counter() - t0

        # 5. quarantine + volume + rate
        t0 = time.perf_counter()
        history = read_history(store)
        tables: dict[str, dict] = {}
        failures = []
        for table in order:
            s = summaries[table]
            q_key = None
            if s["rows_quarantined"]:
                q_key = layout.quarantine_prefix(table, batch) + f"{run_id}.parquet"
                store.write_table(engine.quarantine(table), q_key)
            rate = s["rows_quarantined"] / s["rows_in"] if s["rows_in"] else 0.0
            volume = check_volume(history, table, batch, s["rows_in"], cfg["volume_min_ratio"], cfg["volume_max_ratio"],
                                  source)
            tables[table] = {**s, "quarantine_rate": round(rate, 6), "quarantine_uri": store.uri(q_key) if q_key else None,
                             "gx": gx_frames[table].gx, "volume": volume, "fills": {}}
            if rate > threshold:
                failures.append({"table": table, "rule": f"{table}.rows.quarantine_rate", "rate": rate,
                                 "threshold": threshold, "rows_in": s["rows_in"],
                                 "rows_quarantined": s["rows_quarantined"],
                                 "top_rules": dict(list(s["rule_counts"].items())[:5])})
            if volume["status"] == "failed":
                failures.append({"table": table, "rule": f"{table}.rows.volume", "message": volume["message"]})
        timings["quarantine"] = time.perf_counter() - t0

        passed = not failures
        report = {
            "run_id": run_id, "batch": batch, "now": now.isoformat(), "status": "passed" if passed else "failed",
            "passed": passed, "max_quarantine_rate": threshold, "tables": tables, "failures": failures,
            "invariant": INVARIANT,
            "rows_in": sum(t["rows_in"] for t in tables.values()),
            "rows_valid": sum(t["rows_valid"] for t in tables.values()),
            "rows_quarantined": sum(t["rows_quarantined"] for t in tables.values()),
            "rows_deduplicated": sum(t["rows_deduplicated"] for t in tables.values()),
            "gx_success": all(t["gx"].get("success") for t in tables.values()),
            "rules": {t: [r.id for r in suites.rules(t, now)] for t in order},
            "cleaning": {"dedup_keys": {t: list(k) for t, k in suites.DEDUP_KEYS.items()},
                         "fills": suites.FILLS, "note": "exact duplicates are removed (first copy kept) and counted "
                         "as rows_deduplicated, not quarantined; fills apply to valid rows only"},
            "config": cfg, "result_uri": result_uri, "docs_uri": docs_uri, "docs_files": docs_files,
            "raw_manifest_etag": manifest.get("manifest_etag"),
            "started_at": started.isoformat(), "timings_s": {},
        }

        # 6. outputs: validated data only when the batch passed; reports always
        if passed:
            t0 = time.perf_counter()
            with atomic_dir(ws / layout.VALIDATED_DIR) as tmp:
                for table in order:
                    fills: dict[str, int] = {}
                    n = _write_local_parquet(engine.valid_batches(table, fills), tmp / f"{table}.parquet",
                                             SCHEMAS[table])
                    tables[table]["fills"] = fills
                    if n != tables[table]["rows_valid"]:
                        raise AssertionError(f"{table}: wrote {n} valid rows, expected {tables[table]['rows_valid']} "
                                             f"({INVARIANT} broken)")
            timings["write_validated"] = time.perf_counter() - t0
            report["validated_dir"] = str(layout.VALIDATED_DIR)
            record_history(store, history, batch, run_id, tables, source=source)
        for t in tables.values():
            assert t["rows_in"] == t["rows_valid"] + t["rows_quarantined"] + t["rows_deduplicated"], INVARIANT
        timings["total"] = time.perf_counter() - t_start
        report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        report["finished_at"] = datetime.now(timezone.utc).isoformat()
        store.put_json(prefix + "result.json", report)
        # validation.json describes data/validated (lineage: features, promote and score cite it), so
        # only a passing run replaces it; a failed run's report goes beside it.
        write_json(ws / layout.REPORTS_DIR / ("validation.json" if passed else "validation_failed.json"), report)
    finally:
        if engine is not None:
            engine.close()
        shutil.rmtree(work, ignore_errors=True)

    if not passed:
        lines = []
        for f in failures:
            if "message" in f:
                lines.append(f["message"])
            else:
                lines.append(f"[rule {f['rule']}] {f['table']}: {f['rate']:.2%} of {f['rows_in']} rows quarantined > "
                             f"max {threshold:.2%}; top rules: {_top_rules(f['top_rules'])}")
        raise ValidationFailed(f"batch {batch!r} failed validation (run {run_id}): " + " | ".join(lines)
                               + f". Quarantine: {store.uri('quarantine/')}<table>/{batch}/{run_id}.parquet; "
                               f"report: {result_uri} (reports/validation_failed.json); docs: {docs_uri}. data/validated and "
                               "reports/validation.json were left unchanged.")
    return report
