"""Training throughput of the main network (attention or GRU sequence encoder + target attention
+ uplift head) vs the non-sequence MLP baseline on the same rows, and an extrapolation of the
train step to 1M users.

    CAMPAIGNOPS_WORKSPACE=/tmp/smoke2 .venv/bin/python benchmarks/bench_train.py --scales 1 5

Reads data/features of the workspace (e.g. the 20k-user smoke workspace). `--scales k` tiles the
training rows k times (k=5 on a 20k-user workspace ≈ 100k users' rows): throughput depends on the
row count and shapes, not on the content, so this avoids regenerating features for every size.
Timed over `--epochs` fixed epochs (no early stopping) after one warm-up epoch. `main_one_step`
is the main network with one batch per compiled call (train.steps_per_execution 1): the ratio
shows what batching the dispatch buys (the weights are the same either way)."""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--target-users", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=None, help="default: params train.batch_size")
    args = ap.parse_args()

    from campaignops.config import load_settings
    from campaignops.models.inputs import encode, select_inputs
    from campaignops.models.uplift_net import build_model
    from campaignops.pipelines import layout
    from campaignops.pipelines.train import load_split, seed_everything

    settings = load_settings()
    params = settings.params["train"]
    if args.batch_size:
        params = {**params, "batch_size": args.batch_size}
    fdir = settings.workspace / layout.FEATURES_DIR
    meta = json.loads((fdir / "meta.json").read_text())
    train = load_split(settings, "train")
    x0 = encode(train, meta)
    y0 = train.column("responded").to_numpy().astype(np.float32)
    users = int(train.column("user_id").to_pandas().nunique())
    results = []
    for k in args.scales:
        x = {name: np.concatenate([v] * k) for name, v in x0.items()}
        y = np.concatenate([y0] * k)
        row = {"scale": k, "rows": len(y), "approx_users": users * k}
        main = params.get("encoder", "gru")
        for name, sequence, over in (("main", True, {"encoder": main}), ("main_gru", True, {"encoder": "gru"}),
                                     ("main_one_step", True, {"encoder": main, "steps_per_execution": 1}),
                                     ("mlp_noseq", False, {})):
            seed_everything(int(params["seed"]))
            model = build_model(meta, {**params, **over}, x["profile"].shape[1], x["variant"].shape[1],
                                sequence=sequence)
            model.get_layer("profile_norm").adapt(x["profile"])
            targets = {"response": y, "revenue": np.zeros_like(y)}
            xs = select_inputs(model, x)
            shuffle = "batch" if params.get("shuffle") == "batches" else True    # as train.fit_network does
            fit = dict(batch_size=int(params["batch_size"]), shuffle=shuffle, verbose=0)
            model.fit(xs, targets, epochs=1, **fit)  # warm-up / trace
            t0 = time.perf_counter()
            model.fit(xs, targets, epochs=args.epochs, **fit)
            row[f"{name}_rows_per_s"] = len(y) * args.epochs / (time.perf_counter() - t0)
        row["ratio_mlp_over_main"] = row["mlp_noseq_rows_per_s"] / row["main_rows_per_s"]
        row["ratio_main_over_gru"] = row["main_rows_per_s"] / row["main_gru_rows_per_s"]
        row["ratio_steps_per_execution"] = row["main_rows_per_s"] / row["main_one_step_rows_per_s"]
        results.append(row)
        print(json.dumps(row), flush=True)

    # 1M users: training rows scale with users (train share of exposures per user as measured here).
    best = results[-1]
    train_rows_per_user = len(y0) / users
    rows_1m = train_rows_per_user * args.target_users
    epochs = int(params["epochs"])
    est = {"target_users": args.target_users, "train_rows": int(rows_1m),
           "main_seconds_per_epoch": rows_1m / best["main_rows_per_s"],
           "mlp_noseq_seconds_per_epoch": rows_1m / best["mlp_noseq_rows_per_s"],
           "main_minutes_at_max_epochs": rows_1m / best["main_rows_per_s"] * epochs / 60, "max_epochs": epochs}
    print(json.dumps({"extrapolation": est}), flush=True)


if __name__ == "__main__":
    main()
