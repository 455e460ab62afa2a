"""The same DAGs on the distributed profile: Airflow on Postgres with the CeleryExecutor, a Redis
broker and two Celery workers (`stack up --profile distributed`), in its own sandbox on free ports:
campaign_retrain then campaign_score run to success, the tasks executed through Celery (result rows
in Postgres), both workers answer, and nothing of the profile listens beyond 127.0.0.1."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]


def tiny_world(params: dict) -> None:
    params["data"]["users"] = 3000
    params["train"]["epochs"] = 3
    params["evaluate"].update(min_auc=0.5, max_logloss=1.0, min_qini=-1.0, min_policy_value_fraction=-10.0)
    params["stack"]["start_timeout_s"] = 600     # seven Airflow processes (two Celery workers) start on 2 cores


@pytest.fixture(scope="module")
def dstack(tmp_path_factory):
    from campaignops.infra.sandbox import sandbox_stack

    with sandbox_stack(tmp_path_factory.mktemp("distributed"), tiny_world, profile="distributed") as settings:
        yield settings


def _in_airflow_env(settings, code: str) -> str:
    from campaignops.infra import stack

    out = subprocess.run([sys.executable, "-c", code], env=stack.airflow_env(settings), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_retrain_and_score_run_on_celery_workers(dstack):
    from campaignops.config import apply_env
    from campaignops.infra import stack
    from campaignops.infra.airflow_client import AirflowClient
    from campaignops.pipelines import synth

    settings = dstack
    states = {s["service"]: s for s in stack.status(settings)}
    assert set(states) == {"s3", "mlflow", "postgres", "redis", "airflow"}
    assert all(s["healthy"] for s in states.values()), states
    env = stack.airflow_env(settings)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"

    apply_env(settings)
    manifest = synth.generate(settings, progress=False)
    client = AirflowClient.from_settings(settings)
    runs = {}
    for dag_id, conf in (("campaign_retrain", {"batch": manifest["batch"]}),
                         ("campaign_score", {"campaign_id": manifest["upcoming_campaign_id"], "budget": 300.0})):
        client.wait_for_dag(dag_id, timeout=300)
        client.unpause(dag_id)
        runs[dag_id] = client.trigger(dag_id, conf)
        assert client.wait_for_run(dag_id, runs[dag_id], timeout=1800) == "success"

    # Both workers answer the broker, and the tasks ran through Celery: its result backend (Postgres)
    # holds a SUCCESS row per executed task; the DAG runs are in the Postgres metadata DB.
    ping = json.loads(_in_airflow_env(settings, (
        "import json; from airflow.providers.celery.executors.celery_executor_utils import app; "
        "print(json.dumps([list(r)[0] for r in app.control.ping(timeout=10)]))")))
    assert len(set(ping)) >= 2 and all(name.startswith("worker") for name in ping), ping
    counts = json.loads(_in_airflow_env(settings, (
        "import json, os, sqlalchemy as sa; e = sa.create_engine(os.environ['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN']); "
        "c = e.connect(); "
        "print(json.dumps({'celery_success': c.execute(sa.text(\"SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'\")).scalar(), "
        "'dag_runs': c.execute(sa.text('SELECT count(*) FROM dag_run')).scalar()}))")))
    assert counts["dag_runs"] >= 2
    assert counts["celery_success"] >= 8, counts      # retrain's and score's tasks (skipped ones excepted)

    # The profile's servers listen on 127.0.0.1 only and want their passwords.
    import psycopg2
    import redis

    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=settings.host, port=settings.port("redis")).ping()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(host=settings.host, port=settings.port("postgres"), user="campaignops", password="wrong",
                         dbname="airflow", connect_timeout=5)
