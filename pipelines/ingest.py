"""Registers a landed raw batch: snapshots its S3 manifest, with each file's ETag and size, into
data/raw_manifest.json. That small file is the DVC dependency of the validate stage, so the
chain reruns exactly when the raw data (or the batch) changes.

Also the landing rules producers (pipelines/synth.py) follow: **a raw batch id is immutable**.
raw/<batch>/_manifest.json is the commit marker, created with a conditional put
(ObjectStore.put_bytes_if_absent), so of two concurrent landers of one id exactly one wins. Parts
have content-addressed names (`part-NNNNN-<sha256[:16]>.parquet`, as run_commit.py's), so a lander
whose bytes differ from the landed batch's writes *other* keys and can never overwrite a part the
landed manifest lists. Landing an id again with the identical content (the manifest equal but for
`created_at`) is a no-op that returns the landed manifest; with other content it is refused
(BatchExists, naming the batch: land it under a new id). A batch id outside the safe-id rule
(pipelines/inputs.py: no path separators, no leading dot, a length cap) is refused before any read."""
from __future__ import annotations

import hashlib
import json

from campaignops.config import Settings
from campaignops.pipelines import layout
from campaignops.pipelines.inputs import check_id
from campaignops.pipelines.storage import ObjectStore, write_json
from campaignops.validation.contract import TABLES


class BatchNotReady(RuntimeError):
    """The raw batch has not (completely) landed: no manifest, or a listed file is missing."""


class BatchExists(ValueError):
    """A raw batch id that already landed with other content: batch ids are immutable."""


# Manifest fields that differ between two landings of the same content.
VOLATILE_MANIFEST_FIELDS = ("created_at",)


def part_key(prefix: str, index: int, path) -> str:
    """The content-addressed key of a batch's part file `path` (index `index` under `prefix`)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return f"{prefix}part-{index:05d}-{h.hexdigest()[:16]}.parquet"


def landed_manifest(store, batch: str) -> dict | None:
    """raw/<batch>/_manifest.json as landed, or None when the batch id is free. Producers ask this
    before writing anything, so an unsafe batch id (UnsafeId) stops them here."""
    data = store.get_bytes_or_none(layout.raw_manifest_key(check_id(batch, "batch")))
    return None if data is None else json.loads(data)


def _comparable(manifest: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in manifest.items() if k not in VOLATILE_MANIFEST_FIELDS},
                                 sort_keys=True, default=str))


def same_batch(landed: dict, manifest: dict) -> bool:
    """Whether `manifest` lands exactly what `landed` did (part keys carry the content's sha256)."""
    return _comparable(landed) == _comparable(manifest)


def batch_exists_error(store, batch: str, landed: dict, manifest: dict) -> BatchExists:
    a, b = _comparable(landed), _comparable(manifest)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return BatchExists(
        f"raw batch {batch!r} already landed at {store.uri(layout.raw_manifest_key(batch))} with other content "
        f"(differs in: {', '.join(differ)}); raw batch ids are immutable: land this data under a new batch id "
        f"(e.g. --batch {batch}-2, or another --date), nothing was written")


def settle_landed(store, batch: str, landed: dict, manifest: dict) -> dict:
    """The landed manifest if `manifest` is the same batch (a no-op re-landing), else BatchExists."""
    if same_batch(landed, manifest):
        return landed
    raise batch_exists_error(store, batch, landed, manifest)


def commit_batch(store, batch: str, manifest: dict, written: list[str]) -> dict:
    """Land `manifest` (whose parts, `written` by this lander, are already stored) as the batch's
    commit marker with a conditional put. Winner: removes keys under raw/<batch>/ its manifest does
    not list (orphans of crashed or losing landers) and returns `manifest`. Loser (a concurrent
    lander got there first): removes its own parts the landed manifest does not list, then returns
    the landed manifest if it is the same batch, else raises BatchExists."""
    key = layout.raw_manifest_key(check_id(batch, "batch"))
    body = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    if store.put_bytes_if_absent(key, body):
        listed = set(manifest_keys(manifest)) | {key}
        orphans = [k for k in store.list_keys(f"raw/{batch}/") if k not in listed]
        if orphans:
            store.delete_keys(orphans)
        return manifest
    landed = landed_manifest(store, batch)
    listed = set(manifest_keys(landed or {}))
    mine = [k for k in written if k not in listed]
    if mine:
        store.delete_keys(mine)
    if landed is None:   # the winner's manifest vanished meanwhile (deleted by hand): refuse, retry later
        raise BatchExists(f"raw batch {batch!r}: a concurrent lander's manifest {store.uri(key)} blocked this "
                          "landing and is gone now; nothing was written, land it again")
    return settle_landed(store, batch, landed, manifest)


def manifest_keys(manifest: dict) -> list[str]:
    """Every part key a raw manifest lists (tables and truth)."""
    keys = [k for entry in (manifest.get("tables") or {}).values() for k in entry.get("files", [])]
    if isinstance(manifest.get("truth"), dict):
        keys += list(manifest["truth"].get("files", []))
    return keys


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

    Raises BatchNotReady if the manifest (written last by the producer) or a listed file is missing,
    UnsafeId if the batch id breaks the safe-id rule."""
    batch = check_id(batch or settings.params["data"]["batch"], "batch")
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
