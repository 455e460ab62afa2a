"""The GX side of the validate step: each table's suite runs through a checkpoint (results and
Data Docs) on the frame the engine samples, and GX's failing rows must equal the SQL twin's on that
frame, rule by rule (`cross_check`), or the run stops (`ContractMismatch`): GX is the contract, the
SQL pass finds its rows at scale."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from campaignops.pipelines.validate_rules import OPTIONAL_ORDER, ORDER, Engine, RawTable
from campaignops.pipelines.validate_staging import BatchRejected
from campaignops.validation import suites


class ContractMismatch(RuntimeError):
    """GX and its SQL twin disagree on which rows break a rule: a bug in the translation."""


def _gx_context(root: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="file", project_root_dir=str(root))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


RESULT_FORMAT = {"result_format": "COMPLETE", "return_unexpected_index_query": False,
                 "partial_unexpected_count": 20}


def run_gx(raws: dict[str, RawTable], now: datetime, run_id: str, gx_root: Path,
           max_len: int = suites.MAX_STRING_LENGTH, allow_empty: frozenset[str] = frozenset()) -> Path:
    """Run each table's suite through a checkpoint (results + Data Docs in `gx_root`); fill
    `raw.hits` with row-level violations and `raw.gx` with the result summary. Returns the
    Data Docs site directory."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    ctx = _gx_context(gx_root)
    source = ctx.data_sources.add_pandas("raw")
    gx_run = RunIdentifier(run_name=run_id, run_time=datetime.now(timezone.utc))
    for table in [t for t in (*ORDER, *OPTIONAL_ORDER) if t in raws]:
        raw = raws[table]
        batch_def = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("batch")
        suite = ctx.suites.add(suites.build_suite(table, now, max_len, allow_empty=table in allow_empty))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"raw.{table}", data=batch_def, suite=suite))
        checkpoint = ctx.checkpoints.add(gx.Checkpoint(
            name=f"raw.{table}", validation_definitions=[vd], result_format=RESULT_FORMAT, actions=[]))
        df = suites.to_pandas(raw.data)  # RangeIndex = the row's position in `raw.data`
        t0 = time.perf_counter()
        result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=gx_run)
        del df
        (result_id, vr), = result.run_results.items()
        batch_failures, hits = [], {}
        for r in vr.results:
            rid = r.expectation_config.meta["rule_id"]
            level = r.expectation_config.meta.get("level")
            exc = r.exception_info or {}
            if exc.get("raised_exception"):
                raise RuntimeError(f"GX could not evaluate rule {rid} on {table}: {exc.get('exception_message')}")
            if level == suites.BATCH:
                if not r.success:
                    batch_failures.append(f"{rid} (observed {r.result.get('observed_value')!r})")
                continue
            idx = r.result.get("unexpected_index_list") or []
            if r.result.get("unexpected_count", 0) and not idx:
                raise RuntimeError(f"GX returned no unexpected indices for failed rule {rid} on {table}")
            if idx:
                hits[rid] = np.unique(np.asarray(idx, dtype=np.int64))
        if batch_failures:
            raise BatchRejected(f"table {table}: batch-level rule(s) failed: {'; '.join(batch_failures)}")
        raw.hits.update(hits)
        raw.gx = {"result_id": str(result_id), "success": bool(vr.success),
                  "evaluated": vr.statistics.get("evaluated_expectations"),
                  "successful": vr.statistics.get("successful_expectations"),
                  "seconds": round(time.perf_counter() - t0, 3)}
    ctx.build_data_docs()  # once, from the stored results of all four checkpoints
    site = gx_root / "gx" / "uncommitted" / "data_docs" / "local_site"
    from campaignops.validation.docs_offline import make_offline

    make_offline(site)  # the index's tables as static HTML: readable without the CDN scripts
    return site



def cross_check(raw: RawTable, sql_hits: dict[str, np.ndarray]) -> None:
    """GX's failing rows must equal the SQL twin's, rule by rule, on the same frame."""
    for rid in sorted(set(raw.hits) | set(sql_hits)):
        g = set(np.asarray(raw.hits.get(rid, []), dtype=np.int64).tolist())
        s = set(np.asarray(sql_hits.get(rid, []), dtype=np.int64).tolist())
        if g != s:
            only_g, only_s = sorted(g - s)[:5], sorted(s - g)[:5]
            ex = [(raw.files[raw.file_idx[i]], int(raw.source_row[i])) for i in (only_g or only_s)[:3]]
            raise ContractMismatch(f"rule {rid} on {raw.name}: GX flags {len(g)} row(s), the SQL twin {len(s)}; "
                                   f"only GX: {only_g}, only SQL: {only_s} (e.g. file/row {ex}). Fix "
                                   "suites.sql_predicates to match the expectation.")


def gx_pass(engine: Engine, staged: dict, summaries: dict[str, dict], order: tuple[str, ...], now: datetime,
            run_id: str, gx_root: Path, cfg: dict) -> tuple[dict[str, RawTable], Path]:
    """GX on every row of small tables or on a sample, cross-checked with the SQL twin. Returns the
    frames (their `gx` summaries filled) and the Data Docs site directory."""
    frames = {t: engine.sample(t, cfg["gx_sample_rows"]) for t in order}
    docs_dir = run_gx(frames, now, run_id, gx_root, cfg["max_string_length"],
                      frozenset(t for t in order if staged[t].allow_empty))
    for t, raw in frames.items():
        cross_check(raw, engine.sql_hits(raw))
        s = summaries[t]
        raw.gx.update({"rows": raw.n, "whole_table": raw.n == s["rows_in"] - s["rows_deduplicated"],
                       "cross_checked_rules": len(suites.sql_predicates(t, now, "x", cfg["max_string_length"]))})
    return frames, docs_dir
