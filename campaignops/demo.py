"""`make demo`: with the stack up, generate the sample world, run campaign_retrain then
campaign_score through Airflow's REST API, and print where everything is."""
from __future__ import annotations

import json
import time

from rich.console import Console

from campaignops.config import load_settings

console = Console()


def run_dag(client, dag_id: str, conf: dict, timeout: float) -> str:
    client.wait_for_dag(dag_id, timeout=300)
    client.unpause(dag_id)
    run_id = client.trigger(dag_id, conf)
    console.print(f"[bold]{dag_id}[/]: triggered run {run_id}; waiting…")
    state = client.wait_for_run(dag_id, run_id, timeout=timeout)
    console.print(f"[bold]{dag_id}[/]: {state}")
    return run_id


def main() -> None:
    from campaignops.infra.airflow_client import AirflowClient
    from campaignops.pipelines import synth
    from campaignops.pipelines.storage import ObjectStore

    t0 = time.perf_counter()
    settings = load_settings()
    manifest = synth.generate(settings)
    console.print(f"generated batch [bold]{manifest['batch']}[/]: "
                  + ", ".join(f"{t} {v['rows']:,}" for t, v in manifest["tables"].items()))
    client = AirflowClient.from_settings(settings)
    run_dag(client, "campaign_retrain", {"batch": manifest["batch"]}, timeout=3600)
    run_dag(client, "campaign_score", {"campaign_id": manifest["upcoming_campaign_id"]}, timeout=1800)

    store = ObjectStore(settings)
    latest = store.get_json(f"scores/{manifest['upcoming_campaign_id']}/latest.json")
    scored = store.get_json(store.key(latest["manifest"]))
    evaluation = json.loads((settings.workspace / "reports" / "evaluation.json").read_text())
    cand = evaluation["candidate"]
    console.rule("campaignops demo")
    console.print(f"champion: [bold]{scored['model']['uri']}[/] (run {scored['model']['run_id']})")
    console.print("holdout: " + ", ".join(f"{k}={cand[k]:.4f}" for k in
                                          ("auc", "logloss", "qini", "policy_value_ips", "policy_value_fraction")
                                          if k in cand))
    console.print(f"scores:   {scored['output']['prefix']}  ({scored['rows']:,} users, {scored['users_targeted']:,} sent "
                  f"of which {scored['exploration']['sends']:,} exploration; spent {scored['spent']:.2f} of {scored['budget']:.2f})")
    fc = scored["forecast"]["total"]["incremental_responses"]
    console.print(f"forecast: {fc['forecast']:.1f} incremental responses (90% {fc['lo']:.1f}–{fc['hi']:.1f})")
    truth = scored.get("truth_check")
    if truth and truth.get("forecast_over_truth") is not None:
        console.print(f"[bold yellow]forecast ÷ truth: {truth['forecast_over_truth']:.2f}[/] "
                      f"(true {truth['true_incremental_responses']:.1f}; "
                      f"{truth['fraction_of_oracle_same_count'] or 0:.0%} of the oracle at the same sends)")
    console.print(f"manifest: {latest['manifest']}")
    console.print(f"Airflow:  {settings.airflow_url}  (user {settings.airflow_user}, password in {settings.env_file})")
    console.print(f"MLflow:   {settings.mlflow_uri}  (user {settings.env.get('MLFLOW_TRACKING_USERNAME', '-')}, password in {settings.env_file})")
    console.print(f"S3:       {settings.s3_endpoint}  (keys in {settings.env_file})")
    console.print(f"wall time: {time.perf_counter() - t0:.0f} s.  Stop the stack with `make down`.")


if __name__ == "__main__":
    main()
