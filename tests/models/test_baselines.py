"""Baselines: sequence summaries are exact, T-learners recover a known heterogeneous effect
that lives in the arm × user features, and everything round-trips through save/load."""
from __future__ import annotations

import numpy as np
import pytest

from campaignops.models.baselines import (
    NAMES,
    TLearner,
    fit_weighted,
    load_all,
    save_all,
    sequence_summaries,
    train_baselines,
)

META = {"seq_len": 6, "vocab": {"categories": ["c0", "c1"], "event_types": ["browse", "buy"]},
        "profile_cols": ["a", "b"]}


def test_sequence_summaries_counts_categories_types_and_length():
    n_cat = 3  # 2 categories + 1
    # tokens: 1 + type*n_cat + cat ; row 0: [pad, pad, browse c0, browse c1, buy c1, buy c1]
    seq = np.array([[0, 0, 1, 2, 1 + n_cat + 1, 1 + n_cat + 1], [0] * 6], dtype=np.int32)
    s = sequence_summaries(seq, META)
    assert s.shape == (2, 2 * n_cat + 2 + 1)
    np.testing.assert_allclose(s[0, :n_cat], [0.25, 0.75, 0.0])      # category shares, all events
    np.testing.assert_allclose(s[0, 2 * n_cat:2 * n_cat + 2], [0.5, 0.5])  # browse / buy shares
    assert s[0, -1] == pytest.approx(4 / 6) and np.all(s[1] == 0)    # empty history → zeros


def world(n, seed):
    """Treatment (arm attribute d=1) helps users with profile a>0 and hurts a<0; control 0.2."""
    rng = np.random.default_rng(seed)
    profile = rng.normal(size=(n, 2)).astype(np.float32)
    control = rng.random(n) < 0.3
    variant = np.zeros((n, 4), np.float32)     # [is_control, d, affinity_all, affinity_recent]
    variant[control, 0] = 1
    variant[~control, 1] = 1
    p = np.where(control, 0.2, np.where(profile[:, 0] > 0, 0.5, 0.05))
    y = (rng.random(n) < p).astype(int)
    seq = rng.integers(0, 7, (n, 6)).astype(np.int32)
    return {"seq": seq, "profile": profile, "variant": variant}, y


@pytest.mark.parametrize("kind", ["gbt", "logreg"])
def test_tlearner_recovers_the_sign_of_the_effect(kind, tmp_path):
    x, y = world(4000, 0)
    model = TLearner(kind, seed=0).fit(x, y, META)
    xt, _ = world(1000, 1)
    treated = {**xt, "variant": np.tile(np.array([[0, 1, 0, 0]], np.float32), (1000, 1))}
    ctrl = {**xt, "variant": np.tile(np.array([[1, 0, 0, 0]], np.float32), (1000, 1))}
    uplift = model.predict(treated) - model.predict(ctrl)
    pos = xt["profile"][:, 0] > 0
    assert uplift[pos].mean() > 0.15 and uplift[~pos].mean() < -0.05
    model.save(tmp_path / "t")
    np.testing.assert_allclose(TLearner.load(tmp_path / "t").predict(treated), model.predict(treated))


def test_train_save_load_all_baselines(tmp_path):
    x, y = world(1500, 2)
    xv, yv = world(500, 3)
    params = {"embed_dim": 4, "gru_units": 4, "dense_units": [8, 4], "dropout": 0.0, "learning_rate": 0.01,
              "epochs": 2, "batch_size": 256}
    meta = {**META, "seq_len": 6}
    fitted = train_baselines(NAMES, x, y, y * 0.0, xv, yv, yv * 0.0, meta, params, seed=0)
    assert set(fitted) == set(NAMES) and all(s > 0 for _, s in fitted.values())
    save_all(fitted, tmp_path / "b")
    loaded = load_all(tmp_path / "b", meta)
    for name in NAMES:
        p = loaded[name].predict(xv)
        assert p.shape == (500,) and np.all((p >= 0) & (p <= 1))
        np.testing.assert_allclose(p, fitted[name][0].predict(xv), atol=1e-6)
    assert load_all(tmp_path / "missing", meta) == {}
    with pytest.raises(ValueError):
        train_baselines(["nope"], x, y, y, xv, yv, yv, meta, params)


def test_tlearner_fits_with_sample_weights():
    """Inverse-propensity weights reach both T-learner models (the logreg pipeline's final step):
    up-weighting the responders raises the predicted response of control and treated rows alike."""
    x, y = world(1500, 4)
    w = np.where(y > 0, 4.0, 1.0)
    plain = TLearner("logreg", seed=0).fit(x, y, META)
    heavy = TLearner("logreg", seed=0).fit(x, y, META, w / w.mean())
    control = x["variant"][:, 0] > 0.5
    for rows in (control, ~control):
        sub = {k: v[rows] for k, v in x.items()}
        assert heavy.predict(sub).mean() > plain.predict(sub).mean() + 0.05


def test_fit_weighted_passes_weights_to_the_estimator_or_refuses():
    """A plain estimator (the gbt T-learner's) gets the weights in its own fit: zero weights drop
    rows exactly; one whose fit takes no sample_weight is refused, also at a pipeline's end."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs = np.random.default_rng(0).normal(size=(20, 2))
    ys = (xs[:, 0] + np.random.default_rng(1).normal(size=20) > 0).astype(int)
    keep = np.arange(20) < 12
    weighted = fit_weighted(LogisticRegression(), xs, ys, keep.astype(float))
    np.testing.assert_allclose(weighted.coef_, LogisticRegression().fit(xs[keep], ys[keep]).coef_, rtol=1e-4)
    assert fit_weighted(KNeighborsClassifier(3), xs, ys).predict(xs).shape == (20,)   # unweighted: any estimator
    for est in (KNeighborsClassifier(3), make_pipeline(StandardScaler(), KNeighborsClassifier(3))):
        with pytest.raises(ValueError, match="takes no sample_weight"):
            fit_weighted(est, xs, ys, np.ones(20))
