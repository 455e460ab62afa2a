"""The bandit behind dynamic strategy adjustment: Beta-Bernoulli Thompson sampling over each
segment's variants with priors from the model's predictions, an exploration floor and a cap on how
far the allocation may move in a day. Pure functions of arrays; pipelines/adjust.py reads the
campaign's outcomes and writes the allocation versions.

The model. A campaign's sends go out in daily waves; the scoring run decided who is sent (the
budget) and the model's arm for each. Adjustment re-decides only which variant each remaining
send gets. The model predicts p̂_u(v), user u's response to variant v; what the landed sends can
tell is whether it is right about v in segment s. For the n sends of v in s observed so far
(r responses, model mean m̄ = mean p̂_u(v) over exactly those users), the segment's response
rate to v is θ ~ Beta(α, β) with the prior centred on the model, α = k·m̄ + r, β = k·(1 − m̄) +
n − r, k = how many sends' worth of evidence the model's prediction counts for: estimated per
variant from the data (empirical_strength: a variant whose segments all sit where the model said
keeps `max_prior_strength`, so a right model is barely perturbed; one the data contradict drops to
tens of sends and is learnt within a wave or two). δ = θ − m̄ is the model's bias on v in s (0 in expectation a priori; unobserved pairs use
m̄ over the segment's users). Each Thompson draw shifts every user's predictions by the drawn
δ of its segment and picks the variant with the best net value (p̂_u(v) + δ_sv)·value_per_response
− cost_v; q_u(v) is the share of `draws` draws in which v wins, i.e. the posterior probability
that v is u's best variant (probability matching, computed rather than sampled once, so the
propensities are exact). The per-user ranking stays the model's; the segment-level shift is what
is learnt, so a right model keeps its choices (δ ≈ 0) and a model wrong about a variant loses it
as the evidence comes in.

The move. H (exploitation distribution per user over the variants) starts as the model's arm
(one-hot; the plan, version 0). A day moves it towards q: H' = H + λ_s·(q − H) with
λ_s = min(1, cap / TV_s), TV_s = ½ Σ_v |mean_s q(v) − mean_s H(v)| over the segment's remaining
sends, so no segment's variant shares move by more than `max_daily_move` (total variation). The
policy is G = e/K + (1 − e)·H: every variant keeps at least `min_exploration_share`/K of the
sends (e = 0 in the plan, whose exploration is the scoring run's slice). A logged arm's
propensity is share/A + (1 − share)·G_u(arm), the scoring policy's form with G in place of the
model's one-hot arm (pipelines/targeting.py), so IPW over the campaign stays unbiased.

Why hand-written: MABWiser's ThompsonSampling starts every arm at Beta(1, 1) (reset on fit) with
no prior per arm, let alone per (segment, variant) from a model; Vowpal Wabbit's contextual
bandits learn their own regressor online and have neither model priors nor a cap on the daily
move; obp's BernoulliTS takes per-arm priors but not per-user baselines, and it pins old
numpy/pandas (pipelines/feedback.py). The conjugate update, the draws and the cap are a few
numpy lines each, and their exact propensities are what the rest of the platform needs."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta as beta_dist

EVIDENCE_SD = 2.0     # a variant's excess dispersion must exceed this many sds of noise to count as model bias


def keyed_uniform(user_ids, seed: int, campaign_id: str, tag: str) -> np.ndarray:
    """Uniform [0, 1) per user id from a keyed hash (independent of row order)."""
    import pandas as pd

    key = hashlib.sha256(f"{seed}|{campaign_id}|{tag}".encode()).hexdigest()[:16]
    h = pd.util.hash_array(np.asarray(user_ids, dtype=object), hash_key=key, categorize=False)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def waves(user_ids, n_waves: int, seed: int, campaign_id: str) -> np.ndarray:
    """The wave (day of the campaign, 0-based) each user's send goes out in: an even keyed split."""
    u = keyed_uniform(user_ids, seed, campaign_id, "wave")
    return np.minimum((u * n_waves).astype(np.int64), n_waves - 1)


def net_values(p: np.ndarray, costs: np.ndarray, value_per_response: float) -> np.ndarray:
    """[users, K] net value of each variant: (p(v) − p(control))·value − cost (control last in p)."""
    k = len(costs)
    return (p[:, :k] - p[:, k:k + 1]) * value_per_response - costs


@dataclass
class Posterior:
    """Beta posterior of each (segment, variant) response rate, centred a priori on the model."""
    sends: np.ndarray         # [S, K] observed sends
    responses: np.ndarray     # [S, K]
    model_mean: np.ndarray    # [S, K] m̄: the model's mean prediction for the observed sends
    alpha: np.ndarray
    beta: np.ndarray
    strength: np.ndarray      # [K] prior strength used per variant (empirical Bayes, capped)

    @property
    def mean(self) -> np.ndarray:
        return self.alpha / (self.alpha + self.beta)

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        lo = (1 - level) / 2
        return beta_dist.ppf(lo, self.alpha, self.beta), beta_dist.ppf(1 - lo, self.alpha, self.beta)


def posterior(seg_obs: np.ndarray, arm_obs: np.ndarray, y_obs: np.ndarray, pred_obs: np.ndarray,
              seg_all: np.ndarray, pred_all: np.ndarray, n_segments: int, max_strength: float) -> Posterior:
    """Posterior from the landed sends (segment, variant index, 0/1 response, model predictions
    [n, K]); pairs without sends fall back on the model's mean over the segment's users `seg_all`.
    The prior strength of each variant is empirical_strength() of its cells, at most `max_strength`."""
    k = pred_all.shape[1]
    sends, resp, m = np.zeros((n_segments, k)), np.zeros((n_segments, k)), np.zeros((n_segments, k))
    for s in range(n_segments):
        everyone = pred_all[seg_all == s]
        for v in range(k):
            hit = (seg_obs == s) & (arm_obs == v)
            sends[s, v], resp[s, v] = hit.sum(), y_obs[hit].sum()
            ref = pred_obs[hit, v] if hit.any() else everyone[:, v]
            m[s, v] = float(ref.mean()) if len(ref) else float(pred_all[:, v].mean())
    m = np.clip(m, 1e-4, 1 - 1e-4)
    strength = empirical_strength(sends, resp, m, max_strength)[None, :]
    return Posterior(sends, resp, m, strength * m + resp, strength * (1 - m) + sends - resp, strength[0])


def empirical_strength(sends: np.ndarray, responses: np.ndarray, m: np.ndarray, max_strength: float,
                       z: float = EVIDENCE_SD) -> np.ndarray:
    """[K] prior strength per variant from how far its segments' observed rates sit from the model
    (empirical Bayes, method of moments): with d = r/n − m̄, E[n·d²] = n·τ² + m̄(1 − m̄), so
    τ̂² = (Σ (n·d² − m̄(1 − m̄)) − z·sd) / Σ n over the variant's observed cells, sd = sqrt(2 Σ (m̄(1 − m̄))²)
    being that sum's sd when the model is right (n·d²/m̄(1 − m̄) ~ χ²₁): only an excess beyond z sds
    counts as evidence of bias, so noise alone does not weaken the prior. A Beta prior of variance τ̂²
    has strength m̄(1 − m̄)/τ̂² − 1; without evidence of bias the strength is `max_strength`."""
    seen = sends > 0
    rate = np.divide(responses, sends, out=np.zeros_like(m), where=seen)
    mv = np.where(seen, m * (1 - m), 0.0)
    excess = np.where(seen, sends * (rate - m) ** 2, 0.0).sum(axis=0) - mv.sum(axis=0)
    tau2 = (excess - z * np.sqrt(2.0 * (mv ** 2).sum(axis=0))) / np.maximum(sends.sum(axis=0), 1.0)
    var = mv.sum(axis=0) / np.maximum(seen.sum(axis=0), 1)
    out = np.full(m.shape[1], float(max_strength))
    biased = tau2 > 0
    out[biased] = np.clip(var[biased] / tau2[biased] - 1.0, 1.0, max_strength)
    return out


def thompson(pred: np.ndarray, seg: np.ndarray, costs: np.ndarray, value_per_response: float,
             post: Posterior, draws: int, rng: np.random.Generator, chunk: int = 32) -> np.ndarray:
    """q [users, K]: the share of posterior draws in which each variant has the user's best net
    value, with the user's predictions `pred` [users, K] shifted by its segment's drawn bias."""
    theta = rng.beta(post.alpha, post.beta, size=(draws, *post.alpha.shape))
    delta = theta - post.model_mean                                   # [D, S, K]
    n, k = pred.shape
    counts = np.zeros((n, k))
    for d0 in range(0, draws, chunk):
        net = (pred[None] + delta[d0:d0 + chunk][:, seg]) * value_per_response - costs   # [d, n, K]
        counts += (net.argmax(axis=2)[..., None] == np.arange(k)).sum(axis=0)
    return counts / draws


def segment_shares(dist: np.ndarray, seg: np.ndarray, n_segments: int) -> np.ndarray:
    """[S, K] mean of the per-user distributions over each segment's users (0 where empty)."""
    out = np.zeros((n_segments, dist.shape[1]))
    np.add.at(out, seg, dist)
    n = np.bincount(seg, minlength=n_segments)[:, None]
    return np.divide(out, n, out=np.zeros_like(out), where=n > 0)


def move(prev: np.ndarray, target: np.ndarray, seg: np.ndarray, n_segments: int, cap: float):
    """Move each user's distribution from `prev` towards `target` by its segment's λ = min(1, cap / TV),
    TV = total variation between the segment's shares: (new [users, K], λ [S], TV [S])."""
    tv = 0.5 * np.abs(segment_shares(target, seg, n_segments) - segment_shares(prev, seg, n_segments)).sum(axis=1)
    lam = np.where(tv > cap, cap / np.maximum(tv, 1e-12), 1.0)
    return prev + lam[seg][:, None] * (target - prev), lam, tv


def with_floor(h: np.ndarray, floor) -> np.ndarray:
    """G = floor/K + (1 − floor)·H: every variant keeps at least floor/K (floor: a number or one per user)."""
    f = np.asarray(floor, np.float64).reshape(-1, 1) if np.ndim(floor) else float(floor)
    return f / h.shape[1] + (1.0 - f) * h


def bandit_floor(min_share: float, explorer_sends: np.ndarray, sends: np.ndarray) -> np.ndarray:
    """[S] floor the bandit must add so that a share `min_share` of each segment's sends is uniform
    over the variants, counting the scoring run's exploration slice (its sends are uniform over the
    variants): (min_share − x)/(1 − x), x = the slice's share of the segment's sends, at least 0."""
    x = np.divide(explorer_sends, sends, out=np.zeros(len(sends)), where=sends > 0)
    return np.clip((min_share - x) / np.maximum(1.0 - x, 1e-12), 0.0, 1.0)


def draw(dist: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One arm per user from its distribution [users, K] by the uniforms u (inverse CDF)."""
    cum = np.cumsum(dist, axis=1)
    cum /= cum[:, -1:]
    return np.minimum((u[:, None] >= cum).sum(axis=1), dist.shape[1] - 1)
