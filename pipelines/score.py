"""Batch scoring: every user × arm of a campaign with the champion model, then the best variant
(or none) per user under a budget, written to S3 as parquet with a manifest written last."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from campaignops.config import Settings
from campaignops.pipelines import layout
from campaignops.pipelines.storage import ObjectStore, sha256_file
from campaignops.validation.contract import CONTROL


def choose(p: np.ndarray, costs: np.ndarray, budget: float | None, value_per_response: float) -> tuple[np.ndarray, np.ndarray]:
    """Given p [users, arms] with control last, return (chosen treatment index or -1, net value)."""
    from campaignops.models.metrics import budgeted_choice

    uplift_value = (p[:, :-1] - p[:, -1:]) * value_per_response
    chosen = budgeted_choice(uplift_value, costs, budget)
    rows = np.arange(len(p))
    net = np.where(chosen >= 0, uplift_value[rows, np.maximum(chosen, 0)] - costs[np.maximum(chosen, 0)], 0.0)
    return chosen, net


def run(settings: Settings, campaign_id: str | None = None, budget: float | None = None,
        store: ObjectStore | None = None) -> dict:
    from campaignops.models.inputs import encode
    from campaignops.pipelines import tracking
    from campaignops.pipelines.features import attach_arms, campaign_arms, campaign_scoring_frame, connect

    ws = settings.workspace
    params = settings.params["score"]
    raw = json.loads((ws / layout.RAW_MANIFEST).read_text())
    campaign_id = campaign_id or raw.get("upcoming_campaign_id")
    budget = float(params["default_budget"] if budget is None else budget)
    if not campaign_id:
        raise ValueError("no campaign_id given and the raw batch names no upcoming campaign")

    mlflow = tracking.configure(settings)
    name = settings.params["train"]["model_name"]
    version = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion").unwrap_python_model()

    con = connect(ws / layout.VALIDATED_DIR)
    arms = campaign_arms(con).to_pandas()
    arms = arms[arms["campaign_id"] == campaign_id]
    if arms.empty:
        known = sorted(r[0] for r in con.execute("SELECT DISTINCT campaign_id FROM campaigns").fetchall())
        raise ValueError(f"campaign {campaign_id!r} is not in the validated campaigns table; known: {known}")
    ordered = pa.Table.from_pandas(_control_last(arms), preserve_index=False)
    users, start = campaign_scoring_frame(con, campaign_id, model.meta)
    drift = _drift(settings, users, campaign_id, store)  # before scoring: DriftDetected stops the run here
    users = users.append_column("campaign_id", pa.array([campaign_id] * users.num_rows))
    expanded = attach_arms(users, ordered, "user_id", every_arm=True)
    p, _ = model.predict_arrays(encode(expanded, model.meta))
    n_arms = len(ordered)
    # attach_arms orders arms by variant_id; put control last to match `ordered`.
    arm_order = np.array(expanded.column("arm_id").to_pylist()[:n_arms])
    P = p.reshape(-1, n_arms)[:, _control_last_index(arm_order)]
    arm_ids = list(ordered.column("variant_id").to_pylist())
    costs = ordered.column("cost_per_send").to_numpy()[:-1].astype(float)  # treatments; control is last
    chosen, net = choose(P, costs, budget, float(params["value_per_response"]))

    rows = np.arange(len(P))
    idx = np.maximum(chosen, 0)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    scored_at = datetime.now(timezone.utc).isoformat()
    targeted = chosen >= 0
    table = pa.table({
        "user_id": users.column("user_id"),
        "campaign_id": pa.array([campaign_id] * len(P)),
        "variant_id": pa.array([arm_ids[i] if t else None for i, t in zip(idx, targeted)], pa.string()),
        "p_control": P[:, -1],
        "p_chosen": np.where(targeted, P[rows, idx], P[:, -1]),
        "uplift": np.where(targeted, P[rows, idx] - P[:, -1], 0.0),
        "net_value": net,
        "cost": np.where(targeted, costs[idx], 0.0),
        "model_name": pa.array([name] * len(P)),
        "model_version": pa.array([str(version.version)] * len(P)),
        "score_run_id": pa.array([run_id] * len(P)),
    })
    store = store or ObjectStore(settings)
    prefix = layout.scores_prefix(campaign_id, run_id)
    store.write_table(table, prefix + "scores.parquet")
    validation = _read_json(ws / layout.REPORTS_DIR / "validation.json")
    manifest = {
        "campaign_id": campaign_id, "score_run_id": run_id, "scored_at": scored_at, "as_of": str(start),
        "model": {"name": name, "version": str(version.version), "run_id": version.run_id,
                  "uri": f"models:/{name}/{version.version}"},
        "budget": budget, "spent": float(table.column("cost").to_numpy().sum()),
        "rows": table.num_rows, "users_targeted": int(targeted.sum()),
        "by_variant": {a: int((chosen == i).sum()) for i, a in enumerate(arm_ids[:-1])},
        "expected_incremental_responses": float(table.column("uplift").to_numpy().sum()),
        "inputs": {"raw_batch": raw.get("batch"),
                   "validated_sha256": {f.name: sha256_file(f) for f in sorted((ws / layout.VALIDATED_DIR).glob("*.parquet"))},
                   "validation_run_id": validation.get("run_id"), "validation_result_uri": validation.get("result_uri")},
        "code": {"git_sha": tracking.git_revision(settings)},
        "output": store.uri(prefix + "scores.parquet"),
    }
    manifest["drift"] = drift
    truth = _truth_check(settings, store, raw, campaign_id, users, arm_ids, chosen)
    if truth:
        manifest["truth_check"] = truth
    store.put_json(prefix + "manifest.json", manifest)  # written last: the commit marker
    store.put_json(f"scores/{campaign_id}/latest.json", {"score_run_id": run_id, "manifest": store.uri(prefix + "manifest.json")})
    return manifest


def _drift(settings: Settings, users: pa.Table, campaign_id: str, store: ObjectStore | None) -> dict:
    """The drift gate before scoring (pipelines/drift.py): the scoring frame vs the champion's
    training snapshot; raises DriftDetected on a blocking breach, else the manifest's summary."""
    from campaignops.pipelines.drift import gate_scoring, summary

    return summary(gate_scoring(settings, campaign_id, users=users, store=store))


def _control_last(arms):
    return arms.assign(_c=arms["variant_id"] == CONTROL).sort_values(["_c", "variant_id"]).drop(columns="_c")


def _control_last_index(arm_order: np.ndarray) -> np.ndarray:
    is_control = arm_order == CONTROL
    return np.concatenate([np.flatnonzero(~is_control), np.flatnonzero(is_control)])


def _read_json(path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _truth_check(settings, store, raw, campaign_id, users, arm_ids, chosen) -> dict | None:
    """On synthetic batches: the true incremental responses of this targeting vs the oracle's."""
    keys = raw.get("truth", {}).get("files") or []
    if not keys:
        return None
    import pandas as pd

    truth = pd.concat([store.read_table(k).to_pandas() for k in keys])
    truth = truth[(truth["campaign_id"] == campaign_id) & truth["exposure_id"].isna()]
    if truth.empty:
        return None
    T = truth.pivot(index="user_id", columns="variant_id", values="p_response")
    T = T.reindex(index=users.column("user_id").to_pylist(), columns=arm_ids).to_numpy()
    gain = T[:, :-1] - T[:, -1:]
    rows = np.arange(len(T))
    ours = float(np.where(chosen >= 0, gain[rows, np.maximum(chosen, 0)], 0.0).sum())
    n = int((chosen >= 0).sum())
    best = np.sort(np.maximum(gain.max(axis=1), 0))[::-1]
    return {"true_incremental_responses": ours, "oracle_same_count": float(best[:n].sum()),
            "fraction_of_oracle_same_count": ours / float(best[:n].sum()) if n and best[:n].sum() > 0 else None}
