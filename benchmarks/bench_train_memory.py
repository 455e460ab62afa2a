"""Peak memory and phases of the train step (pipelines/train.run: load + encode, network fit,
baselines, MLflow logging) on a workspace that already has data/features.

    CAMPAIGNOPS_WORKSPACE=/path/with/data/features .venv/bin/python benchmarks/bench_train_memory.py --epochs 1

Runs in a throwaway copy of the workspace's params and features (the workspace is not written)
with a local file MLflow store, so no stack is needed. Samples this process's RSS every
`--every` seconds; prints the peak, when it happened, when the network's fit started and ended,
the RSS at those times and the run's own metrics. The
number of epochs does not change the peak (every epoch holds the same arrays), so one is enough.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--every", type=float, default=1.0, help="seconds between RSS samples")
    args = ap.parse_args()

    import psutil
    import yaml

    from campaignops.config import Settings, load_settings
    from campaignops.pipelines import layout

    source = load_settings().workspace
    proc, t0 = psutil.Process(), time.perf_counter()
    samples: list[tuple[float, float]] = []

    def sample() -> None:
        while True:
            samples.append((time.perf_counter() - t0, proc.memory_info().rss / 2**30))
            time.sleep(args.every)

    threading.Thread(target=sample, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="bench-train-mem-") as tmp:
        ws = Path(tmp)
        params = yaml.safe_load((source / "params.yaml").read_text())
        params["train"]["epochs"] = args.epochs
        (ws / "params.yaml").write_text(yaml.safe_dump(params))
        (ws / layout.FEATURES_DIR).parent.mkdir(parents=True)
        os.symlink(source / layout.FEATURES_DIR, ws / layout.FEATURES_DIR)   # read only
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws}/mlflow.db"
        os.chdir(ws)    # MLflow's default artifact root (./mlruns) lands in the throwaway copy
        settings = Settings(workspace=ws, state_dir=ws / ".state", env={})

        from campaignops.models import uplift_net

        marks: dict[str, float] = {}
        fit = uplift_net.fit_network

        def marked_fit(*a, **kw):   # train.run imports fit_network when it runs: this wrapper is what it gets
            first = "fit_start_s" not in marks        # the network's fit; the MLP baseline's comes later
            if first:
                marks["fit_start_s"] = time.perf_counter() - t0
            history = fit(*a, **kw)
            if first:
                marks["fit_end_s"] = time.perf_counter() - t0
            return history

        uplift_net.fit_network = marked_fit
        from campaignops.pipelines import train

        record = train.run(settings)
        total = time.perf_counter() - t0
    peak_s, peak = max(samples, key=lambda s: s[1])

    def rss_at(t: float) -> float:
        return round(min(samples, key=lambda s: abs(s[0] - t))[1], 2)

    print(json.dumps({"peak_rss_gib": round(peak, 2), "peak_at_s": round(peak_s, 1), "total_s": round(total, 1),
                      "phases_s": {k: round(v, 1) for k, v in marks.items()},
                      "rss_gib_before_fit": rss_at(marks["fit_start_s"] - 1),
                      "rss_gib_during_fit": rss_at((marks["fit_start_s"] + marks["fit_end_s"]) / 2),
                      "train_rows": record["metrics"]["train_rows"], "epochs": record["metrics"]["epochs_run"],
                      "train_seconds": round(record["metrics"]["train_seconds"], 1)}))


if __name__ == "__main__":
    main()
