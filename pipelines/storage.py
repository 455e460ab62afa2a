"""The one I/O edge to object storage (S3 API) and to local files, with atomic writes."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.config import Settings


def s3_client(settings: Settings):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.aws_access_key,
        aws_secret_access_key=settings.aws_secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
    )


class ObjectStore:
    """Thin wrapper over one bucket. Keys are relative to the bucket."""

    def __init__(self, settings: Settings, client=None):
        self.settings = settings
        self.bucket = settings.bucket
        self.client = client or s3_client(settings)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key(self, uri: str) -> str:
        """Inverse of uri(): the key of an s3:// URI in this bucket."""
        prefix = f"s3://{self.bucket}/"
        if not uri.startswith(prefix):
            raise ValueError(f"{uri!r} is not in bucket {self.bucket!r}")
        return uri[len(prefix):]

    def ensure_bucket(self) -> None:
        existing = {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}
        if self.bucket not in existing:
            self.client.create_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put_json(self, key: str, obj) -> None:
        self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def get_json(self, key: str):
        return json.loads(self.get_bytes(key))

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except Exception:
            return False

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)

    def head(self, key: str) -> dict:
        return self.client.head_object(Bucket=self.bucket, Key=key)

    def upload_file(self, path: Path | str, key: str, content_type: str | None = None) -> None:
        extra = {"ExtraArgs": {"ContentType": content_type}} if content_type else {}
        self.client.upload_file(str(path), self.bucket, key, **extra)

    def download_file(self, key: str, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            self.client.download_file(self.bucket, key, str(tmp))

    def write_table(self, table: pa.Table, key: str) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.put_bytes(key, buf.getvalue())

    def read_table(self, key: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.get_bytes(key)))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]}
            )
        return len(keys)

    # ----------------------------------------------------------------- conditional writes & listing

    # None until probed; then whether the server honours `If-None-Match: *` on PutObject. Set it
    # to True/False on an instance to skip the probe.
    conditional_writes: bool | None = None
    PROBE_PREFIX = "_probe/"

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` only if no object `key` exists; True if this call created it,
        False if an object was already there (it is left untouched).

        Uses PutObject with ``If-None-Match: *``: the server decides atomically (HTTP 412
        PreconditionFailed -> False). HTTP 409 ConditionalRequestConflict (AWS: a concurrent
        conditional write to the same key is in flight) -> False once the object is seen to
        exist, else the put is retried. Caveat: if our put lands but its response is lost and the
        client's own retry gets the 412, this returns False for what is in fact our object;
        callers that must know put an identifying token in `data` and compare (RunWriter does).

        On a server that ignores the header (detected once per instance, see
        supports_conditional_writes) it falls back to head -> put -> read back: False if the key
        existed, or if the stored bytes are not ours after the put (a concurrent writer's put
        landed after ours). Residual race of the fallback: two writers that both pass the head
        and both read back their own bytes (A puts, A reads, B puts, B reads) both get True, and
        the key ends with B's bytes."""
        if not self.supports_conditional_writes():
            return self._put_if_absent_read_back(key, data)
        from botocore.exceptions import ClientError

        for attempt in range(6):
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except ClientError as exc:
                status, code = _error_status(exc)
                if status == 412 or code == "PreconditionFailed":
                    return False
                if status == 409 or code == "ConditionalRequestConflict":
                    if self.head_or_none(key) is not None:
                        return False
                    time.sleep(0.05 * 2 ** attempt)  # the other writer failed or is still going
                    continue
                raise
        raise RuntimeError(f"put_bytes_if_absent({self.uri(key)}): conditional put kept conflicting "
                           "(HTTP 409) and the object never appeared")

    def _put_if_absent_read_back(self, key: str, data: bytes) -> bool:
        if self.head_or_none(key) is not None:
            return False
        self.put_bytes(key, data)
        return self.get_bytes(key) == data

    def supports_conditional_writes(self) -> bool:
        """Whether the server honours ``If-None-Match: *`` on PutObject. Probed once per instance
        (cached in `conditional_writes`): a put to a fresh scratch key under PROBE_PREFIX, then a
        second conditional put to the same key, which must be refused with 412; the scratch key
        is deleted. A server that rejects the header outright (400/501) counts as no support."""
        if self.conditional_writes is None:
            import uuid

            from botocore.exceptions import ClientError

            key = f"{self.PROBE_PREFIX}if-none-match/{uuid.uuid4().hex}"
            try:
                try:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=b"1", IfNoneMatch="*")
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=b"2", IfNoneMatch="*")
                    supported = False  # the second put overwrote: header ignored
                except ClientError as exc:
                    status, code = _error_status(exc)
                    if status == 412 or code == "PreconditionFailed":
                        supported = True
                    elif status in (400, 501) or code in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
                        supported = False
                    else:
                        raise
            finally:
                with contextlib.suppress(Exception):
                    self.client.delete_object(Bucket=self.bucket, Key=key)
            self.conditional_writes = supported
        return self.conditional_writes

    def head_or_none(self, key: str) -> dict | None:
        """head_object's answer, or None if `key` does not exist (other errors raise, unlike exists())."""
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise

    def get_bytes_or_none(self, key: str) -> bytes | None:
        """The object's bytes, or None if `key` does not exist (other errors raise)."""
        from botocore.exceptions import ClientError

        try:
            return self.get_bytes(key)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise

    def copy(self, src_key: str, dst_key: str) -> None:
        """Server-side copy within the bucket (CopyObject: single request, objects up to 5 GB).
        Raises FileNotFoundError if `src_key` does not exist."""
        from botocore.exceptions import ClientError

        try:
            self.client.copy_object(Bucket=self.bucket, Key=dst_key,
                                    CopySource={"Bucket": self.bucket, "Key": src_key})
        except ClientError as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(f"copy source {self.uri(src_key)} does not exist") from exc
            raise

    def list_objects(self, prefix: str) -> list[dict]:
        """Objects under `prefix`, sorted by key: dicts with Key, LastModified (aware datetime), Size."""
        out: list[dict] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend({"Key": o["Key"], "LastModified": o["LastModified"], "Size": o["Size"]}
                       for o in page.get("Contents", []))
        return sorted(out, key=lambda o: o["Key"])

    def delete_keys(self, keys) -> int:
        """Delete exactly these keys (missing ones are fine); raises if the server reports a failure."""
        keys = list(keys)
        for i in range(0, len(keys), 1000):
            resp = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True})
            errors = [e for e in resp.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise RuntimeError(f"delete failed for {len(errors)} key(s), first: {errors[0]}")
        return len(keys)


def _error_status(exc) -> tuple[int | None, str]:
    resp = getattr(exc, "response", None) or {}
    return resp.get("ResponseMetadata", {}).get("HTTPStatusCode"), str(resp.get("Error", {}).get("Code", ""))


def _is_not_found(exc) -> bool:
    status, code = _error_status(exc)
    return status == 404 or code in ("404", "NoSuchKey", "NotFound")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temp directory beside `path`; it replaces `path` only if the block succeeds."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path | str, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
