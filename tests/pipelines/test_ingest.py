"""Ingest: snapshot the raw batch manifest with ETags; fail clearly on an incomplete batch."""
from __future__ import annotations

import json

import pytest

from campaignops.pipelines import ingest, layout
from campaignops.validation.contract import TABLES


def land(store, batch="b1", with_manifest=True, skip_file=None):
    tables = {}
    for t in TABLES:
        key = f"{layout.raw_prefix(batch, t)}part-00000.parquet"
        if key != skip_file:
            store.put_bytes(key, f"{t}-bytes".encode())
        tables[t] = {"files": [key], "rows": 3}
    manifest = {"batch": batch, "now": "2026-05-20T00:00:00", "upcoming_campaign_id": "C9", "tables": tables,
                "truth": {"files": []}}
    if with_manifest:
        store.put_json(layout.raw_manifest_key(batch), manifest)
    return manifest


def test_ingest_snapshots_manifest_with_etags(workspace, store):
    manifest = land(store)
    out = ingest.ingest(workspace, batch="b1", store=store)
    snap = json.loads((workspace.workspace / layout.RAW_MANIFEST).read_text())
    assert snap["batch"] == "b1" and snap["now"] == manifest["now"] and snap["upcoming_campaign_id"] == "C9"
    for t in TABLES:
        assert snap["tables"][t]["files"] == manifest["tables"][t]["files"]  # original shape kept
        (obj,) = snap["tables"][t]["objects"]
        assert obj["key"] == manifest["tables"][t]["files"][0]
        assert obj["size"] == len(f"{t}-bytes") and obj["etag"] and '"' not in obj["etag"]
        assert out["tables"][t] == {"files": 1, "rows": 3, "bytes": len(f"{t}-bytes")}
    json.dumps(out)  # XCom-serializable

    # deterministic for unchanged data; changes when a raw file changes (DVC dependency)
    first = (workspace.workspace / layout.RAW_MANIFEST).read_bytes()
    ingest.ingest(workspace, batch="b1", store=store)
    assert (workspace.workspace / layout.RAW_MANIFEST).read_bytes() == first
    store.put_bytes(manifest["tables"]["events"]["files"][0], b"new events")
    ingest.ingest(workspace, batch="b1", store=store)
    assert (workspace.workspace / layout.RAW_MANIFEST).read_bytes() != first


def test_ingest_defaults_to_params_batch(workspace, store):
    land(store, batch=workspace.params["data"]["batch"])
    assert ingest.ingest(workspace, store=store)["batch"] == workspace.params["data"]["batch"]


def test_ingest_without_manifest_fails_clearly(workspace, store):
    land(store, with_manifest=False)
    with pytest.raises(ingest.BatchNotReady, match=r"raw batch 'b1' has no manifest at s3://campaignops/raw/b1/_manifest.json"):
        ingest.ingest(workspace, batch="b1", store=store)
    assert not (workspace.workspace / layout.RAW_MANIFEST).exists()


def test_ingest_with_missing_listed_file_fails(workspace, store):
    land(store, skip_file=f"{layout.raw_prefix('b1', 'events')}part-00000.parquet")
    with pytest.raises(ingest.BatchNotReady, match=r"events/part-00000.parquet but it does not exist"):
        ingest.ingest(workspace, batch="b1", store=store)


def test_ingest_manifest_missing_a_table_fails(workspace, store):
    manifest = land(store, with_manifest=False)
    del manifest["tables"]["exposures"]
    store.put_json(layout.raw_manifest_key("b1"), manifest)
    with pytest.raises(ingest.BatchNotReady, match="exposures"):
        ingest.ingest(workspace, batch="b1", store=store)


# --------------------------------------------------------------------------- the safe-id rule

UNSAFE_IDS = ["../../etc", "..", ".", ".hidden", "a/b", "a\\b", "/etc", "", " ", "a b", "-rf", "ü", "a:b", "a\nb",
              "ok\n", "x" * 65, "raw/../x", None, 7]


@pytest.mark.parametrize("batch", UNSAFE_IDS)
def test_ingest_refuses_an_unsafe_batch_id_before_reading(workspace, store, batch):
    from campaignops.pipelines.inputs import UnsafeId

    land(store)   # something to find, were the id used as a key
    with pytest.raises(UnsafeId, match="not a safe id"):
        if batch:
            ingest.ingest(workspace, batch=batch, store=store)
        else:   # ingest reads a missing batch as params data.batch; producers get it as given
            ingest.landed_manifest(store, batch)
    assert not (workspace.workspace / layout.RAW_MANIFEST).exists()


def test_producers_cannot_land_or_commit_under_an_unsafe_batch_id(store):
    from campaignops.pipelines.inputs import UnsafeId

    with pytest.raises(UnsafeId):
        ingest.landed_manifest(store, "../raw/b1")
    with pytest.raises(UnsafeId):
        ingest.commit_batch(store, "../../etc", {"batch": "../../etc", "tables": {}}, [])
    assert store.list_keys("") == []


@pytest.mark.parametrize("batch", ["b1", "2026-06-03", "hillstrom_2008", "fold.3-of-5", "A" * 64, "0"])
def test_safe_ids_pass_unchanged(batch):
    from campaignops.pipelines.inputs import check_id, is_safe_id

    assert is_safe_id(batch) and check_id(batch, "batch") == batch
