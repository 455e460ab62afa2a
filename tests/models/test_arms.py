"""Per-arm Qini on exposures scored under every arm, and the random-ranking noise scale."""
from __future__ import annotations

import numpy as np
import pytest

from campaignops.models.arms import (arm_groups, arm_matrix, arm_qinis, balancing_weight, logging_propensity,
                                     mean_qini, random_qini_sd)
from campaignops.models.metrics import qini_auc_score
from campaignops.validation.contract import CONTROL


def _expected(frame, p):
    """Per (campaign, arm): Qini of p(arm) − p(control) on that campaign's rows logged at arm or control."""
    wide = frame.assign(p=p).pivot(index="exposure_id", columns="arm_id", values="p")
    logged = frame.drop_duplicates("exposure_id").set_index("exposure_id")
    out = {}
    for (c, arm), _ in logged[logged["variant_id"] != CONTROL].groupby(["campaign_id", "variant_id"]):
        r = logged[(logged["campaign_id"] == c) & logged["variant_id"].isin([arm, CONTROL])]
        out[(c, arm)] = qini_auc_score(r["responded"], (wide[arm] - wide[CONTROL]).loc[r.index],
                                       (r["variant_id"] == arm).astype(int))
    return out


def test_mean_qini_averages_the_per_arm_qini_against_control(arm_frame):
    f = arm_frame()
    p = np.random.default_rng(1).random(len(f))
    expect = _expected(f, p)
    assert set(arm_qinis(f, p)) == {("C", "a"), ("C", "b")}
    assert arm_qinis(f, p) == pytest.approx(expect)
    assert mean_qini(f, p) == pytest.approx(np.mean(list(expect.values())))
    assert mean_qini(f, p) != pytest.approx(expect[("C", "a")])


def test_each_campaign_is_compared_with_its_own_control(arm_frame):
    """Two campaigns: the first slot holds C1-a for one and C2-a for the other; each arm's Qini
    uses only its own campaign's exposures (not the slot pooled over campaigns)."""
    f = arm_frame(300, seed=2, campaigns=("C1", "C2"))
    p = np.random.default_rng(3).random(len(f))
    got = arm_qinis(f, p)
    assert set(got) == {("C1", "C1-a"), ("C1", "C1-b"), ("C2", "C2-a"), ("C2", "C2-b")}
    assert got == pytest.approx(_expected(f, p))
    assert arm_qinis(f, p, wide=arm_matrix(f, p)) == pytest.approx(got)   # a precomputed pivot gives the same
    arms, _ = arm_matrix(f, p)
    assert set(arms.iloc[:, 0]) == {"C1-a", "C2-a"}   # what a per-slot pooling would have mixed


def test_an_arm_with_no_control_rows_is_left_out(arm_frame):
    f = arm_frame(200, seed=4)
    no_ctrl = f["exposure_id"].isin(f.loc[f["variant_id"] == CONTROL, "exposure_id"])
    f = f[~no_ctrl].reset_index(drop=True)
    assert arm_qinis(f, np.random.default_rng(0).random(len(f))) == {}
    assert np.isnan(mean_qini(f, np.zeros(len(f))))


def test_random_qini_sd_is_the_spread_of_random_rankings_and_a_real_signal_stands_out():
    """A world where arm a lifts response for half the users: the true uplift's Qini is many
    random-ranking sds above 0, and the sd shrinks with more exposures (≈ 1/√n)."""
    import pandas as pd

    def world(n, seed):
        rng = np.random.default_rng(seed)
        responsive = rng.random(n) < 0.5
        logged = rng.choice(["a", CONTROL], n)
        y = (rng.random(n) < 0.1 + 0.3 * (responsive & (logged == "a"))).astype(int)
        rows = [(f"x{i}", "C", logged[i], arm, y[i]) for i in range(n) for arm in ("a", CONTROL)]
        frame = pd.DataFrame(rows, columns=["exposure_id", "campaign_id", "variant_id", "arm_id", "responded"])
        p = np.array([0.1 + 0.3 * responsive[i] * (arm == "a") for i in range(n) for arm in ("a", CONTROL)])
        return frame, p

    small, p_small = world(1000, 0)
    large, _ = world(16000, 1)
    sd_small, sd_large = random_qini_sd(small, draws=100), random_qini_sd(large, draws=100)
    assert 0 < sd_large < sd_small
    assert sd_small / sd_large == pytest.approx(4.0, rel=0.35)
    assert mean_qini(small, p_small) > 5 * sd_small
    assert random_qini_sd(small, draws=100, seed=0) == random_qini_sd(small, draws=100, seed=0)
    assert np.isnan(random_qini_sd(small, draws=0))


def _logged(frame):
    return frame.drop_duplicates("exposure_id").reset_index(drop=True)


def test_a_randomized_log_weighs_one_whether_or_not_it_logged_its_propensities(arm_frame):
    f = arm_frame(300, seed=5)
    p = np.random.default_rng(6).random(len(f))
    share = logging_propensity(_logged(f))[1]
    shares = dict(zip(_logged(f)["exposure_id"], share))
    with_p = f.assign(propensity=f["exposure_id"].map(shares))
    assert all(g.weight is None for g in arm_groups(with_p, p))
    assert arm_qinis(with_p, p) == arm_qinis(f, p)          # bit-identical to the legacy metrics


def test_targeted_exposures_are_weighted_by_arm_share_over_their_propensity(arm_frame):
    """Exposures at arm a logged with half their arm's share stand for two exposures each: the
    weighted Qini is the Qini of the data with those rows repeated. Unknown propensities fall
    back to the share (weight 1); an impossible propensity is an error naming the exposure."""
    f = arm_frame(300, seed=7)
    p = np.random.default_rng(8).random(len(f))
    ex = _logged(f)
    share = logging_propensity(ex)[1]
    prop = share.copy()
    at_a = (ex["variant_id"] == "a").to_numpy()
    half = at_a & (np.arange(len(ex)) % 2 == 0)
    prop[half] = share[half] / 2
    prop[~at_a & (np.arange(len(ex)) % 3 == 0)] = np.nan      # unknown: falls back to the share
    g = f.assign(propensity=f["exposure_id"].map(dict(zip(ex["exposure_id"], prop))))
    w = balancing_weight(_logged(g))
    np.testing.assert_allclose(w, np.where(half, 2.0, 1.0))
    got = arm_qinis(g, p)[("C", "a")]
    wide = f.assign(p=p).pivot(index="exposure_id", columns="arm_id", values="p").loc[ex["exposure_id"]]
    rows = ex["variant_id"].isin(["a", CONTROL]).to_numpy()
    reps = np.where(half, 2, 1)[rows]
    expect = qini_auc_score(np.repeat(ex["responded"].to_numpy()[rows], reps),
                            np.repeat((wide["a"] - wide[CONTROL]).to_numpy()[rows], reps),
                            np.repeat((ex["variant_id"] == "a").to_numpy()[rows].astype(int), reps))
    assert got == pytest.approx(expect, abs=1e-12)
    assert got != pytest.approx(arm_qinis(f, p)[("C", "a")], abs=1e-9)
    assert arm_qinis(g, p)[("C", "b")] == arm_qinis(f, p)[("C", "b")]   # arm b's rows all weigh 1

    bad = f.assign(propensity=np.where(f["exposure_id"] == ex["exposure_id"][0], 1.5, 0.3))
    with pytest.raises(ValueError, match=str(ex["exposure_id"][0])):
        arm_qinis(bad, p)
