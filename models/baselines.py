"""Baselines the deep model must beat, trained on the same split and scored with the same
holdout metrics (pipelines/evaluate.holdout_metrics):

- `tlearner_gbt` / `tlearner_logreg`: a T-learner. Arms of a new campaign are never seen in
  training (the holdout is a later campaign), so "per arm" means one model for the control
  arm, f0(user), and one for treated arms, f1(user, arm attributes); p(arm) = f1 for a
  treatment and f0 for control. Users are described by the profile plus simple sequence
  summaries (per-category shares over all and the recent events, per-event-type shares,
  sequence length); arms by their encoded attributes incl. the target-category affinity.
- `mlp_noseq`: the main network without the sequence encoder (same heads, same training).

Each baseline has fit(...) / predict(x) -> p_response over the {"seq","profile","variant"}
arrays of models/inputs.encode, and save(dir) / load(dir). fit takes per-row sample weights
(inverse-propensity weights, models/weights.py) where the estimator supports them: all three do."""
from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np

from campaignops.models.inputs import RECENT

NAMES = ("tlearner_gbt", "tlearner_logreg", "mlp_noseq")


def sequence_summaries(seq: np.ndarray, meta: dict) -> np.ndarray:
    """[n, 2·n_cat + n_types + 1]: category shares (all, last RECENT events), event-type shares, length."""
    n_cat = len(meta["vocab"]["categories"]) + 1
    n_types = len(meta["vocab"]["event_types"])
    valid = seq > 0
    cat = np.where(valid, (seq - 1) % n_cat, -1)
    typ = np.where(valid, (seq - 1) // n_cat, -1)
    n = np.maximum(valid.sum(1, keepdims=True), 1)
    n_recent = np.maximum(valid[:, -RECENT:].sum(1, keepdims=True), 1)
    cat_all = np.stack([(cat == c).sum(1) for c in range(n_cat)], 1) / n
    cat_recent = np.stack([(cat[:, -RECENT:] == c).sum(1) for c in range(n_cat)], 1) / n_recent
    types = np.stack([(typ == t).sum(1) for t in range(n_types)], 1) / n
    return np.concatenate([cat_all, cat_recent, types, valid.sum(1, keepdims=True) / seq.shape[1]],
                          axis=1).astype(np.float32)


def tabular(x: dict[str, np.ndarray], meta: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user features, arm features without is_control, is_control) from encoded inputs."""
    user = np.concatenate([x["profile"], sequence_summaries(x["seq"], meta)], axis=1)
    return user, x["variant"][:, 1:], x["variant"][:, 0] > 0.5


def classifier(kind: str, seed: int = 0, max_iter: int = 200):
    """The tabular classifier of the baselines (and of evaluate's scikit-uplift references):
    "gbt" histogram gradient boosting with early stopping, or "logreg" scaled logistic regression."""
    if kind == "gbt":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=0.05, max_leaf_nodes=15,
                                              min_samples_leaf=40, l2_regularization=1.0,
                                              early_stopping=True, validation_fraction=0.15,
                                              n_iter_no_change=15, random_state=seed)
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    raise ValueError(f"unknown T-learner kind {kind!r}")


def fit_weighted(estimator, x: np.ndarray, y: np.ndarray, sample_weight=None):
    """estimator.fit(x, y) with per-row weights when given: passed to the estimator's own fit, or to
    a pipeline's last step (the scaler of "logreg" stays unweighted); an estimator whose fit takes
    no sample_weight is refused rather than silently fitted unweighted."""
    if sample_weight is None:
        return estimator.fit(x, y)
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import has_fit_parameter

    if isinstance(estimator, Pipeline):
        name, last = estimator.steps[-1]
        if has_fit_parameter(last, "sample_weight"):
            return estimator.fit(x, y, **{f"{name}__sample_weight": sample_weight})
    elif has_fit_parameter(estimator, "sample_weight"):
        return estimator.fit(x, y, sample_weight=sample_weight)
    raise ValueError(f"{type(estimator).__name__} takes no sample_weight; set params train.propensity_weights: false "
                     "or use a baseline that does")


class TLearner:
    def __init__(self, kind: str = "gbt", seed: int = 0, max_iter: int = 200):
        self.kind, self.seed, self.max_iter = kind, seed, max_iter
        self.meta: dict | None = None
        self.control_model = self.treated_model = None

    def _estimator(self):
        return classifier(self.kind, self.seed, self.max_iter)

    def fit(self, x: dict[str, np.ndarray], y: np.ndarray, meta: dict, sample_weight=None) -> "TLearner":
        self.meta = meta
        user, arm, control = tabular(x, meta)
        y = np.asarray(y).astype(int)
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        self.control_model = fit_weighted(self._estimator(), user[control], y[control],
                                          None if w is None else w[control])
        self.treated_model = fit_weighted(self._estimator(), np.concatenate([user, arm], 1)[~control], y[~control],
                                          None if w is None else w[~control])
        return self

    def predict(self, x: dict[str, np.ndarray]) -> np.ndarray:
        user, arm, control = tabular(x, self.meta)
        p = np.empty(len(user))
        if control.any():
            p[control] = self.control_model.predict_proba(user[control])[:, 1]
        if (~control).any():
            p[~control] = self.treated_model.predict_proba(np.concatenate([user, arm], 1)[~control])[:, 1]
        return p

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "model.pkl").write_bytes(pickle.dumps(self))

    @staticmethod
    def load(path: Path) -> "TLearner":
        return pickle.loads((Path(path) / "model.pkl").read_bytes())


class NoSequenceMLP:
    """The main network (models/uplift_net.build_model) with sequence=False."""

    def __init__(self, params: dict):
        self.params = params
        self.model = None

    def fit(self, x_train, y_train, rev_train, x_valid, y_valid, rev_valid, meta: dict,
            sample_weight=None, valid_weight=None) -> "NoSequenceMLP":
        from campaignops.models.uplift_net import build_model, fit_network

        self.model = build_model(meta, self.params, x_train["profile"].shape[1], x_train["variant"].shape[1],
                                 sequence=False)
        self.model.get_layer("profile_norm").adapt(x_train["profile"])
        self.history = fit_network(self.model, self.params, x_train, y_train, rev_train, x_valid, y_valid, rev_valid,
                                   w_train=sample_weight, w_valid=valid_weight)
        return self

    def predict(self, x: dict[str, np.ndarray]) -> np.ndarray:
        from campaignops.models.uplift_net import predict

        return predict(self.model, x)[0]

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.model.save(path / "model.keras")

    @staticmethod
    def load(path: Path) -> "NoSequenceMLP":
        import keras

        obj = NoSequenceMLP({})
        obj.model = keras.saving.load_model(Path(path) / "model.keras", compile=False)
        return obj


def train_baselines(names, x_train, y_train, rev_train, x_valid, y_valid, rev_valid, meta: dict,
                    params: dict, seed: int = 0, w_train=None, w_valid=None) -> dict[str, tuple[object, float]]:
    """Fit each named baseline (with the rows' sample weights when given); returns
    {name: (fitted model, fit seconds)}."""
    out = {}
    for name in names:
        t0 = time.perf_counter()
        if name == "tlearner_gbt":
            model = TLearner("gbt", seed).fit(x_train, y_train, meta, w_train)
        elif name == "tlearner_logreg":
            model = TLearner("logreg", seed).fit(x_train, y_train, meta, w_train)
        elif name == "mlp_noseq":
            model = NoSequenceMLP(params).fit(x_train, y_train, rev_train, x_valid, y_valid, rev_valid, meta,
                                              w_train, w_valid)
        else:
            raise ValueError(f"unknown baseline {name!r}; known: {NAMES}")
        out[name] = (model, time.perf_counter() - t0)
    return out


def save_all(models: dict[str, tuple[object, float]], root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, (model, seconds) in models.items():
        model.save(root / name)
    (root / "index.json").write_text(json.dumps({name: {"fit_seconds": s} for name, (_, s) in models.items()},
                                                indent=2, sort_keys=True))


def load_all(root: Path, meta: dict) -> dict[str, object]:
    root = Path(root)
    if not (root / "index.json").exists():
        return {}
    out = {}
    for name in json.loads((root / "index.json").read_text()):
        model = NoSequenceMLP.load(root / name) if name == "mlp_noseq" else TLearner.load(root / name)
        if isinstance(model, TLearner):
            model.meta = meta
        out[name] = model
    return out
