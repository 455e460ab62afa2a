"""Registers a candidate that passed the gate in the MLflow registry, moves the `champion`
alias to it (keeping the old one as `previous` for rollback) and tags it for audit. What is
registered is the evaluation's served model (`model_uri`: the network, or a baseline logged in the
same run when it beat the network: pipelines/family.py); the version's `family` tag says which."""
from __future__ import annotations

import json

import yaml

from campaignops.config import Settings
from campaignops.pipelines import layout


def lineage_tags(settings: Settings, evaluation: dict) -> dict[str, str]:
    """What an auditor needs to trace a model version: code, data, validation, evaluation."""
    from campaignops.pipelines import tracking

    ws = settings.workspace
    tags = {"git_sha": tracking.git_revision(settings), "mlflow_run_id": evaluation["run_id"],
            "gate.passed": str(evaluation["passed"])}
    lock = ws / "dvc.lock"
    if lock.exists():
        stages = yaml.safe_load(lock.read_text()).get("stages", {})
        for stage, body in stages.items():
            for out in body.get("outs", []):
                tags[f"dvc.{stage}.{out['path']}"] = out.get("md5", "")
    validation = ws / layout.REPORTS_DIR / "validation.json"
    if validation.exists():
        v = json.loads(validation.read_text())
        tags["validation.run_id"] = str(v.get("run_id"))
        tags["validation.result_uri"] = str(v.get("result_uri"))
    raw = ws / layout.RAW_MANIFEST
    if raw.exists():
        tags["data.batch"] = str(json.loads(raw.read_text()).get("batch"))
    served = evaluation.get("served") or evaluation["candidate"]
    for key in ("auc", "qini", "policy_value_ips", "policy_value_fraction", "revenue_rmse"):
        if key in served:
            tags[f"holdout.{key}"] = f"{served[key]:.6f}"
    choice = evaluation.get("family") or {}
    tags["family"] = choice.get("served", "network")
    if choice.get("reason"):
        tags["family.reason"] = choice["reason"][:500]
    return tags


def run(settings: Settings) -> dict:
    from campaignops.pipelines import tracking

    mlflow = tracking.configure(settings)
    client = mlflow.MlflowClient()
    name = settings.params["train"]["model_name"]
    evaluation = json.loads((settings.workspace / layout.REPORTS_DIR / "evaluation.json").read_text())
    if not evaluation["passed"]:
        return {"promoted": False, "reasons": evaluation["reasons"], "model_name": name,
                "champion_version": evaluation.get("champion_version")}
    current = _alias_version(client, name, "champion")
    if current is not None and current.run_id == evaluation["run_id"]:
        return {"promoted": False, "reasons": ["candidate is already the champion"], "model_name": name,
                "champion_version": str(current.version)}
    current_version = str(current.version) if current is not None else None
    if current_version != evaluation.get("champion_version"):
        # The gate compared the candidate with another champion than the one serving now (a rerun
        # of an older day): promoting on that verdict would move the alias backwards.
        return {"promoted": False, "model_name": name, "champion_version": current_version,
                "reasons": [f"the champion moved since this evaluation (evaluated against "
                            f"{evaluation.get('champion_version') or 'no champion'}, now {current_version}); "
                            "re-evaluate to promote this candidate"]}
    version = registered_version(client, name, evaluation["run_id"]) or mlflow.register_model(evaluation["model_uri"], name)
    for key, value in lineage_tags(settings, evaluation).items():
        client.set_model_version_tag(name, version.version, key, value)
    if current is not None:
        client.set_registered_model_alias(name, "previous", current.version)
    client.set_registered_model_alias(name, "champion", version.version)
    return {"promoted": True, "model_name": name, "champion_version": str(version.version),
            "previous_version": str(current.version) if current else None}


def rollback(settings: Settings) -> dict:
    """Swap `champion` and `previous`: the last champion serves again."""
    from campaignops.pipelines import tracking

    mlflow = tracking.configure(settings)
    client = mlflow.MlflowClient()
    name = settings.params["train"]["model_name"]
    current, previous = _alias_version(client, name, "champion"), _alias_version(client, name, "previous")
    if previous is None:
        raise RuntimeError(f"model {name!r} has no 'previous' version to roll back to")
    client.set_registered_model_alias(name, "champion", previous.version)
    client.set_registered_model_alias(name, "previous", current.version)
    client.set_model_version_tag(name, previous.version, "rollback_from", current.version)
    return {"model_name": name, "champion_version": str(previous.version), "previous_version": str(current.version)}


def registered_version(client, name: str, run_id: str):
    """The version of `name` already registered from run `run_id` (a retried promote after a
    kill between register and alias move), or None."""
    found = [v for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")]
    return min(found, key=lambda v: int(v.version)) if found else None


def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
