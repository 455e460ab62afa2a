"""How much of the oracle's policy value the model's features allow, on a synthetic world.

Fits a gradient-boosted regressor to the TRUE response logit of every (train exposure, arm) from
the same encoded features the network sees (profile + arm attributes + user × arm crosses) —
supervision no real model gets — and evaluates its best-arm policy on the holdout exactly like
pipelines/evaluate.py does for the candidate. The gap between this ceiling and the oracle is
information the features do not carry (e.g. the latent preferred channel, only correlated with
age and past responses); the gap between the candidate and this ceiling is estimation from
noisy 0/1 outcomes.

    CAMPAIGNOPS_WORKSPACE=/path/with/data/features .venv/bin/python benchmarks/policy_ceiling.py [--max-exposures N]

Every train exposure is fitted under every arm of its campaign (1M users: ~6.6M rows, more memory
than 24 GiB holds); --max-exposures fits a seeded sample of the exposures instead.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-exposures", type=int, default=None, help="fit a seeded sample of this many train exposures")
    args = ap.parse_args()
    import pyarrow.parquet as pq
    from sklearn.ensemble import HistGradientBoostingRegressor

    from campaignops.config import load_settings
    from campaignops.models.inputs import encode
    from campaignops.pipelines import layout
    from campaignops.pipelines.evaluate import holdout_metrics, load_holdout
    from campaignops.pipelines.drift import sample
    from campaignops.pipelines.scoring_frames import attach_arms

    settings = load_settings()
    meta = json.loads((settings.workspace / layout.FEATURES_DIR / "meta.json").read_text())
    expanded, frame, truth = load_holdout(settings)
    if truth is None:
        raise SystemExit("no truth.parquet in data/features: the ceiling needs a synthetic world")
    fdir = settings.workspace / layout.FEATURES_DIR
    exposures = pq.read_table(fdir / "train.parquet")
    if args.max_exposures:
        exposures = sample(exposures, args.max_exposures)
    train = attach_arms(exposures, pq.read_table(fdir / "arms.parquet"), "exposure_id", every_arm=True)
    keys = train.select(["exposure_id", "arm_id"]).to_pandas()
    p = keys.merge(truth.rename(columns={"variant_id": "arm_id"})[["exposure_id", "arm_id", "p_response"]],
                   how="left")["p_response"].to_numpy()
    x, xh = encode(train, meta), encode(expanded, meta)
    t0 = time.perf_counter()
    model = HistGradientBoostingRegressor(max_iter=500, random_state=0).fit(
        np.hstack([x["profile"], x["variant"]]), np.log(p / (1 - p)))
    ph = 1 / (1 + np.exp(-model.predict(np.hstack([xh["profile"], xh["variant"]]))))
    out = holdout_metrics(frame, ph, truth)
    print(json.dumps({"ceiling": {k: round(out[k], 4) for k in ("auc", "qini", "policy_value_fraction",
                                                                 "policy_to_oracle_ratio", "send_share")},
                      "fit_exposures": exposures.num_rows, "fit_rows": len(p),
                      "fit_seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
