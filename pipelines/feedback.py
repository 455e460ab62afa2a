"""Feedback: did the campaign do what its scoring run forecast? Joins a committed scores run with
the campaign's outcome rows (the exposures of the batch after it ran), measures the actual effect
of its sends with the exploration slice and the no-send control as the counterfactual, compares it
with the run's forecast (and, on synthetic batches, the truth), and writes
`feedback/<campaign>/<run>/report.json` + `report.html`, a link `scores/<campaign>/<run>/feedback.json`
beside the immutable scores manifest, and one MLflow run per (campaign, scores run) in experiment
`campaign_feedback`. The measurements are pure functions in pipelines/feedback_estimate.py.

The estimator. Users i of the run with an outcome row: logged arm a_i, outcome y_i (responded, or
revenue for GMV), the model's greedy arm g_i; A arms with the no-send control c; exploration share
s. The scoring policy gave every user every arm with a known probability (pipelines/targeting.py)

    π_i(a) = s/A + (1 − s)·[a = g_i],        so π_i(c) ≥ s/A > 0 for everyone.

The effect of the sends of arm v, with μ_i(a) = E[y_i | arm a], is
T_v = Σ_{i: a_i = v} (μ_i(v) − μ_i(c)). Its first part is observed (Σ_{a_i = v} y_i); the second,
what the same users would have done unsent, is estimated from the users left unsent, each
weighted by how much likelier v was than no-send for them:

    Δ̂_v = Σ_{i: a_i = v} y_i  −  Σ_{j: a_j = c} y_j · π_j(v) / π_j(c).

Unbiased: E[1{a_j = c} y_j π_j(v)/π_j(c)] = π_j(v) μ_j(c) = E[1{a_j = v} μ_j(c)], so
E[Δ̂_v − T_v] = 0 over the exploration draws and the outcome noise: Δ̂_v measures the realised
sends' effect. In total v runs over every treatment (weights (1 − π_j(c))/π_j(c)); per segment
(the scoring features' segment_* one-hots) the sums run over the segment's users. Δ̂ = Σ_i z_i is
a sum of independent per-user terms (each user's arm is its own keyed draw, its outcome its own),
so se = sqrt(n·var(z)) — the nonparametric bootstrap's variance without draws, slightly
conservative (it includes the spread of E[z_i] between users) — and the interval is normal at
`feedback.level`. The noise is set by the slice: a user whose greedy arm is v and who explored
into control weighs 1 + A(1 − s)/s (37 at s = 0.1, A = 4). With s = 0 nothing is identified and
the request is refused.

Doubly robust (`actual_dr`): with the model's no-send prediction m_i(c) (the scores' p_control /
revenue_control) on both sides, Σ_{a_i = v}(y_i − m_i(c)) − Σ_{a_j = c}(y_j − m_j(c))·π_j(v)/π_j(c):
unbiased whatever m (the propensities are exact), less noisy when m is good. The greedy policy's
value over no-send, V = Σ_i μ_i(g_i) − μ_i(c) over every user: IPW
Σ_i y_i(1{a_i = g_i}/π_i(g_i) − 1{a_i = c}/π_i(c)), DR with the model's p_<arm> / revenue_<arm> as
outcome model Σ_i m_i(g_i) − m_i(c) + 1{a_i = g_i}(y_i − m_i(g_i))/π_i(g_i) − 1{a_i = c}(y_i − m_i(c))/π_i(c)
(terms 0 where g_i = c), beside the model's own figure (direct method) and the truth. The naive
"sent minus not sent" difference is reported to show its bias: targeting sends exactly the users
whose no-send behaviour differs. obp (Open Bandit Pipeline) is not used: not installed, its last
release (0.5.7, 2023) pins older numpy/pandas/scikit-learn (PlaytikaOSS/pybandits#59 removed it for
forcing downgrades), and the estimators are a few lines each; the realised sends' counterfactual
per variant is not one of its policy-value estimators anyway.

Forecast vs actual, per scope (total, each variant) and metric: `within_interval` (the actual
inside the forecast's interval), `forecast_within_actual_interval`, `forecast_over_actual` and,
with truth, `forecast_over_truth`. The forecast's interval covers only the sends' outcome noise;
the actual also carries the counterfactual's sampling noise, so with an exact forecast the actual
falls outside the forecast's 90% interval most of the time (67% at s = 0.1, 20k users, in a
simulation). Gate rule `both` (params.yaml feedback.gate) flags a metric only when, in addition,
the forecast is outside the actual's own interval (≤ 10% false alarms on an exact forecast; the
same simulation flagged a forecast 1.47× the truth 87% of the time); `forecast_interval` flags on
the first alone. A report is recomputed only when its inputs change (report_id = hash of the scores
commit, the outcome rows, the truth and segment inputs and the params); a rerun returns the stored
report and logs nothing new."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import layout
from campaignops.pipelines.feedback_estimate import FeedbackError, OutcomesNotReady, compare
from campaignops.pipelines.storage import ObjectStore

__all__ = ["run", "run_due", "pending", "summary", "flag_lines", "FeedbackError", "OutcomesNotReady", "EXPERIMENT"]

log = logging.getLogger(__name__)
EXPERIMENT = "campaign_feedback"
REPORT_VERSION = 1
OUTCOME_COLUMNS = ["user_id", "campaign_id", "variant_id", "responded", "revenue"]


def run(settings: Settings, campaign_id: str, scores_run_id: str | None = None, store: ObjectStore | None = None,
        exposures: pd.DataFrame | pa.Table | None = None, mlflow_client=None) -> dict:
    """Forecast vs actual of scores run `scores_run_id` of `campaign_id` (None: the run latest.json
    names, i.e. the one acted on); returns the report (+ mlflow_run_id, reused). `exposures`:
    outcome rows to use instead of the workspace's data/validated/exposures.parquet."""
    from campaignops.pipelines.inputs import check_id

    check_id(campaign_id, "campaign_id")       # ids from forms become S3 prefixes
    if scores_run_id is not None:
        check_id(scores_run_id, "scores_run_id")
    params = settings.params.get("feedback") or {}
    store = store or ObjectStore(settings)
    manifest = scores_manifest(store, campaign_id, scores_run_id)
    rid = manifest["score_run_id"]
    outcomes, source = load_outcomes(settings, campaign_id, exposures)
    scores = _scores(store, manifest)
    truth, truth_info = load_truth(settings, store, campaign_id)
    segments, features_uri = load_segments(store, manifest)
    measured = compare(manifest, scores, outcomes, params, truth, segments)
    inputs = {"scores_manifest": store.uri(layout.scores_prefix(campaign_id, rid) + "manifest.json"),
              "scores_commit": manifest.get("commit", {}).get("attempt"), "model": manifest.get("model", {}).get("uri"),
              "outcomes": source, "truth": truth_info, "features": features_uri}
    # The id hashes the inputs' content, not batch ids: a later batch holding the same rows reuses the report.
    content = {"scores": inputs["scores_manifest"], "commit": inputs["scores_commit"], "outcomes": source["sha256"],
               "truth": (truth_info or {}).get("sha256"), "features": features_uri}
    report_id = _sha({"version": REPORT_VERSION, "inputs": content, "params": params})[:24]
    prefix = layout.feedback_prefix(campaign_id, rid)
    stored = store.get_bytes_or_none(prefix + "report.json")
    reused = stored is not None and json.loads(stored).get("report_id") == report_id
    if reused:
        data, html = stored, store.get_bytes(prefix + "report.html")
        report = json.loads(data)
        log.info("feedback %s/%s: inputs unchanged, report %s reused", campaign_id, rid, report_id)
    else:
        from campaignops.pipelines.feedback_report import render_html

        report = _clean({"report_id": report_id, "version": REPORT_VERSION,
                         "computed_at": datetime.now(timezone.utc).isoformat(), "inputs": inputs, "params": params,
                         **measured,
                         "output": {"report": store.uri(prefix + "report.json"), "html": store.uri(prefix + "report.html"),
                                    "link": store.uri(layout.feedback_link_key(campaign_id, rid))}})
        data = json.dumps(report, indent=2, sort_keys=True, allow_nan=False).encode()
        html = render_html(report).encode()
        store.put_bytes(prefix + "report.html", html)      # the html first: report.json's presence implies both
        store.put_bytes(prefix + "report.json", data)
    mlflow_run_id = log_mlflow(settings, report, {"report.json": data, "report.html": html}, mlflow_client)
    link = {"campaign_id": campaign_id, "scores_run_id": rid, "report_id": report_id,
            "report_json": report["output"]["report"], "report_html": report["output"]["html"],
            "report_sha256": hashlib.sha256(data).hexdigest(), "html_sha256": hashlib.sha256(html).hexdigest(),
            "computed_at": report["computed_at"], "gate_passed": report["gate"]["passed"],
            "outside_interval": report["outside_interval"], "mlflow_experiment": EXPERIMENT, "mlflow_run_id": mlflow_run_id}
    key = layout.feedback_link_key(campaign_id, rid)
    current = store.get_bytes_or_none(key)
    if current is None or json.loads(current) != link:    # last: the step's commit marker (pending() reads it)
        store.put_json(key, link)
    for line in flag_lines(report):
        log.warning("feedback %s/%s: %s", campaign_id, rid, line)
    return {**report, "mlflow_run_id": mlflow_run_id, "reused": reused}


# --------------------------------------------------------------------------- inputs

def scores_manifest(store: ObjectStore, campaign_id: str, scores_run_id: str | None = None) -> dict:
    """The committed manifest of the scores run (None: the one scores/<campaign>/latest.json names)."""
    from campaignops.pipelines.run_commit import committed_runs

    if not campaign_id:
        raise FeedbackError("a campaign id is required (e.g. --campaign-id C005)")
    campaign = f"scores/{campaign_id}/"
    if scores_run_id is None:
        latest = store.get_bytes_or_none(campaign + "latest.json")
        if latest is None:
            raise FeedbackError(f"campaign {campaign_id!r} has no scores run acted on ({store.uri(campaign)}latest.json "
                                "is missing): score it first, or name a run with --scores-run")
        scores_run_id = json.loads(latest)["run_id"]
    data = store.get_bytes_or_none(layout.scores_prefix(campaign_id, scores_run_id) + "manifest.json")
    if data is None:
        runs = [m.get("score_run_id") for m in committed_runs(store, campaign)]
        raise FeedbackError(f"campaign {campaign_id!r} has no committed scores run {scores_run_id!r}; committed runs: "
                            f"{', '.join(map(str, runs)) or 'none'}")
    manifest = json.loads(data)
    if manifest.get("replay"):
        raise FeedbackError(f"scores run {scores_run_id} of {campaign_id} is a replay of an ended campaign: it was "
                            "never sent, so there is no outcome to compare")
    return manifest


def _scores(store: ObjectStore, manifest: dict) -> pd.DataFrame:
    from campaignops.pipelines.run_commit import read_run

    arms = [a["variant_id"] for a in manifest["arms"]]
    cols = ["user_id", "chosen_variant", "greedy_variant", "propensity", "explored",
            *(f"p_{a}" for a in arms), *(f"revenue_{a}" for a in arms)]
    return read_run(store, manifest).select(cols).to_pandas()


def load_outcomes(settings: Settings, campaign_id: str, exposures=None) -> tuple[pd.DataFrame, dict]:
    """The campaign's outcome rows (+ where they came from); OutcomesNotReady when there are none."""
    from campaignops.pipelines.score_request import read_json

    ws = settings.workspace
    if exposures is not None:
        frame = exposures.to_pandas() if isinstance(exposures, pa.Table) else pd.DataFrame(exposures)
        source = {"source": "exposures passed by the caller", "batch": None}
    else:
        path = ws / layout.VALIDATED_DIR / "exposures.parquet"
        validation = read_json(ws / layout.REPORTS_DIR / "validation.json")
        batch = validation.get("batch") or read_json(ws / layout.RAW_MANIFEST).get("batch")
        source = {"source": str(layout.VALIDATED_DIR / "exposures.parquet"), "batch": batch,
                  "validation_run_id": validation.get("run_id")}
        if not path.exists():
            raise OutcomesNotReady(f"outcomes of campaign {campaign_id!r} have not landed: no validated exposures in "
                                   f"the workspace ({path}); ingest and validate the batch after the campaign ran")
        cols = OUTCOME_COLUMNS + ["propensity"] * ("propensity" in pq.read_schema(path).names)
        frame = pq.read_table(path, columns=cols, filters=[("campaign_id", "==", campaign_id)]).to_pandas()
    frame = frame[frame["campaign_id"].astype(str) == campaign_id]
    if frame.empty:
        raise OutcomesNotReady(
            f"outcomes of campaign {campaign_id!r} have not landed: {source['source']} (batch {source['batch']!r}) has "
            "no exposure rows for it; they arrive with the batch after the campaign ran — ingest and validate it, "
            "then rerun")
    cols = [c for c in [*OUTCOME_COLUMNS, "propensity"] if c in frame]
    frame = frame[cols].astype({"user_id": str, "variant_id": str, "campaign_id": str}).reset_index(drop=True)
    source.update(rows=len(frame), sha256=_frame_sha(frame))
    return frame, source


def load_truth(settings: Settings, store: ObjectStore, campaign_id: str) -> tuple[pd.DataFrame | None, dict | None]:
    """On synthetic batches, the world's truth rows of the campaign (raw manifest truth.files)."""
    from campaignops.pipelines.score_request import read_json

    raw = read_json(settings.workspace / layout.RAW_MANIFEST)
    keys = (raw.get("truth") or {}).get("files") or []
    parts = [pq.read_table(io.BytesIO(store.get_bytes(k)), filters=[("campaign_id", "==", campaign_id)]).to_pandas()
             for k in keys]
    truth = pd.concat(parts) if parts else None
    if truth is None or truth.empty:
        return None, None
    return truth, {"batch": raw.get("batch"), "files": len(keys), "rows": len(truth), "sha256": _frame_sha(truth)}


def load_segments(store: ObjectStore, manifest: dict) -> tuple[pd.DataFrame | None, str | None]:
    """user_id → segment (the scoring features' segment_* one-hot that is set) from the features the
    scores manifest cites; (None, uri) when they are gone or hold no segments."""
    uri = (manifest.get("inputs", {}).get("features") or {}).get("uri")
    if not uri or store.head_or_none(store.key(uri)) is None:
        return None, uri
    with tempfile.TemporaryDirectory(prefix="feedback-") as tmp:
        path = Path(tmp) / "features.parquet"
        store.download_file(store.key(uri), path)       # read two columns, not every sequence into memory
        cols = [c for c in pq.read_schema(path).names if c.startswith("segment_")]
        if not cols:
            return None, uri
        t = pq.read_table(path, columns=["user_id", *cols]).to_pandas()
    onehot = t[cols].to_numpy()
    label = np.where(onehot.max(axis=1) > 0, np.array(cols, dtype=object)[onehot.argmax(axis=1)], "none")
    return pd.DataFrame({"user_id": t["user_id"].astype(str), "segment": label}), uri


# --------------------------------------------------------------------------- MLflow, the due list, summaries

def log_mlflow(settings: Settings, report: dict, files: dict[str, bytes], client=None) -> str:
    """One MLflow run per (campaign, scores run), found by its tags before one is created; metrics and
    the report files are logged unless the run already holds this report_id (tag set last)."""
    if client is None:
        from campaignops.pipelines import tracking

        client = tracking.configure(settings).MlflowClient()
    from mlflow.entities import Metric

    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(EXPERIMENT)
    cid, rid = report["campaign_id"], report["scores_run_id"]
    q = lambda s: str(s).replace("'", "\\'")   # noqa: E731
    found = client.search_runs([exp_id], filter_string=f"tags.campaign_id = '{q(cid)}' and "
                                                       f"tags.scores_run_id = '{q(rid)}'", max_results=1)
    run = found[0] if found else client.create_run(exp_id, run_name=f"{cid}/{rid}",
                                                   tags={"campaign_id": cid, "scores_run_id": rid})
    run_id = run.info.run_id
    if run.data.tags.get("report_id") == report["report_id"]:
        return run_id
    ts = int(time.time() * 1000)
    metrics = [Metric(k, v, ts, 0) for k, v in flat_metrics(report).items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    with tempfile.TemporaryDirectory(prefix="feedback-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        client.log_artifacts(run_id, tmp, artifact_path="feedback")
    client.set_tag(run_id, "gate.passed", str(report["gate"]["passed"]))
    client.set_tag(run_id, "outside_interval", ",".join(report["outside_interval"])[:5000])
    client.set_tag(run_id, "report_id", report["report_id"])    # last: the run holds this report
    client.set_terminated(run_id)
    return run_id


def flat_metrics(report: dict) -> dict[str, float]:
    """MLflow metric name -> value: <scope>.<metric>.forecast|actual|actual_se|actual_dr|truth, the
    policy value and the truth's share of the oracle."""
    out = {}
    scopes = [("total", report["total"]), *((f"variant.{v}", b) for v, b in report["by_variant"].items()),
              *((f"segment.{s}", b) for s, b in report["by_segment"].items())]
    for scope, block in scopes:
        out[f"{scope}.sends"] = block["sends"]["actual"]
        for name, m in block["metrics"].items():
            out[f"{scope}.{name}.actual"] = m["actual"]["estimate"]
            out[f"{scope}.{name}.actual_se"] = m["actual"]["se"]
            out[f"{scope}.{name}.actual_dr"] = m["actual_dr"]["estimate"]
            out[f"{scope}.{name}.forecast"] = (m["forecast"] or {}).get("forecast")
            out[f"{scope}.{name}.truth"] = m["truth"]
    for name in ("incremental_responses", "incremental_gmv"):
        pv = report["policy_value"][name]
        out.update({f"policy_value.{name}.model": pv["model"], f"policy_value.{name}.ipw": pv["ipw"]["estimate"],
                    f"policy_value.{name}.dr": pv["dr"]["estimate"], f"policy_value.{name}.truth": pv["truth"]})
    out["truth.share_of_oracle"] = (report.get("truth") or {}).get("share_of_oracle")
    out["outside_interval"] = len(report["outside_interval"])
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def pending(settings: Settings, store: ObjectStore) -> list[tuple[str, str]]:
    """(campaign, scores run) pairs to report on: the run each campaign's latest.json names, whose
    outcomes are in the validated exposures and whose feedback link does not exist yet."""
    path = settings.workspace / layout.VALIDATED_DIR / "exposures.parquet"
    if not path.exists():
        return []
    landed = set(map(str, pd.unique(pq.read_table(path, columns=["campaign_id"]).column(0).to_pandas())))
    out = []
    for key in store.list_keys("scores/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "latest.json" and parts[1] in landed:
            rid = store.get_json(key)["run_id"]
            if store.head_or_none(layout.feedback_link_key(parts[1], rid)) is None:
                out.append((parts[1], rid))
    return out


def run_due(settings: Settings, campaign_id: str | None = None, scores_run_id: str | None = None,
            store: ObjectStore | None = None) -> list[dict]:
    """The DAG's step: one campaign (and run) when named, else every pending() one; their summaries."""
    if scores_run_id and not campaign_id:
        raise FeedbackError(f"scores run {scores_run_id!r} given without its campaign id")
    store = store or ObjectStore(settings)
    todo = [(campaign_id, scores_run_id)] if campaign_id else pending(settings, store)
    if not todo:
        log.info("feedback: no scores run with landed outcomes is waiting for a report")
    return [summary(run(settings, cid, rid, store=store)) for cid, rid in todo]


def summary(report: dict) -> dict:
    """What a task result or a log line keeps of a report."""
    total = {name: {"forecast": (m["forecast"] or {}).get("forecast"), "actual": m["actual"]["estimate"],
                    "lo": m["actual"]["lo"], "hi": m["actual"]["hi"], "truth": m["truth"]}
             for name, m in report["total"]["metrics"].items()}
    return {"campaign_id": report["campaign_id"], "scores_run_id": report["scores_run_id"],
            "report_json": report["output"]["report"], "report_html": report["output"]["html"], "passed": report["gate"]["passed"],
            "outside_interval": flag_lines(report), "total": total, "mlflow_run_id": report.get("mlflow_run_id"),
            "reused": report.get("reused", False)}


def flag_lines(report: dict) -> list[str]:
    """One line per flagged metric: actual and its interval vs the forecast and its interval."""
    out = []
    for key in report["outside_interval"]:
        scope, name = key.rsplit(".", 1)
        m = (report["total"] if scope == "total" else report["by_variant"][scope])["metrics"][name]
        a, f = m["actual"], m["forecast"]
        out.append(f"{key}: actual {a['estimate']:.1f} [{a['lo']:.1f}, {a['hi']:.1f}] outside the forecast "
                   f"{f['forecast']:.1f} [{f['lo']:.1f}, {f['hi']:.1f}]")
    return out


# --------------------------------------------------------------------------- helpers

def _frame_sha(frame: pd.DataFrame) -> str:
    f = frame.sort_values(list(frame.columns[:4])).reset_index(drop=True)
    return hashlib.sha256(pd.util.hash_pandas_object(f, index=False).to_numpy().tobytes()).hexdigest()


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _clean(obj):
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
