"""Pivots the optional raw table `user_attributes` (long: user, name, as_of, value) into profile
columns, point-in-time: a point at time t sees, per attribute, the user's latest value with
as_of <= t, or nothing. A row states the user's value as of `as_of`, so it is known AT as_of
(inclusive, unlike events, which a point sees only strictly before t): attributes stamped at a
campaign's start (an import's default) are seen by scoring as of that start, as by training.

Which columns exist is fitted once on the attribute rows known at the features' fit time
(`profile_fit.fit_as_of`, the earliest exposure; as_of <= fit_as_of) and stored in meta.json:
- a numeric attribute (no string value at the fit time) → `attr_<name>` (the value, 0 when
  unknown) plus `attr_<name>__missing` if some user had no value at the fit time;
- a categorical one → `attr_<name>__<value>` one-hots over its `max_categories` most frequent
  values held by at least `min_users` users (ties by value; other values: all zeros) plus
  `attr_<name>__missing` as above. Values become column names in meta.json: the floor keeps
  rare, possibly identifying values out of them.
Columns are ordered by attribute name, so the output does not depend on row order. Attribute
rows are keyed by the user pseudonym (`ids.ukey`, pipelines/privacy.py) before anything leaves
DuckDB; raw ids are never written.
"""
from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

TABLE = "user_attributes"
PREFIX = "attr_"
MAX_CATEGORIES = 20  # default of params features.attribute_max_categories
MIN_USERS = 20       # a categorical value gets a column only if this many users hold it


def _slug(value: str) -> str:
    s = re.sub(r"[^0-9a-z]+", "_", str(value).lower()).strip("_")
    return s or "blank"


def _lit(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def prepare(con: duckdb.DuckDBPyConnection, validated_dir: Path, fit_as_of: str, max_categories: int = MAX_CATEGORIES,
            min_users: int = MIN_USERS) -> list[dict]:
    """TEMP TABLE _attr (ukey, name, as_of, value_num, value_str) from the validated attributes,
    re-keyed by the `ids` pseudonyms; returns the fitted column spec ([] without attributes)."""
    path = Path(validated_dir) / f"{TABLE}.parquet"
    if not path.exists():
        return []
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _attr AS
      SELECT i.ukey, a.name, a.as_of, a.value_num, a.value_str
      FROM read_parquet({_lit(str(path))}) a JOIN ids i USING (user_id)""")
    cut = f"TIMESTAMP {_lit(fit_as_of)}"
    n_users = con.execute("SELECT count(*) FROM ids").fetchone()[0]
    kinds = con.execute(f"""SELECT name, count(value_str) AS n_str, count(DISTINCT ukey) AS users
                           FROM _attr WHERE as_of <= {cut} GROUP BY name ORDER BY name""").fetchall()
    spec = []
    for name, n_str, users in kinds:
        item = {"name": name, "kind": "categorical" if n_str else "numeric", "missing": users < n_users}
        if n_str:
            rows = con.execute(f"""SELECT value_str, count(DISTINCT ukey) AS n FROM _attr
                                   WHERE as_of <= {cut} AND name = ? AND value_str IS NOT NULL
                                   GROUP BY 1 HAVING n >= ? ORDER BY n DESC, value_str LIMIT ?""",
                               [name, int(min_users), int(max_categories)]).fetchall()
            item["values"] = sorted(v for v, _ in rows)
        spec.append(item)
    return spec


def _item_columns(item: dict) -> list[tuple[str, str]]:
    """(column name, SQL over the per-point latest values `vn`/`vs` of this attribute)."""
    name, base = item["name"], f"{PREFIX}{item['name']}"
    sel = f"FILTER (WHERE name = {_lit(name)})"
    out = []
    if item["kind"] == "numeric":
        out.append((base, f"coalesce(max(vn) {sel}, 0.0)"))
    else:
        seen: set[str] = set()
        for v in item["values"]:
            col = f"{base}__{_slug(v)}"
            while col in seen:  # two values with the same slug
                col += "_"
            seen.add(col)
            out.append((col, f"coalesce(max((vs = {_lit(v)})::DOUBLE) {sel}, 0.0)"))
    if item["missing"]:
        val = "vn" if item["kind"] == "numeric" else "vs"
        out.append((f"{base}__missing", f"(count({val}) {sel} = 0)::DOUBLE"))
    return out


def columns(spec: list[dict] | None) -> list[str]:
    return [c for item in spec or [] for c, _ in _item_columns(item)]


def pivot(con: duckdb.DuckDBPyConnection, user_keys: pa.Array, ts: pa.Array, spec: list[dict]) -> pa.Table:
    """Attribute columns for points (user pseudonym, ts), in the points' order: per attribute the
    latest value with as_of <= ts."""
    cols = [(c, sql) for item in spec for c, sql in _item_columns(item)]
    n = len(user_keys)
    if not cols:
        return pa.table({})
    con.register("_apts", pa.table({"_i": pa.array(np.arange(n, dtype=np.int64)), "ukey": user_keys,
                                    "ts": pa.array(ts).cast(pa.timestamp("ms"))}))
    names = ", ".join(_lit(item["name"]) for item in spec)
    sql = f"""
      WITH last AS (
        SELECT p._i, a.name, arg_max(struct_pack(vn := a.value_num, vs := a.value_str), a.as_of) AS v
        FROM _apts p JOIN _attr a ON a.ukey = p.ukey AND a.as_of <= p.ts AND a.name IN ({names})
        GROUP BY p._i, a.name),
      flat AS (SELECT _i, name, v.vn AS vn, v.vs AS vs FROM last),
      wide AS (SELECT _i, {", ".join(f'{sql} AS "{c}"' for c, sql in cols)} FROM flat GROUP BY _i)
      SELECT {", ".join(f'coalesce(w."{c}", {"1.0" if c.endswith("__missing") else "0.0"})::DOUBLE AS "{c}"'
                        for c, _ in cols)}
      FROM _apts p LEFT JOIN wide w USING (_i) ORDER BY p._i"""
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.unregister("_apts")


def attach(con: duckdb.DuckDBPyConnection, table: pa.Table, spec: list[dict] | None,
           ts_col: str | None = None, as_of: str | None = None) -> pa.Table:
    """`table` (user_id = pseudonym) with the attribute columns appended, as of each row's
    `ts_col` or the single time `as_of`."""
    if not spec:
        return table
    n = table.num_rows
    ts = table.column(ts_col) if ts_col else pa.array(np.full(n, np.datetime64(as_of.replace(" ", "T"), "ms")))
    out = pivot(con, table.column("user_id"), ts, spec)
    for name, col in zip(out.column_names, out.columns):
        table = table.append_column(name, col)
    return table


def attach_scoring(con: duckdb.DuckDBPyConnection, table: pa.Table, spec: list[dict] | None, as_of: str) -> pa.Table:
    """Scoring (trusted boundary, real ids): `table` (user_id = real id) with the model's attribute
    columns as of `as_of`, from the connection's `user_attributes` view (scoring_frames.connect)."""
    if not spec:
        return table
    has_view = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [TABLE]).fetchone()[0]
    src = (f"SELECT user_id AS ukey, name, as_of, value_num, value_str FROM {TABLE}" if has_view else
           "SELECT NULL::VARCHAR AS ukey, NULL::VARCHAR AS name, NULL::TIMESTAMP AS as_of, NULL::DOUBLE AS value_num, "
           "NULL::VARCHAR AS value_str WHERE false")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _attr AS {src}")
    return attach(con, table, spec, as_of=as_of)
