"""Evaluates the candidate model and the current champion on the same holdout (response AUC,
log loss, per-variant Qini, policy value by IPS and, on synthetic data, against the oracle)
and decides whether the candidate may be promoted.

The holdout is the latest exposures, which the platform's own targeting chose: IPS divides by
each exposure's logged propensity and the Qini / uplift metrics weight rows by arm share over
propensity (models/arms.py), so the users a model sent are not compared with the users it chose
not to send. Exposures without a propensity (legacy randomized or imported logs) fall back to
their arm's share of the campaign, which gives exactly the randomized-log metrics. The weights
are not clipped: a clip would bias the estimate, and SNIPS already bounds each row's influence."""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.models.arms import arm_matrix, logged_view, logging_propensity, mean_qini, random_qini_sd
from campaignops.pipelines import layout
from campaignops.pipelines.storage import atomic_path, write_json
from campaignops.validation.contract import CONTROL


def truth_column(frame: pd.DataFrame, truth: pd.DataFrame, column: str) -> np.ndarray:
    """The truth's `column` (p_response, expected_revenue) of each (exposure, arm) row of `frame`."""
    return frame[["exposure_id", "arm_id"]].merge(
        truth.rename(columns={"variant_id": "arm_id"})[["exposure_id", "arm_id", column]],
        on=["exposure_id", "arm_id"], how="left")[column].to_numpy(dtype=np.float64)


def true_response(frame: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """The true response probability of each (exposure, arm) row of `frame` (synthetic worlds):
    its `p_true` column when `attach_truth` added one (subsets keep it), else looked up in truth."""
    if "p_true" in frame:
        return frame["p_true"].to_numpy(dtype=np.float64)
    return truth_column(frame, truth, "p_response")


def attach_truth(frame: pd.DataFrame, truth: pd.DataFrame | None) -> pd.DataFrame:
    """frame with a `p_true` column, looked up once: every metric of every model, slice and
    permutation then reads it instead of joining the whole truth table again (at 1M users
    that join took 4 s, and the report made ~70 of them)."""
    if truth is None:
        return frame
    return frame.assign(p_true=true_response(frame, truth))


class PolicyChoice(NamedTuple):
    """One model's policy on the logged holdout exposures (best arm by predicted response,
    control = no send) and what the logs and, on synthetic worlds, the truth say of it."""
    arms: pd.DataFrame       # arm id per slot, one row per exposure (models.arms.arm_matrix)
    P: np.ndarray            # predicted response, exposures × arm slots
    logged_slot: np.ndarray  # slot of the arm each exposure was logged at
    chosen: np.ndarray       # slot of the chosen arm per exposure
    chosen_ids: np.ndarray   # its arm id
    logged: np.ndarray       # the arm each exposure was logged at
    y: np.ndarray            # its outcome
    propensity: np.ndarray   # P(logged arm | user): the logged propensity, else the arm's share of its campaign
    value_true: np.ndarray | None   # true response probability of the chosen arm (synthetic worlds)
    T: np.ndarray | None     # true response of every slot (synthetic worlds)


def policy_choice(expanded: pd.DataFrame, p: np.ndarray, truth: pd.DataFrame | None) -> PolicyChoice:
    arms, P, exposures, arm_ids, logged_slot = logged_view(expanded, p)
    rows = np.arange(len(exposures))
    chosen = np.nanargmax(P, axis=1)
    propensity = logging_propensity(exposures)[0]
    T = arm_matrix(expanded, true_response(expanded, truth))[1] if truth is not None else None
    return PolicyChoice(arms, P, logged_slot, chosen, arm_ids[rows, chosen], exposures["variant_id"].to_numpy(),
                        exposures["responded"].to_numpy().astype(float), propensity,
                        T[rows, chosen] if T is not None else None, T)


def holdout_metrics(expanded: pd.DataFrame, p: np.ndarray, truth: pd.DataFrame | None,
                    choice: PolicyChoice | None = None, revenue: np.ndarray | None = None) -> dict:
    """All holdout metrics for one model's per-arm predictions `p` (aligned with `expanded`);
    with `truth` (synthetic worlds) also the true policy value against the oracle. `choice`:
    `policy_choice(expanded, p, truth)` if the caller already has it. With the model's expected
    `revenue` per row and a `revenue` column in `expanded` (the exposure's actual revenue), also
    the revenue RMSE over the logged arms."""
    from campaignops.models import metrics as m

    c = choice if choice is not None else policy_choice(expanded, p, truth)
    y = c.y
    p_logged = c.P[np.arange(len(y)), c.logged_slot]

    out = {"holdout_rows": int(len(y)), "auc": m.auc(y, p_logged), "logloss": m.log_loss(y, p_logged),
           "ece": m.ece(y, p_logged)}

    # Qini per (campaign, treatment arm) against that campaign's control, then the mean
    # (rows weighted by arm share / propensity on targeted logs).
    out["qini"] = mean_qini(expanded, p, wide=(c.arms, c.P))

    # Policy: best arm by predicted response (control = no send); SNIPS with the logged propensities.
    out["policy_value_ips"] = m.snips_policy_value(c.chosen_ids, c.logged, y, c.propensity)
    out["control_value_ips"] = m.snips_policy_value(np.full(len(y), CONTROL, dtype=object), c.logged, y,
                                                    c.propensity)
    out["send_share"] = float(np.mean(c.chosen_ids != CONTROL))
    if revenue is not None and "revenue" in expanded:
        logged_rows = (expanded["arm_id"] == expanded["variant_id"]).to_numpy()
        out["revenue_rmse"] = m.revenue_rmse(expanded["revenue"].to_numpy(dtype=np.float64)[logged_rows],
                                             np.asarray(revenue, dtype=np.float64)[logged_rows])

    if truth is not None:
        oracle = float(np.nanmean(np.nanmax(c.T, axis=1)))
        control_true = float(np.mean(c.T[:, -1]))
        policy_true = float(np.mean(c.value_true))
        out.update({"policy_value_true": policy_true, "oracle_value": oracle, "control_value_true": control_true,
                    "policy_value_fraction": m.fraction_of_oracle(policy_true, control_true, oracle),
                    "policy_to_oracle_ratio": policy_true / oracle})
    return out


def policy_lead(a: PolicyChoice, b: PolicyChoice, draws: int = 200, seed: int = 0) -> dict:
    """How far policy A (`policy_choice`) is ahead of policy B on the same holdout, and the
    bootstrap sd of that lead over the holdout's exposures (paired: both policies on each
    resample). The value is the true policy value on synthetic worlds, else SNIPS on the logs
    (with their propensities)."""
    n = len(a.y)
    truth = a.value_true is not None and b.value_true is not None
    if truth:
        diff = a.value_true - b.value_true

        def lead(c: np.ndarray) -> float:
            return float(c @ diff / c.sum())
    else:
        wa, wb = (a.chosen_ids == a.logged) / a.propensity, (b.chosen_ids == b.logged) / b.propensity

        def lead(c: np.ndarray) -> float:
            ca, cb = c @ wa, c @ wb
            return float(c @ (wa * a.y) / ca - c @ (wb * b.y) / cb) if ca > 0 and cb > 0 else float("nan")
    rng = np.random.default_rng(seed)
    boot = [lead(np.bincount(rng.integers(0, n, n), minlength=n).astype(float)) for _ in range(draws)]
    return {"metric": "policy_value_true" if truth else "policy_value_ips",
            "lead": lead(np.ones(n)), "sd": float(np.nanstd(boot, ddof=1)) if draws > 1 else float("nan")}


def lead_verdict(lead: float, sd: float, tolerance_sd: float) -> str:
    """ahead / behind when the lead is beyond tolerance_sd bootstrap sds either way, else tie
    (undetermined when the lead is: SNIPS without a single logged match)."""
    if not np.isfinite(lead):
        return "undetermined"
    margin = tolerance_sd * sd if np.isfinite(sd) else 0.0
    return "ahead" if lead > margin else "behind" if lead < -margin else "tie"


def load_holdout(settings: Settings) -> tuple[pa.Table, pd.DataFrame, pd.DataFrame | None]:
    from campaignops.pipelines.train import load_split

    fdir = settings.workspace / layout.FEATURES_DIR
    expanded = load_split(settings, "holdout", every_arm=True)
    cols = ["exposure_id", "campaign_id", "variant_id", "arm_id", "responded", "revenue"]
    frame = expanded.select(cols + ["propensity"] * ("propensity" in expanded.column_names)).to_pandas()
    truth = pq.read_table(fdir / "truth.parquet").to_pandas() if (fdir / "truth.parquet").exists() else None
    return expanded, attach_truth(frame, truth), truth


def predict_expanded(python_model, expanded: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(response probability, expected revenue) of every (exposure, arm) row."""
    from campaignops.models.inputs import encode

    # The expanded frame's arm attributes must be those of `arm_id`, which attach_arms provides.
    return python_model.predict_arrays(encode(expanded, python_model.meta))


def gate(candidate: dict, champion: dict | None, thresholds: dict) -> tuple[bool, list[str]]:
    """Absolute thresholds via MLflow's validator; the champion check allows a small tolerance
    (MLflow's baseline checks can only demand a strictly positive improvement, which would
    block re-promoting an unchanged model). The Qini floor is min_qini lowered by
    qini_tolerance_sd random-ranking sds (`qini_random_sd`, when measured): on a small holdout
    a model that ranks no better than chance scores anywhere within that band of 0."""
    import mlflow
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation.base import EvaluationResult

    qini_floor, qini_note = float(thresholds["min_qini"]), ""
    sd, k = candidate.get("qini_random_sd"), float(thresholds.get("qini_tolerance_sd", 0.0))
    if k and sd is not None and np.isfinite(sd):
        qini_floor -= k * sd
        qini_note = f" (min_qini {thresholds['min_qini']} − {k:g} × random-ranking sd {sd:.4f})"
    checks = {"auc": MetricThreshold(threshold=thresholds["min_auc"], greater_is_better=True),
              "logloss": MetricThreshold(threshold=thresholds["max_logloss"], greater_is_better=False),
              "qini": MetricThreshold(threshold=qini_floor, greater_is_better=True)}
    if "policy_value_fraction" in candidate:
        checks["policy_value_fraction"] = MetricThreshold(
            threshold=thresholds["min_policy_value_fraction"], greater_is_better=True)
    reasons: list[str] = []
    for name, check in checks.items():
        try:
            mlflow.validate_evaluation_results({name: check}, EvaluationResult({name: candidate[name]}, {}))
        except Exception as exc:  # ModelValidationFailedException
            reasons.append(str(exc).strip().splitlines()[0] + (qini_note if name == "qini" else ""))
    if champion is not None:
        key = "policy_value_true" if "policy_value_true" in candidate else "policy_value_ips"
        if candidate[key] < champion[key] - thresholds["champion_tolerance"]:
            reasons.append(f"{key} {candidate[key]:.4f} trails the champion's {champion[key]:.4f} "
                           f"by more than {thresholds['champion_tolerance']}")
        tol = thresholds.get("revenue_rmse_tolerance")
        if tol is not None and "revenue_rmse" in candidate and "revenue_rmse" in champion \
                and candidate["revenue_rmse"] > champion["revenue_rmse"] * (1 + float(tol)):
            reasons.append(f"revenue_rmse {candidate['revenue_rmse']:.4f} exceeds the champion's "
                           f"{champion['revenue_rmse']:.4f} by more than {float(tol):.0%}")
    return not reasons, reasons


def run(settings: Settings) -> dict:
    from campaignops.pipelines import family, tracking

    mlflow = tracking.configure(settings)
    ws = settings.workspace
    stale = [ws / layout.REPORTS_DIR / name for name in ("evaluation.json", "evaluation.html")]
    for path in stale:   # a failed evaluation must not leave the last one's figures looking current
        path.unlink(missing_ok=True)
    record = json.loads((ws / layout.MODEL_DIR / "run.json").read_text())
    model_name = settings.params["train"]["model_name"]
    logged = logged_evaluation(mlflow, record["run_id"])
    if logged is not None:   # a rerun of the same candidate: the verdict stands, nothing re-logged
        logged["reused"] = True
        write_json(ws / layout.REPORTS_DIR / "evaluation.json", logged)
        return logged
    expanded, frame, truth = load_holdout(settings)

    candidate_model = mlflow.pyfunc.load_model(record["model_uri"]).unwrap_python_model()
    from campaignops.models.inputs import encode

    x_holdout = encode(expanded, candidate_model.meta)
    p_candidate, rev_candidate = candidate_model.predict_arrays(x_holdout)
    candidate_choice = policy_choice(frame, p_candidate, truth)
    candidate = holdout_metrics(frame, p_candidate, truth, candidate_choice, rev_candidate)
    candidate["qini_random_sd"] = random_qini_sd(frame, draws=int(settings.params["evaluate"]["qini_noise_draws"]))
    thresholds = settings.params["evaluate"]
    baselines, vs_baselines, baseline_p = baseline_metrics(ws / layout.MODEL_DIR / "baselines", candidate_model.meta,
                                                           x_holdout, frame, truth, candidate_choice, thresholds)
    choice = family.choose(vs_baselines, record.get("baseline_uris") or {}, record["model_uri"],
                           family.config(settings))
    served = candidate if choice["served"] == family.NETWORK else \
        {**baselines[choice["served"]], "qini_random_sd": candidate["qini_random_sd"]}
    champion, champion_version, champion_logged, incomparable = None, None, None, None
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(model_name, "champion")
        champion_version = str(mv.version)
        champion_logged = client.get_run(mv.run_id).data.metrics if mv.run_id else None
        champ_model = mlflow.pyfunc.load_model(f"models:/{model_name}@champion").unwrap_python_model()
    except mlflow.exceptions.MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" not in str(exc) and "not found" not in str(exc).lower():
            raise
    else:
        champion, incomparable = champion_on_holdout(champ_model, champion_version, expanded, frame, truth)
    passed, reasons = gate(served, champion, thresholds)
    if incomparable is not None:
        rule = thresholds.get("incomparable_champion", "refuse")
        if rule == "refuse":
            passed = False
            reasons.append(f"{incomparable} (params evaluate.incomparable_champion: refuse; set it to promote "
                           "to replace a champion of other data, or train under another train.model_name)")
    behind = [f"{name} ({v['metric']} {v['lead']:+.4f}, bootstrap sd {v['sd']:.2g})"
              for name, v in vs_baselines.items() if v["verdict"] == "behind"]
    if thresholds.get("gate_on_baselines") and behind and choice["served"] == family.NETWORK:
        passed = False
        reasons.append(f"candidate trails baselines by more than {thresholds['baseline_tolerance_sd']} sd: "
                       + ", ".join(behind))
    from campaignops.pipelines import new_campaigns   # campaigns the candidate's recipe never saw

    unseen = new_campaigns.run(settings, new_campaigns.refit(settings, candidate_model.meta), truth)
    unseen_reasons = new_campaigns.gate_reasons(unseen, champion_logged, new_campaigns.config(settings))
    if unseen_reasons:
        passed = False
        reasons += unseen_reasons
    from campaignops.pipelines.uplift_references import reference_metrics_flat, reference_uplift

    references = reference_uplift(settings, candidate_model.meta, expanded, frame, p_candidate)
    adjustment = adjustment_regret(settings, candidate_choice, expanded)
    report = {"run_id": record["run_id"], "model_uri": choice["model_uri"], "network_model_uri": record["model_uri"],
              "family": choice, "served": served, "candidate": candidate,
              "champion": champion, "champion_version": champion_version, "champion_incomparable": incomparable,
              "passed": passed, "reasons": reasons, "thresholds": thresholds, "baselines": baselines,
              "vs_baselines": vs_baselines, "uplift_references": references, "new_campaigns": unseen,
              "adjustment": adjustment}
    from campaignops.pipelines.importer import source_ids

    predictions = holdout_predictions(frame, {family.NETWORK: p_candidate, **baseline_p}, source_ids(settings))
    with mlflow.start_run(run_id=record["run_id"]):
        from campaignops.pipelines.adjust_eval import flat_metrics as adjustment_metrics

        metrics = {holdout_metric_name(k): v for k, v in candidate.items() if np.isfinite(v)}
        for name, res in baselines.items():
            metrics.update({f"baseline_{name}.{k}": v for k, v in res.items() if np.isfinite(v)})
        metrics.update(reference_metrics_flat(references))
        metrics.update(new_campaigns.flat_metrics(unseen))
        metrics.update(adjustment_metrics(adjustment))
        for name, v in vs_baselines.items():
            metrics.update({f"baseline_{name}.candidate_lead": v["lead"], f"baseline_{name}.candidate_lead_sd": v["sd"]})
        log_metrics_once(mlflow, record["run_id"], metrics)
        mlflow.set_tags({"gate.passed": str(passed), "family.served": choice["served"],
                         **{f"vs_baseline.{name}": v["verdict"] for name, v in vs_baselines.items()}})
        path = ws / layout.REPORTS_DIR / "holdout_predictions.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pandas(predictions, preserve_index=False), tmp)
        mlflow.log_artifact(str(path), artifact_path="evaluation")
        if thresholds.get("report", True):
            paths = build_report(settings, report, candidate_model, x_holdout, expanded, frame, truth,
                                 p_candidate, rev_candidate)
            report["report"] = {k: str(v) for k, v in paths.items()}
            for key, path in paths.items():
                mlflow.log_artifact(str(path), artifact_path="evaluation" if key in ("html", "plots_json")
                                    else "evaluation/figures")
        path = ws / layout.REPORTS_DIR / "evaluation.json"
        write_json(path, report)
        mlflow.log_artifact(str(path), artifact_path="evaluation")   # last: marks the run as evaluated
    return report


def adjustment_regret(settings: Settings, choice: PolicyChoice, expanded: pa.Table) -> dict | None:
    """Synthetic worlds: cumulative regret vs the oracle of the candidate's sends allocated static,
    uniform and adjusted day by day (pipelines/adjust_eval.py), with the model as it is and with
    one variant overstated; None without the truth or when params evaluate.adjustment is off."""
    from campaignops.pipelines import adjust_eval

    cfg = adjust_eval.config(settings)
    if not cfg["enabled"] or choice.T is None:
        return None
    inputs = adjust_eval.holdout_inputs(choice, expanded)
    return adjust_eval.run(choice.P, choice.T, inputs["segments"], inputs["cost"], cfg, seed=0,
                           campaigns=inputs["campaigns"])


def champion_on_holdout(champ_model, version: str, expanded: pa.Table, frame: pd.DataFrame,
                        truth: pd.DataFrame | None) -> tuple[dict | None, str | None]:
    """(the champion's holdout metrics, None), or (None, why not) when the candidate's data cannot
    feed the champion: trained on another log, its features (profile columns, vocabularies, arm
    attributes) are not in this holdout, so no comparison on the same rows is possible."""
    try:
        p, revenue = predict_expanded(champ_model, expanded)
    except Exception as exc:   # a missing column (KeyError), a shape or vocabulary mismatch (ValueError, TF errors)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, (f"the champion (version {version}) is not comparable: this holdout cannot feed its inputs "
                      f"({type(exc).__name__}: {first[:200]})")
    return holdout_metrics(frame, p, truth, revenue=revenue), None


def holdout_predictions(frame: pd.DataFrame, models: dict[str, np.ndarray],
                        sources: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (holdout exposure, arm): the exposure, its campaign, the arm it was logged at
    (`treatment`), its outcome, logged propensity, and each model's predicted response and uplift
    (p(arm) − p(no send) of the same exposure). For an imported log, `sources`
    (importer.source_ids: pseudonymous exposure id → the log's exposure id and data row) adds
    `source_exposure_id` and `source_row`. Saved as an MLflow artifact so anyone can recompute the
    metrics with their own tools."""
    out = pd.DataFrame({"exposure_id": frame["exposure_id"].to_numpy(), "campaign_id": frame["campaign_id"].to_numpy(),
                        "treatment": frame["variant_id"].to_numpy(), "responded": frame["responded"].to_numpy(),
                        "arm_id": frame["arm_id"].to_numpy()})
    if "propensity" in frame:
        out["propensity"] = frame["propensity"].to_numpy()
    if "revenue" in frame:
        out["revenue"] = frame["revenue"].to_numpy()
    if sources is not None:
        out = out.merge(sources, on="exposure_id", how="left")
    control = (out["arm_id"] == CONTROL).to_numpy()
    for name, p in models.items():
        out[f"p_{name}"] = np.asarray(p, dtype=np.float64)
        base = pd.Series(out[f"p_{name}"].to_numpy()[control], index=out["exposure_id"].to_numpy()[control])
        out[f"uplift_{name}"] = out[f"p_{name}"] - out["exposure_id"].map(base).to_numpy(dtype=np.float64)
    return out


def holdout_metric_name(key: str) -> str:
    """The run's metric name of a candidate holdout figure: holdout_<key> (holdout_rows, not
    holdout_holdout_rows)."""
    return key if key.startswith("holdout_") else f"holdout_{key}"


def log_metrics_once(mlflow, run_id: str, metrics: dict) -> dict:
    """Log each evaluation metric to the candidate's run once: a metric the run already has (an
    earlier attempt interrupted before its evaluation.json went in) is not logged again, so every
    holdout metric has one value in the run's history. Returns what was logged."""
    have = set(mlflow.MlflowClient().get_run(run_id).data.metrics)
    new = {k: float(v) for k, v in metrics.items() if k not in have}
    if new:
        mlflow.log_metrics(new)
    return new


EVALUATION_ARTIFACT = "evaluation/evaluation.json"


def logged_evaluation(mlflow, run_id: str) -> dict | None:
    """The evaluation already logged to the candidate's run (its last artifact), or None."""
    client = mlflow.MlflowClient()
    if not any(f.path == EVALUATION_ARTIFACT for f in client.list_artifacts(run_id, "evaluation")):
        return None
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, EVALUATION_ARTIFACT, tmp)).read_text())


def baseline_metrics(root, meta: dict, x_holdout: dict, frame: pd.DataFrame, truth: pd.DataFrame | None,
                     candidate: PolicyChoice, cfg: dict) -> tuple[dict, dict, dict]:
    """holdout_metrics of every baseline saved by train.py under data/model/baselines, the
    candidate's policy lead over each (policy_lead; verdict at cfg baseline_tolerance_sd), and
    each baseline's predicted response per holdout row."""
    from campaignops.models.baselines import load_all

    metrics, leads, preds = {}, {}, {}
    for name, model in load_all(root, meta).items():
        p = preds[name] = model.predict(x_holdout)
        choice = policy_choice(frame, p, truth)
        metrics[name] = holdout_metrics(frame, p, truth, choice)
        lead = policy_lead(candidate, choice, draws=int(cfg["baseline_lead_draws"]))
        leads[name] = {**lead, "verdict": lead_verdict(lead["lead"], lead["sd"], float(cfg["baseline_tolerance_sd"]))}
    return metrics, leads, preds


def build_report(settings: Settings, evaluation: dict, model, x_holdout: dict, expanded: pa.Table,
                 frame: pd.DataFrame, truth: pd.DataFrame | None, p: np.ndarray, revenue: np.ndarray) -> dict:
    """reports/evaluation.html + figures + plot data (pipelines/report.py)."""
    from campaignops.models.explain import permutation_importance, subsample_exposures
    from campaignops.pipelines import report as r

    cfg = settings.params["evaluate"]
    profile_cols = model.meta["profile_cols"]
    full = expanded.select(["exposure_id", "revenue", *profile_cols]).to_pandas()
    segments = r.segment_slices(frame, p, truth, r.default_segments(full))
    attributions = None
    if int(cfg.get("explain_max_exposures", 2000)) > 0:
        idx = subsample_exposures(frame, int(cfg.get("explain_max_exposures", 2000)), seed=0)
        sub = frame.iloc[idx].reset_index(drop=True)
        xs = {k: v[idx] for k, v in x_holdout.items()}
        attributions = permutation_importance(lambda x: model.predict_arrays(x)[0], xs, sub, truth, profile_cols,
                                              repeats=int(cfg.get("explain_repeats", 1)), seed=0)
    revenue_actual = full.drop_duplicates("exposure_id").set_index("exposure_id")["revenue"]
    forecast = r.forecast_vs_actual(frame, p, revenue, revenue_actual,
                                    n_boot=int(cfg.get("forecast_bootstrap", 300)), seed=0)
    evaluation["forecast"] = forecast
    return r.write_report(settings.workspace / layout.REPORTS_DIR, evaluation, frame, p, truth, segments,
                          attributions, forecast)
