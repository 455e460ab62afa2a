"""Registers a landed raw batch: snapshots its S3 manifest, with each file's ETag and size, into
data/raw_manifest.json. That small file is the DVC dependency of the validate stage, so the
chain reruns exactly when the raw data (or the batch) changes."""
from __future__ import annotations

from campaignops.config import Settings
from campaignops.pipelines import layout
from campaignops.pipelines.storage import ObjectStore, write_json
from campaignops.validation.contract import TABLES


class BatchNotReady(RuntimeError):
    """The raw batch has not (completely) landed: no manifest, or a listed file is missing."""


def _not_found(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


def _object_info(store: ObjectStore, key: str, batch: str) -> dict:
    try:
        head = store.head(key)
    except Exception as exc:  # botocore ClientError
        if _not_found(exc):
            raise BatchNotReady(f"raw batch {batch!r}: the manifest lists {store.uri(key)} but it does not exist; "
                                "the batch is incomplete or was partly deleted") from exc
        raise
    return {"key": key, "etag": str(head.get("ETag", "")).strip('"'), "size": int(head.get("ContentLength", 0))}


def ingest(settings: Settings, batch: str | None = None, store: ObjectStore | None = None) -> dict:
    """Snapshot raw/<batch>/_manifest.json (+ ETag/size per file) into data/raw_manifest.json.

    Raises BatchNotReady if the manifest (written last by the producer) or a listed file is missing."""
    batch = batch or settings.params["data"]["batch"]
    store = store or ObjectStore(settings)
    key = layout.raw_manifest_key(batch)
    try:
        manifest = store.get_json(key)
    except Exception as exc:
        if _not_found(exc):
            raise BatchNotReady(
                f"raw batch {batch!r} has no manifest at {store.uri(key)}: the batch has not landed or is "
                "incomplete (producers write the manifest last); nothing to ingest") from exc
        raise
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tables"), dict):
        raise BatchNotReady(f"{store.uri(key)} is not a valid manifest (no 'tables' mapping)")
    if manifest.get("batch", batch) != batch:
        raise BatchNotReady(f"{store.uri(key)} names batch {manifest.get('batch')!r}, expected {batch!r}")
    missing = [t for t in TABLES if t not in manifest["tables"]]
    if missing:
        raise BatchNotReady(f"raw batch {batch!r}: manifest {store.uri(key)} lists no files for table(s) {missing}")

    out = dict(manifest)
    out["batch"] = batch
    out["bucket"] = store.bucket
    out["manifest_key"] = key
    out["manifest_etag"] = str(store.head(key).get("ETag", "")).strip('"')
    tables = {}
    for table, entry in manifest["tables"].items():
        entry = dict(entry)
        entry["objects"] = [_object_info(store, k, batch) for k in entry.get("files", [])]
        tables[table] = entry
    out["tables"] = tables
    if isinstance(manifest.get("truth"), dict):
        truth = dict(manifest["truth"])
        truth["objects"] = [_object_info(store, k, batch) for k in truth.get("files", [])]
        out["truth"] = truth

    path = settings.workspace / layout.RAW_MANIFEST
    write_json(path, out)
    return {
        "batch": batch,
        "manifest": str(path),
        "source": store.uri(key),
        "now": manifest.get("now"),
        "tables": {t: {"files": len(e["objects"]), "rows": e.get("rows"),
                       "bytes": sum(o["size"] for o in e["objects"])} for t, e in tables.items()},
    }
