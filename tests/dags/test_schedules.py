"""Scheduled DAGs start no run for a past day when they first appear or are unpaused: the first
automated run is the next cron time in the future (a past day is run on purpose, by backfill).

The scheduler's clock is set to several times around each cron time: Airflow's default
(``run_immediately=False``) still runs a cron time less than 10% of the period old, so a check
at the wall clock alone passed or failed depending on the hour CI ran."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
SCHEDULED = ("campaign_retrain", "campaign_feedback", "campaign_adjust")
# minutes after the daily cron time the DAG appears: just after, within and past Airflow's 10% buffer, just before
OFFSETS = (1, 60, 143, 145, 23 * 60 + 59)


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.mark.parametrize("dag_id", SCHEDULED)
def test_first_scheduled_run_is_in_the_future(dagbag, dag_id, monkeypatch):
    import airflow.timetables.trigger as trigger
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags[dag_id]))   # what the scheduler sees
    timetable = getattr(dag.timetable, "timetable", dag.timetable)                     # AssetOrTimeSchedule wraps one
    cron_today = timetable._align_to_prev(pendulum.datetime(2026, 6, 1, 23, 59, tz="UTC"))
    for minutes in OFFSETS:
        now = cron_today + timedelta(minutes=minutes)
        monkeypatch.setattr(trigger, "utcnow", lambda now=now: now)
        info = dag.next_dagrun_info(last_automated_run_info=None)
        assert info is not None and info.run_after > now, (dag_id, minutes, info)
