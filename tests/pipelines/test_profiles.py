"""Segment, per-user and dynamic profiles: segments.json, profile / profile_prev snapshots."""
from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pyarrow.parquet as pq

from campaignops.pipelines import features, privacy
from campaignops.validation.contract import CONTROL

from test_features import T0, ev, exposure, write_world


def test_profiles_move_with_behaviour_and_segments_are_summarized(workspace, monkeypatch):
    monkeypatch.setenv(privacy.SALT_ENV, "p")
    now = T0 + timedelta(days=10)  # the manifest's `now` in write_world
    # u1: c01 fan until 40 days before now, then switches to c02 (purchases) in the last 20 days.
    evs = [ev(i, "u1", "browse", "c01", now - timedelta(days=60 - i)) for i in range(20)]
    evs += [ev(100 + i, "u1", "purchase", "c02", now - timedelta(days=20 - i), price=30.0) for i in range(15)]
    # u2: quiet browser of c03 long ago.
    evs += [ev(200 + i, "u2", "browse", "c03", now - timedelta(days=80 - i)) for i in range(3)]
    xs = [exposure(1, "u1", "C1-V1", T0 + timedelta(days=1), 1), exposure(2, "u2", CONTROL, T0 + timedelta(days=1))]
    write_world(workspace.workspace, evs, xs)
    meta = features.build(workspace)
    fdir = workspace.workspace / "data/features"
    now_p = pq.read_table(fdir / "profile.parquet").to_pandas().set_index("user_id")
    prev_p = pq.read_table(fdir / "profile_prev.parquet").to_pandas().set_index("user_id")
    u1 = privacy.pseudonymize("p", "u1", "u")
    assert list(now_p.loc[u1, "interest_tags"])[0] == "c02"
    assert list(prev_p.loc[u1, "interest_tags"])[0] == "c01"  # 30 days earlier: before the switch
    assert now_p.loc[u1, "rfm_f"] > 0 and prev_p.loc[u1, "rfm_f"] == 0
    assert meta["profile_diff"]["top_interest_changed_share"] > 0 and meta["profile_diff"]["users"] == 2
    assert now_p.loc[u1, "as_of"] == meta["profile_as_of"] and prev_p.loc[u1, "as_of"] == meta["profile_prev_as_of"]
    for col in ("segment", "activity_level", "preferred_channel", *meta["profile_cols"]):
        assert col in now_p.columns
    segs = json.loads((fdir / "segments.json").read_text())
    assert [s["name"] for s in segs["segments"]] == meta["segments"] == meta["profile_fit"]["segments"]["names"]
    assert sum(s["users"] for s in segs["segments"]) == 2
    assert set(now_p["segment"]) <= set(meta["segments"])


def test_interest_affinity_decays_with_time(workspace, monkeypatch):
    monkeypatch.setenv(privacy.SALT_ENV, "p")
    x_ts = T0 + timedelta(days=5)
    # Equal counts in c01 (old) and c02 (recent): the decayed affinity prefers c02.
    evs = [ev(i, "u1", "browse", "c01", x_ts - timedelta(days=60, hours=i)) for i in range(5)]
    evs += [ev(10 + i, "u1", "browse", "c02", x_ts - timedelta(days=1, hours=i)) for i in range(5)]
    write_world(workspace.workspace, evs, [exposure(1, "u1", "C1-V1", x_ts)])
    features.build(workspace)
    row = pq.read_table(workspace.workspace / "data/features/train.parquet").to_pylist()[0]
    assert row["affinity_01"] > 0.9 > 0.1 > row["affinity_00"] > 0
    np.testing.assert_allclose(row["affinity_00"] + row["affinity_01"], 1.0)
