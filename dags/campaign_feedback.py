"""
### campaign_feedback

Did a scored campaign do what its forecast said? Once a campaign's outcomes have landed (the
exposures of the batch after it ran, in the validated data), its scores run is joined with them and
the actual incremental responses, conversions and GMV of its sends are measured per variant, in
total and per segment — inverse-propensity weighted, with the exploration slice and the no-send
control as the counterfactual — beside the run's forecast and, on synthetic batches, the truth.

**compare** writes `s3://<bucket>/feedback/<campaign>/<run>/report.json` + `report.html`, the link
`scores/<campaign>/<run>/feedback.json` and one MLflow run per (campaign, scores run) in experiment
`campaign_feedback`; it returns a short summary. A rerun with the same inputs rewrites and logs
nothing. Form: `campaign_id` (empty = every campaign whose latest scores run has landed outcomes
and no report yet) and `scores_run_id` (empty = the run `latest.json` names). A named campaign
whose outcomes have not landed fails here with that reason.

Runs daily at 05:00 UTC, after `campaign_retrain` (03:00) validated the day's batch.
**check_forecast** fails (the visible signal) listing every gated metric whose actual is outside
the forecast's interval (`params.yaml` `feedback.gate`); the reports are written before it runs.
Logic lives in `campaignops.pipelines.feedback`; this file only wires it.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from campaignops.config import load_settings
from campaignops.pipelines.schedules import daily_cron
from campaignops.pipelines.tasklog import on_task_start
from campaignops.pipelines.assets import FEEDBACK, SCORES, VALIDATED, lineage

ASSETS = lineage(load_settings().bucket)


@dag(
    # 05:00 UTC: after campaign_retrain (03:00) has validated the day's batch with the outcomes.
    schedule=daily_cron("0 5 * * *"),
    # No start_date: the first scheduled run is the next cron time after the DAG appears (daily_cron).
    catchup=False,
    max_active_runs=1,
    tags=["campaignops", "feedback"],
    description="Forecast vs actual of scored campaigns whose outcomes landed (IPW over the exploration slice)",
    doc_md=__doc__,
    default_args={"owner": "campaign-ml", "on_execute_callback": on_task_start, "retries": 3, "retry_delay": timedelta(minutes=1),
                  "retry_exponential_backoff": 2.0, "max_retry_delay": timedelta(minutes=10),
                  "execution_timeout": timedelta(minutes=60)},
    params={
        "campaign_id": Param(None, type=["null", "string"], title="Campaign id",
                             description="e.g. C005; empty = every campaign with landed outcomes and no report yet"),
        "scores_run_id": Param(None, type=["null", "string"], title="Scores run id",
                               description="empty = the run scores/<campaign>/latest.json names (the one acted on)"),
    },
)
def campaign_feedback():
    @task(inlets=[ASSETS[SCORES], ASSETS[VALIDATED]], outlets=[ASSETS[FEEDBACK]],
          doc_md="Measure the actual effect of each due campaign's sends; write the reports, the link and the "
                 "MLflow run; return one summary per campaign (idempotent).")
    def compare(params=None) -> list[dict]:
        from airflow.sdk.exceptions import AirflowFailException

        from campaignops.pipelines import feedback

        try:
            return feedback.run_due(load_settings(), params.get("campaign_id"), params.get("scores_run_id"))
        except feedback.FeedbackError as exc:     # OutcomesNotReady included: retrying would not help
            raise AirflowFailException(f"feedback refused: {exc}") from None

    @task(retries=0, execution_timeout=timedelta(minutes=5),
          doc_md="Fail, listing them, when a gated metric's actual is outside the forecast's interval.\n\n"
                 "Not retried: a verdict on the reports already written, no I/O to wait out; its failure is the "
                 "signal and a retry would give the same answer.")
    def check_forecast(results: list[dict]) -> int:
        from airflow.sdk.exceptions import AirflowFailException

        lines = [f"{r['campaign_id']}/{r['scores_run_id']} {line} (report {r['html']})"
                 for r in results for line in r["outside_interval"]]
        if lines:
            raise AirflowFailException("actual outside the forecast interval:\n" + "\n".join(lines))
        return len(results)

    check_forecast(compare())


campaign_feedback()
