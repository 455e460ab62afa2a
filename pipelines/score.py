"""Batch scoring of one campaign: check the request, build every user's features as of the
campaign start, gate on drift, predict every user under every arm (streamed; local or Spark),
choose arms under the budget with a seeded exploration slice, forecast the effect, and commit the
run to S3 atomically (parts, then a manifest written last with a conditional put).

Request checks live in pipelines/score_request.py. Output layout (wide, one row per user; README "Scores"): `chosen_variant` (the arm the user gets;
`control` = no send), `send`, `explored`, `propensity` (probability of the chosen arm under the
policy), `greedy_variant` (the model's own choice), `rank` (position by best net value; 0 = no arm
pays for itself), `net_value`, `cost`, then per arm `p_<arm>` and `revenue_<arm>` and per treatment
`uplift_<arm>` — predictions for every user, targeted or not, so a budget can be widened or
narrowed later from the same file. The run id derives from the request (campaign, model version,
input hashes, budget, exploration), so repeating a request returns the committed manifest."""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import failpoints, layout
from campaignops.pipelines.score_engine import ENGINES
from campaignops.pipelines.score_request import Request, RequestError, check_request, read_json
from campaignops.pipelines.storage import ObjectStore, sha256_file

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the run

def run(settings: Settings, campaign_id: str | None = None, budget=None, store: ObjectStore | None = None,
        engine: str | None = None, exploration: dict | None = None, allow_last_validated: bool = False,
        replay: bool = False, context: dict | None = None, drift_override: dict | None = None) -> dict:
    """Score a campaign; returns the committed manifest (an existing one if the same request ran).
    `drift_override` ({"reason", "by"}) lets a blocking drift breach through, recorded in the manifest."""
    from campaignops.pipelines import tracking
    from campaignops.pipelines.run_commit import RunWriter

    t0 = time.perf_counter()
    params = settings.params["score"]
    req = check_request(settings, campaign_id, params["default_budget"] if budget is None else budget,
                        allow_last_validated, replay, exploration)
    engine = engine or params.get("engine", "local")
    if engine not in ENGINES:
        raise RequestError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    store = store or ObjectStore(settings)
    mlflow = tracking.configure(settings)
    name = settings.params["train"]["model_name"]
    version = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    key = request_key(settings, req, str(version.version))
    req.validation["data"] = validated_data(settings, key)
    run_id = f"v{version.version}-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    prefix = layout.scores_prefix(req.campaign_id, run_id)
    writer = RunWriter(store, prefix, run_id, cleanup_grace_s=float(params.get("orphan_grace_s", 3600)), latest=False)
    existing = writer.existing()
    if existing is not None:
        log.info("score %s: run %s already committed: %s", req.campaign_id, run_id, existing["output"]["manifest"])
        writer.latest = _moves_latest(existing)
        writer.finalize(existing)   # repairs a writer killed between its manifest and latest.json
        store_lineage(settings, store, existing, only_if_absent=True)
        return {**existing, "reused": True}

    model_uri = f"models:/{name}/{version.version}"
    pyfunc = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    meta = pyfunc.meta
    with tempfile.TemporaryDirectory(prefix="score-") as tmp:
        t = time.perf_counter()
        features = scoring_features(settings, store, req, meta, Path(tmp))
        log.info("score %s: features of %d users as of %s in %.1f s: %s", req.campaign_id, features["rows"],
                 req.start, time.perf_counter() - t, features["uri"])
        failpoints.hit("features_written")
        drift = _drift(settings, Path(features["local_path"]), req.campaign_id, store, drift_override)
        failpoints.hit("drift_checked")
        t = time.perf_counter()
        preds = predict(engine, settings, pyfunc, model_uri, req.arms, features, params)
        log.info("score %s: %d users × %d arms predicted by the %s engine in %.1f s", req.campaign_id,
                 len(preds.p), len(req.arms), engine, time.perf_counter() - t)
    failpoints.hit("predicted")
    arm_ids = [a["variant_id"] for a in req.arms]
    costs = np.array([a["cost_per_send"] for a in req.arms], dtype=np.float64)
    from campaignops.pipelines.targeting import assign, exploration_draws

    explored, explore_arm = exploration_draws(preds.user_ids.to_numpy(zero_copy_only=False), req.exploration["share"],
                                              len(arm_ids), req.exploration["seed"], req.campaign_id)
    vpr = float(params["value_per_response"])
    try:
        a = assign(preds.p, costs[:-1], vpr, req.budget, explored, explore_arm, req.exploration["share"])
    except ValueError as exc:
        raise RequestError(str(exc)) from None

    rows = int(params.get("part_rows", 250_000))
    meta_cols = {"model_name": name, "model_version": str(version.version), "score_run_id": run_id}
    for s in range(0, len(preds.p), rows):
        writer.write_part(output_table(preds, a, arm_ids, costs, req.campaign_id, meta_cols, vpr, slice(s, s + rows)))
    from campaignops.pipelines.forecast import campaign_forecast

    forecast = campaign_forecast(preds.p, preds.revenue, a.chosen, arm_ids, costs, vpr)
    manifest = _manifest(req, run_id, key, engine, version, a, arm_ids, costs, forecast, features)
    manifest.update({"code": {"git_sha": tracking.git_revision(settings)}, "drift": drift,
                     "context": run_context(context)})
    truth = _truth_check(settings, store, req.campaign_id, preds, arm_ids, a, forecast)
    if truth:
        manifest["truth_check"] = truth
        log.warning("score %s: forecast %.1f vs true %.1f incremental responses (forecast/truth %s)",
                    req.campaign_id, truth["forecast_incremental_responses"], truth["true_incremental_responses"],
                    f"{truth['forecast_over_truth']:.2f}" if truth["forecast_over_truth"] else "n/a")
    manifest["output"] = {"manifest": store.uri(prefix + "manifest.json"), "prefix": store.uri(prefix)}
    writer.latest = _moves_latest(manifest)
    manifest, won = writer.commit(manifest)
    if not won:
        log.warning("score %s: another writer committed run %s first; returning its manifest", req.campaign_id, run_id)
    if not writer.latest:
        log.warning("score %s: %s — latest.json not moved", req.campaign_id,
                    "replay of an ended campaign" if manifest.get("replay") else
                    "the model targets nobody at this budget (no user's uplift pays for its send)")
    log.info("score %s: run %s committed in %.1f s: %s", req.campaign_id, run_id, time.perf_counter() - t0,
             manifest["output"]["manifest"])
    store_lineage(settings, store, manifest)
    return manifest


LINEAGE_PAGE = "lineage.html"


def run_context(context: dict | None) -> dict:
    """Who and what started the run, for the manifest: the caller's context (Airflow passes dag_id
    and dag_run_id) plus the triggering user — context["triggered_by"], else $CAMPAIGNOPS_TRIGGERED_BY,
    else the Airflow dag run's triggering_user_name (inside a task), else the OS user outside Airflow."""
    import getpass
    import os

    ctx = dict(context or {})
    if ctx.get("triggered_by"):
        return ctx
    user, source = os.environ.get("CAMPAIGNOPS_TRIGGERED_BY"), "env CAMPAIGNOPS_TRIGGERED_BY"
    in_airflow = bool(ctx.get("dag_id") or os.environ.get("AIRFLOW_CTX_DAG_ID"))
    if not user and in_airflow:
        try:
            from airflow.sdk import get_current_context

            dag_run = get_current_context().get("dag_run")
            user, source = getattr(dag_run, "triggering_user_name", None), "airflow dag_run.triggering_user_name"
        except Exception:   # not inside a running task, or an Airflow without the field
            user = None
    if not user and not in_airflow:
        try:
            user, source = getpass.getuser(), "os user"
        except Exception:
            user = None
    if user:
        ctx.update(triggered_by=str(user), triggered_by_source=source)
    return ctx


def store_lineage(settings: Settings, store: ObjectStore, manifest: dict, only_if_absent: bool = False) -> str | None:
    """Write the run's lineage page (pipelines/lineage.py) beside its committed manifest:
    scores/<campaign>/<run>/lineage.html. Derived and rewritable, so it goes after the commit (the
    manifest and parts are untouched, run_commit cleanup never removes it); re-reading is bounded
    by params score.lineage_max_mb (default 64; over it, parts are checked by size only). Never
    fails the scoring run: a failure is logged and None returned."""
    try:
        key = store.key(manifest["output"]["manifest"]).rpartition("/")[0] + "/" + LINEAGE_PAGE
        if only_if_absent and store.exists(key):
            return store.uri(key)
        from campaignops.pipelines import lineage, lineage_render

        max_mb = float(settings.params["score"].get("lineage_max_mb", 64))
        chain = lineage.trace(settings, manifest["output"]["manifest"], store=store, max_bytes=int(max_mb * (1 << 20)))
        store.put_bytes(key, lineage_render.render_html(chain).encode(), content_type="text/html; charset=utf-8")
        log.info("score: lineage %s (%s) at %s", chain["status"], ", ".join(
            f"{v} {k}" for k, v in chain["counts"].items() if v), store.uri(key))
        return store.uri(key)
    except Exception as exc:   # the page is a convenience; the committed run stands without it
        log.warning("score: lineage page not written: %s", exc)
        return None


def request_key(settings: Settings, req: Request, model_version: str) -> dict:
    """What a scoring run depends on; its hash is the run id, so the same request is the same run."""
    validated = {f.name: sha256_file(f) for f in sorted((settings.workspace / layout.VALIDATED_DIR).glob("*.parquet"))}
    return {"campaign_id": req.campaign_id, "model_version": model_version, "validated_sha256": validated,
            "budget": req.budget, "exploration": req.exploration, "replay": req.replay,
            "value_per_response": float(settings.params["score"]["value_per_response"])}


def validated_data(settings: Settings, key: dict) -> dict:
    """The validation run (batch, run id) that wrote the data/validated files this run reads, checked
    by their sha256 against its report; files that are not what the report says refuse the request."""
    from campaignops.pipelines.validate_report import ValidatedMismatch, validated_record

    try:
        return validated_record(settings.workspace, key["validated_sha256"])
    except ValidatedMismatch as exc:
        raise RequestError(str(exc)) from None


def _manifest(req: Request, run_id: str, key: dict, engine: str, version, a, arm_ids: list[str], costs: np.ndarray,
              forecast: dict, features: dict) -> dict:
    """The run's record: request, model, inputs, the targeting's counts and its forecast."""
    name = version.name
    model_only = a.send & ~a.explored
    return {
        "campaign_id": req.campaign_id, "score_run_id": run_id, "request": key | {"engine": engine},
        "scored_at": datetime.now(timezone.utc).isoformat(), "as_of": str(req.start),
        "model": {"name": name, "version": str(version.version), "run_id": version.run_id,
                  "uri": f"models:/{name}/{version.version}", "family": (version.tags or {}).get("family", "network")},
        "arms": [{"variant_id": x["variant_id"], "cost_per_send": x["cost_per_send"]} for x in req.arms],
        "budget": req.budget, "spent": float(costs[a.chosen].sum()), "rows": len(a.chosen),
        "users_targeted": int(a.send.sum()), "users_targeted_by_model": int(model_only.sum()),
        "status": "targeted" if model_only.any() else "no_targets",
        "exploration": {**req.exploration, "users": int(a.explored.sum()), "sends": int((a.send & a.explored).sum())},
        "by_variant": {x: int((a.chosen == i).sum()) for i, x in enumerate(arm_ids[:-1])},
        "forecast": forecast,
        "expected_incremental_responses": forecast["total"]["incremental_responses"]["forecast"],
        "inputs": {"raw_batch": req.validation["ingested_batch"], "validated_batch": req.validation["batch"],
                   "validated_sha256": key["validated_sha256"], "validation_run_id": req.validation["run_id"],
                   "validation_result_uri": req.validation["result_uri"],
                   "stale_validation": req.validation.get("stale_reason"),
                   "validated_data": req.validation.get("data"),
                   "features": {k: features[k] for k in ("uri", "sha256", "rows")}},
        "replay": req.replay,
        "layout": "wide: one row per user; chosen_variant/send/explored/propensity; p_<arm>, revenue_<arm>, "
                  "uplift_<treatment> for every arm",
    }


def summary(manifest: dict) -> dict:
    """The few fields a person or an Airflow task return value needs."""
    total = manifest["forecast"]["total"]
    out = {k: manifest.get(k) for k in ("campaign_id", "score_run_id", "status", "rows", "users_targeted",
                                        "users_targeted_by_model", "budget", "spent", "by_variant")}
    out["model"] = manifest["model"]["uri"]
    out["manifest"] = manifest["output"]["manifest"]
    out["forecast_incremental_responses"] = total["incremental_responses"]
    out["exploration"] = manifest["exploration"]
    if manifest.get("inputs", {}).get("stale_validation"):
        out["stale_validation"] = manifest["inputs"]["stale_validation"]
    if "truth_check" in manifest:
        out["forecast_over_truth"] = manifest["truth_check"]["forecast_over_truth"]
    if manifest.get("reused"):
        out["reused"] = True
    if (manifest.get("drift") or {}).get("override"):
        out["drift_override"] = manifest["drift"]["override"].get("reason")
    return out


def _moves_latest(manifest: dict) -> bool:
    """latest.json names the run a campaign team acts on: not a replay, not one that targets nobody."""
    return manifest.get("status") == "targeted" and not manifest.get("replay")


def read_scores(store: ObjectStore, manifest: dict) -> pa.Table:
    """The scores of a committed run (every part checked against the manifest's sha256)."""
    from campaignops.pipelines.run_commit import read_run

    return read_run(store, manifest)


def predict(engine: str, settings: Settings, pyfunc, model_uri: str, arms: list[dict], features: dict, params: dict):
    from campaignops.pipelines import score_engine

    if engine == "spark":
        return score_engine.predict_spark(model_uri, arms, features["uri"], {"endpoint": settings.s3_endpoint},
                                          params.get("spark"))
    scorer = score_engine.ArmScorer.for_model(pyfunc, arms)
    step = {"next": 0.1}

    def progress(done: int, total: int) -> None:   # a log line per tenth of the users
        failpoints.hit("predict_batch")
        if done >= step["next"] * total:
            log.info("score: %d / %d users predicted", done, total)
            step["next"] = (int(10 * done / total) + 1) / 10

    return score_engine.predict_stream(scorer, features["local_path"], batch_rows=int(params.get("batch_rows", 16384)),
                                       progress=progress)


def output_table(preds, a, arm_ids: list[str], costs: np.ndarray, campaign_id: str, meta_cols: dict,
                 value_per_response: float, rows: slice) -> pa.Table:
    """The scores of users `rows` (wide layout, module docstring)."""
    p, rev = preds.p[rows].astype(np.float64), preds.revenue[rows].astype(np.float64)
    chosen, n = a.chosen[rows], len(p)
    ids = np.array(arm_ids, dtype=object)
    control = len(arm_ids) - 1
    net = np.where(chosen < control, (p[np.arange(n), chosen] - p[:, control]) * value_per_response - costs[chosen], 0.0)
    cols = {
        "user_id": preds.user_ids.slice(rows.start, n),
        "campaign_id": pa.array([campaign_id] * n, pa.string()).dictionary_encode(),
        "chosen_variant": pa.array(ids[chosen], pa.string()),
        "send": pa.array(chosen < control),
        "explored": pa.array(a.explored[rows]),
        "propensity": pa.array(a.propensity[rows]),
        "greedy_variant": pa.array(ids[a.greedy[rows]], pa.string()),
        "rank": pa.array(a.rank[rows]),
        "net_value": pa.array(net),
        "cost": pa.array(costs[chosen]),
    }
    for i, arm in enumerate(arm_ids):
        cols[f"p_{arm}"] = pa.array(p[:, i])
    for i, arm in enumerate(arm_ids[:-1]):
        cols[f"uplift_{arm}"] = pa.array(p[:, i] - p[:, control])
    for i, arm in enumerate(arm_ids):
        cols[f"revenue_{arm}"] = pa.array(rev[:, i])
    for k, v in meta_cols.items():
        cols[k] = pa.array([v] * n, pa.string()).dictionary_encode()
    return pa.table(cols)


# --------------------------------------------------------------------------- features, drift, truth

def scoring_features(settings: Settings, store: ObjectStore, req: Request, meta: dict, tmp: Path) -> dict:
    """Every user's features as of the campaign start (the model's own feature definitions),
    written chunk by chunk to a local parquet and stored in S3 under scoring_features/, where the
    manifest points (what the model saw, for audit and for the Spark engine's executors)."""
    from campaignops.pipelines.scoring_frames import connect, scoring_chunks

    path = tmp / "features.parquet"
    writer, rows = None, 0
    con = connect(settings.workspace / layout.VALIDATED_DIR)
    group = int(settings.params["score"].get("row_group_users", 50_000))
    for chunk in scoring_chunks(con, req.start.isoformat(sep=" "), meta):
        if writer is None:
            writer = pq.ParquetWriter(path, chunk.schema, compression="zstd")
        writer.write_table(chunk, row_group_size=group)
        rows += chunk.num_rows
    if writer is None:
        raise RequestError("no users to score in the validated users table")
    writer.close()
    sha = sha256_file(path)
    key = f"scoring_features/{req.campaign_id}/{sha[:24]}.parquet"
    if not store.exists(key):
        store.upload_file(path, key)
    return {"uri": store.uri(key), "sha256": sha, "rows": rows, "local_path": str(path)}


def _drift(settings: Settings, path: Path, campaign_id: str, store, override: dict | None = None) -> dict:
    """The drift gate before scoring (pipelines/drift.py) on a seeded sample of the scoring frame
    (read one row group at a time, sequences left out); raises DriftDetected on a blocking breach."""
    from campaignops.pipelines.drift import gate_scoring, summary

    f = pq.ParquetFile(path)
    cols = [c for c in f.schema_arrow.names if not c.startswith("seq_")]
    n = f.metadata.num_rows
    share = min(1.0, int(settings.params["drift"].get("sample_rows", 200_000)) / max(n, 1))
    rng = np.random.default_rng(0)
    parts = []
    for rg in range(f.metadata.num_row_groups):
        t = f.read_row_group(rg, columns=cols)
        parts.append(t if share >= 1 else t.take(np.flatnonzero(rng.random(t.num_rows) < share)))
    return summary(gate_scoring(settings, campaign_id, users=pa.concat_tables(parts), store=store, override=override))


def _truth_check(settings, store, campaign_id, preds, arm_ids, a, forecast) -> dict | None:
    """On synthetic batches: the targeting's true incremental responses vs the forecast and the oracle."""
    from campaignops.pipelines.forecast import truth_check

    raw = read_json(settings.workspace / layout.RAW_MANIFEST)
    keys = raw.get("truth", {}).get("files") or []
    if not keys:
        return None
    import pandas as pd

    truth = pd.concat([store.read_table(k).to_pandas() for k in keys])
    truth = truth[(truth["campaign_id"] == campaign_id) & truth["exposure_id"].isna()]
    if truth.empty:
        return None
    T = truth.pivot(index="user_id", columns="variant_id", values="p_response")
    T = T.reindex(index=preds.user_ids.to_pylist(), columns=arm_ids).to_numpy()
    return truth_check(T, a.chosen, forecast, a.explored)
