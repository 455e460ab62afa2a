"""Benchmark of the features stage (pipelines/features.py) on a synthetic world.

    .venv/bin/python benchmarks/bench_features.py [--users 1000000] [--baseline 100000] [--threads 2] [--out DIR]

For each size: generates the world with synth into a LocalStore (reused if DIR already holds it),
writes the validated parquet files directly (no validation step), then runs features.build twice:
the build, and a no-op rerun as DVC sees it (`dvc status`-equivalent: inputs and params unchanged,
so the stage is skipped; measured as the time to hash deps and compare with the lock). Each build
runs in a child process so peak RSS (ru_maxrss of the child) is per size. Prints wall time, peak
RSS, rows/s and per-user time ratios against the baseline measured in the same run."""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from campaignops.config import Settings
from campaignops.pipelines import features, synth
ws, raw = Path(sys.argv[1]), Path(sys.argv[2])
s = Settings(workspace=ws, state_dir=ws / ".state")
t = time.perf_counter()
meta = features.build(s, store=synth.LocalStore(raw))
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "rows": meta["rows"], "chunks": meta["chunks"], "hashes": meta["hashes"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def prepare(users: int, out: Path, threads: int) -> tuple[Path, Path, dict]:
    from campaignops.config import PACKAGE_ROOT, Settings
    from campaignops.pipelines import synth

    raw, ws = out / f"raw{users}", out / f"ws{users}"
    manifest_key = raw / "raw/bench/_manifest.json"
    t = time.perf_counter()
    if not manifest_key.exists():
        synth.generate(Settings(workspace=PACKAGE_ROOT, state_dir=PACKAGE_ROOT / ".campaignops"), users=users,
                       batch="bench", store=synth.LocalStore(raw), progress=False)
    gen_s = time.perf_counter() - t
    vdir = ws / "data/validated"
    if not (vdir / "events.parquet").exists():
        import duckdb

        vdir.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect()
        for table in ("users", "events", "campaigns", "exposures"):
            con.execute(f"COPY (SELECT * FROM read_parquet('{raw}/raw/bench/{table}/*.parquet')) "
                        f"TO '{vdir / (table + '.parquet')}' (FORMAT parquet, COMPRESSION zstd)")
    shutil.copy(manifest_key, ws / "data/raw_manifest.json")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["features"]["threads"] = threads
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    manifest = json.loads(manifest_key.read_text())
    return ws, raw, {"gen_s": gen_s, "events": manifest["tables"]["events"]["rows"],
                     "exposures": manifest["tables"]["exposures"]["rows"]}


def build(ws: Path, raw: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ws), str(raw)], capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def noop_check(ws: Path) -> float:
    """What an unchanged `dvc repro features` costs: hash the stage's deps and compare them with
    the previous hashes (DVC does the same with its state cache, so this is an upper bound)."""
    from campaignops.pipelines.storage import sha256_file

    t = time.perf_counter()
    deps = [ws / "data/raw_manifest.json", *sorted((ws / "data/validated").glob("*.parquet")), ROOT / "pipelines/features.py"]
    _ = [sha256_file(p) for p in deps]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--baseline", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="work directory, kept (default: a temp dir, removed)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-features-"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in (args.baseline, args.users):
            ws, raw, info = prepare(n, out, args.threads)
            first = build(ws, raw)
            second = build(ws, raw)
            results.append({"users": n, **info, "build": first, "rebuild_identical": first["hashes"] == second["hashes"],
                            "rebuild_s": second["wall_s"], "noop_s": noop_check(ws)})
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print(f"threads={args.threads}")
    print(f"{'users':>9} {'events':>11} {'exposures':>10} {'build s':>8} {'events/s':>10} {'peak RSS MB':>12} "
          f"{'chunks':>6} {'no-op s':>8} {'same hashes':>11}")
    for r in results:
        b = r["build"]
        print(f"{r['users']:>9,} {r['events']:>11,} {r['exposures']:>10,} {b['wall_s']:>8.1f} "
              f"{r['events'] / b['wall_s']:>10,.0f} {b['peak_rss_mb']:>12.0f} {b['chunks']:>6} {r['noop_s']:>8.2f} "
              f"{str(r['rebuild_identical']):>11}")
    base, main_ = results
    print(f"ratios {main_['users']:,} vs {base['users']:,} users: wall {main_['build']['wall_s'] / base['build']['wall_s']:.2f}x, "
          f"per-event time {(main_['build']['wall_s'] / main_['events']) / (base['build']['wall_s'] / base['events']):.2f} "
          f"(1.00 = linear), peak RSS {main_['build']['peak_rss_mb'] / base['build']['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
