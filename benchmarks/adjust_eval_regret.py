"""The evaluation's dynamic-adjustment figures (pipelines/adjust_eval.py) on a simulator world: the
campaign starting on `--day` with the world's truth at its start as T, a model P = T (+ per-user
noise of sd `--noise`, an imperfect model), age bands as segments (pipelines/adjust_sim.py's), the
campaign's costs and params.yaml `evaluate.adjustment` / `adjust:`. Prints static, uniform and
adjusted regret (currency) for the model as it is and overstating one variant, and the time
adjust_eval.run takes. Moto S3 in process; nothing else is started.

    .venv/bin/python benchmarks/adjust_eval_regret.py [--users 20000] [--noise 0.0] [--seeds 3]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from datetime import date, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def world(users: int, seed: int, day: int):
    """(T [users, arms] with control last, age band per user, per-arm cost, arm ids) of the campaign."""
    import boto3
    from moto import mock_aws

    from campaignops.config import Settings
    from campaignops.pipelines import adjust_sim, synth
    from campaignops.pipelines.storage import ObjectStore
    from campaignops.validation.contract import CONTROL

    ws = Path(tempfile.mkdtemp(prefix="adjust-eval-"))
    try:
        (ws / "params.yaml").write_text((ROOT / "params.yaml").read_text())
        s = Settings(workspace=ws, state_dir=ws / ".state",
                     env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"})
        with mock_aws():
            store = ObjectStore(s, client=boto3.client("s3", region_name="us-east-1"))
            store.ensure_bucket()
            start = date.fromisoformat(str(s.params["data"]["sim"]["start_date"])) + timedelta(days=day)
            m = synth.generate(s, users=users, seed=seed, store=store, progress=False, date=start.isoformat())
            cid = m["upcoming_campaign_id"]
            camp = adjust_sim._read(store, m, "campaigns").query("campaign_id == @cid").sort_values("variant_id")
            arms = [*camp["variant_id"], CONTROL]
            truth = adjust_sim._read(store, m, "truth").query("campaign_id == @cid and exposure_id.isna()")
            T = truth.pivot(index="user_id", columns="variant_id", values="p_response")[arms]
            age = adjust_sim._read(store, m, "users").set_index("user_id").reindex(T.index)["age"].to_numpy()
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    band = np.searchsorted(np.array(adjust_sim.AGE_BANDS), age, side="right")
    return T.to_numpy(np.float64), band, np.append(camp["cost_per_send"].to_numpy(np.float64), 0.0), arms


def main() -> None:
    from campaignops.config import Settings
    from campaignops.pipelines import adjust_eval

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=7, help="the world's seed")
    ap.add_argument("--day", type=int, default=1, help="simulated day the campaign starts on")
    ap.add_argument("--noise", type=float, default=0.0, help="sd of the model's per-user error on each arm")
    ap.add_argument("--seeds", type=int, default=None, help="default: evaluate.adjustment.seeds")
    a = ap.parse_args()
    T, band, cost, arms = world(a.users, a.seed, a.day)
    P = np.clip(T + np.random.default_rng(0).normal(0, a.noise, T.shape), 1e-4, 1 - 1e-4) if a.noise else T
    cfg = adjust_eval.config(Settings(workspace=ROOT, state_dir=ROOT / ".state", env={}))   # params.yaml
    if a.seeds:
        cfg["seeds"] = a.seeds
    print(f"adjust_eval_regret: {a.users} users, world seed {a.seed}, campaign of day {a.day} ({', '.join(arms)}), "
          f"model noise sd {a.noise}, the wrong row's bias {cfg['bias']:+g} on each variant in turn")
    for slot in range(len(arms) - 1):
        r = adjust_eval.run(P, T, band, cost, {**cfg, "bias_slot": slot}, seed=0)
        print(f"\nwrong row overstates {arms[slot]}: {r['sends']} sends, regret in {r['unit']}, oracle net value "
              f"{r['oracle_net_value']:,.0f}, adjust_eval.run {r['seconds']:.1f} s")
        for name, s in r["scenarios"].items():
            paired = [x / y for x, y in zip(s["adjusted_regret_by_seed"], s["static_regret_by_seed"])]
            print(f"  {name:5s} static {s['static_regret']:9.1f}  uniform {s['uniform_regret']:9.1f}  adjusted "
                  f"{s['adjusted_regret']:9.1f}  adjusted/static {s['adjusted_vs_static']:.3f} (seeds "
                  f"{min(paired):.3f}–{max(paired):.3f})  uniform/static {s['uniform_vs_static']:.2f}")


if __name__ == "__main__":
    main()
