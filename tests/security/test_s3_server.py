"""The embedded S3 server (the project's SeaweedFS, infra/stack.py, s3 only, free ports) against the
probe of issue 17: its admin HTTP API refuses unauthenticated calls and the data survives them, the
S3 API still works with the credentials (conditional puts, multipart, copy), the bucket keeps
versions so a deleted or overwritten object can be recovered, and its log holds no access key id."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]   # ~8 s: a real server

# Unauthenticated admin calls a web page or any local process could send to the master's HTTP port.
MASTER_ADMIN_CALLS = [
    ("GET", "/col/delete?collection={bucket}"),
    ("POST", "/col/delete?collection={bucket}"),
    ("GET", "/vol/grow?count=1&collection={bucket}"),
    ("GET", "/vol/vacuum?garbageThreshold=0.0001"),
    ("GET", "/dir/assign?collection={bucket}"),
    ("POST", "/submit?collection={bucket}"),
]


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    """Settings of a running SeaweedFS with the project's bucket, from infra/stack.py."""
    from campaignops.infra.sandbox import running_stack

    tmp = tmp_path_factory.mktemp("s3sec")
    (tmp / "ws").mkdir()
    shutil.copy(ROOT / "params.yaml", tmp / "ws" / "params.yaml")
    with running_stack(tmp / "ws", tmp / "state", services=("s3",), stop_timeout=2) as settings:
        yield settings


@pytest.fixture(scope="module")
def store(seaweed):
    from campaignops.pipelines.storage import ObjectStore

    return ObjectStore(seaweed)


@pytest.mark.parametrize("method,path", MASTER_ADMIN_CALLS)
def test_master_admin_call_without_credentials_is_refused_and_data_survives(seaweed, store, method, path):
    key = "probe/admin-call.json"
    store.put_json(key, {"kept": True})
    url = f"http://{seaweed.host}:{seaweed.port('weed_master')}" + path.format(bucket=seaweed.bucket)
    files = {"file": ("x.txt", b"injected")} if path.startswith("/submit") else None
    r = requests.request(method, url, files=files, timeout=10)
    assert r.status_code in (401, 403, 404, 405), (method, path, r.status_code, r.text[:200])
    assert store.get_json(key) == {"kept": True}
    assert key in store.list_keys("probe/")


def test_filer_http_is_no_side_door(seaweed, store):
    store.put_json("probe/filer.json", {"kept": True})
    base = f"http://{seaweed.host}:{seaweed.port('weed_filer')}/buckets/{seaweed.bucket}/probe"
    assert requests.get(f"{base}/filer.json", timeout=10).status_code in (401, 404)
    assert requests.delete(f"{base}/filer.json", timeout=10).status_code in (401, 404)
    assert requests.post(f"{base}/injected.txt", files={"file": ("i", b"x")}, timeout=10).status_code in (401, 404)
    assert store.get_json("probe/filer.json") == {"kept": True}
    assert not store.exists("probe/injected.txt")


def test_s3_with_credentials_still_works(seaweed, store, tmp_path):
    """What the pipeline uses: put/get/list, conditional put, multipart upload, copy, delete."""
    store.put_bytes("works/a.bin", b"a")
    assert store.get_bytes("works/a.bin") == b"a"
    assert store.supports_conditional_writes()
    assert store.put_bytes_if_absent("works/once.json", b"1") is True
    assert store.put_bytes_if_absent("works/once.json", b"2") is False
    assert store.get_bytes("works/once.json") == b"1"
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (12 * 1024 * 4))   # 12 MiB: over boto3's 8 MiB multipart threshold
    store.upload_file(big, "works/big.bin")
    out = tmp_path / "back.bin"
    store.download_file("works/big.bin", out)
    assert out.read_bytes() == big.read_bytes()
    store.copy("works/a.bin", "works/a-copy.bin")
    assert store.get_bytes("works/a-copy.bin") == b"a"
    store.delete_keys(["works/a.bin", "works/once.json"])
    assert sorted(store.list_keys("works/")) == ["works/a-copy.bin", "works/big.bin"]
    assert not store.exists("works/once.json") and store.get_bytes_or_none("works/once.json") is None
    assert store.put_bytes_if_absent("works/once.json", b"3") is True    # a delete marker is no object
    assert store.get_bytes("works/once.json") == b"3"


def test_bucket_versioning_recovers_deleted_and_overwritten_objects(seaweed, store):
    client, bucket, key = store.client, seaweed.bucket, "versioned/model.json"
    assert client.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"
    store.put_bytes(key, b"v1")
    store.put_bytes(key, b"v2")
    client.delete_object(Bucket=bucket, Key=key)
    assert not store.exists(key)
    listing = client.list_object_versions(Bucket=bucket, Prefix=key)
    assert len(listing.get("DeleteMarkers", [])) == 1
    bodies = {client.get_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])["Body"].read(): v["VersionId"]
              for v in listing["Versions"]}
    assert set(bodies) == {b"v1", b"v2"}
    # Recover the overwritten first version: copy it back as the current object.
    client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key, "VersionId": bodies[b"v1"]})
    assert store.get_bytes(key) == b"v1"


def test_s3_log_holds_no_access_key_id(seaweed, store):
    import boto3
    import botocore

    from campaignops.infra import stack

    store.put_bytes("probe/log.txt", b"x")
    store.get_bytes("probe/log.txt")
    store.list_keys("probe/")
    wrong = boto3.client("s3", endpoint_url=seaweed.s3_endpoint, region_name="us-east-1",
                         aws_access_key_id=seaweed.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError):
        wrong.list_objects_v2(Bucket=seaweed.bucket)
    text = stack.logfile(seaweed, "s3").read_text(errors="replace")
    assert "starting s3" in text            # the log is the one the server writes to
    assert seaweed.env["AWS_ACCESS_KEY_ID"] not in text
    assert seaweed.env["AWS_SECRET_ACCESS_KEY"] not in text


# One read-only call per gRPC service weed serves (an empty request message is valid protobuf).
GRPC_CALLS = {"weed_master": "/master_pb.Seaweed/GetMasterConfiguration",
              "weed_volume": "/volume_server_pb.VolumeServer/VolumeServerStatus",
              "weed_filer": "/filer_pb.SeaweedFiler/GetFilerConfiguration"}


def _grpc_call(port: int, method: str, credentials=None, timeout: float = 10):
    import grpc

    target = f"127.0.0.1:{port}"
    channel = (grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", "localhost")])
               if credentials else grpc.insecure_channel(target))
    with channel:
        return channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)(
            b"", timeout=timeout)


@pytest.mark.parametrize("component", sorted(GRPC_CALLS))
def test_grpc_ports_answer_only_the_stacks_certificate(seaweed, component):
    """Any local process could call weed's gRPC API (CollectionDelete included) before; now each port
    is mutual TLS: plaintext and TLS without a client certificate are refused, the stack's own
    certificate (what weed's components and S3 gateway use) is answered."""
    import json

    import grpc

    from campaignops.infra import seaweed_tls, stack

    conf = seaweed.state_dir / "s3"
    port = json.loads((conf / stack.GRPC_PORTS_FILE).read_text())[component]
    tls = seaweed_tls.files(conf / "tls")
    ca, cert, key = (tls[k].read_bytes() for k in ("ca", "cert", "key"))
    for label, creds in (("plaintext", None),
                         ("TLS without a client certificate", grpc.ssl_channel_credentials(root_certificates=ca))):
        with pytest.raises(grpc.RpcError) as refused:
            _grpc_call(port, GRPC_CALLS[component], creds)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED), \
            (label, refused.value.code(), refused.value.details())
    answer = _grpc_call(port, GRPC_CALLS[component], grpc.ssl_channel_credentials(ca, key, cert))
    assert isinstance(answer, bytes)
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in tls.values())
