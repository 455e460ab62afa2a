"""Reporting of the validate step: the run's summary (result.json and GX Data Docs in
s3://<bucket>/validation/<batch>/<run_id>/), the workspace copy (reports/validation.json for a
passing run — it describes data/validated and records the sha256 of every table written there —
reports/validation_failed.json for a failed or rejected one), the failure message, and the check
that data/validated is what its report says (`validated_record`, read by scoring)."""
from __future__ import annotations

import mimetypes
import os
from datetime import datetime, timezone
from pathlib import Path

from campaignops.pipelines import layout
from campaignops.pipelines.storage import sha256_file, write_json
from campaignops.validation import suites

INVARIANT = "rows_in = rows_valid + rows_quarantined + rows_deduplicated (per table)"
PASSED_REPORT = "validation.json"
FAILED_REPORT = "validation_failed.json"


class ValidatedMismatch(ValueError):
    """data/validated is not what reports/validation.json says the last passing run wrote."""


def upload_dir(store, local: Path, prefix: str) -> int:
    """Every file under `local` to S3 under `prefix` (with its content type); returns the count."""
    n = 0
    for root, _, names in os.walk(local):
        for name in sorted(names):
            path = Path(root) / name
            key = prefix + path.relative_to(local).as_posix()
            store.upload_file(path, key, content_type=mimetypes.guess_type(name)[0] or "application/octet-stream")
            n += 1
    return n


def _top_rules(counts: dict[str, int], k: int = 5) -> str:
    return ", ".join(f"{rid}={n}" for rid, n in list(counts.items())[:k])


def build_report(run: dict, tables: dict[str, dict], failures: list[dict], order: tuple[str, ...], now: datetime,
                 cfg: dict, docs_files: int, manifest: dict) -> dict:
    """The run's summary. `run` holds run_id, batch, result_uri, docs_uri and started_at."""
    passed = not failures
    return {
        "run_id": run["run_id"], "batch": run["batch"], "now": now.isoformat(),
        "status": "passed" if passed else "failed", "passed": passed,
        "max_quarantine_rate": cfg["max_quarantine_rate"], "tables": tables, "failures": failures,
        "invariant": INVARIANT,
        "rows_in": sum(t["rows_in"] for t in tables.values()),
        "rows_valid": sum(t["rows_valid"] for t in tables.values()),
        "rows_quarantined": sum(t["rows_quarantined"] for t in tables.values()),
        "rows_deduplicated": sum(t["rows_deduplicated"] for t in tables.values()),
        "gx_success": all(t["gx"].get("success") for t in tables.values()),
        "rules": {t: [r.id for r in suites.rules(t, now)] for t in order},
        "cleaning": {"dedup_keys": {t: list(k) for t, k in suites.DEDUP_KEYS.items()},
                     "fills": suites.FILLS, "note": "exact duplicates are removed (first copy kept) and counted "
                     "as rows_deduplicated, not quarantined; fills apply to valid rows only"},
        "config": cfg, "result_uri": run["result_uri"], "docs_uri": run["docs_uri"], "docs_files": docs_files,
        "raw_manifest_etag": manifest.get("manifest_etag"),
        "started_at": run["started_at"], "timings_s": {},
    }


def rejected_report(run: dict, error: Exception) -> dict:
    """The summary of a batch rejected outright (a batch-level rule: file, schema, manifest)."""
    message = str(error)
    rule = message[len("[rule "):message.index("]")] if message.startswith("[rule ") and "]" in message else None
    return {"run_id": run["run_id"], "batch": run["batch"], "status": "rejected", "passed": False,
            "error": message, "failures": [{"rule": rule, "message": message}],
            "result_uri": run["result_uri"], "started_at": run["started_at"],
            "finished_at": datetime.now(timezone.utc).isoformat()}


def write_reports(workspace: Path, store, prefix: str, report: dict) -> None:
    """result.json to S3; the same to reports/validation.json when the batch passed (it describes
    data/validated: features, promote and score cite it), else to reports/validation_failed.json,
    so a failed or rejected run never replaces the last good run's report."""
    store.put_json(prefix + "result.json", report)
    name = PASSED_REPORT if report.get("passed") else FAILED_REPORT
    write_json(Path(workspace) / layout.REPORTS_DIR / name, report)


def failure_message(report: dict, quarantine_uri: str) -> str:
    """One message for a batch that failed after the row pass: every failure, where the quarantine,
    the report and the docs are, and that the last good outputs were left in place."""
    lines = []
    for f in report["failures"]:
        if "message" in f:
            lines.append(f["message"])
        else:
            lines.append(f"[rule {f['rule']}] {f['table']}: {f['rate']:.2%} of {f['rows_in']} rows quarantined > "
                         f"max {f['threshold']:.2%}; top rules: {_top_rules(f['top_rules'])}")
    batch, run_id = report["batch"], report["run_id"]
    return (f"batch {batch!r} failed validation (run {run_id}): " + " | ".join(lines)
            + f". Quarantine: {quarantine_uri}<table>/{batch}/{run_id}.parquet; report: {report['result_uri']} "
            f"(reports/{FAILED_REPORT}); docs: {report['docs_uri']}. data/validated and "
            f"reports/{PASSED_REPORT} were left unchanged.")


def table_hashes(validated_dir: Path) -> dict[str, str]:
    """sha256 of every validated table file, by file name (what scoring records as validated_sha256)."""
    return {f.name: sha256_file(f) for f in sorted(Path(validated_dir).glob("*.parquet"))}


def validated_record(workspace: Path, actual: dict[str, str]) -> dict:
    """Which validation run wrote data/validated, checked by content: the table hashes in
    reports/validation.json must equal `actual` (the sha256 of the files a step reads). Raises
    ValidatedMismatch naming the first differing file when they do not (data/validated restored
    from another version, or edited); a report older than the hashes gives verified False."""
    import json

    path = Path(workspace) / layout.REPORTS_DIR / PASSED_REPORT
    report = json.loads(path.read_text()) if path.is_file() else {}
    record = {"batch": report.get("batch"), "run_id": report.get("run_id"), "result_uri": report.get("result_uri")}
    recorded = report.get("validated_sha256")
    if recorded is None:
        return record | {"verified": False, "reason": f"{path} records no table hashes (written before they were "
                                                      "recorded, or missing): data/validated not checked against it"}
    for name in sorted(set(recorded) | set(actual)):
        if recorded.get(name) != actual.get(name):
            where = layout.VALIDATED_DIR / name
            raise ValidatedMismatch(
                f"{where} is not what validation run {report.get('run_id')} (batch {report.get('batch')!r}) wrote: "
                f"sha256 {str(actual.get(name, 'absent'))[:12]} vs {str(recorded.get(name, 'absent'))[:12]} recorded in "
                f"{layout.REPORTS_DIR / PASSED_REPORT}; restore both from the same run (`dvc checkout` of one "
                "dvc.lock) or rerun `campaignops validate` on the batch")
    return record | {"verified": True}
