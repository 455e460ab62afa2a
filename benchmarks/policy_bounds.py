"""Where the synthetic world's oracle gap comes from: information bounds on the policy value.

For the last past campaign of the configured world (the one the time split holds out), every
user at mid-campaign, this fits per arm a gradient-boosted regressor to the TRUE response logit
from a given set of per-user inputs, in sample (no estimation noise, no new-arm generalisation),
and reports the best-arm policy's value as a share of the oracle's (policy / oracle) and of the
oracle's uplift over no-send. Input sets, from most to least informed:

- latents: every latent trait the truth uses (price sensitivity, abandonment, recent activity,
  interest active at t, base propensity, preferred channel) → ≈1.0 by construction;
- latents without the preferred channel (what the channel preference is worth);
- observable estimates + preferred channel: the traits as a model can read them off the events
  (category-adjusted mean log price, cart→purchase share, events in the last 14 days, category
  counts of the last 14 days), with the latent channel still given;
- observable estimates + CRM flags: what the data actually shows (user_attributes flags);
- observable estimates only.

The last two are the bound any model fitted to outcomes faces on this world before estimation
noise; benchmarks/policy_ceiling.py measures the same through the real features and a held-out
campaign with new arms.

    .venv/bin/python benchmarks/policy_bounds.py [--users 20000] [--seed 7]
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np


def main() -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    from campaignops.config import load_settings
    from campaignops.pipelines import sim_events as E
    from campaignops.pipelines import sim_world as S
    from campaignops.validation.contract import CHANNELS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    p = load_settings().params["data"]
    seed = int(a.seed if a.seed is not None else p["seed"])
    w, chunks_seed = S.make_world(p, a.users, seed)
    camps, n_cat = w.campaigns, w.n_categories
    rng = np.random.default_rng(chunks_seed.spawn(1)[0])
    u, _, lo = S._users(rng, w, 0, a.users)
    ev, ui_e, ts_e = E._events(rng, w, u, lo)
    camp = camps[-2]                                  # the last past campaign: the holdout's
    t = np.full(u.n, (camp.start_ms + camp.end_ms) // 2, dtype=np.int64)
    ui = np.arange(u.n)
    n_recent = E._Recency(ui_e, ts_e, w.hist_start - 800 * S.DAY_MS).count(ui, t)
    P, _ = S.true_arms(u, ui, t, n_recent, camp)
    oracle, control = P.max(1).mean(), P[:, 0].mean()

    def bound(feats: list[np.ndarray]) -> dict:
        X = np.column_stack(feats)
        pred = np.column_stack([
            HistGradientBoostingRegressor(max_iter=300, random_state=0).fit(X, np.log(P[:, j] / (1 - P[:, j]))).predict(X)
            for j in range(P.shape[1])])
        v = P[ui, pred.argmax(1)].mean()
        return {"policy_to_oracle_ratio": round(float(v / oracle), 4),
                "uplift_share": round(float((v - control) / (oracle - control)), 4)}

    # What the events show (before t): the same signals the features step derives.
    et = np.asarray(ev.column("event_type").to_numpy(zero_copy_only=False))
    cat = np.array([int(c[1:]) for c in ev.column("category").to_numpy(zero_copy_only=False)])
    lp = np.log(ev.column("price").to_numpy()) - np.linspace(-0.4, 0.4, n_cat)[cat]
    before = ts_e < t[ui_e]
    cnt = np.bincount(ui_e[before], minlength=u.n)
    ps_hat = np.where(cnt > 0, -(np.bincount(ui_e[before], lp[before], u.n) / np.maximum(cnt, 1) - math.log(45)) / 0.9, 0.5)
    carts = np.bincount(ui_e[before & (et == "cart")], minlength=u.n)
    buys = np.bincount(ui_e[before & (et == "purchase")], minlength=u.n)
    ab_hat = np.where(carts > 0, 1 - buys / np.maximum(carts, 1), 0.4)
    recent = before & (ts_e >= t[ui_e] - S.RECENT_DAYS * S.DAY_MS)
    cats_recent = np.zeros((u.n, n_cat))
    np.add.at(cats_recent, (ui_e[recent], cat[recent]), 1)
    flags = S._attributes(rng, w, u).column("value_num").to_numpy().reshape(u.n, len(S.CRM_FLAGS))

    interest = np.where(t < u.switch, u.old, u.cur)
    latents = [u.ps, u.abandon, np.log1p(n_recent), np.eye(n_cat)[interest], u.base]
    observed = [ps_hat, cnt, ab_hat, carts, np.log1p(n_recent), cats_recent, u.age]
    pref = np.eye(len(CHANNELS))[u.pref]
    out = {"campaign": camp.campaign_id, "arms": [f"{x.type}/{x.channel}/{x.discount_rate}" for x in camp.variants],
           "users": u.n, "oracle_value": round(float(oracle), 5), "control_value": round(float(control), 5),
           "bounds": {"latents": bound(latents + [pref]),
                      "latents_without_preferred_channel": bound(latents),
                      "observed_plus_preferred_channel": bound(observed + [pref]),
                      "observed_plus_crm_flags": bound(observed + [flags]),
                      "observed_only": bound(observed)}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
