"""Renderings of a lineage chain (``lineage.trace``'s result): a text table for the CLI and logs,
and one self-contained HTML page (inline CSS, no scripts, nothing fetched to view it) that scoring
stores beside its manifest.
"""
from __future__ import annotations

import html
import io
import json

from campaignops.pipelines.lineage import MISMATCH, MISSING, UNVERIFIABLE, VERIFIED

_COLORS = {VERIFIED: "green", MISMATCH: "red", MISSING: "yellow", UNVERIFIABLE: "bright_black"}
_MARKS = {VERIFIED: "ok", MISMATCH: "MISMATCH", MISSING: "MISSING", UNVERIFIABLE: "unverifiable"}
TEXT_CHECKS_PER_HOP = 6      # the text table lists this many checks per hop (the page and --json list all)


def _short(value, keep: int = 16) -> str:
    """A recorded value fit for one table line: hashes and long ids cut in the middle."""
    text = _s(value)
    return text if len(text) <= 2 * keep + 1 else f"{text[:keep]}…{text[-6:]}"


def check_lines(hop: dict, limit: int = TEXT_CHECKS_PER_HOP) -> list[str]:
    """One line per check: its mark, what it compared and the value it found (the hash itself for
    a verified hash, expected vs actual for a mismatch, the reason otherwise)."""
    lines = []
    for c in hop["checks"][:limit]:
        found = next((v for v in (c["actual"], c["expected"]) if v not in (None, "")), None)
        if c["status"] == MISMATCH:
            value = f"expected {_short(c['expected'])}, actual {_short(c['actual'])}"
        elif c["status"] == VERIFIED and found is not None:
            value = _short(found)
        else:
            value = c["detail"]
        lines.append(f"{_MARKS[c['status']]} {c['what']}: {value}")
    if len(hop["checks"]) > limit:
        lines.append(f"… {len(hop['checks']) - limit} more (--html or --json lists every check)")
    return lines


def render_text(chain: dict, width: int = 160) -> str:
    """A rich table of the hops, each with its checks (plain text, for the CLI and logs)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lineage of {chain['ref']}", show_lines=True)
    for name in ("#", "hop", "identifier", "status", "checks"):
        table.add_column(name, overflow="fold")      # ids and hashes wrap, never cut
    for i, h in enumerate(chain["hops"], 1):
        ident = h["identifier"] + (f"\n{h['link']}" if h.get("link") and h["link"] != h["identifier"] else "")
        checks = "\n".join(check_lines(h)) or h["detail"]
        table.add_row(str(i), h["name"], ident, f"[{_COLORS[h['status']]}]{h['status']}[/]", checks)
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    console.print(table)
    console.print(f"overall: {chain['status']} — " + ", ".join(f"{v} {k}" for k, v in chain["counts"].items() if v))
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2433;line-height:1.4;padding:0 1rem}
h1{font-size:1.4rem;margin-bottom:.2rem}.sub{color:#5b6475;margin-bottom:1.2rem}
.hop{border:1px solid #d8dde6;border-left:6px solid #999;border-radius:6px;margin:0 0 1rem;padding:.6rem 1rem}
.hop.verified{border-left-color:#2e8540}.hop.mismatch{border-left-color:#c0392b}
.hop.missing{border-left-color:#d68910}.hop.unverifiable{border-left-color:#8a94a6}
.hop h2{font-size:1.05rem;margin:.1rem 0}.id{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem;
word-break:break-all}
.badge{display:inline-block;border-radius:4px;padding:0 .45rem;font-size:.8rem;color:#fff;margin-left:.4rem}
.badge.verified{background:#2e8540}.badge.mismatch{background:#c0392b}.badge.missing{background:#d68910}
.badge.unverifiable{background:#8a94a6}
table{border-collapse:collapse;width:100%;font-size:.82rem;margin:.4rem 0}
td,th{border-bottom:1px solid #eef0f4;padding:.2rem .4rem;text-align:left;vertical-align:top}
td.h{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
details{margin:.3rem 0}summary{cursor:pointer;color:#3b5bdb}pre{white-space:pre-wrap;font-size:.78rem;
background:#f6f8fa;padding:.5rem;border-radius:4px}
.arrow{text-align:center;color:#8a94a6;margin:-.6rem 0 .2rem}
"""


def render_html(chain: dict) -> str:
    """One self-contained page: inline CSS, no scripts, nothing fetched to view it (links only)."""
    e = html.escape
    out = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>Lineage of {e(chain['ref'])}</title><style>{_CSS}</style></head><body>",
           f"<h1>Lineage of <span class='id'>{e(chain['ref'])}</span>"
           f"<span class='badge {e(chain['status'])}'>{e(chain['status'])}</span></h1>",
           f"<div class='sub'>traced at {e(chain['traced_at'])} · "
           + " · ".join(f"{v} {e(k)}" for k, v in chain["counts"].items() if v)
           + " · statuses: verified = every check matched; mismatch = a hash, size, row count or id differs; "
             "missing = an object the chain points at is gone; unverifiable = nothing to compare with</div>"]
    for i, h in enumerate(chain["hops"]):
        if i:
            out.append("<div class='arrow'>&#8595;</div>")
        links = " · ".join(f"<a href='{e(l['url'])}'>{e(l['label'])}</a>" for l in h.get("links") or [])
        if h.get("link") and not h.get("links"):
            links = f"<a href='{e(h['link'])}'>{e(h['link'])}</a>"
        out.append(f"<div class='hop {e(h['status'])}'><h2>{i + 1}. {e(h['name'])}"
                   f"<span class='badge {e(h['status'])}'>{e(h['status'])}</span></h2>"
                   f"<div class='id'>{e(h['identifier'])}</div>" + (f"<div>{links}</div>" if links else "")
                   + f"<div>{e(h['detail'])}</div>")
        if h["checks"]:
            out.append("<table><tr><th>check</th><th>status</th><th>expected</th><th>actual</th><th>detail</th></tr>")
            for c in h["checks"]:
                out.append(f"<tr><td>{e(str(c['what']))}</td><td><span class='badge {e(c['status'])}'>"
                           f"{e(c['status'])}</span></td><td class='h'>{e(_s(c['expected']))}</td>"
                           f"<td class='h'>{e(_s(c['actual']))}</td><td>{e(str(c['detail']))}</td></tr>")
            out.append("</table>")
        if h["facts"]:
            out.append("<details><summary>recorded facts</summary><pre>"
                       + e(json.dumps(h["facts"], indent=2, sort_keys=True, default=str)) + "</pre></details>")
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


def _s(v) -> str:
    return "" if v is None else str(v)
