"""Cross-fitting: every exposure of the features scored by models that never trained on it,
so the uplift figures of a log (imported or generated) use all of its rows, not one holdout.

`campaignops evaluate --crossfit K` (params `evaluate.crossfit`): the exposures of every split
(train, valid, holdout) are dealt into K folds by user (a seeded sha256 of the user pseudonym,
params train.seed; users dealt in turn within strata of the (campaign, arm) of their first
exposure, so each fold holds every arm in its share and a user's exposures stay in one fold).
For each fold, the network recipe (pipelines/train.fit_tables, params train; epochs capped at
evaluate.crossfit.epochs) and each configured baseline (models/baselines.train_baselines) are
fitted on the other folds' rows, less a seeded `valid_share` of their users kept for early
stopping, and predict the fold's exposures under every arm of their campaign. Per model it
reports:

- per fold: the Qini coefficient of each treatment arm vs its campaign's control (scikit-uplift's
  qini_auc_score as models/metrics reproduces it; rows weighted as the holdout's, models/arms.py)
  and, over the folds, its mean ± sd;
- pooled: the Qini of the out-of-fold uplifts of all rows together, raw and calibrated.

Why calibrate: K fold models are K fits, each on its own scale and offset (early stopping at
different epochs, different base rates), so the pooled ranking interleaves folds by their scale
rather than by their uplift and the raw pooled Qini falls below what each fold's model ranks
(Hillstrom visit: the network's raw pooled Qini was two thirds of its per-fold mean). Each
fold's predicted uplift of each (campaign, arm) is therefore mapped onto a common scale, using
that fold's own predictions for all its exposures (never the outcomes), before pooling:

- `rank` (the default): its within-fold quantile (rank / rows, ties averaged). The pooled
  ranking is then the folds' rankings dealt together evenly, so the pooled Qini is about the
  per-fold mean by construction; measured below, it brings them closest;
- `zscore`: (uplift − the fold's mean) / the fold's sd; `scale`: uplift / the fold's sd (keeps
  the sign, not the offset); `none`: raw.

Every method is computed (the summary lists each, with the mean over the arms of |pooled −
per-fold mean|), the configured one is the headline "pooled calibrated". Measured with K = 5
and default params (network per-fold mean / pooled raw / rank / zscore / scale, mean over arms):
a generated 20,000-user world (12 arms) 0.0270 / 0.0222 / 0.0269 / 0.0262 / 0.0233, mean
per-arm gap to the per-fold mean raw 0.0115, rank 0.0014, zscore 0.0021, scale 0.0099 (GBT
T-learner gap 0.0044 → rank 0.0017); Hillstrom visit, first 24,000 rows, 0.0304 / 0.0202 /
0.0304 / 0.0300 / 0.0217 (GBT 0.0112 / 0.0095 / 0.0098). `rank` is the default: it closes the
gap best, `zscore` nearly as well, `scale` hardly (the folds differ in offset, not only scale).

Outputs, under reports/crossfit/ (written to a temp directory, then renamed into place, so a
reader sees the previous complete set or the new one): `oof.parquet` (one row per exposure ×
arm scored: pseudonymous `exposure_id`, for an imported log its `source_exposure_id` and data
row `source_row`, `fold`, `campaign_id`, the logged arm `treatment` (and `treated` = not
control), the arm scored `arm_id`, `responded`, and per model `p_<model>`, `uplift_<model>`
(p(arm) − p(control), 0 on control rows) and `uplift_<model>_calibrated`), `crossfit.json`
(config, folds, per model per arm figures) and `crossfit.md`.

MLflow logging (a new run named `crossfit`: metrics `crossfit.<model>.*` and the three files) is
optional: params evaluate.crossfit.mlflow `auto` logs only when a tracking server is configured
(MLFLOW_TRACKING_URI set, or the local stack's MLflow answering), true / false force it; the
CLI's --mlflow / --no-mlflow override. Without it the command is local only."""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.models.arms import arm_qinis, random_qini_sd
from campaignops.pipelines import layout
from campaignops.pipelines.new_campaigns import FRAME_COLUMNS, SPLITS
from campaignops.pipelines.storage import atomic_dir
from campaignops.validation.contract import CONTROL

log = logging.getLogger(__name__)

NETWORK = "network"
CALIBRATIONS = ("none", "rank", "zscore", "scale")
OUT_DIR = layout.REPORTS_DIR / "crossfit"
FILES = {"parquet": "oof.parquet", "json": "crossfit.json", "markdown": "crossfit.md"}


# --------------------------------------------------------------------------- config

def config(settings: Settings, k: int | None = None) -> dict:
    """params evaluate.crossfit (the one source of its knobs), `k` overriding its k."""
    cfg = (settings.params.get("evaluate") or {}).get("crossfit")
    if not cfg:
        raise ValueError("params.yaml has no evaluate.crossfit section (k, calibration, models, valid_share, "
                         "epochs, mlflow): copy it from the project's params.yaml")
    missing = [key for key in ("k", "calibration", "models", "valid_share", "epochs", "mlflow") if key not in cfg]
    if missing:
        raise ValueError(f"params evaluate.crossfit lacks {', '.join(missing)}")
    out = {"k": int(k if k is not None else cfg["k"]), "calibration": str(cfg["calibration"]),
           "models": [str(m) for m in cfg["models"]], "valid_share": float(cfg["valid_share"]),
           "epochs": None if cfg["epochs"] is None else int(cfg["epochs"]), "mlflow": cfg["mlflow"],
           "seed": int(settings.params["train"]["seed"])}
    if out["k"] < 2:
        raise ValueError(f"cross-fitting needs k >= 2 folds, got {out['k']}")
    if out["calibration"] not in CALIBRATIONS:
        raise ValueError(f"params evaluate.crossfit.calibration: {out['calibration']!r} is not one of {CALIBRATIONS}")
    if not 0.0 < out["valid_share"] < 1.0:
        raise ValueError(f"params evaluate.crossfit.valid_share must lie in (0, 1), got {out['valid_share']}")
    from campaignops.models.baselines import NAMES

    unknown = [m for m in out["models"] if m != NETWORK and m not in NAMES]
    if unknown:
        raise ValueError(f"params evaluate.crossfit.models: unknown {unknown} (known: {NETWORK}, {', '.join(NAMES)})")
    return out


# --------------------------------------------------------------------------- folds

def _hash_u64(keys, salt: str) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.sha256(f"{salt}\x1f{k}".encode()).digest()[:8], "big") for k in keys],
                    dtype=np.uint64)


def assign_folds(users: pd.DataFrame, k: int, seed: int) -> pd.Series:
    """Fold 0..k-1 of each user. `users`: one row per exposure with user_id, campaign_id,
    variant_id and exposure_ts. Users are ordered by the (campaign, arm) of their first exposure
    and within it by sha256(seed, user id), then dealt in turn: fold sizes differ by at most one
    user overall and within each stratum. Returns a Series indexed by user_id."""
    first = users.sort_values(["exposure_ts", "campaign_id", "variant_id"], kind="mergesort") \
        .drop_duplicates("user_id")[["user_id", "campaign_id", "variant_id"]]
    first = first.assign(h=_hash_u64(first["user_id"], f"crossfit\x1f{seed}"))
    first = first.sort_values(["campaign_id", "variant_id", "h", "user_id"], kind="mergesort")
    return pd.Series(np.arange(len(first)) % k, index=first["user_id"].to_numpy(), name="fold")


def validation_users(user_ids, share: float, seed: int) -> np.ndarray:
    """Mask of the users kept out of a fold model's fit for early stopping: the `share` of them
    with the smallest sha256(seed, "valid", id) (independent of the folds)."""
    h = _hash_u64(user_ids, f"crossfit-valid\x1f{seed}")
    n = int(round(share * len(h)))
    out = np.zeros(len(h), bool)
    out[np.argsort(h, kind="stable")[:n]] = True
    return out


def _rows_of(table: pa.Table, users: pd.Index) -> np.ndarray:
    return users.get_indexer(table.column("user_id").to_numpy(zero_copy_only=False))


# --------------------------------------------------------------------------- calibration

def uplift_of(frame: pd.DataFrame, p: np.ndarray) -> np.ndarray:
    """Per (exposure, arm) row: p(arm) − p(control) of the same exposure (0 on control rows)."""
    ctl = pd.Series(p[(frame["arm_id"] == CONTROL).to_numpy()],
                    index=frame.loc[frame["arm_id"] == CONTROL, "exposure_id"].to_numpy())
    return p - ctl.reindex(frame["exposure_id"].to_numpy()).to_numpy()


def calibrate(frame: pd.DataFrame, uplift: np.ndarray, method: str) -> np.ndarray:
    """Uplifts of the rows mapped onto a common scale per (fold, campaign, arm scored), from
    that group's own predictions (module docstring); control rows stay 0. `frame` needs fold,
    campaign_id and arm_id."""
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration {method!r} is not one of {CALIBRATIONS}")
    u = pd.Series(np.asarray(uplift, dtype=np.float64), index=frame.index)
    is_ctl = (frame["arm_id"] == CONTROL).to_numpy()
    if method == "none":
        return np.where(is_ctl, 0.0, u.to_numpy())
    g = u.groupby([frame["fold"], frame["campaign_id"], frame["arm_id"]], sort=False)
    if method == "rank":
        out = g.rank(method="average", pct=True)
    else:
        sd = g.transform("std", ddof=0).to_numpy()
        sd = np.where(sd > 0, sd, 1.0)
        out = (u - g.transform("mean")) / sd if method == "zscore" else u / sd
    return np.where(is_ctl, 0.0, np.asarray(out, dtype=np.float64))


def qinis(frame: pd.DataFrame, uplift: np.ndarray) -> dict[str, float]:
    """Qini per treatment arm ("campaign/variant") of per-row uplifts (control rows 0)."""
    return {f"{c}/{a}": float(q) for (c, a), q in arm_qinis(frame, np.asarray(uplift, dtype=np.float64)).items()}


def model_figures(frame: pd.DataFrame, uplift: np.ndarray, k: int) -> dict:
    """Per arm and over the arms: Qini per fold (its mean ± sd) and pooled, raw and under every
    calibration."""
    folds = frame["fold"].to_numpy()
    per_fold = [qinis(frame[folds == f], uplift[folds == f]) for f in range(k)]
    pooled = {m: qinis(frame, calibrate(frame, uplift, m)) for m in CALIBRATIONS}
    arms = {}
    for arm in sorted(pooled["none"]):
        values = [q[arm] for q in per_fold if arm in q]
        arms[arm] = {"qini_folds": values, "qini_fold_mean": float(np.mean(values)),
                     "qini_fold_sd": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
                     **{f"qini_pooled_{m}": pooled[m][arm] for m in CALIBRATIONS}}
    summary = {key: float(np.mean([a[key] for a in arms.values()])) if arms else float("nan")
               for key in ["qini_fold_mean", *(f"qini_pooled_{m}" for m in CALIBRATIONS)]}
    for m in CALIBRATIONS:   # how far each pooling sits from the per-fold mean, over the arms
        summary[f"pooled_gap_{m}"] = float(np.mean([abs(a[f"qini_pooled_{m}"] - a["qini_fold_mean"])
                                                    for a in arms.values()])) if arms else float("nan")
    fold_means = [float(np.mean(list(q.values()))) for q in per_fold if q]
    summary["qini_fold_sd"] = float(np.std(fold_means, ddof=1)) if len(fold_means) > 1 else float("nan")
    return {"arms": arms, "mean": summary}


# --------------------------------------------------------------------------- data

def load_exposures(settings: Settings) -> tuple[pa.Table, pa.Table, dict]:
    """(every exposure of the features with its logged arm, the same under every arm, meta with
    the arm targets) — the tables load_split gives, over all splits."""
    from campaignops.models.inputs import arm_target_vocabulary
    from campaignops.pipelines.train import load_split

    fdir = settings.workspace / layout.FEATURES_DIR
    meta = json.loads((fdir / "meta.json").read_text())
    meta["arm_targets"] = arm_target_vocabulary(pq.read_table(fdir / "arms.parquet"))
    plain = pa.concat_tables([load_split(settings, s) for s in SPLITS], promote_options="default")
    every = pa.concat_tables([load_split(settings, s, every_arm=True) for s in SPLITS], promote_options="default")
    return plain, every, meta


def fit_fold(settings: Settings, cfg: dict, meta: dict, train: pa.Table, valid: pa.Table,
             valid_every_arm: pa.Table | None, held: pa.Table) -> dict[str, np.ndarray]:
    """The configured models fitted on train (valid for early stopping), each one's p of every
    row of `held` (a table under every arm)."""
    from campaignops.models.baselines import train_baselines
    from campaignops.models.inputs import encode
    from campaignops.pipelines.drift import sample_indices
    from campaignops.pipelines.train import exposure_weights, fit_tables, logged_policy, revenue_scale

    params = dict(settings.params["train"])
    if cfg["epochs"] is not None:
        params["epochs"] = min(int(params["epochs"]), cfg["epochs"])
    out = {}
    fold_meta = {**meta, "revenue_scale": revenue_scale(train.column("revenue").to_numpy())}
    x_held = encode(held, fold_meta)
    if NETWORK in cfg["models"]:
        model = fit_tables(params, meta, train, valid,
                           valid_every_arm if params.get("early_stopping_monitor") == "val_qini" else None)
        out[NETWORK] = model.predict_arrays(x_held)[0]
    names = [m for m in cfg["models"] if m != NETWORK]
    if names:
        scale = fold_meta["revenue_scale"]
        x_tr, x_va = encode(train, fold_meta), encode(valid, fold_meta)
        y_tr = train.column("responded").to_numpy().astype(np.float32)
        y_va = valid.column("responded").to_numpy().astype(np.float32)
        r_tr, r_va = train.column("revenue").to_numpy() / scale, valid.column("revenue").to_numpy() / scale
        w_tr = exposure_weights(logged_policy(train), params)[0]
        w_va = exposure_weights(logged_policy(valid), params)[0]
        rows = sample_indices(len(y_tr), params.get("baseline_max_rows"), int(params["seed"]))
        fitted = train_baselines(names, {k: v[rows] for k, v in x_tr.items()}, y_tr[rows], r_tr[rows],
                                 x_va, y_va, r_va, fold_meta, params, int(params["seed"]),
                                 None if w_tr is None else w_tr[rows], w_va)
        for name, (bm, _) in fitted.items():
            out[name] = np.asarray(bm.predict(x_held), dtype=np.float64)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def cross_fit(settings: Settings, cfg: dict, fit=fit_fold) -> tuple[pd.DataFrame, dict]:
    """The out-of-fold frame (one row per exposure × arm scored, with fold and each model's p)
    and the folds' record. `fit(settings, cfg, meta, train, valid, valid_every_arm, held)` →
    {model: p of held's rows} (tests pass a cheap one)."""
    plain, every, meta = load_exposures(settings)
    k, seed = cfg["k"], cfg["seed"]
    logged = plain.select(["user_id", "campaign_id", "variant_id", "exposure_ts"]).to_pandas()
    folds = assign_folds(logged, k, seed)
    users = pd.Index(folds.index)
    in_valid = validation_users(users, cfg["valid_share"], seed)
    fold_plain = folds.to_numpy()[_rows_of(plain, users)]
    fold_every = folds.to_numpy()[_rows_of(every, users)]
    valid_plain = in_valid[_rows_of(plain, users)]
    valid_every = in_valid[_rows_of(every, users)]
    cols = FRAME_COLUMNS + ["propensity"] * ("propensity" in every.column_names)
    parts, record = [], []
    for f in range(k):
        t0 = time.perf_counter()
        train = plain.filter(pa.array((fold_plain != f) & ~valid_plain))
        valid = plain.filter(pa.array((fold_plain != f) & valid_plain))
        valid_every_arm = every.filter(pa.array((fold_every != f) & valid_every))
        held = every.filter(pa.array(fold_every == f))
        log.info("cross-fitting fold %d/%d: fit on %d rows (+%d for early stopping), predict %d exposures",
                 f + 1, k, train.num_rows, valid.num_rows, len(set(held.column("exposure_id").to_pylist())))
        p = fit(settings, cfg, meta, train, valid, valid_every_arm, held)
        frame = held.select(cols).to_pandas().assign(fold=f)
        for name, values in p.items():
            frame[f"p_{name}"] = values
        parts.append(frame)
        record.append({"fold": f, "users": int((folds == f).sum()),
                       "exposures": int(((fold_plain == f)).sum()), "train_rows": train.num_rows,
                       "valid_rows": valid.num_rows, "seconds": round(time.perf_counter() - t0, 1)})
    oof = pd.concat(parts, ignore_index=True)
    return oof, {"folds": record, "users": len(users), "exposures": plain.num_rows}


def summarise(oof: pd.DataFrame, cfg: dict, draws: int) -> tuple[pd.DataFrame, dict]:
    """The out-of-fold frame with treated, each model's uplift and calibrated uplift, and the
    figures per model (model_figures) with the random-ranking Qini sd of the pooled rows."""
    oof = oof.assign(treated=(oof["variant_id"] != CONTROL).astype(np.int8))
    models = {}
    for name in [m for m in cfg["models"] if f"p_{m}" in oof]:
        u = uplift_of(oof, oof[f"p_{name}"].to_numpy())
        oof[f"uplift_{name}"] = np.where(oof["arm_id"] == CONTROL, 0.0, u)
        oof[f"uplift_{name}_calibrated"] = calibrate(oof, oof[f"uplift_{name}"].to_numpy(), cfg["calibration"])
        models[name] = model_figures(oof, oof[f"uplift_{name}"].to_numpy(), cfg["k"])
    noise = random_qini_sd(oof, draws=draws) if draws > 0 else float("nan")
    return oof, {"models": models, "random_qini_sd": noise}


# --------------------------------------------------------------------------- outputs

def markdown(report: dict) -> str:
    """The figures as a markdown table: per model and arm, Qini per fold mean ± sd, pooled raw,
    pooled calibrated (the configured method) and the other calibrations."""
    cal = report["config"]["calibration"]
    others = [m for m in CALIBRATIONS if m not in ("none", cal)]
    lines = [f"Cross-fitted over {report['config']['k']} folds of {report['users']} users "
             f"({report['exposures']} exposures); calibration `{cal}`. Random-ranking Qini sd of the pooled rows "
             f"(noise scale): {report['random_qini_sd']:.4f}.", "",
             "| model | arm | Qini per fold, mean ± sd | pooled raw | pooled calibrated (" + cal + ") | "
             + " | ".join(f"pooled {m}" for m in others) + " |",
             "|---|---|---:|---:|---:|" + "---:|" * len(others)]
    for name, fig in report["models"].items():
        rows = [(arm.split("/", 1)[-1] if len({a.split('/')[0] for a in fig['arms']}) == 1 else arm, a)
                for arm, a in fig["arms"].items()]
        rows.append(("**all arms (mean)**", {**fig["mean"]}))
        for arm, a in rows:
            sd = a.get("qini_fold_sd", float("nan"))
            lines.append(f"| {name} | {arm} | {a['qini_fold_mean']:.4f} ± {sd:.4f} | {a['qini_pooled_none']:.4f} | "
                         f"{a[f'qini_pooled_{cal}']:.4f} | " + " | ".join(f"{a[f'qini_pooled_{m}']:.4f}" for m in others)
                         + " |")
    lines += ["", "Mean over the arms of |pooled − per-fold mean| by calibration:"]
    for name, fig in report["models"].items():
        lines.append(f"- {name}: " + ", ".join(f"{m} {fig['mean'][f'pooled_gap_{m}']:.4f}" for m in CALIBRATIONS))
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: Path, oof: pd.DataFrame, report: dict) -> dict[str, Path]:
    """oof.parquet, crossfit.json and crossfit.md into out_dir, all three at once (atomic_dir)."""
    cols = ["exposure_id", *[c for c in ("source_exposure_id", "source_row") if c in oof], "fold", "campaign_id",
            "variant_id", "arm_id", "treated", "responded",
            *[c for c in oof.columns if c.startswith(("p_", "uplift_"))]]
    rows = oof[cols].rename(columns={"variant_id": "treatment"})   # the logged arm, as holdout predictions name it
    with atomic_dir(out_dir) as tmp:
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp / FILES["parquet"], compression="zstd")
        (tmp / FILES["json"]).write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
        (tmp / FILES["markdown"]).write_text(markdown(report))
    return {key: out_dir / name for key, name in FILES.items()}


def use_mlflow(settings: Settings, setting, override: bool | None) -> bool:
    """Whether to log a crossfit run: the CLI's override, else params evaluate.crossfit.mlflow;
    `auto` = a tracking server is configured (MLFLOW_TRACKING_URI in the environment or the
    stack's env file) or the local stack's MLflow port answers."""
    if override is not None:
        return bool(override)
    if isinstance(setting, bool):
        return setting
    if str(setting) != "auto":
        raise ValueError(f"params evaluate.crossfit.mlflow: auto | true | false, got {setting!r}")
    if settings._get("MLFLOW_TRACKING_URI"):
        return True
    import socket

    try:
        with socket.create_connection((settings.host, settings.port("mlflow")), timeout=0.3):
            return True
    except OSError:
        return False


def flat_metrics(report: dict) -> dict[str, float]:
    """crossfit.<model>.<figure> (over the arms) and crossfit.<model>.<arm>.<figure>, finite only."""
    out = {}
    for name, fig in report["models"].items():
        out.update({f"crossfit.{name}.{k}": v for k, v in fig["mean"].items()})
        for arm, a in fig["arms"].items():
            out.update({f"crossfit.{name}.{arm}.{k}": v for k, v in a.items() if not isinstance(v, list)})
    safe = {re.sub(r"[^\w\-./ ]", "_", k): float(v) for k, v in out.items()}
    return {k: v for k, v in safe.items() if np.isfinite(v)}


def log_to_mlflow(settings: Settings, report: dict, paths: dict[str, Path]) -> str:
    from campaignops.pipelines import tracking

    mlflow = tracking.configure(settings)
    with mlflow.start_run(run_name="crossfit") as run:
        mlflow.log_params({f"crossfit.{k}": v for k, v in report["config"].items()})
        mlflow.set_tag("crossfit", "true")
        mlflow.log_metrics(flat_metrics(report))
        for path in paths.values():
            mlflow.log_artifact(str(path), artifact_path="crossfit")
    return run.info.run_id


def run(settings: Settings, k: int | None = None, mlflow: bool | None = None, fit=None) -> dict:
    """Cross-fit the workspace's features (module docstring); returns the summary with the
    output paths (and the MLflow run id when logged). `fit`: as cross_fit's (default fit_fold)."""
    cfg = config(settings, k)
    t0 = time.perf_counter()
    oof, folds = cross_fit(settings, cfg, fit or fit_fold)
    draws = int(settings.params["evaluate"].get("qini_noise_draws", 0))
    oof, figures = summarise(oof, cfg, draws)
    from campaignops.pipelines.importer import source_ids

    src = source_ids(settings)
    if src is not None:
        oof = oof.merge(src, on="exposure_id", how="left")
    report = {"config": cfg, **folds, **figures, "seconds": round(time.perf_counter() - t0, 1)}
    out_dir = settings.workspace / OUT_DIR
    paths = write_outputs(out_dir, oof, report)
    report["outputs"] = {key: str(p) for key, p in paths.items()}
    if use_mlflow(settings, cfg["mlflow"], mlflow):
        report["mlflow_run_id"] = log_to_mlflow(settings, report, paths)
    return report


def table_rows(report: dict) -> list[tuple[str, ...]]:
    """Rows of the CLI table: model, arm, per-fold mean ± sd, pooled raw, pooled calibrated."""
    cal = report["config"]["calibration"]
    rows = []
    for name, fig in report["models"].items():
        for arm, a in [*fig["arms"].items(), ("all arms (mean)", fig["mean"])]:
            rows.append((name, arm, f"{a['qini_fold_mean']:.4f} ± {a.get('qini_fold_sd', float('nan')):.4f}",
                         f"{a['qini_pooled_none']:.4f}", f"{a[f'qini_pooled_{cal}']:.4f}"))
    return rows
