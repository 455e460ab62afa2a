"""Issue 17 item 2: an object altered in the DVC remote (S3, here a moto server) must not reach the
workspace. Without content verification `dvc pull` exits 0 with wrong data and `dvc status` clean
(the first test pins that DVC behaviour); pipelines/versioning.py turns DVC's remote `verify` on,
and its `pull` fails naming the workspace file whose remote object is corrupted."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from campaignops.pipelines import ingest, layout, versioning
from dvc_project import BIN, start_project
from worlds import land_world, small_world

pytestmark = pytest.mark.skipif(not (BIN / "dvc").exists(), reason="dvc not installed in the venv")

BATCH = "remote1"
TABLE = "events.parquet"     # the validated file whose remote object is altered


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A project whose validate stage ran and pushed data/validated to the S3 remote; yields
    (project, good bytes of each validated file)."""
    project, stop = start_project(tmp_path_factory.mktemp("dvc-remote"))
    try:
        settings = project.settings
        land_world(project.store, small_world(users=40), BATCH)
        ingest.ingest(settings, batch=BATCH, store=project.store)
        assert versioning.repro(settings, "validate")["ran"]
        vdir = settings.workspace / layout.VALIDATED_DIR
        yield project, {p.name: p.read_bytes() for p in vdir.iterdir()}
    finally:
        stop()


def _corrupt_remote_object(project, name: str) -> str:
    """Flip bytes in the middle of the remote object holding data/validated/<name>; returns its key."""
    lock = project.repo / "dvc.lock"
    import yaml

    out = next(o for o in yaml.safe_load(lock.read_text())["stages"]["validate"]["outs"]
               if o["path"] == "data/validated")
    listing_key = f"dvc/files/md5/{out['md5'][:2]}/{out['md5'][2:]}"
    entry = next(e for e in json.loads(project.store.get_bytes(listing_key)) if e["relpath"] == name)
    key = f"dvc/files/md5/{entry['md5'][:2]}/{entry['md5'][2:]}"
    data = bytearray(project.store.get_bytes(key))
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    project.store.put_bytes(key, bytes(data))
    return key


def _forget_local_copies(project) -> None:
    shutil.rmtree(project.repo / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(project.repo / layout.VALIDATED_DIR, ignore_errors=True)


def test_without_verify_dvc_pulls_a_corrupted_object_silently(pushed):
    """The fault as the probe found it, with the remote configured as before the fix."""
    project, good = pushed
    key = _corrupt_remote_object(project, TABLE)
    try:
        _forget_local_copies(project)
        project.dvc("remote", "modify", "--local", "store", "verify", "false")
        pulled = project.dvc("pull", "data/validated", check=False)
        assert pulled.returncode == 0, pulled.stderr
        got = (project.repo / layout.VALIDATED_DIR / TABLE).read_bytes()
        assert got != good[TABLE] and len(got) == len(good[TABLE])          # wrong data in the workspace ...
        assert "up to date" in project.dvc("status", "validate").stdout      # ... and DVC says all is well
    finally:
        project.store.put_bytes(key, good[TABLE])


def test_pull_of_a_corrupted_remote_object_fails_naming_the_file(pushed):
    project, good = pushed
    key = _corrupt_remote_object(project, TABLE)
    try:
        _forget_local_copies(project)
        with pytest.raises(versioning.CorruptRemoteData) as err:
            versioning.pull(project.settings, "data/validated")
        msg = str(err.value)
        assert f"data/validated/{TABLE}" in msg and project.store.uri(key) in msg, msg
        assert "users.parquet" not in msg      # only the altered object is named
        path = project.repo / layout.VALIDATED_DIR / TABLE
        assert not path.exists() or hashlib.md5(path.read_bytes()).hexdigest() == hashlib.md5(good[TABLE]).hexdigest()
    finally:
        project.store.put_bytes(key, good[TABLE])
    # the object restored, the same pull succeeds and the workspace holds the pushed bytes
    _forget_local_copies(project)
    versioning.pull(project.settings, "data/validated")
    vdir = project.repo / layout.VALIDATED_DIR
    assert {p.name: p.read_bytes() for p in vdir.iterdir()} == good


def test_the_pipeline_remote_verifies_downloads(pushed):
    project, _ = pushed
    versioning.configure_remote(project.settings)
    assert project.dvc("config", "--local", "remote.store.verify").stdout.strip() == "true"
