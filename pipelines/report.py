"""The HTML evaluation report (reports/evaluation.html) and its plot data: Qini curves per arm,
uplift by decile, calibration, predicted-vs-actual response rate, per-segment metric slices,
permutation attributions, the baselines side by side and a campaign effect forecast.

Everything is computed from the same per-arm predictions evaluate.holdout_metrics uses; plots
are PNGs (matplotlib, Agg) embedded in the HTML and also written next to it so they can be
logged to the candidate's MLflow run as artifacts."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from campaignops.models import metrics as m
from campaignops.models.arms import arm_groups, arm_matrix, logged_view
from campaignops.pipelines.evaluate import policy_choice, true_response
from campaignops.validation.contract import CONTROL


# --------------------------------------------------------------------------- #
# plot data
# --------------------------------------------------------------------------- #
def _truth_matrix(frame: pd.DataFrame, truth: pd.DataFrame | None):
    if truth is None:
        return None
    return arm_matrix(frame, true_response(frame, truth))[1]


def curves(frame: pd.DataFrame, p: np.ndarray, truth: pd.DataFrame | None = None, n_bins: int = 10) -> dict:
    """Plot data: per-arm Qini curves and uplift by decile, reliability, predicted-vs-actual."""
    arms, P, exposures, arm_ids, logged_slot = logged_view(frame, p)
    T = _truth_matrix(frame, truth)
    y = exposures["responded"].to_numpy().astype(float)
    rows = np.arange(len(y))
    out = {"qini": {}, "uplift_by_decile": {}}
    true_uplift = T[:, :-1] - T[:, -1:] if T is not None else None
    several = exposures["campaign_id"].nunique() > 1
    for g in arm_groups(frame, p, wide=(arms, P)):
        label = f"{g.campaign}:{g.arm}" if several else str(g.arm)
        u, ys, ts = g.uplift, g.y.astype(float), g.treated
        x, q = m.qini_curve(ys, u, ts)
        stride = max(1, len(x) // 200)
        out["qini"][label] = {"x": x[::stride].tolist(), "y": q[::stride].tolist(),
                              "random": [0.0, float(q[-1])], "random_x": [0.0, float(x[-1])],
                              "auc": m.qini_auc_score(ys, u, ts)}
        dec = pd.qcut(pd.Series(-u).rank(method="first"), n_bins, labels=False).to_numpy()
        tu = true_uplift[g.rows][g.hit] if true_uplift is not None else None
        obs, pred, true_u, n = [], [], [], []
        for d in range(n_bins):
            k = dec == d
            t_rate = ys[k & (ts == 1)].mean() if (k & (ts == 1)).any() else np.nan
            c_rate = ys[k & (ts == 0)].mean() if (k & (ts == 0)).any() else np.nan
            obs.append(float(t_rate - c_rate))
            pred.append(float(u[k].mean()))
            true_u.append(float(tu[k].mean()) if tu is not None else np.nan)
            n.append(int(k.sum()))
        out["uplift_by_decile"][label] = {"decile": list(range(1, n_bins + 1)), "observed": obs,
                                          "predicted": pred, "true": true_u, "n": n}
    p_logged = P[rows, logged_slot]
    mean_p, frac, count = m.reliability_curve(y, p_logged, n_bins)
    out["reliability"] = {"mean_predicted": np.asarray(mean_p).tolist(), "fraction_positive": np.asarray(frac).tolist(),
                          "count": np.asarray(count).tolist()}
    dec = pd.qcut(pd.Series(p_logged).rank(method="first"), n_bins, labels=False).to_numpy()
    out["predicted_vs_actual"] = {
        "decile": list(range(1, n_bins + 1)),
        "predicted": [float(p_logged[dec == d].mean()) for d in range(n_bins)],
        "actual": [float(y[dec == d].mean()) for d in range(n_bins)],
        "n": [int((dec == d).sum()) for d in range(n_bins)]}
    return out


def segment_slices(frame: pd.DataFrame, p: np.ndarray, truth: pd.DataFrame | None,
                   segments: dict[str, pd.Series]) -> list[dict]:
    """holdout_metrics on each segment value; `segments` maps a name to a per-exposure label
    (indexed by exposure_id)."""
    from campaignops.pipelines.evaluate import holdout_metrics

    out = []
    for name, labels in segments.items():
        lab = frame["exposure_id"].map(labels)
        for value in sorted(lab.dropna().unique(), key=str):
            k = (lab == value).to_numpy()
            row = {"segment": name, "value": str(value), "exposures": int(frame.loc[k, "exposure_id"].nunique())}
            sub = frame[k].reset_index(drop=True)
            try:
                r = holdout_metrics(sub, p[k], truth)
            except ValueError as exc:  # e.g. a slice with one class only
                row["error"] = str(exc)
            else:
                row.update({key: r[key] for key in ("auc", "qini", "ece", "policy_value_fraction",
                                                    "policy_to_oracle_ratio", "send_share") if key in r})
            out.append(row)
    return out


def default_segments(expanded_frame: pd.DataFrame) -> dict[str, pd.Series]:
    """Age bucket and activity quartile (events in the last 30 days), per exposure."""
    first = expanded_frame.drop_duplicates("exposure_id").set_index("exposure_id")
    seg = {}
    if "age_bucket" in first:
        seg["age_bucket"] = first["age_bucket"]
    if "n_events_30d" in first:
        seg["activity_30d"] = pd.qcut(first["n_events_30d"].rank(method="first"), 4,
                                      labels=["q1_low", "q2", "q3", "q4_high"]).astype(str)
    return seg


# --------------------------------------------------------------------------- #
# campaign effect forecast
# --------------------------------------------------------------------------- #
def forecast_effect(p: np.ndarray, revenue: np.ndarray, sent: np.ndarray, n_boot: int = 500,
                    seed: int = 0, level: float = 0.9) -> dict:
    """Forecast of a targeting's effect over the scored users (one row per user, the chosen
    arm's predicted response `p` and expected revenue `revenue`; `sent` = a campaign send):
    participation_rate (responses / targeted users), conversion_rate (responses / all users,
    incl. the untargeted under no-send), orders (one per response), gmv and aov (gmv/orders).
    Bootstrap over users (resampled with replacement) and over outcomes (Bernoulli(p), each
    order worth revenue/p), so the interval covers both the population and the outcome noise."""
    p = np.clip(np.asarray(p, float), 0, 1)
    rev = np.asarray(revenue, float)
    sent = np.asarray(sent, bool)
    value = np.divide(rev, p, out=np.zeros_like(rev), where=p > 0)   # order value given a response
    rng = np.random.default_rng(seed)

    def stats(pp, vv, ss, draw):
        orders_i = (rng.random(len(pp)) < pp).astype(float) if draw else pp
        orders, gmv = orders_i.sum(), (orders_i * vv).sum()
        return {"participation_rate": orders_i[ss].sum() / max(ss.sum(), 1), "conversion_rate": orders / len(pp),
                "orders": orders, "gmv": gmv, "aov": gmv / orders if orders > 0 else np.nan,
                "targeted": float(ss.sum())}

    point = stats(p, value, sent, False)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(p), len(p))
        boots.append(stats(p[idx], value[idx], sent[idx], True))
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    out = {"users": int(len(p)), "level": level}
    for k, v in point.items():
        b = np.array([x[k] for x in boots], float)
        out[k] = {"forecast": float(v), "lo": float(np.nanquantile(b, lo)), "hi": float(np.nanquantile(b, hi))}
    return out


def forecast_vs_actual(frame: pd.DataFrame, p: np.ndarray, revenue_pred: np.ndarray, revenue_actual: pd.Series,
                       n_boot: int = 500, seed: int = 0) -> dict:
    """The model's targeting (best arm by predicted response, control = no send) forecast over
    the holdout, and predicted-vs-actual on the exposures whose randomized logged arm equals the
    chosen arm (there the realized outcome is the policy's outcome). `revenue_actual` is the
    realized revenue per exposure_id."""
    c = policy_choice(frame, p, None)
    _, R = arm_matrix(frame, revenue_pred)
    rows, chosen = np.arange(len(c.arms)), c.chosen
    sent = c.chosen_ids != CONTROL
    full = forecast_effect(c.P[rows, chosen], R[rows, chosen], sent, n_boot, seed)
    match = chosen == c.logged_slot
    fc = forecast_effect(c.P[rows, chosen][match], R[rows, chosen][match], sent[match], n_boot, seed)
    y = c.y[match]
    rv = revenue_actual.reindex(c.arms.index).to_numpy(float)[match]
    orders = y.sum()
    actual = {"participation_rate": y[sent[match]].sum() / max(sent[match].sum(), 1),
              "conversion_rate": orders / max(len(y), 1), "orders": orders, "gmv": rv.sum(),
              "aov": rv.sum() / orders if orders > 0 else float("nan"), "targeted": float(sent[match].sum())}
    compare = {k: {**fc[k], "actual": float(actual[k]),
                   "within_interval": bool(fc[k]["lo"] <= actual[k] <= fc[k]["hi"])} for k in actual}
    return {"forecast": full, "matched_exposures": int(match.sum()), "predicted_vs_actual": compare}


# --------------------------------------------------------------------------- #
# rendering
# --------------------------------------------------------------------------- #
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def figures(plot_data: dict, attributions: list[dict] | None) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, c in plot_data["qini"].items():
        ax.plot(c["x"], c["y"], label=f"{label} (qini {c['auc']:.3f})")
        ax.plot(c["random_x"], c["random"], ls=":", color="grey")
    ax.set(title="Qini curve per arm (vs control)", xlabel="users targeted", ylabel="incremental responses")
    ax.legend(fontsize=7)
    figs["qini_per_arm.png"] = _png(fig)

    arms = list(plot_data["uplift_by_decile"])
    fig, axes = plt.subplots(1, max(len(arms), 1), figsize=(4 * max(len(arms), 1), 3.5), squeeze=False)
    for ax, label in zip(axes[0], arms):
        d = plot_data["uplift_by_decile"][label]
        x = np.array(d["decile"])
        ax.bar(x - 0.2, d["observed"], 0.4, label="observed")
        ax.bar(x + 0.2, d["predicted"], 0.4, label="predicted")
        if not np.all(np.isnan(d["true"])):
            ax.plot(x, d["true"], "k.-", label="true")
        ax.set(title=label, xlabel="predicted-uplift decile (1 = highest)", ylabel="uplift")
        ax.legend(fontsize=7)
    figs["uplift_by_decile.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4))
    r = plot_data["reliability"]
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.plot(r["mean_predicted"], r["fraction_positive"], "o-")
    hi = max(max(r["mean_predicted"] + r["fraction_positive"], default=0.1), 0.05) * 1.1
    ax.set(xlim=(0, hi), ylim=(0, hi), title="Calibration (logged arm)", xlabel="mean predicted", ylabel="observed rate")
    figs["calibration.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    d = plot_data["predicted_vs_actual"]
    x = np.array(d["decile"])
    ax.bar(x - 0.2, d["predicted"], 0.4, label="predicted")
    ax.bar(x + 0.2, d["actual"], 0.4, label="actual")
    ax.set(title="Response rate per predicted decile", xlabel="predicted-response decile", ylabel="rate")
    ax.legend()
    figs["predicted_vs_actual.png"] = _png(fig)

    if attributions:
        key = next((k for k in ("policy_value_fraction_drop", "auc_drop", "qini_drop") if k in attributions[0]), None)
        if key:
            rows = sorted(attributions, key=lambda a: a[key])
            fig, ax = plt.subplots(figsize=(6, 0.25 * len(rows) + 1))
            ax.barh([a["feature"] for a in rows], [a[key] for a in rows],
                    color=["C1" if a["group"] == "sequence" else "C2" if a["group"] == "arm" else "C0" for a in rows])
            ax.set(title=f"Permutation importance ({key})", xlabel=key)
            figs["attributions.png"] = _png(fig)
    return figs


def _table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = cols or list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(evaluation: dict, figs: dict[str, bytes], segments: list[dict], attributions: list[dict] | None,
                forecast: dict | None) -> str:
    keys = ["auc", "logloss", "ece", "qini", "policy_value_fraction", "policy_to_oracle_ratio",
            "policy_value_ips", "send_share", "revenue_rmse"]
    models = [("candidate", evaluation["candidate"])]
    if evaluation.get("champion"):
        models.append(("champion", evaluation["champion"]))
    models += [(f"baseline {n}", r) for n, r in (evaluation.get("baselines") or {}).items()]
    comparison = [{"model": name, **{k: r[k] for k in keys if k in r}} for name, r in models]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}"
        "th{background:#eee}img{max-width:100%}</style></head><body>",
        f"<h1>Evaluation report</h1><p>run {html.escape(str(evaluation.get('run_id')))} — gate "
        f"<b>{'passed' if evaluation.get('passed') else 'failed'}</b> "
        f"{html.escape('; '.join(evaluation.get('reasons') or []))}</p>",
        "<h2>Candidate vs champion vs baselines (holdout)</h2>", _table(comparison, ["model", *keys]),
    ]
    leads = evaluation.get("vs_baselines") or {}
    if leads:
        k = (evaluation.get("thresholds") or {}).get("baseline_tolerance_sd")
        parts += [f"<h2>Does the candidate earn its place?</h2><p>The candidate's policy value minus each "
                  f"baseline's on the same holdout, with the bootstrap sd of that paired lead over the holdout's "
                  f"exposures; ahead / behind beyond {html.escape(str(k))} sd, else tie.</p>",
                  _table([{"baseline": n, **v, "sd": f"{v['sd']:.2g}"} for n, v in leads.items()],
                         ["baseline", "metric", "lead", "sd", "verdict"])]
    if evaluation.get("family"):
        from campaignops.pipelines.family import html_section as family_section

        parts.append(family_section(evaluation["family"]))
    if evaluation.get("champion_incomparable"):
        parts.append(f"<h2>Champion not comparable</h2><p>{html.escape(evaluation['champion_incomparable'])}</p>")
    titles = {"qini_per_arm.png": "Qini curves per arm", "uplift_by_decile.png": "Uplift by decile",
              "calibration.png": "Calibration / reliability", "predicted_vs_actual.png": "Predicted vs actual",
              "attributions.png": "Feature attributions (permutation importance)"}
    for name, data in figs.items():
        parts.append(f"<h2>{titles.get(name, name)}</h2><img src='data:image/png;base64,"
                     f"{base64.b64encode(data).decode()}' alt='{name}'>")
    parts += ["<h2>Segment slices</h2>", _table(segments)]
    if attributions:
        parts += ["<h2>Attribution table</h2>", _table(attributions)]
    if forecast:
        fc = forecast["forecast"]
        parts += ["<h2>Campaign effect forecast (model's targeting on the holdout users)</h2>",
                  _table([{"metric": k, **v} for k, v in fc.items() if isinstance(v, dict)]),
                  f"<h3>Predicted vs actual on {forecast['matched_exposures']} exposures whose logged arm "
                  "equals the chosen arm</h3>",
                  _table([{"metric": k, **v} for k, v in forecast["predicted_vs_actual"].items()])]
    if (evaluation.get("new_campaigns") or {}).get("campaigns"):
        from campaignops.pipelines.new_campaigns import html_section

        parts.append(html_section(evaluation["new_campaigns"]))
    if evaluation.get("adjustment"):
        from campaignops.pipelines.adjust_eval import html_section as adjustment_section

        parts.append(adjustment_section(evaluation["adjustment"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: Path, evaluation: dict, frame: pd.DataFrame, p: np.ndarray, truth: pd.DataFrame | None,
                 segments: list[dict], attributions: list[dict] | None, forecast: dict | None) -> dict[str, Path]:
    """Write evaluation.html, figures/*.png and evaluation_plots.json under out_dir; returns the paths."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    data = curves(frame, p, truth)
    figs = figures(data, attributions)
    paths = {}
    for name, png in figs.items():
        (fig_dir / name).write_bytes(png)
        paths[name] = fig_dir / name
    plot_json = out_dir / "evaluation_plots.json"
    plot_json.write_text(json.dumps({"curves": data, "segments": segments, "attributions": attributions,
                                     "forecast": forecast}, indent=1, default=float))
    paths["plots_json"] = plot_json
    page = out_dir / "evaluation.html"
    page.write_text(render_html(evaluation, figs, segments, attributions, forecast))
    paths["html"] = page
    return paths
