"""The daily DAGs' timed schedule: one place for how a cron time becomes Airflow's timetable."""
from __future__ import annotations

from datetime import timedelta


def daily_cron(cron: str):
    """A UTC cron timetable whose first automated run is the next cron time after the DAG appears:
    unpausing starts no run for a past day (past days run by backfill). With no start_date and
    catchup off, Airflow's default ``run_immediately=False`` behaves like ``None`` and still runs the
    past cron time when it is less than 10% of the period old (2.4 h for a daily DAG); 0 waits.
    tests/dags/test_schedules.py sets the scheduler's clock around each cron time."""
    from airflow.sdk import CronTriggerTimetable

    return CronTriggerTimetable(cron, timezone="UTC", run_immediately=timedelta(0))
