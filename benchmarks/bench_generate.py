"""Benchmark of the synthetic world generator (pipelines/synth.py) writing to a local directory.

    .venv/bin/python benchmarks/bench_generate.py [--users 100000] [--baseline 20000] [--chunk-size 50000]

Runs a small baseline then the main size in the same process and prints wall time, rows/s,
peak RSS and the per-user time ratio main/baseline (≈1 means linear scaling). Peak RSS is the
process high-water mark (ru_maxrss), so the main run's figure includes the baseline's."""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from campaignops.config import PACKAGE_ROOT, Settings
from campaignops.pipelines import synth


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def run(settings: Settings, users: int, chunk_size: int, out: Path, seed: int) -> dict:
    target = out / f"u{users}"
    shutil.rmtree(target, ignore_errors=True)
    t0 = time.perf_counter()
    m = synth.generate(settings, users=users, seed=seed, batch="bench", store=synth.LocalStore(target),
                       progress=False, chunk_size=chunk_size)
    wall = time.perf_counter() - t0
    rows = sum(v["rows"] for v in m["tables"].values())
    return {"users": users, "wall_s": wall, "events": m["tables"]["events"]["rows"], "rows": rows,
            "truth_rows": m["truth"]["rows"], "rows_per_s": (rows + m["truth"]["rows"]) / wall,
            "events_per_s": m["tables"]["events"]["rows"] / wall, "us_per_user": wall / users * 1e6,
            "peak_rss_mb": peak_rss_mb(), "disk_mb": dir_mb(target), "stats": m["truth"]["stats"]["past"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--baseline", type=int, default=20_000)
    ap.add_argument("--chunk-size", type=int, default=synth.CHUNK_USERS)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: a temp dir, removed)")
    args = ap.parse_args()

    settings = Settings(workspace=PACKAGE_ROOT, state_dir=PACKAGE_ROOT / ".campaignops")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        run(settings, 2_000, args.chunk_size, out, args.seed)  # warm-up: imports and first-call costs
        results = [run(settings, n, args.chunk_size, out, args.seed) for n in (args.baseline, args.users)]
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)

    print(f"{'users':>9} {'wall s':>8} {'events':>11} {'rows+truth/s':>13} {'events/s':>11} "
          f"{'us/user':>8} {'peak RSS MB':>12} {'disk MB':>8}")
    for r in results:
        print(f"{r['users']:>9,} {r['wall_s']:>8.2f} {r['events']:>11,} {r['rows_per_s']:>13,.0f} "
              f"{r['events_per_s']:>11,.0f} {r['us_per_user']:>8.1f} {r['peak_rss_mb']:>12.0f} {r['disk_mb']:>8.1f}")
    base, main_ = results
    print(f"per-user time ratio {main_['users']:,} vs {base['users']:,} users: "
          f"{main_['us_per_user'] / base['us_per_user']:.2f} (1.00 = linear)")
    s = main_["stats"]
    print(f"world: response rate {s['observed_response_rate']:.4f}, control {s['control_value']:.4f}, "
          f"best fixed arm {s['best_fixed_arm_value']:.4f}, oracle {s['oracle_value']:.4f}, "
          f"no positive-uplift arm {s['share_no_positive_uplift']:.1%}, uplift by type {s['mean_uplift_by_type']}")


if __name__ == "__main__":
    main()
