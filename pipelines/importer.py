"""Maps a user's randomized campaign log (CSV or parquet, one row per customer: arm, outcomes,
features) into a raw batch of the data contract, as a mapping YAML declares; the chain then
runs on it unchanged (`campaignops data import --mapping FILE.yaml DATAFILE`). Mapping format
and checks: pipelines/import_mapping.py; a starter mapping from a log's columns:
pipelines/import_starter.py; the holdout chosen at import: pipelines/import_holdout.py.

Rows are never dropped: a value that cannot be parsed becomes null, an undeclared arm keeps its
raw name as variant_id, and the validate step quarantines such rows with the rule they broke
(exposure ids carry the source row number). Missing feature values (empty cells) are absent
attribute rows, i.e. "unknown" to the model. Feature values are stamped `features.as_of`: a point
at or after it sees them (pipelines/attributes.py), so training exposures and scoring as of the
campaign's start both do with the default; a later as_of hides them from earlier exposures.

Without a timestamp column, exposure times are spread deterministically over the window by a
hash of the user id (or row number): the chain's time-quantile train/valid/holdout split then
behaves as a seeded random split of the customers. A holdout chosen at import (`holdout_fold=(f,
k)`, `holdout_fraction`, `holdout_column`) is spread over the last part of the window instead and
recorded with its cut in the manifest's `import.holdout`, which the features step splits at. For
cross-fitting, `holdout_fold=(f, k)` deals the users into k folds of equal size (±1 user, by a
seeded hash of the id): k imports with f = 0..k-1 score every row once, by a model that did not
train on it (`import.holdout_fold.time_quantile` is the train + valid share that holds out
exactly fold f, for a params-driven split). The log has no behaviour events: the events table is
written empty and declared so (`empty_by_design`) in the manifest. Every import records its
warnings (`import.warnings`), among them arms the network cannot tell apart.

A data file that cannot be read as a table (missing, a directory, not UTF-8, truncated or garbled
CSV, rows with more fields than the header, not parquet, duplicate column names) stops the import
with a DataFileError naming the file; a file that reads imports every row. The batch id (--batch,
the mapping's `batch`, else the file's stem) must be a safe id (pipelines/inputs.py).
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import import_holdout as holdout
from campaignops.pipelines import layout
from campaignops.pipelines.import_holdout import fold_of  # noqa: F401  (importer.fold_of: benchmarks, tests)
from campaignops.pipelines.import_mapping import (MappingError, arms_warning, check_arm_values,  # noqa: F401
                                                  indistinguishable_arms, load_mapping, read_mapping)
from campaignops.pipelines.inputs import ID_RULE, InputError, UnsafeId, check_id, is_safe_id
from campaignops.pipelines.storage import sha256_file
from campaignops.validation.contract import CONTROL, SCHEMAS, required_schema

_spread_ms = holdout.spread_ms


class DataFileError(InputError):
    """The data file cannot be read as a table; one line naming the file and the problem."""


def check_data_file(path: Path) -> None:
    """DataFileError unless `path` is an existing regular file."""
    if not path.exists():
        raise DataFileError(f"data file {path}: not found")
    if not path.is_file():
        raise DataFileError(f"data file {path}: " + ("is a directory, not a data file" if path.is_dir()
                                                     else "is not a regular file"))


def read_source(path: Path, fmt: str | None) -> pd.DataFrame:
    """The data file as strings (CSV) or its own types (parquet); nothing is parsed yet. Every
    record becomes a row (short rows padded with nulls); a file that cannot be read so, DataFileError."""
    path = Path(path)
    fmt = fmt if fmt in ("csv", "parquet") else ("parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv")
    check_data_file(path)
    where = f"data file {path}"
    try:
        if fmt == "parquet":   # ParquetFile: duplicate column names reach the check below
            df = pq.ParquetFile(path).read().to_pandas()
        else:
            with warnings.catch_warnings():   # pandas drops the extra fields of long rows with only a warning
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], index_col=False)
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{where}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): "
                            "save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DataFileError(f"{where}: empty (no header row)") from None
    except pd.errors.ParserWarning:
        raise DataFileError(f"{where}: every row has more fields than the header: a column name is missing "
                            "(or a delimiter inside an unquoted value)") from None
    except pd.errors.ParserError as exc:
        raise DataFileError(f"{where}: not a well-formed CSV ({str(exc).removeprefix('Error tokenizing data. ')})"
                            ) from None
    except PermissionError:
        raise DataFileError(f"{where}: cannot be read (permission denied)") from None
    except (pa.ArrowException, OSError, ValueError) as exc:   # not parquet, truncated, unsupported types
        raise DataFileError(f"{where}: cannot be read as {fmt} ({exc})") from None
    names = [str(c) for c in df.columns]
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise DataFileError(f"{where}: column name(s) {dupes} appear more than once: rename them")
    df.columns = names
    return df


def mapped_columns(m: dict) -> list[str]:
    """The data columns a checked mapping reads."""
    cols = [m[k] for k in ("treatment", "response", "revenue", "id", "timestamp") if m.get(k)]
    cols += [rule[1] for rule in m["users"].values() if rule is not None and rule[0] == "column"]
    return list(dict.fromkeys(cols + list(m["features"])))


def check_flat(df: pd.DataFrame, columns: list[str], where: str) -> None:
    """DataFileError if a mapped column holds nested values (lists, structs, maps: parquet only)."""
    nested = [c for c in columns if df[c].dtype == object
              and df[c].map(lambda v: isinstance(v, (list, tuple, dict, np.ndarray))).any()]
    if nested:
        raise DataFileError(f"{where}: column(s) {nested} hold lists or structs; the mapping takes one value per "
                            "cell: flatten them or leave them out of the mapping")


def _num(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").astype("float64")


def _int_or_null(s: pd.Series, lo: int, hi: int) -> pa.Array:
    x = _num(s)
    ok = x.notna() & (x == np.floor(x)) & (x >= lo) & (x <= hi)
    return pa.array(np.where(ok, x.fillna(0), 0).astype(np.int64), mask=~ok.to_numpy())


def _str_or_null(s: pd.Series) -> pa.Array:
    return pa.array([None if pd.isna(v) else str(v) for v in s], pa.string())


def _ts_array(s: pd.Series) -> pa.Array:
    t = pd.to_datetime(s, errors="coerce", utc=True, format="mixed").dt.tz_localize(None)
    return pa.array(t.astype("datetime64[ms]"), pa.timestamp("ms"))


def build_tables(m: dict, df: pd.DataFrame) -> tuple[dict[str, pa.Table], dict]:
    """The raw tables (contract schemas) and import statistics for one data frame."""
    n = len(df)
    width = max(7, len(str(n)))
    rownum = [f"r{i:0{width}d}" for i in range(n)]
    uid = _str_or_null(df[m["id"]]) if m["id"] else pa.array(rownum, pa.string())
    exposure_id = pa.array([f"{m['campaign_id']}-{r}" for r in rownum], pa.string())

    arm_raw = df[m["treatment"]]
    arm_str = [None if pd.isna(v) else str(v) for v in arm_raw]
    variant_of = {k: a["variant"] for k, a in m["arms"].items()}
    variant = [CONTROL if v == m["control"] else variant_of.get(v, v) for v in arm_str]

    spec = m.get("holdout") or ({"fold": tuple(m["holdout_fold"])} if m.get("holdout_fold") else None)
    held_record = None
    if m["timestamp"]:
        ts = _ts_array(df[m["timestamp"]])
    else:
        start, end = m["window"]
        span = int((end - start) / pd.Timedelta(milliseconds=1))
        keys = [k or r for k, r in zip(uid.to_pylist() if m["id"] else rownum, rownum)]
        salt = m.get("spread_salt", m["campaign_id"])
        if spec is None:
            offs = holdout.spread_ms(keys, salt, span)
        else:  # the holdout after a cut, the other rows before it (fold f of k: at (k-1)/k of the window)
            held, how = holdout.choose(spec, keys, salt, df, m.get("data_path", "data file"))
            h = int(held.sum())
            cut = span * (spec["fold"][1] - 1) // spec["fold"][1] if "fold" in spec else span * (n - h) // n
            offs = holdout.place(held, keys, salt, span, cut)
            held_record = holdout.record(next(iter(spec)), how, held, start + pd.Timedelta(milliseconds=cut))
        ts = pa.array((np.datetime64(start.to_datetime64(), "ms") + offs.astype("timedelta64[ms]")), pa.timestamp("ms"))
    if held_record is None:
        held_record = holdout.params_split(ts.to_numpy(zero_copy_only=False), m["split"], not m["timestamp"]) \
            if m.get("split") else {"rule": "params", "how": "params features.split (time quantiles)"}
    if m["window"] is not None:
        start, end = m["window"]
    else:
        valid = pd.Series(ts.to_pandas()).dropna()
        start, end = valid.min(), valid.max()
    now = max(end, pd.Series(ts.to_pandas()).max() if len(ts) else end)

    responded = _int_or_null(df[m["response"]], 0, 127).cast(pa.int8())  # 0/1 is the contract's rule
    revenue = pa.array(_num(df[m["revenue"]]).to_numpy(), pa.float64(), from_pandas=True) if m["revenue"] \
        else pa.array(np.zeros(n), pa.float64())
    exposures = pa.Table.from_arrays(   # a log has no propensities: the optional column is omitted
        [exposure_id, uid, pa.array([m["campaign_id"]] * n, pa.string()), pa.array(variant, pa.string()), ts,
         responded, revenue], schema=required_schema("exposures"))

    # One users row per distinct user id (its first row); attributes from that row.
    first = ~pd.Series(uid.to_pylist()).duplicated(keep="first").to_numpy() if m["id"] else np.ones(n, bool)
    rows = np.flatnonzero(first)
    sub = df.iloc[rows]
    ucols = []
    for f in SCHEMAS["users"].names[1:]:
        rule = m["users"][f]
        typ = SCHEMAS["users"].field(f).type
        if rule is None:
            ucols.append(pa.nulls(len(rows), typ))
        elif rule[0] == "fill":
            v = rule[1].to_datetime64() if f == "signup_ts" else rule[1]
            ucols.append(pa.array([v] * len(rows)).cast(typ))
        elif f == "age":
            ucols.append(_int_or_null(sub[rule[1]], -2**31, 2**31 - 1).cast(pa.int32()))
        elif f == "signup_ts":
            ucols.append(_ts_array(sub[rule[1]]))
        else:
            ucols.append(_str_or_null(sub[rule[1]]))
    users = pa.Table.from_arrays([uid.take(pa.array(rows)), *ucols], schema=SCHEMAS["users"])

    parts, missing = [], {}
    users_uid = uid.take(pa.array(rows))
    for name, kind in m["features"].items():
        col = sub[name]
        present = col.notna().to_numpy().copy()
        if kind == "categorical":
            present &= (col.astype(str).str.len() > 0).to_numpy()
        missing[name] = int((~present).sum())
        idx = np.flatnonzero(present)
        vals = col.iloc[idx]
        if kind == "numeric":
            num, s = pa.array(_num(vals).to_numpy(), pa.float64(), from_pandas=True), pa.nulls(len(idx), pa.string())
        else:
            num, s = pa.nulls(len(idx), pa.float64()), _str_or_null(vals)
        parts.append(pa.Table.from_arrays([
            users_uid.take(pa.array(idx)), pa.array([name] * len(idx), pa.string()),
            pa.array(np.full(len(idx), np.datetime64(m["as_of"].to_datetime64(), "ms")), pa.timestamp("ms")), num, s,
        ], schema=SCHEMAS["user_attributes"]).append_column("_row", pa.array(idx)))
    attrs = (pa.concat_tables(parts) if parts else SCHEMAS["user_attributes"].empty_table().append_column(
        "_row", pa.array([], pa.int64())))
    attrs = attrs.sort_by([("_row", "ascending")]).drop_columns(["_row"])  # stable: data row, then feature order

    campaigns = pa.Table.from_pylist([
        {"campaign_id": m["campaign_id"], "variant_id": a["variant"], "type": a["type"],
         "discount_rate": a["discount_rate"], "channel": a["channel"], "target_category": a["target_category"],
         "cost_per_send": a["cost_per_send"], "start_ts": start.to_pydatetime(), "end_ts": end.to_pydatetime()}
        for a in m["arms"].values()], schema=SCHEMAS["campaigns"])

    counts = pd.Series(arm_str, dtype=object).value_counts(dropna=False)
    declared = set(m["arms"]) | {m["control"]}
    stats = {"rows": n, "arms": {str(k): int(v) for k, v in counts.items() if k in declared},
             "undeclared_arms": {str(k): int(v) for k, v in counts.items() if k not in declared},
             "missing_feature_values": missing, "now": pd.Timestamp(now).isoformat()}
    stats["holdout"] = held_record
    if spec is not None and "fold" in spec:
        f, k = spec["fold"]
        stats["holdout_fold"] = {"fold": f, "k": k, "rows": held_record["rows"], "share": held_record["share"],
                                 "time_quantile": held_record["time_quantile"]}
    tables = {"users": users, "events": SCHEMAS["events"].empty_table(), "campaigns": campaigns,
              "exposures": exposures, "user_attributes": attrs}
    return tables, stats


def import_file(settings, mapping_path: Path | str, data_path: Path | str, batch: str | None = None,
                response: str | None = None, store=None, limit: int | None = None,
                split_seed: int | None = None, holdout_fold: tuple[int, int] | None = None,
                holdout_fraction: float | None = None, holdout_column: str | None = None) -> dict:
    """Map `data_path` with the mapping into raw/<batch>/ (one part per table, the manifest last).
    Returns the manifest. `limit`: first rows only (tests, dry looks). `split_seed`: another
    spread of exposure times (another random train/valid/holdout split), for repeated splits.
    At most one holdout choice (pipelines/import_holdout.py; needs spread times, i.e. no timestamp
    column): `holdout_fold` (f, k) holds out fold f of k users (cross-fitting), `holdout_fraction`
    a share of the users, `holdout_column` "COL" or "COL=VALUE" the rows that column marks."""
    spec = holdout.parse(holdout_fold, holdout_fraction, holdout_column)
    data_path, mapping_path = Path(data_path), Path(mapping_path)
    if batch is not None:
        check_id(batch, "batch")
    raw = read_mapping(mapping_path)
    src = raw.get("source")   # its format option decides how the data file is read
    df = read_source(data_path, src.get("format") if isinstance(src, dict) else None)
    if limit is not None:
        df = df.iloc[:limit].reset_index(drop=True)
    if df.empty:
        raise DataFileError(f"data file {data_path}: no data rows (only a header): nothing to import")
    m = load_mapping(mapping_path, list(df.columns), response=response, raw=raw)
    check_flat(df, mapped_columns(m), f"data file {data_path}")
    notes = check_arm_values(m, df[m["treatment"]])
    twins = indistinguishable_arms(m["arms"])
    notes += [arms_warning(g, m["arms"]) for g in twins]
    if batch is None and m["batch"] is None and not is_safe_id(data_path.stem):
        raise UnsafeId(f"data file {data_path}: its name gives the batch id {data_path.stem!r}, not a safe id "
                       f"({ID_RULE}): pass --batch ID or set `batch:` in the mapping")
    batch = batch or m["batch"] or data_path.stem
    if split_seed is not None:
        m["spread_salt"] = f"{m['campaign_id']}#{int(split_seed)}"
    if spec is not None and m["timestamp"]:
        option = {"fold": "holdout_fold", "fraction": "holdout_fraction", "column": "holdout_column"}[next(iter(spec))]
        raise MappingError(mapping_path, [("timestamp", f"{option} needs exposure times spread by the import; "
                                                        f"this mapping takes them from column {m['timestamp']!r}")])
    m["holdout"], m["data_path"] = spec, str(data_path)
    m["split"] = settings.params["features"]["split"] if settings is not None else None
    tables, stats = build_tables(m, df)
    stats["warnings"] = notes
    stats["indistinguishable_arms"] = twins
    if store is None:
        from campaignops.pipelines.storage import ObjectStore

        store = ObjectStore(settings)

    from campaignops.pipelines import ingest

    # Raw batch ids are immutable (pipelines/ingest.py): parts are content-addressed, nothing is
    # uploaded over a landed batch; the same import again is a no-op, another one is refused.
    landed = ingest.landed_manifest(store, batch)
    entries, written = {}, []
    tmp = Path(tempfile.mkdtemp(prefix="import-"))
    try:
        for name, t in tables.items():
            pq.write_table(t, tmp / f"{name}.parquet", compression="zstd")
            key = ingest.part_key(layout.raw_prefix(batch, name), 0, tmp / f"{name}.parquet")
            if landed is None:
                store.upload_file(tmp / f"{name}.parquet", key)
                written.append(key)
            entries[name] = {"files": [key], "rows": t.num_rows}
            if name in ("events", "user_attributes") and t.num_rows == 0:
                entries[name]["empty_by_design"] = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entries["events"]["empty_by_design"] = True  # a campaign log has no behaviour events
    manifest = {
        "batch": batch,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "now": stats["now"],
        "upcoming_campaign_id": None,
        "generator": {"name": "campaignops.pipelines.importer", "mapping": str(mapping_path),
                      "mapping_sha256": sha256_file(mapping_path), "data_file": str(data_path),
                      "data_sha256": sha256_file(data_path), "rows_limit": limit, "campaign_id": m["campaign_id"],
                      "response": m["response"], "revenue": m["revenue"],
                      "exposure_times": "column " + m["timestamp"] if m["timestamp"] else
                      "spread over the campaign window by sha256(campaign id, user id or row)",
                      "split_seed": split_seed, "holdout_fold": None if holdout_fold is None else list(holdout_fold),
                      "holdout_fraction": holdout_fraction, "holdout_column": holdout_column},
        "import": stats,
        "tables": entries,
    }
    if landed is not None:
        return ingest.settle_landed(store, batch, landed, manifest)
    return ingest.commit_batch(store, batch, manifest, written)   # last: the commit marker


def source_ids(settings: Settings) -> pd.DataFrame | None:
    """For an imported log (the raw manifest records an `import`): pseudonymous exposure id →
    the log's exposure id and data row (0-based; the importer's ids end in -r<row>). None for
    other batches: their source ids stay behind the pseudonyms."""
    import json

    import duckdb

    from campaignops.pipelines import privacy

    manifest = settings.workspace / layout.RAW_MANIFEST
    exposures = settings.workspace / layout.VALIDATED_DIR / "exposures.parquet"
    if not manifest.exists() or not exposures.exists() or "import" not in json.loads(manifest.read_text()):
        return None
    con = duckdb.connect()
    privacy.bind_salt(con, privacy.id_salt(settings))
    ids = con.sql(f"SELECT {privacy.pseudonym_sql('exposure_id', 'x')} AS exposure_id, exposure_id AS source_exposure_id "
                  f"FROM read_parquet('{exposures}')").df()
    row = ids["source_exposure_id"].str.extract(r"-r(\d+)$", expand=False)
    return ids.assign(source_row=pd.to_numeric(row, errors="coerce").astype("Int64"))


# --------------------------------------------------------------------------- fitting
