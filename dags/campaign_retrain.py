"""
### campaign_retrain

Daily retraining of the campaign response model **for one day of data**: the raw batch of the
run's logical date (`raw/<YYYY-MM-DD>/`, a snapshot of the sources as of that date; features keep
the sliding window `features.exposure_window_days`), or the `date`/`batch` of the raw-batch asset
event that triggered it, or the `batch` param.

Runs when a producer announces a landed batch (asset `campaignops.raw_batch`) and on its daily
schedule (03:00 UTC); a date range from the backfill dialog (or `POST /api/v2/backfills`) runs the
dates in order, one at a time, each gated.

**plan** (which batch; a day already done stops here and every task is skipped: rerunning a date
changes nothing; a batch that has not landed fails with that reason — except on the daily
scheduled run, which then skips with a WAITING note: the asset event starts a run when it lands)
→ **ingest** → **validate**
(GX contracts, quarantine) → **features** → **drift_check** → **train** (DVC stages, outputs pushed
to S3) → **evaluate** (candidate vs champion on the same holdout; a rerun reuses the verdict
logged to the candidate's run) → **promote** (skipped, with the gate's reasons, when the gate
refused; publishes asset `campaignops.champion` when it promotes) → **record** (the day record
`retrain/<batch>/record.json` that `campaignops history` reads).

Failures: each task has a time limit; every one but **train** (its doc says why) is retried 3
times with exponential backoff (from 1 min, at most 10), being idempotent: a rerun after a kill
returns what an uninterrupted run would (tests/faults). Refusals a retry cannot change (a batch not
landed, a failed validation, a drift breach) fail at once.

Logic lives in `campaignops.pipelines`; this file only wires it.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import AssetOrTimeSchedule, Param, dag, task

from campaignops.config import load_settings
from campaignops.pipelines.schedules import daily_cron
from campaignops.pipelines.tasklog import on_task_start
from campaignops.pipelines.assets import (CHAMPION, DAY_RECORDS, FEATURES, MODEL_RUNS, QUARANTINE, RAW_BATCH,
                                          VALIDATED, airflow_assets, lineage)

ASSETS = airflow_assets(load_settings().bucket)
LINEAGE = lineage(load_settings().bucket)   # RAW_BATCH and CHAMPION as lineage inlets (no asset semantics)
TRAIN_DOC = ("DVC stage train: fit the network and baselines, log the MLflow run, push data/model.\n\n"
             "Not retried: CPU-bound and long, so a failure is a bug or an out-of-memory that repeats, and every "
             "attempt logs an MLflow run of its own (a killed one stays unfinished). Clear the task to rerun it.")


@dag(
    description="Daily retraining for one raw batch: validate, features, drift gate, train, evaluate vs champion, promote",
    schedule=AssetOrTimeSchedule(timetable=daily_cron("0 3 * * *"),
                                 assets=ASSETS[RAW_BATCH]),
    # No start_date: the first scheduled run is the next cron time after the DAG appears (daily_cron).
    catchup=False,
    max_active_runs=1,
    tags=["campaignops", "training"],
    doc_md=__doc__,
    default_args={"owner": "campaign-ml", "on_execute_callback": on_task_start, "retries": 3, "retry_delay": timedelta(minutes=1),
                  "retry_exponential_backoff": 2.0, "max_retry_delay": timedelta(minutes=10),
                  "execution_timeout": timedelta(minutes=60)},
    params={"batch": Param(None, type=["null", "string"], title="Raw batch",
                           description="raw batch id to train on; empty = the run's logical date (YYYY-MM-DD)"),
            "drift_override_reason": Param(None, type=["null", "string"], maxLength=500, title="Drift override reason",
                                           description="only when the drift gate blocked this batch: why training on "
                                                       "it anyway is right (recorded in the drift report with your user "
                                                       "name)")},
)
def campaign_retrain():
    @task.short_circuit(execution_timeout=timedelta(minutes=10),
                        doc_md="Which batch; skips the run when the day is done, fails when the batch has not landed (a "
                               "scheduled run skips instead, noted WAITING: the asset event will start one).")
    def plan(params=None, logical_date=None, triggering_asset_events=None, dag_run=None):
        from airflow.sdk.exceptions import AirflowFailException

        from campaignops.pipelines import retrain_day, run_notes
        from campaignops.pipelines.ingest import BatchNotReady

        batch = retrain_day.batch_for(params.get("batch"), logical_date, triggering_asset_events)
        try:
            planned = retrain_day.plan(load_settings(), batch)
        except BatchNotReady as exc:
            if not retrain_day.waits_for_batch(getattr(dag_run, "run_type", None), params.get("batch")):
                raise AirflowFailException(str(exc)) from None
            message = retrain_day.waiting_message(batch, str(exc))
            print(message)
            run_notes.note(load_settings(), "campaign_retrain", getattr(dag_run, "run_id", None), lambda: message)
            return False
        if planned["done"]:
            done = planned["done"]
            print(f"day {batch} is already done (run {done.get('run_id')}, gate passed={done['gate']['passed']}, "
                  f"version {done.get('version')}): nothing to do")
            return False
        return planned

    @task(inlets=[LINEAGE[RAW_BATCH]], execution_timeout=timedelta(minutes=15),
          doc_md="Snapshot the landed batch's manifest into data/raw_manifest.json (idempotent).")
    def ingest(planned: dict) -> dict:
        from campaignops.pipelines.ingest import ingest

        return ingest(load_settings(), batch=planned["batch"])

    @task
    def dvc_stage(stage: str) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from campaignops.pipelines import layout
        from campaignops.pipelines.versioning import repro

        settings = load_settings()
        failed = settings.workspace / layout.REPORTS_DIR / "validation_failed.json"
        before = failed.stat().st_mtime_ns if failed.is_file() else None
        try:
            return repro(settings, stage)
        except RuntimeError:
            if stage == "validate" and failed.is_file() and failed.stat().st_mtime_ns != before:
                raise AirflowFailException(f"the batch failed validation (report {failed}); "
                                           "a retry would fail the same way") from None
            raise

    @task(execution_timeout=timedelta(minutes=20),
          doc_md="Drift gate on the new features vs the champion's training snapshot. A breach skips the rest "
                 "of the run (train, evaluate, promote; the day is not recorded, so it can run again) and the run's "
                 "note says BLOCKED with the reason; the *Drift override reason* param lets it through, recorded.")
    def drift_check(params=None, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from campaignops.pipelines import run_notes
        from campaignops.pipelines.drift import DriftDetected, gate_training, summary

        reason = ((params or {}).get("drift_override_reason") or "").strip()
        override = {"reason": reason, "by": str(getattr(dag_run, "triggering_user_name", None) or "airflow")} \
            if reason else None
        try:
            return summary(gate_training(load_settings(), override=override))
        except DriftDetected as exc:
            run_notes.note(load_settings(), "campaign_retrain", getattr(dag_run, "run_id", None), lambda:
                               run_notes.blocked_note("training", str(exc), "drift_override_reason"))
            raise AirflowSkipException(f"drift gate: {exc}") from None

    @task(inlets=[ASSETS[FEATURES], ASSETS[MODEL_RUNS], LINEAGE[CHAMPION]], execution_timeout=timedelta(minutes=60),
          doc_md="Candidate vs champion on the same holdout; a rerun reuses the verdict logged to the candidate's run.")
    def evaluate() -> dict:
        from campaignops.pipelines.evaluate import run

        report = run(load_settings())
        return {k: report.get(k) for k in ("passed", "reasons", "candidate", "champion_version", "run_id",
                                           "model_uri", "reused")}

    @task(inlets=[ASSETS[MODEL_RUNS]], outlets=[ASSETS[CHAMPION], LINEAGE[CHAMPION]],
          execution_timeout=timedelta(minutes=15),
          doc_md="Register and promote a passing candidate (a rerun resumes its recorded event: one version, one "
                 "record); **skipped**, with the reasons, when the gate refused or nothing was promoted.")
    def promote(evaluation: dict, dag_run=None) -> dict:
        import os

        from airflow.sdk.exceptions import AirflowSkipException

        from campaignops.pipelines.promote import run

        user = getattr(dag_run, "triggering_user_name", None)
        if user:   # the promotion record's actor: who triggered the run (else "airflow:campaign_retrain")
            os.environ.setdefault("CAMPAIGNOPS_ACTOR", str(user))
        if not evaluation["passed"]:
            raise AirflowSkipException("gate refused the candidate: " + "; ".join(evaluation["reasons"]))
        out = run(load_settings())
        if not out["promoted"]:
            raise AirflowSkipException("not promoted: " + "; ".join(out.get("reasons", [])))
        return out

    @task(trigger_rule="none_failed", outlets=[ASSETS[DAY_RECORDS]], execution_timeout=timedelta(minutes=10),
          doc_md="Write the day record retrain/<batch>/record.json (first writer wins).")
    def record(planned: dict, evaluation: dict | None, promotion: dict | None = None, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from campaignops.pipelines import retrain_day, run_notes

        if not evaluation:   # blocked before evaluation (drift gate): the day stays open for a rerun
            raise AirflowSkipException(f"day {planned['batch']} not recorded: nothing was evaluated")
        context = {"dag_id": "campaign_retrain", "dag_run_id": dag_run.run_id if dag_run else None}
        settings = load_settings()
        out = retrain_day.write_record(settings, planned, evaluation, promotion, context)
        run_notes.note(settings, "campaign_retrain", context["dag_run_id"], lambda:
                           run_notes.retrain_note(settings, planned["batch"], evaluation, promotion))
        return {k: out[k] for k in ("batch", "promoted", "version", "champion_after")}

    planned = plan()
    validate = dvc_stage.override(task_id="validate", inlets=[LINEAGE[RAW_BATCH]],
                                  outlets=[ASSETS[VALIDATED], ASSETS[QUARANTINE]], execution_timeout=timedelta(minutes=60),
                                  doc_md="DVC stage validate (GX contracts, quarantine), pushed; a failed batch fails "
                                         "at once.")("validate")
    features = dvc_stage.override(task_id="features", inlets=[ASSETS[VALIDATED]], outlets=[ASSETS[FEATURES]],
                                  execution_timeout=timedelta(minutes=60),
                                  doc_md="DVC stage features, pushed (DVC reruns it only if its inputs changed).")("features")
    train = dvc_stage.override(task_id="train", inlets=[ASSETS[FEATURES]], outlets=[ASSETS[MODEL_RUNS]], retries=0,
                               execution_timeout=timedelta(minutes=120), doc_md=TRAIN_DOC)("train")
    evaluation = evaluate()
    promotion = promote(evaluation)
    ingest(planned) >> validate >> features >> drift_check() >> train >> evaluation
    record(planned, evaluation, promotion)


campaign_retrain()
