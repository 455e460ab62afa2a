"""scikit-uplift reference models beside the candidate, per treatment arm vs its campaign's
control on the holdout: Qini coefficient, AUUC and uplift@k of the candidate's uplift and of
two-model / class-transformation references fitted on the train split (params
evaluate.reference_uplift_models). They tell whether the network's ranking within an arm is as
good as a standard uplift learner's on the same rows; evaluate.run adds them to the report and
logs them as ref.<campaign>/<variant>.<model>.<metric>."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import layout
from campaignops.validation.contract import CONTROL


REFERENCE_MODELS = ("two_model", "class_transformation")


def _reference_estimator(kind: str, seed: int):
    """params evaluate.reference_estimator: hgb | logreg, the baselines' classifiers (models/baselines.py)."""
    from campaignops.models.baselines import classifier

    if kind not in ("hgb", "logreg"):
        raise ValueError(f"params evaluate.reference_estimator: unknown {kind!r} (hgb | logreg)")
    return classifier("gbt" if kind == "hgb" else kind, seed)


def _reference_model(name: str, kind: str, seed: int):
    from sklift.models import ClassTransformation, TwoModels

    if name == "two_model":
        return TwoModels(estimator_trmnt=_reference_estimator(kind, seed), estimator_ctrl=_reference_estimator(kind, seed),
                         method="vanilla")
    if name == "class_transformation":
        return ClassTransformation(estimator=_reference_estimator(kind, seed))
    raise ValueError(f"params evaluate.reference_uplift_models: unknown {name!r} ({' | '.join(REFERENCE_MODELS)})")


def reference_uplift(settings: Settings, meta: dict, expanded: pa.Table, frame: pd.DataFrame,
                     p_candidate: np.ndarray) -> dict:
    """Per treatment arm vs its campaign's control on the holdout: Qini coefficient, AUUC and
    uplift@k of the candidate (p(arm) - p(control)) and of scikit-uplift reference models
    (params evaluate.reference_uplift_models) fitted on the train split's rows of that arm and
    control, with the user features the T-learner baselines use (profile + sequence summaries
    of models/inputs.encode). Arms absent from the train split (a new campaign) are skipped.
    The holdout metrics weight rows as `holdout_metrics`' Qini does (models.arms.balancing_weight);
    the reference models are fitted unweighted."""
    import warnings

    from campaignops.models import metrics as m
    from campaignops.models.arms import balancing_weight
    from campaignops.models.baselines import tabular
    from campaignops.models.inputs import encode
    from campaignops.pipelines.train import load_split

    cfg = settings.params["evaluate"]
    names = list(cfg.get("reference_uplift_models", REFERENCE_MODELS))
    kind, k = str(cfg.get("reference_estimator", "hgb")), float(cfg.get("reference_uplift_k", 0.3))
    seed = int(settings.params["train"]["seed"])
    out = {"models": names, "estimator": kind, "k": k, "outcome": "responded", "arms": {}, "skipped": {}}
    if not names:
        return out
    logged = (frame["arm_id"] == frame["variant_id"]).to_numpy()  # one row per exposure: its logged arm
    hold = frame[logged].reset_index(drop=True)
    weight = balancing_weight(hold)
    seen = pq.read_table(settings.workspace / layout.FEATURES_DIR / "train.parquet", columns=["campaign_id"])
    if not set(hold["campaign_id"]) & set(seen.column("campaign_id").to_pylist()):
        out["skipped"] = {f"{c}/{v}": "campaign not in the train split (a later campaign)" for c, v in
                          hold.loc[hold["variant_id"] != CONTROL, ["campaign_id", "variant_id"]].drop_duplicates().values}
        return out
    train = load_split(settings, "train")
    x_train = tabular(encode(train, meta), meta)[0]
    t_camp, t_var = (np.asarray(train.column(c).to_pylist(), dtype=object) for c in ("campaign_id", "variant_id"))
    y_train = train.column("responded").to_numpy().astype(int)
    x_hold = tabular(encode(expanded.filter(pa.array(logged)), meta), meta)[0]
    p = pd.DataFrame({"exposure_id": frame["exposure_id"], "arm_id": frame["arm_id"], "p": p_candidate})
    p = p.pivot(index="exposure_id", columns="arm_id", values="p")
    for (cid, variant), _ in hold[hold["variant_id"] != CONTROL].groupby(["campaign_id", "variant_id"]):
        arm = f"{cid}/{variant}"
        tr = (t_camp == cid) & ((t_var == variant) | (t_var == CONTROL))
        ho = ((hold["campaign_id"] == cid) & hold["variant_id"].isin([variant, CONTROL])).to_numpy()
        t_tr, t_ho = (t_var[tr] == variant).astype(int), (hold["variant_id"][ho] == variant).to_numpy().astype(int)
        y_ho = hold["responded"][ho].to_numpy().astype(int)
        w_ho = None if (weight[ho] == 1.0).all() else weight[ho]
        if len(set(t_tr)) < 2 or len(set(y_train[tr])) < 2 or len(set(t_ho)) < 2:
            out["skipped"][arm] = "the train split lacks this arm or its control (or one outcome class)"
            continue
        ids = hold["exposure_id"][ho].to_numpy()
        uplifts = {"candidate": (p.loc[ids, variant] - p.loc[ids, CONTROL]).to_numpy()}
        for name in names:
            model = _reference_model(name, kind, seed)
            with warnings.catch_warnings():  # sklift warns on unbalanced arms; the metrics do not need balance
                warnings.simplefilter("ignore")
                model.fit(x_train[tr], y_train[tr], t_tr)
                uplifts[name] = np.asarray(model.predict(x_hold[ho]), dtype=np.float64).ravel()
        res = {"rows": {"train": int(tr.sum()), "holdout": int(ho.sum()), "holdout_treated": int(t_ho.sum())}}
        for name, u in uplifts.items():
            res[name] = {"qini": m.qini_auc_score(y_ho, u, t_ho, sample_weight=w_ho),
                         "auuc": m.uplift_auc_score(y_ho, u, t_ho, sample_weight=w_ho),
                         f"uplift_at_{round(k * 100)}": m.uplift_at_k(y_ho, u, t_ho, k=k, strategy="overall",
                                                                     sample_weight=w_ho)}
        out["arms"][arm] = res
    return out


def reference_metrics_flat(references: dict) -> dict[str, float]:
    """MLflow metric names ref.<campaign>/<variant>.<model>.<metric> of the finite values."""
    return {f"ref.{arm}.{model}.{metric}": float(v) for arm, res in references.get("arms", {}).items()
            for model, vals in res.items() if model != "rows" for metric, v in vals.items() if np.isfinite(v)}
