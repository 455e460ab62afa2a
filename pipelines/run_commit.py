"""Atomic, idempotent commit of a multi-part output run (parquet parts plus a manifest) in S3.

A run is identified by a caller-chosen, deterministic ``run_id`` and lives under a run prefix
``P = <campaign_prefix><run_id>/`` (e.g. ``scores/C005/<run_id>/``, pipelines/layout.py
``scores_prefix``). **A run is visible iff ``P manifest.json`` exists**; the manifest lists every
part (final key, rows, sha256, bytes), so readers never list parts, they read the manifest.

Layout::

    <campaign_prefix>latest.json                    newest committed run of the campaign
    P manifest.json                                 commit marker, written last, never overwritten
    P part-00000-<sha256[:16]>.parquet              final parts (referenced by the manifest)
    P _tmp/<attempt>/part-00000.parquet             staging: one directory per attempt (writer)

Protocol of one attempt (RunWriter):

1. ``existing()``: the manifest exists -> the request is a no-op; return that manifest.
2. ``write_part(table)`` for each part: deterministic parquet bytes (PARQUET_OPTIONS) uploaded to
   the attempt's ``_tmp/<attempt>/`` directory.
3. ``commit(manifest)``: server-side copy of each staged part to its final key, then PutObject of
   ``manifest.json`` with ``If-None-Match: *`` (ObjectStore.put_bytes_if_absent). Exactly one
   attempt of a run wins; a loser gets the winner's manifest. Then latest.json is moved forward
   and garbage is removed (this attempt's staging, other attempts of this run, parts the manifest
   does not reference, and, with ``cleanup_grace_s``, stale attempts of other runs of the campaign).

Why final parts are copies with content-addressed names: final keys are stable (a rerun of the
same request writes byte-identical parts, hence the very same keys), and the copy to a final key
can never damage a committed run: a loser whose bytes differ from the winner's writes *other*
keys (the sha256 is in the name), and one whose bytes are equal rewrites identical bytes. Parts
written straight to ``part-NNNNN.parquet`` could be overwritten by a late loser with different
bytes after the winner's manifest went in. Cost: one CopyObject per part (server side, no data
through the client). The staging directory groups an attempt's uploads so that an orphan (a
writer killed before its commit) can be aged and removed as a unit.

Crash safety: a SIGKILL at any point leaves either no manifest (run invisible; staging and any
final copies are orphans, removed later) or a complete manifest whose parts all exist (the copies
precede the manifest put). A rerun computes the same parts, so the same final keys.

Cleanup (cleanup_orphans) never touches keys it does not own (``_tmp/`` and ``part-*`` names under
a run prefix): other files under ``scores/<campaign>/`` (latest.json, older runs' scores.parquet)
stay. Under a committed run everything unreferenced is garbage and goes regardless of age (no
attempt can commit any more). Under a run without manifest, an attempt's staging goes once its
newest object is ``grace_s`` old, and final part copies once every object under the run prefix is
``grace_s`` old; ``grace_s`` protects writers still in flight and must exceed the longest time
between a writer's last upload and its manifest put (plus clock skew between this host and the
S3 server, as ages are ``time.time() - LastModified``).

Cost of cleanup: one LIST of the campaign prefix, plus one GET per committed run that still has
keys this module owns (its parts), on every commit with ``cleanup_grace_s`` set.

Residual risks (documented, not handled): a writer stalled for more than ``grace_s`` between
copying its final parts and putting its manifest can commit a manifest whose parts a concurrent
cleanup has just removed (read_run then raises naming the missing key; delete the manifest to let
a rerun rewrite the run). On an S3 server that ignores ``If-None-Match`` (probed once per
ObjectStore; SeaweedFS >= 3.98, AWS S3 and moto honour it) the manifest put falls back to head ->
put -> read back, and two writers racing within a few milliseconds can both see their own
manifest: the stored one is the last put, the other writer returned won=True with a manifest that
is no longer in store (its finalize then raises ValueError from update_latest). With
deterministic parts both manifests list the same keys, so the committed run stays readable; with
differing parts the other writer's cleanup may remove parts the stored manifest lists.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.pipelines import failpoints
from campaignops.pipelines.storage import ObjectStore

MANIFEST = "manifest.json"
LATEST = "latest.json"
TMP_DIR = "_tmp/"
DEFAULT_GRACE_S = 3600.0
# Fixed writer options: the same table gives the same bytes (for one pyarrow version: the file
# footer records "parquet-cpp-arrow version X"). Parquet files carry no write timestamp.
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, version="2.6", use_dictionary=True,
                       write_statistics=True, row_group_size=1 << 20, data_page_size=1 << 20,
                       write_page_index=False, write_page_checksum=False, store_schema=True)
_FINAL_PART = re.compile(r"part-\d{5}-[0-9a-f]{16}\.parquet")


class RunCommitError(RuntimeError):
    """A commit could not complete (e.g. a staged part vanished and no manifest exists)."""


class RunCorrupt(RuntimeError):
    """A committed run's part is missing or does not match the manifest (sha256, rows)."""


def part_bytes(table: pa.Table) -> bytes:
    """Deterministic parquet serialization of `table` (PARQUET_OPTIONS)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, **PARQUET_OPTIONS)
    return buf.getvalue()


def new_attempt_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:10]


def _parent(prefix: str) -> str:
    head = prefix.rstrip("/").rpartition("/")[0]
    return head + "/" if head else ""


class RunWriter:
    """One attempt at writing run `run_id` under `prefix` (e.g. scores/C005/<run_id>/).

    `cleanup_grace_s`: after the commit, also remove stale orphans of *other* runs of the campaign
    (cleanup_orphans with this grace; None = only this run's garbage). `latest`: move
    ``<campaign_prefix>latest.json`` forward to the committed run. Not thread-safe; one writer per
    attempt."""

    def __init__(self, store: ObjectStore, prefix: str, run_id: str, attempt: str | None = None, *,
                 cleanup_grace_s: float | None = DEFAULT_GRACE_S, latest: bool = True):
        if not prefix.endswith("/"):
            raise ValueError(f"run prefix {prefix!r} must end with '/'")
        self.attempt = attempt or new_attempt_id()
        if not self.attempt or "/" in self.attempt:
            raise ValueError(f"attempt id {self.attempt!r} must be non-empty without '/'")
        self.store, self.prefix, self.run_id = store, prefix, run_id
        self.campaign_prefix = _parent(prefix)
        self.manifest_key = prefix + MANIFEST
        self.tmp_prefix = f"{prefix}{TMP_DIR}{self.attempt}/"
        self.cleanup_grace_s, self.latest = cleanup_grace_s, latest
        self._parts: list[dict] = []
        self._closed = False

    def existing(self) -> dict | None:
        """The committed manifest if the run exists (then there is nothing to write), else None."""
        data = self.store.get_bytes_or_none(self.manifest_key)
        return None if data is None else json.loads(data)

    def write_part(self, table: pa.Table) -> dict:
        """Upload `table` as the next part to ``<prefix>_tmp/<attempt>/part-NNNNN.parquet``;
        returns {"key", "rows", "sha256", "bytes"} (key = the staging key)."""
        if self._closed:
            raise RunCommitError(f"attempt {self.attempt} of {self.prefix} is already committed or aborted")
        data = part_bytes(table)
        sha = hashlib.sha256(data).hexdigest()
        i = len(self._parts)
        key = f"{self.tmp_prefix}part-{i:05d}.parquet"
        self.store.put_bytes(key, data)
        self._parts.append({"key": key, "final": f"{self.prefix}part-{i:05d}-{sha[:16]}.parquet",
                            "rows": table.num_rows, "sha256": sha, "bytes": len(data)})
        failpoints.hit("part_uploaded")
        return {"key": key, "rows": table.num_rows, "sha256": sha, "bytes": len(data)}

    def commit(self, manifest: dict) -> tuple[dict, bool]:
        """Publish the run: copy staged parts to their final keys, then put ``<prefix>manifest.json``
        = `manifest` + "parts" (final key, rows, sha256, bytes), "rows" (total) and "commit" (run_id,
        attempt, committed_at, manifest_key) if no manifest exists yet.

        Returns (manifest in store, we_won). If another attempt committed first, this attempt's
        staging is removed and the winner's manifest is returned with False. Either way latest.json
        and garbage are then settled (finalize)."""
        if self._closed:
            raise RunCommitError(f"attempt {self.attempt} of {self.prefix} is already committed or aborted")
        if not self._parts:
            raise ValueError("a run needs at least one part (write an empty table for an empty run)")
        reserved = {"parts", "commit"} & set(manifest)
        if reserved:
            raise ValueError(f"manifest keys {sorted(reserved)} are set by commit()")
        total = sum(p["rows"] for p in self._parts)
        if "rows" in manifest and manifest["rows"] != total:
            raise ValueError(f"manifest says rows={manifest['rows']} but the parts hold {total}")

        if (stored := self.existing()) is not None:
            return self._settle(stored)
        for p in self._parts:
            try:
                self.store.copy(p["key"], p["final"])
                failpoints.hit("part_copied")
            except FileNotFoundError as exc:  # removed by a winner's cleanup, or by a too-short grace
                if (stored := self.existing()) is not None:
                    return self._settle(stored)
                raise RunCommitError(
                    f"staged part {self.store.uri(p['key'])} vanished before the commit and no manifest "
                    f"exists: was cleanup_orphans run with a grace shorter than this attempt's age?") from exc
        body = dict(manifest)
        body["rows"] = total
        body["parts"] = [{k: p[k] for k in ("rows", "sha256", "bytes")} | {"key": p["final"]} for p in self._parts]
        body["commit"] = {
            "run_id": self.run_id, "attempt": self.attempt, "manifest_key": self.manifest_key,
            "committed_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "conditional_put": "if-none-match" if self.store.supports_conditional_writes() else "read-back",
        }
        data = json.dumps(body, indent=2, sort_keys=True, default=str).encode()
        failpoints.hit("before_commit")
        created = self.store.put_bytes_if_absent(self.manifest_key, data)
        failpoints.hit("after_commit")
        if created and self.store.conditional_writes:
            return self._settle(json.loads(data))
        # Refused, or the read-back fallback (re-read: a concurrent put may have replaced ours).
        stored = self.existing()
        if stored is None:  # only possible if someone deleted the manifest right after it was put
            raise RunCommitError(f"{self.store.uri(self.manifest_key)} was refused as existing but is gone")
        return self._settle(stored)  # may still be ours: a put that landed but whose answer was lost

    def _settle(self, stored: dict) -> tuple[dict, bool]:
        won = (stored.get("commit") or {}).get("attempt") == self.attempt
        self._closed = True
        self.finalize(stored)
        return stored, won

    def finalize(self, manifest: dict) -> list[str]:
        """Idempotent housekeeping for the committed `manifest` of this run: move latest.json
        forward (if `latest`), remove this run's garbage (all staging, unreferenced parts) and,
        with `cleanup_grace_s`, stale orphans of the campaign's other runs. commit() calls it;
        call it yourself when existing() returned a manifest (repairs a writer killed after its
        manifest put). Returns the removed keys."""
        if self.latest and manifest.get("commit"):  # (a pre-RunWriter manifest has no commit block)
            update_latest(self.store, self.campaign_prefix, manifest)
            failpoints.hit("latest_moved")
        if self.cleanup_grace_s is not None:
            return cleanup_orphans(self.store, self.campaign_prefix, self.cleanup_grace_s)
        objects = self.store.list_objects(self.prefix)
        return _cleanup_run(self.store, self.prefix, objects, time.time(), 0.0, ())

    def abort(self) -> None:
        """Remove this attempt's staged parts. Final part copies are left alone: an identical
        concurrent attempt may own the very same keys; cleanup_orphans removes them once stale."""
        self._closed = True
        self.store.delete_keys(o["Key"] for o in self.store.list_objects(self.tmp_prefix))


def write_run(store: ObjectStore, prefix: str, run_id: str, tables: Iterable[pa.Table],
              manifest: dict | Callable[[], dict], *, cleanup_grace_s: float | None = DEFAULT_GRACE_S,
              latest: bool = True) -> tuple[dict, bool]:
    """Write run `run_id` under `prefix` unless it is committed already: the whole protocol in one
    call. `tables` is iterated only if the run does not exist (pass a generator to skip the work
    on a repeat request); `manifest` may be a callable, called after the last part. Returns
    (committed manifest, whether this call committed it). On an exception the attempt's staging
    is removed and the exception propagates."""
    writer = RunWriter(store, prefix, run_id, cleanup_grace_s=cleanup_grace_s, latest=latest)
    if (stored := writer.existing()) is not None:
        writer.finalize(stored)
        return stored, False
    try:
        for table in tables:
            writer.write_part(table)
        return writer.commit(manifest() if callable(manifest) else manifest)
    except BaseException:
        if not writer._closed:
            writer.abort()
        raise


def _owned(rel: str) -> bool:
    """Keys under a run prefix that this module writes and may delete."""
    return rel.startswith(TMP_DIR) or bool(_FINAL_PART.fullmatch(rel))


def _age(obj: dict, now: float) -> float:
    return now - obj["LastModified"].timestamp()


def _cleanup_run(store: ObjectStore, run_prefix: str, objects: list[dict], now: float, grace_s: float,
                 keep: Iterable[str]) -> list[str]:
    keep = tuple(keep)
    owned = [o for o in objects if _owned(o["Key"][len(run_prefix):]) and not o["Key"].startswith(keep)]
    if not owned:
        return []
    keys = {o["Key"] for o in objects}
    manifest = None
    if run_prefix + MANIFEST in keys:
        data = store.get_bytes_or_none(run_prefix + MANIFEST)
        manifest = None if data is None else json.loads(data)
    if manifest is not None:  # committed: nothing unreferenced can ever be referenced again
        referenced = {p["key"] for p in manifest.get("parts", [])}
        garbage = [o["Key"] for o in owned if o["Key"] not in referenced]
    else:
        attempts: dict[str, list[dict]] = {}
        finals = []
        for o in owned:
            rel = o["Key"][len(run_prefix):]
            if rel.startswith(TMP_DIR):
                attempts.setdefault(rel[len(TMP_DIR):].split("/", 1)[0], []).append(o)
            else:
                finals.append(o)
        garbage = [o["Key"] for group in attempts.values() if min(_age(o, now) for o in group) >= grace_s
                   for o in group]
        if finals and min(_age(o, now) for o in objects) >= grace_s:
            # Re-check just before deleting: a manifest put since the listing references these.
            if store.head_or_none(run_prefix + MANIFEST) is None:
                garbage += [o["Key"] for o in finals]
    store.delete_keys(garbage)
    return sorted(garbage)


def cleanup_orphans(store: ObjectStore, campaign_prefix: str, grace_s: float, keep: Iterable[str] = ()) -> list[str]:
    """Remove leftovers of killed or losing attempts under every run prefix of `campaign_prefix`;
    returns the removed keys. Committed runs: all staging and unreferenced parts, regardless of age.
    Runs without a manifest: an attempt's staging once its newest object is `grace_s` seconds old,
    final part copies once everything under the run prefix is. Keys starting with any of `keep`
    are never removed; keys this module does not write (latest.json, other files) are never touched."""
    now = time.time()
    runs: dict[str, list[dict]] = {}
    for o in store.list_objects(campaign_prefix):
        run, sep, _ = o["Key"][len(campaign_prefix):].partition("/")
        if sep:
            runs.setdefault(f"{campaign_prefix}{run}/", []).append(o)
    removed: list[str] = []
    for run_prefix, objects in runs.items():
        removed += _cleanup_run(store, run_prefix, objects, now, grace_s, keep)
    return sorted(removed)


def committed_runs(store: ObjectStore, campaign_prefix: str) -> list[dict]:
    """Manifests of the campaign's committed runs (``<campaign_prefix><run>/manifest.json``), oldest
    commit first. Runs without a manifest are not runs."""
    out = []
    for o in store.list_objects(campaign_prefix):
        run, _, rest = o["Key"][len(campaign_prefix):].partition("/")
        if run and rest == MANIFEST:
            data = store.get_bytes_or_none(o["Key"])
            if data is not None:
                out.append((o["Key"], json.loads(data)))
    out.sort(key=lambda km: (_committed_at(km[1]), km[0]))
    return [m for _, m in out]


def _committed_at(manifest: dict) -> str:
    return str((manifest.get("commit") or {}).get("committed_at") or manifest.get("scored_at") or "")


def read_run(store: ObjectStore, manifest: dict) -> pa.Table:
    """The run's rows: its parts in manifest order, each checked against the manifest's sha256 and
    row count (RunCorrupt names the key on a mismatch or a missing part). A manifest from before
    this module (a single "output" file, no "parts") is read without verification."""
    parts = manifest.get("parts")
    if parts is None:
        if "output" in manifest:
            return store.read_table(store.key(manifest["output"]))
        raise ValueError("manifest lists no parts")
    tables = []
    for p in parts:
        data = store.get_bytes_or_none(p["key"])
        if data is None:
            raise RunCorrupt(f"{store.uri(p['key'])} is listed in the manifest but missing")
        sha = hashlib.sha256(data).hexdigest()
        if sha != p["sha256"]:
            raise RunCorrupt(f"{store.uri(p['key'])}: sha256 {sha} does not match the manifest's {p['sha256']}")
        table = pq.read_table(io.BytesIO(data))
        if table.num_rows != p["rows"]:
            raise RunCorrupt(f"{store.uri(p['key'])}: {table.num_rows} rows, the manifest says {p['rows']}")
        tables.append(table)
    return pa.concat_tables(tables)


def update_latest(store: ObjectStore, campaign_prefix: str, manifest: dict) -> bool:
    """Point ``<campaign_prefix>latest.json`` at the committed `manifest` unless it already points
    at a run committed later (latest only moves forward, so a repeated old request does not move it
    back). Raises ValueError unless `manifest` is the one in store. Returns whether it was written.
    latest.json: {"run_id", "score_run_id" (same; the key older readers use), "manifest" (s3 URI),
    "committed_at"}. Two concurrent updates race (read, then put): the older may land last until
    the next commit or finalize moves it forward again."""
    commit = manifest.get("commit") or {}
    key = commit.get("manifest_key")
    if not key:
        raise ValueError("not a committed RunWriter manifest (no commit.manifest_key)")
    data = store.get_bytes_or_none(key)
    if data is None or (json.loads(data).get("commit") or {}).get("attempt") != commit.get("attempt"):
        raise ValueError(f"{store.uri(key)} is not this manifest: pass the committed one (commit() returns it)")
    latest_key = campaign_prefix + LATEST
    current = store.get_bytes_or_none(latest_key)
    uri = store.uri(key)
    if current is not None:
        cur = json.loads(current)
        if str(cur.get("committed_at") or "") > commit["committed_at"] or (
                cur.get("manifest") == uri and cur.get("committed_at") == commit["committed_at"]):
            return False
    store.put_json(latest_key, {"run_id": commit["run_id"], "score_run_id": commit["run_id"],
                                "manifest": uri, "committed_at": commit["committed_at"]})
    return True
