"""
### campaign_adjust

Dynamic strategy adjustment while a campaign runs. A campaign adjusted here is sent in daily
waves: on its start day (after `campaign_score`) **adjust** writes the plan — the scored users
spread over the campaign's days, each with the scoring run's arm. On each later day it reads the
responses of the waves that have landed, updates a Beta posterior per segment and variant centred
on the model's predictions, and re-draws the remaining model sends by Thompson sampling: every
variant keeps a minimum exploration share, no segment's variant shares move by more than
`max_daily_move` in a day, and the scoring run's exploration slice and its unsent users stay as
scored (`params.yaml` `adjust:`).

Each day's decision is a new immutable version under
`s3://<bucket>/allocations/<campaign_id>/<version>/` (parts, `report.json`: evidence, posterior vs
model, P(best), shares before and after; `manifest.json` written last; `latest.json` names the
newest). Rerunning a day returns the committed version. Form: `campaign_id` (empty = every
campaign running on the date that has a plan, or starts on it) and `date` (empty = the ingested
batch's date).

Runs daily at 06:00 UTC, after `campaign_retrain` (03:00) validated the day's batch with the landed
outcomes. **due** lists the campaigns, **adjust** runs once per campaign (one mapped task each).
Logic lives in `campaignops.pipelines.adjust`; this file only wires it.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from campaignops.config import load_settings
from campaignops.pipelines.schedules import daily_cron
from campaignops.pipelines.tasklog import on_task_start
from campaignops.pipelines.assets import ALLOCATIONS, SCORES, VALIDATED, lineage

ASSETS = lineage(load_settings().bucket)


@dag(
    schedule=daily_cron("0 6 * * *"),
    # No start_date: the first scheduled run is the next cron time after the DAG appears (daily_cron).
    catchup=False,
    max_active_runs=1,
    tags=["campaignops", "adjust"],
    description="Reallocate running campaigns' remaining sends per segment (Thompson sampling, model priors, capped)",
    doc_md=__doc__,
    default_args={"owner": "campaign-ml", "on_execute_callback": on_task_start, "retries": 3, "retry_delay": timedelta(minutes=1),
                  "retry_exponential_backoff": 2.0, "max_retry_delay": timedelta(minutes=10),
                  "execution_timeout": timedelta(minutes=30)},
    params={
        "campaign_id": Param(None, type=["null", "string"], title="Campaign id",
                             description="e.g. C006; empty = every campaign running on the date"),
        "date": Param(None, type=["null", "string"], title="Date",
                      description="ISO date the allocation is for; empty = the ingested batch's date"),
    },
)
def campaign_adjust():
    @task(doc_md="The campaigns to allocate on the date: the one named, else every running one with a plan "
                 "(or starting that day).")
    def due(params=None) -> list[str]:
        from campaignops.pipelines import adjust

        if params.get("campaign_id"):
            return [params["campaign_id"]]
        return adjust.due(load_settings(), params.get("date"))

    @task(inlets=[ASSETS[SCORES], ASSETS[VALIDATED]], outlets=[ASSETS[ALLOCATIONS]],
          doc_md="Write the campaign's plan or a new allocation version from its landed outcomes; return its "
                 "summary (idempotent: a repeated day returns the committed version).")
    def adjust(campaign_id: str, params=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from campaignops.pipelines import adjust as step

        try:
            return step.summary(step.run(load_settings(), campaign_id, params.get("date")))
        except step.AdjustError as exc:      # retrying would not help
            raise AirflowFailException(f"adjust {campaign_id} refused: {exc}") from None

    adjust.expand(campaign_id=due())


campaign_adjust()
