"""Benchmark of the validate step (pipelines/validate.py) on a synthetic batch in a local directory.

    .venv/bin/python benchmarks/bench_validate.py [--users 250000] [--baseline 25000] [--data /tmp/cops-bench]

Generates (or reuses) two synthetic batches with pipelines/synth.py — the baseline (~1M events at
25k users) and the main one (~10M events at 250k users, ~2M-event part files) — then runs the
whole `validate.run` (staging, DuckDB rules, GX checkpoint on a sample cross-checked with the SQL
twin, Data Docs, quarantine, validated parquet) on each, each in its own subprocess so peak RSS
(ru_maxrss of that process) is per run. Prints wall time, rows/s and the main/baseline ratio of
seconds per row (≈1 means linear scaling)."""
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

from campaignops.config import PACKAGE_ROOT, Settings
from campaignops.pipelines import layout, synth


def settings_for(ws: Path) -> Settings:
    ws.mkdir(parents=True, exist_ok=True)
    shutil.copy(PACKAGE_ROOT / "params.yaml", ws / "params.yaml")
    return Settings(workspace=ws, state_dir=ws / ".state", env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"})


def ensure_batch(root: Path, users: int) -> Path:
    target = root / f"u{users}"
    if not (target / layout.raw_manifest_key("bench")).exists():
        shutil.rmtree(target, ignore_errors=True)
        t0 = time.perf_counter()
        synth.generate(settings_for(root / "gen-ws"), users=users, seed=7, batch="bench",
                       store=synth.LocalStore(target), progress=False)
        print(f"generated {users} users in {time.perf_counter() - t0:.1f}s", flush=True)
    return target


def one(target: Path) -> dict:
    """Run validate once on the batch in `target` (called in a subprocess)."""
    from campaignops.pipelines import validate

    store = synth.LocalStore(target)
    manifest = store.get_json(layout.raw_manifest_key("bench"))
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        settings = settings_for(Path(tmp))
        (Path(tmp) / layout.RAW_MANIFEST).parent.mkdir(parents=True, exist_ok=True)
        (Path(tmp) / layout.RAW_MANIFEST).write_text(json.dumps(manifest))
        t0 = time.perf_counter()
        report = validate.run(settings, store=store)
        wall = time.perf_counter() - t0
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"wall_s": wall, "rows": report["rows_in"], "events": report["tables"]["events"]["rows_in"],
            "rows_valid": report["rows_valid"], "rows_quarantined": report["rows_quarantined"],
            "rows_deduplicated": report["rows_deduplicated"], "peak_rss_mb": kb / 1024,
            "timings_s": report["timings_s"], "gx_rows": {t: v["gx"]["rows"] for t, v in report["tables"].items()}}


def measure(target: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", str(target)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=250_000)
    ap.add_argument("--baseline", type=int, default=25_000)
    ap.add_argument("--data", default="/tmp/campaignops-bench-validate")
    ap.add_argument("--one")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(Path(a.one))))
        return
    root = Path(a.data)
    res = {}
    for name, users in (("baseline", a.baseline), ("main", a.users)):
        r = measure(ensure_batch(root, users))
        res[name] = r
        print(f"{name:8s} users={users:>7} rows={r['rows']:>10} (events {r['events']:>10}) wall={r['wall_s']:6.1f}s "
              f"rows/s={r['rows'] / r['wall_s']:>11,.0f} peak_rss={r['peak_rss_mb']:7.0f} MB "
              f"dedup={r['rows_deduplicated']} quarantined={r['rows_quarantined']} timings={r['timings_s']}",
              flush=True)
    b, m = res["baseline"], res["main"]
    ratio = (m["wall_s"] / m["rows"]) / (b["wall_s"] / b["rows"])
    print(f"ratio of seconds per row main/baseline: {ratio:.2f} (1.0 = linear); main wall {m['wall_s']:.1f}s "
          f"(goal <= 60s), peak RSS {m['peak_rss_mb']:.0f} MB vs baseline {b['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
