"""Hillstrom end to end, in one process (moto S3 + SQLite MLflow, as tests/pipelines/
test_chain_inprocess.py): `data import` with validation/mappings/hillstrom.yaml per outcome →
ingest → validate → features → train → evaluate, then the per-arm Qini / AUUC / uplift@30% of the
candidate and of the scikit-uplift references (uplift_references.reference_uplift) into a markdown table.

`--folds K` cross-fits with the product's own cross-fitting (pipelines/crossfit.py, what
`campaignops evaluate --crossfit K` runs): one import per outcome → ingest → validate → features,
then the network recipe and the baselines of params evaluate.crossfit.models refitted on K − 1
folds of the users and scored on the K-th, every row once; per model and arm the per-fold Qini
(mean ± sd), the pooled out-of-fold Qini raw and after calibrating the folds onto one scale.

    .venv/bin/python benchmarks/eval_hillstrom.py [--outcomes visit conversion] [--limit N]
        [--folds 5 | --splits 3] [--set train.epochs=5 ...] [--out docs/hillstrom.md]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hillstrom.csv"
MAPPING = ROOT / "validation" / "mappings" / "hillstrom.yaml"
MODELS = ("candidate", "two_model", "class_transformation")
# The feature files are ordered by salted id pseudonyms, and that order is the order the models
# see the rows in: a fixed salt makes runs repeatable (a fresh one per run acts like a new seed).
ID_SALT = "eval_hillstrom"


def _override(params: dict, items: list[str]) -> None:
    for item in items:
        key, value = item.split("=", 1)
        *path, last = key.split(".")
        d = params
        for p in path:
            d = d[p]
        d[last] = yaml.safe_load(value)


def qini_noise(settings, references: dict, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """Per arm: the standard deviation of the Qini coefficient of a random ranking on the same
    holdout rows, i.e. how far apart two figures must be before the difference means anything."""
    import numpy as np

    from campaignops.models.metrics import qini_auc_score
    from campaignops.pipelines.evaluate import load_holdout
    from campaignops.validation.contract import CONTROL

    _, frame, _ = load_holdout(settings)
    hold = frame[frame["arm_id"] == frame["variant_id"]]
    rng = np.random.default_rng(seed)
    out = {}
    for arm in references["arms"]:
        cid, variant = arm.split("/")
        h = hold[(hold["campaign_id"] == cid) & hold["variant_id"].isin([variant, CONTROL])]
        y, t = h["responded"].to_numpy().astype(int), (h["variant_id"] == variant).to_numpy().astype(int)
        out[arm] = float(np.std([qini_auc_score(y, rng.random(len(y)), t) for _ in range(draws)]))
    return out


def run_outcome(outcome: str, work: Path, limit: int | None, overrides: list[str], data: Path = DATA,
                split_seed: int | None = None, crossfit: int | None = None) -> dict:
    """The chain on one outcome: import → ingest → validate → features, then train → evaluate, or
    with `crossfit` K the product's cross-fitting over K folds (pipelines/crossfit.run)."""
    import boto3
    from moto import mock_aws

    from campaignops.config import Settings
    from campaignops.pipelines import crossfit as cf
    from campaignops.pipelines import evaluate, features, importer, ingest, train, validate
    from campaignops.pipelines.storage import ObjectStore

    name = outcome if split_seed is None else f"{outcome}-split{split_seed}"
    ws = work / (name if crossfit is None else f"{name}-crossfit{crossfit}")
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # The gate's absolute thresholds are calibrated on the synthetic world; here we only report.
    params["evaluate"].update(min_auc=0.0, max_logloss=10.0, min_qini=-10.0, min_policy_value_fraction=-10.0)
    _override(params, overrides)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    settings = Settings(workspace=ws, state_dir=ws / ".state",
                        env={"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "CAMPAIGNOPS_ID_SALT": ID_SALT})
    saved, cwd = dict(os.environ), os.getcwd()
    os.environ.update({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "CAMPAIGNOPS_ID_SALT": ID_SALT,
                       "MLFLOW_TRACKING_URI": f"sqlite:///{ws}/mlflow.db"})
    os.chdir(ws)
    timings = {}
    try:
        with mock_aws():
            store = ObjectStore(settings, client=boto3.client("s3", region_name="us-east-1"))
            store.client.create_bucket(Bucket=settings.bucket)
            steps = [
                ("import", lambda: importer.import_file(settings, MAPPING, data, batch=f"hillstrom-{outcome}",
                                                       response=outcome, store=store, limit=limit,
                                                       split_seed=split_seed)),
                ("ingest", lambda: ingest.ingest(settings, batch=f"hillstrom-{outcome}", store=store)),
                ("validate", lambda: validate.run(settings, store=store)),
                ("features", lambda: features.build(settings, store=store)),
            ]
            if crossfit is None:
                steps += [("train", lambda: train.run(settings)), ("evaluate", lambda: evaluate.run(settings))]
            else:   # local outputs only (reports/crossfit/ of the workspace), no MLflow run
                steps += [("crossfit", lambda: cf.run(settings, k=crossfit, mlflow=False))]
            out = {}
            for name, step in steps:
                t0 = time.perf_counter()
                out[name] = step()
                timings[name] = round(time.perf_counter() - t0, 1)
                print(f"[{ws.name}] {name}: {timings[name]} s", file=sys.stderr, flush=True)
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
    val = out["validate"]
    common = {"outcome": outcome, "split_seed": split_seed, "timings_s": timings, "import": out["import"]["import"],
              "validate": {t: {k: v[k] for k in ("rows_in", "rows_valid", "rows_quarantined")}
                           for t, v in val["tables"].items()},
              "rows": out["features"]["rows"]}
    if crossfit is not None:
        return {**common, "crossfit": out["crossfit"]}
    ev = out["evaluate"]
    noise = qini_noise(settings, ev["uplift_references"])
    return {**common, "train": out["train"]["metrics"],
            "candidate": {k: ev["candidate"][k] for k in ("auc", "qini", "policy_value_ips", "control_value_ips")},
            "baselines": {n: {k: b[k] for k in ("auc", "qini")} for n, b in ev["baselines"].items()},
            "references": ev["uplift_references"], "qini_noise_sd": noise}


def markdown_crossfit(results: list[dict], command: str) -> str:
    """Per outcome: pipelines/crossfit's table (per-fold Qini mean ± sd, pooled raw and calibrated)."""
    from campaignops.pipelines.crossfit import markdown as crossfit_markdown

    parts = [f"Reproduce: `{command}`", ""]
    for r in results:
        parts += [f"### {r['outcome']}", "", crossfit_markdown(r["crossfit"])]
    return "\n".join(parts)


def _jsonable(v):
    return v.tolist() if isinstance(v, np.ndarray) else str(v)


def markdown(results: list[dict], command: str) -> str:
    """Per outcome, arm and model: each metric's mean ± sd over the splits run (one split: the value);
    ✓ counts the splits where the candidate's Qini is above both references'."""
    import numpy as np

    cells: dict[tuple, dict[str, list[float]]] = {}
    wins: dict[tuple, int] = {}
    noise: dict[tuple, list[float]] = {}
    k = None
    for r in results:
        refs = r["references"]
        k = f"uplift_at_{round(refs['k'] * 100)}"
        for arm, res in refs["arms"].items():
            key = (r["outcome"], arm.split("/")[-1])
            noise.setdefault(key, []).append(r["qini_noise_sd"][arm])
            wins[key] = wins.get(key, 0) + int(res["candidate"]["qini"] > max(res[n]["qini"] for n in MODELS[1:]))
            for n in MODELS:
                for metric in ("qini", "auuc", k):
                    cells.setdefault(key + (n,), {}).setdefault(metric, []).append(res[n][metric])
    splits = len({r.get("split_seed") for r in results})

    def fmt(v: list[float]) -> str:
        return f"{v[0]:.4f}" if len(v) == 1 else f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}"

    lines = [f"Reproduce: `{command}`", "",
             f"Holdout figures per treatment arm vs control ({splits} split(s); with more than one: mean ± sd "
             "over the splits). The last column: the Qini sd of a random ranking on the same rows (noise scale).", "",
             "| outcome | arm | model | Qini | AUUC | uplift@30% | candidate > both refs (splits) | random-ranking Qini sd |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for key in sorted({c[:3] for c in cells}, key=lambda c: (c[0] != "visit", c[1], MODELS.index(c[2]))):
        v = cells[key]
        extra = (f"{wins[key[:2]]}/{splits}", f"{np.mean(noise[key[:2]]):.4f}") if key[2] == "candidate" else ("", "")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {fmt(v['qini'])} | {fmt(v['auuc'])} | {fmt(v[k])} | "
                     f"{extra[0]} | {extra[1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outcomes", nargs="+", default=["visit", "conversion"])
    ap.add_argument("--limit", type=int, default=None, help="first N rows of the file only")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="params override, e.g. train.epochs=5")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--json", type=Path, default=None, help="write the full results here")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=DATA, help="hillstrom.csv")
    ap.add_argument("--splits", type=int, default=1, help="repeat on this many random splits (split seeds 0..n-1)")
    ap.add_argument("--folds", type=int, default=None,
                    help="cross-fit over this many folds (pipelines/crossfit.py: per-fold and pooled out-of-fold Qini)")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="hillstrom-"))
    t0 = time.perf_counter()
    command = "python benchmarks/eval_hillstrom.py " + " ".join(sys.argv[1:])
    if a.folds:
        if a.splits > 1:
            ap.error("--folds and --splits are alternatives")
        results = [run_outcome(o, work, a.limit, a.overrides, a.data, crossfit=a.folds) for o in a.outcomes]
        table = markdown_crossfit(results, command.strip())
    else:
        results = [run_outcome(o, work, a.limit, a.overrides, a.data, split_seed=seed if a.splits > 1 else None)
                   for seed in range(a.splits) for o in a.outcomes]
        table = markdown(results, command.strip())
    total = time.perf_counter() - t0
    print(table)
    print(f"total {total:.0f} s", file=sys.stderr)
    if a.json:
        a.json.write_text(json.dumps({"results": results, "total_s": round(total, 1)}, indent=2,
                                     default=_jsonable))
    if a.out:
        a.out.write_text(table)


if __name__ == "__main__":
    main()
