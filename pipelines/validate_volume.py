"""Volume check of the validate step: each table's row count must lie within
[volume_min_ratio, volume_max_ratio] × the previous batch's from the same source, as recorded in
s3://<bucket>/validation/_history.json (rewritten after every passing run)."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

log = logging.getLogger(__name__)

HISTORY_KEY = "validation/_history.json"


def read_history(store) -> dict:
    try:
        if store.exists(HISTORY_KEY):
            return store.get_json(HISTORY_KEY)
    except Exception as exc:  # a broken history must not block validation; it is rewritten on success
        log.warning("cannot read %s (%s); volume check treats this batch as the first", HISTORY_KEY, exc)
    return {"tables": {}}


def check_volume(history: dict, table: str, batch: str, rows_in: int, lo: float, hi: float,
                 source: str | None = None) -> dict:
    """Compare rows in with the latest *other* batch recorded for the table from the same source
    (producer and mapping: an imported log is not compared with synthetic batches)."""
    previous = [h for h in history.get("tables", {}).get(table, [])
                if h.get("batch") != batch and h.get("source", source) == source]
    if not previous:
        return {"status": "first", "rows_in": rows_in, "note": f"no previous batch of {table} on record: "
                "volume not checked (first batch); this batch becomes the reference"}
    prev = previous[-1]
    # 0 after 0 (a table empty by design in both batches) is no change; rows after 0 is unbounded
    ratio = rows_in / prev["rows_in"] if prev["rows_in"] else (1.0 if rows_in == 0 else float("inf"))
    ok = lo <= ratio <= hi
    out = {"status": "ok" if ok else "failed", "rows_in": rows_in, "previous_batch": prev["batch"],
           "previous_rows_in": prev["rows_in"], "ratio": round(ratio, 4), "band": [lo, hi]}
    if not ok:
        out["message"] = (f"[rule {table}.rows.volume] {table}: {rows_in} rows is {ratio:.2f}x the {prev['rows_in']} "
                          f"rows of previous batch {prev['batch']!r}, outside the band [{lo}, {hi}] "
                          "(params validate.volume_min_ratio/volume_max_ratio). If the change is expected, widen "
                          f"the band for one run or remove {table}'s entries from {HISTORY_KEY}; else check the "
                          "producer for a partial or duplicated export.")
    return out


def record_history(store, history: dict, batch: str, run_id: str, tables: dict, keep: int = 20,
                   source: str | None = None) -> None:
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for t, info in tables.items():
        hist = [h for h in history.setdefault("tables", {}).get(t, []) if h.get("batch") != batch]
        hist.append({"batch": batch, "run_id": run_id, "rows_in": info["rows_in"], "at": at,
                     **({"source": source} if source else {})})
        history["tables"][t] = hist[-keep:]
    store.put_json(HISTORY_KEY, history)
