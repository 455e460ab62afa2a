"""Pseudonymous ids in everything persisted under data/features; real ids only at scoring time."""
from __future__ import annotations

import json
import os
import stat
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.pipelines import features, layout, privacy, scoring_frames
from campaignops.validation.contract import CONTROL

from test_features import T0, ev, exposure, points, write_world

RAW_IDS = ("user-alpha", "user-bravo", "exp-0001", "exp-0002")


def _world(ws):
    x_ts = T0 + timedelta(days=2)
    evs = [ev(1, "user-alpha", "browse", "c01", x_ts - timedelta(hours=3)),
           ev(2, "user-bravo", "cart", "c02", x_ts - timedelta(hours=2))]
    xs = [exposure(1, "user-alpha", "C1-V1", x_ts, 1), exposure(2, "user-bravo", CONTROL, x_ts)]
    for x, xid in zip(xs, RAW_IDS[2:]):
        x["exposure_id"] = xid
    write_world(ws, evs, xs, users=("user-alpha", "user-bravo"))


def test_salt_file_is_created_once_with_mode_0600(workspace, monkeypatch):
    monkeypatch.delenv(privacy.SALT_ENV, raising=False)
    salt = privacy.id_salt(workspace)
    path = workspace.state_dir / privacy.SALT_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(salt) >= 32
    assert privacy.id_salt(workspace) == salt  # stable
    monkeypatch.setenv(privacy.SALT_ENV, "from-env")
    assert privacy.id_salt(workspace) == "from-env"  # the environment wins


def test_persisted_features_hold_no_raw_ids_no_salt_and_no_raw_pii(workspace, monkeypatch):
    monkeypatch.setenv(privacy.SALT_ENV, "s3cr3t-salt-value")
    _world(workspace.workspace)
    meta = features.build(workspace)
    fdir = workspace.workspace / layout.FEATURES_DIR
    blob = b"".join(f.read_bytes() for f in fdir.iterdir() if f.suffix == ".json")
    for f in fdir.glob("*.parquet"):
        t = pq.read_table(f)
        assert not {"age", "region", "occupation", "gender", "signup_ts"} & set(t.column_names), f.name
        for name, typ in zip(t.column_names, t.schema.types):
            if pa.types.is_string(typ) or pa.types.is_large_string(typ):
                blob += "\n".join(str(v) for v in t.column(name).to_pylist()).encode()
    for raw in (*RAW_IDS, "s3cr3t-salt-value"):
        assert raw.encode() not in blob, raw
    train = points(workspace.workspace).to_pylist()
    assert {r["user_id"] for r in train} == {privacy.pseudonymize("s3cr3t-salt-value", u, "u") for u in RAW_IDS[:2]}
    assert {r["exposure_id"] for r in train} == {privacy.pseudonymize("s3cr3t-salt-value", x, "x") for x in RAW_IDS[2:]}
    assert meta["ids"]["pseudonymized"] and "s3cr3t" not in json.dumps(meta)
    # age only in bucketed form
    assert all(r["age_bucket"] in (0.3,) for r in train)


def test_same_salt_same_pseudonyms_other_salt_other_pseudonyms(workspace, monkeypatch):
    _world(workspace.workspace)
    monkeypatch.setenv(privacy.SALT_ENV, "a")
    features.build(workspace)
    a = points(workspace.workspace).column("user_id").to_pylist()
    features.build(workspace)
    assert points(workspace.workspace).column("user_id").to_pylist() == a
    monkeypatch.setenv(privacy.SALT_ENV, "b")
    features.build(workspace)
    b = points(workspace.workspace).column("user_id").to_pylist()
    assert set(a).isdisjoint(b)


def test_scoring_frame_keeps_real_user_ids(workspace, monkeypatch):
    monkeypatch.setenv(privacy.SALT_ENV, "x")
    _world(workspace.workspace)
    meta = features.build(workspace)
    con = scoring_frames.connect(workspace.workspace / layout.VALIDATED_DIR)
    frame = scoring_frames.scoring_frame(con, str(T0 + timedelta(days=9)), meta)
    assert sorted(frame.column("user_id").to_pylist()) == ["user-alpha", "user-bravo"]
    assert set(meta["profile_cols"]) <= set(frame.column_names)
    assert frame.schema.field("seq_tokens").type == pa.list_(pa.int32(), meta["seq_len"])
