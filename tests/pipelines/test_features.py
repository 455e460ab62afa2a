"""Point-in-time features: sequences, profiles and arms, on a hand-made validated world."""
from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from campaignops.config import Settings
from campaignops.pipelines import features, layout, privacy, profiles, scoring_frames
from campaignops.validation.contract import CONTROL, SCHEMAS

T0 = datetime(2026, 5, 1)


C1 = [
    {"campaign_id": "C1", "variant_id": "C1-V1", "type": "discount", "discount_rate": 0.2, "channel": "email",
     "target_category": "c01", "cost_per_send": 0.1, "start_ts": T0, "end_ts": T0 + timedelta(days=7)},
    {"campaign_id": "C1", "variant_id": "C1-V2", "type": "bundle", "discount_rate": 0.0, "channel": "app",
     "target_category": "c02", "cost_per_send": 0.2, "start_ts": T0, "end_ts": T0 + timedelta(days=7)},
]


def points(ws) -> pa.Table:
    """Every exposure row of the features, the train, valid and holdout splits in that order
    (exposures sent at one instant are shared between the splits)."""
    fdir = ws / "data/features"
    return pa.concat_tables([pq.read_table(fdir / f"{s}.parquet") for s in ("train", "valid", "holdout")],
                            promote_options="default")


def write_world(ws, events, exposures, users=("u1", "u2"), campaigns=None):
    vdir = ws / layout.VALIDATED_DIR
    vdir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([
        {"user_id": u, "age": 30 + i, "gender": "F", "region": "r1", "occupation": "o1", "signup_ts": T0 - timedelta(days=400)}
        for i, u in enumerate(users)], SCHEMAS["users"]), vdir / "users.parquet")
    pq.write_table(pa.Table.from_pylist(events, SCHEMAS["events"]), vdir / "events.parquet")
    pq.write_table(pa.Table.from_pylist(C1 + (campaigns or []), SCHEMAS["campaigns"]), vdir / "campaigns.parquet")
    pq.write_table(pa.Table.from_pylist(exposures, SCHEMAS["exposures"]), vdir / "exposures.parquet")
    (ws / layout.RAW_MANIFEST).write_text(json.dumps({"batch": "t", "now": str(T0 + timedelta(days=10)),
                                                        "upcoming_campaign_id": "C1"}))


def ev(i, user, etype, cat, ts, price=10.0):
    return {"event_id": f"e{i}", "user_id": user, "event_type": etype, "category": cat, "price": price, "ts": ts}


def exposure(i, user, variant, ts, responded=0, campaign="C1"):
    return {"exposure_id": f"x{i}", "user_id": user, "campaign_id": campaign, "variant_id": variant,
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
    meta = features.build(workspace)
    with_future = points(workspace.workspace).to_pandas()

    # Rebuild without the future events: every feature of every exposure must be identical.
    import shutil
    shutil.rmtree(workspace.workspace / "data")
    # keep the vocabulary identical by keeping c03 in history far before (outside the window)
    write_world(workspace.workspace, before + [ev(9, "u2", "browse", "c03", T0 - timedelta(days=300))], exps)
    features.build(workspace)
    without = points(workspace.workspace).to_pandas()
    seq_cols = ("seq_tokens", "seq_gap", "seq_price")
    assert set(profiles.profile_columns([7, 14, 30])) < set(meta["profile_cols"])
    for c in [*seq_cols, *meta["profile_cols"]]:
        a, b = np.stack(with_future[c].to_numpy()) if c in seq_cols else with_future[c].to_numpy(), \
            np.stack(without[c].to_numpy()) if c in seq_cols else without[c].to_numpy()
        np.testing.assert_allclose(a.astype(float), b.astype(float), err_msg=c)
    u1 = with_future.set_index("exposure_id").loc[privacy.pseudonymize(privacy.id_salt(workspace), "x1", "x")]
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
    gap = np.asarray(row["seq_gap"])
    edges = meta["profile_fit"]["gap_edges_hours"]
    assert len(gap) == meta["seq_len"] and (gap == 2).all() and edges[0] == 1  # 1-minute gaps: below the 1 h edge
    assert gap.max() < meta["seq_channels"]["seq_gap"]["size"]
    assert (np.asarray(row["seq_price"]) >= 1).all()


def test_new_profile_features_are_point_in_time(workspace):
    """Leakage test for the issue-5 features: future purchases, a future campaign response and a
    past campaign that ends only after the exposure must not move any feature; a campaign that
    ended before does count (history, channel and discount response rates)."""
    x_ts = T0 + timedelta(days=20)
    past = [{"campaign_id": "C0", "variant_id": "C0-V1", "type": "coupon", "discount_rate": 0.1, "channel": "sms",
             "target_category": "c01", "cost_per_send": 0.1, "start_ts": T0 - timedelta(days=20),
             "end_ts": T0 - timedelta(days=10)},
            {"campaign_id": "C9", "variant_id": "C9-V1", "type": "bundle", "discount_rate": 0.0, "channel": "push",
             "target_category": "c02", "cost_per_send": 0.1, "start_ts": x_ts - timedelta(days=2),
             "end_ts": x_ts + timedelta(days=5)}]  # still running at the exposure: outcome unknown
    before = [ev(i, "u1", "purchase" if i % 3 == 0 else "browse", "c01", x_ts - timedelta(days=30 - i), price=10.0 + i)
              for i in range(12)]
    exps = [exposure(1, "u1", "C1-V1", x_ts, 1), exposure(2, "u2", CONTROL, x_ts),
            exposure(3, "u1", "C0-V1", T0 - timedelta(days=15), 1, campaign="C0"),
            exposure(4, "u1", "C9-V1", x_ts - timedelta(days=1), 1, campaign="C9")]
    future = [ev(100 + i, "u1", "purchase", "c02", x_ts + timedelta(hours=i), price=500.0) for i in range(5)]
    future_exp = [exposure(5, "u1", "C1-V2", x_ts + timedelta(days=3), 1)]

    def run(evs, xs):
        import shutil
        shutil.rmtree(workspace.workspace / "data", ignore_errors=True)
        write_world(workspace.workspace, evs + [ev(99, "u2", "browse", "c02", T0 - timedelta(days=300))], xs,
                    campaigns=past)
        meta = features.build(workspace)
        fdir = workspace.workspace / "data/features"
        import pandas as pd
        frame = pd.concat([pq.read_table(fdir / f"{s}.parquet").to_pandas() for s in ("train", "valid", "holdout")])
        return meta, frame.set_index("exposure_id")

    meta_a, a = run(before + future, exps + future_exp)
    meta_b, b = run(before, exps)
    salt = privacy.id_salt(workspace)
    key = privacy.pseudonymize(salt, "x1", "x")
    for c in ("seq_tokens", "seq_gap", "seq_price", *meta_b["profile_cols"]):
        va, vb = np.asarray(a.loc[key, c], dtype=float), np.asarray(b.loc[key, c], dtype=float)
        np.testing.assert_allclose(va, vb, err_msg=c)
    row = b.loc[key]
    assert row["n_past_exposures"] == np.log(2)  # C0 only: C9 had not ended
    assert row["resp_rate_sms"] > row["resp_rate_push"] and row["resp_rate_discount"] > row["resp_rate_other"]
    assert row["rfm_f"] > 0 and row["log_monetary"] > 0
    assert row["affinity_00"] > 0.99  # all history in c01
    assert np.asarray(row["seq_gap"])[-12:].min() >= 1 and np.asarray(row["seq_price"])[-12:].min() >= 1
    assert meta_a["profile_fit"] == meta_b["profile_fit"]  # fitted strictly before the first exposure


def test_scoring_frame_does_not_depend_on_its_chunking(workspace):
    """scoring_frame is built chunk_users users at a time; the rows, their order and every value
    must be those of a single chunk, and a user's features at an exposure's time must equal the
    exposure's own features (same definitions, same point-in-time cut)."""
    x_ts = T0 + timedelta(days=4)
    users = [f"u{i}" for i in range(1, 8)]
    evs = [ev(100 * i + j, u, ("browse", "cart", "purchase")[j % 3], f"c0{1 + j % 3}",
              x_ts - timedelta(days=j, hours=i), price=5.0 + i + j) for i, u in enumerate(users) for j in range(i * 3)]
    xs = [exposure(1, "u5", "C1-V1", x_ts)]
    write_world(workspace.workspace, evs, xs, users=users)
    meta = features.build(workspace)
    con = scoring_frames.connect(workspace.workspace / layout.VALIDATED_DIR)
    one = scoring_frames.scoring_frame(con, str(x_ts), meta)
    assert one.column("user_id").to_pylist() == sorted(users)
    for chunk_users in (1, 3):
        assert scoring_frames.scoring_frame(con, str(x_ts), meta, chunk_users=chunk_users).equals(one), chunk_users
    train = points(workspace.workspace)
    row = one.slice(one.column("user_id").to_pylist().index("u5"), 1)
    for c in ("seq_tokens", "seq_gap", "seq_price", *meta["profile_cols"]):
        assert row.column(c).to_pylist() == train.column(c).to_pylist(), c


def test_every_output_including_truth_does_not_depend_on_the_chunking(workspace, tmp_path):
    """A synthetic world with ground truth, built in one chunk and in several: every parquet output
    (exposure splits, profile snapshots, truth) must hold the same rows in the same order."""
    import shutil

    import yaml

    from campaignops.config import Settings
    from campaignops.pipelines import synth

    raw = tmp_path / "raw"
    manifest = synth.generate(workspace, users=300, store=synth.LocalStore(raw), progress=False)
    vdir = workspace.workspace / layout.VALIDATED_DIR
    vdir.mkdir(parents=True)
    for table in ("users", "events", "campaigns", "exposures"):
        pq.write_table(pa.concat_tables([pq.read_table(raw / k) for k in manifest["tables"][table]["files"]]),
                       vdir / f"{table}.parquet")
    (workspace.workspace / layout.RAW_MANIFEST).write_text(json.dumps(manifest))
    fdir = workspace.workspace / layout.FEATURES_DIR
    built = {}
    for chunk_events in (10_000_000, 2_000):
        params = yaml.safe_load((workspace.workspace / "params.yaml").read_text())
        params["features"]["chunk_events"] = chunk_events
        (workspace.workspace / "params.yaml").write_text(yaml.safe_dump(params))
        settings = Settings(workspace=workspace.workspace, state_dir=workspace.state_dir, env=workspace.env)
        meta = features.build(settings, store=synth.LocalStore(raw))
        built[meta["chunks"]] = {f.name: pq.read_table(f) for f in fdir.glob("*.parquet")}
        shutil.rmtree(fdir)
    (one, a), (many, b) = sorted(built.items())
    assert one == 1 and many > 2 and meta["has_truth"]
    assert set(a) == set(b) >= {"train.parquet", "profile.parquet", "profile_prev.parquet", "truth.parquet"}
    for name in a:
        assert a[name].equals(b[name]), name
    assert a["truth.parquet"].num_rows == manifest["truth"]["rows"]


def _set_propensity(ws, values) -> None:
    """Rewrite the validated exposures with a propensity column of `values` (None: without it)."""
    path = ws / layout.VALIDATED_DIR / "exposures.parquet"
    table = pq.read_table(path)
    if "propensity" in table.column_names:
        table = table.drop_columns(["propensity"])
    if values is not None:
        table = table.append_column("propensity", pa.array(values, pa.float64()))
    pq.write_table(table, path)


def test_exposure_rows_carry_the_logged_propensity_and_null_without_it(workspace):
    """The probability the logging policy gave the row's arm rides along to every split (for the
    training weights); a batch whose exposures lack the column reads as all-null."""
    x_ts = T0 + timedelta(days=2)
    evs = [ev(1, "u1", "browse", "c01", x_ts - timedelta(hours=5)),
           ev(2, "u2", "cart", "c02", x_ts - timedelta(hours=3))]
    write_world(workspace.workspace, evs, [exposure(1, "u1", "C1-V1", x_ts), exposure(2, "u2", CONTROL, x_ts)])
    salt = privacy.id_salt(workspace)
    fdir = workspace.workspace / layout.FEATURES_DIR
    for logged, want in (([0.925, None], {"x1": 0.925, "x2": None}), (None, {"x1": None, "x2": None})):
        _set_propensity(workspace.workspace, logged)
        meta = features.build(workspace)
        rows = pa.concat_tables([pq.read_table(fdir / f"{s}.parquet") for s in ("train", "valid", "holdout")])
        assert rows.schema.field("propensity").type == pa.float64()
        assert rows.column_names.index("propensity") == rows.column_names.index("revenue") + 1
        got = dict(zip(rows.column("exposure_id").to_pylist(), rows.column("propensity").to_pylist()))
        assert got == {privacy.pseudonymize(salt, k, "x"): v for k, v in want.items()}
        assert meta["exposures"]["with_propensity"] == (1 if logged else 0)
        assert "propensity" not in meta["profile_cols"]    # logging metadata, not a model input


def test_exposure_window_keeps_old_exposures_in_the_history_only(workspace):
    """features.exposure_window_days: exposures older than now (T0+10d) minus the window are no
    training rows, meta counts them, and they still count in later rows' campaign history."""
    c2 = [{"campaign_id": "C2", "variant_id": "C2-V1", "type": "coupon", "discount_rate": 0.1, "channel": "sms",
           "target_category": "c01", "cost_per_send": 0.1, "start_ts": T0 + timedelta(days=8),
           "end_ts": T0 + timedelta(days=9)}]
    evs = [ev(i, u, "browse", "c01", T0 - timedelta(days=1, hours=i)) for i, u in enumerate(("u1", "u2"))]
    xs = [exposure(1, "u1", "C1-V1", T0 + timedelta(days=1), 1), exposure(2, "u2", CONTROL, T0 + timedelta(days=1)),
          exposure(3, "u1", "C2-V1", T0 + timedelta(days=8, hours=1), campaign="C2"),
          exposure(4, "u2", "C2-V1", T0 + timedelta(days=8, hours=2), campaign="C2")]
    write_world(workspace.workspace, evs, xs, campaigns=c2)
    params_path = workspace.workspace / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["features"]["exposure_window_days"] = 5
    params_path.write_text(yaml.safe_dump(params))
    meta = features.build(Settings(workspace=workspace.workspace, state_dir=workspace.state_dir, env=workspace.env))
    assert meta["exposures"] == {"window_days": 5, "window_since": str(T0 + timedelta(days=5)), "used": 2,
                                 "outside_window": 2, "with_propensity": 0}
    assert sum(meta["rows"].values()) == 2
    fdir = workspace.workspace / layout.FEATURES_DIR
    rows = pa.concat_tables([pq.read_table(fdir / f"{s}.parquet") for s in ("train", "valid", "holdout")])
    salt = privacy.id_salt(workspace)
    kept = sorted(privacy.pseudonymize(salt, k, "x") for k in ("x3", "x4"))
    assert sorted(rows.column("exposure_id").to_pylist()) == kept
    by_id = {r["exposure_id"]: r for r in rows.to_pylist()}
    assert by_id[privacy.pseudonymize(salt, "x3", "x")]["n_past_exposures"] == np.log(2)   # C1 ended before
    params["features"]["exposure_window_days"] = 1
    params_path.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="exposure_window_days=1: every one of the 4 exposures"):
        features.build(Settings(workspace=workspace.workspace, state_dir=workspace.state_dir, env=workspace.env))


def test_a_campaign_sent_at_one_instant_is_shared_between_the_splits(workspace):
    """The platform sends a campaign to everyone at its start: 40 exposures at one timestamp after
    60 older ones. A timestamp quantile would put the whole send on one side (the holdout was
    empty); the rank cut gives every split its share, the send itself straddling valid and holdout."""
    users = [f"u{i}" for i in range(100)]
    old = [exposure(i, users[i], "C1-V1" if i % 2 else CONTROL, T0 + timedelta(days=1, minutes=i)) for i in range(60)]
    send = [exposure(60 + i, users[60 + i], "C1-V2" if i % 3 else CONTROL, T0 + timedelta(days=3)) for i in range(40)]
    write_world(workspace.workspace, [ev(1, "u1", "browse", "c01", T0)], old + send, users=users)
    meta = features.build(workspace)
    assert meta["rows"] == {"train": 70, "valid": 15, "holdout": 15}
    fdir = workspace.workspace / "data/features"
    hold = pq.read_table(fdir / "holdout.parquet").column("exposure_ts").to_pylist()
    assert set(hold) == {T0 + timedelta(days=3)}
    # The same salt gives the same split: a rebuild is identical.
    first = {s: pq.read_table(fdir / f"{s}.parquet").column("exposure_id").to_pylist() for s in ("valid", "holdout")}
    features.build(workspace)
    assert {s: pq.read_table(fdir / f"{s}.parquet").column("exposure_id").to_pylist() for s in ("valid", "holdout")} == first
