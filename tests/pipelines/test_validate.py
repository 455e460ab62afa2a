"""Validate stage on moto S3: clean batch, injected bad rows, thresholds, schema and file errors,
atomic output."""
from __future__ import annotations

import io
import json
from datetime import timedelta

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from campaignops.pipelines import ingest, layout, validate
from campaignops.pipelines.storage import ObjectStore
from campaignops.validation.contract import SCHEMAS
from worlds import NOW, T0, land_world, put_parquet, small_world, without_column

BATCH = "t1"


@pytest.fixture
def s3(workspace, monkeypatch):
    params = workspace.params
    params["data"]["batch"] = BATCH
    with mock_aws():
        store = ObjectStore(workspace, client=boto3.client("s3", region_name="us-east-1"))
        store.ensure_bucket()
        yield workspace, store


def run_validate(settings, store, world, batch=BATCH, **kw):
    land_world(store, world, batch, **kw)
    ingest.ingest(settings, store=store)
    return validate.run(settings, store=store)


def quarantine_rows(store, table, batch=BATCH) -> list[dict]:
    keys = store.list_keys(layout.quarantine_prefix(table, batch))
    return [r for k in keys for r in store.read_table(k).to_pylist()]


def test_clean_batch_is_all_valid(s3):
    settings, store = s3
    world = small_world()
    report = run_validate(settings, store, world)
    assert report["passed"] and report["status"] == "passed"
    vdir = settings.workspace / layout.VALIDATED_DIR
    for table, rows in world.items():
        t = report["tables"][table]
        assert t["rows_in"] == t["rows_valid"] == len(rows) and t["rows_quarantined"] == 0
        assert t["gx"]["success"] is True
        out = pq.read_table(vdir / f"{table}.parquet")
        assert out.schema.equals(SCHEMAS[table]), table  # contract columns and types only
        assert out.num_rows == len(rows)
    assert store.list_keys("quarantine/") == []
    # reports: local == S3, docs uploaded
    local = json.loads((settings.workspace / "reports/validation.json").read_text())
    assert local["run_id"] == report["run_id"]
    prefix = layout.validation_prefix(BATCH, report["run_id"])
    assert store.get_json(prefix + "result.json")["run_id"] == report["run_id"]
    assert local["result_uri"] == store.uri(prefix + "result.json")
    assert local["docs_uri"] == store.uri(prefix + "docs/index.html")
    assert store.exists(prefix + "docs/index.html")
    assert any("/validations/" in k and k.endswith(".html") for k in store.list_keys(prefix + "docs/"))


def test_bad_rows_are_quarantined_with_rule_and_source_row(s3):
    settings, store = s3
    settings.params["validate"]["max_quarantine_rate"] = 1.0  # inspect, don't fail
    world = small_world(users=10, events_per_user=10)  # 100 events → 2 files of 50
    ev = world["events"]
    ev[3]["price"] = -1.0                                    # events.price.non_negative
    ev[7]["event_type"] = "teleport"                         # events.event_type.allowed
    ev[12]["user_id"] = None                                 # events.user_id.not_null
    ev[55]["event_id"] = ev[54]["event_id"]                  # events.event_id.unique (both copies)
    ev[60]["ts"] = NOW + timedelta(days=1)                   # events.ts.not_future
    ev[61]["user_id"] = "ghost"                              # events.user_id.in_users
    ev[62]["price"] = -2.0
    ev[62]["event_type"] = "nope"                            # two rules on one row
    world["exposures"][4]["user_id"] = "ghost"               # exposures.user_id.in_users
    world["exposures"][5]["variant_id"] = "C1-V9"            # exposures.variant_id.in_campaigns
    world["exposures"][6]["exposure_ts"] = T0 + timedelta(days=15)  # outside C1's window
    world["campaigns"][3]["start_ts"] = world["campaigns"][3]["end_ts"]  # C2-V2 start == end
    world["users"][9]["age"] = 7                             # users.age.range → u9's rows cascade

    report = run_validate(settings, store, world)
    q = {t: quarantine_rows(store, t) for t in world}

    ev_q = {(r["_source_file"], r["_source_row"]): r["_rule"] for r in q["events"]}
    f0, f1 = (f"raw/{BATCH}/events/part-0000{i}.parquet" for i in (0, 1))
    assert ev_q[(f0, 3)] == "events.price.non_negative"
    assert ev_q[(f0, 7)] == "events.event_type.allowed"
    assert ev_q[(f0, 12)] == "events.user_id.not_null"
    assert ev_q[(f1, 4)] == ev_q[(f1, 5)] == "events.event_id.unique"
    assert ev_q[(f1, 10)] == "events.ts.not_future"
    assert ev_q[(f1, 11)] == "events.user_id.in_users"
    assert set(ev_q[(f1, 12)].split(";")) == {"events.price.non_negative", "events.event_type.allowed"}
    # u9 (invalid age) → its 10 events fail referential integrity
    assert sum(1 for r in q["events"] if r["user_id"] == "u9" and r["_rule"] == "events.user_id.in_users") == 10
    assert {r["event_id"] for r in q["events"]} >= {ev[3]["event_id"], ev[7]["event_id"]}

    x_q = {r["exposure_id"]: r["_rule"] for r in q["exposures"]}
    assert x_q["x4"] == "exposures.user_id.in_users"
    assert x_q["x5"] == "exposures.variant_id.in_campaigns"
    assert x_q["x6"] == "exposures.exposure_ts.in_campaign_window"
    assert x_q["x9"] == "exposures.user_id.in_users"  # u9 cascade
    c_q = [r for r in q["campaigns"]]
    assert [(r["variant_id"], r["_rule"], r["_source_row"]) for r in c_q] == \
        [("C2-V2", "campaigns.start_ts.before_end_ts", 1)]
    assert [(r["user_id"], r["_rule"]) for r in q["users"]] == [("u9", "users.age.range")]

    vdir = settings.workspace / layout.VALIDATED_DIR
    for table, rows in world.items():
        t = report["tables"][table]
        assert t["rows_in"] == len(rows) == t["rows_valid"] + t["rows_quarantined"], table
        assert t["rows_quarantined"] == len(q[table])
        assert pq.read_table(vdir / f"{table}.parquet").num_rows == t["rows_valid"]
        assert set(q[table][0]) == set(SCHEMAS[table].names) | {"_rule", "_source_file", "_source_row"}
    assert report["tables"]["events"]["rule_counts"]["events.event_id.unique"] == 2
    assert report["tables"]["events"]["rule_counts"]["events.price.non_negative"] == 2
    valid_events = pq.read_table(vdir / "events.parquet").column("event_id").to_pylist()
    assert len(valid_events) == len(set(valid_events))


def test_rate_over_threshold_fails_after_writing_quarantine_and_reports(s3):
    settings, store = s3
    world = small_world()
    for e in world["events"][:5]:  # 5 of 40 = 12.5% > 5%
        e["price"] = -1.0
    previous = run_validate(settings, store, small_world())  # a good run before
    with pytest.raises(validate.ValidationFailed) as err:
        run_validate(settings, store, world)
    msg = str(err.value)
    assert "events" in msg and "events.price.non_negative=5" in msg and "12.50%" in msg and "5.00%" in msg
    # the failed run's report goes beside the last good one, which still describes data/validated
    report = json.loads((settings.workspace / "reports/validation_failed.json").read_text())
    assert report["passed"] is False and report["failures"][0]["table"] == "events"
    assert report["run_id"] != previous["run_id"] and report["run_id"] in msg
    good = json.loads((settings.workspace / "reports/validation.json").read_text())
    assert good["run_id"] == previous["run_id"] and good["passed"] is True
    assert store.get_json(layout.validation_prefix(BATCH, report["run_id"]) + "result.json")["status"] == "failed"
    assert len(quarantine_rows(store, "events")) == 5
    assert store.exists(layout.validation_prefix(BATCH, report["run_id"]) + "result.json")
    # the previous validated data is left in place
    events = pq.read_table(settings.workspace / layout.VALIDATED_DIR / "events.parquet")
    assert events.num_rows == 40 and min(events.column("price").to_pylist()) >= 0


def test_missing_column_rejects_batch_naming_file_and_column(s3):
    settings, store = s3
    world, schemas = without_column(small_world(), "events", "price")
    with pytest.raises(validate.BatchRejected) as err:
        run_validate(settings, store, world, schemas=schemas)
    msg = str(err.value)
    assert f"raw/{BATCH}/events/part-00000.parquet" in msg and "'price'" in msg and "events.schema.columns" in msg
    assert not (settings.workspace / layout.VALIDATED_DIR).exists()
    assert not (settings.workspace / "reports/validation.json").exists()
    # the rejection is reported in the workspace too (the DAG fails at once on it, without retries)
    failed = json.loads((settings.workspace / "reports/validation_failed.json").read_text())
    assert failed["status"] == "rejected" and failed["passed"] is False and failed["error"] == msg
    assert failed["failures"] == [{"rule": "events.schema.columns", "message": msg}]
    assert store.get_json(layout.validation_prefix(BATCH, failed["run_id"]) + "result.json") == failed


def test_a_rejected_batch_leaves_the_last_good_validated_data_and_report(s3):
    """Item 3 of issue 17, at the step: after a good batch, a schema-broken one is refused before
    any output is touched; data/validated and reports/validation.json still describe the good one,
    and the report's table hashes tie it to the files (what scoring checks)."""
    from campaignops.pipelines.validate_report import table_hashes, validated_record

    settings, store = s3
    good = run_validate(settings, store, small_world())
    vdir = settings.workspace / layout.VALIDATED_DIR
    before = {p.name: p.read_bytes() for p in vdir.iterdir()}
    assert good["validated_sha256"] == table_hashes(vdir) and len(before) == 4
    settings.params["data"]["batch"] = "t2-broken"
    world, schemas = without_column(small_world(), "exposures", "revenue")
    with pytest.raises(validate.BatchRejected, match=r"exposures\.schema\.columns.*raw/t2-broken/exposures/part-00000"):
        run_validate(settings, store, world, batch="t2-broken", schemas=schemas)
    assert {p.name: p.read_bytes() for p in vdir.iterdir()} == before
    assert json.loads((settings.workspace / "reports/validation.json").read_text())["run_id"] == good["run_id"]
    failed = json.loads((settings.workspace / "reports/validation_failed.json").read_text())
    assert failed["batch"] == "t2-broken" and failed["status"] == "rejected"
    record = validated_record(settings.workspace, table_hashes(vdir))
    assert record == {"batch": BATCH, "run_id": good["run_id"], "result_uri": good["result_uri"], "verified": True}


def test_validated_data_that_differs_from_its_report_is_named(s3):
    from campaignops.pipelines.validate_report import ValidatedMismatch, table_hashes, validated_record

    settings, store = s3
    good = run_validate(settings, store, small_world())
    vdir = settings.workspace / layout.VALIDATED_DIR
    pq.write_table(pq.read_table(vdir / "users.parquet").slice(0, 3), vdir / "users.parquet")  # restored from elsewhere
    with pytest.raises(ValidatedMismatch, match=rf"data/validated/users\.parquet is not what validation run {good['run_id']}"):
        validated_record(settings.workspace, table_hashes(vdir))


def test_wrong_type_rejects_batch(s3):
    settings, store = s3
    world = small_world()
    schema = SCHEMAS["users"].set(1, pa.field("age", pa.string()))
    for u in world["users"]:
        u["age"] = str(u["age"])
    with pytest.raises(validate.BatchRejected, match=r"users\.schema\.types.*users/part-00000.parquet.*'age'"):
        run_validate(settings, store, world, schemas={"users": schema})


def test_corrupt_parquet_rejects_batch_naming_file(s3):
    settings, store = s3
    manifest = land_world(store, small_world(), BATCH)
    bad_key = manifest["tables"]["exposures"]["files"][1]
    store.put_bytes(bad_key, b"PAR1 this is not parquet")
    ingest.ingest(settings, store=store)
    with pytest.raises(validate.BatchRejected, match=r"exposures\.file\.readable.*exposures/part-00001\.parquet"):
        validate.run(settings, store=store)


def test_file_changed_after_ingest_is_rejected(s3):
    settings, store = s3
    manifest = land_world(store, small_world(), BATCH)
    ingest.ingest(settings, store=store)
    put_parquet(store, manifest["tables"]["users"]["files"][0], small_world()["users"][:1], SCHEMAS["users"])
    with pytest.raises(validate.BatchRejected, match="rerun ingest"):
        validate.run(settings, store=store)


def test_interrupted_run_leaves_previous_validated_intact(s3, monkeypatch):
    settings, store = s3
    run_validate(settings, store, small_world())
    vdir = settings.workspace / layout.VALIDATED_DIR
    before = {p.name: p.read_bytes() for p in vdir.iterdir()}
    land_world(store, small_world(users=12), BATCH)
    ingest.ingest(settings, store=store)

    calls = {"n": 0}
    real = validate._write_local_parquet

    def flaky(batches, path, schema):   # the third validated table fails half-way through
        calls["n"] += 1
        if calls["n"] == 3:
            path.write_bytes(b"partial")
            raise OSError("disk full (injected)")
        return real(batches, path, schema)

    monkeypatch.setattr(validate, "_write_local_parquet", flaky)
    with pytest.raises(OSError, match="injected"):
        validate.run(settings, store=store)
    assert calls["n"] == 3
    assert {p.name: p.read_bytes() for p in vdir.iterdir()} == before
    assert not [p for p in vdir.parent.iterdir() if p.name.startswith(".validated")]


def test_dedup_and_fills_are_counted_and_invariant_holds(s3):
    settings, store = s3
    world = small_world()
    ev = world["events"]
    ev.append(dict(ev[0]))                        # exact copy, same event_id
    ev.append(dict(ev[1], event_id="copy-of-1"))  # exact copy, new event_id
    ev[5]["category"] = "x" * (10 * 1024 * 1024)  # a 10 MB string: quarantined by max length
    world["users"][3]["region"] = None
    report = run_validate(settings, store, world)
    e = report["tables"]["events"]
    assert e["rows_in"] == 42 and e["rows_deduplicated"] == 2 and e["rows_quarantined"] == 1
    assert e["rows_in"] == e["rows_valid"] + e["rows_quarantined"] + e["rows_deduplicated"]
    assert e["rule_counts"] == {"events.category.max_length": 1}
    assert "rows_deduplicated" in report["invariant"]
    assert e["fills"] == {"category": 10}  # k == 3 for each of the 10 users
    assert report["tables"]["users"]["fills"] == {"region": 1, "occupation": 1}
    vdir = settings.workspace / layout.VALIDATED_DIR
    users = pq.read_table(vdir / "users.parquet")
    assert users.column("region").null_count == 0 and "unknown" in users.column("region").to_pylist()
    events = pq.read_table(vdir / "events.parquet")
    assert events.num_rows == 39 and events.column("category").null_count == 0
    assert events.schema.equals(SCHEMAS["events"])


def test_volume_band_against_previous_batch(s3):
    settings, store = s3

    def run_batch(batch, n_users):
        settings.params["data"]["batch"] = batch
        return run_validate(settings, store, small_world(users=n_users), batch=batch)

    first = run_batch("v1", 10)
    assert first["tables"]["events"]["volume"]["status"] == "first"
    ok = run_batch("v2", 12)
    assert ok["tables"]["events"]["volume"]["status"] == "ok"
    with pytest.raises(validate.ValidationFailed, match=r"events\.rows\.volume.*previous batch 'v2'"):
        run_batch("v3", 40)


def test_volume_of_a_table_empty_in_both_batches_is_unchanged():
    hist = {"tables": {"events": [{"batch": "a", "rows_in": 0}]}}
    assert validate.check_volume(hist, "events", "b", 0, 0.5, 2.0)["status"] == "ok"
    grown = validate.check_volume(hist, "events", "b", 10, 0.5, 2.0)
    assert grown["status"] == "failed" and "events.rows.volume" in grown["message"]


def test_csv_parts_are_read_with_contract_types_and_bad_ones_named(s3):
    settings, store = s3
    import pyarrow.csv as pacsv

    world = small_world()
    manifest = land_world(store, world, BATCH)
    key = manifest["tables"]["users"]["files"][0].replace(".parquet", ".csv")
    buf = io.BytesIO()
    half = -(-len(world["users"]) // 2)
    pacsv.write_csv(pa.Table.from_pylist(world["users"][:half], SCHEMAS["users"]), buf)
    store.put_bytes(key, buf.getvalue())
    manifest["tables"]["users"]["files"][0] = key
    store.put_json(layout.raw_manifest_key(BATCH), manifest)
    ingest.ingest(settings, store=store)
    report = validate.run(settings, store=store)
    assert report["passed"] and report["tables"]["users"]["rows_valid"] == len(world["users"])
    store.put_bytes(key, buf.getvalue().replace(b",", b";"))
    ingest.ingest(settings, store=store)
    with pytest.raises(validate.BatchRejected, match=r"users\.file\.delimiter.*users/part-00000\.csv"):
        validate.run(settings, store=store)


def test_propensity_outside_zero_one_is_quarantined_with_its_rule(s3):
    settings, store = s3
    settings.params["validate"]["max_quarantine_rate"] = 1.0  # inspect, don't fail
    world = small_world()
    for x in world["exposures"]:
        x["propensity"] = 0.5
    world["exposures"][2]["propensity"] = 0.0    # a logged arm its policy could not choose
    world["exposures"][7]["propensity"] = 1.5
    world["exposures"][8]["propensity"] = None   # unknown: valid
    report = run_validate(settings, store, world)
    assert report["tables"]["exposures"]["rule_counts"] == {"exposures.propensity.range": 2}
    q = quarantine_rows(store, "exposures")
    assert sorted((r["exposure_id"], r["_rule"], r["propensity"]) for r in q) == [
        ("x2", "exposures.propensity.range", 0.0), ("x7", "exposures.propensity.range", 1.5)]


def test_exposures_without_the_optional_propensity_column_validate(s3):
    from campaignops.validation.contract import required_schema

    settings, store = s3
    world = small_world()
    report = run_validate(settings, store, world, schemas={"exposures": required_schema("exposures")})
    assert report["passed"] and report["tables"]["exposures"]["rows_valid"] == len(world["exposures"])
    out = pq.read_table(settings.workspace / layout.VALIDATED_DIR / "exposures.parquet")
    assert out.schema.equals(SCHEMAS["exposures"]) and out.column("propensity").null_count == out.num_rows
