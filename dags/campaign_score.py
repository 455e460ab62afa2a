"""
### campaign_score

Scores every user under each variant of a campaign with the `champion` model and picks the
best variant (or none) per user within the budget. Output: parquet + manifest in S3 under
`scores/<campaign_id>/<run>/`. Leave the campaign empty to score the upcoming one.

**drift_check** runs first: every user's features as of the campaign start vs the champion's
training snapshot (PSI per feature, policy in params.yaml `drift:`); a blocking breach stops
the run before scoring, report in `reports/drift_score.json` and S3 `drift/score/`.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["campaignops", "scoring"],
    doc_md=__doc__,
    default_args={"owner": "campaignops", "retries": 0, "execution_timeout": timedelta(minutes=60)},
    params={
        "campaign_id": Param(None, type=["null", "string"], title="Campaign id",
                             description="e.g. C005; empty = the batch's upcoming campaign"),
        "budget": Param(None, type=["null", "number"], minimum=0, title="Budget",
                        description="total send cost allowed; empty = params.yaml score.default_budget"),
    },
)
def campaign_score():
    @task
    def drift_check(params=None) -> dict:
        from campaignops.config import load_settings
        from campaignops.pipelines.drift import gate_scoring, summary

        return summary(gate_scoring(load_settings(), campaign_id=params.get("campaign_id")))

    @task
    def score(params=None) -> dict:
        from campaignops.config import load_settings
        from campaignops.pipelines.score import run

        manifest = run(load_settings(), campaign_id=params.get("campaign_id"), budget=params.get("budget"))
        return {k: manifest[k] for k in ("campaign_id", "output", "model", "rows", "users_targeted", "spent")}

    drift_check() >> score()


campaign_score()
