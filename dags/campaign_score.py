"""
### campaign_score

Scores every user under each variant of a campaign with the `champion` model and assigns the best
variant (or none) per user within the budget, plus a seeded exploration slice whose rows log
their propensity. Output: parquet parts + manifest (forecast per variant, forecast ÷ truth on
synthetic batches) under `s3://<bucket>/scores/<campaign_id>/<run>/`; `latest.json` moves only
for a run that targets someone.

**check_request** fails at once, with one line, on a bad budget, an unknown or ended campaign, or
a batch whose validation failed. **score** builds the features as of the campaign start, runs the
drift gate (report in `reports/drift_score.json` and S3 `drift/score/`), predicts (engine
`local` or `spark`), and commits the run atomically. Repeating a request returns the committed
run. Both tasks have a time limit and are retried 3 times with exponential backoff (from 1 min,
at most 10): a retry after a kill at any point returns the same parts, and readers never see a
partial run (tests/faults). A refused request fails at once, without retries. A drift breach is
an outcome, not a crash: **score** is skipped and the run's note says **BLOCKED by the drift gate**
with the features and the report; trigger again with *Drift override reason* filled in to score
anyway (the reason and your user name go into the manifest's `drift.override`).

The run's note names the campaign, budget and engine as soon as the request is checked, and after
scoring the outcome (users, spend, forecast) with links to the model version and the manifest.
Logic lives in `campaignops.pipelines.score`; this file only wires it.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from campaignops.config import load_settings
from campaignops.pipelines.tasklog import on_task_start
from campaignops.pipelines.assets import CHAMPION, SCORES, VALIDATED, lineage

SETTINGS = load_settings()          # params.yaml only: no I/O beyond reading it
ASSETS = lineage(SETTINGS.bucket)
SCORE = SETTINGS.params["score"]

@dag(
    description="Target one campaign: the best variant (or none) per user under a budget, with the champion model",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["campaignops", "scoring"],
    doc_md=__doc__,
    default_args={"owner": "campaign-ml", "on_execute_callback": on_task_start, "retries": 3, "retry_delay": timedelta(minutes=1),
                  "retry_exponential_backoff": 2.0, "max_retry_delay": timedelta(minutes=10),
                  "execution_timeout": timedelta(minutes=60)},
    params={
        "campaign_id": Param(None, type=["null", "string"], title="Campaign id",
                             description="e.g. C005; empty = the batch's upcoming campaign"),
        "budget": Param(float(SCORE["default_budget"]), type="number", minimum=0, title="Budget",
                        description="total send cost allowed, in currency units (default: params.yaml "
                                    "score.default_budget); each send costs its variant's cost_per_send"),
        "engine": Param("local", enum=["local", "spark"], title="Engine",
                        description="local: this worker; spark: params.yaml score.spark (docs/spark.md)"),
        "exploration_share": Param(float((SCORE.get("exploration") or {}).get("share", 0.0)), type="number", minimum=0,
                                   maximum=1, title="Exploration share",
                                   description="share of users given a uniformly random arm, logged with its "
                                               "propensity (default: params.yaml score.exploration.share)"),
        "use_last_validated": Param(False, type="boolean", title="Use the last validated batch",
                                    description="if the ingested batch failed validation, score the last validated one "
                                                "(recorded in the manifest)"),
        "replay": Param(False, type="boolean", title="Replay an ended campaign",
                        description="re-score a past campaign for analysis (latest.json is not moved)"),
        "drift_override_reason": Param(None, type=["null", "string"], maxLength=500, title="Drift override reason",
                                       description="only when the drift gate blocked this campaign: why scoring "
                                                   "anyway is right (recorded in the manifest with your user name)"),
    },
)
def campaign_score():
    @task(execution_timeout=timedelta(minutes=10),
          doc_md="Refuse a bad request at once, with one line (budget, campaign, validation of the batch).")
    def check_request(params=None, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from campaignops.pipelines import run_notes, score_request

        try:
            req = score_request.check_request(load_settings(), params.get("campaign_id"), params.get("budget"),
                                      bool(params.get("use_last_validated")), bool(params.get("replay")),
                                      _exploration(params))
        except score_request.RequestError as exc:
            run_notes.note(load_settings(), "campaign_score", getattr(dag_run, "run_id", None), lambda:
                               run_notes.refused_note(str(params.get("campaign_id") or "no campaign"), str(exc)))
            raise AirflowFailException(f"score refused: {exc}") from None
        run_notes.note(load_settings(), "campaign_score", getattr(dag_run, "run_id", None), lambda:
                           run_notes.request_note(req.campaign_id, req.budget, params.get("engine"),
                                                  (params.get("drift_override_reason") or "").strip() or None))
        return {"campaign_id": req.campaign_id, "budget": req.budget, "validated_batch": req.validation["batch"]}

    @task(inlets=[ASSETS[CHAMPION], ASSETS[VALIDATED]], outlets=[ASSETS[SCORES]], execution_timeout=timedelta(minutes=60),
          doc_md="Features, drift gate, predictions, budgeted choice; commit the run atomically (a rerun returns "
                 "the committed run, or rewrites the same parts).")
    def score(request: dict, params=None, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from campaignops.pipelines import run_notes, score
        from campaignops.pipelines.drift import DriftDetected

        settings, run_id = load_settings(), getattr(dag_run, "run_id", None)
        reason = (params.get("drift_override_reason") or "").strip()
        override = {"reason": reason, "by": str(getattr(dag_run, "triggering_user_name", None) or "airflow")} \
            if reason else None
        try:
            manifest = score.run(load_settings(), campaign_id=request["campaign_id"], budget=request["budget"],
                                 engine=params.get("engine"), exploration=_exploration(params),
                                 allow_last_validated=bool(params.get("use_last_validated")),
                                 replay=bool(params.get("replay")),
                                 context={"dag_id": "campaign_score", "dag_run_id": run_id}, drift_override=override)
        except DriftDetected as exc:   # an outcome, not a crash: skipped, the reason in the run's note
            run_notes.note(settings, "campaign_score", run_id, lambda:
                               run_notes.blocked_note(request["campaign_id"], str(exc), "drift_override_reason"))
            raise AirflowSkipException(f"blocked by the drift gate: {exc}") from None
        except score.RequestError as exc:     # retrying would not help
            run_notes.note(settings, "campaign_score", run_id, lambda:
                               run_notes.refused_note(request["campaign_id"], str(exc)))
            raise AirflowFailException(f"score refused: {exc}") from None
        out = score.summary(manifest)
        run_notes.note(settings, "campaign_score", run_id, lambda: run_notes.score_note(settings, out, manifest.get("model")))
        return out

    score(check_request())


def _exploration(params):
    share = params.get("exploration_share")
    return None if share is None else {"share": float(share)}


campaign_score()
