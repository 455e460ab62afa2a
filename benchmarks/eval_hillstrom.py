"""Hillstrom end to end, in one process (moto S3 + SQLite MLflow, as tests/pipelines/
test_chain_inprocess.py): `data import` with validation/mappings/hillstrom.yaml per outcome →
ingest → validate → features → train → evaluate, then the per-arm Qini / AUUC / uplift@30% of the
candidate and of the scikit-uplift references (evaluate.reference_uplift) into a markdown table.

`--folds K` cross-fits: K chain runs per outcome, run f importing with holdout_fold=(f, K) and a
time split whose holdout is exactly fold f (checked), so every row is scored once by a candidate
and references that did not train on it; the metrics are computed on the pooled out-of-fold
uplifts of all rows, with a random-ranking Qini sd and a bootstrap sd on those rows.

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
import pandas as pd
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


class _Recorder:
    """Wraps a reference estimator: delegates fit/predict and keeps what predict returned."""

    def __init__(self, model, calls: list):
        self.model, self.calls = model, calls

    def fit(self, *a, **kw):
        self.model.fit(*a, **kw)
        return self

    def predict(self, x):
        u = self.model.predict(x)
        self.calls.append(np.asarray(u, dtype=np.float64).ravel())
        return u


def capture_reference_uplift(evaluate, store: dict):
    """A stand-in for evaluate.reference_uplift that runs it unchanged and keeps, per arm, the
    holdout rows it scored: exposure ids, outcome, treatment flag and every model's uplift."""
    original = evaluate.reference_uplift

    def wrapper(settings, meta, expanded, frame, p_candidate):
        from campaignops.validation.contract import CONTROL

        calls: list = []
        make = evaluate._reference_model
        evaluate._reference_model = lambda *a: _Recorder(make(*a), calls)
        try:
            out = original(settings, meta, expanded, frame, p_candidate)
        finally:
            evaluate._reference_model = make
        # The same rows and arm order as reference_uplift; one predict call per arm and model.
        hold = frame[(frame["arm_id"] == frame["variant_id"]).to_numpy()].reset_index(drop=True)
        p = pd.DataFrame({"exposure_id": frame["exposure_id"], "arm_id": frame["arm_id"], "p": p_candidate})
        p = p.pivot(index="exposure_id", columns="arm_id", values="p")
        it = iter(calls)
        for (cid, variant), _ in hold[hold["variant_id"] != CONTROL].groupby(["campaign_id", "variant_id"]):
            arm = f"{cid}/{variant}"
            if arm not in out["arms"]:
                continue
            h = hold[((hold["campaign_id"] == cid) & hold["variant_id"].isin([variant, CONTROL])).to_numpy()]
            ids = h["exposure_id"].to_numpy()
            rows = {"exposure_id": ids, "y": h["responded"].to_numpy().astype(int),
                    "t": (h["variant_id"] == variant).to_numpy().astype(int),
                    "candidate": (p.loc[ids, variant] - p.loc[ids, CONTROL]).to_numpy()}
            for name in out["models"]:
                rows[name] = next(it)
            store[arm] = rows
        return out

    return wrapper


def fold_split(settings, fold: dict) -> None:
    """Set the run's features.split so that train + valid ends at the fold's time quantile (the
    holdout is then exactly the fold), keeping the params' train : valid ratio."""
    params = settings.params  # cached by Settings: update it and the file
    split = params["features"]["split"]
    ratio = split["train"] / (split["train"] + split["valid"])
    q = fold["time_quantile"]
    params["features"]["split"] = {"train": q * ratio, "valid": q - q * ratio}
    (settings.workspace / "params.yaml").write_text(yaml.safe_dump(params))


def check_fold_holdout(settings, fold: dict, captured: dict) -> None:
    """The features' holdout is exactly the imported fold: as many rows, all later than every
    train/valid exposure (the import put the fold last), each scored once per arm."""
    import pyarrow.parquet as pq

    from campaignops.pipelines import layout

    fdir = settings.workspace / layout.FEATURES_DIR
    ts = {s: pq.read_table(fdir / f"{s}.parquet", columns=["exposure_ts"]).column(0).to_numpy()
          for s in ("train", "valid", "holdout")}
    if len(ts["holdout"]) != fold["rows"] or ts["holdout"].min() <= max(ts["train"].max(), ts["valid"].max()):
        raise AssertionError(f"holdout ({len(ts['holdout'])} rows) is not fold {fold['fold']} ({fold['rows']} rows)")
    for arm, rows in captured.items():
        if len(set(rows["exposure_id"])) != len(rows["exposure_id"]):
            raise AssertionError(f"{arm}: an exposure scored twice")


def run_outcome(outcome: str, work: Path, limit: int | None, overrides: list[str], data: Path = DATA,
                split_seed: int | None = None, holdout_fold: tuple[int, int] | None = None) -> dict:
    import boto3
    from moto import mock_aws

    from campaignops.config import Settings
    from campaignops.pipelines import evaluate, features, importer, ingest, train, validate
    from campaignops.pipelines.storage import ObjectStore

    name = outcome if split_seed is None else f"{outcome}-split{split_seed}"
    ws = work / (name if holdout_fold is None else f"{name}-fold{holdout_fold[0]}of{holdout_fold[1]}")
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # The gate's absolute thresholds are calibrated on the synthetic world; here we only report.
    params["evaluate"].update(min_auc=0.0, max_logloss=10.0, min_qini=-10.0, min_policy_value_fraction=-10.0)
    if holdout_fold is not None:  # only the candidate and the references are read: no report, no baselines
        params["evaluate"]["report"] = False
        params["train"]["baselines"] = []
    _override(params, overrides)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    captured: dict = {}
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
                                                       split_seed=split_seed, holdout_fold=holdout_fold)),
                ("ingest", lambda: ingest.ingest(settings, batch=f"hillstrom-{outcome}", store=store)),
                ("validate", lambda: validate.run(settings, store=store)),
                ("features", lambda: features.build(settings, store=store)),
                ("train", lambda: train.run(settings)),
                ("evaluate", lambda: evaluate.run(settings)),
            ]
            out = {}
            reference_uplift = evaluate.reference_uplift
            evaluate.reference_uplift = capture_reference_uplift(evaluate, captured)
            try:
                for name, step in steps:
                    t0 = time.perf_counter()
                    out[name] = step()
                    timings[name] = round(time.perf_counter() - t0, 1)
                    print(f"[{ws.name}] {name}: {timings[name]} s", file=sys.stderr, flush=True)
                    if name == "import" and holdout_fold is not None:
                        fold_split(settings, out[name]["import"]["holdout_fold"])
            finally:
                evaluate.reference_uplift = reference_uplift
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
    ev, val = out["evaluate"], out["validate"]
    noise = qini_noise(settings, ev["uplift_references"])
    if holdout_fold is not None:
        check_fold_holdout(settings, out["import"]["import"]["holdout_fold"], captured)
    return {"outcome": outcome, "split_seed": split_seed, "holdout_fold": holdout_fold, "oof": captured,
            "timings_s": timings, "import": out["import"]["import"],
            "validate": {t: {k: v[k] for k in ("rows_in", "rows_valid", "rows_quarantined")}
                         for t, v in val["tables"].items()},
            "rows": out["features"]["rows"], "train": out["train"]["metrics"],
            "candidate": {k: ev["candidate"][k] for k in ("auc", "qini", "policy_value_ips", "control_value_ips")},
            "baselines": {n: {k: b[k] for k in ("auc", "qini")} for n, b in ev["baselines"].items()},
            "references": ev["uplift_references"], "qini_noise_sd": noise}


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
    splits = len({(r.get("split_seed"), str(r.get("holdout_fold"))) for r in results})

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


def pooled(results: list[dict], draws: int = 200, seed: int = 0) -> dict:
    """Per (outcome, arm): the metrics of every model on the pooled out-of-fold uplifts of all
    rows; the Qini sd of a random ranking and the bootstrap sd of each Qini and of the candidate's
    lead over each reference on those rows; the per-fold Qini (evaluate's own figures)."""
    from campaignops.models import metrics as m

    out: dict = {}
    for outcome in dict.fromkeys(r["outcome"] for r in results):
        runs = [r for r in results if r["outcome"] == outcome]
        n_rows = runs[0]["import"]["rows"]
        if sum(r["import"]["holdout_fold"]["rows"] for r in runs) != n_rows:
            raise AssertionError(f"{outcome}: the folds' holdouts do not add up to the {n_rows} rows")
        k = runs[0]["references"]["k"]
        for arm in runs[0]["oof"]:
            parts = [r["oof"][arm] for r in runs]
            cols = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
            if len(set(cols["exposure_id"])) != len(cols["exposure_id"]):
                raise AssertionError(f"{outcome} {arm}: an exposure is in two folds")
            y, t = cols["y"], cols["t"]
            models = [c for c in MODELS if c in cols]
            for r, p in zip(runs, parts):  # the captured rows are the ones evaluate scored
                for name in models:
                    if not np.isclose(m.qini_auc_score(p["y"], p[name], p["t"]),
                                      r["references"]["arms"][arm][name]["qini"]):
                        raise AssertionError(f"{outcome} {arm} {name}: captured uplifts do not reproduce evaluate")
            rng = np.random.default_rng(seed)
            res = {"rows": int(len(y)), "treated": int(t.sum()), "responses": int(y.sum()), "k": k,
                   "random_qini_sd": float(np.std([m.qini_auc_score(y, rng.random(len(y)), t) for _ in range(draws)]))}
            boot = {name: [] for name in models}
            for _ in range(draws):
                i = rng.integers(0, len(y), len(y))
                for name in models:
                    boot[name].append(m.qini_auc_score(y[i], cols[name][i], t[i]))
            for name in models:
                u = cols[name]
                res[name] = {"qini": m.qini_auc_score(y, u, t), "auuc": m.uplift_auc_score(y, u, t),
                             f"uplift_at_{round(k * 100)}": m.uplift_at_k(y, u, t, k=k, strategy="overall"),
                             "qini_boot_sd": float(np.std(boot[name], ddof=1)),
                             "qini_folds": [r["references"]["arms"][arm][name]["qini"] for r in runs]}
                if name != "candidate":
                    d = np.asarray(boot["candidate"]) - np.asarray(boot[name])
                    res[name]["candidate_lead"] = res["candidate"]["qini"] - res[name]["qini"]
                    res[name]["candidate_lead_boot_sd"] = float(np.std(d, ddof=1))
            res["folds_won"] = sum(int(r["references"]["arms"][arm]["candidate"]["qini"] >
                                       max(r["references"]["arms"][arm][n]["qini"] for n in models[1:])) for r in runs)
            res["folds"] = len(runs)
            out[f"{outcome}|{arm}"] = res
    return out


def markdown_folds(summary: dict, command: str) -> str:
    """The pooled out-of-fold figures as a markdown table."""
    lines = [f"Reproduce: `{command}`", "",
             "| outcome | arm | model | Qini | AUUC | uplift@30% | Qini bootstrap sd | Qini per fold, mean ± sd | "
             "candidate − model (bootstrap sd) | folds candidate > both refs | random-ranking Qini sd |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, res in summary.items():
        outcome, arm = key.split("|")
        k = f"uplift_at_{round(res['k'] * 100)}"
        for name in (n for n in MODELS if n in res):
            v = res[name]
            folds = np.asarray(v["qini_folds"])
            lead = "" if name == "candidate" else f"{v['candidate_lead']:+.4f} ({v['candidate_lead_boot_sd']:.4f})"
            extra = (f"{res['folds_won']}/{res['folds']}", f"{res['random_qini_sd']:.4f}") if name == "candidate" \
                else ("", "")
            lines.append(f"| {outcome} | {arm.split('/')[-1]} | {name} | {v['qini']:.4f} | {v['auuc']:.4f} | "
                         f"{v[k]:.4f} | {v['qini_boot_sd']:.4f} | {folds.mean():.4f} ± {folds.std(ddof=1):.4f} | "
                         f"{lead} | {extra[0]} | {extra[1]} |")
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
    ap.add_argument("--folds", type=int, default=None, help="cross-fit over this many folds (pooled out-of-fold metrics)")
    ap.add_argument("--fold-only", type=int, nargs="+", default=None,
                    help="with --folds: run only these folds (quick looks; no pooled metrics over all rows)")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="hillstrom-"))
    t0 = time.perf_counter()
    command = "python benchmarks/eval_hillstrom.py " + " ".join(sys.argv[1:])
    summary = None
    if a.folds:
        if a.splits > 1:
            ap.error("--folds and --splits are alternatives")
        folds = a.fold_only if a.fold_only is not None else range(a.folds)
        results = [run_outcome(o, work, a.limit, a.overrides, a.data, holdout_fold=(f, a.folds))
                   for o in a.outcomes for f in folds]
        if a.fold_only is None:
            summary = pooled(results)
            table = markdown_folds(summary, command.strip())
        else:
            table = markdown(results, command.strip())
    else:
        results = [run_outcome(o, work, a.limit, a.overrides, a.data, split_seed=seed if a.splits > 1 else None)
                   for seed in range(a.splits) for o in a.outcomes]
        table = markdown(results, command.strip())
    total = time.perf_counter() - t0
    print(table)
    print(f"total {total:.0f} s", file=sys.stderr)
    if a.json:
        a.json.write_text(json.dumps({"results": results, "pooled": summary, "total_s": round(total, 1)}, indent=2,
                                     default=_jsonable))
    if a.out:
        a.out.write_text(table)


if __name__ == "__main__":
    main()
