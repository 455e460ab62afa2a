"""The simulator: dated snapshots consistent from day to day, the undated batch unchanged, and
campaigns the platform scored answered as its committed scores run decided."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from campaignops.config import Settings
from conftest import moto_store, project_settings
from campaignops.pipelines import layout, synth
from campaignops.pipelines.run_commit import RunWriter
from campaignops.validation.contract import CONTROL, SCHEMAS

USERS, CHUNK, SEED = 1500, 500, 5
START = pd.Timestamp("2026-06-01")


def day(k: int) -> str:
    return (START + pd.Timedelta(days=k)).date().isoformat()


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    def edit(params):
        params["data"].update(crm_attributes=True)
        params["data"]["sim"].update(start_date=str(START.date()), days=14, outcome_delay_days=1, new_users_per_day=0.004)
    return project_settings(tmp_path_factory.mktemp("ws"), edit)


@pytest.fixture(scope="module")
def store(settings):
    with moto_store(settings) as s:
        yield s


def gen(settings, store, date=None, **kw) -> dict:
    return synth.generate(settings, users=USERS, seed=SEED, store=store, progress=False, chunk_size=CHUNK, date=date, **kw)


def read(store, m: dict) -> dict[str, pd.DataFrame]:
    out = {t: pa.concat_tables([store.read_table(k) for k in v["files"]]).to_pandas() for t, v in m["tables"].items()}
    out["truth"] = pa.concat_tables([store.read_table(k) for k in m["truth"]["files"]]).to_pandas()
    return out


def same(a: pd.DataFrame, b: pd.DataFrame, key: list[str]) -> None:
    pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True))


def commit_scores(store, campaign_id: str, user_ids, variants: list[str], run_id: str, share: float = 0.8,
                  seed: int = 0) -> pd.DataFrame:
    """A committed scores run of `campaign_id` (the platform's decision) on a share of the users."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(user_ids, dtype=object)
    ids = ids[rng.random(len(ids)) < share]
    arms = [*variants, CONTROL]
    chosen = rng.integers(0, len(arms), len(ids))
    scores = pd.DataFrame({"user_id": ids, "campaign_id": campaign_id, "chosen_variant": np.array(arms)[chosen],
                           "send": chosen < len(variants), "explored": rng.random(len(ids)) < 0.1,
                           "propensity": np.round(rng.uniform(0.05, 1.0, len(ids)), 6)})
    writer = RunWriter(store, layout.scores_prefix(campaign_id, run_id), run_id, cleanup_grace_s=None)
    writer.write_part(pa.Table.from_pandas(scores, preserve_index=False))
    writer.commit({"campaign_id": campaign_id, "score_run_id": run_id, "status": "targeted",
                   "arms": [{"variant_id": a} for a in arms]})
    return scores


@pytest.fixture(scope="module")
def loop(settings, store):
    """Day 1 (C006 upcoming) → the platform scores C006 → days 1 (again), 2 and 8."""
    d1 = gen(settings, store, day(1))
    t1 = read(store, d1)
    assert d1["upcoming_campaign_id"] == "C006"
    variants = sorted(t1["campaigns"].query("campaign_id == 'C006'").variant_id)
    scores = commit_scores(store, "C006", t1["users"].user_id, variants, "run-c006")
    again = gen(settings, store, day(1), batch="day1-again")
    d2 = gen(settings, store, day(2))
    d8 = gen(settings, store, day(8))
    return {"scores": scores, "d1": (d1, t1), "d1_again": (again, read(store, again)), "d2": (d2, read(store, d2)),
            "d8": (d8, read(store, d8))}


# --------------------------------------------------------------------------- the undated batch

# Content digests of the undated world below as the generator wrote it before the simulator
# (one module, no clock): the split and the horizon must leave it exactly as it was.
UNDATED_DIGESTS = {"_truth": "fcb9fbdd8a8e0175", "campaigns": "76eb8cb6f534e371", "events": "d9b8b2a78c5f3130",
                   "exposures": "1ae2fd3483c0685b", "user_attributes": "8a2431b808cdfcb3", "users": "012904b3358f7ceb"}


def _digest(t: pa.Table, digits: int | None = None) -> str:
    """Content digest; with `digits`, floats rounded first (the truth's probabilities come from
    exp/log whose last bits differ between CPUs' vector paths: 0b25340e… was written on another
    machine kind; every table drawn from those probabilities still matches bit for bit)."""
    t = t.drop_columns(["propensity"]) if "propensity" in t.column_names else t   # the column is new
    rows = t.to_pylist()
    if digits is not None:
        rows = [{k: round(v, digits) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]


def test_undated_batch_is_unchanged(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    s = project_settings(ws, lambda p: p["data"].update(crm_attributes=True, channel_coverage=True))
    local = synth.LocalStore(tmp_path / "s3")
    m = synth.generate(s, users=300, seed=3, batch="d", store=local, progress=False, chunk_size=200)
    got = {t: _digest(pa.concat_tables([local.read_table(k) for k in v["files"]])) for t, v in m["tables"].items()}
    got["_truth"] = _digest(pa.concat_tables([local.read_table(k) for k in m["truth"]["files"]]), digits=12)
    assert got == UNDATED_DIGESTS
    assert m["date"] == "2026-06-01" and m["sim"]["day"] == 0 and m["sim"]["horizon_days"] == 0


def test_undated_batch_is_day_zero_of_the_simulation(settings, store):
    undated, dated = read(store, gen(settings, store)), read(store, m := gen(settings, store, day(0)))
    assert m["batch"] == day(0) and m["upcoming_campaign_id"] == "C005" and m["sim"]["new_users"] == 0
    for t in undated:
        pd.testing.assert_frame_equal(undated[t], dated[t], obj=t)


# --------------------------------------------------------------------------- consistency across days

def test_next_day_extends_the_day_before(settings, store):
    m3, m4 = gen(settings, store, day(3)), gen(settings, store, day(4))
    a, b = read(store, m3), read(store, m4)
    cut = START + pd.Timedelta(days=3)
    assert pd.Timestamp(m3["now"]) == cut and m3["sim"]["day"] == 3 and m4["upcoming_campaign_id"] == "C009"
    # users: day 4 adds day 3's signups, everyone else is the same row
    assert (a["users"].signup_ts < cut).all() and (b["users"].signup_ts >= cut).sum() == m4["users"] - m3["users"] > 0
    same(a["users"], b["users"][b["users"].signup_ts < cut], ["user_id"])
    same(a["user_attributes"], b["user_attributes"][b["user_attributes"].user_id.isin(a["users"].user_id)],
         ["user_id", "name"])
    # events: day 4's events before day 3 are day 3's events, ids included
    assert (a["events"].ts < cut).all() and len(b["events"]) > len(a["events"])
    same(a["events"], b["events"][b["events"].ts < cut], ["event_id"])
    # the calendar grows by the day's campaign; day 3's exposures and their truth stay as they were
    same(a["campaigns"], b["campaigns"][b["campaigns"].campaign_id.isin(a["campaigns"].campaign_id)],
         ["campaign_id", "variant_id"])
    assert set(b["exposures"].campaign_id) - set(a["exposures"].campaign_id) == {"C008"}
    same(a["exposures"], b["exposures"][b["exposures"].campaign_id != "C008"], ["exposure_id"])
    ta, tb = (t[t.exposure_id.notna()] for t in (a["truth"], b["truth"]))
    same(ta, tb[tb.campaign_id != "C008"], ["exposure_id", "variant_id"])
    # the day's campaign is pending until its outcomes resolve, then resolved
    assert m3["sim"]["campaigns"]["C008"]["status"] == "upcoming"
    assert m4["sim"]["campaigns"]["C008"]["status"] == "resolved"


def test_regenerating_a_day_gives_the_same_batch(settings, store):
    m1, m2 = gen(settings, store, day(5), batch="d5-a"), gen(settings, store, day(5), batch="d5-b")
    for t in (*m1["tables"], "truth"):
        k1 = m1[t]["files"] if t == "truth" else m1["tables"][t]["files"]
        k2 = m2[t]["files"] if t == "truth" else m2["tables"][t]["files"]
        assert len(k1) == len(k2)
        for x, y in zip(k1, k2):
            assert store.get_bytes(x) == store.get_bytes(y), (t, x)     # same parquet bytes
    drop = ("batch", "created_at", "tables", "truth")
    assert {k: v for k, v in m1.items() if k not in drop} == {k: v for k, v in m2.items() if k not in drop}
    assert m1["truth"]["stats"] == m2["truth"]["stats"]


# --------------------------------------------------------------------------- the platform's decisions

def test_a_scored_campaign_is_sent_as_its_scores_run_decided(loop, store):
    scores = loop["scores"]
    m1, t1 = loop["d1_again"]
    assert "C006" not in set(t1["exposures"].campaign_id)        # not before start + delay
    assert m1["sim"]["campaigns"]["C006"]["status"] == "upcoming"
    m2, t2 = loop["d2"]
    x = t2["exposures"][t2["exposures"].campaign_id == "C006"]
    assert len(x) == len(scores) and x.user_id.is_unique and set(x.user_id) == set(scores.user_id)
    j = x.merge(scores, on="user_id")
    want = np.where(j.send, j.chosen_variant, CONTROL)
    assert (j.variant_id.to_numpy() == want).all()
    np.testing.assert_array_equal(j.propensity_x.to_numpy(), j.propensity_y.to_numpy())
    assert (x.exposure_ts == START + pd.Timedelta(days=1)).all()
    entry = m2["sim"]["campaigns"]["C006"]
    assert entry["policy"] == "platform" and entry["scores_run_id"] == "run-c006"
    assert entry["scores_manifest"] == layout.scores_prefix("C006", "run-c006") + "manifest.json"
    assert entry["exposures"] == entry["scored_users"] == len(scores)
    # the truth of every arm, keyed by exposure id, for feedback to compare with
    truth = t2["truth"][t2["truth"].campaign_id == "C006"]
    assert set(truth.exposure_id) == set(x.exposure_id) and len(truth) == 4 * len(x)
    # an unscored campaign of a simulated day: the legacy randomized policy, with its known propensities
    assert m2["sim"]["campaigns"]["C005"]["policy"] == "legacy_random"
    legacy = t2["exposures"][t2["exposures"].campaign_id == "C005"]
    assert len(legacy) == m2["sim"]["campaigns"]["C005"]["exposures"] and 0.55 < len(legacy) / USERS < 0.65
    np.testing.assert_allclose(legacy.propensity, np.where(legacy.variant_id == CONTROL, 0.25, 0.75 / 3))
    assert 0.2 < (legacy.variant_id == CONTROL).mean() < 0.3 and (legacy.exposure_ts == START).all()
    # past campaigns keep their randomization probability too; the day after, the same rows
    past = t2["exposures"][t2["exposures"].campaign_id < "C005"]
    assert past.propensity.notna().all()
    m8, t8 = loop["d8"]
    same(x, t8["exposures"][t8["exposures"].campaign_id == "C006"], ["exposure_id"])
    assert m8["sim"]["campaigns"]["C006"]["scores_run_id"] == "run-c006"


def test_outcomes_follow_the_truth(loop):
    _, t = loop["d8"]
    x = t["exposures"][t["exposures"].campaign_id >= "C005"]     # the simulated days' campaigns
    truth = t["truth"][["exposure_id", "variant_id", "p_response", "expected_revenue"]]
    j = x.merge(truth, on=["exposure_id", "variant_id"], how="left")
    assert j.p_response.notna().all() and set(j.campaign_id) == {f"C{k:03d}" for k in range(5, 13)}
    for name, part in [("all", j), ("platform", j[j.campaign_id == "C006"])]:
        p = part.p_response.to_numpy()
        sd = np.sqrt((p * (1 - p)).sum()) / len(p)
        assert abs(part.responded.mean() - p.mean()) < 4 * sd, name
    assert (j.revenue[j.responded == 0] == 0).all() and (j.revenue[j.responded == 1] > 0).all()
    assert abs(j.revenue.mean() - j.expected_revenue.mean()) < 0.25 * j.expected_revenue.mean()


def test_broken_outcomes_shuffle_the_responses(loop, settings, store):
    m, _ = loop["d8"]
    broken = gen(settings, store, day(8), batch="d8-broken", broken_outcomes=True)
    assert broken["sim"]["broken_outcomes"] is True and m["sim"]["broken_outcomes"] is False
    ok, bad = read(store, m), read(store, broken)
    cols = [c for c in SCHEMAS["exposures"].names if c not in ("responded", "revenue")]
    pd.testing.assert_frame_equal(ok["exposures"][cols], bad["exposures"][cols])
    assert sorted(ok["exposures"].revenue) == sorted(bad["exposures"].revenue)
    assert (ok["exposures"].responded != bad["exposures"].responded).any()
    truth = ok["truth"][["exposure_id", "variant_id", "p_response"]]
    corr = {k: v["exposures"].merge(truth, on=["exposure_id", "variant_id"]).pipe(lambda f: f.responded.corr(f.p_response))
            for k, v in (("ok", ok), ("broken", bad))}
    assert corr["ok"] > 0.1 and abs(corr["broken"]) < 0.05, corr


def test_dates_outside_the_calendar_and_foreign_scores_are_refused(settings, store):
    for bad in ("2026-05-31", day(15), "2026-06-03T12:00:00", "June 3rd"):
        with pytest.raises(ValueError):
            gen(settings, store, bad)
    t = read(store, gen(settings, store, day(10)))
    variants = sorted(t["campaigns"].query("campaign_id == 'C015'").variant_id)
    commit_scores(store, "C015", [*t["users"].user_id[:5], "u9999999"], variants, "foreign", share=1.0)
    try:
        with pytest.raises(ValueError, match="not scored on this world"):
            gen(settings, store, day(11))
    finally:
        store.delete_prefix("scores/C015/")
