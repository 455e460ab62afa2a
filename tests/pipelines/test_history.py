"""The morning view: one row per day from the day records, the scoring manifests and the feedback
links already in S3."""
from __future__ import annotations

import pytest

from campaignops.pipelines import history, layout, retrain_day


def _scored(store, campaign: str, run: str, day: str, forecast: float) -> dict:
    prefix = layout.scores_prefix(campaign, run)
    manifest = {"campaign_id": campaign, "score_run_id": run, "inputs": {"raw_batch": day}, "as_of": f"{day} 00:00:00",
                "model": {"version": "1"}, "users_targeted": 120, "spent": 9.5, "budget": 10.0, "replay": False,
                "status": "targeted", "output": {"manifest": store.uri(prefix + "manifest.json")},
                "forecast": {"total": {"incremental_responses": {"forecast": forecast, "lo": forecast - 2, "hi": forecast + 2}}},
                "truth_check": {"true_incremental_responses": 5.0, "fraction_of_oracle_same_count": 0.4}}
    store.put_json(prefix + "manifest.json", manifest)
    store.put_json(f"scores/{campaign}/latest.json", {"manifest": manifest["output"]["manifest"]})
    return manifest


def test_days_join_retraining_scoring_and_feedback(workspace, store):
    for day, passed, version in (("2026-06-01", True, "1"), ("2026-06-02", False, None)):
        store.put_json(layout.raw_manifest_key(day), {"batch": day})
        planned = retrain_day.plan(workspace, day, store=store)
        retrain_day.write_record(workspace, planned,
                                 {"run_id": f"r-{day}", "passed": passed, "reasons": [] if passed else ["auc 0.50 < 0.55"],
                                  "candidate": {"auc": 0.7, "qini": 0.02}, "champion_version": None if passed else "1"},
                                 {"promoted": passed, "champion_version": version}, store=store)
    first = _scored(store, "C005", "run-a", "2026-06-01", 12.0)
    _scored(store, "C006", "run-b", "2026-06-02", 8.0)
    report_key = layout.feedback_prefix("C005", "run-a") + "report.json"
    store.put_json(report_key, {"outside_interval": ["total.incremental_responses"],
                                "total": {"metrics": {"incremental_responses": {
                                    "actual": {"estimate": 4.0, "lo": 1.0, "hi": 7.0}, "within_interval": False}}},
                                "truth": {"incremental_responses": 5.5, "oracle_same_sends": 11.0, "share_of_oracle": 0.5}})
    store.put_json(layout.feedback_link_key("C005", "run-a"), {"report_json": store.uri(report_key)})

    days = history.collect(store)
    assert [d["day"] for d in days] == ["2026-06-01", "2026-06-02"]
    assert days[0]["retrain"]["promoted_version"] == "1" and days[1]["retrain"]["promoted_version"] is None
    assert days[1]["retrain"]["champion"] == "1" and days[1]["retrain"]["reasons"] == ["auc 0.50 < 0.55"]
    [c5] = days[0]["campaigns"]
    assert c5["campaign_id"] == "C005" and c5["forecast"] == first["forecast"]["total"]["incremental_responses"]["forecast"]
    assert c5["feedback"]["actual"] == 4.0 and c5["feedback"]["realized_share_of_oracle"] == 0.5
    assert c5["feedback"]["outside"] == ["total.incremental_responses"]
    assert days[1]["campaigns"][0]["feedback"] is None
    rows = history.table_rows(days)
    assert rows[0][:4] == ["2026-06-01", "passed", "v1", "v1"] and "flagged" in rows[0][9] and rows[0][11] == "50%"
    assert rows[1][1:3] == ["refused", "no"] and rows[1][9] == "pending" and rows[1][11] == "40%"
    page = history.to_html(days)
    assert "C005" in page and "<script" not in page and "http" not in page   # self-contained
