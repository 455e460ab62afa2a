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
partial run (tests/faults). A refused request or a drift breach fails at once, without retries.
Logic lives in `campaignops.pipelines.score`; this file only wires it.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from campaignops.config import load_settings
from campaignops.pipelines.assets import CHAMPION, SCORES, VALIDATED, lineage

ASSETS = lineage(load_settings().bucket)

@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["campaignops", "scoring"],
    doc_md=__doc__,
    default_args={"owner": "campaignops", "retries": 3, "retry_delay": timedelta(minutes=1),
                  "retry_exponential_backoff": 2.0, "max_retry_delay": timedelta(minutes=10),
                  "execution_timeout": timedelta(minutes=60)},
    params={
        "campaign_id": Param(None, type=["null", "string"], title="Campaign id",
                             description="e.g. C005; empty = the batch's upcoming campaign"),
        "budget": Param(None, type=["null", "number"], minimum=0, title="Budget",
                        description="total send cost allowed; empty = params.yaml score.default_budget"),
        "engine": Param("local", enum=["local", "spark"], title="Engine",
                        description="local: this worker; spark: params.yaml score.spark (docs/spark.md)"),
        "exploration_share": Param(None, type=["null", "number"], minimum=0, maximum=1, title="Exploration share",
                                   description="users given a uniformly random arm; empty = params.yaml score.exploration"),
        "use_last_validated": Param(False, type="boolean", title="Use the last validated batch",
                                    description="if the ingested batch failed validation, score the last validated one "
                                                "(recorded in the manifest)"),
        "replay": Param(False, type="boolean", title="Replay an ended campaign",
                        description="re-score a past campaign for analysis (latest.json is not moved)"),
    },
)
def campaign_score():
    @task(execution_timeout=timedelta(minutes=10),
          doc_md="Refuse a bad request at once, with one line (budget, campaign, validation of the batch).")
    def check_request(params=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from campaignops.pipelines import score_request

        try:
            req = score_request.check_request(load_settings(), params.get("campaign_id"), params.get("budget"),
                                      bool(params.get("use_last_validated")), bool(params.get("replay")),
                                      _exploration(params))
        except score_request.RequestError as exc:
            raise AirflowFailException(f"score refused: {exc}") from None
        return {"campaign_id": req.campaign_id, "budget": req.budget, "validated_batch": req.validation["batch"]}

    @task(inlets=[ASSETS[CHAMPION], ASSETS[VALIDATED]], outlets=[ASSETS[SCORES]], execution_timeout=timedelta(minutes=60),
          doc_md="Features, drift gate, predictions, budgeted choice; commit the run atomically (a rerun returns "
                 "the committed run, or rewrites the same parts).")
    def score(request: dict, params=None, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from campaignops.pipelines import score
        from campaignops.pipelines.drift import DriftDetected

        try:
            manifest = score.run(load_settings(), campaign_id=request["campaign_id"], budget=request["budget"],
                                 engine=params.get("engine"), exploration=_exploration(params),
                                 allow_last_validated=bool(params.get("use_last_validated")),
                                 replay=bool(params.get("replay")),
                                 context={"dag_id": "campaign_score", "dag_run_id": dag_run.run_id if dag_run else None})
        except (score.RequestError, DriftDetected) as exc:     # retrying would not help
            raise AirflowFailException(f"score refused: {exc}") from None
        return score.summary(manifest)

    score(check_request())


def _exploration(params):
    share = params.get("exploration_share")
    return None if share is None else {"share": float(share)}


campaign_score()
