"""The feedback report as one self-contained HTML page (no network): forecast vs actual vs truth
per variant and in total as tables and inline SVG bar charts with their intervals, per segment,
the greedy policy's value and the truth of the sends against the oracle's."""
from __future__ import annotations

from html import escape

COLORS = {"forecast": "#8fa8c8", "actual": "#d9822b", "truth": "#4a9d5b"}
STYLE = ("body{font:14px sans-serif;margin:1.5em;max-width:70em}td,th{padding:2px 8px;text-align:right}"
         "th:first-child,td:first-child,td.l{text-align:left}table{border-collapse:collapse;margin:.5em 0 1.5em}"
         "tr:nth-child(even){background:#f4f4f4}.flag{background:#fcc !important}.ok{color:#2a7}.bad{color:#c33}"
         "h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}.note{color:#555;max-width:60em}")


def _n(x, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _iv(d: dict | None, key: str = "forecast") -> str:
    if not d:
        return "–"
    return f"{_n(d[key])} <small>[{_n(d['lo'])}, {_n(d['hi'])}]</small>"


def _yes(x) -> str:
    return "–" if x is None else ("<span class='ok'>yes</span>" if x else "<span class='bad'>no</span>")


def bar_chart(groups: list[tuple[str, dict]], metric: str, title: str, width: int = 640, height: int = 220) -> str:
    """Inline SVG: per group forecast / actual / truth bars of `metric`, whiskers at the intervals."""
    series = []
    for label, block in groups:
        m = block["metrics"][metric]
        f, a = m["forecast"] or {}, m["actual"]
        series.append((label, [("forecast", f.get("forecast"), f.get("lo"), f.get("hi")),
                               ("actual", a["estimate"], a["lo"], a["hi"]), ("truth", m["truth"], None, None)]))
    values = [v for _, bars in series for _, *vals in bars for v in vals if v is not None] or [0.0]
    lo, hi = min(0.0, *values), max(0.0, *values)
    span = (hi - lo) or 1.0
    top, bottom, left = 24, 30, 56
    plot_h = height - top - bottom

    def y(v: float) -> float:
        return top + (hi - v) / span * plot_h

    gw = (width - left - 10) / max(len(series), 1)
    bw = gw / 4.5
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
           f"aria-label='{escape(title)}'><text x='{left}' y='15' font-size='13'>{escape(title)}</text>",
           f"<line x1='{left}' x2='{width - 10}' y1='{y(0):.1f}' y2='{y(0):.1f}' stroke='#333'/>",
           f"<text x='{left - 4}' y='{y(hi) + 4:.1f}' font-size='10' text-anchor='end'>{_n(hi, 0)}</text>",
           f"<text x='{left - 4}' y='{y(lo) + 4:.1f}' font-size='10' text-anchor='end'>{_n(lo, 0)}</text>"]
    for g, (label, bars) in enumerate(series):
        x0 = left + g * gw + bw * 0.5
        for k, (kind, v, vlo, vhi) in enumerate(bars):
            if v is None:
                continue
            x = x0 + k * bw * 1.15
            out.append(f"<rect x='{x:.1f}' y='{min(y(v), y(0)):.1f}' width='{bw:.1f}' height='{abs(y(v) - y(0)):.1f}' "
                       f"fill='{COLORS[kind]}'><title>{kind} {escape(label)}: {_n(v)}</title></rect>")
            if vlo is not None:
                cx = x + bw / 2
                out.append(f"<line x1='{cx:.1f}' x2='{cx:.1f}' y1='{y(vlo):.1f}' y2='{y(vhi):.1f}' stroke='#222'/>")
        out.append(f"<text x='{x0 + bw * 1.7:.1f}' y='{height - 10}' font-size='11' text-anchor='middle'>"
                   f"{escape(label)}</text>")
    legend = "".join(f"<rect x='{width - 230 + i * 75}' y='6' width='10' height='10' fill='{c}'/>"
                     f"<text x='{width - 216 + i * 75}' y='15' font-size='11'>{k}</text>"
                     for i, (k, c) in enumerate(COLORS.items()))
    return "".join(out) + legend + "</svg>"


def _metric_rows(scope: str, block: dict, flagged: set[str]) -> str:
    rows = []
    for name, m in block["metrics"].items():
        key = f"{scope}.{name}"
        a = m["actual"]
        rows.append(
            f"<tr class='{'flag' if key in flagged else ''}'><td>{escape(scope)}</td><td class='l'>{escape(name)}</td>"
            f"<td>{_n(block['sends']['forecast'], 0)} / {_n(block['sends']['actual'], 0)}</td>"
            f"<td>{_iv(m['forecast'])}</td><td>{_iv(a, 'estimate')} <small>± {_n(a['se'])}</small></td>"
            f"<td>{_n(m['actual_dr']['estimate'])}</td><td>{_n(m['truth'])}</td>"
            f"<td>{_n(m['forecast_over_actual'], 2)}</td><td>{_yes(m['within_interval'])}</td>"
            f"<td>{_yes(m['forecast_within_actual_interval'])}</td><td>{'FLAGGED' if key in flagged else ''}</td></tr>")
    return "".join(rows)


HEAD = ("<tr><th>scope</th><th>metric</th><th>sends fc / actual</th><th>forecast [interval]</th>"
        "<th>actual IPW [interval] ± se</th><th>actual DR</th><th>truth</th><th>forecast ÷ actual</th>"
        "<th>actual in forecast interval</th><th>forecast in actual interval</th><th>gate</th></tr>")


def render_html(report: dict) -> str:
    """The whole page for a feedback report (pipelines/feedback.py)."""
    gate = report["gate"]
    flagged = set(report["outside_interval"])
    scopes = [("total", report["total"]), *report["by_variant"].items()]
    src = report["inputs"]["outcomes"]
    cov = report["coverage"]
    title = f"Feedback {report['campaign_id']} — scores run {report['scores_run_id']}"
    verdict = ("<span class='ok'>forecast consistent</span>" if gate["passed"] else
               f"<span class='bad'>{len(flagged)} metric(s) outside the forecast</span>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{escape(title)}: {verdict}</h1>",
             f"<p class='note'>Outcomes: {escape(str(src.get('source')))} (batch {escape(str(src.get('batch')))}), "
             f"{cov['joined']} of {cov['scored_users']} scored users joined; exploration share "
             f"{report['exploration']['share']:g} over {report['exploration']['arms']} arms. Actual = IPW with the "
             f"exploration slice and the no-send control as counterfactual ({report['level']:.0%} interval); DR uses "
             f"the model's no-send prediction. Gate rule <b>{escape(gate['rule'])}</b> on "
             f"{escape(', '.join(gate['metrics']))}. Report {escape(report['report_id'])}, computed "
             f"{escape(report['computed_at'])}.</p>",
             bar_chart(scopes, "incremental_responses", "incremental responses: forecast / actual / truth"),
             bar_chart(scopes, "incremental_gmv", "incremental GMV: forecast / actual / truth"),
             "<h2>Forecast vs actual</h2><table>", HEAD,
             *(_metric_rows(s, b, flagged) for s, b in scopes), "</table>"]
    if report["by_segment"]:
        parts += ["<h2>By segment (forecast from the scores' predictions of the segment's users)</h2><table>", HEAD,
                  *(_metric_rows(s, b, set()) for s, b in report["by_segment"].items()), "</table>"]
    pv = report["policy_value"]
    parts.append("<h2>Greedy policy vs no-send (every user given the model's arm)</h2><table><tr><th>metric</th>"
                 "<th>model</th><th>IPW [interval]</th><th>DR [interval]</th><th>truth</th></tr>")
    for name in ("incremental_responses", "incremental_gmv"):
        v = pv[name]
        parts.append(f"<tr><td>{name}</td><td>{_n(v['model'])}</td><td>{_iv(v['ipw'], 'estimate')}</td>"
                     f"<td>{_iv(v['dr'], 'estimate')}</td><td>{_n(v['truth'])}</td></tr>")
    parts.append("</table>")
    truth = report.get("truth")
    if truth:
        parts.append("<h2>Truth (synthetic world)</h2><table><tr><th>sends</th><th>true incremental responses</th>"
                     "<th>of the greedy-arm sends</th><th>oracle at equal sends</th><th>share of the oracle</th></tr>"
                     f"<tr><td>{truth['sends']}</td><td>{_n(truth['incremental_responses'])}</td>"
                     f"<td>{_n(truth['incremental_responses_greedy_arm_sends'])}</td>"
                     f"<td>{_n(truth['oracle_same_sends'])}</td><td>{_n(truth['share_of_oracle'], 3)}</td></tr></table>")
    naive = report.get("naive", {}).get("incremental_responses")
    parts.append(f"<p class='note'>Naive sent-minus-not-sent difference × sends: {_n(naive)} (biased by the "
                 "targeting; shown for contrast). Coverage: " + escape(", ".join(f"{k} {v}" for k, v in cov.items()))
                 + ".</p></body></html>")
    return "".join(parts)
