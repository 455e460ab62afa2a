"""The whole campaign_retrain DAG through Airflow on the real stack (SeaweedFS, MLflow, Airflow in
a sandbox copy of the project on free ports), at a baseline size and at the target size, with
per-task wall times from Airflow's task instances.

    .venv/bin/python benchmarks/bench_retrain_dag.py --users 20000 1000000

Prints one JSON line per size (generate time, per-task seconds, DAG seconds, seconds per 1k
users, the candidate's and the baselines' holdout figures) and the ratio of each size's DAG time
to the baseline (the first size). The issue's budget: the whole DAG ≤ 15 min at 1M users on 2 cores."""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path


def _seconds(ti: dict) -> float | None:
    """A task instance's or DAG run's duration from Airflow's own timestamps."""
    if ti.get("duration") is not None:
        return float(ti["duration"])
    if not ti.get("start_date") or not ti.get("end_date"):
        return None
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(ti["end_date"]) - parse(ti["start_date"])).total_seconds()


def run_size(users: int, epochs: int | None) -> dict:
    from campaignops.config import apply_env
    from campaignops.infra.airflow_client import AirflowClient
    from campaignops.infra.sandbox import sandbox_stack
    from campaignops.pipelines import synth

    def update(params: dict) -> None:
        params["data"]["users"] = users
        if epochs:
            params["train"]["epochs"] = epochs

    with tempfile.TemporaryDirectory(prefix="bench-dag-") as tmp, sandbox_stack(Path(tmp), update) as settings:
        apply_env(settings)
        t0 = time.perf_counter()
        manifest = synth.generate(settings, progress=False)
        generate_s = time.perf_counter() - t0
        client = AirflowClient.from_settings(settings)
        client.wait_for_dag("campaign_retrain", timeout=300)
        client.unpause("campaign_retrain")
        t0 = time.perf_counter()
        run_id = client.trigger("campaign_retrain", {"batch": manifest["batch"]})
        state = client.wait_for_run("campaign_retrain", run_id, timeout=3 * 3600)
        wall_s = time.perf_counter() - t0
        run = client.get_run("campaign_retrain", run_id)
        dag_s = _seconds(run) or wall_s   # the run's own start→end, without any wait in the queue
        tis = sorted(client.task_instances("campaign_retrain", run_id), key=lambda ti: ti.get("start_date") or "")
        tasks = {ti["task_id"]: _seconds(ti) for ti in tis}
        train = json.loads((settings.workspace / "reports" / "train_metrics.json").read_text())
        evaluation = json.loads((settings.workspace / "reports" / "evaluation.json").read_text())
        return {"users": users, "events": manifest["tables"]["events"]["rows"], "state": state,
                "generate_s": round(generate_s, 1), "dag_s": round(dag_s, 1),
                "trigger_to_done_s": round(wall_s, 1),
                "dag_s_per_1k_users": round(dag_s / users * 1000, 3),
                "tasks_s": {k: round(v, 1) for k, v in tasks.items() if v is not None},
                "train_rows": train.get("train_rows"), "epochs_run": train.get("epochs_run"),
                "train_rows_per_s": round(train.get("train_rows_per_s", 0.0)),
                "gate_passed": evaluation["passed"],
                "holdout": _figures(evaluation["candidate"]),
                "baselines": {name: _figures(b) for name, b in evaluation["baselines"].items()},
                "vs_baselines": {name: {k: round(v[k], 6) if isinstance(v[k], float) else v[k]
                                        for k in ("lead", "sd", "verdict")}
                                 for name, v in evaluation.get("vs_baselines", {}).items()},
                "baseline_train_rows": train.get("baseline_train_rows")}


def _figures(metrics: dict) -> dict:
    """The holdout figures that rank models: policy value against the oracle (synthetic world), Qini, AUC."""
    keys = ("policy_to_oracle_ratio", "policy_value_fraction", "qini", "auc")
    return {k: round(metrics[k], 4) for k in keys if metrics.get(k) is not None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, nargs="+", default=[20_000, 1_000_000])
    ap.add_argument("--epochs", type=int, default=None, help="cap train.epochs (default: params.yaml)")
    args = ap.parse_args()
    base = None
    for users in args.users:
        row = run_size(users, args.epochs)
        base = base or row
        row["ratio_dag_s_vs_baseline"] = round(row["dag_s"] / base["dag_s"], 2)
        row["ratio_per_user_vs_baseline"] = round(row["dag_s_per_1k_users"] / base["dag_s_per_1k_users"], 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
