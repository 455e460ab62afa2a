"""One retraining day: which raw batch a `campaign_retrain` run trains on, whether that day is
already done, and the day record written when it finishes.

- The batch of a run is its logical date (`raw/<YYYY-MM-DD>/`, a snapshot of the sources as of
  that date; the features step keeps the sliding window `features.exposure_window_days` of it),
  the `date` in the extra of the raw-batch asset event that triggered it, or an explicit batch id.
- A day that finished has one immutable record, `retrain/<batch>/record.json` (conditional put):
  the raw manifest's ETag, the MLflow run, the gate's verdict, the version promoted. Rerunning a
  day whose record matches its raw manifest changes nothing: the run stops at `plan` and every
  later task is skipped — no new MLflow run, no new model version, no re-logged report.
- `campaignops history` reads the records back, one per day.
"""
from __future__ import annotations

import re
from datetime import date, datetime, timezone

from campaignops.config import Settings
from campaignops.pipelines import layout
from campaignops.pipelines.ingest import BatchNotReady

DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def batch_for(batch: str | None = None, logical_date=None, asset_events=None) -> str:
    """The batch a run trains on: an explicit id wins, then the triggering raw-batch asset
    event's `date`, then the run's logical date (UTC day)."""
    if batch:
        return str(batch)
    for events in (asset_events or {}).values():
        for event in reversed(list(events)):
            extra = getattr(event, "extra", None) or (event.get("extra") if isinstance(event, dict) else None) or {}
            if extra.get("batch") or extra.get("date"):
                return str(extra.get("batch") or extra["date"])
    if logical_date is None:
        raise ValueError("the run has no logical date, no triggering raw-batch event and no `batch` param: "
                         "nothing says which day to train on")
    if isinstance(logical_date, str):
        logical_date = datetime.fromisoformat(logical_date.replace("Z", "+00:00"))
    if isinstance(logical_date, datetime):
        if logical_date.tzinfo is not None:
            logical_date = logical_date.astimezone(timezone.utc)
        logical_date = logical_date.date()
    if not isinstance(logical_date, date):
        raise ValueError(f"logical date {logical_date!r} is not a date")
    return logical_date.isoformat()


def plan(settings: Settings, batch: str, store=None) -> dict:
    """What this run will do for `batch`: {"batch", "raw_etag", "done": the day record or None}.
    Raises BatchNotReady, naming the batch and the key looked at, when its raw manifest has not
    landed."""
    from campaignops.pipelines.storage import ObjectStore

    store = store or ObjectStore(settings)
    key = layout.raw_manifest_key(batch)
    head = store.head_or_none(key)
    if head is None:
        hint = " (a dated batch: run `campaignops data generate --date` or land the source export)" \
            if DATE_RE.match(batch) else ""
        raise BatchNotReady(f"raw batch {batch!r} has not landed: no {store.uri(key)}{hint}; "
                            "nothing to train on for this date")
    etag = str(head.get("ETag", "")).strip('"')
    record = read_record(store, batch)
    done = record if record is not None and record.get("raw_etag") == etag else None
    return {"batch": batch, "raw_etag": etag, "raw_manifest": store.uri(key), "done": done,
            "superseded": record is not None and done is None}


def waits_for_batch(run_type: str | None, explicit_batch: str | None) -> bool:
    """Whether a run whose batch has not landed should wait (skip, the day stays open) rather than fail.

    The daily 03:00 run is a sweep behind the raw-batch asset trigger: when the day's batch has not
    landed, the asset event will start the run when it does, so the scheduled run ends as skipped with
    that reason (Airflow also creates the latest cron run right after a backfill or a first
    scheduled run — catchup=False means "the latest interval" — and that run must not look like a
    failure). A run somebody asked for (manual, with a `batch`, or triggered by the asset event
    itself) fails: what they asked for is not there."""
    return str(getattr(run_type, "value", run_type) or "").lower() == "scheduled" and not explicit_batch


def waiting_message(batch: str, reason: str) -> str:
    return (f"WAITING for raw batch {batch}: {reason.split('; ')[0]}. The raw-batch asset event starts a "
            "run when it lands; nothing was trained.")


def read_record(store, batch: str) -> dict | None:
    import json

    data = store.get_bytes_or_none(layout.retrain_record_key(batch))
    return None if data is None else json.loads(data)


def write_record(settings: Settings, planned: dict, evaluation: dict | None, promotion: dict | None,
                 context: dict | None = None, store=None) -> dict:
    """The day's immutable record (first writer wins; a record already there is returned as is
    unless its raw ETag differs, i.e. the batch was re-landed, then a new record replaces it)."""
    import json

    from campaignops.pipelines.storage import ObjectStore

    store = store or ObjectStore(settings)
    batch = planned["batch"]
    record = {
        "batch": batch,
        "raw_etag": planned["raw_etag"],
        "raw_manifest": planned.get("raw_manifest"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_id": (evaluation or {}).get("run_id"),
        "model_uri": (evaluation or {}).get("model_uri"),
        "gate": {"passed": bool((evaluation or {}).get("passed")), "reasons": (evaluation or {}).get("reasons", [])},
        "candidate": (evaluation or {}).get("candidate"),
        "champion_before": (evaluation or {}).get("champion_version"),
        "promoted": bool((promotion or {}).get("promoted")),
        "version": (promotion or {}).get("champion_version") if (promotion or {}).get("promoted") else None,
        "champion_after": (promotion or {}).get("champion_version") or (evaluation or {}).get("champion_version"),
        "context": context or {},
    }
    body = json.dumps(record, indent=2, sort_keys=True, default=str).encode()
    key = layout.retrain_record_key(batch)
    existing = read_record(store, batch)
    if existing is not None and existing.get("raw_etag") == record["raw_etag"]:
        return existing
    if existing is None:
        if not store.put_bytes_if_absent(key, body):   # a concurrent run of the same day won
            return read_record(store, batch)
    else:                                              # the batch was re-landed: a new day record
        store.put_bytes(key, body)
    return record


def records(store) -> list[dict]:
    """Every day record, oldest batch first."""
    import json

    out = []
    for key in store.list_keys("retrain/"):
        if key.endswith("/record.json"):
            data = store.get_bytes_or_none(key)
            if data is not None:
                out.append(json.loads(data))
    return sorted(out, key=lambda r: r["batch"])
