"""Train/serve skew and drift: the Population Stability Index (PSI) of a batch's feature
distributions against a reference snapshot (e.g. the training frame).

    PSI = sum_i (c_i - r_i) * ln(c_i / r_i)

over bins i, with r_i / c_i the reference / current share of rows in bin i. Numerics are binned
at the reference's quantiles (`bins` of them; the outer edges are open, so values outside the
reference's range fall in the first/last bin); categoricals use one bin per category seen in
either frame. Nulls are a bin of their own in both cases, so a column that turns null is drift.
Empty bins get a share of EPS so the log is defined (the usual convention).

Rule of thumb: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 major shift. The threshold lives in
params.yaml `drift.max_psi` (per feature: `drift.features`).

The gate (train/serve skew): the train stage keeps bounded samples of the model's input
features in `drift_reference/` (data/model and an MLflow artifact of the run,
`write_reference`). Before training (`gate_training`) and before scoring (`gate_scoring`) the
batch is compared with the *champion's* snapshot under the per-feature policy of params.yaml
`drift:` (`policy`, `assess`); the report goes to reports/drift_<stage>.json (+ .html) and to
s3://<bucket>/drift/<stage>/<batch>/<check_id>/, and a breach with `on_breach: block` raises
`DriftDetected` naming the features. No champion yet (or one trained before snapshots existed):
the gate passes with a note.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import math
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from campaignops.pipelines import layout

EPS = 1e-4
NULL = "<null>"
STAGES = ("train", "score")
REFERENCE_DIR = "drift_reference"  # in data/model and in the training run's MLflow artifacts
REFERENCE_FRAMES = {"train": "train.parquet", "profile": "profile.parquet"}
POPULATION = {"train": "train", "score": "profile"}  # stage -> the snapshot population it is compared with
REFERENCE_ROWS = 50_000       # rows of the train split kept in the snapshot (a seeded sample)
SAMPLE_SEED = 0
ARM_FEATURES = ("type", "channel", "target_category")  # campaign-design inputs, compared as categories
log = logging.getLogger(__name__)


class DriftDetected(RuntimeError):
    """One or more features' PSI is over the threshold."""

    def __init__(self, message: str, features: dict[str, float]):
        super().__init__(message)
        self.features = features


def _psi_from_counts(ref: np.ndarray, cur: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=float)
    cur = np.asarray(cur, dtype=float)
    if ref.sum() == 0 or cur.sum() == 0:
        raise ValueError("PSI needs at least one row in both the reference and the current data")
    r = np.maximum(ref / ref.sum(), EPS)
    c = np.maximum(cur / cur.sum(), EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def _as_array(values) -> np.ndarray:
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):
        try:
            return values.to_numpy(zero_copy_only=False)  # pyarrow
        except TypeError:
            return values.to_numpy()                       # pandas / polars
    return np.asarray(values)


def bin_edges(reference, bins: int = 10) -> np.ndarray:
    """Inner edges: the reference's distinct quantiles (at most bins - 1 of them)."""
    ref = _as_array(reference).astype(float)
    ref = ref[~np.isnan(ref)]
    if bins < 2:
        raise ValueError("bins must be >= 2")
    if not len(ref):
        return np.zeros(0)
    qs = np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(qs)


def _numeric_counts(values, edges: np.ndarray) -> np.ndarray:
    v = _as_array(values).astype(float)
    nulls = np.isnan(v)
    # bin i holds edges[i-1] < x <= edges[i]; bin 0 is x <= edges[0]; last bin x > edges[-1]
    idx = np.searchsorted(edges, v[~nulls], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    return np.append(counts, nulls.sum())


def psi(reference, current, bins: int = 10) -> float:
    """PSI of a numeric column: bins at the reference's quantiles, nulls a bin of their own."""
    edges = bin_edges(reference, bins)
    return _psi_from_counts(_numeric_counts(reference, edges), _numeric_counts(current, edges))


def _labels(values) -> list:
    out = []
    for x in _as_array(values).tolist():
        if x is None or (isinstance(x, float) and math.isnan(x)):
            out.append(NULL)
        else:
            out.append(str(x))
    return out


def categorical_psi(reference, current) -> float:
    """PSI of a categorical column: one bin per category in either frame (nulls one bin)."""
    ref, cur = _labels(reference), _labels(current)
    cats = sorted(set(ref) | set(cur))
    pos = {c: i for i, c in enumerate(cats)}
    rc = np.bincount([pos[x] for x in ref], minlength=len(cats))
    cc = np.bincount([pos[x] for x in cur], minlength=len(cats))
    return _psi_from_counts(rc, cc)


def _column(frame, name: str):
    try:
        return frame[name] if not hasattr(frame, "column") else frame.column(name)
    except KeyError as exc:
        raise KeyError(f"drift: column {name!r} is not in the frame") from exc


def _is_numeric(col) -> bool:
    arr = _as_array(col)
    if arr.dtype.kind in "iufb":
        return True
    if arr.dtype.kind == "M":
        return False
    return False


def drift_report(reference_frame, current_frame, columns: Sequence[str] | None = None, bins: int = 10,
                 categorical: Iterable[str] = ()) -> dict:
    """PSI per column of two frames (pandas, polars or pyarrow). Numeric dtypes are binned,
    everything else (and names in `categorical`) is compared by category. Columns default to
    those the frames share."""
    if columns is None:
        ref_cols = list(getattr(reference_frame, "column_names", None) or reference_frame.columns)
        cur_cols = set(getattr(current_frame, "column_names", None) or current_frame.columns)
        columns = [c for c in ref_cols if c in cur_cols]
    categorical = set(categorical)
    features = {}
    for name in columns:
        ref, cur = _column(reference_frame, name), _column(current_frame, name)
        if name not in categorical and _is_numeric(ref) and _is_numeric(cur):
            value, kind = psi(ref, cur, bins), "numeric"
        else:
            value, kind = categorical_psi(ref, cur), "categorical"
        features[name] = {"psi": round(value, 6), "kind": kind, "n_reference": len(ref), "n_current": len(cur)}
    worst = max(features.items(), key=lambda kv: kv[1]["psi"], default=(None, {"psi": 0.0}))
    return {"bins": bins, "features": features, "max_psi": worst[1]["psi"], "max_psi_feature": worst[0]}


# --------------------------------------------------------------------------- the gate

def sample_indices(n: int, max_rows: int | None, seed: int = SAMPLE_SEED) -> np.ndarray:
    """All of range(n), or a seeded draw of max_rows of them in increasing order (same input, same rows)."""
    if not max_rows or n <= int(max_rows):
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, int(max_rows), replace=False))


def sample(table, rows: int, seed: int = SAMPLE_SEED):
    """At most `rows` rows of a pyarrow table: a seeded draw kept in input order (same input, same rows)."""
    if table.num_rows <= rows:
        return table
    return table.take(sample_indices(table.num_rows, rows, seed))


def write_reference(features_dir, meta: dict, out_dir, mlflow=None, rows: int = REFERENCE_ROWS) -> Path:
    """The training snapshot, two populations of the model's input features (no ids), at most
    `rows` rows each (a seeded sample), written atomically to `out_dir` and logged as the run's
    `drift_reference` artifact when the active `mlflow` module is given:
      train.parquet    the train split's exposures with their arms (profile + ARM_FEATURES): what
                       the model was fitted on; the next batch's exposures are compared with it;
      profile.parquet  every user's profile as of the batch's `now`: the population the model
                       was meant to score; a scoring frame (every user at a campaign's start) is
                       compared with it, like with like.
    The feature metadata rides along so a scoring frame can be rebuilt without loading the model."""
    import pyarrow.parquet as pq

    from campaignops.pipelines.scoring_frames import attach_arms
    from campaignops.pipelines.storage import atomic_dir

    fdir = Path(features_dir)
    cols = list(meta["profile_cols"])
    train = attach_arms(pq.read_table(fdir / "train.parquet", columns=["exposure_id", "campaign_id", "variant_id", *cols]),
                        pq.read_table(fdir / "arms.parquet"), "exposure_id", False)
    frames = {"train": train.select([*cols, *(c for c in ARM_FEATURES if c in train.column_names)]),
              "profile": pq.read_table(fdir / "profile.parquet", columns=cols)}
    with atomic_dir(out_dir) as tmp:
        for name, frame in frames.items():
            table = sample(frame, rows)
            info = {"population": name, "rows_total": frame.num_rows, "rows": table.num_rows, "seed": SAMPLE_SEED,
                    "categorical": [c for c in ARM_FEATURES if c in table.column_names]}
            table = table.replace_schema_metadata({b"campaignops.drift": json.dumps(info).encode(),
                                                   b"campaignops.meta": json.dumps(meta, default=str).encode()})
            pq.write_table(table, tmp / REFERENCE_FRAMES[name], compression="zstd")
    if mlflow is not None:
        mlflow.log_artifacts(str(out_dir), artifact_path=REFERENCE_DIR)
    return Path(out_dir)


def read_reference(path, population: str) -> tuple:
    """(table, snapshot info, feature meta) of one population of a snapshot (write_reference)."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(path) / REFERENCE_FRAMES[population])
    md = table.schema.metadata or {}
    return (table.replace_schema_metadata(None), json.loads(md.get(b"campaignops.drift", b"{}")),
            json.loads(md.get(b"campaignops.meta", b"{}")))


def policy(params: dict, stage: str) -> dict:
    """The gate's settings for `stage` from params.yaml `drift:`."""
    if stage not in STAGES:
        raise ValueError(f"drift stage must be one of {STAGES}, got {stage!r}")
    d = params.get("drift") or {}
    on_breach = (d.get("on_breach") or {}).get(stage, "block")
    if on_breach not in ("block", "warn"):
        raise ValueError(f"params.yaml drift.on_breach.{stage}: {on_breach!r} is neither 'block' nor 'warn'")
    return {"stage": stage, "max_psi": float(d.get("max_psi", 0.2)), "bins": int(d.get("bins", 10)),
            "sample_rows": int(d.get("sample_rows", 200_000)), "on_breach": on_breach,
            "features": dict(d.get("features") or {})}


def feature_rule(pol: dict, name: str) -> dict:
    """A feature's threshold under the policy: its own entry in drift.features (exact name, else
    the first matching glob such as `affinity_*`), else the default max_psi."""
    feats = pol["features"]
    key = name if name in feats else next((k for k in feats if fnmatch.fnmatchcase(name, k)), None)
    rule = {"max_psi": pol["max_psi"], "exempt": False, "rule": key, "why": None}
    if key is None:
        return rule
    spec = {"exempt": True} if feats[key] == "exempt" else feats[key]
    if not isinstance(spec, dict) or set(spec) - {"max_psi", "exempt", "why"}:
        raise ValueError(f"params.yaml drift.features.{key}: expected 'exempt' or a mapping of max_psi / exempt "
                         f"(true or a list of stages) / why, got {spec!r}")
    exempt = spec.get("exempt", False)
    rule["exempt"] = exempt is True or (isinstance(exempt, (list, tuple)) and pol["stage"] in exempt)
    rule["max_psi"] = float(spec.get("max_psi", pol["max_psi"]))
    rule["why"] = spec.get("why")
    return rule


def assess(reference, current, pol: dict, categorical: Iterable[str] = ()) -> dict:
    """PSI of every feature the two pyarrow tables share, each judged by its rule: `breaches` are the
    non-exempt features over their threshold; status passed / blocked / warned (on_breach)."""
    cur_cols = set(current.column_names)
    columns = [c for c in reference.column_names if c in cur_cols]
    report = drift_report(reference, sample(current, pol["sample_rows"]), columns, pol["bins"], categorical)
    breaches = {}
    for name, f in report["features"].items():
        rule = feature_rule(pol, name)
        f.update(rule)
        f["status"] = "exempt" if rule["exempt"] else "breach" if f["psi"] > rule["max_psi"] else "ok"
        if f["status"] == "breach":
            breaches[name] = f["psi"]
    report.update({
        "stage": pol["stage"], "status": "passed" if not breaches else "blocked" if pol["on_breach"] == "block" else "warned",
        "breaches": breaches, "not_compared": [c for c in reference.column_names if c not in cur_cols],
        "policy": {k: pol[k] for k in ("max_psi", "bins", "sample_rows", "on_breach")},
        "rows": {"reference": reference.num_rows, "current": current.num_rows},
    })
    return report


def enforce(report: dict) -> dict:
    """Raise DriftDetected for a blocked report (naming each feature, its PSI and threshold)."""
    if report["status"] == "warned":
        log.warning("drift (%s, warn only): %s", report["stage"], report["breaches"])
    if report["status"] != "blocked":
        return report
    feats = report["features"]
    listed = ", ".join(f"{n} (PSI {v:.3f} > {feats[n]['max_psi']:g})"
                       for n, v in sorted(report["breaches"].items(), key=lambda kv: -kv[1]))
    ref = report.get("reference", {})
    raise DriftDetected(
        f"drift gate blocked {report['stage']}: {len(report['breaches'])} feature(s) of batch "
        f"{report.get('batch')!r} shifted against the training snapshot of {ref.get('model_name')} "
        f"v{ref.get('model_version')}: {listed}. Report: {report.get('report_uri') or report.get('report_path')}. "
        "Check the upstream source of these features first; if the shift is real and expected, give the feature "
        f"its own max_psi (or exempt it, with a why) under params.yaml drift.features; to go on with this batch "
        f"once, run again with a drift override reason (the DAG's `drift_override_reason` param; recorded with "
        f"the run), or set drift.on_breach.{report['stage']}: warn for every run.", report["breaches"])


def champion_reference(settings, stage: str) -> tuple:
    """(snapshot table for `stage`, info) of the champion's training run; (None, info with a note)
    when there is no champion or its run has no snapshot (trained before snapshots existed)."""
    import tempfile

    from campaignops.pipelines import tracking

    mlflow = tracking.configure(settings)
    from mlflow.exceptions import MlflowException

    name = settings.params["train"]["model_name"]
    try:
        version = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, {"model_name": name, "note": f"model {name!r} has no champion yet: nothing to compare with"}
    population = POPULATION[stage]
    info = {"model_name": name, "model_version": str(version.version), "run_id": version.run_id,
            "population": population, "uri": f"runs:/{version.run_id}/{REFERENCE_DIR}/{REFERENCE_FRAMES[population]}"}
    with tempfile.TemporaryDirectory(prefix="campaignops-drift-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=REFERENCE_DIR, dst_path=tmp)
            table, snap, meta = read_reference(path, population)
        except (MlflowException, OSError) as exc:
            return None, {**info, "note": f"champion v{version.version} has no {REFERENCE_DIR} snapshot in run "
                          f"{version.run_id} ({type(exc).__name__}); its next retrain enables the gate"}
    return table, {**info, "snapshot": snap, "meta": meta}


def gate_training(settings, store=None, override: dict | None = None) -> dict:
    """Before training: the new batch's train + valid exposures (data/features, arms attached) vs
    the champion's snapshot. Writes the report; raises DriftDetected on a blocking breach."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from campaignops.pipelines.scoring_frames import attach_arms

    def current(ref, _meta):
        fdir = settings.workspace / layout.FEATURES_DIR
        arms = pq.read_table(fdir / "arms.parquet")
        keep = ["exposure_id", "campaign_id", "variant_id", *(c for c in ref.column_names if c not in ARM_FEATURES)]
        frames = []
        for split in ("train", "valid"):
            names = pq.read_schema(fdir / f"{split}.parquet").names
            frames.append(attach_arms(pq.read_table(fdir / f"{split}.parquet", columns=[c for c in keep if c in names]),
                                      arms, "exposure_id", False))
        return pa.concat_tables(frames, promote_options="default")

    return _gate(settings, "train", current, store, override)


def gate_scoring(settings, campaign_id: str | None = None, users=None, store=None, override: dict | None = None) -> dict:
    """Before scoring: every user's features as of the campaign's start (the scoring frame; built
    here with the champion's feature metadata unless given) vs the champion's snapshot."""
    def current(_ref, meta):
        return users if users is not None else scoring_users(settings, campaign_id, meta)[0]

    return _gate(settings, "score", current, store, override)


def scoring_users(settings, campaign_id: str | None, meta: dict):
    """(scoring frame, campaign_id): features of every user as of the campaign's first start."""
    from campaignops.pipelines.scoring_frames import campaign_scoring_frame, connect

    ws = settings.workspace
    campaign_id = campaign_id or json.loads((ws / layout.RAW_MANIFEST).read_text()).get("upcoming_campaign_id")
    return campaign_scoring_frame(connect(ws / layout.VALIDATED_DIR), campaign_id, meta)[0], campaign_id


def _gate(settings, stage: str, current, store, override: dict | None = None) -> dict:
    """`override` ({"reason": ..., "by": ...}, a non-empty reason): a blocking breach is let through for
    this run, status `overridden`, the override kept in the report (and so in the scoring manifest)."""
    pol = policy(settings.params, stage)
    table, info = champion_reference(settings, stage)
    meta = info.pop("meta", {})
    if table is None:
        report = {"stage": stage, "status": "skipped", "note": info["note"], "breaches": {}, "features": {},
                  "policy": {k: pol[k] for k in ("max_psi", "bins", "sample_rows", "on_breach")}}
    else:
        cats = info.get("snapshot", {}).get("categorical", [c for c in ARM_FEATURES if c in table.column_names])
        report = assess(table, current(table, meta), pol, categorical=cats)
    report["reference"] = info
    if report["status"] == "blocked" and override and str(override.get("reason") or "").strip():
        report["status"], report["override"] = "overridden", dict(override)
        log.warning("drift gate (%s) overridden by %s: %s; breaches %s", stage, override.get("by"),
                    override["reason"], report["breaches"])
    write_report(settings, report, store)
    return enforce(report)


def write_report(settings, report: dict, store=None) -> dict:
    """reports/drift_<stage>.json + .html (atomic) and the same under s3://<bucket>/drift/<stage>/<batch>/<check_id>/."""
    from campaignops.pipelines.storage import ObjectStore, atomic_path, write_json

    ws, stage = settings.workspace, report["stage"]
    raw = ws / layout.RAW_MANIFEST
    batch = json.loads(raw.read_text()).get("batch") if raw.exists() else None
    check_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    store = store or ObjectStore(settings)
    prefix = layout.drift_prefix(stage, str(batch), check_id)
    local = ws / layout.REPORTS_DIR / f"drift_{stage}.json"
    report.update({"check_id": check_id, "checked_at": datetime.now(timezone.utc).isoformat(), "batch": batch,
                   "report_uri": store.uri(prefix + "report.json"), "html_uri": store.uri(prefix + "report.html"),
                   "report_path": str(local.relative_to(ws))})
    html = render_html(report)
    store.put_json(prefix + "report.json", report)
    store.put_bytes(prefix + "report.html", html.encode())
    write_json(local, report)
    with atomic_path(local.with_suffix(".html")) as tmp:
        tmp.write_text(html)
    return report


def summary(report: dict) -> dict:
    """What a task result, the CLI and the scoring manifest keep of a report."""
    keys = ("stage", "status", "breaches", "max_psi", "max_psi_feature", "note", "report_uri", "report_path", "check_id",
            "override")
    out = {k: report[k] for k in keys if k in report}
    out["reference_model_version"] = report.get("reference", {}).get("model_version")
    out["exempt_over_threshold"] = sorted(n for n, f in report.get("features", {}).items()
                                          if f.get("exempt") and f["psi"] > f["max_psi"])
    return out


def render_html(report: dict) -> str:
    """A one-table page: features by PSI, their threshold, rule and verdict."""
    from html import escape

    ref = report.get("reference", {})
    head = (f"<h1>Drift gate: {escape(report['stage'])} — {escape(report['status'])}</h1>"
            f"<p>batch {escape(str(report.get('batch')))} vs the training snapshot of "
            f"{escape(str(ref.get('model_name')))} v{escape(str(ref.get('model_version')))}; "
            f"policy {escape(json.dumps(report.get('policy')))}</p>")
    if report.get("note"):
        head += f"<p>{escape(report['note'])}</p>"
    rows = "".join(
        f"<tr class='{f['status']}'><td>{escape(n)}</td><td>{f['kind']}</td><td>{f['psi']:.4f}</td>"
        f"<td>{f['max_psi']:g}</td><td>{f['status']}</td><td>{escape(str(f.get('rule') or ''))}</td>"
        f"<td>{escape(str(f.get('why') or ''))}</td></tr>"
        for n, f in sorted(report.get("features", {}).items(), key=lambda kv: -kv[1]["psi"]))
    return ("<!doctype html><meta charset='utf-8'><title>drift " + escape(report["stage"]) + "</title>"
            "<style>td,th{padding:2px 8px;text-align:left}.breach{background:#fcc}.exempt{color:#777}</style>"
            + head + "<table><tr><th>feature</th><th>kind</th><th>PSI</th><th>max PSI</th><th>status</th>"
            "<th>rule</th><th>why</th></tr>" + rows + "</table>")
