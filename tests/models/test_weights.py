"""Inverse-propensity weights: clipping, normalisation per campaign, unknown propensities, and
why they are there — on the synthetic world, a model fitted to a targeted policy's outcomes
misstates every arm's population uplift unless each exposure is weighted by 1 / its propensity."""
from __future__ import annotations

import importlib
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from campaignops.models.weights import inverse_propensity, summary

ROOT = Path(__file__).resolve().parents[2]


def test_weights_are_clipped_then_normalised_to_mean_one_per_campaign():
    campaign = ["a", "a", "a", "b", "b"]
    w = inverse_propensity(campaign, [0.5, 0.25, 0.01, 0.9, 0.1], max_weight=20.0)
    raw_a, raw_b = np.array([2.0, 4.0, 20.0]), np.array([1 / 0.9, 10.0])   # 1/0.01 = 100 clipped at 20
    np.testing.assert_allclose(w, np.r_[raw_a / raw_a.mean(), raw_b / raw_b.mean()])
    assert w[:3].mean() == pytest.approx(1.0) and w[3:].mean() == pytest.approx(1.0)
    # a campaign keeps its share of the data: the sum of its weights is its row count
    assert w[:3].sum() == pytest.approx(3.0) and w[3:].sum() == pytest.approx(2.0)


def test_unknown_propensity_counts_one_before_normalisation():
    w = inverse_propensity(["a", "a", "a", "b"], [None, np.nan, 0.5, None], max_weight=20.0)
    np.testing.assert_allclose(w, [0.75, 0.75, 1.5, 1.0])   # a: raw 1, 1, 2 (mean 4/3); b: all unknown → 1
    np.testing.assert_array_equal(inverse_propensity(["a"] * 3, [None] * 3), np.ones(3))   # no log: unweighted
    assert len(inverse_propensity([], [])) == 0


def test_a_randomized_campaign_keeps_equal_weights():
    """Uniform randomization (every arm at the same probability) weights every row alike: the
    weighted fit is the plain one on legacy campaigns."""
    np.testing.assert_allclose(inverse_propensity(["c"] * 4, [0.25] * 4), np.ones(4))


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5])
def test_a_propensity_outside_the_unit_interval_is_refused(p):
    with pytest.raises(ValueError, match=r"\(0, 1\].*campaign 'b'"):
        inverse_propensity(["a", "b"], [0.5, p])


def test_max_weight_below_one_is_refused():
    with pytest.raises(ValueError, match="max_weight"):
        inverse_propensity(["a"], [0.5], max_weight=0.5)


def test_summary_reports_range_effective_sample_size_nulls_and_clips():
    prop = np.array([0.5, 0.25, 0.01, np.nan])
    w = inverse_propensity(["a"] * 4, prop, max_weight=20.0)
    s = summary(w, prop, 20.0)
    assert s["min"] == pytest.approx(w.min()) and s["max"] == pytest.approx(w.max())
    assert s["ess"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum()) and 1.0 < s["ess"] < 4.0
    assert s["ess_share"] == pytest.approx(s["ess"] / 4)
    assert s["null_propensity_rows"] == 1 and s["clipped_rows"] == 1
    assert summary(np.ones(3), [np.nan] * 3, 20.0)["ess"] == pytest.approx(3.0)


# --------------------------------------------------------------------------- why: the targeting bias

def _world_module():
    """The synthetic world's module: pipelines/sim_world.py, or pipelines/synth.py before the split."""
    for name in ("sim_world", "synth"):
        try:
            mod = importlib.import_module(f"campaignops.pipelines.{name}")
        except ImportError:
            continue
        if hasattr(mod, "true_arms") and hasattr(mod, "make_world"):
            return mod
    pytest.skip("no synthetic world module with make_world and true_arms")


def _arm_columns(camp, arm_index: np.ndarray, interest: np.ndarray) -> np.ndarray:
    """Encoded arm attributes as the baselines see them: is_control, type one-hot, discount rate,
    channel one-hot, whether the arm targets the user's interest."""
    from campaignops.validation.contract import CAMPAIGN_TYPES, CHANNELS

    out = np.zeros((len(arm_index), 2 + len(CAMPAIGN_TYPES) + len(CHANNELS) + 1), np.float32)
    for j, arm in enumerate(camp.arms):
        rows = arm_index == j
        if arm.type is None:
            out[rows, 0] = 1.0
            continue
        out[rows, 1 + CAMPAIGN_TYPES.index(arm.type)] = 1.0
        out[rows, 1 + len(CAMPAIGN_TYPES)] = arm.discount_rate
        out[rows, 2 + len(CAMPAIGN_TYPES) + CHANNELS.index(arm.channel)] = 1.0
        out[rows, -1] = interest[rows] == arm.target
    return out


def _fit_with_sandwich(pipe, x, y, w):
    """Coefficients (intercept first), their sandwich covariance (robust to a misspecified model,
    weights treated as known) and the fitted scaler of a StandardScaler + LogisticRegression."""
    scaler, lr = pipe[0], pipe[-1]
    z = np.c_[np.ones(len(x)), scaler.transform(x)]
    theta = np.r_[lr.intercept_, lr.coef_[0]]
    p = 1.0 / (1.0 + np.exp(-z @ theta))
    w = np.ones(len(x)) if w is None else w
    hessian = (z * (w * p * (1 - p))[:, None]).T @ z + np.diag(np.r_[0.0, np.ones(z.shape[1] - 1)]) / lr.C
    score = z * (w * (y - p))[:, None]
    inv = np.linalg.inv(hessian)
    return theta, inv @ (score.T @ score) @ inv, scaler


def _mean_and_gradient(theta, scaler, x):
    z = np.c_[np.ones(len(x)), scaler.transform(x)]
    p = 1.0 / (1.0 + np.exp(-z @ theta))
    return p.mean(), (z * (p * (1 - p))[:, None]).mean(0)


def _population_uplift(model, x_log, y, w, x_every_arm, meta):
    """Per treatment arm: the T-learner's population-average uplift (mean over all users of
    f1(user, arm) − f0(user)) and its delta-method sd from the two fits' sandwich covariances."""
    from campaignops.models.baselines import tabular

    user, arm, control = tabular(x_log, meta)
    w0, w1 = (None, None) if w is None else (w[control], w[~control])
    th0, cov0, sc0 = _fit_with_sandwich(model.control_model, user[control], y[control], w0)
    th1, cov1, sc1 = _fit_with_sandwich(model.treated_model, np.c_[user, arm][~control], y[~control], w1)
    m0, g0 = _mean_and_gradient(th0, sc0, tabular(x_every_arm[0], meta)[0])
    est, sd = [], []
    for x in x_every_arm[1:]:
        user_j, arm_j, _ = tabular(x, meta)
        m1, g1 = _mean_and_gradient(th1, sc1, np.c_[user_j, arm_j])
        est.append(m1 - m0)
        sd.append(float(np.sqrt(g1 @ cov1 @ g1 + g0 @ cov0 @ g0)))
    return np.array(est), np.array(sd)


def test_ipw_removes_the_targeting_bias_of_the_population_uplift():
    """The demo world (data.seed 7), its last past campaign, 80,000 users sent by the platform's
    own policy (pipelines/targeting.assign: each user's best arm by a targeting model, 10%
    uniform exploration, logged propensities 0.1/4 + 0.9·[arm = the model's arm]). The targeting
    model ranks by the true response (logit noise 0.25), so each arm goes mostly to the users who
    respond best to it: price-sensitive users on their preferred channel get the discount.

    The fitted model is the tlearner_logreg baseline on what the features show: noisy price
    sensitivity and abandonment, recent activity, the interest category — not the channel
    preference, and additive in user and arm, while the truth multiplies each arm's term by the
    channel match (pipelines/sim_world.true_arms). A misspecified logistic regression with
    an intercept per arm (the arm's type one-hot) is calibrated in the large on the rows it is
    fitted on: for each arm, the mean prediction equals the mean response *of the rows that got
    it*. Unweighted, those are the targeted users, and the model carries their response to
    everyone: every arm's population uplift is overstated (bundle / discount / coupon: 0.010 /
    0.043 / 0.025 against true −0.004 / 0.012 / 0.010, 4 to 10 sandwich sds). Weighted by
    1 / propensity, each arm's rows stand for the whole population (the explored sends to users the
    model did not pick count 40 each), the same calibration holds on the population, and the
    estimates (−0.018 / −0.004 / 0.002: 1.0 to 2.0 sds off) fall within 3 sds of the truth; their
    errors share a sign because the control model's error enters every arm. The price is
    variance: the weighted sds are about 2.5x the unweighted ones (0.0075 vs 0.003).
    Intervals: the logistic fits' sandwich covariance (valid for a misspecified model, weights
    as known constants) through the delta method; 80,000 users make the unweighted bias, not the
    noise, the larger of the two for every arm."""
    from campaignops.models.baselines import TLearner
    from campaignops.pipelines.targeting import assign

    sim = _world_module()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    n, seed = 80_000, int(params["data"]["seed"])
    world, _ = sim.make_world(params["data"], n, seed)
    camp = world.campaigns[-2]                       # the last past campaign: the holdout's
    rng = np.random.default_rng(seed)
    n_cat = world.n_categories
    # Latent traits drawn as the world draws them (the truth reads only these fields).
    u = types.SimpleNamespace(ps=np.clip(rng.beta(2.0, 2.0, n), 0.02, 0.98), abandon=rng.beta(2.0, 3.0, n),
                              base=rng.normal(-2.6, 0.55, n), old=rng.integers(0, n_cat, n),
                              cur=rng.integers(0, n_cat, n), switch=np.zeros(n, np.int64),
                              pref=rng.integers(0, 4, n))
    n_recent = rng.poisson(rng.lognormal(1.0, 0.6, n))
    p_true, _ = sim.true_arms(u, np.arange(n), np.full(n, camp.start_ms, np.int64), n_recent, camp)  # control first
    n_arms = p_true.shape[1]
    truth = p_true[:, 1:].mean(0) - p_true[:, 0].mean()

    targeting = 1.0 / (1.0 + np.exp(-(np.log(p_true / (1 - p_true)) + rng.normal(0.0, 0.25, p_true.shape))))
    share = 0.1
    sent = assign(np.c_[targeting[:, 1:], targeting[:, :1]], np.array([a.cost for a in camp.variants]), 30.0, None,
                  rng.random(n) < share, rng.integers(0, n_arms, n), share)            # control last there
    arm = np.where(sent.chosen == n_arms - 1, 0, sent.chosen + 1)
    y = (rng.random(n) < p_true[np.arange(n), arm]).astype(int)

    users = np.c_[u.ps + rng.normal(0, 0.15, n), u.abandon + rng.normal(0, 0.15, n), np.log1p(n_recent),
                  np.eye(n_cat)[u.cur]].astype(np.float32)
    no_seq = np.zeros((n, 1), np.int32)             # the baseline's sequence summaries are then constant
    x_log = {"seq": no_seq, "profile": users, "variant": _arm_columns(camp, arm, u.cur)}
    x_every_arm = [{"seq": no_seq, "profile": users, "variant": _arm_columns(camp, np.full(n, j), u.cur)}
                   for j in range(n_arms)]
    meta = {"vocab": {"categories": [], "event_types": ["e"]}}
    max_weight = float(params["train"]["max_weight"])
    w = inverse_propensity(np.full(n, camp.campaign_id), sent.propensity, max_weight)
    assert summary(w, sent.propensity, max_weight)["clipped_rows"] == 0   # the default clip keeps exploration whole

    plain, plain_sd = _population_uplift(TLearner("logreg").fit(x_log, y, meta), x_log, y, None, x_every_arm, meta)
    ipw, ipw_sd = _population_uplift(TLearner("logreg").fit(x_log, y, meta, w), x_log, y, w, x_every_arm, meta)
    report = {"truth": truth.round(4), "plain": plain.round(4), "plain_z": ((plain - truth) / plain_sd).round(1),
              "ipw": ipw.round(4), "ipw_z": ((ipw - truth) / ipw_sd).round(1)}
    assert (plain - truth > 3 * plain_sd).all(), report      # overstated beyond its 3-sd interval, every arm
    assert (np.abs(ipw - truth) < 3 * ipw_sd).all(), report  # the truth inside the weighted 3-sd interval
