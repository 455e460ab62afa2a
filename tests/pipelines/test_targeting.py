"""The scoring policy (pipelines/targeting.py): with no exploration it is models.metrics.budgeted_choice;
with an exploration slice the other users get budgeted_choice on the budget the slice leaves; every
logged propensity is the probability of the logged arm under the policy; the exploration draws are
seeded per user, whatever the order of the rows."""
from __future__ import annotations

import numpy as np
import pytest

from campaignops.models.metrics import budgeted_choice
from campaignops.pipelines.targeting import assign, exploration_draws


def _case(rng: np.random.Generator, n: int | None = None, n_treat: int | None = None, vpr: float = 10.0):
    """A random small problem: p [n, A] (control last), treatment costs, and a budget (None, 0 or
    random). Values on a coarse grid so ties are frequent; some costs 0; sometimes nothing pays."""
    n = int(rng.integers(0, 13)) if n is None else n
    n_treat = int(rng.integers(1, 4)) if n_treat is None else n_treat
    kind = rng.integers(0, 4)
    p = np.round(rng.random((n, n_treat + 1)) * 8) / 8          # ties between users and between arms
    if kind == 0:                                                 # every uplift negative
        p[:, -1] = 1.0
        p[:, :-1] = np.minimum(p[:, :-1], 0.875)
    costs = np.round(rng.random(n_treat) * 4) / 4                 # quarters: 0 is frequent
    if kind == 1:
        costs[:] = 0.0
    b = rng.integers(0, 4)
    budget = None if b == 0 else 0.0 if b == 1 else float(np.round(rng.random() * n * 2) / 4)
    return p, costs, vpr, budget


def _greedy_reference(p, costs, vpr, budget):
    """budgeted_choice on the uplift values, with -1 (no send) mapped to the control index."""
    control = p.shape[1] - 1
    c = budgeted_choice((p[:, :control] - p[:, control:]) * vpr, costs, budget)
    return np.where(c < 0, control, c)


def _spend(costs, chosen):
    return float(np.append(costs, 0.0)[chosen].sum())


# --------------------------------------------------------------------------- no exploration

def test_without_exploration_assign_is_budgeted_choice():
    rng = np.random.default_rng(0)
    kinds = {"none": 0, "zero": 0, "ties": 0, "negative": 0}
    for _ in range(300):
        p, costs, vpr, budget = _case(rng)
        a = assign(p, costs, vpr, budget)
        want = _greedy_reference(p, costs, vpr, budget)
        np.testing.assert_array_equal(a.chosen, want, err_msg=f"p={p.tolist()} costs={costs} budget={budget}")
        np.testing.assert_array_equal(a.greedy, want)
        assert not a.explored.any() and np.all(a.propensity == 1.0)
        if budget is not None:
            assert _spend(costs, a.chosen) <= budget
        kinds["none"] += budget is None
        kinds["zero"] += budget == 0.0
        kinds["ties"] += len(p) > 1 and len(np.unique(p[:, 0])) < len(p)
        kinds["negative"] += bool(len(p)) and (a.best < 0).all()
    assert all(v > 10 for v in kinds.values()), kinds       # the cases the loop was meant to cover


def test_ranked_users_get_their_best_arm_until_the_budget_runs_out():
    # net values 3, 2, 1 (cost 1 each at value 10 per response): a budget of 2 sends to the first two.
    p = np.array([[0.4, 0.0], [0.5, 0.2], [0.3, 0.1]])
    a = assign(p, np.array([1.0]), 10.0, 2.0)
    assert a.chosen.tolist() == [0, 0, 1] and a.rank.tolist() == [1, 2, 3]
    np.testing.assert_allclose(a.best_net, [3.0, 2.0, 1.0])
    assert a.send.tolist() == [True, True, False]


# --------------------------------------------------------------------------- exploration

def _random_exploration(rng, n, n_arms, share):
    return rng.random(n) < share, rng.integers(0, n_arms, n)


def test_with_exploration_the_others_get_budgeted_choice_on_the_budget_left():
    rng = np.random.default_rng(1)
    checked = refused = 0
    for _ in range(400):
        p, costs, vpr, budget = _case(rng)
        n, n_arms = p.shape
        share = float(rng.choice([0.1, 0.3, 0.7]))
        explored, arm = _random_exploration(rng, n, n_arms, share)
        explore_spend = _spend(costs, arm[explored])
        if budget is not None and explore_spend > budget:
            with pytest.raises(ValueError, match="exploration slice alone costs"):
                assign(p, costs, vpr, budget, explored, arm, share)
            refused += 1
            continue
        a = assign(p, costs, vpr, budget, explored, arm, share)
        np.testing.assert_array_equal(a.chosen[explored], arm[explored])       # explorers keep their draw
        rest = ~explored
        left = None if budget is None else budget - explore_spend
        np.testing.assert_array_equal(a.chosen[rest], _greedy_reference(p[rest], costs, vpr, left),
                                      err_msg=f"p={p.tolist()} costs={costs} budget={budget} explored={explored}")
        np.testing.assert_array_equal(a.explored, explored)
        if budget is not None:
            assert _spend(costs, a.chosen) <= budget + 1e-12
        checked += 1
    assert checked > 250 and refused > 5


def test_an_explorers_greedy_arm_is_the_arm_it_would_have_had_without_exploring():
    """g(u) of an explorer = the arm assign gives u when u alone does not explore (the others' draws
    unchanged), so the logged propensity is P(logged arm | the other users' draws) exactly."""
    rng = np.random.default_rng(2)
    seen = 0
    for _ in range(300):
        p, costs, vpr, budget = _case(rng, n=int(rng.integers(1, 10)))
        n, n_arms = p.shape
        explored, arm = _random_exploration(rng, n, n_arms, 0.4)
        try:
            a = assign(p, costs, vpr, budget, explored, arm, 0.4)
        except ValueError:
            continue
        for u in np.flatnonzero(explored):
            alone = explored.copy()
            alone[u] = False
            b = assign(p, costs, vpr, budget, alone, arm, 0.4)
            assert a.greedy[u] == b.chosen[u], (p.tolist(), costs, budget, explored, arm, u)
            seen += a.greedy[u] != a.best[u] if a.best[u] >= 0 else 0
        np.testing.assert_array_equal(a.greedy[~explored], a.chosen[~explored])
    assert seen > 0      # some explorers would have been cut by the budget


def test_propensity_is_the_probability_of_the_logged_arm_given_the_other_users_draws():
    """Exact, by enumerating the user's own draw: not exploring (1 − share) gives the arm assign
    then chooses; exploring gives each arm with share / A (draws whose exploration alone would
    exceed the budget are left out of such cases)."""
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(150):
        p, costs, vpr, budget = _case(rng, n=int(rng.integers(1, 8)))
        n, n_arms = p.shape
        share = float(rng.choice([0.2, 0.5]))
        explored, arm = _random_exploration(rng, n, n_arms, share)
        try:
            a = assign(p, costs, vpr, budget, explored, arm, share)
        except ValueError:
            continue
        np.testing.assert_allclose(a.propensity, share / n_arms + (1 - share) * (a.chosen == a.greedy))
        for u in range(n):
            prob = np.full(n_arms, share / n_arms)
            alone = explored.copy()
            alone[u] = False
            prob[assign(p, costs, vpr, budget, alone, arm, share).chosen[u]] += 1 - share
            assert a.propensity[u] == pytest.approx(prob[a.chosen[u]], abs=1e-12)
            checked += 1
    assert checked > 300


def test_propensities_match_the_policys_arm_frequencies_over_seeds():
    """Over many seeds of the exploration draws for the same users, each user's frequency of every
    arm matches the mean of the policy's probability of that arm (share/A + (1 − share)·[arm = g(u)]),
    within binomial noise — also for users at the budget's cut, whose g moves with the draws."""
    n, n_arms, share, seeds = 30, 3, 0.2, 3000
    p = np.zeros((n, n_arms))
    p[:, 2] = 0.1
    p[:, 0] = 0.1 + np.linspace(0.5, 0.3, n)          # net at 10/response, cost 1: 4.0 .. 2.0
    p[:, 1] = 0.1 + np.linspace(0.45, 0.35, n)        # cost 1: net 3.5 .. 2.5 — the better arm for the last users
    costs, budget = np.array([1.0, 1.0]), 15.0         # half the users fit: the cut falls mid-list
    ids = np.array([f"user-{i}" for i in range(n)], dtype=object)
    freq, prob = np.zeros((n, n_arms)), np.zeros((n, n_arms))
    greedy_moves = np.zeros(n, bool)
    first = None
    for seed in range(seeds):
        explored, arm = exploration_draws(ids, share, n_arms, seed, "C042")
        a = assign(p, costs, 10.0, budget, explored, arm, share)   # these seeds never exceed the budget
        policy = share / n_arms + (1 - share) * (np.arange(n_arms)[None, :] == a.greedy[:, None])   # [n, A]
        np.testing.assert_allclose(a.propensity, policy[np.arange(n), a.chosen])    # what the row logs
        freq[np.arange(n), a.chosen] += 1
        prob += policy
        first = a.greedy if first is None else first
        greedy_moves |= a.greedy != first
    freq /= seeds
    prob /= seeds
    assert greedy_moves.any()                          # the cut does move with the draws
    sd = np.sqrt(np.maximum(prob * (1 - prob), 1e-4) / seeds)
    z = (freq - prob) / sd
    assert np.abs(z).max() < 4.5, np.round(z, 1)


def test_exploration_slice_over_the_budget_is_refused_with_a_clear_message():
    p = np.array([[0.5, 0.1], [0.5, 0.1], [0.5, 0.1]])
    explored = np.array([True, True, False])
    arm = np.array([0, 0, 1])
    with pytest.raises(ValueError, match=r"exploration slice alone costs 2\.00 > budget 1\.50.*exploration\.share"):
        assign(p, np.array([1.0]), 10.0, 1.5, explored, arm, 0.5)
    a = assign(p, np.array([1.0]), 10.0, 2.0, explored, arm, 0.5)     # exactly the slice: nothing left
    assert a.chosen.tolist() == [0, 0, 1] and a.greedy.tolist() == [0, 0, 1]
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="budget must be a finite non-negative number"):
            assign(p, np.array([1.0]), 10.0, bad)


# --------------------------------------------------------------------------- the draws

IDS = np.array([f"u{i:06d}" for i in range(20000)], dtype=object)


def test_draws_are_reproducible_and_independent_of_row_order_and_chunking():
    e1, a1 = exploration_draws(IDS, 0.1, 4, 7, "C009")
    e2, a2 = exploration_draws(IDS.copy(), 0.1, 4, 7, "C009")
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_array_equal(a1, a2)
    perm = np.random.default_rng(0).permutation(len(IDS))
    ep, ap = exploration_draws(IDS[perm], 0.1, 4, 7, "C009")
    np.testing.assert_array_equal(ep, e1[perm])
    np.testing.assert_array_equal(ap, a1[perm])
    parts = [exploration_draws(IDS[s:s + 3000], 0.1, 4, 7, "C009") for s in range(0, len(IDS), 3000)]
    np.testing.assert_array_equal(np.concatenate([e for e, _ in parts]), e1)
    np.testing.assert_array_equal(np.concatenate([a for _, a in parts]), a1)


def test_draws_have_the_share_and_uniform_arms_control_included():
    n, n_arms, share = len(IDS), 4, 0.1
    explored, arm = exploration_draws(IDS, share, n_arms, 0, "C009")
    assert abs(explored.mean() - share) < 4 * np.sqrt(share * (1 - share) / n)
    counts = np.bincount(arm, minlength=n_arms)
    assert len(counts) == n_arms and arm.min() == 0 and arm.max() == n_arms - 1   # control drawn too
    assert np.abs(counts - n / n_arms).max() < 4 * np.sqrt(n * (1 / n_arms) * (1 - 1 / n_arms))
    # among the explorers too (the arm draw does not depend on the explore draw)
    ce = np.bincount(arm[explored], minlength=n_arms)
    m = explored.sum()
    assert np.abs(ce - m / n_arms).max() < 4 * np.sqrt(m * (1 / n_arms) * (1 - 1 / n_arms))
    # share 0 explores nobody, share 1 everybody
    assert not exploration_draws(IDS, 0.0, n_arms, 0, "C009")[0].any()
    assert exploration_draws(IDS, 1.0, n_arms, 0, "C009")[0].all()
    with pytest.raises(ValueError, match="exploration share"):
        exploration_draws(IDS, 1.5, n_arms, 0, "C009")


def test_different_seeds_or_campaigns_draw_differently():
    e0, a0 = exploration_draws(IDS, 0.2, 3, 0, "C009")
    for other in (exploration_draws(IDS, 0.2, 3, 1, "C009"), exploration_draws(IDS, 0.2, 3, 0, "C010")):
        e1, a1 = other
        # independent draws: the explored sets overlap about as share², arms agree about 1/A of the time
        assert abs((e0 & e1).mean() - 0.04) < 0.01
        assert abs((a0 == a1).mean() - 1 / 3) < 0.02
