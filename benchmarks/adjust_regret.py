"""Cumulative regret vs the oracle of the static, uniform and adjusted allocations of one campaign on
the simulator (pipelines/adjust_sim.py), in a world where the model is right and one where it
overstates a variant; ratios are to the static allocation of the same run.

The campaign starting on `--day` is scored with the truth at its start as the model (plus the bias),
planned in daily waves and sent through synth.generate day by day: static = the plan alone,
adjusted = campaign_adjust's step every day (params.yaml `adjust:`), both repeated for `--seeds`
seeds of the adjustment (its waves and draws; the world and the sends stay the same) and compared
seed by seed. Uniform = every send's variant
drawn uniformly (its expectation on the same sends). Moto S3 in process; nothing else is started.

    .venv/bin/python benchmarks/adjust_regret.py [--users 20000] [--seeds 3] [--variant V2] [--bias 0.05]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def settings_for(ws: Path, adjust_seed: int):
    from campaignops.config import Settings

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["adjust"]["seed"] = adjust_seed
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return Settings(workspace=ws, state_dir=ws / ".state", env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"})


def world(ws: Path, store_for, a, bias: dict) -> dict:
    """Per adjustment seed (it keys the waves too), the static and the adjusted run: paired ratios."""
    from campaignops.pipelines import adjust_sim

    out = {"static": [], "uniform": [], "adjusted": []}
    for seed in range(a.seeds):
        s = settings_for(ws, seed)
        static = adjust_sim.run_campaign(s, store_for(s), a.day, a.users, a.seed, bias, adjusted=False)
        r = adjust_sim.regret(static["sends"], static["waves"])
        moved = adjust_sim.run_campaign(s, store_for(s), a.day, a.users, a.seed, bias, adjusted=True)
        out["static"].append(r["cumulative"])
        out["uniform"].append(r["uniform_cumulative"])
        out["adjusted"].append(adjust_sim.regret(moved["sends"], moved["waves"])["cumulative"])
        out.update(sends=r["sends"], oracle=r["oracle_value"])
    return out


def show(name: str, r: dict) -> None:
    mean = {k: np.mean(r[k], axis=0) for k in ("static", "uniform", "adjusted")}
    ratio = {k: np.array([c[-1] for c in r[k]]) / np.array([c[-1] for c in r["static"]]) for k in ("uniform", "adjusted")}
    print(f"\n{name}: {r['sends']} sends, oracle net value {r['oracle']:,.0f} (regret: currency, mean of seeds)")
    print(f"  {'day':>4} {'static':>9} {'uniform':>9} {'adjusted':>9}")
    for d in range(len(mean["static"])):
        print(f"  {d:>4} {mean['static'][d]:>9.1f} {mean['uniform'][d]:>9.1f} {mean['adjusted'][d]:>9.1f}")
    print(f"  vs static (per seed)  uniform {', '.join(f'{x:.2f}' for x in ratio['uniform'])}  "
          f"adjusted {', '.join(f'{x:.3f}' for x in ratio['adjusted'])}  (mean {ratio['adjusted'].mean():.3f}x)")


def main() -> None:
    import boto3
    from moto import mock_aws

    from campaignops.pipelines.storage import ObjectStore

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=7, help="the world's seed")
    ap.add_argument("--day", type=int, default=1, help="simulated day the campaign starts on")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the adjustment's draws")
    ap.add_argument("--variant", default="V2", help="the variant the wrong model overstates")
    ap.add_argument("--bias", type=float, default=0.05, help="by how much (response probability)")
    a = ap.parse_args()
    ws = Path(tempfile.mkdtemp(prefix="adjust-regret-"))
    t0 = time.perf_counter()
    try:
        with mock_aws():
            client = boto3.client("s3", region_name="us-east-1")

            def store_for(s):
                store = ObjectStore(s, client=client)
                store.ensure_bucket()
                return store

            right = world(ws, store_for, a, {})
            wrong = world(ws, store_for, a, {a.variant: a.bias})
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    print(f"adjust_regret: {a.users} users, world seed {a.seed}, campaign of day {a.day}, {a.seeds} adjustment seeds, "
          f"{time.perf_counter() - t0:.0f} s")
    show("model right", right)
    show(f"model wrong: {a.variant} overstated by {a.bias:+.2f}", wrong)


if __name__ == "__main__":
    main()
