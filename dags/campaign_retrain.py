"""
### campaign_retrain

Daily retraining of the campaign response model:
**ingest** (register the landed raw batch) → **validate** (GX contracts, quarantine) →
**features** → **drift_check** (the new features vs the champion's training snapshot; a blocking
PSI breach stops the run, report in `reports/drift_train.json` and S3 `drift/train/`) →
**train** (DVC stages, outputs pushed to S3) → **evaluate** (candidate vs champion on the same
holdout) → **promote** (only if the gate passed).

Logic lives in `campaignops.pipelines`; this file only wires it.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task


@dag(
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["campaignops", "training"],
    doc_md=__doc__,
    default_args={"owner": "campaignops", "retries": 0, "execution_timeout": timedelta(minutes=60)},
    params={"batch": Param(None, type=["null", "string"], description="raw batch id (default: params.yaml data.batch)")},
)
def campaign_retrain():
    @task
    def ingest(params=None) -> dict:
        from campaignops.config import load_settings
        from campaignops.pipelines.ingest import ingest

        return ingest(load_settings(), batch=params.get("batch"))

    @task
    def dvc_stage(stage: str) -> dict:
        from campaignops.config import load_settings
        from campaignops.pipelines.versioning import repro

        return repro(load_settings(), stage)

    @task
    def drift_check() -> dict:
        from campaignops.config import load_settings
        from campaignops.pipelines.drift import gate_training, summary

        return summary(gate_training(load_settings()))

    @task
    def evaluate() -> dict:
        from campaignops.config import load_settings
        from campaignops.pipelines.evaluate import run

        report = run(load_settings())
        return {k: report[k] for k in ("passed", "reasons", "candidate", "champion_version")}

    @task
    def promote() -> dict:
        from campaignops.config import load_settings
        from campaignops.pipelines.promote import run

        return run(load_settings())

    validate = dvc_stage.override(task_id="validate")("validate")
    features = dvc_stage.override(task_id="features")("features")
    train = dvc_stage.override(task_id="train")("train")
    ingest() >> validate >> features >> drift_check() >> train >> evaluate() >> promote()


campaign_retrain()
