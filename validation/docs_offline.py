"""GX Data Docs readable offline. GX renders the index page's tables (validation runs, expectation
suites) with bootstrap-table from the page's inline data, and loads jQuery, bootstrap and
bootstrap-table from CDNs: offline (an air-gapped auditor, a browser opening the S3 copy) the
index is blank. The GX package ships only its own CSS, fonts and images (render/view/static), not
those libraries, so they cannot be bundled from it. Instead `make_offline` writes each such table's
rows into the page as plain HTML (with the row links), plus a little inline CSS: without the CDNs
the page shows a static table; with them bootstrap-table rebuilds the same table as before. The
validation and expectation pages already render their tables as static HTML."""
from __future__ import annotations

import ast
import html
import re
from pathlib import Path

_BLOCK = re.compile(r"\$\('#(?P<id>[\w-]+)'\)\.bootstrapTable\(\s*Object\.assign\(\s*\{\s*"
                    r"columns: (?P<cols>[^\n]*),\s*\n\s*data: (?P<data>[^\n]*),\s*\n\s*toolbar:")
_ICONS = (("fa-check-circle", "&#10004; passed"), ("fa-times", "&#10008; failed"))
_STYLE = ("<style id='campaignops-offline'>table[data-toggle=table]{border-collapse:collapse;margin:.5rem 0}"
          "table[data-toggle=table] th,table[data-toggle=table] td{border:1px solid #d8dde6;padding:3px 8px;"
          "text-align:left;font-family:system-ui,sans-serif;font-size:.85rem}</style>")
MARK = "data-offline-rows"


def _cell(value) -> str:
    text = str(value if value is not None else "")
    for cls, label in _ICONS:   # font-awesome icons are CDN-only: say it in words
        if cls in text:
            return label
    return text.strip()   # GX's own rendered HTML (links, spans)


def static_rows(page: str) -> str:
    """`page` with every bootstrap-table's rows written into its (empty) <table> element."""
    for m in _BLOCK.finditer(page):
        try:
            columns, data = ast.literal_eval(m["cols"]), ast.literal_eval(m["data"])
        except (ValueError, SyntaxError):
            continue
        fields = [(c.get("field"), c.get("title", c.get("field"))) for c in columns if c.get("field")]
        head = "<thead><tr>" + "".join(f"<th>{html.escape(str(t))}</th>" for _, t in fields) + "</tr></thead>"
        rows = []
        for row in data:
            cells = [_cell(row.get(f)) for f, _ in fields]
            link = row.get("_table_row_link_path")
            at = next((i for i, (f, _) in enumerate(fields) if f != "validation_success"), 0)
            if link and cells:   # the row's link on its first cell that is not the status icon
                cells[at] = f"<a href='{html.escape(link)}'>{cells[at] or 'open'}</a>"
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        table = re.compile(r'(<table\s+id="' + re.escape(m["id"]) + r'"[^>]*?)(>)\s*(</table>)', re.S)
        page = table.sub(lambda t: f"{t[1]} {MARK}{t[2]}{head}<tbody>{''.join(rows)}</tbody>{t[3]}", page, count=1)
    if MARK in page and "campaignops-offline" not in page:
        page = page.replace("</head>", _STYLE + "</head>", 1)
    return page


def make_offline(site_dir: Path | str) -> int:
    """Rewrite the site's pages that hold bootstrap-table data; returns how many changed."""
    n = 0
    for path in Path(site_dir).rglob("*.html"):
        page = path.read_text(encoding="utf-8")
        if "bootstrapTable(" not in page or MARK in page:
            continue
        new = static_rows(page)
        if new != page:
            path.write_text(new, encoding="utf-8")
            n += 1
    return n
