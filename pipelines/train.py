"""The DVC `train` stage: fits the campaign response network on data/features, saves it to
data/model and logs params, metrics, dataset hashes and the pyfunc model to MLflow. With
train.propensity_weights each exposure is weighted by 1 / its logged propensity (models/weights.py),
so exposures of the platform's own targeting teach the population's response."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import layout
from campaignops.pipelines.scoring_frames import attach_arms
from campaignops.pipelines.storage import atomic_dir, sha256_file, write_json


# The feature files a run trains on, logged as its inputs (name, MLflow input context).
DATASETS = (("train", "training"), ("valid", "validation"), ("holdout", "holdout"), ("arms", "arms"))
# The workspace's dvc.lock as the run saw it (pipelines/lineage.py reads exactly this path). In a
# `dvc repro` DVC writes a stage's lock entry after the stage completes, so while train runs the
# lock holds this run's validate and features entries (the inputs: what matters) and the previous
# run's train entry; outside DVC (`campaignops train` alone) it is whatever the last repro locked.
DVC_LOCK_ARTIFACT = "lineage/dvc.lock"
MLFLOW_DIGEST_MAX = 36   # MLflow's limit on a dataset digest (mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE)


def run_name(meta: dict) -> str:
    """`retrain <date> <batch>`, the date being the batch's as-of day (`retrain <date>` when the
    batch id is that date, as the simulator's and the daily DAG's are)."""
    batch = str(meta.get("batch") or "unknown-batch")
    day = str(meta.get("now") or "")[:10] or "undated"
    return f"retrain {day}" if batch == day else f"retrain {day} {batch}"


def locked_md5(lock_text: str | None, stage: str, path: str) -> str | None:
    """The md5 dvc.lock records for output `path` of `stage` (None without a lock or entry)."""
    if not lock_text:
        return None
    import yaml

    try:
        outs = ((yaml.safe_load(lock_text) or {}).get("stages") or {}).get(stage, {}).get("outs") or []
    except (yaml.YAMLError, AttributeError):
        return None
    return next((o.get("md5") for o in outs if isinstance(o, dict) and o.get("path") == path), None)


def run_description(meta: dict, params: dict, rows: dict, features_md5: str | None) -> str:
    """The run's description (MLflow note): what this run is, for someone auditing it."""
    dvc = f" (DVC md5 `{features_md5}` in `{DVC_LOCK_ARTIFACT}`)" if features_md5 else ""
    return (f"Candidate campaign-response model (`{params.get('model_name')}`) retrained on raw batch "
            f"`{meta.get('batch')}`, data as of {meta.get('now')}. Inputs: the batch's point-in-time features "
            f"`{layout.FEATURES_DIR}`{dvc}: {rows.get('train', 0):,} train, {rows.get('valid', 0):,} valid and "
            f"{rows.get('holdout', 0):,} holdout exposures (logged as the run's datasets, digest = the "
            f"`dataset.<file>.sha256` tags). Recipe: params `train.*` (ensemble {params.get('ensemble', 1)}, "
            f"at most {params.get('epochs')} epochs) and baselines {', '.join(params.get('baselines', [])) or 'none'}. "
            "The evaluate step logs the holdout metrics (`holdout_*`, `baseline_*`) and the gate verdict "
            "(`gate.passed`) to this run; promote registers the served model as a version when the gate passes.")


def log_datasets(mlflow, fdir, hashes: dict, features_md5: str | None) -> None:
    """Each feature file as an input of the active run: a metadata-only dataset (name, digest =
    its sha256 cut to MLflow's 36-character limit, source = the file), with input tags `sha256`
    (the full hash, = the run's `dataset.<file>.sha256` tag), `rows` and `dvc.md5` (the features
    directory's md5 in dvc.lock, when there is one)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for name, context in DATASETS:
        path = fdir / f"{name}.parquet"
        ds = MetaDataset(resolve_dataset_source(str(path.resolve())), name=name,
                         digest=hashes[name][:MLFLOW_DIGEST_MAX])
        tags = {"mlflow.data.context": context, "sha256": hashes[name],
                "rows": str(pq.ParquetFile(path).metadata.num_rows)}
        if features_md5:
            tags["dvc.md5"] = features_md5
        inputs.append(DatasetInput(ds._to_mlflow_entity(), [InputTag(k, v) for k, v in tags.items()]))
    run_id = mlflow.active_run().info.run_id
    mlflow.MlflowClient().log_inputs(run_id, datasets=inputs)


def load_split(settings: Settings, split: str, every_arm: bool = False):
    fdir = settings.workspace / layout.FEATURES_DIR
    rows = pq.read_table(fdir / f"{split}.parquet")
    arms = pq.read_table(fdir / "arms.parquet")
    return attach_arms(rows, arms, "exposure_id", every_arm)


def training_arrays(settings: Settings, split: str, meta: dict):
    """(encoded inputs, responded as float32, revenue, logged policy) of a split; the Arrow table
    they come from is dropped on return (at 1M users it holds ~1.5 GiB the fit does not need)."""
    from campaignops.models.inputs import encode

    table = load_split(settings, split)
    return (encode(table, meta), table.column("responded").to_numpy().astype(np.float32),
            table.column("revenue").to_numpy(), logged_policy(table))


def logged_policy(table) -> dict:
    """Each row's campaign_id and the propensity its arm was logged with (NaN where unknown; all
    NaN for features written before exposures carried the column)."""
    prop = table.column("propensity").to_numpy(zero_copy_only=False).astype(np.float64) \
        if "propensity" in table.column_names else np.full(table.num_rows, np.nan)
    return {"campaign_id": table.column("campaign_id").to_numpy(zero_copy_only=False), "propensity": prop}


def exposure_weights(logged: dict, params: dict) -> tuple[np.ndarray | None, dict]:
    """Inverse-propensity weights of the rows (clipped at train.max_weight, mean 1 per campaign)
    and their summary as metrics `weights.*`; (None, {}) when train.propensity_weights is off."""
    from campaignops.models import weights

    if not params.get("propensity_weights", False):
        return None, {}
    max_weight = float(params.get("max_weight", weights.MAX_WEIGHT))
    w = weights.inverse_propensity(logged["campaign_id"], logged["propensity"], max_weight)
    return w, {f"weights.{k}": v for k, v in weights.summary(w, logged["propensity"], max_weight).items()}


def seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    os.environ["PYTHONHASHSEED"] = str(seed)
    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # already initialized in this process
        pass


def revenue_scale(revenue: np.ndarray) -> float:
    """The mean positive revenue of the training rows: the revenue head learns revenue / it."""
    return float(revenue[revenue > 0].mean()) if (revenue > 0).any() else 1.0


def uplift_validation(every_arm, meta: dict) -> tuple:
    """(encoded inputs, frame) of the validation exposures under every arm: early stopping on val_qini."""
    from campaignops.models.inputs import encode

    return encode(every_arm, meta), every_arm.select(
        ["exposure_id", "campaign_id", "variant_id", "arm_id", "responded"]).to_pandas()


def fit_members(params: dict, meta: dict, train: tuple, valid: tuple, uplift_valid: tuple | None = None):
    """The recipe's network(s) on encoded (inputs, responded, revenue / revenue_scale, weights)
    of train and valid: train.ensemble networks fitted with seeds seed, seed+1, ... and averaged.
    Returns (model, histories, seconds)."""
    from campaignops.models.uplift_net import average, build_model, fit_network

    x_train, y_train, r_train, w_train = train
    x_valid, y_valid, r_valid, w_valid = valid
    n_members = int(params.get("ensemble", 1))
    if n_members < 1:
        raise ValueError(f"params train.ensemble: need >= 1 network, got {n_members}")
    members, histories = [], []
    t0 = time.perf_counter()
    for i in range(n_members):
        seed_everything(int(params["seed"]) + i)
        member = build_model(meta, params, x_train["profile"].shape[1], x_train["variant"].shape[1],
                             name=f"campaign_response_{i}" if n_members > 1 else None)
        member.get_layer("profile_norm").adapt(x_train["profile"])
        member_params = {**params, "verbose": 2, "seed": int(params["seed"]) + i}  # own batch order too
        histories.append(fit_network(member, member_params, x_train, y_train, r_train,
                                     x_valid, y_valid, r_valid, uplift_valid, w_train, w_valid))
        members.append(member)
    return average(members), histories, time.perf_counter() - t0


def fit_tables(params: dict, meta: dict, train, valid, valid_every_arm=None):
    """The recipe fitted on Arrow tables of exposures (as load_split's), in process and not
    logged: a CampaignResponseModel ready for predict_arrays. Leave-campaign-out evaluation
    (pipelines/new_campaigns.py) refits with it on the splits minus one campaign."""
    from campaignops.models.inputs import encode
    from campaignops.models.pyfunc import CampaignResponseModel

    rev_train, rev_valid = train.column("revenue").to_numpy(), valid.column("revenue").to_numpy()
    meta = {**meta, "revenue_scale": revenue_scale(rev_train)}
    uplift_valid = None
    if params.get("early_stopping_monitor") == "val_qini":
        if valid_every_arm is None:
            raise ValueError("early_stopping_monitor val_qini needs the validation rows under every arm")
        uplift_valid = uplift_validation(valid_every_arm, meta)
    model = fit_members(params, meta,
                        (encode(train, meta), train.column("responded").to_numpy().astype(np.float32),
                         rev_train / meta["revenue_scale"], exposure_weights(logged_policy(train), params)[0]),
                        (encode(valid, meta), valid.column("responded").to_numpy().astype(np.float32),
                         rev_valid / meta["revenue_scale"], exposure_weights(logged_policy(valid), params)[0]),
                        uplift_valid)[0]
    fitted = CampaignResponseModel()
    fitted.model, fitted.meta = model, meta
    return fitted


def run(settings: Settings) -> dict:
    from campaignops.models.inputs import arm_target_vocabulary, encode
    from campaignops.models.metrics import auc, log_loss
    from campaignops.models.pyfunc import NETWORK, CampaignResponseModel
    from campaignops.models.baselines import save_all, train_baselines
    from campaignops.models.uplift_net import predict
    from campaignops.pipelines import tracking

    params = settings.params["train"]
    ws = settings.workspace
    fdir = ws / layout.FEATURES_DIR
    meta = json.loads((fdir / "meta.json").read_text())
    meta["arm_targets"] = arm_target_vocabulary(pq.read_table(fdir / "arms.parquet"))
    x_train, y_train, rev_train, logged = training_arrays(settings, "train", meta)   # the table is not kept
    w_train, weight_metrics = exposure_weights(logged, params)
    valid = load_split(settings, "valid")
    w_valid = exposure_weights(logged_policy(valid), params)[0]
    x_valid = encode(valid, meta)
    y_valid = valid.column("responded").to_numpy().astype(np.float32)
    meta = {**meta, "revenue_scale": revenue_scale(rev_train)}
    scale = meta["revenue_scale"]
    rev_valid = valid.column("revenue").to_numpy()
    uplift_valid = None
    if params.get("early_stopping_monitor") == "val_qini":  # validation exposures under every arm
        uplift_valid = uplift_validation(load_split(settings, "valid", every_arm=True), meta)
    model, histories, train_seconds = fit_members(params, meta, (x_train, y_train, rev_train / scale, w_train),
                                                  (x_valid, y_valid, rev_valid / scale, w_valid), uplift_valid)
    history = histories[0]
    epochs = sum(len(h.history["loss"]) for h in histories)
    p_valid = predict(model, x_valid)[0]
    metrics = {
        "valid_auc": auc(y_valid, p_valid),
        "valid_logloss": log_loss(y_valid, p_valid),
        "train_seconds": train_seconds,
        "train_rows_per_s": len(y_train) * epochs / train_seconds,
        "train_rows": len(y_train),
        "epochs_run": epochs,
        "ensemble_members": len(histories),
        "exposures_outside_window": int((meta.get("exposures") or {}).get("outside_window", 0)),
        **weight_metrics,   # weights.min / max / ess / ess_share / null_propensity_rows / clipped_rows
    }
    # Baselines on the same split (models/baselines.py); evaluate.py scores them on the holdout.
    # Reference points, not the product: beyond baseline_max_rows they fit on a seeded sample.
    from campaignops.pipelines.drift import sample_indices

    rows = sample_indices(len(y_train), params.get("baseline_max_rows"), int(params["seed"]))
    xb = {k: v[rows] for k, v in x_train.items()}
    baselines = train_baselines(params.get("baselines", []), xb, y_train[rows], rev_train[rows] / scale,
                                x_valid, y_valid, rev_valid / scale, meta, params, int(params["seed"]),
                                None if w_train is None else w_train[rows], w_valid)
    metrics["baseline_train_rows"] = int(len(rows))
    for name, (bm, seconds) in baselines.items():
        metrics[f"baseline_{name}.train_seconds"] = seconds
        metrics[f"baseline_{name}.valid_auc"] = auc(y_valid, bm.predict(x_valid))

    mlflow = tracking.configure(settings)
    out_dir = ws / layout.MODEL_DIR
    with atomic_dir(out_dir) as tmp:
        keras_path, meta_path = tmp / "model.keras", tmp / "meta.json"
        model.save(keras_path)
        meta_path.write_text(json.dumps({**meta, "family": NETWORK}, indent=2, sort_keys=True))
        save_all(baselines, tmp / "baselines")
        hashes = {name: sha256_file(fdir / f"{name}.parquet") for name, _ in DATASETS}
        lock = ws / "dvc.lock"
        lock_text = lock.read_text() if lock.is_file() else None   # as of now: see DVC_LOCK_ARTIFACT
        features_md5 = locked_md5(lock_text, "features", layout.FEATURES_DIR.as_posix())
        rows = {"train": len(y_train), "valid": len(y_valid), "holdout": int(meta.get("rows", {}).get("holdout", 0))}
        with mlflow.start_run(run_name=run_name(meta),
                              description=run_description(meta, params, rows, features_md5)) as run:
            mlflow.log_params({f"train.{k}": v for k, v in params.items()})
            mlflow.log_params({"features.seq_len": meta["seq_len"], "data.batch": meta.get("batch")})
            mlflow.set_tags({f"dataset.{name}.parquet.sha256": h for name, h in hashes.items()})
            mlflow.set_tag("git_sha", tracking.git_revision(settings))
            log_datasets(mlflow, fdir, hashes, features_md5)
            if lock_text is not None:
                mlflow.log_text(lock_text, DVC_LOCK_ARTIFACT)
            from campaignops.pipelines import drift

            drift.write_reference(fdir, meta, tmp / drift.REFERENCE_DIR, mlflow)  # the drift gate's training snapshot
            for epoch, (loss, val_auc) in enumerate(zip(history.history["loss"],
                                                        history.history["val_response_auc"])):
                mlflow.log_metrics({"epoch_loss": loss, "epoch_val_auc": val_auc}, step=epoch)
            mlflow.log_metrics(metrics)
            example = valid.slice(0, 5).select(["seq_tokens", *meta.get("seq_channels", {}), *meta["profile_cols"],
                                                "is_control", "type", "discount_rate", "channel",
                                                "target_category", "cost_per_send"]).to_pandas()
            for col in ["seq_tokens", *meta.get("seq_channels", {})]:
                example[col] = example[col].map(lambda v: np.asarray(v, dtype=np.int32))
            from mlflow.models import infer_signature

            signature = infer_signature(example, model_output_frame(model, encode(valid.slice(0, 5), meta), meta))
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=CampaignResponseModel(),
                artifacts={"keras_model": str(keras_path), "meta": str(meta_path)},
                signature=signature,
                pip_requirements=tracking.pip_requirements(),
            )
            baseline_uris = log_baselines(mlflow, baselines, tmp / "baselines", meta, signature,
                                          revenue_per_response=float(rev_train.sum() / max(y_train.sum(), 1.0)))
        record = {"run_id": run.info.run_id, "model_uri": info.model_uri, "baseline_uris": baseline_uris,
                  "experiment_id": run.info.experiment_id, "metrics": metrics}
        write_json(tmp / "run.json", record)
    write_json(ws / layout.REPORTS_DIR / "train_metrics.json", metrics)
    return record


def log_baselines(mlflow, baselines: dict, root, meta: dict, signature, revenue_per_response: float) -> dict:
    """Each fitted baseline (saved under `root` by models.baselines.save_all) logged to the active
    run as a pyfunc model `baselines/<name>` beside the network, so the gate may serve it
    (pipelines/family.py); returns {name: model URI}. The T-learners predict the response only:
    their expected revenue is p × revenue_per_response (the training rows' revenue per response)."""
    from campaignops.models.baselines import TLearner
    from campaignops.models.pyfunc import CampaignResponseModel, TLearnerResponseModel
    from campaignops.pipelines import tracking

    uris = {}
    for name, (model, _) in baselines.items():
        meta_path = root / name / "meta.json"
        meta_path.write_text(json.dumps({**meta, "family": name, "revenue_per_response": revenue_per_response},
                                        indent=2, sort_keys=True))
        if isinstance(model, TLearner):
            python_model, artifacts = TLearnerResponseModel(), {"tlearner": str(root / name)}
        else:
            python_model, artifacts = CampaignResponseModel(), {"keras_model": str(root / name / "model.keras")}
        info = mlflow.pyfunc.log_model(name=f"baseline_{name}", python_model=python_model,
                                       artifacts={**artifacts, "meta": str(meta_path)}, signature=signature,
                                       pip_requirements=tracking.pip_requirements())
        uris[name] = info.model_uri
    return uris


def model_output_frame(model, inputs, meta):
    import pandas as pd

    from campaignops.models.uplift_net import predict

    p, revenue = predict(model, inputs)
    return pd.DataFrame({"p_response": p, "expected_revenue": revenue * meta["revenue_scale"]})
