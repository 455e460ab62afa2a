"""Run notes: built from a real-shaped scoring summary and retrain verdict; setting one never raises."""
from __future__ import annotations

from campaignops.pipelines import run_notes


def test_score_note_reads_the_summary_as_score_returns_it(workspace):
    summary = {"campaign_id": "C005", "status": "targeted", "users_targeted": 1234, "budget": 500.0, "spent": 498.5,
               "forecast_incremental_responses": {"forecast": 42.25, "lo": 30.0, "hi": 55.5},
               "model": "models:/campaign_uplift/3", "manifest": "s3://campaignops/scores/C005/v3-x/manifest.json",
               "drift_override": "new price list"}
    note = run_notes.score_note(workspace, summary, {"family": "network"})
    assert "**C005** · targeted · 1,234 users · spent 498.50 of 500.00 · forecast +42.2 responses (30.0 to 55.5)" in note
    assert "models:/campaign_uplift/3" in note and "(network)" in note and "campaignops lineage C005" in note
    assert "drift gate overridden: new price list" in note


def test_retrain_note_and_blocked_note(workspace):
    note = run_notes.retrain_note(workspace, "2026-06-02", {"passed": False, "reasons": ["qini 0.01 < 0.02"]}, None)
    assert "batch **2026-06-02** · gate refused: qini 0.01 < 0.02" in note
    blocked = run_notes.blocked_note("C005", "drift gate blocked score: 2 feature(s) shifted. Check upstream", "drift_override_reason")
    assert blocked.startswith("**BLOCKED by the drift gate** (C005): drift gate blocked score: 2 feature(s) shifted.")


def test_set_note_without_airflow_is_false_not_an_error(workspace, monkeypatch):
    monkeypatch.setenv("CAMPAIGNOPS_AIRFLOW_URL", "http://127.0.0.1:9")   # nothing listens there
    assert run_notes.set_note(workspace, "campaign_score", "manual__1", "x") is False
    assert run_notes.set_note(workspace, None, None, "x") is False


def test_refused_note_leads_with_the_reason():
    text = run_notes.refused_note("C999", "unknown campaign 'C999'; valid ids: " + ", ".join(f"C{i:03d}" for i in range(300)))
    assert text.startswith("**REFUSED** (C999): unknown campaign 'C999'; valid ids: C000")
    assert len(text) < 650
