"""Per-arm Qini on exposures scored under every arm, and the random-ranking noise scale."""
from __future__ import annotations

import numpy as np
import pytest

from campaignops.models.arms import arm_matrix, arm_qinis, mean_qini, random_qini_sd
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
