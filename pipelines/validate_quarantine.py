"""Quarantine of the validate step: every failing row, raw values plus `_rule` (every rule id it broke,
";"-joined), `_source_file` and `_source_row`, goes to s3://<bucket>/quarantine/<table>/<batch>/<run_id>.parquet;
a table whose quarantined share exceeds params validate.max_quarantine_rate fails the batch."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from campaignops.pipelines import layout
from campaignops.pipelines.validate_rules import Engine, RawTable

META_COLS = ("_rule", "_source_file", "_source_row")


def split(raw: RawTable, rule_order: list[str]) -> tuple[pa.Table, pa.Table]:
    """(valid rows, quarantined rows with _rule/_source_file/_source_row)."""
    order = [r for r in rule_order if r in raw.hits] + sorted(set(raw.hits) - set(rule_order))
    assert len(order) <= 64, "rule bitmask holds at most 64 rules per table"
    mask = np.zeros(raw.n, dtype=np.uint64)
    for bit, rid in enumerate(order):
        mask[raw.hits[rid]] |= np.uint64(1) << np.uint64(bit)
    bad_rows = np.flatnonzero(mask)
    valid = raw.data.filter(pa.array(mask == 0))
    codes, inverse = np.unique(mask[bad_rows], return_inverse=True)
    labels = [";".join(rid for bit, rid in enumerate(order) if int(code) >> bit & 1) for code in codes]
    quarantined = raw.data.take(pa.array(bad_rows))
    quarantined = quarantined.append_column(
        "_rule", pa.DictionaryArray.from_arrays(pa.array(inverse.astype(np.int32)), pa.array(labels, pa.string()))
        .cast(pa.string()))
    quarantined = quarantined.append_column(
        "_source_file", pa.DictionaryArray.from_arrays(pa.array(raw.file_idx[bad_rows]), pa.array(raw.files, pa.string()))
        .cast(pa.string()))
    quarantined = quarantined.append_column("_source_row", pa.array(raw.source_row[bad_rows]))
    assert valid.num_rows + quarantined.num_rows == raw.n, f"{raw.name}: rows in != valid + quarantined"
    return valid, quarantined


def write_quarantine(store, engine: Engine, table: str, summary: dict, batch: str, run_id: str) -> str | None:
    """The table's failing rows to S3; returns their key (None when no row failed)."""
    if not summary["rows_quarantined"]:
        return None
    key = layout.quarantine_prefix(table, batch) + f"{run_id}.parquet"
    store.write_table(engine.quarantine(table), key)
    return key


def quarantine_rate(summary: dict) -> float:
    return summary["rows_quarantined"] / summary["rows_in"] if summary["rows_in"] else 0.0


def rate_failure(table: str, summary: dict, threshold: float) -> dict | None:
    """The batch-level failure when the table's quarantined share exceeds `threshold`, else None."""
    rate = quarantine_rate(summary)
    if rate <= threshold:
        return None
    return {"table": table, "rule": f"{table}.rows.quarantine_rate", "rate": rate, "threshold": threshold,
            "rows_in": summary["rows_in"], "rows_quarantined": summary["rows_quarantined"],
            "top_rules": dict(list(summary["rule_counts"].items())[:5])}
