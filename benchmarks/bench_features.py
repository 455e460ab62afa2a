"""Benchmark of the features stage (pipelines/features.py) on a synthetic world.

    .venv/bin/python benchmarks/bench_features.py [--users 1000000] [--events-per-user 51]
        [--baseline 100000] [--threads 2] [--out DIR] [--no-dvc]

For the baseline size and the main size (default 1M users × ~51 events = ~50M events): generates
the world with synth into a LocalStore (reused when --out DIR already holds it), writes the
validated parquet files directly (no validation step), then runs features.build twice, each in a
child process so wall time, CPU time and peak RSS (the child's, with any children of its own) are
per build; the two builds must give identical output hashes. Then, at the main size, the no-op
rerun as DVC sees it: a temp git+DVC repo like tests/pipelines/test_dvc_stages.py's, holding the
built data/features; `dvc commit` records it, and an unchanged `dvc status` / `dvc repro features`
is timed (it must skip the stage). Prints the figures and ratios against the baseline of the same
run. The work dir is removed at the end unless --out is given (then the generated data is kept for
the next run; delete it when done).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

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
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": wall, "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
                  "rows": meta["rows"], "chunks": meta["chunks"], "hashes": meta["hashes"],
                  "peak_rss_mb": max(me.ru_maxrss, kids.ru_maxrss) / 1024}))
"""


def prepare(users: int, events_per_user: float, out: Path, threads: int) -> tuple[Path, Path, dict]:
    from campaignops.config import Settings
    from campaignops.pipelines import synth

    tag = f"{users}x{events_per_user:g}"
    raw, ws, gen = out / f"raw{tag}", out / f"ws{tag}", out / f"gen{tag}"
    manifest_key = raw / "raw/bench/_manifest.json"
    t = time.perf_counter()
    if not manifest_key.exists():
        gen.mkdir(parents=True, exist_ok=True)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["data"]["events_per_user"] = events_per_user
        (gen / "params.yaml").write_text(yaml.safe_dump(params))
        synth.generate(Settings(workspace=gen, state_dir=gen / ".state"), users=users,
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
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    manifest = json.loads(manifest_key.read_text())
    return ws, raw, {"gen_s": gen_s, "events": manifest["tables"]["events"]["rows"],
                     "exposures": manifest["tables"]["exposures"]["rows"]}


def build(ws: Path, raw: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ws), str(raw)], capture_output=True, text=True,
                          env={**os.environ, "CAMPAIGNOPS_ID_SALT": "bench-features-salt"})
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dvc_noop(ws: Path, out: Path) -> dict:
    """An unchanged `dvc repro features` on the built workspace: a temp git+DVC repo with the
    project's dvc.yaml, code and params, data/validated and data/features hard-linked from `ws`,
    the stage recorded with `dvc commit`; then `dvc status` and `dvc repro` are timed."""
    repo = out / "dvcrepo"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copy(ws / "params.yaml", repo / "params.yaml")
    (repo / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    for d in ("pipelines", "validation", "models", "campaignops"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "data").mkdir()
    shutil.copy(ws / "data/raw_manifest.json", repo / "data/raw_manifest.json")
    for sub in ("validated", "features"):
        shutil.copytree(ws / "data" / sub, repo / "data" / sub, copy_function=os.link)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "CAMPAIGNOPS_WORKSPACE": str(repo), "CAMPAIGNOPS_STATE": str(repo / ".campaignops"),
           "CAMPAIGNOPS_ID_SALT": "bench-features-salt"}

    def run(*args: str) -> tuple[float, str]:
        t = time.perf_counter()
        proc = subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
        return time.perf_counter() - t, proc.stdout + proc.stderr

    git = ("git", "-c", "user.email=bench@localhost", "-c", "user.name=bench")
    run("git", "init", "-q")
    run(*git, "add", "-A")
    run(*git, "commit", "-qm", "project copy")
    commit_s, _ = run(str(BIN / "dvc"), "commit", "--force", "features")
    result = {"commit_s": commit_s, "status_s": [], "repro_s": []}
    for _ in range(2):
        s, text = run(str(BIN / "dvc"), "status", "features")
        result["status_s"].append(s)
        s, text = run(str(BIN / "dvc"), "repro", "--no-run-cache", "--single-item", "features")
        if "didn't change, skipping" not in text:
            raise SystemExit(f"unchanged `dvc repro features` did not skip the stage:\n{text}")
        result["repro_s"].append(s)
    shutil.rmtree(repo, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--events-per-user", type=float, default=51.0, help="mean; 51 gives ~50.8M events at 1M users")
    ap.add_argument("--baseline", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="work directory, kept (default: a temp dir, removed)")
    ap.add_argument("--no-dvc", action="store_true", help="skip the `dvc repro` no-op measurement")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-features-"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in (args.baseline, args.users):
            ws, raw, info = prepare(n, args.events_per_user, out, args.threads)
            runs = [build(ws, raw) for _ in range(2)]
            results.append({"users": n, **info, "runs": runs,
                            "identical": runs[0]["hashes"] == runs[1]["hashes"]})
        noop = None if args.no_dvc else dvc_noop(ws, out)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print(f"threads={args.threads}, cores={os.cpu_count()}, load average at end {os.getloadavg()[0]:.1f}")
    print(f"{'users':>9} {'events':>11} {'exposures':>10} {'run':>3} {'wall s':>7} {'cpu s':>7} {'events/s':>10} "
          f"{'peak RSS MB':>11} {'chunks':>6} {'same hashes':>11}")
    for r in results:
        for i, b in enumerate(r["runs"]):
            print(f"{r['users']:>9,} {r['events']:>11,} {r['exposures']:>10,} {i + 1:>3} {b['wall_s']:>7.1f} "
                  f"{b['cpu_s']:>7.1f} {r['events'] / b['wall_s']:>10,.0f} {b['peak_rss_mb']:>11.0f} {b['chunks']:>6} "
                  f"{str(r['identical']):>11}")
    base, main_ = results
    bw, mw = (min(b["wall_s"] for b in r["runs"]) for r in (base, main_))
    bc, mc = (min(b["cpu_s"] for b in r["runs"]) for r in (base, main_))
    brss, mrss = (max(b["peak_rss_mb"] for b in r["runs"]) for r in (base, main_))
    print(f"ratios {main_['users']:,} vs {base['users']:,} users (best of 2): events {main_['events'] / base['events']:.2f}x, "
          f"wall {mw / bw:.2f}x, cpu {mc / bc:.2f}x, per-event wall {(mw / main_['events']) / (bw / base['events']):.2f} "
          f"(1.00 = linear), peak RSS {mrss / brss:.2f}x")
    if noop:
        print(f"no-op rerun at {main_['users']:,} users: dvc status {', '.join(f'{s:.1f}' for s in noop['status_s'])} s, "
              f"unchanged dvc repro features {', '.join(f'{s:.1f}' for s in noop['repro_s'])} s "
              f"(dvc commit of the built stage first: {noop['commit_s']:.1f} s)")


if __name__ == "__main__":
    main()
