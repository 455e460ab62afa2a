"""Leave-campaign-out evaluation: how well the candidate's recipe predicts a campaign it has
never seen — the campaign manager's question about the next campaign.

For each of the last `evaluate.new_campaigns.campaigns` campaigns of the features (by first
exposure), a network is fitted with the candidate's own recipe (params train, data/features)
on the train and valid splits minus every exposure of that campaign, then predicts all of that
campaign's exposures under each of its arms. Per campaign and pooled it reports:

- Qini per arm against the campaign's control (rows weighted as the holdout's, models/arms.py);
- forecast vs actual per arm of incremental responses and GMV for sending the arm to the whole
  campaign audience: the forecast is the model's Σ p(arm) − p(control) (revenue alike), the
  actual the audience size × the inverse-propensity-weighted (Hájek) difference of the logged
  means, with its standard error; on synthetic worlds also the truth's Σ;
- on synthetic worlds, the share of the oracle at equal sends: the model sends its best
  predicted arm to the `send_share` of the audience with the largest predicted uplift, the oracle
  the truly best arm to as many users; share = true incremental responses of the first over
  the second (random targeting's share is reported beside it).

The gate (pipelines/evaluate.gate) checks the pooled share against a floor and against the
champion's own leave-campaign-out figure (logged as `new_campaigns.*` metrics on its run)."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from campaignops.config import Settings
from campaignops.models.arms import arm_matrix, arm_qinis, logged_exposures, logging_propensity
from campaignops.validation.contract import CONTROL

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "holdout")
FRAME_COLUMNS = ["exposure_id", "campaign_id", "variant_id", "arm_id", "responded", "revenue"]


def config(settings: Settings) -> dict:
    """params evaluate.new_campaigns with its defaults (campaigns 0 = not evaluated)."""
    cfg = dict(settings.params.get("evaluate", {}).get("new_campaigns") or {})
    return {"campaigns": int(cfg.get("campaigns", 0)), "send_share": float(cfg.get("send_share", 0.3)),
            "epochs": cfg.get("epochs"), "min_share_of_oracle": cfg.get("min_share_of_oracle"),
            "champion_tolerance": cfg.get("champion_tolerance"),
            "min_exposures": int(cfg.get("min_exposures", 200))}


def campaigns_to_leave_out(tables: dict[str, pa.Table], k: int, min_exposures: int = 0) -> list[str]:
    """The last k campaigns by first exposure time that have treated and control exposures (at
    least `min_exposures` in all), oldest first."""
    rows = pa.concat_tables([t.select(["campaign_id", "variant_id", "exposure_ts"]) for t in tables.values()],
                            promote_options="default").to_pandas()
    stats = rows.groupby("campaign_id").agg(first=("exposure_ts", "min"), n=("variant_id", "size"),
                                            control=("variant_id", lambda v: (v == CONTROL).any()),
                                            treated=("variant_id", lambda v: (v != CONTROL).any()))
    ok = stats[stats["control"] & stats["treated"] & (stats["n"] >= min_exposures)].sort_values("first")
    return list(ok.index[-k:]) if k > 0 else []


def without(table: pa.Table, campaign: str) -> pa.Table:
    return table.filter(pc.not_equal(table.column("campaign_id"), campaign))


def only(table: pa.Table, campaign: str) -> pa.Table:
    return table.filter(pc.equal(table.column("campaign_id"), campaign))


def _hajek(y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted mean and its (linearised) variance."""
    if not len(y):
        return float("nan"), float("nan")
    mean = float(np.dot(w, y) / w.sum())
    return mean, float(np.sum((w * (y - mean)) ** 2) / w.sum() ** 2)


def campaign_figures(frame: pd.DataFrame, p: np.ndarray, revenue: np.ndarray, send_share: float) -> dict:
    """Figures of one campaign's exposures (`frame`: one row per exposure × arm, as
    evaluate.load_holdout's, plus `revenue` and optionally `p_true` / `revenue_true`) scored
    by a model that never saw the campaign (p, revenue aligned with frame)."""
    arms, P = arm_matrix(frame, p)
    R = arm_matrix(frame, revenue)[1]
    exposures = logged_exposures(frame, arms)
    arm_ids = arms.to_numpy()
    n = len(exposures)
    y = exposures["responded"].to_numpy(dtype=np.float64)
    gmv = exposures["revenue"].to_numpy(dtype=np.float64) if "revenue" in exposures else np.zeros(n)
    w = 1.0 / logging_propensity(exposures.reset_index())[0]
    logged = exposures["variant_id"].to_numpy()
    has_truth = "p_true" in frame
    T = arm_matrix(frame, frame["p_true"].to_numpy())[1] if has_truth else None
    TR = arm_matrix(frame, frame["revenue_true"].to_numpy())[1] if has_truth and "revenue_true" in frame else None
    ctl = P.shape[1] - 1
    c_mask = logged == CONTROL
    yc, vyc = _hajek(y[c_mask], w[c_mask])
    gc, vgc = _hajek(gmv[c_mask], w[c_mask])
    out_arms = {}
    for s in range(ctl):
        arm = arm_ids[0, s]
        if not isinstance(arm, str):
            continue
        a_mask = logged == arm
        ya, vya = _hajek(y[a_mask], w[a_mask])
        ga, vga = _hajek(gmv[a_mask], w[a_mask])
        fig = {"exposures_logged": int(a_mask.sum()),
               "incremental_responses": {"forecast": float(np.nansum(P[:, s] - P[:, ctl])),
                                         "actual": n * (ya - yc), "actual_se": n * float(np.sqrt(vya + vyc))},
               "incremental_gmv": {"forecast": float(np.nansum(R[:, s] - R[:, ctl])),
                                   "actual": n * (ga - gc), "actual_se": n * float(np.sqrt(vga + vgc))}}
        if T is not None:
            fig["incremental_responses"]["truth"] = float(np.nansum(T[:, s] - T[:, ctl]))
            if TR is not None:
                fig["incremental_gmv"]["truth"] = float(np.nansum(TR[:, s] - TR[:, ctl]))
        out_arms[arm] = fig
    qinis = arm_qinis(frame, p, wide=(arms, P))
    for (_, arm), q in qinis.items():
        out_arms[arm]["qini"] = q
    out = {"exposures": n, "arms": out_arms,
           "qini": float(np.mean(list(qinis.values()))) if qinis else float("nan")}
    for metric in ("incremental_responses", "incremental_gmv"):
        figs = [a[metric] for a in out_arms.values()]
        out[metric] = {k: float(sum(f[k] for f in figs)) for k in ("forecast", "actual") if figs}
        if figs and all("truth" in f for f in figs):
            out[metric]["truth"] = float(sum(f["truth"] for f in figs))
    if T is not None:
        out["targeting"] = equal_sends(P, T, send_share)
    return out


def equal_sends(P: np.ndarray, T: np.ndarray, send_share: float) -> dict:
    """The model's targeting (best predicted arm to the send_share of users with the largest
    predicted uplift) against the oracle's at the same number of sends, in true incremental
    responses. P, T: [users, arm slots], control last, NaN where a slot is unused."""
    ctl = P.shape[1] - 1
    gain_pred = P[:, :ctl] - P[:, ctl:]
    gain_true = T[:, :ctl] - T[:, ctl:]
    n_send = int(round(send_share * len(P)))
    best = np.nanargmax(np.where(np.isnan(gain_pred), -np.inf, gain_pred), axis=1)
    pred_best = gain_pred[np.arange(len(P)), best]
    sent = np.argsort(-pred_best, kind="mergesort")[:n_send]
    ours = float(np.nansum(gain_true[sent, best[sent]]))
    oracle = float(np.sort(np.nan_to_num(np.nanmax(gain_true, axis=1), nan=0.0))[::-1][:n_send].sum())
    random = float(n_send * np.nanmean(gain_true))
    return {"sends": n_send, "true_incremental_responses": ours, "oracle_incremental_responses": oracle,
            "share_of_oracle": ours / oracle if oracle > 0 else float("nan"),
            "random_share_of_oracle": random / oracle if oracle > 0 else float("nan")}


def pooled(per_campaign: dict) -> dict:
    """Pooled figures over the campaigns left out: mean Qini and share of the oracle, summed
    forecasts over summed actuals / truths."""
    figs = list(per_campaign.values())
    if not figs:
        return {}
    out = {"campaigns": len(figs), "qini": float(np.nanmean([f["qini"] for f in figs]))}
    shares = [f["targeting"]["share_of_oracle"] for f in figs if "targeting" in f]
    if shares:
        out["share_of_oracle"] = float(sum(f["targeting"]["true_incremental_responses"] for f in figs)
                                       / sum(f["targeting"]["oracle_incremental_responses"] for f in figs))
        out["share_of_oracle_min"] = float(np.nanmin(shares))
        out["random_share_of_oracle"] = float(np.nanmean([f["targeting"]["random_share_of_oracle"] for f in figs]))
    for metric in ("incremental_responses", "incremental_gmv"):
        total = {k: float(sum(f[metric].get(k, np.nan) for f in figs)) for k in ("forecast", "actual", "truth")
                 if all(k in f[metric] for f in figs)}
        for ref in ("actual", "truth"):
            if ref in total and total[ref]:
                total[f"forecast_to_{ref}"] = total["forecast"] / total[ref]
        out[metric] = total
    return out


def flat_metrics(report: dict) -> dict[str, float]:
    """The pooled figures as MLflow metrics new_campaigns.<name> (finite values only)."""
    out = {}
    for k, v in (report.get("pooled") or {}).items():
        if isinstance(v, dict):
            out.update({f"new_campaigns.{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[f"new_campaigns.{k}"] = v
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and np.isfinite(v)}


def refit(settings: Settings, meta: dict):
    """`fit` for run(): the candidate's recipe (params train; its epochs capped at
    evaluate.new_campaigns.epochs when set) fitted in process on the given tables."""
    from campaignops.pipelines.train import fit_tables

    params = dict(settings.params["train"])
    cap = config(settings)["epochs"]
    if cap is not None:
        params["epochs"] = min(int(params["epochs"]), int(cap))
    return lambda train, valid, valid_every_arm=None: fit_tables(params, meta, train, valid, valid_every_arm)


def run(settings: Settings, fit, truth: pd.DataFrame | None) -> dict:
    """Leave each of the last campaigns out, refit with `fit(train, valid, valid_every_arm)` → a
    model with `predict_arrays(encoded)` and `meta`, and score the campaign. Returns {config,
    left_out, campaigns, pooled}; empty figures when evaluate.new_campaigns.campaigns is 0."""
    from campaignops.models.inputs import encode
    from campaignops.pipelines.evaluate import attach_truth, truth_column
    from campaignops.pipelines.train import load_split

    cfg = config(settings)
    report = {"config": cfg, "campaigns": {}, "pooled": {}}
    if cfg["campaigns"] <= 0:
        return report
    plain = {s: load_split(settings, s) for s in SPLITS}
    chosen = campaigns_to_leave_out(plain, cfg["campaigns"], cfg["min_exposures"])
    report["left_out"] = chosen
    # Each split under every arm is read once; only the chosen campaigns' rows are kept, plus the
    # whole valid split when early stopping needs it (val_qini).
    needs_arms = settings.params["train"].get("early_stopping_monitor") == "val_qini"
    expanded_splits = {s: load_split(settings, s, every_arm=True) for s in SPLITS}
    valid_every_arm = expanded_splits["valid"] if needs_arms else None
    scored = pa.concat_tables([t.filter(pc.is_in(t.column("campaign_id"), value_set=pa.array(chosen, pa.string())))
                               for t in expanded_splits.values()], promote_options="default")
    del expanded_splits
    for campaign in chosen:
        log.info("leave-campaign-out: refit without %s", campaign)
        model = fit(without(plain["train"], campaign), without(plain["valid"], campaign),
                    None if valid_every_arm is None else without(valid_every_arm, campaign))
        expanded = only(scored, campaign)
        cols = FRAME_COLUMNS + ["propensity"] * ("propensity" in expanded.column_names)
        frame = attach_truth(expanded.select(cols).to_pandas(), truth)
        if truth is not None and "expected_revenue" in truth:
            frame = frame.assign(revenue_true=truth_column(frame, truth, "expected_revenue"))
        p, revenue = model.predict_arrays(encode(expanded, model.meta))
        report["campaigns"][campaign] = campaign_figures(frame, p, revenue, cfg["send_share"])
    report["pooled"] = pooled(report["campaigns"])
    return report


SHARE_METRIC = "new_campaigns.share_of_oracle"


def gate_reasons(report: dict, champion_metrics: dict | None, cfg: dict) -> list[str]:
    """Why the gate refuses the candidate on campaigns it has not seen: its pooled share of the
    oracle under the floor (evaluate.new_campaigns.min_share_of_oracle), or below the champion's
    own leave-campaign-out share (logged on its run) by more than champion_tolerance. Only on
    worlds with a truth (the share needs it); [] otherwise."""
    share = (report.get("pooled") or {}).get("share_of_oracle")
    if share is None or not np.isfinite(share):
        return []
    reasons = []
    floor = cfg.get("min_share_of_oracle")
    if floor is not None and share < float(floor):
        reasons.append(f"{SHARE_METRIC} {share:.3f} is under the floor {float(floor):g} (campaigns "
                       f"{', '.join(report.get('left_out') or [])} left out of training)")
    champ = (champion_metrics or {}).get(SHARE_METRIC)
    tolerance = cfg.get("champion_tolerance")
    if champ is not None and tolerance is not None and share < champ - float(tolerance):
        reasons.append(f"{SHARE_METRIC} {share:.3f} trails the champion's {champ:.3f} by more than "
                       f"{float(tolerance):g}")
    return reasons


def html_section(report: dict) -> str:
    """The evaluation report's section: per campaign left out, forecast vs actual (± se) vs
    truth and the targeting's share of the oracle."""
    from campaignops.pipelines.report import _table

    if not report.get("campaigns"):
        return ""
    rows = []
    for campaign, f in report["campaigns"].items():
        for arm, a in f["arms"].items():
            r, g = a["incremental_responses"], a["incremental_gmv"]
            rows.append({"campaign": campaign, "arm": arm, "exposures": a["exposures_logged"], "qini": a.get("qini"),
                         "incr. responses forecast": r["forecast"], "actual": r["actual"], "± se": r["actual_se"],
                         "truth": r.get("truth", ""), "incr. GMV forecast": g["forecast"], "GMV actual": g["actual"],
                         "GMV ± se": g["actual_se"], "GMV truth": g.get("truth", "")})
    targeting = [{"campaign": c, **f["targeting"]} for c, f in report["campaigns"].items() if "targeting" in f]
    pooled_rows = [{"figure": k, **(v if isinstance(v, dict) else {"value": v})}
                   for k, v in (report.get("pooled") or {}).items()]
    return "\n".join([
        "<h2>New campaigns: each left out of training, then predicted</h2>",
        f"<p>A model of the candidate's recipe refitted without each campaign predicts it (send share "
        f"{report['config']['send_share']:g} for the targeting figures). Actual: the inverse-propensity-weighted "
        "difference of the logged arm and control means × the audience.</p>",
        _table(rows), _table(targeting), "<h3>Pooled</h3>", _table(pooled_rows)])
