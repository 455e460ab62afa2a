"""Dynamic strategy adjustment: the bandit's pieces (posterior, Thompson target, capped move, floor,
exact propensities), the versions it commits, and — on the simulator — regret vs the oracle when
the model is wrong about a variant and when it is right."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from campaignops.config import Settings
from conftest import moto_store, project_settings
from campaignops.pipelines import adjust, adjust_sim, allocations
from campaignops.pipelines import adjust_policy as policy

USERS, SEED, DAY = 3000, 7, 1        # campaign C006 starts on day 1 of the simulation


# --------------------------------------------------------------------------- the bandit

def test_waves_are_an_even_keyed_split():
    ids = np.array([f"u{i:07d}" for i in range(7000)], dtype=object)
    w = policy.waves(ids, 7, 0, "C1")
    assert set(w) == set(range(7)) and np.bincount(w).min() > 850
    order = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(policy.waves(ids[order], 7, 0, "C1"), w[order])     # row order does not matter
    assert (policy.waves(ids, 7, 0, "C2") != w).mean() > 0.5                          # keyed by campaign


def _cells(rate_seen: float, n: int = 400, m: float = 0.2):
    """One segment, two variants, model mean m for both; variant 1 observed at rate_seen."""
    seg = np.zeros(2 * n, np.int64)
    arm = np.repeat([0, 1], n)
    y = np.zeros(2 * n)
    y[:int(m * n)] = 1
    y[n:n + int(rate_seen * n)] = 1
    pred = np.full((2 * n, 2), m)
    return seg, arm, y, pred


def test_posterior_keeps_the_model_until_the_data_show_a_bias():
    seg, arm, y, pred = _cells(rate_seen=0.2)
    right = policy.posterior(seg, arm, y, pred, seg, pred, 1, 2000.0)
    assert (right.strength == 2000).all() and np.allclose(right.mean, 0.2)
    seg, arm, y, pred = _cells(rate_seen=0.05)
    wrong = policy.posterior(seg, arm, y, pred, seg, pred, 1, 2000.0)
    assert wrong.strength[0] == 2000 and wrong.strength[1] < 200         # only the variant the data contradict
    assert wrong.mean[0, 1] < 0.1 and abs(wrong.mean[0, 0] - 0.2) < 1e-9


def test_thompson_keeps_a_right_model_and_leaves_a_wrong_variant():
    rng = np.random.default_rng(0)
    pred = np.column_stack([np.full(500, 0.20), np.full(500, 0.25)])     # the model prefers variant 1
    seg_all = np.zeros(500, np.int64)
    costs, vpr = np.array([0.1, 0.1]), 30.0
    s, a, y, p = _cells(rate_seen=0.25)
    p[:, 1] = 0.25
    y[:80], y[400:500] = 1, 1
    right = policy.posterior(s, a, y, p, seg_all, pred, 1, 2000.0)
    assert policy.thompson(pred, seg_all, costs, vpr, right, 200, rng)[:, 1].mean() > 0.95
    y[400:800], y[400:440] = 0, 1                                        # variant 1 responds at 0.10, not 0.25
    wrong = policy.posterior(s, a, y, p, seg_all, pred, 1, 2000.0)
    assert policy.thompson(pred, seg_all, costs, vpr, wrong, 200, rng)[:, 0].mean() > 0.95


def test_the_daily_move_is_capped_per_segment():
    seg = np.repeat([0, 1], 100)
    prev = np.tile([1.0, 0.0, 0.0], (200, 1))
    target = np.vstack([np.tile([0.0, 1.0, 0.0], (100, 1)), np.tile([0.9, 0.1, 0.0], (100, 1))])
    new, lam, tv = policy.move(prev, target, seg, 2, cap=0.25)
    shares_prev, shares_new = (policy.segment_shares(x, seg, 2) for x in (prev, new))
    moved = 0.5 * np.abs(shares_new - shares_prev).sum(axis=1)
    np.testing.assert_allclose(moved, [0.25, 0.1])                     # capped; within the cap: all the way
    np.testing.assert_allclose(tv, [1.0, 0.1]) and np.testing.assert_allclose(lam, [0.25, 1.0])
    np.testing.assert_allclose(new.sum(axis=1), 1.0)


def test_the_floor_counts_the_scoring_slice():
    floor = policy.bandit_floor(0.05, np.array([0, 10, 3]), np.array([100, 100, 100]))
    np.testing.assert_allclose(floor, [0.05, 0.0, 0.02 / 0.97])
    g = policy.with_floor(np.tile([1.0, 0.0, 0.0], (3, 1)), floor)
    assert (g.min(axis=1) >= floor / 3 - 1e-12).all() and np.allclose(g.sum(axis=1), 1.0)


def test_draws_follow_the_distribution():
    dist = np.tile([0.2, 0.5, 0.3], (60000, 1))
    arms = policy.draw(dist, np.random.default_rng(1).random(60000))
    np.testing.assert_allclose(np.bincount(arms) / 60000, [0.2, 0.5, 0.3], atol=0.01)


# --------------------------------------------------------------------------- on the simulator

@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return project_settings(tmp_path_factory.mktemp("ws"), lambda p: p["data"]["sim"].update(
        start_date="2026-06-01", days=14, outcome_delay_days=1, new_users_per_day=0.004))


@pytest.fixture(scope="module")
def store(settings):
    with moto_store(settings) as s:
        yield s


@pytest.fixture(scope="module")
def right(settings, store) -> dict:
    return adjust_sim.experiment(settings, store, DAY, USERS, SEED, bias={})


@pytest.fixture(scope="module")
def wrong(settings, store, right) -> dict:
    """The model overstates variant V2's response by 5 points for everyone (run after `right`, so its
    adjusted campaign's versions are the ones in the store for the tests below)."""
    return adjust_sim.experiment(settings, store, DAY, USERS, SEED, bias={"V2": 0.05})


def test_adjusting_beats_static_when_the_model_is_wrong_about_a_variant(wrong):
    total = wrong["total_regret"]
    assert total["adjusted"] < 0.8 * total["static"] < 0.8 * total["uniform"]
    cum = wrong["cumulative_regret"]
    assert cum["adjusted"][0] == pytest.approx(cum["static"][0])         # day 0: the plan is the static allocation
    assert [s["status"] for s in wrong["versions"]] == ["planned"] + ["adjusted"] * 6


def test_adjusting_does_not_hurt_when_the_model_is_right(right):
    total = right["total_regret"]
    assert total["adjusted"] <= 1.05 * total["static"] and total["uniform"] > 5 * total["static"]


def test_the_simulator_sends_each_wave_as_its_version_decided(wrong, settings, store):
    cid = wrong["campaign_id"]
    versions = allocations.versions(store, cid)
    assert [m["from_wave"] for m in versions] == list(range(7)) and versions[0]["kind"] == "plan"
    effect = allocations.in_effect(store, cid, manifests=versions)
    x = pd.read_parquet(settings.workspace / "data/validated/exposures.parquet").query("campaign_id == @cid")
    j = x.merge(effect, on="user_id")
    assert len(j) == len(x) == len(effect)                              # the last batch holds every wave
    start = pd.Timestamp("2026-06-01") + pd.Timedelta(days=DAY)
    assert ((j["exposure_ts"] - start) // pd.Timedelta(days=1) == j["wave"]).all()
    assert (j["variant_id"] == j["chosen_variant"]).all()
    np.testing.assert_allclose(j["propensity_x"], j["propensity_y"])
    # a version's propensity is exact: share/A + (1 − share)·pi of the logged arm
    last = allocations.rows(store, versions[-1])
    arms = [c[3:] for c in last.columns if c.startswith("pi_")]
    pi = last[[f"pi_{a}" for a in arms]].to_numpy()[np.arange(len(last)), pd.Index(arms).get_indexer(last["chosen_variant"])]
    np.testing.assert_allclose(last["propensity"], 0.1 / len(arms) + 0.9 * pi)
    assert (last["wave"] >= 6).all()


def test_a_version_is_immutable_and_a_rerun_returns_it(wrong, settings, store):
    cid = wrong["campaign_id"]
    last = allocations.versions(store, cid)[-1]
    report = json.loads(store.get_bytes(store.key(last["report"]["uri"])))
    assert report["version"] == last["version"] and report["kind"] == "adjustment"
    assert {"prior_strength", "segments", "total"} <= set(report)
    assert any(seg["variants"][f"{cid}-V2"]["model_bias"] < -0.02 for seg in report["segments"].values())
    with pytest.raises(adjust.AdjustError, match="wave 6 have landed"):   # the last batch holds wave 6's outcomes
        adjust.run(settings, cid, date="2026-06-08", store=store)
    from campaignops.pipelines import synth

    day6 = synth.generate(settings, users=USERS, seed=SEED, store=store, progress=False, date="2026-06-08",
                          replace=True)   # the experiment's own store: re-landed as the simulator does
    adjust_sim.land(settings, store, day6)                               # the last version's day, landed again
    before = store.list_keys(allocations.campaign_prefix(cid))
    again = adjust.run(settings, cid, store=store)
    assert again["reused"] and again["version"] == last["version"]
    assert store.list_keys(allocations.campaign_prefix(cid)) == before


def test_refusals_say_why(wrong, settings, store):
    cid = wrong["campaign_id"]
    with pytest.raises(adjust.AdjustError, match="would rewrite sends decided later"):
        adjust.run(settings, cid, date="2026-06-04", store=store)
    assert adjust.run(settings, cid, date="2026-06-09", store=store)["status"] == adjust.ENDED
    store.delete_prefix(allocations.campaign_prefix(cid))
    with pytest.raises(adjust.AdjustError, match="sent in one go"):
        adjust.run(settings, cid, date="2026-06-03", store=store)
