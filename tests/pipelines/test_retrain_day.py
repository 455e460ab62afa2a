"""A retraining day: the batch of a run, the not-landed error, and the immutable day record that
makes rerunning a date a no-op."""
from __future__ import annotations

from datetime import date, datetime, timezone
from types import SimpleNamespace

import pytest

from campaignops.pipelines import layout, retrain_day
from campaignops.pipelines.ingest import BatchNotReady


def test_the_batch_is_the_param_then_the_asset_event_then_the_logical_date():
    event = SimpleNamespace(extra={"batch": "2026-06-03", "from_rest_api": True})
    when = datetime(2026, 6, 2, 3, 0, tzinfo=timezone.utc)
    assert retrain_day.batch_for("imported-1", when, {"raw": [event]}) == "imported-1"
    assert retrain_day.batch_for(None, when, {"raw": [event]}) == "2026-06-03"
    assert retrain_day.batch_for(None, when, {}) == "2026-06-02"
    assert retrain_day.batch_for(None, "2026-06-04T03:00:00+00:00", None) == "2026-06-04"
    assert retrain_day.batch_for(None, date(2026, 6, 5)) == "2026-06-05"
    with pytest.raises(ValueError, match="which day"):
        retrain_day.batch_for(None, None, {})


def test_a_date_that_has_not_landed_fails_with_that_reason(workspace, store):
    with pytest.raises(BatchNotReady, match=r"raw batch '2026-06-09' has not landed: no s3://.*raw/2026-06-09/_manifest.json"):
        retrain_day.plan(workspace, "2026-06-09", store=store)


def test_only_the_scheduled_sweep_waits_for_a_missing_batch():
    from airflow.utils.types import DagRunType

    assert retrain_day.waits_for_batch(DagRunType.SCHEDULED, None)
    assert retrain_day.waits_for_batch("scheduled", "")
    for run_type in (DagRunType.MANUAL, DagRunType.ASSET_TRIGGERED, DagRunType.BACKFILL_JOB, None):
        assert not retrain_day.waits_for_batch(run_type, None)
    assert not retrain_day.waits_for_batch(DagRunType.SCHEDULED, "2026-06-09")   # somebody asked for it
    text = retrain_day.waiting_message("2026-06-09", "raw batch '2026-06-09' has not landed: no s3://b/raw/x; more")
    assert text.startswith("WAITING for raw batch 2026-06-09: raw batch '2026-06-09' has not landed: no s3://b/raw/x.")


def test_a_finished_day_is_done_until_its_batch_is_relanded(workspace, store):
    store.put_json(layout.raw_manifest_key("2026-06-02"), {"batch": "2026-06-02"})
    planned = retrain_day.plan(workspace, "2026-06-02", store=store)
    assert planned["done"] is None and not planned["superseded"]
    evaluation = {"run_id": "r1", "model_uri": "runs:/r1/model", "passed": False, "reasons": ["auc below"],
                  "candidate": {"auc": 0.5}, "champion_version": "3"}
    first = retrain_day.write_record(workspace, planned, evaluation, None, {"dag_run_id": "a"}, store=store)
    assert first["gate"] == {"passed": False, "reasons": ["auc below"]} and first["version"] is None
    assert first["champion_after"] == "3"
    again = retrain_day.plan(workspace, "2026-06-02", store=store)
    assert again["done"] == first                                # a rerun stops at plan
    # A second writer of the same day does not overwrite the record.
    other = retrain_day.write_record(workspace, planned, {**evaluation, "run_id": "r2"}, None, store=store)
    assert other["run_id"] == "r1" and retrain_day.read_record(store, "2026-06-02")["run_id"] == "r1"
    # Re-landing the batch (new ETag) makes the day due again; its new record replaces the old one.
    store.put_json(layout.raw_manifest_key("2026-06-02"), {"batch": "2026-06-02", "fixed": True})
    relanded = retrain_day.plan(workspace, "2026-06-02", store=store)
    assert relanded["done"] is None and relanded["superseded"]
    promoted = retrain_day.write_record(workspace, relanded, {**evaluation, "run_id": "r3", "passed": True},
                                        {"promoted": True, "champion_version": "4"}, store=store)
    assert promoted["version"] == "4" and retrain_day.read_record(store, "2026-06-02")["run_id"] == "r3"
    assert [r["batch"] for r in retrain_day.records(store)] == ["2026-06-02"]
