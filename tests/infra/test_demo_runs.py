"""The demo accounts for every Airflow run that appeared while it ran: the ones it started or
followed, and any other (e.g. a scheduled run) named with its state and note."""
from __future__ import annotations

from campaignops import demo


class Runs:
    def __init__(self, runs: dict[str, list[dict]]):
        self._runs = runs

    def runs(self, dag_id: str) -> list[dict]:
        return self._runs.get(dag_id, [])


def test_other_runs_are_those_neither_there_before_nor_the_demos(capsys):
    client = Runs({"campaign_retrain": [{"dag_run_id": "old"}, {"dag_run_id": "asset__1", "run_type": "asset_triggered"},
                                        {"dag_run_id": "scheduled__2026-12-02T03:00:00+00:00", "run_type": "scheduled",
                                         "state": "success", "note": "WAITING for raw batch 2026-12-02: ...\nmore"}],
                   "campaign_score": [{"dag_run_id": "manual__1"}]})
    others = demo.other_runs(client, before={"old"}, mine={"asset__1", "manual__1"})
    assert [(r["dag_id"], r["dag_run_id"]) for r in others] == [("campaign_retrain", "scheduled__2026-12-02T03:00:00+00:00")]
    demo.report_other_runs(client, {"old"}, {"asset__1", "manual__1"})
    out = capsys.readouterr().out
    assert "1 run(s) the demo did not start" in out and "WAITING for raw batch 2026-12-02" in out and "more" not in out
    demo.report_other_runs(client, {"old", "scheduled__2026-12-02T03:00:00+00:00"}, {"asset__1", "manual__1"})
    assert "the 2 the demo started or followed, no others" in capsys.readouterr().out
