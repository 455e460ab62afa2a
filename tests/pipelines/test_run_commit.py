"""Atomic, idempotent run commit (pipelines/run_commit.py) on moto: visibility only through the
manifest, one winner per run, orphan cleanup with a grace period, verified reads, deterministic
parts; and SIGKILL at each failpoint of a writer process, then a clean rerun."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from botocore.exceptions import ClientError

from campaignops.config import Settings
from campaignops.pipelines import failpoints, run_commit
from campaignops.pipelines.run_commit import (RunCorrupt, RunWriter, cleanup_orphans, committed_runs, part_bytes,
                                              read_run, update_latest, write_run)
from campaignops.pipelines.storage import ObjectStore

ROOT = Path(__file__).resolve().parents[2]


def _table(seed: int, n: int = 50) -> pa.Table:
    return pa.table({"user_id": [f"u{seed}-{i}" for i in range(n)],
                     "p": [((i * 7919 + seed) % 1000) / 1000 for i in range(n)],
                     "variant_id": [None if i % 3 == 0 else f"v{i % 2}" for i in range(n)]})


def _keys(store, prefix="scores/"):
    return store.list_keys(prefix)


# --------------------------------------------------------------------------- ObjectStore additions


def test_put_bytes_if_absent_native_on_moto(store):
    assert store.supports_conditional_writes() is True
    assert store.list_keys("_probe/") == []          # the probe cleans up after itself
    assert store.put_bytes_if_absent("k", b"first") is True
    assert store.put_bytes_if_absent("k", b"second") is False
    assert store.get_bytes("k") == b"first"


class _IgnoresConditions:
    """An S3 client that drops If-None-Match, like a server that does not implement it."""

    def __init__(self, client):
        self._client = client

    def put_object(self, **kw):
        kw.pop("IfNoneMatch", None)
        return self._client.put_object(**kw)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_put_bytes_if_absent_falls_back_when_the_server_ignores_the_header(workspace, store):
    old = ObjectStore(workspace, client=_IgnoresConditions(store.client))
    assert old.supports_conditional_writes() is False and old.list_keys("_probe/") == []
    assert old.put_bytes_if_absent("k", b"first") is True
    assert old.put_bytes_if_absent("k", b"second") is False
    assert old.get_bytes("k") == b"first"


def test_commit_on_a_server_without_conditional_writes(workspace, store):
    old = ObjectStore(workspace, client=_IgnoresConditions(store.client))
    a, b = RunWriter(old, "scores/C/r/", "r"), RunWriter(old, "scores/C/r/", "r")
    a.write_part(_table(1))
    b.write_part(_table(2))
    won_a = a.commit({})
    assert won_a[1] and won_a[0]["commit"]["conditional_put"] == "read-back"
    assert b.commit({}) == (won_a[0], False)
    assert old.list_keys("scores/") == sorted(["scores/C/latest.json", "scores/C/r/manifest.json",
                                               won_a[0]["parts"][0]["key"]])


class _ConflictOnce:
    """First conditional put answers 409 ConditionalRequestConflict (AWS: a concurrent conditional
    write to the key is in flight); `land` says whether the other writer's object appears."""

    def __init__(self, client, land: bool):
        self._client, self.land, self.calls = client, land, 0

    def put_object(self, **kw):
        self.calls += 1
        if self.calls == 1:
            if self.land:
                self._client.put_object(Bucket=kw["Bucket"], Key=kw["Key"], Body=b"theirs")
            raise ClientError({"Error": {"Code": "ConditionalRequestConflict", "Message": "x"},
                               "ResponseMetadata": {"HTTPStatusCode": 409}}, "PutObject")
        return self._client.put_object(**kw)

    def __getattr__(self, name):
        return getattr(self._client, name)


@pytest.mark.parametrize("land", [True, False])
def test_put_bytes_if_absent_409_conflict(workspace, store, land):
    s = ObjectStore(workspace, client=_ConflictOnce(store.client, land))
    s.conditional_writes = True
    assert s.put_bytes_if_absent("k", b"ours") is (not land)
    assert s.get_bytes("k") == (b"theirs" if land else b"ours")


def test_copy_list_objects_delete_keys(store):
    store.put_bytes("a/x", b"123")
    store.copy("a/x", "b/y")
    assert store.get_bytes("b/y") == b"123"
    with pytest.raises(FileNotFoundError, match="a/missing"):
        store.copy("a/missing", "b/z")
    (obj,) = store.list_objects("b/")
    assert obj["Key"] == "b/y" and obj["Size"] == 3 and obj["LastModified"].tzinfo is not None
    assert store.delete_keys(["a/x", "b/y", "never/was"]) == 3 and store.list_keys("") == []
    assert store.head_or_none("a/x") is None and store.get_bytes_or_none("a/x") is None


# --------------------------------------------------------------------------- protocol


def test_part_bytes_are_deterministic(store):
    t = _table(1, 500)
    again = pa.Table.from_pylist(t.to_pylist(), schema=t.schema)  # equal, built independently
    assert part_bytes(t) == part_bytes(again) == part_bytes(t)
    a = RunWriter(store, "scores/C/r/", "r").write_part(t)
    b = RunWriter(store, "scores/C/r/", "r").write_part(again)
    assert a["key"] != b["key"] and a["sha256"] == b["sha256"] and a["bytes"] == b["bytes"]
    assert store.get_bytes(a["key"]) == store.get_bytes(b["key"])


def test_run_is_visible_only_after_the_manifest(store):
    w = RunWriter(store, "scores/C005/r1/", "r1")
    parts = [w.write_part(_table(i)) for i in range(3)]
    assert all(p["key"].startswith("scores/C005/r1/_tmp/") for p in parts)
    assert w.existing() is None and committed_runs(store, "scores/C005/") == []
    assert not store.exists("scores/C005/latest.json")

    manifest, won = w.commit({"campaign_id": "C005", "score_run_id": "r1"})
    assert won and manifest == w.existing() and manifest["rows"] == 150
    assert [p["sha256"] for p in manifest["parts"]] == [p["sha256"] for p in parts]
    assert manifest["commit"]["run_id"] == "r1" and manifest["commit"]["conditional_put"] == "if-none-match"
    assert committed_runs(store, "scores/C005/") == [manifest]
    assert read_run(store, manifest).equals(pa.concat_tables([_table(i) for i in range(3)]))
    # staging is gone; only the manifest, the listed parts and latest.json remain
    assert _keys(store) == sorted(["scores/C005/latest.json", "scores/C005/r1/manifest.json",
                                   *(p["key"] for p in manifest["parts"])])
    latest = store.get_json("scores/C005/latest.json")
    assert latest["manifest"] == store.uri("scores/C005/r1/manifest.json") and latest["score_run_id"] == "r1"


def test_second_writer_of_the_same_run_loses_and_gets_the_winners_manifest(store):
    a = RunWriter(store, "scores/C/r/", "r")
    b = RunWriter(store, "scores/C/r/", "r")
    for i in range(2):
        a.write_part(_table(i))
        b.write_part(_table(i + 10))  # different bytes: different final keys
    won_a, won_b = a.commit({"who": "a"}), b.commit({"who": "b"})
    assert won_a[1] is True and won_b == (won_a[0], False)
    assert not [k for k in _keys(store) if "/_tmp/" in k]
    assert read_run(store, won_b[0]).equals(pa.concat_tables([_table(0), _table(1)]))
    assert RunWriter(store, "scores/C/r/", "r").existing() == won_a[0]


def test_loser_that_copied_its_parts_before_losing_leaves_nothing(store, monkeypatch):
    """Writer b copies its (different) parts to final keys, then a commits before b's manifest
    put: b's put is refused, b returns a's manifest, and only a's parts remain."""
    a, b = RunWriter(store, "scores/C/r/", "r"), RunWriter(store, "scores/C/r/", "r")
    a.write_part(_table(1))
    b.write_part(_table(2))
    results = {}

    def hit(name):
        if name == "before_commit" and "a" not in results:
            results["a"] = None
            results["a"] = a.commit({"who": "a"})

    monkeypatch.setattr(run_commit.failpoints, "hit", hit)
    manifest_b, won_b = b.commit({"who": "b"})
    manifest_a, won_a = results["a"]
    assert won_a and not won_b and manifest_b == manifest_a and manifest_a["who"] == "a"
    assert _keys(store) == sorted(["scores/C/latest.json", "scores/C/r/manifest.json", manifest_a["parts"][0]["key"]])


def test_commit_whose_answer_was_lost_is_still_ours(store, monkeypatch):
    """The manifest put landed but the client saw 412 (its retry hit our own object)."""
    w = RunWriter(store, "scores/C/r/", "r")
    w.write_part(_table(1))

    def landed_but_refused(key, data):
        store.put_bytes(key, data)
        return False

    monkeypatch.setattr(store, "put_bytes_if_absent", landed_but_refused)
    manifest, won = w.commit({})
    assert won and manifest["commit"]["attempt"] == w.attempt


def test_commit_checks_its_input(store):
    w = RunWriter(store, "scores/C/r/", "r")
    with pytest.raises(ValueError, match="at least one part"):
        w.commit({})
    w.write_part(_table(1))
    with pytest.raises(ValueError, match="set by commit"):
        w.commit({"parts": []})
    with pytest.raises(ValueError, match="rows=7"):
        w.commit({"rows": 7})
    with pytest.raises(ValueError, match="end with '/'"):
        RunWriter(store, "scores/C/r", "r")


def test_write_run_is_a_no_op_when_the_run_exists(store):
    first, won = write_run(store, "scores/C/r/", "r", (_table(i) for i in range(2)), {"n": 1})
    assert won

    def never():
        raise AssertionError("tables must not be computed for an existing run")
        yield

    again, won = write_run(store, "scores/C/r/", "r", never(), {"n": 2})
    assert not won and again == first


def test_write_run_aborts_on_error(store):
    def boom():
        yield _table(1)
        raise RuntimeError("scoring failed")

    with pytest.raises(RuntimeError, match="scoring failed"):
        write_run(store, "scores/C/r/", "r", boom(), {})
    assert _keys(store) == []


def test_cleanup_orphans_respects_the_grace_period(store):
    # committed run with a stray attempt: garbage whatever its age
    done, _ = write_run(store, "scores/C/done/", "done", [_table(1)], {}, cleanup_grace_s=None)
    RunWriter(store, "scores/C/done/", "done", attempt="stray").write_part(_table(9))
    # a run in flight (or killed): staged parts of two attempts and a final copy, no manifest
    w = RunWriter(store, "scores/C/open/", "open", attempt="a1")
    w.write_part(_table(2))
    RunWriter(store, "scores/C/open/", "open", attempt="a2").write_part(_table(3))
    store.copy(w._parts[0]["key"], w._parts[0]["final"])
    # files this module does not own: a pre-RunWriter run, a note
    store.put_bytes("scores/C/legacy/scores.parquet", part_bytes(_table(4)))
    store.put_json("scores/C/legacy/manifest.json", {"output": store.uri("scores/C/legacy/scores.parquet")})
    store.put_bytes("scores/C/open/NOTES.txt", b"hands off")
    before = _keys(store)

    assert cleanup_orphans(store, "scores/C/", grace_s=3600) == ["scores/C/done/_tmp/stray/part-00000.parquet"]
    assert cleanup_orphans(store, "scores/C/", grace_s=3600) == []
    assert sorted(cleanup_orphans(store, "scores/C/", grace_s=0, keep={"scores/C/open/_tmp/a2/"})) == sorted(
        ["scores/C/open/_tmp/a1/part-00000.parquet", w._parts[0]["final"]])
    assert cleanup_orphans(store, "scores/C/", grace_s=0) == ["scores/C/open/_tmp/a2/part-00000.parquet"]
    assert set(before) - set(_keys(store)) == {"scores/C/done/_tmp/stray/part-00000.parquet",
                                               "scores/C/open/_tmp/a1/part-00000.parquet",
                                               "scores/C/open/_tmp/a2/part-00000.parquet", w._parts[0]["final"]}
    assert read_run(store, done).equals(_table(1))
    assert read_run(store, store.get_json("scores/C/legacy/manifest.json")).equals(_table(4))


def test_read_run_names_a_tampered_or_missing_part(store):
    manifest, _ = write_run(store, "scores/C/r/", "r", [_table(1), _table(2)], {})
    key = manifest["parts"][1]["key"]
    store.put_bytes(key, part_bytes(_table(3)))
    with pytest.raises(RunCorrupt, match=f"{key}: sha256"):
        read_run(store, manifest)
    store.delete_keys([key])
    with pytest.raises(RunCorrupt, match=f"{key} is listed in the manifest but missing"):
        read_run(store, manifest)


def test_latest_only_moves_forward_and_only_to_committed_runs(store):
    old, _ = write_run(store, "scores/C/old/", "old", [_table(1)], {})
    new, _ = write_run(store, "scores/C/new/", "new", [_table(2)], {})
    assert store.get_json("scores/C/latest.json")["run_id"] == "new"
    assert update_latest(store, "scores/C/", old) is False          # a repeated old request
    assert write_run(store, "scores/C/old/", "old", [], {})[1] is False
    assert store.get_json("scores/C/latest.json")["run_id"] == "new"
    forged = json.loads(json.dumps(new))
    forged["commit"]["attempt"] = "someone-else"
    with pytest.raises(ValueError, match="not this manifest"):
        update_latest(store, "scores/C/", forged)
    assert [m["commit"]["run_id"] for m in committed_runs(store, "scores/C/")] == ["old", "new"]


def test_failpoint_is_inert_unless_selected(monkeypatch):
    monkeypatch.delenv(failpoints.ENV, raising=False)
    failpoints.hit("before_commit")
    monkeypatch.setenv(failpoints.ENV, "other:1")
    failpoints.hit("before_commit")
    monkeypatch.setenv(failpoints.ENV, "before_commit:3")
    failpoints.hit("before_commit")   # 1st and 2nd hits pass
    failpoints.hit("before_commit")


# --------------------------------------------------------------------------- SIGKILL at each failpoint

CHILD = r"""
import json, sys
import pyarrow as pa
from campaignops.config import load_settings
from campaignops.pipelines.run_commit import write_run
from campaignops.pipelines.storage import ObjectStore

campaign, run_id = sys.argv[1], sys.argv[2]

def parts():
    for i in range(3):
        n = 20000
        yield pa.table({"user_id": [f"u{i}-{j}" for j in range(n)],
                        "p": [((j * 7919 + i) % 10007) / 10007 for j in range(n)],
                        "variant_id": [None if j % 3 == 0 else f"v{(j + i) % 4}" for j in range(n)]})

manifest, won = write_run(ObjectStore(load_settings()), f"scores/{campaign}/{run_id}/", run_id, parts(),
                          {"campaign_id": campaign, "score_run_id": run_id}, cleanup_grace_s=0)
print(json.dumps({"won": won, "manifest": manifest}))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend(tmp: Path, endpoint: str, key: str, secret: str, bucket: str | None = None) -> dict:
    ws = tmp / "ws"
    ws.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "params.yaml", ws / "params.yaml")
    settings = Settings(workspace=ws, state_dir=tmp / "state", env={"AWS_ACCESS_KEY_ID": key,
                                                                   "AWS_SECRET_ACCESS_KEY": secret})
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                          aws_secret_access_key=secret, config=Config(s3={"addressing_style": "path"}))
    store = ObjectStore(settings, client=client)
    store.bucket = bucket or store.bucket
    store.ensure_bucket()
    env = {k: v for k, v in os.environ.items() if k not in (failpoints.ENV, "PYTHONDONTWRITEBYTECODE")}
    # The writer processes share a bytecode cache here: where the environment disables bytecode
    # writing (PYTHONDONTWRITEBYTECODE), each would otherwise compile pandas/boto3/pyarrow anew (~2 s).
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    env.update({"CAMPAIGNOPS_WORKSPACE": str(ws), "CAMPAIGNOPS_STATE": str(tmp / "state"),
                "CAMPAIGNOPS_S3_ENDPOINT": endpoint, "CAMPAIGNOPS_BUCKET": store.bucket,
                "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret})
    return {"store": store, "env": env, "reference": {}}


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield _backend(tmp_path_factory.mktemp("moto"), f"http://127.0.0.1:{port}", "test", "test")
    finally:
        server.stop()


def _run_child(backend: dict, campaign: str, failpoint: str | None) -> subprocess.CompletedProcess:
    env = dict(backend["env"])
    if failpoint:
        env[failpoints.ENV] = failpoint
    return subprocess.run([sys.executable, "-c", CHILD, campaign, "run-1"], env=env, capture_output=True,
                          text=True, timeout=120)


def _part_bytes_by_name(store, manifest) -> dict[str, bytes]:
    return {p["key"].rsplit("/", 1)[1]: store.get_bytes(p["key"]) for p in manifest["parts"]}


def _reference(backend: dict) -> dict[str, bytes]:
    if not backend["reference"]:
        done = _run_child(backend, "REF", None)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["won"]
        backend["reference"].update(_part_bytes_by_name(backend["store"], out["manifest"]))
    return backend["reference"]


def _kill_then_rerun(backend: dict, failpoint: str) -> None:
    store = backend["store"]
    reference = _reference(backend)
    campaign = "K-" + failpoint.replace(":", "-")
    prefix = f"scores/{campaign}/"

    killed = _run_child(backend, campaign, failpoint)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    left = store.list_keys(prefix)
    assert any("/_tmp/" in k for k in left), left           # the kill left staging behind
    committed = failpoint in ("after_commit", "latest_moved")
    assert store.exists(prefix + "latest.json") is (failpoint == "latest_moved")
    runs = committed_runs(store, prefix)
    if committed:
        assert len(runs) == 1 and _part_bytes_by_name(store, runs[0]) == reference
    else:
        assert runs == [] and not store.exists(prefix + "run-1/manifest.json")
        staged = [k for k in left if "/_tmp/" in k]
        expected = {"part_uploaded:1": 1, "part_uploaded:2": 2}.get(failpoint, 3)
        assert len(staged) == expected

    rerun = _run_child(backend, campaign, None)
    assert rerun.returncode == 0, rerun.stderr
    out = json.loads(rerun.stdout)
    assert out["won"] is (not committed)                 # committed: the rerun is a no-op
    (manifest,) = committed_runs(store, prefix)
    assert out["manifest"] == manifest and read_run(store, manifest).num_rows == 60000
    assert _part_bytes_by_name(store, manifest) == reference     # byte-identical to an uninterrupted run
    assert store.list_keys(prefix) == sorted([prefix + "latest.json", prefix + "run-1/manifest.json",
                                              *(p["key"] for p in manifest["parts"])])
    assert store.get_json(prefix + "latest.json")["manifest"] == store.uri(prefix + "run-1/manifest.json")


FAILPOINTS = ["part_uploaded:1", "part_uploaded:2", "part_copied:2", "before_commit", "after_commit", "latest_moved"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_sigkill_at_a_failpoint_leaves_no_partial_run_and_a_rerun_repairs(moto_server, failpoint):
    _kill_then_rerun(moto_server, failpoint)


# --------------------------------------------------------------------------- the real SeaweedFS (e2e)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    """The project's SeaweedFS (infra/stack.py, s3 only) on free ports in a temp state dir."""
    from campaignops.infra import stack
    from campaignops.infra.sandbox import PORTS, free_port

    tmp = tmp_path_factory.mktemp("seaweed")
    ws = tmp / "ws"
    ws.mkdir()
    shutil.copy(ROOT / "params.yaml", ws / "params.yaml")
    saved = dict(os.environ)
    os.environ.update({"CAMPAIGNOPS_WORKSPACE": str(ws), "CAMPAIGNOPS_STATE": str(tmp / "state")})
    os.environ.update({f"CAMPAIGNOPS_{n.upper()}_PORT": str(free_port()) for n in PORTS})
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CAMPAIGNOPS_S3_ENDPOINT"):
        os.environ.pop(k, None)
    from campaignops.config import load_settings

    settings = load_settings()
    try:
        stack.up(settings, services=("s3",))
        yield _backend(tmp / "client", settings.s3_endpoint, settings.env["AWS_ACCESS_KEY_ID"],
                       settings.env["AWS_SECRET_ACCESS_KEY"], bucket=settings.bucket)
    finally:
        try:
            stack.down(settings, services=("s3",))
        finally:
            os.environ.clear()
            os.environ.update(saved)


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_seaweedfs_honours_if_none_match_and_survives_kills(seaweed):
    store = seaweed["store"]
    assert store.supports_conditional_writes() is True
    assert store.put_bytes_if_absent("probe/k", b"first") is True
    assert store.put_bytes_if_absent("probe/k", b"second") is False
    assert store.get_bytes("probe/k") == b"first"
    for failpoint in FAILPOINTS:
        _kill_then_rerun(seaweed, failpoint)
