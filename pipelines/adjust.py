"""Dynamic strategy adjustment: while a campaign runs, reallocate its remaining sends per segment
among its variants from the responses observed so far, and commit each day's decision as a new
immutable allocation version (allocations/<campaign>/<version>/: parts, report.json, then the
manifest, written last with If-None-Match like a scores run; pipelines/allocations.py). The bandit
is pipelines/adjust_policy.py.

How a campaign runs with adjustment. On its start day the plan (version w00) spreads the scored
users over the campaign's days (waves: an even keyed split of the users) and keeps the scoring
run's arms: the static model allocation. On each later day d the step reads the campaign's landed
outcomes (the validated exposures of the waves sent by d − outcome delay, loaded as feedback loads
them), updates the posterior and writes version w<d> for the waves d.. (the users not sent yet):
the model's sends re-drawn from the adjusted policy; the scoring run's exploration slice and the
users it left unsent keep their arms, so the budget's sends and the randomized slice stay as
scored. A campaign without a plan was sent in one go on its start day: nothing remains to adjust.
The simulator (pipelines/sim_waves.py) sends each wave as the version in effect on its day decided.

A version id hashes its inputs (scores run, first wave, previous version, outcome rows, segments,
params): repeating a day returns the committed version. A version never rewrites a wave an
earlier version already covers for an earlier day: a request for a wave before the newest
version's is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import date as Date
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa

from campaignops.config import Settings
from campaignops.pipelines import adjust_policy as policy
from campaignops.pipelines import allocations, layout
from campaignops.pipelines.adjust_report import adjustment_report
from campaignops.pipelines.storage import ObjectStore
from campaignops.validation.contract import CONTROL

log = logging.getLogger(__name__)
VERSION = 1
PLANNED, ADJUSTED, WAITING, ENDED = "planned", "adjusted", "waiting_for_outcomes", "ended"


class AdjustError(ValueError):
    """The campaign cannot be adjusted for this request; the message says why and what to do."""


# --------------------------------------------------------------------------- the step

def run(settings: Settings, campaign_id: str, date=None, store: ObjectStore | None = None) -> dict:
    """The campaign's allocation as of `date` (None: the ingested batch's date): the plan on its start
    day, a new version from the landed outcomes on a later day; returns the committed manifest with
    its status (or a status alone when nothing is written: waiting for outcomes, ended)."""
    from campaignops.pipelines.feedback import FeedbackError, scores_manifest
    from campaignops.pipelines.inputs import check_id

    check_id(campaign_id, "campaign_id")       # ids from forms become S3 prefixes
    params = adjust_params(settings)
    store = store or ObjectStore(settings)
    today = as_of(settings, date)
    start, n_waves = campaign_window(settings, campaign_id)
    wave = (today - start).days
    if wave < 0:
        raise AdjustError(f"campaign {campaign_id} starts on {start}; nothing to allocate on {today}")
    done = allocations.versions(store, campaign_id)
    try:
        scores = scores_manifest(store, campaign_id, done[0]["scores_run_id"] if done else None)
    except FeedbackError as exc:
        raise AdjustError(str(exc)) from None
    if not done:
        if wave > 0:
            raise AdjustError(f"campaign {campaign_id} was sent in one go on its start day {start} (no allocation plan "
                              "was written before its first send): nothing remains to reallocate; run campaign_adjust "
                              "on a campaign's start day, after scoring it, to send it in waves")
        return _commit(store, plan(store, scores, n_waves, params), today)
    if wave >= n_waves:
        return {"campaign_id": campaign_id, "status": ENDED, "detail": f"every wave of {campaign_id} was sent"}
    if int(done[-1]["from_wave"]) > wave:
        raise AdjustError(f"campaign {campaign_id} already has version {done[-1]['version']} from wave "
                          f"{done[-1]['from_wave']}: a version from wave {wave} ({today}) would rewrite sends "
                          "decided later")
    step = adjustment(settings, store, scores, done, wave, params)
    return step if step.get("status") == WAITING else _commit(store, step, today)


def run_due(settings: Settings, campaign_id: str | None = None, date=None,
            store: ObjectStore | None = None) -> list[dict]:
    """The DAG's and CLI's step: the named campaign, else every campaign due() on the date."""
    store = store or ObjectStore(settings)
    todo = [campaign_id] if campaign_id else due(settings, date, store)
    if not todo:
        log.info("adjust: no running campaign to allocate on %s", as_of(settings, date))
    return [summary(run(settings, cid, date, store)) for cid in todo]


def due(settings: Settings, date=None, store: ObjectStore | None = None) -> list[str]:
    """Campaigns running on the date with a scores run acted on: on their start day (the plan), or
    later when they have a plan (campaigns sent in one go are left alone)."""
    import pyarrow.parquet as pq

    today = as_of(settings, date)
    path = settings.workspace / layout.VALIDATED_DIR / "campaigns.parquet"
    if not path.exists():
        return []
    store = store or ObjectStore(settings)
    c = pq.read_table(path, columns=["campaign_id", "start_ts", "end_ts"]).to_pandas()
    w = c.groupby("campaign_id").agg(start=("start_ts", "min"), end=("end_ts", "max"))
    out = []
    for cid, row in w.iterrows():
        start, end = row["start"].date(), row["end"]
        running = start <= today and pd.Timestamp(today) < end
        if not running or store.get_bytes_or_none(f"scores/{cid}/latest.json") is None:
            continue
        if today == start or allocations.has_plan(store, str(cid)):
            out.append(str(cid))
    return sorted(out)


# --------------------------------------------------------------------------- inputs

def adjust_params(settings: Settings) -> dict:
    p = dict(settings.params.get("adjust") or {})
    out = {"max_prior_strength": float(p.get("max_prior_strength", 10000.0)),
           "min_exploration_share": float(p.get("min_exploration_share", 0.05)),
           "max_daily_move": float(p.get("max_daily_move", 0.25)),
           "draws": int(p.get("draws", 200)), "seed": int(p.get("seed", 0)), "level": float(p.get("level", 0.9))}
    if out["max_prior_strength"] < 1 or out["draws"] < 1:
        raise AdjustError("params.yaml adjust.max_prior_strength and adjust.draws must be >= 1")
    if not 0 <= out["min_exploration_share"] <= 1 or not 0 <= out["max_daily_move"] <= 1:
        raise AdjustError("params.yaml adjust.min_exploration_share and adjust.max_daily_move must be within [0, 1]")
    return out


def as_of(settings: Settings, date=None) -> Date:
    """The day the allocation is for: `date`, else the ingested batch's date, else today (UTC)."""
    from campaignops.pipelines.score_request import read_json

    if date is None:
        raw = read_json(settings.workspace / layout.RAW_MANIFEST)
        date = raw.get("date") or datetime.now(timezone.utc).date()
    if isinstance(date, datetime):
        return date.date()
    if isinstance(date, Date):
        return date
    try:
        return Date.fromisoformat(str(date)[:10])
    except ValueError:
        raise AdjustError(f"date must be an ISO date like 2026-06-03, got {date!r}") from None


def campaign_window(settings: Settings, campaign_id: str) -> tuple[Date, int]:
    """(start day, number of daily waves) of the campaign from the validated campaigns table."""
    import pyarrow.parquet as pq

    path = settings.workspace / layout.VALIDATED_DIR / "campaigns.parquet"
    if not path.exists():
        raise AdjustError(f"no validated campaigns table ({path}): ingest and validate the day's batch first")
    c = pq.read_table(path, columns=["campaign_id", "start_ts", "end_ts"],
                      filters=[("campaign_id", "==", campaign_id)]).to_pandas()
    if c.empty:
        raise AdjustError(f"campaign {campaign_id!r} is not in the validated campaigns table ({path})")
    start, end = c["start_ts"].min(), c["end_ts"].max()
    return start.date(), max(1, int(np.ceil((end - start.normalize()) / pd.Timedelta(days=1))))


def _scores(store: ObjectStore, manifest: dict) -> pd.DataFrame:
    from campaignops.pipelines.run_commit import read_run

    arms = [a["variant_id"] for a in manifest["arms"]]
    cols = ["user_id", "chosen_variant", "greedy_variant", "explored", "propensity", *(f"p_{a}" for a in arms)]
    return read_run(store, manifest).select(cols).to_pandas().astype({"user_id": str})


def _segments(store: ObjectStore, manifest: dict, users: pd.Series) -> tuple[np.ndarray, list[str], str | None]:
    """Segment index per user (the scoring features' segment_* one-hots, as feedback reads them;
    one segment `all` without them), the labels and the features' URI."""
    from campaignops.pipelines.feedback import load_segments

    seg, uri = load_segments(store, manifest)
    label = np.full(len(users), "all", dtype=object) if seg is None else \
        users.to_frame().merge(seg, on="user_id", how="left")["segment"].fillna("none").to_numpy(object)
    names = sorted(set(label))
    return np.searchsorted(np.array(names, dtype=object), label), names, uri


# --------------------------------------------------------------------------- plan and adjustment

def plan(store: ObjectStore, manifest: dict, n_waves: int, params: dict) -> dict:
    """Version w00: the scored users spread over the waves, each with the scoring run's arm."""
    cid, arms = manifest["campaign_id"], [a["variant_id"] for a in manifest["arms"]]
    scores = _scores(store, manifest)
    seg, names, uri = _segments(store, manifest, scores["user_id"])
    wave = policy.waves(scores["user_id"].to_numpy(object), n_waves, params["seed"], cid)
    greedy = _index(scores["greedy_variant"], arms)
    pi = np.eye(len(arms))[greedy]
    k = len(arms) - 1
    model = greedy < k
    table = _table(scores, wave, np.array(names, dtype=object)[seg], scores["chosen_variant"].to_numpy(object),
                   scores["propensity"].to_numpy(np.float64), pi, pi[:, :k] * model[:, None], arms)
    shares = policy.segment_shares(pi[model][:, :k], seg[model], len(names))
    report = {"kind": "plan", "waves": {str(w): int((wave == w).sum()) for w in range(n_waves)},
              "segments": {n: {"model_sends": int((seg[model] == i).sum()),
                               "shares": dict(zip(arms[:k], map(float, shares[i])))} for i, n in enumerate(names)}}
    key = {"scores_run_id": manifest["score_run_id"], "waves": n_waves, "segments": uri, "seed": params["seed"]}
    return _version(manifest, 0, n_waves, None, key, params, table, report)


def adjustment(settings: Settings, store: ObjectStore, manifest: dict, done: list[dict], wave: int,
               params: dict) -> dict:
    """Version w<wave>: the remaining model sends re-drawn from the posterior given the landed outcomes."""
    from campaignops.pipelines.feedback import OutcomesNotReady, load_outcomes

    cid, arms = manifest["campaign_id"], [a["variant_id"] for a in manifest["arms"]]
    prev = [m for m in done if int(m["from_wave"]) < wave][-1]     # in effect before the day (a rerun: the same)
    try:
        outcomes, source = load_outcomes(settings, cid)
    except OutcomesNotReady as exc:
        log.info("adjust %s: %s; version %s stays in effect", cid, exc, prev["version"])
        return {"campaign_id": cid, "status": WAITING, "detail": str(exc), "version": prev["version"]}
    scores = _scores(store, manifest)
    seg_all, names, uri = _segments(store, manifest, scores["user_id"])
    effect = allocations.in_effect(store, cid, ["user_id", "wave", "chosen_variant"], done)
    max_mismatch = float((settings.params.get("feedback") or {}).get("max_arm_mismatch", 0.001))
    obs = _observed(outcomes, effect, scores, seg_all, arms, wave, max_mismatch, cid)
    pred_all = scores[[f"p_{a}" for a in arms[:-1]]].to_numpy(np.float64)
    post = policy.posterior(obs["seg"], obs["arm"], obs["y"], obs["pred"], seg_all, pred_all, len(names),
                            params["max_prior_strength"])
    rest = allocations.rows(store, prev, ["user_id", "wave", "chosen_variant", "explored", "greedy_variant",
                                          *(f"h_{a}" for a in arms[:-1]), *(f"pi_{a}" for a in arms[:-1])])
    rest = rest[rest["wave"] >= wave].reset_index(drop=True)
    seg = seg_all[pd.Index(scores["user_id"]).get_indexer(rest["user_id"])]
    pred = pred_all[pd.Index(scores["user_id"]).get_indexer(rest["user_id"])]
    d = _decide(manifest, rest, seg, len(names), pred, post, params, wave)
    table = _table(rest, rest["wave"].to_numpy(np.int64), np.array(names, dtype=object)[seg], d["chosen"],
                   d["propensity"], d["pi"], d["h"], arms)
    report = adjustment_report(names, arms[:-1], post, d, obs, params["level"])
    key = {"scores_run_id": manifest["score_run_id"], "previous": prev["version"], "outcomes": source["sha256"],
           "segments": uri}
    return _version(manifest, wave, int(prev["waves"]), prev["version"], key, params, table, report,
                    outcomes=source)


def _decide(manifest: dict, rest: pd.DataFrame, seg: np.ndarray, n_segments: int, pred: np.ndarray,
            post: policy.Posterior, params: dict, wave: int) -> dict:
    """The new policy of the remaining users (adjust_policy's docstring): Thompson target, capped
    move, exploration floor counting the scoring slice, the drawn arm and its propensity."""
    cid, arms = manifest["campaign_id"], [a["variant_id"] for a in manifest["arms"]]
    k, share = len(arms) - 1, float(manifest["exploration"]["share"])
    costs = np.array([a["cost_per_send"] for a in manifest["arms"][:k]], np.float64)
    vpr = float(manifest["request"]["value_per_response"])
    model = (rest["greedy_variant"] != CONTROL).to_numpy()
    explored = rest["explored"].to_numpy(bool)
    rng = np.random.default_rng(int(hashlib.sha256(f"{params['seed']}|{cid}|w{wave}".encode()).hexdigest()[:12], 16))
    q = policy.thompson(pred[model], seg[model], costs, vpr, post, params["draws"], rng)
    h_prev = rest[[f"h_{a}" for a in arms[:k]]].to_numpy(np.float64)[model]
    h, lam, tv = policy.move(h_prev, q, seg[model], n_segments, params["max_daily_move"])
    slice_sends = np.bincount(seg[explored & (rest["chosen_variant"] != CONTROL).to_numpy()], minlength=n_segments)
    sends = slice_sends + np.bincount(seg[model & ~explored], minlength=n_segments)
    floor = policy.bandit_floor(params["min_exploration_share"], slice_sends, sends)
    g = policy.with_floor(h, floor[seg[model]])
    pi = np.eye(len(arms))[np.full(len(rest), k)]
    pi[model, :k] = g
    h_all = np.zeros((len(rest), k))
    h_all[model] = h
    u = policy.keyed_uniform(rest["user_id"].to_numpy(object), params["seed"], cid, f"arm-w{wave}")
    chosen = np.where(explored | ~model, rest["chosen_variant"].to_numpy(object),
                      np.array(arms, dtype=object)[policy.draw(pi, u)])
    propensity = share / len(arms) + (1.0 - share) * pi[np.arange(len(rest)), _index(pd.Series(chosen), arms)]
    return {"chosen": chosen, "propensity": propensity, "pi": pi, "h": h_all, "q": q, "lam": lam, "tv": tv,
            "floor": floor, "g_prev": rest[[f"pi_{a}" for a in arms[:k]]].to_numpy(np.float64)[model], "g": g,
            "seg": seg[model], "pred": pred[model], "costs": costs, "vpr": vpr}


def _observed(outcomes: pd.DataFrame, effect: pd.DataFrame, scores: pd.DataFrame, seg_all: np.ndarray,
              arms: list[str], wave: int, max_mismatch: float, cid: str) -> dict:
    """The landed sends with their segment, variant, response and model predictions; checks that
    they are this campaign's allocation's sends and that no wave from `wave` on has landed."""
    j = outcomes.merge(effect, on="user_id", how="left", suffixes=("", "_alloc"))
    if j["wave"].isna().any():
        raise AdjustError(f"campaign {cid}: {int(j['wave'].isna().sum())} outcome rows of users the allocation plan "
                          "does not list: were they sent from another scores run?")
    late = j["wave"] >= wave
    if late.any():
        raise AdjustError(f"campaign {cid}: outcomes of wave {int(j['wave'][late].max())} have landed, so wave {wave} "
                          "was already sent: adjust on the campaign day whose sends are still to go out")
    mismatch = (j["variant_id"] != j["chosen_variant"]).mean()
    if mismatch > max_mismatch:
        raise AdjustError(f"campaign {cid}: {mismatch:.1%} of the outcome rows logged another arm than the allocation "
                          "in effect decided (feedback.max_arm_mismatch): these sends were not made from it")
    sent = (j["variant_id"] != CONTROL).to_numpy()
    idx = pd.Index(scores["user_id"]).get_indexer(j["user_id"][sent])
    k = len(arms) - 1
    return {"seg": seg_all[idx], "arm": _index(j["variant_id"][sent], arms),
            "y": j["responded"].to_numpy(np.float64)[sent],
            "pred": scores[[f"p_{a}" for a in arms[:k]]].to_numpy(np.float64)[idx],
            "waves": sorted({int(x) for x in j["wave"]}), "rows": int(len(j)), "sends": int(sent.sum())}


# --------------------------------------------------------------------------- outputs

def _index(values: pd.Series, arms: list[str]) -> np.ndarray:
    idx = pd.Index(arms).get_indexer(values.astype(str))
    if (idx < 0).any():
        raise AdjustError(f"variants {sorted(set(values[idx < 0]))[:5]} are not arms of the scores run ({arms})")
    return idx


def _table(rows: pd.DataFrame, wave: np.ndarray, segment: np.ndarray, chosen: np.ndarray, propensity: np.ndarray,
           pi: np.ndarray, h: np.ndarray, arms: list[str]) -> pa.Table:
    """A version's rows: per user its wave, segment, arm and propensity, the policy without the scoring
    slice pi_<arm> (the propensity of arm a is share/A + (1 − share)·pi_a) and its exploitation part
    h_<variant> (what the next day's move starts from; 0 for users the model does not send)."""
    cols = {"user_id": pa.array(rows["user_id"].astype(str).to_numpy(object), pa.string()),
            "wave": pa.array(wave, pa.int16()), "segment": pa.array(segment.astype(str), pa.string()),
            "greedy_variant": pa.array(rows["greedy_variant"].astype(str).to_numpy(object), pa.string()),
            "explored": pa.array(rows["explored"].to_numpy(bool)),
            "chosen_variant": pa.array(np.asarray(chosen, dtype=object).astype(str), pa.string()),
            "send": pa.array(np.asarray(chosen, dtype=object) != CONTROL),
            "propensity": pa.array(np.asarray(propensity, np.float64))}
    for i, a in enumerate(arms):
        cols[f"pi_{a}"] = pa.array(pi[:, i])
    for i, a in enumerate(arms[:-1]):
        cols[f"h_{a}"] = pa.array(h[:, i])
    return pa.table(cols)


def _version(manifest: dict, wave: int, n_waves: int, previous: str | None, key: dict, params: dict, table: pa.Table,
             report: dict, outcomes: dict | None = None) -> dict:
    """The version to commit: id from its inputs, its manifest fields, rows and report."""
    cid = manifest["campaign_id"]
    digest = hashlib.sha256(json.dumps({"v": VERSION, "campaign": cid, "wave": wave, **key, "params": params},
                                       sort_keys=True, default=str).encode()).hexdigest()
    vid = f"w{wave:02d}-{digest[:16]}"
    chosen = table.column("chosen_variant").to_numpy(zero_copy_only=False)
    return {"campaign_id": cid, "version": vid, "kind": report["kind"], "from_wave": wave, "waves": n_waves,
            "previous_version": previous, "scores_run_id": manifest["score_run_id"],
            "scores_manifest": (manifest.get("commit") or {}).get("manifest_key"),
            "params": params, "inputs": {"key": key, "outcomes": outcomes},
            "users": table.num_rows,
            "by_variant": {a["variant_id"]: int((chosen == a["variant_id"]).sum()) for a in manifest["arms"]},
            "layout": "one row per user of waves from_wave..: wave, segment, chosen_variant, send, propensity "
                      "(share/A + (1 − share)·pi of the arm), pi_<arm> (the policy without the scoring slice)",
            "_table": table, "_report": report}


def _commit(store: ObjectStore, v: dict, today: Date) -> dict:
    """Commit the version atomically (report first, the manifest last; an existing one is returned)."""
    from campaignops.pipelines.run_commit import RunWriter

    cid, vid = v["campaign_id"], v["version"]
    prefix = allocations.version_prefix(cid, vid)
    writer = RunWriter(store, prefix, vid)
    existing = writer.existing()
    if existing is not None:
        writer.finalize(existing)
        return {**existing, "status": PLANNED if existing["kind"] == "plan" else ADJUSTED, "reused": True}
    table, report = v.pop("_table"), v.pop("_report")
    report = {"campaign_id": cid, "version": vid, "from_wave": v["from_wave"], "date": today.isoformat(), **report}
    data = json.dumps(_clean(report), indent=2, sort_keys=True, allow_nan=False).encode()
    store.put_bytes(prefix + "report.json", data)
    writer.write_part(table)
    manifest = {**v, "date": today.isoformat(), "created_at": datetime.now(timezone.utc).isoformat(),
                "report": {"uri": store.uri(prefix + "report.json"), "sha256": hashlib.sha256(data).hexdigest()},
                "output": {"manifest": store.uri(prefix + "manifest.json"), "prefix": store.uri(prefix)}}
    committed, won = writer.commit(manifest)
    if not won:
        log.warning("adjust %s: another writer committed version %s first", cid, vid)
    log.info("adjust %s: version %s from wave %s committed: %s", cid, vid, v["from_wave"], manifest["output"]["manifest"])
    return {**committed, "status": PLANNED if v["kind"] == "plan" else ADJUSTED, "reused": not won}


def summary(result: dict) -> dict:
    """What a task result or a log line keeps of a run."""
    keys = ("campaign_id", "status", "version", "from_wave", "waves", "previous_version", "by_variant", "detail",
            "reused")
    out = {k: result[k] for k in keys if k in result}
    if "report" in result:
        out["report"] = result["report"]["uri"]
    return out


def _clean(obj):
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python."""
    from campaignops.pipelines.feedback import _clean as clean

    return clean(obj)
