"""Who gets which arm of a campaign: the model's budgeted choice plus a seeded exploration slice,
with the probability of every logged arm (its propensity), so later learning and effect
measurement can use the campaign's own outcomes without bias.

The policy, per user u, with arms 0..A-2 the treatments and A-1 the no-send control:
- exploration: with probability `share` (a seeded hash of the user id, so reproducible and
  independent of row order or chunking) u gets an arm drawn uniformly from all A arms, control
  included;
- otherwise the greedy arm g(u): the treatment with the largest net value (uplift × value per
  response − cost) if that is positive and u ranks within the budget cut, else control. Users are
  ranked by their best net value (ties: lower row first); the cut is where the cumulative cost of
  the non-exploring users' greedy arms would first exceed the budget left after the exploration
  slice's sends (a prefix, as `models.metrics.budgeted_choice`).
g(u) is defined for every user (explorers too: the arm they would have had had they not explored,
the other users' draws as they are), so the propensity of the logged arm a is exactly
share/A + (1 − share)·[a = g(u)] given the other users' draws. With share 0 the choice is
`budgeted_choice` itself (tested against it)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass
class Assignment:
    chosen: np.ndarray       # arm index per user (A-1 = control, no send)
    greedy: np.ndarray       # the model's arm g(u) per user
    explored: np.ndarray     # bool: arm drawn by exploration
    propensity: np.ndarray   # P(chosen arm | user) under the policy
    best: np.ndarray         # best treatment by net value (-1: no treatment pays for itself)
    best_net: np.ndarray     # its net value (-inf when best = -1)
    rank: np.ndarray         # 1-based position by best net value among users with best >= 0 (0: none)
    net: np.ndarray          # net value [users, treatments]

    @property
    def send(self) -> np.ndarray:
        return self.chosen < self.net.shape[1]


def exploration_draws(user_ids, share: float, n_arms: int, seed: int, campaign_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(explored, arm) per user from a keyed hash of (seed, campaign, user id): the same user gets
    the same draw in every run of the same request, whatever the order or chunking of the rows."""
    import pandas as pd

    if not 0.0 <= share <= 1.0:
        raise ValueError(f"exploration share must be within [0, 1], got {share!r}")
    ids = np.asarray(user_ids, dtype=object)

    def draw(tag: str) -> np.ndarray:
        key = hashlib.sha256(f"{seed}|{campaign_id}|{tag}".encode()).hexdigest()[:16]
        h = pd.util.hash_array(ids, hash_key=key, categorize=False)
        return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)   # uniform [0, 1)

    explored = draw("explore") < share if share > 0 else np.zeros(len(ids), bool)
    arm = np.minimum((draw("arm") * n_arms).astype(np.int64), n_arms - 1)
    return explored, arm


def assign(p: np.ndarray, costs: np.ndarray, value_per_response: float, budget: float | None,
           explored: np.ndarray | None = None, explore_arm: np.ndarray | None = None,
           share: float = 0.0) -> Assignment:
    """The policy above for p [users, arms] (control last), treatment costs [arms-1]."""
    p = np.asarray(p, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    n, n_arms = p.shape
    control = n_arms - 1
    if budget is not None and (not np.isfinite(budget) or budget < 0):
        raise ValueError(f"budget must be a finite non-negative number, got {budget!r}")
    explored = np.zeros(n, bool) if explored is None else np.asarray(explored, bool)
    explore_arm = np.full(n, control) if explore_arm is None else np.asarray(explore_arm, np.int64)
    net = (p[:, :control] - p[:, control:]) * value_per_response - costs
    masked = np.where(net > 0, net, -np.inf)
    best = np.argmax(masked, axis=1) if control else np.zeros(n, np.int64)
    best_net = masked[np.arange(n), best] if control else np.full(n, -np.inf)
    best = np.where(np.isfinite(best_net), best, -1)
    eligible = np.flatnonzero(best >= 0)
    order = eligible[np.argsort(-best_net[eligible], kind="stable")]
    rank = np.zeros(n, np.int64)
    rank[order] = np.arange(1, len(order) + 1)

    arm_cost = np.append(costs, 0.0)
    explore_spend = float(arm_cost[explore_arm[explored]].sum())
    cut = len(order)                       # users ranked before `cut` get their best arm under g
    if budget is not None:
        if explore_spend > budget:
            raise ValueError(f"the exploration slice alone costs {explore_spend:.2f} > budget {budget:.2f}: "
                             "raise the budget or lower score.exploration.share")
        exploit_cost = np.where(explored[order], 0.0, costs[best[order]])
        over = np.flatnonzero(np.cumsum(exploit_cost) > budget - explore_spend)
        cut = int(over[0]) if len(over) else len(order)
    greedy = np.full(n, control, np.int64)
    greedy[order[:cut]] = best[order[:cut]]
    if budget is not None and explored[order].any():
        # An explorer's g(u) is the arm it would have had had it not explored, the other users'
        # draws as they are: its own greedy send counted at its rank, its exploration send not.
        # (The budget cut depends on u's own draw, so g of the realised draw would be wrong.)
        pos = np.flatnonzero(explored[order])
        ahead = np.concatenate([[0.0], np.cumsum(exploit_cost)])[pos]   # non-explorers ranked before u
        users = order[pos]
        fits = ahead + costs[best[users]] <= budget - (explore_spend - arm_cost[explore_arm[users]])
        greedy[users] = np.where(fits, best[users], control)
    chosen = np.where(explored, explore_arm, greedy)
    # Users not exploring got g(u) with probability (1 − share) + share / A; explorers' arm a with
    # share / A + (1 − share)·[a = g(u)]: both are share/A + (1 − share)·[chosen = g(u)].
    propensity = share / n_arms + (1.0 - share) * (chosen == greedy)
    return Assignment(chosen=chosen, greedy=greedy, explored=explored, propensity=propensity, best=best,
                      best_net=best_net, rank=rank, net=net)

