"""The raw data contract as code: one Great Expectations 1.x suite per raw table, plus the
cross-table rules GX cannot express (checked with DuckDB beside it).

Every rule has a stable id `<table>.<column|key|schema>.<check>`; that id is what lands in the
quarantine `_rule` column, in error messages and in the validation report, so keep ids stable
when editing rules (add new ids rather than renaming old ones).

Rule levels:
- batch: schema (column set/order, types), readable files (parquet, or UTF-8 comma-separated
  CSV), non-empty table, volume within a band of the previous batch, quarantine share under the
  threshold. A failure fails the whole batch.
- row: one bad row is quarantined with the ids of every rule it broke.

Cleaning (not rules: nothing is quarantined, every change is counted in the report):
- exact duplicate events (same user_id, event_type, category, price, ts, whatever the event_id)
  are removed, keeping the first copy in file/row order (`DEDUP_KEYS`);
- missing categorical values are filled on the valid rows (`FILLS`).

Engines: the GX suite (`build_suite`) is the contract; `sql_predicates` translates the same
expectation specs, one by one, into DuckDB predicates that find the failing rows of a whole
batch out of core. Every run cross-checks the two on a sample (validate.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from campaignops.validation.contract import (
    CAMPAIGN_TYPES,
    CHANNELS,
    CONTROL,
    EVENT_TYPES,
    GENDERS,
    OPTIONAL_COLUMNS,
    PRIMARY_KEYS,
    SCHEMAS,
    TABLES,
)

# Columns that may be null; every other contract column is required.
NULLABLE: dict[str, frozenset[str]] = {
    "users": frozenset({"region", "occupation"}),
    "events": frozenset({"category"}),  # unknown category → the model's out-of-vocabulary token
    "campaigns": frozenset({"target_category"}),
    "exposures": frozenset({"propensity"}),  # optional column (contract.OPTIONAL_COLUMNS): null = unknown
    "user_attributes": frozenset({"value_num", "value_str"}),  # exactly one set (rules below)
}

AGE_RANGE = (13, 110)
MAX_STRING_LENGTH = 1024  # default of params validate.max_string_length

# Declared cleaning rules (see module docstring). Fills apply to valid rows only; quarantined
# rows keep their raw values.
FILLS: dict[str, dict[str, str]] = {
    "users": {"region": "unknown", "occupation": "unknown"},
    "events": {"category": "unknown"},
    "campaigns": {},   # a null target_category means "no target category", not unknown
    "exposures": {},
    "user_attributes": {},
}
DEDUP_KEYS: dict[str, tuple[str, ...]] = {
    "events": ("user_id", "event_type", "category", "price", "ts"),
}

BATCH = "batch"
ROW = "row"


@dataclass(frozen=True)
class Rule:
    id: str
    table: str
    level: str  # BATCH or ROW
    description: str
    engine: str  # "gx", "arrow" (schema, checked per file) or "duckdb" (cross-table)


def rule_id(*parts: str) -> str:
    return ".".join(parts)


def required_columns(table: str) -> list[str]:
    return [f.name for f in SCHEMAS[table] if f.name not in NULLABLE[table]]


def schema_rules(table: str) -> list[Rule]:
    return [
        Rule(rule_id(table, "schema", "columns"), table, BATCH,
             f"columns are exactly {SCHEMAS[table].names} in this order"
             + (f" (a file may omit the trailing optional {list(OPTIONAL_COLUMNS[table])})"
                if OPTIONAL_COLUMNS.get(table) else ""), "arrow"),
        Rule(rule_id(table, "schema", "types"), table, BATCH,
             "every column has its contract type", "arrow"),
        Rule(rule_id(table, "manifest", "present"), table, BATCH, "the raw manifest lists the table", "arrow"),
        Rule(rule_id(table, "manifest", "rows"), table, BATCH,
             "the files hold as many rows as the manifest says", "arrow"),
        Rule(rule_id(table, "file", "present"), table, BATCH, "every listed file can be fetched", "arrow"),
        Rule(rule_id(table, "file", "unchanged"), table, BATCH, "every file's ETag is the one seen at ingest", "arrow"),
        Rule(rule_id(table, "file", "readable"), table, BATCH,
             "every file is readable parquet or CSV (non-empty, not truncated)", "arrow"),
        Rule(rule_id(table, "file", "encoding"), table, BATCH, "CSV files are UTF-8", "arrow"),
        Rule(rule_id(table, "file", "delimiter"), table, BATCH, "CSV files are comma-separated with a header", "arrow"),
        Rule(rule_id(table, "rows", "volume"), table, BATCH,
             "rows in is within [volume_min_ratio, volume_max_ratio] x the previous batch's (first batch: noted)",
             "history"),
        Rule(rule_id(table, "rows", "quarantine_rate"), table, BATCH,
             "quarantined share of rows <= max_quarantine_rate", "report"),
    ]


# --------------------------------------------------------------------------- cross-table rules

CROSS_TABLE_RULES: dict[str, list[Rule]] = {
    "users": [],
    "campaigns": [],
    "events": [
        Rule("events.user_id.in_users", "events", ROW, "user_id is a validated user", "duckdb"),
    ],
    "exposures": [
        Rule("exposures.user_id.in_users", "exposures", ROW, "user_id is a validated user", "duckdb"),
        Rule("exposures.variant_id.in_campaigns", "exposures", ROW,
             f"(campaign_id, variant_id) is a validated campaign variant, or variant_id == {CONTROL!r} "
             "for a validated campaign", "duckdb"),
        Rule("exposures.exposure_ts.in_campaign_window", "exposures", ROW,
             "campaign start_ts <= exposure_ts <= end_ts (window of the campaign's validated variants)",
             "duckdb"),
    ],
    "user_attributes": [
        Rule("user_attributes.user_id.in_users", "user_attributes", ROW, "user_id is a validated user", "duckdb"),
    ],
}
ATTRIBUTE_NAME_REGEX = "^[A-Za-z][A-Za-z0-9_]{0,63}$"  # becomes part of a feature column name


def _in_users_sql(table: str) -> str:
    """Rows of `table` whose (non-null) user_id is not a validated user."""
    return f"""
                SELECT t._row FROM {table} t
                WHERE t.user_id IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM valid_users u WHERE u.user_id = t.user_id)"""


def cross_table_sql(table: str) -> dict[str, str]:
    """rule id → SQL returning the `_row` of every violating row. Relations: `<table>` (raw rows
    with `_row`) and `valid_<parent>` (parent rows that passed their own rules)."""
    if table in ("events", "user_attributes"):
        return {f"{table}.user_id.in_users": _in_users_sql(table)}
    if table == "exposures":
        return {
            "exposures.user_id.in_users": _in_users_sql("exposures"),
            "exposures.variant_id.in_campaigns": f"""
                SELECT x._row FROM exposures x
                WHERE x.campaign_id IS NOT NULL AND x.variant_id IS NOT NULL
                  AND NOT EXISTS (
                    SELECT 1 FROM valid_campaigns c
                    WHERE c.campaign_id = x.campaign_id
                      AND (c.variant_id = x.variant_id OR x.variant_id = '{CONTROL}'))""",
            "exposures.exposure_ts.in_campaign_window": """
                WITH w AS (SELECT campaign_id, min(start_ts) AS s, max(end_ts) AS e
                           FROM valid_campaigns GROUP BY campaign_id)
                SELECT x._row FROM exposures x JOIN w ON w.campaign_id = x.campaign_id
                WHERE x.exposure_ts < w.s OR x.exposure_ts > w.e""",
        }
    return {}


# --------------------------------------------------------------------------- GX suites

def _pandas_dtype_name(t: pa.DataType) -> str:
    """The pandas dtype a contract column has in the frame GX validates (see `to_pandas`)."""
    if pa.types.is_string(t):
        return "str"
    if pa.types.is_int32(t):
        return "int32"
    if pa.types.is_int8(t):
        return "int8"
    if pa.types.is_float64(t):
        return "float64"
    if pa.types.is_timestamp(t):
        return f"datetime64[{t.unit}]"
    raise TypeError(f"no pandas dtype mapping for {t}")


def to_pandas(table: pa.Table):
    """Arrow → pandas for GX: nullable integer dtypes so a null never turns an int column float."""
    import pandas as pd

    mapping = {pa.int8(): pd.Int8Dtype(), pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}
    return table.to_pandas(types_mapper=mapping.get)


def _row_specs(table: str, now: datetime, max_len: int = MAX_STRING_LENGTH) -> list[tuple[str, str, type, dict]]:
    """(rule id, description, expectation class, kwargs) for the row-level GX rules of a table."""
    import great_expectations.expectations as gxe

    specs: list[tuple[str, str, type, dict]] = []
    for col in required_columns(table):
        specs.append((rule_id(table, col, "not_null"), f"{col} is not null",
                      gxe.ExpectColumnValuesToNotBeNull, {"column": col}))
    key = PRIMARY_KEYS[table]
    if len(key) == 1:
        specs.append((rule_id(table, key[0], "unique"), f"{key[0]} is unique in the batch (all copies quarantined)",
                      gxe.ExpectColumnValuesToBeUnique, {"column": key[0]}))
    else:
        specs.append((rule_id(table, "key", "unique"), f"({', '.join(key)}) is unique in the batch (all copies quarantined)",
                      gxe.ExpectCompoundColumnsToBeUnique, {"column_list": list(key)}))

    def between(col, lo=None, hi=None, name="range", desc=None):
        kw = {"column": col}
        if lo is not None:
            kw["min_value"] = lo
        if hi is not None:
            kw["max_value"] = hi
        specs.append((rule_id(table, col, name), desc or f"{lo} <= {col} <= {hi}", gxe.ExpectColumnValuesToBeBetween, kw))

    def in_set(col, values, name="allowed"):
        specs.append((rule_id(table, col, name), f"{col} in {sorted(values)}",
                      gxe.ExpectColumnValuesToBeInSet, {"column": col, "value_set": list(values)}))

    now_desc = f"<= batch now ({now.isoformat()})"
    if table == "users":
        between("age", *AGE_RANGE)
        in_set("gender", GENDERS)
        between("signup_ts", hi=now, name="not_future", desc=f"signup_ts {now_desc}")
    elif table == "events":
        in_set("event_type", EVENT_TYPES)
        between("price", lo=0, name="non_negative", desc="price >= 0")
        between("ts", hi=now, name="not_future", desc=f"ts {now_desc}")
    elif table == "campaigns":
        in_set("type", CAMPAIGN_TYPES)
        in_set("channel", CHANNELS)
        between("discount_rate", 0, 1)
        between("cost_per_send", lo=0, name="non_negative", desc="cost_per_send >= 0")
        specs.append(("campaigns.variant_id.not_control", f"variant_id != {CONTROL!r} (control is implicit)",
                      gxe.ExpectColumnValuesToNotBeInSet, {"column": "variant_id", "value_set": [CONTROL]}))
        specs.append(("campaigns.start_ts.before_end_ts", "start_ts < end_ts",
                      gxe.ExpectColumnPairValuesAToBeGreaterThanB,
                      {"column_A": "end_ts", "column_B": "start_ts", "or_equal": False,
                       "ignore_row_if": "either_value_is_missing"}))
    elif table == "exposures":
        in_set("responded", (0, 1))
        between("revenue", lo=0, name="non_negative", desc="revenue >= 0")
        between("exposure_ts", hi=now, name="not_future", desc=f"exposure_ts {now_desc}")
        specs.append(("exposures.propensity.range", "propensity is null (unknown) or 0 < propensity <= 1: a logged "
                      "arm had a non-zero chance under its policy", gxe.ExpectColumnValuesToBeBetween,
                      {"column": "propensity", "min_value": 0.0, "max_value": 1.0, "strict_min": True}))
    elif table == "user_attributes":
        between("as_of", hi=now, name="not_future", desc=f"as_of {now_desc}")
        specs.append(("user_attributes.name.format", f"name matches {ATTRIBUTE_NAME_REGEX}",
                      gxe.ExpectColumnValuesToMatchRegex, {"column": "name", "regex": ATTRIBUTE_NAME_REGEX}))
        specs.append(("user_attributes.value.both_set", "not both value_num and value_str are set",
                      gxe.ExpectColumnValuesToBeNull,
                      {"column": "value_str", "row_condition": "value_num.notna()", "condition_parser": "pandas"}))
        specs.append(("user_attributes.value.none_set", "one of value_num (numeric) / value_str (categorical) is set",
                      gxe.ExpectColumnValuesToNotBeNull,
                      {"column": "value_str", "row_condition": "value_num.isna()", "condition_parser": "pandas"}))
    for f in SCHEMAS[table]:
        if pa.types.is_string(f.type):
            specs.append((rule_id(table, f.name, "max_length"), f"len({f.name}) <= {max_len}",
                          gxe.ExpectColumnValueLengthsToBeBetween, {"column": f.name, "max_value": max_len}))
    return specs


def _batch_specs(table: str, allow_empty: bool = False) -> list[tuple[str, str, type, dict]]:
    import great_expectations.expectations as gxe

    schema = SCHEMAS[table]
    specs = [
        (rule_id(table, "schema", "columns"), f"columns are exactly {schema.names} in this order",
         gxe.ExpectTableColumnsToMatchOrderedList, {"column_list": list(schema.names)}),
        (rule_id(table, "rows", "non_empty"), "the table has at least one row (unless declared empty by design)",
         gxe.ExpectTableRowCountToBeBetween, {"min_value": 0 if allow_empty else 1}),
    ]
    for field in schema:
        specs.append((rule_id(table, "schema", "types"), f"{field.name} has type {field.type}",
                      gxe.ExpectColumnValuesToBeOfType,
                      {"column": field.name, "type_": _pandas_dtype_name(field.type)}))
    return specs


def build_suite(table: str, now: datetime, max_len: int = MAX_STRING_LENGTH, allow_empty: bool = False):
    """The GX ExpectationSuite for one raw table. `now` is the batch's as-of time (time sanity);
    `allow_empty`: the producer declared the table empty by design (contract.MAY_BE_EMPTY)."""
    import great_expectations as gx

    expectations = [cls(**kwargs, meta={"rule_id": rid, "level": level}, description=f"[{rid}] {desc}")
                    for level, specs in ((BATCH, _batch_specs(table, allow_empty)),
                                         (ROW, _row_specs(table, now, max_len)))
                    for rid, desc, cls, kwargs in specs]
    # Built without a data context (add_expectation would need one); add it with context.suites.add.
    return gx.ExpectationSuite(name=f"raw.{table}", expectations=expectations,
                               meta={"contract": "campaignops.validation.contract"})


def rules(table: str, now: datetime | None = None) -> list[Rule]:
    """Every rule of a table (ids unique; schema.types covers all columns)."""
    now = now or datetime(2000, 1, 1)
    out: dict[str, Rule] = {r.id: r for r in schema_rules(table)}
    for rid, desc, _, _ in _batch_specs(table):
        out.setdefault(rid, Rule(rid, table, BATCH, desc, "gx"))
    for rid, desc, _, _ in _row_specs(table, now):
        out[rid] = Rule(rid, table, ROW, desc, "gx")
    for r in CROSS_TABLE_RULES[table]:
        out[r.id] = r
    return list(out.values())


def all_rule_ids() -> list[str]:
    return [r.id for t in TABLES for r in rules(t)]  # required tables; rules(t) for optional ones


# --------------------------------------------------------------------------- SQL twin of the suite

def _sql_literal(v) -> str:
    if isinstance(v, datetime):
        return f"TIMESTAMP '{v.isoformat(sep=' ')}'"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    if isinstance(v, (int, float)):
        return repr(v)
    raise TypeError(f"no SQL literal for {v!r}")


def _q(col: str) -> str:
    return f'x."{col}"'


def sql_predicates(table: str, now: datetime, rel: str, max_len: int = MAX_STRING_LENGTH) -> list[tuple[str, str]]:
    """(rule id, DuckDB predicate true for a failing row) for every GX row rule of `table`, in
    suite order, translated from the same specs `build_suite` uses. The row is aliased `x`;
    uniqueness is over relation `rel`. Semantics follow GX's pandas engine: map expectations
    ignore nulls (and NaN, which pandas counts as null)."""
    floats = {f.name for f in SCHEMAS[table] if pa.types.is_floating(f.type)}

    def present(c):
        return f"{_q(c)} IS NOT NULL" + (f" AND NOT isnan({_q(c)})" if c in floats else "")

    conditions = {"value_num.notna()": present("value_num"), "value_num.isna()": f"NOT ({present('value_num')})"}
    out = []
    for rid, _, cls, kw in _row_specs(table, now, max_len):
        name = cls.__name__
        c = kw.get("column")
        if name == "ExpectColumnValuesToNotBeNull":
            pred = f"NOT ({present(c)})"
        elif name == "ExpectColumnValuesToBeNull":
            pred = present(c)
        elif name == "ExpectColumnValuesToMatchRegex":
            # GX (pandas) uses re.match: anchored at the start; `$` also matches before a final newline
            body = kw["regex"].removeprefix("^").removesuffix("$")
            pred = f"{present(c)} AND NOT regexp_full_match({_q(c)}, {_sql_literal(body + chr(10) + '?')})"
        elif name == "ExpectColumnValuesToBeUnique":
            # Hashes first (8 bytes a row, not the string): only rows whose hash repeats are
            # grouped by value, so 40M distinct ids fit the step's memory limit.
            pred = (f'{_q(c)} IN (SELECT "{c}" FROM {rel} WHERE hash("{c}") IN '
                    f'(SELECT hash("{c}") FROM {rel} GROUP BY ALL HAVING count(*) > 1) GROUP BY ALL HAVING count(*) > 1)')
        elif name == "ExpectCompoundColumnsToBeUnique":
            cols = kw["column_list"]
            sel = ", ".join(f'"{k}"' for k in cols)
            match = " AND ".join(f'd."{k}" IS NOT DISTINCT FROM {_q(k)}' for k in cols)
            pred = (f"NOT ({' AND '.join(f'{_q(k)} IS NULL' for k in cols)}) AND EXISTS (SELECT 1 FROM "
                    f"(SELECT {sel} FROM {rel} GROUP BY ALL HAVING count(*) > 1) d WHERE {match})")
        elif name == "ExpectColumnValuesToBeBetween":
            bounds = []
            if "min_value" in kw:
                bounds.append(f"{_q(c)} {'<=' if kw.get('strict_min') else '<'} {_sql_literal(kw['min_value'])}")
            if "max_value" in kw:
                bounds.append(f"{_q(c)} {'>=' if kw.get('strict_max') else '>'} {_sql_literal(kw['max_value'])}")
            pred = f"{present(c)} AND ({' OR '.join(bounds)})"
        elif name in ("ExpectColumnValuesToBeInSet", "ExpectColumnValuesToNotBeInSet"):
            values = ", ".join(_sql_literal(v) for v in kw["value_set"])
            neg = "NOT " if name == "ExpectColumnValuesToBeInSet" else ""
            pred = f"{present(c)} AND {_q(c)} {neg}IN ({values})"
        elif name == "ExpectColumnPairValuesAToBeGreaterThanB":
            a, b = kw["column_A"], kw["column_B"]
            op = ">=" if kw.get("or_equal") else ">"
            pred = f"{present(a)} AND {present(b)} AND NOT ({_q(a)} {op} {_q(b)})"
        elif name == "ExpectColumnValueLengthsToBeBetween":
            pred = f"{present(c)} AND length({_q(c)}) > {int(kw['max_value'])}"
        else:
            raise NotImplementedError(f"no SQL translation for {name} (rule {rid}); add one beside the spec")
        if "row_condition" in kw:
            pred = f"({conditions[kw['row_condition']]}) AND ({pred})"
        out.append((rid, pred))
    return out


def cross_table_predicates(table: str) -> list[tuple[str, str]]:
    """(rule id, predicate) of the cross-table rules, over relations `valid_users(user_id)`,
    `valid_campaigns(campaign_id, variant_id, start_ts, end_ts)` (parents that passed their own
    rules); the row is aliased `x`."""
    if table == "events":
        return [("events.user_id.in_users",
                 "x.user_id IS NOT NULL AND x.user_id NOT IN (SELECT user_id FROM valid_users)")]
    if table == "exposures":
        return [
            ("exposures.user_id.in_users",
             "x.user_id IS NOT NULL AND x.user_id NOT IN (SELECT user_id FROM valid_users)"),
            ("exposures.variant_id.in_campaigns",
             f"x.campaign_id IS NOT NULL AND x.variant_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM valid_campaigns c "
             f"WHERE c.campaign_id = x.campaign_id AND (c.variant_id = x.variant_id OR x.variant_id = '{CONTROL}'))"),
            ("exposures.exposure_ts.in_campaign_window",
             "EXISTS (SELECT 1 FROM (SELECT campaign_id, min(start_ts) AS s, max(end_ts) AS e FROM valid_campaigns "
             "GROUP BY campaign_id) w WHERE w.campaign_id = x.campaign_id "
             "AND (x.exposure_ts < w.s OR x.exposure_ts > w.e))"),
        ]
    if table == "user_attributes":
        return [("user_attributes.user_id.in_users",
                 "x.user_id IS NOT NULL AND x.user_id NOT IN (SELECT user_id FROM valid_users)")]
    return []
