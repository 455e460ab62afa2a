"""The contract-as-code suites: rule ids, GX detection on in-memory tables, schema checks, split."""
from __future__ import annotations

import re
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest

from campaignops.pipelines import validate
from campaignops.validation import suites
from campaignops.validation.contract import PRIMARY_KEYS, SCHEMAS, TABLES

NOW = datetime(2026, 5, 20)


def test_rule_ids_are_stable_unique_and_well_formed():
    ids = suites.all_rule_ids()
    assert len(ids) == len(set(ids))
    for rid in ids:
        assert re.fullmatch(r"[a-z]+\.[a-z_]+\.[a-z_]+", rid), rid
    for t in TABLES:
        assert any(r.endswith(".unique") for r in ids if r.startswith(t + ".")), t
    expected = {"events.price.non_negative", "events.event_type.allowed", "events.ts.not_future",
                "events.event_id.unique", "events.user_id.not_null", "events.user_id.in_users",
                "users.age.range", "users.gender.allowed", "campaigns.discount_rate.range",
                "campaigns.cost_per_send.non_negative", "campaigns.type.allowed", "campaigns.channel.allowed",
                "campaigns.key.unique", "campaigns.start_ts.before_end_ts", "exposures.revenue.non_negative",
                "exposures.responded.allowed", "exposures.user_id.in_users", "exposures.variant_id.in_campaigns",
                "exposures.exposure_ts.in_campaign_window", "users.schema.columns", "users.schema.types"}
    assert expected <= set(ids)


@pytest.mark.parametrize("table", TABLES)
def test_suite_builds_and_covers_contract(table):
    suite = suites.build_suite(table, NOW)
    metas = [e.meta["rule_id"] for e in suite.expectations]
    assert f"{table}.schema.columns" in metas
    for col in suites.required_columns(table):
        assert f"{table}.{col}.not_null" in metas
    assert set(metas) <= {r.id for r in suites.rules(table, NOW)}
    assert PRIMARY_KEYS[table]


def raw(table, rows) -> validate.RawTable:
    t = pa.Table.from_pylist(rows, SCHEMAS[table])
    return validate.RawTable(table, t, ["f0"], np.zeros(t.num_rows, np.int32), np.arange(t.num_rows))


def test_gx_flags_each_row_rule_and_index(tmp_path):
    users = [{"user_id": "u1", "age": 30, "gender": "F", "region": None, "occupation": None, "signup_ts": datetime(2025, 1, 1)},
             {"user_id": "u2", "age": 111, "gender": "X", "region": "r", "occupation": "o", "signup_ts": datetime(2027, 1, 1)},
             {"user_id": "u1", "age": None, "gender": "M", "region": "r", "occupation": "o", "signup_ts": datetime(2025, 1, 1)}]
    camps = [{"campaign_id": "C", "variant_id": "control", "type": "coupon", "discount_rate": 1.5, "channel": "fax",
              "target_category": None, "cost_per_send": -1.0, "start_ts": datetime(2026, 1, 2), "end_ts": datetime(2026, 1, 1)}]
    raws = {"users": raw("users", users), "campaigns": raw("campaigns", camps),
            "events": raw("events", []), "exposures": raw("exposures", [])}
    # empty child tables are a batch-level failure: check it is reported as such
    with pytest.raises(validate.BatchRejected, match="rows.non_empty"):
        validate.run_gx(raws, NOW, "r1", tmp_path)
    hits = {k: v.tolist() for k, v in raws["users"].hits.items()}
    assert hits == {"users.user_id.unique": [0, 2], "users.age.not_null": [2], "users.age.range": [1],
                    "users.gender.allowed": [1], "users.signup_ts.not_future": [1]}
    chits = {k: v.tolist() for k, v in raws["campaigns"].hits.items()}
    assert chits == {k: [0] for k in ("campaigns.variant_id.not_control", "campaigns.start_ts.before_end_ts",
                                       "campaigns.discount_rate.range", "campaigns.channel.allowed",
                                       "campaigns.cost_per_send.non_negative")}


def test_split_joins_rules_in_stable_order_and_keeps_provenance():
    r = raw("users", [{"user_id": f"u{i}", "age": 30, "gender": "F", "region": None, "occupation": None,
                       "signup_ts": datetime(2025, 1, 1)} for i in range(5)])
    r.files, r.file_idx, r.source_row = ["a", "b"], np.array([0, 0, 1, 1, 1], np.int32), np.array([0, 1, 0, 1, 2])
    r.hits = {"users.gender.allowed": np.array([1, 3]), "users.age.range": np.array([3])}
    order = [x.id for x in suites.rules("users")]
    valid, q = validate.split(r, order)
    assert valid.column("user_id").to_pylist() == ["u0", "u2", "u4"]
    assert valid.schema.equals(SCHEMAS["users"])
    assert q.select(["user_id", "_rule", "_source_file", "_source_row"]).to_pylist() == [
        {"user_id": "u1", "_rule": "users.gender.allowed", "_source_file": "a", "_source_row": 1},
        {"user_id": "u3", "_rule": "users.age.range;users.gender.allowed", "_source_file": "b", "_source_row": 1}]


def test_schema_check_accepts_equivalent_string_and_null_types_only():
    rows = [{"user_id": "u1", "age": 30, "gender": "F", "region": None, "occupation": None, "signup_ts": datetime(2025, 1, 1)}]
    t = pa.Table.from_pylist(rows, SCHEMAS["users"])
    loose = t.set_column(0, "user_id", t.column("user_id").cast(pa.large_string())) \
             .set_column(3, "region", pa.nulls(1, pa.null()))
    assert validate.check_schema(loose, "users", "s3://b/f").schema.equals(SCHEMAS["users"])
    with pytest.raises(validate.BatchRejected, match=r"users.schema.types.*'signup_ts'.*timestamp\[us\]"):
        validate.check_schema(t.set_column(5, "signup_ts", t.column("signup_ts").cast(pa.timestamp("us"))), "users", "s3://b/f")
    with pytest.raises(validate.BatchRejected, match="column order"):
        validate.check_schema(t.select(list(reversed(t.column_names))), "users", "s3://b/f")
    with pytest.raises(validate.BatchRejected, match=r"unexpected column\(s\) \['extra'\]"):
        validate.check_schema(t.append_column("extra", pa.array([1])), "users", "s3://b/f")


def test_propensity_rule_flags_zero_and_out_of_range_in_gx_and_sql(tmp_path):
    values = [0.3, None, 1.0, 0.0, 1.5, -0.2, float("nan"), 1e-9]
    rows = [{"exposure_id": f"x{i}", "user_id": "u1", "campaign_id": "C", "variant_id": "control",
             "exposure_ts": datetime(2026, 1, 1), "responded": 0, "revenue": 0.0, "propensity": p}
            for i, p in enumerate(values)]
    r = raw("exposures", rows)
    validate.run_gx({"exposures": r}, NOW, "r1", tmp_path)
    assert {k: v.tolist() for k, v in r.hits.items()} == {"exposures.propensity.range": [3, 4, 5]}  # null/NaN = unknown
    engine = validate.Engine(NOW)
    try:
        validate.cross_check(r, engine.sql_hits(r))
    finally:
        engine.close()
    assert "exposures.propensity.not_null" not in {x.id for x in suites.rules("exposures")}


def test_optional_trailing_column_may_be_omitted_from_a_file(tmp_path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from campaignops.validation.contract import OPTIONAL_COLUMNS, accepts_columns, required_schema

    assert OPTIONAL_COLUMNS["exposures"] == ("propensity",) and SCHEMAS["exposures"].names[-1] == "propensity"
    names = SCHEMAS["exposures"].names
    assert accepts_columns("exposures", names) and accepts_columns("exposures", names[:-1])
    assert not accepts_columns("exposures", names[:-2]) and not accepts_columns("users", SCHEMAS["users"].names[:-1])
    t = pa.Table.from_pylist([{"exposure_id": "x1", "user_id": "u1", "campaign_id": "C", "variant_id": "control",
                               "exposure_ts": datetime(2026, 1, 1), "responded": 1, "revenue": 2.5}],
                             required_schema("exposures"))
    for fmt in ("parquet", "csv"):
        path = tmp_path / f"part.{fmt}"
        pq.write_table(t, path) if fmt == "parquet" else pacsv.write_csv(t, path)
        staged, rows = validate.stage_file(path, "exposures", f"s3://b/part.{fmt}", tmp_path)
        out = pq.read_table(staged)
        assert rows == 1 and out.schema.equals(SCHEMAS["exposures"]) and out.column("propensity").null_count == 1
    with pytest.raises(validate.BatchRejected, match=r"exposures.schema.columns.*missing column\(s\) \['revenue'\]"):
        validate.check_schema(t.drop_columns(["revenue"]), "exposures", "s3://b/f")
