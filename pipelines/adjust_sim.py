"""The adjustment experiment on the simulator: a scoring run built from the world's truth with a
chosen model error, the campaign sent day by day through synth.generate — static (the plan alone:
the model's arms), adjusted (campaign_adjust's step every day) — and the cumulative regret of the
same sends vs the oracle, per day, for the static, uniform and adjusted allocations.

Regret of a send = the oracle's net value minus the send's, both under the truth at its send time:
net value of variant v = (p(v) − p(no send))·value_per_response − cost_v, the oracle's the best
variant for that user. The three policies send the same users on the same days (the scoring run
decided the sends; adjustment only re-decides the variant), so their regrets compare directly.
Uniform's is its expectation (every variant equally likely) on the static run's sends.

The "model" is the truth at the campaign start (every user, every arm) with a per-variant bias
added to its predicted response: {} is a model that is right, {"V2": 0.05} one that overstates the
campaign's variant V2 by 5 points for everyone. Segments are age bands (what a k-means segment of the real
features would be: observable, and tied to the world's channel preference). benchmarks/adjust_regret.py
prints the figures; tests/pipelines/test_adjust.py asserts them on a small world."""
from __future__ import annotations

import hashlib
import io
import json
from datetime import date as Date
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import adjust, adjust_policy, layout, synth
from campaignops.pipelines.storage import ObjectStore, write_json
from campaignops.validation.contract import CONTROL

AGE_BANDS = (30, 50)      # segment_0: < 30, segment_1: 30–49, segment_2: >= 50


def _read(store: ObjectStore, manifest: dict, table: str) -> pd.DataFrame:
    keys = manifest["truth"]["files"] if table == "truth" else manifest["tables"][table]["files"]
    return pa.concat_tables([pq.read_table(io.BytesIO(store.get_bytes(k))) for k in keys]).to_pandas()


def land(settings: Settings, store: ObjectStore, manifest: dict) -> None:
    """The day's batch as ingest + validate leave it for adjustment: data/raw_manifest.json and the
    validated campaigns and exposures tables (copied as they are: the generator meets the contract)."""
    out = settings.workspace / layout.VALIDATED_DIR
    out.mkdir(parents=True, exist_ok=True)
    for table in ("campaigns", "exposures"):
        pq.write_table(pa.Table.from_pandas(_read(store, manifest, table), preserve_index=False), out / f"{table}.parquet")
    write_json(settings.workspace / layout.RAW_MANIFEST, manifest)


def model_scores(settings: Settings, store: ObjectStore, manifest: dict, bias: dict[str, float],
                 budget: float | None = None) -> dict:
    """Commit a scoring run of the batch's upcoming campaign whose model is the truth at its start plus
    `bias` per variant, targeted by pipelines/targeting.py (budget, exploration slice, propensities)."""
    from campaignops.pipelines.run_commit import RunWriter
    from campaignops.pipelines.targeting import assign, exploration_draws

    cid = manifest["upcoming_campaign_id"]
    camp = _read(store, manifest, "campaigns").query("campaign_id == @cid").sort_values("variant_id")
    arms = [*camp["variant_id"], CONTROL]
    costs = camp["cost_per_send"].to_numpy(np.float64)
    truth = _read(store, manifest, "truth").query("campaign_id == @cid and exposure_id.isna()")
    P = truth.pivot(index="user_id", columns="variant_id", values="p_response")[arms]
    p = P.to_numpy(np.float64).copy()
    for v, b in bias.items():            # a variant id, or its suffix ("V2": the campaign's second variant)
        i = next(i for i, a in enumerate(arms) if a == v or a.endswith(f"-{v}"))
        p[:, i] = np.clip(p[:, i] + b, 1e-4, 1 - 1e-4)
    sp = settings.params["score"]
    share, seed, vpr = float(sp["exploration"]["share"]), int(sp["exploration"]["seed"]), float(sp["value_per_response"])
    ids = P.index.to_numpy(object)
    explored, arm = exploration_draws(ids, share, len(arms), seed, cid)
    a = assign(p, costs, vpr, float(sp["default_budget"] if budget is None else budget), explored, arm, share)
    names = np.array(arms, dtype=object)
    table = pa.table({"user_id": pa.array(ids, pa.string()), "chosen_variant": pa.array(names[a.chosen], pa.string()),
                      "send": pa.array(a.send), "explored": pa.array(a.explored), "propensity": pa.array(a.propensity),
                      "greedy_variant": pa.array(names[a.greedy], pa.string()),
                      **{f"p_{x}": pa.array(p[:, i]) for i, x in enumerate(arms)}})
    features = _segment_features(store, manifest, cid, ids)
    key = {"campaign_id": cid, "bias": bias, "budget": budget, "batch": manifest["batch"]}
    run_id = "sim-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    writer = RunWriter(store, layout.scores_prefix(cid, run_id), run_id)
    if (existing := writer.existing()) is not None:
        writer.finalize(existing)
        return existing
    writer.write_part(table)
    committed, _ = writer.commit({
        "campaign_id": cid, "score_run_id": run_id, "status": "targeted", "replay": False, "as_of": manifest["now"],
        "model": {"name": "simulator truth + bias", "bias": bias}, "request": {"value_per_response": vpr},
        "arms": [{"variant_id": x, "cost_per_send": float(c)} for x, c in zip(arms, [*costs, 0.0])],
        "exploration": {"share": share, "seed": seed}, "inputs": {"features": features},
        "users_targeted": int(a.send.sum())})
    return committed


def _segment_features(store: ObjectStore, manifest: dict, cid: str, ids: np.ndarray) -> dict:
    """A scoring-features file holding only the segment_* one-hots (age bands), cited like score's."""
    users = _read(store, manifest, "users").set_index("user_id").reindex(ids)
    band = np.searchsorted(np.array(AGE_BANDS), users["age"].to_numpy(), side="right")
    cols = {"user_id": pa.array(ids, pa.string())}
    cols.update({f"segment_{i}": pa.array((band == i).astype(np.float64)) for i in range(len(AGE_BANDS) + 1)})
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    key = f"scoring_features/{cid}/{sha[:24]}.parquet"
    store.put_bytes(key, buf.getvalue())
    return {"uri": store.uri(key), "sha256": sha, "rows": len(ids)}


def run_campaign(settings: Settings, store: ObjectStore, day: int, users: int, seed: int, bias: dict[str, float],
                 adjusted: bool, budget: float | None = None) -> dict:
    """Score the campaign starting on simulated `day` and send it in waves until its last wave landed:
    the plan alone (static) or adjusted every day. Returns the sends with their truth and the versions."""
    for prefix in ("allocations/", "scores/"):
        store.delete_prefix(prefix)
    start = Date.fromisoformat(str(settings.params["data"]["sim"]["start_date"])) + timedelta(days=day)
    delay = int(settings.params["data"]["sim"]["outcome_delay_days"])

    def batch(d: int) -> dict:
        # replace: the static and the adjusted run land the same dates with other sends (a what-if in
        # the experiment's own store; raw batch ids are immutable anywhere else)
        m = synth.generate(settings, users=users, seed=seed, store=store, progress=False,
                           date=(start + timedelta(days=d)).isoformat(), replace=True)
        land(settings, store, m)
        return m

    m = batch(0)
    scores = model_scores(settings, store, m, bias, budget)
    cid = scores["campaign_id"]
    results = [adjust.run(settings, cid, store=store)]
    n_waves = results[0]["waves"]
    last = n_waves - 1 + delay
    for d in range(1, last + 1):
        if adjusted or d == last:
            m = batch(d)
        if adjusted and d < n_waves:
            results.append(adjust.run(settings, cid, store=store))
    return {"campaign_id": cid, "scores": scores, "versions": results, "sends": sends(store, m, cid, scores),
            "start": start, "waves": n_waves}


def sends(store: ObjectStore, manifest: dict, cid: str, scores: dict) -> pd.DataFrame:
    """The campaign's exposures in the batch with their wave and every variant's true net value."""
    arms = [a["variant_id"] for a in scores["arms"]]
    costs = np.array([a["cost_per_send"] for a in scores["arms"][:-1]], np.float64)
    x = _read(store, manifest, "exposures").query("campaign_id == @cid")
    truth = _read(store, manifest, "truth").query("campaign_id == @cid and exposure_id.notna()")
    P = truth.pivot(index="exposure_id", columns="variant_id", values="p_response").reindex(index=x["exposure_id"],
                                                                                             columns=arms)
    net = adjust_policy.net_values(P.to_numpy(np.float64), costs, float(scores["request"]["value_per_response"]))
    start = pd.Timestamp(scores["as_of"]).normalize()
    out = pd.DataFrame({"user_id": x["user_id"].to_numpy(), "variant_id": x["variant_id"].to_numpy(),
                        "wave": ((x["exposure_ts"] - start) // pd.Timedelta(days=1)).to_numpy()})
    for i, v in enumerate(arms[:-1]):
        out[f"net_{v}"] = net[:, i]
    return out


def regret(sent: pd.DataFrame, waves: int) -> dict:
    """Cumulative regret by day (wave) of the logged arms, and of uniform's expectation on the same sends."""
    s = sent[sent["variant_id"] != CONTROL]
    variants = [c[4:] for c in s.columns if c.startswith("net_")]
    net = s[[f"net_{v}" for v in variants]].to_numpy(np.float64)
    got = net[np.arange(len(s)), pd.Index(variants).get_indexer(s["variant_id"])]
    best = net.max(axis=1)
    by_wave = lambda r: np.cumsum(np.bincount(s["wave"], weights=r, minlength=waves))   # noqa: E731
    return {"sends": int(len(s)), "oracle_value": float(best.sum()), "value": float(got.sum()),
            "cumulative": by_wave(best - got).tolist(),
            "uniform_cumulative": by_wave(best - net.mean(axis=1)).tolist()}


def experiment(settings: Settings, store: ObjectStore, day: int, users: int, seed: int, bias: dict[str, float],
               budget: float | None = None) -> dict:
    """Static, uniform and adjusted cumulative regret of one world (same sends), with ratios to static."""
    static = run_campaign(settings, store, day, users, seed, bias, adjusted=False, budget=budget)
    moved = run_campaign(settings, store, day, users, seed, bias, adjusted=True, budget=budget)
    r_static, r_adj = regret(static["sends"], static["waves"]), regret(moved["sends"], moved["waves"])
    total = {"static": r_static["cumulative"][-1], "uniform": r_static["uniform_cumulative"][-1],
             "adjusted": r_adj["cumulative"][-1]}
    return {"campaign_id": static["campaign_id"], "bias": bias, "sends": r_static["sends"],
            "oracle_value": r_static["oracle_value"],
            "cumulative_regret": {"static": r_static["cumulative"], "uniform": r_static["uniform_cumulative"],
                                  "adjusted": r_adj["cumulative"]},
            "total_regret": total, "vs_static": {k: v / total["static"] if total["static"] else None
                                                 for k, v in total.items()},
            "versions": [adjust.summary(v) for v in moved["versions"]]}
