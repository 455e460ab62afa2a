"""Row-level rules of the validate step, out of core: a DuckDB engine over the staged parquet parts
removes exact duplicates (validation/suites.py DEDUP_KEYS), flags every row breaking a GX row rule's
SQL twin (`suites.sql_predicates`) or a cross-table rule (referential integrity, campaign windows,
against the parent rows that passed their own rules), and yields the valid rows, the quarantined
rows and the frame GX validates. Memory is bounded by DuckDB's memory limit and by one part file,
not by the batch."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from campaignops.pipelines.validate_staging import BatchRejected, Staged
from campaignops.validation import suites
from campaignops.validation.contract import ALL_TABLES, SCHEMAS, TABLES

# Parents are validated before the tables that reference them. Optional tables (contract
# OPTIONAL_TABLES) are validated when the manifest lists them.
ORDER = ("users", "campaigns", "events", "exposures")
OPTIONAL_ORDER = ("user_attributes",)
assert set(ORDER) == set(TABLES) and set(ORDER + OPTIONAL_ORDER) == set(ALL_TABLES)
SMALL_TABLE_ROWS = 1_000_000  # valid rows of smaller tables are written with one query, larger per part


@dataclass
class RawTable:
    """A frame of one table's rows as GX validates it, with where each row came from."""
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
