"""`make demo`: with the stack up, run the closed loop for a few simulated days through Airflow.

Each day d (params `demo.days` days from `data.sim.start_date`):
1. the simulator lands `raw/<d>/` — the world as of d, including the outcomes of the sends the
   platform chose on earlier days — and announces it (an asset event, as an export job would);
2. Airflow's `campaign_retrain` starts by itself for that batch (validate → features → train →
   gate → promote) and records the day;
3. `campaign_feedback` compares each earlier scored campaign's forecast with its outcomes;
4. `campaign_score` targets the campaign starting on d under the default budget.
It then prints the loop's figures per day (`campaignops history`). Days that already landed are
not generated again, so a second `make demo` changes nothing and prints the same history."""
from __future__ import annotations

import sys
import time
from datetime import date, timedelta

from rich.console import Console
from rich.table import Table

from campaignops.config import load_settings

console = Console(width=None if sys.stdout.isatty() else 180)  # logs keep the tables readable


def wait_run(client, dag_id: str, run_id: str, timeout: float) -> str:
    """success | failed:<tasks> (the demo reports a failed run and goes on to the next step)."""
    from campaignops.infra.airflow_client import DagRunFailed

    try:
        return client.wait_for_run(dag_id, run_id, timeout=timeout)
    except DagRunFailed as exc:
        return f"failed: {', '.join(exc.failed_tasks) or exc.state}"


DAGS = ("campaign_retrain", "campaign_score", "campaign_feedback")


def retrain_day(client, settings, store, day: str, mine: set | None = None) -> str:
    """Announce the landed batch and wait for the retrain run Airflow starts for it (its id is added
    to `mine`)."""
    from campaignops.pipelines import assets

    seen = {r["dag_run_id"] for r in client.runs("campaign_retrain")}
    assets.announce_batch(settings, day, store.uri(f"raw/{day}/_manifest.json"))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        # the run the announcement started (a scheduled run Airflow may create meanwhile is not ours)
        new = [r for r in client.runs("campaign_retrain")
               if r["dag_run_id"] not in seen and r.get("run_type") == "asset_triggered"]
        if new:
            if mine is not None:
                mine.add(new[0]["dag_run_id"])
            state = wait_run(client, "campaign_retrain", new[0]["dag_run_id"], timeout=3600)
            console.print(f"  campaign_retrain {new[0]['dag_run_id']}: {state}")
            return state
        time.sleep(2)
    raise RuntimeError(f"Airflow started no campaign_retrain run for the announced batch {day} within 300 s")


def main() -> None:
    from campaignops.infra.airflow_client import AirflowClient
    from campaignops.pipelines import history, layout, retrain_day as days_mod, synth
    from campaignops.pipelines.storage import ObjectStore

    t0 = time.perf_counter()
    settings = load_settings()
    store = ObjectStore(settings)
    client = AirflowClient.from_settings(settings)
    for dag_id in DAGS:
        client.wait_for_dag(dag_id, timeout=300)
    before = {r["dag_run_id"] for dag_id in DAGS for r in client.runs(dag_id)}
    mine: set[str] = set()
    for dag_id in DAGS:
        client.unpause(dag_id)

    start = date.fromisoformat(str(settings.params["data"]["sim"]["start_date"]))
    n_days = int(settings.params["demo"]["days"])
    scored: list[str] = []
    for k in range(n_days):
        day = str(start + timedelta(days=k))
        t_day = time.perf_counter()
        console.rule(f"day {k + 1}/{n_days}: {day}")
        if store.head_or_none(layout.raw_manifest_key(day)) is None:
            manifest = synth.generate(settings, date=day, progress=False)
            console.print(f"  landed raw/{day}/: " + ", ".join(f"{t} {v['rows']:,}" for t, v in manifest["tables"].items()))
        else:
            manifest = store.get_json(layout.raw_manifest_key(day))
            console.print(f"  raw/{day}/ already landed: not generated again")
        if not retrain_day(client, settings, store, day, mine).startswith("success"):
            console.print("[red]  retraining failed: the loop stops here (see the Airflow run's log)[/]")
            break
        record = days_mod.read_record(store, day) or {}
        gate = "passed" if record.get("gate", {}).get("passed") else f"refused ({'; '.join(record.get('gate', {}).get('reasons', []))})"
        console.print(f"  gate {gate}; champion v{record.get('champion_after')}")
        for campaign in scored:
            run_id = client.trigger("campaign_feedback", {"campaign_id": campaign})
            mine.add(run_id)
            state = wait_run(client, "campaign_feedback", run_id, timeout=900)
            flag = "[bold yellow]actual outside the forecast interval[/]" if "check_forecast" in state else state
            console.print(f"  campaign_feedback {campaign}: {flag}")
        scored = []
        campaign = manifest["upcoming_campaign_id"]
        run_id = client.trigger("campaign_score", {"campaign_id": campaign})
        mine.add(run_id)
        console.print(f"  campaign_score {campaign}: {wait_run(client, 'campaign_score', run_id, timeout=1800)}")
        scored.append(campaign)
        console.print(f"  day took {time.perf_counter() - t_day:.0f} s")

    days = history.collect(store)
    table = Table(*history.COLUMNS, title="the loop, day by day (campaignops history)")
    for row in history.table_rows(days):
        table.add_row(*row)
    console.print(table)
    page = settings.workspace / "reports" / "history.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(history.to_html(days))
    console.print(f"history page: {page}")
    report_other_runs(client, before, mine)
    console.print(f"Airflow:  {settings.airflow_url}  (user {settings.airflow_user}, password in {settings.env_file})")
    console.print(f"MLflow:   {settings.mlflow_uri}  (user {settings.env.get('MLFLOW_TRACKING_USERNAME', '-')}, password in {settings.env_file})")
    console.print(f"S3:       {settings.s3_endpoint}  (keys in {settings.env_file})")
    console.print(f"wall time: {time.perf_counter() - t0:.0f} s.  Stop the stack with `make down`.")


def other_runs(client, before: set[str], mine: set[str]) -> list[dict]:
    """Runs of the demo's DAGs that appeared while it ran and that it did not start or follow."""
    return [{**r, "dag_id": dag_id} for dag_id in DAGS for r in client.runs(dag_id)
            if r["dag_run_id"] not in before and r["dag_run_id"] not in mine]


def report_other_runs(client, before: set[str], mine: set[str]) -> None:
    others = other_runs(client, before, mine)
    if not others:
        console.print(f"Airflow runs: the {len(mine)} the demo started or followed, no others")
        return
    console.print(f"[yellow]Airflow also ran {len(others)} run(s) the demo did not start:[/]")
    for r in others:
        console.print(f"  {r['dag_id']} {r['dag_run_id']} ({r.get('run_type')}): {r.get('state')}"
                      f" {(r.get('note') or '').splitlines()[0] if r.get('note') else ''}")


if __name__ == "__main__":
    main()
