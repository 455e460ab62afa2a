"""Batch-level rules of the validate step, per file: fetch each raw part (ETag as seen at ingest),
check it is non-empty readable parquet or UTF-8 comma-separated CSV with the contract's columns (set
and order; trailing optional columns, contract.OPTIONAL_COLUMNS, may be omitted and are added as
nulls) and types, and that the row counts match the manifest; stage it as parquet with the exact
contract schema. Any failure rejects the whole batch (`BatchRejected`) naming the file, the column
or row where known, and the rule."""
from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.validation.contract import MAY_BE_EMPTY, OPTIONAL_COLUMNS, SCHEMAS, accepts_columns

CSV_SUFFIXES = (".csv",)


class ValidationFailed(RuntimeError):
    """The batch failed validation (quarantine rate or volume over threshold, or rejected outright)."""


class BatchRejected(ValidationFailed):
    """A batch-level rule failed (unreadable file, schema, manifest mismatch): nothing was written."""



def parse_now(value) -> datetime:
    import pandas as pd

    if value is None:
        raise BatchRejected("raw manifest has no 'now' (the batch's as-of time) [rule batch.manifest.now]")
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.to_pydatetime()



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


def stage_batch(store, manifest: dict, order: tuple[str, ...], workdir: Path) -> dict[str, Staged]:
    """Every listed table of the raw manifest staged (parents first); a table missing from it rejects the batch."""
    staged: dict[str, Staged] = {}
    for table in order:
        entry = manifest.get("tables", {}).get(table)
        if entry is None:
            raise BatchRejected(f"[rule {table}.manifest.present] the raw manifest lists no {table} table")
        staged[table] = stage_table(store, table, entry, workdir)
    return staged
