"""Point-in-time features: sequences, profiles and arms, on a hand-made validated world."""
from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.pipelines import features, layout
from campaignops.validation.contract import CONTROL, SCHEMAS

T0 = datetime(2026, 5, 1)


def write_world(ws, events, exposures, users=("u1", "u2")):
    vdir = ws / layout.VALIDATED_DIR
    vdir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([
        {"user_id": u, "age": 30 + i, "gender": "F", "region": "r1", "occupation": "o1", "signup_ts": T0 - timedelta(days=400)}
        for i, u in enumerate(users)], SCHEMAS["users"]), vdir / "users.parquet")
    pq.write_table(pa.Table.from_pylist(events, SCHEMAS["events"]), vdir / "events.parquet")
    pq.write_table(pa.Table.from_pylist([
        {"campaign_id": "C1", "variant_id": "C1-V1", "type": "discount", "discount_rate": 0.2, "channel": "email",
         "target_category": "c01", "cost_per_send": 0.1, "start_ts": T0, "end_ts": T0 + timedelta(days=7)},
        {"campaign_id": "C1", "variant_id": "C1-V2", "type": "bundle", "discount_rate": 0.0, "channel": "app",
         "target_category": "c02", "cost_per_send": 0.2, "start_ts": T0, "end_ts": T0 + timedelta(days=7)},
    ], SCHEMAS["campaigns"]), vdir / "campaigns.parquet")
    pq.write_table(pa.Table.from_pylist(exposures, SCHEMAS["exposures"]), vdir / "exposures.parquet")
    (ws / layout.RAW_MANIFEST).write_text(json.dumps({"batch": "t", "now": str(T0 + timedelta(days=10)),
                                                        "upcoming_campaign_id": "C1"}))


def ev(i, user, etype, cat, ts, price=10.0):
    return {"event_id": f"e{i}", "user_id": user, "event_type": etype, "category": cat, "price": price, "ts": ts}


def exposure(i, user, variant, ts, responded=0):
    return {"exposure_id": f"x{i}", "user_id": user, "campaign_id": "C1", "variant_id": variant,
            "exposure_ts": ts, "responded": responded, "revenue": 20.0 * responded}


def test_features_use_only_events_strictly_before_the_exposure(workspace):
    """Leakage test: events at or after the exposure time must not change its features."""
    x_ts = T0 + timedelta(days=2)
    before = [ev(1, "u1", "browse", "c01", x_ts - timedelta(hours=5)),
              ev(2, "u1", "cart", "c02", x_ts - timedelta(hours=1))]
    after = [ev(3, "u1", "purchase", "c03", x_ts, price=999.0),  # same instant: not before
             ev(4, "u1", "purchase", "c03", x_ts + timedelta(hours=1), price=999.0)]
    exps = [exposure(1, "u1", "C1-V1", x_ts, 1), exposure(2, "u2", CONTROL, x_ts)]
    write_world(workspace.workspace, before + after, exps)
    features.build(workspace)
    with_future = pq.read_table(workspace.workspace / "data/features/train.parquet").to_pandas()

    # Rebuild without the future events: every feature of every exposure must be identical.
    import shutil
    shutil.rmtree(workspace.workspace / "data")
    # keep the vocabulary identical by keeping c03 in history far before (outside the window)
    write_world(workspace.workspace, before + [ev(9, "u2", "browse", "c03", T0 - timedelta(days=300))], exps)
    features.build(workspace)
    without = pq.read_table(workspace.workspace / "data/features/train.parquet").to_pandas()
    cols = ["seq_tokens", *features.profile_columns([7, 14, 30])]
    for c in cols:
        a, b = np.stack(with_future[c].to_numpy()) if c == "seq_tokens" else with_future[c].to_numpy(), \
            np.stack(without[c].to_numpy()) if c == "seq_tokens" else without[c].to_numpy()
        np.testing.assert_allclose(a.astype(float), b.astype(float), err_msg=c)
    u1 = with_future.set_index("exposure_id").loc["x1"]
    assert int((np.asarray(u1["seq_tokens"]) > 0).sum()) == 2
    assert u1["n_purchase"] == 0.0


def test_sequence_is_left_padded_oldest_to_newest_and_capped(workspace):
    x_ts = T0 + timedelta(days=3)
    evs = [ev(i, "u1", "browse", "c01", x_ts - timedelta(minutes=100 - i)) for i in range(79)]
    evs.append(ev(79, "u1", "cart", "c02", x_ts - timedelta(minutes=1)))  # the newest event
    write_world(workspace.workspace, evs, [exposure(1, "u1", "C1-V2", x_ts)])
    meta = features.build(workspace)
    row = pq.read_table(workspace.workspace / "data/features/train.parquet").to_pylist()[0]
    seq = np.asarray(row["seq_tokens"])
    assert len(seq) == meta["seq_len"] and (seq > 0).all()  # 80 events → capped at seq_len
    n_cat = len(meta["vocab"]["categories"]) + 1
    cats = [meta["vocab"]["categories"][(t - 1) % n_cat] for t in seq]
    assert cats[-1] == "c02" and set(cats[:-1]) == {"c01"}  # newest last
    assert (seq[-1] - 1) // n_cat == meta["vocab"]["event_types"].index("cart")
