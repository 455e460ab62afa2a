"""Scheduled DAGs start no run for a past day when they first appear or are unpaused: the first
automated run is the next cron time in the future (a past day is run on purpose, by backfill)."""
from __future__ import annotations

import os

import pendulum
import pytest

from pathlib import Path

DAGS = Path(__file__).resolve().parents[2] / "dags"
SCHEDULED = ("campaign_retrain", "campaign_feedback", "campaign_adjust")


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.mark.parametrize("dag_id", SCHEDULED)
def test_first_scheduled_run_is_in_the_future(dagbag, dag_id):
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags[dag_id]))   # what the scheduler sees
    info = dag.next_dagrun_info(last_automated_run_info=None)
    assert info is not None and info.run_after > pendulum.now("UTC"), (dag_id, info)
