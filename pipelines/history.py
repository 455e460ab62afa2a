"""The morning view of the loop, one row per day: the day's retraining (gate verdict, version
promoted, champion after, holdout metrics), the campaign scored that day (sends, forecast of
incremental responses with its interval, and on synthetic data the truth and the share of the
oracle at equal sends) and, once its outcomes landed, the feedback (actual incremental responses
estimated from the exploration slice and the no-send control, whether it fell inside the
forecast's interval, the realized share of the oracle).

Read back from what the steps already store in S3: day records (`retrain/<batch>/record.json`),
scoring manifests (`scores/<campaign>/<run>/manifest.json`) and the feedback links next to them.
`campaignops history` prints it; `--html` writes the same as one self-contained page."""
from __future__ import annotations

import html
import json

from campaignops.pipelines import layout, retrain_day
from campaignops.pipelines.run_commit import committed_runs

HOLDOUT_KEYS = ("auc", "qini", "policy_value_fraction")


def _scored_runs(store) -> list[dict]:
    """The run each campaign acted on (latest.json), else its last committed run; not replays."""
    campaigns = sorted({k.split("/")[1] for k in store.list_keys("scores/") if k.count("/") >= 2})
    out = []
    for cid in campaigns:
        runs = [m for m in committed_runs(store, f"scores/{cid}/") if not m.get("replay")]
        if not runs:
            continue
        latest = store.get_bytes_or_none(f"scores/{cid}/latest.json")
        chosen = runs[-1]
        if latest is not None:
            target = json.loads(latest).get("manifest")
            chosen = next((m for m in runs if (m.get("output") or {}).get("manifest") == target), chosen)
        out.append(chosen)
    return out


def _feedback(store, manifest: dict) -> dict | None:
    link = store.get_bytes_or_none(layout.feedback_link_key(manifest["campaign_id"], manifest["score_run_id"]))
    if link is None:
        return None
    data = store.get_bytes_or_none(store.key(json.loads(link)["report_json"]))
    return None if data is None else json.loads(data)


def feedback_figures(report: dict) -> dict:
    """The few feedback figures the history shows, from a feedback report (pipelines/feedback.py)."""
    m = ((report.get("total") or {}).get("metrics") or {}).get("incremental_responses") or {}
    actual = m.get("actual") or {}
    truth = report.get("truth") or {}
    return {
        "actual": actual.get("estimate"),
        "actual_lo": actual.get("lo"),
        "actual_hi": actual.get("hi"),
        "within_interval": m.get("within_interval"),
        "true": truth.get("incremental_responses"),
        "oracle_same_sends": truth.get("oracle_same_sends"),
        "realized_share_of_oracle": truth.get("share_of_oracle"),
        "outside": report.get("outside_interval") or [],
    }


def collect(store) -> list[dict]:
    """One row per day that has a retraining record or a scored campaign, oldest first."""
    days: dict[str, dict] = {}
    for rec in retrain_day.records(store):
        cand = rec.get("candidate") or {}
        days.setdefault(rec["batch"], {"day": rec["batch"], "campaigns": []})["retrain"] = {
            "run_id": rec.get("run_id"), "passed": rec["gate"]["passed"], "reasons": rec["gate"]["reasons"],
            "promoted_version": rec.get("version"), "champion": rec.get("champion_after"),
            "holdout": {k: cand.get(k) for k in HOLDOUT_KEYS if cand.get(k) is not None}}
    for m in _scored_runs(store):
        day = (m.get("inputs") or {}).get("raw_batch") or str(m.get("as_of", ""))[:10]
        incr = m["forecast"]["total"]["incremental_responses"]
        truth = m.get("truth_check") or {}
        report = _feedback(store, m)
        days.setdefault(day, {"day": day, "campaigns": []})["campaigns"].append({
            "campaign_id": m["campaign_id"], "score_run_id": m["score_run_id"], "model_version": m["model"]["version"],
            "sends": m["users_targeted"], "spent": m["spent"], "budget": m["budget"],
            "forecast": incr.get("forecast"), "forecast_lo": incr.get("lo"), "forecast_hi": incr.get("hi"),
            "true_at_scoring": truth.get("true_incremental_responses"),
            "share_of_oracle_at_scoring": truth.get("fraction_of_oracle_same_count"),
            "feedback": feedback_figures(report) if report else None})
    return [days[d] for d in sorted(days)]


def _num(x, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def table_rows(days: list[dict]) -> list[list[str]]:
    """The history as text cells (shared by the CLI table and the HTML page)."""
    rows = []
    for d in days:
        r = d.get("retrain")
        gate = "–" if r is None else ("passed" if r["passed"] else "refused")
        promoted = "–" if r is None else (f"v{r['promoted_version']}" if r["promoted_version"] else "no")
        champion = "–" if r is None or not r["champion"] else f"v{r['champion']}"
        holdout = "–" if r is None else ", ".join(f"{k} {v:.3f}" for k, v in r["holdout"].items())
        campaigns = d["campaigns"] or [None]
        for i, c in enumerate(campaigns):
            first = i == 0
            cells = [d["day"] if first else "", gate if first else "", promoted if first else "",
                     champion if first else "", holdout if first else ""]
            if c is None:
                cells += ["–"] * 7
            else:
                fb = c["feedback"] or {}
                flag = "" if not c["feedback"] else (" ⚑ flagged" if fb.get("outside") else
                                                     " ✓" if fb.get("within_interval") else "")
                cells += [c["campaign_id"], f"{c['sends']:,}",
                          f"{_num(c['forecast'])} ({_num(c['forecast_lo'])}–{_num(c['forecast_hi'])})",
                          _num(c["true_at_scoring"]),
                          "pending" if not c["feedback"] else
                          f"{_num(fb.get('actual'))} ({_num(fb.get('actual_lo'))}–{_num(fb.get('actual_hi'))}){flag}",
                          _num(fb.get("true")),
                          _num(fb.get("realized_share_of_oracle") if c["feedback"] else c["share_of_oracle_at_scoring"],
                               "{:.0%}")]
            rows.append(cells)
    return rows


COLUMNS = ["day", "gate", "promoted", "champion", "holdout", "campaign", "sends", "forecast incr. resp. (90%)",
           "true (scoring)", "actual incr. resp. (90%)", "true (realized)", "share of oracle"]


def to_html(days: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in row) + "</tr>" for row in table_rows(days))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>campaignops history</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
            "</style></head><body><h1>campaignops: the loop, day by day</h1>"
            "<p>Per day: the retraining gate and the champion after it; the campaign scored that day, its "
            "forecast of incremental responses, and once its outcomes landed the actual (inverse-propensity "
            "weighted from the exploration slice and the no-send control). On synthetic data: the truth and "
            "the share of the oracle's incremental responses at equal sends.</p>"
            f"<table><tr>{head}</tr>{body}</table></body></html>")
