"""Registers a candidate that passed the gate in the MLflow registry, moves the `champion` alias to
it (keeping the old one as `previous` for rollback) and tags it for audit. What is registered is the
evaluation's served model (`model_uri`: the network, or a baseline logged in the same run when it
beat the network: pipelines/family.py); the version's `family` tag says which.

Every alias change goes through one function, `change_aliases`, and leaves one immutable record in
the **promotion log** in S3 (``promotions/<model_name>/<UTC timestamp>-<event id>.json``,
pipelines/layout.py), written with a conditional put (`If-None-Match: *`,
ObjectStore.put_bytes_if_absent) so no record is ever overwritten. Actions:

- ``promote``     a candidate that passed the gate becomes `champion` (old champion -> `previous`)
- ``challenger``  params ``promote.mode: challenger``: a passing candidate gets `challenger` instead
- ``approve``     `campaignops promote --approve`: the challenger becomes `champion` (old -> `previous`)
- ``override``    `--force --reason "..."` (optionally `--version N`): a version moves to `champion`
                  whatever its gate verdict; the record names the failing reasons and the reason given
- ``rollback``    `--rollback`: `champion` and `previous` swap

A record holds who (the actor, see `actor()`), when (UTC), the model, the action, the primary alias
and its from -> to versions, every alias assignment of the event in the order applied (`moves`,
None = the alias is removed) with the aliases' values before (`aliases_before`), the gate verdict
and reasons, the MLflow run, the served family and, for overrides, the reason given.

Crash safety: **record first, then move.** The record is put before any alias moves, and within
an event the primary alias (the one the event is about: `champion`, or `challenger`) moves last,
so it is the commit point. A crash therefore never leaves an alias move without a record; what it
can leave is a record whose move did not happen (or happened in part, e.g. `previous` set and
`champion` not yet). Such a record is detectable, since every record carries the primary alias's
value before the event: the event took effect iff the next event touching that alias found it at
the record's target (`from_version` of the next record == `to_version` of this one), or, for the
newest event, iff the registry shows the target now. `history()` marks each record ``applied``,
``not applied`` (the alias was still at its old value afterwards), ``pending`` (the newest record,
move not done yet) or ``unverified`` (the alias was changed outside the log in between). A rerun of
the same action after a crash **resumes** the pending record: it re-applies that record's `moves`
(idempotent alias sets) instead of writing a second record, so a killed-and-retried promotion
leaves one record and one model version (`registered_version` reuses the version registered from
the same run); a rerun after the event completed (killed after its last alias move, before it could
answer) returns the answer of that event instead of "already the champion", so a retried Airflow
task reports the promotion it made. The other order (move, then record) could leave a champion
nobody can account for if the process died in between; a record whose move never happened is the
lesser harm and history shows it as such. Not covered: two concurrent alias changes of one model (no lock; both are
recorded, history orders them by their timestamps).

Before an alias moves to a version, the version's artifacts are verified to be readable
(`verify_artifacts`: its MLmodel file is downloaded from the registry's download URI); a version
whose artifacts are gone is refused (ArtifactsMissing). A version whose gate tag says it failed
never gets `champion` unless the event is an override or the log holds an override record for it
(a rollback to a version that was forced in earlier stays possible)."""
from __future__ import annotations

import json
import os
import tempfile

import yaml

from campaignops.config import Settings
from campaignops.pipelines import failpoints, layout
from campaignops.pipelines.promotion_log import (HISTORY_COLUMNS, PromotionError, _pending, _v, actor,  # noqa: F401 (re-exported)
                                                airflow_context, read_log, table_rows, verify, write_record)

ACTIONS = ("promote", "challenger", "approve", "override", "rollback")
MODES = ("champion", "challenger")
RECORD_SCHEMA = 1


class GateRefused(PromotionError):
    """`champion` would move to a version that failed the gate without a recorded override."""


class ArtifactsMissing(PromotionError):
    """The version's model artifacts cannot be read: an alias must not point at it."""


def lineage_tags(settings: Settings, evaluation: dict) -> dict[str, str]:
    """What an auditor needs to trace a model version: code, data, validation, evaluation."""
    from campaignops.pipelines import tracking

    ws = settings.workspace
    tags = {"git_sha": tracking.git_revision(settings), "mlflow_run_id": evaluation["run_id"],
            "gate.passed": str(evaluation["passed"]),
            "gate.reasons": json.dumps(list(evaluation.get("reasons") or []))[:5000]}
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


# ------------------------------------------------------------------------------------ entry points

def mode(settings: Settings) -> str:
    """params.yaml `promote.mode`: champion (a passing candidate becomes champion) | challenger."""
    value = (settings.params.get("promote") or {}).get("mode", "champion")
    if value not in MODES:
        raise PromotionError(f"params promote.mode must be one of {', '.join(MODES)}, got {value!r}")
    return value


def run(settings: Settings, *, force: bool = False, reason: str | None = None, version: str | int | None = None,
        store=None) -> dict:
    """Promote the evaluated candidate (reports/evaluation.json).

    Passed gate: `champion` moves to it (mode champion) or `challenger` does (mode challenger).
    Failed gate: refused ({"promoted": False, "reasons": ...}) unless `force` with a non-empty
    `reason`: then it becomes champion as a recorded override. `version` (needs `force` and
    `reason`): make that registered version champion instead of the candidate (manual override)."""
    from campaignops.pipelines import tracking

    if version is not None and not force:
        raise PromotionError("--version N is a manual override: give --force --reason \"...\" with it")
    if force:
        _require_reason(reason)
    mlflow = tracking.configure(settings)
    client = mlflow.MlflowClient()
    store = store or _store(settings)
    name = settings.params["train"]["model_name"]
    if version is not None:
        return _override_version(settings, client, store, name, str(version), reason)
    evaluation = json.loads((settings.workspace / layout.REPORTS_DIR / "evaluation.json").read_text())
    if not evaluation["passed"] and not force:
        return {"promoted": False, "reasons": evaluation["reasons"], "model_name": name,
                "champion_version": evaluation.get("champion_version"),
                "hint": "a version that failed the gate becomes champion only by a recorded override: "
                        "campaignops promote --force --reason \"...\""}
    action = "override" if force else ("challenger" if mode(settings) == "challenger" else "promote")
    log, aliases = read_log(store, name), registry_aliases(client, name)
    pending = _pending(log, aliases)
    if pending is not None and pending["action"] == action and pending.get("mlflow_run_id") == evaluation["run_id"]:
        return _resume(client, name, pending)
    current = _alias_version(client, name, "champion")
    if current is not None and current.run_id == evaluation["run_id"]:
        done = _applied_event(log, action, evaluation["run_id"], str(current.version))
        if done is not None:   # a rerun of the event that made it champion (a retry after a kill): same answer
            return {"promoted": True, "model_name": name, "champion_version": str(current.version),
                    "previous_version": done["aliases_before"].get("champion"), "action": action,
                    "event": done["key"], "resumed": True}
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
    if action == "challenger":
        challenger = _alias_version(client, name, "challenger")
        if challenger is not None and challenger.run_id == evaluation["run_id"]:
            return {"promoted": False, "challenger": True, "model_name": name, "champion_version": current_version,
                    "challenger_version": str(challenger.version), "reasons": ["candidate is already the challenger"]}
    registered = registered_version(client, name, evaluation["run_id"]) or mlflow.register_model(
        evaluation["model_uri"], name)
    failpoints.hit("promote_registered")
    for key, value in lineage_tags(settings, evaluation).items():
        client.set_model_version_tag(name, registered.version, key, value)
        failpoints.hit("promote_tagged")
    v = str(registered.version)
    gate = {"passed": bool(evaluation["passed"]), "reasons": list(evaluation.get("reasons") or [])}
    fields = {"mlflow_run_id": evaluation["run_id"], "model_uri": evaluation.get("model_uri"),
              "family": (evaluation.get("family") or {}).get("served"),
              "evaluated_against": evaluation.get("champion_version")}
    if action == "challenger":
        record = change_aliases(client, store, name, action="challenger", primary="challenger",
                                moves=[("challenger", v)], gate=gate, log=log, aliases=aliases, **fields)
        return {"promoted": False, "challenger": True, "model_name": name, "champion_version": current_version,
                "challenger_version": v, "event": record["key"],
                "reasons": [f"promote.mode is challenger: version {v} is the challenger; "
                            "`campaignops promote --approve` makes it the champion"]}
    moves = ([("previous", current_version)] if current_version else []) + [("champion", v)]
    record = change_aliases(client, store, name, action=action, primary="champion", moves=moves, gate=gate,
                            reason=reason, log=log, aliases=aliases, **fields)
    return {"promoted": True, "model_name": name, "champion_version": v, "previous_version": current_version,
            "action": action, "event": record["key"]}


def rollback(settings: Settings, *, reason: str | None = None, store=None) -> dict:
    """Swap `champion` and `previous`: the last champion serves again."""
    client, store, name, log, aliases, pending = _state(settings, store)
    if pending is not None and pending["action"] == "rollback":
        out = _resume(client, name, pending)
        return {"model_name": name, "champion_version": out["champion_version"],
                "previous_version": out["previous_version"], "event": out["event"], "resumed": True}
    current, previous = _alias_version(client, name, "champion"), _alias_version(client, name, "previous")
    if previous is None:
        raise PromotionError(f"model {name!r} has no 'previous' version to roll back to")
    if current is None:
        raise PromotionError(f"model {name!r} has no 'champion' to roll back from")
    if str(previous.version) == str(current.version):
        raise PromotionError(f"model {name!r}: 'previous' and 'champion' are both version {current.version} "
                             "(an interrupted alias change?); see `campaignops promote --history`")
    record = change_aliases(client, store, name, action="rollback", primary="champion",
                            moves=[("previous", str(current.version)), ("champion", str(previous.version))],
                            gate=_gate_from_tags(previous), reason=reason, log=log, aliases=aliases,
                            mlflow_run_id=previous.run_id, family=(previous.tags or {}).get("family"))
    client.set_model_version_tag(name, previous.version, "rollback_from", current.version)
    return {"model_name": name, "champion_version": str(previous.version), "previous_version": str(current.version),
            "event": record["key"]}


def approve(settings: Settings, *, reason: str | None = None, store=None) -> dict:
    """Challenger mode: the current `challenger` becomes `champion` (the old champion `previous`);
    the `challenger` alias is removed."""
    client, store, name, log, aliases, pending = _state(settings, store)
    if pending is not None and pending["action"] == "approve":
        return _resume(client, name, pending)
    challenger, current = _alias_version(client, name, "challenger"), _alias_version(client, name, "champion")
    if challenger is None:
        raise PromotionError(f"model {name!r} has no 'challenger' to approve")
    if current is not None and str(current.version) == str(challenger.version):
        client.delete_registered_model_alias(name, "challenger")   # the tail of an interrupted approve
        return {"promoted": False, "model_name": name, "champion_version": str(current.version),
                "reasons": [f"challenger version {challenger.version} is already the champion"]}
    moves = ([("previous", str(current.version))] if current is not None else []) + [
        ("champion", str(challenger.version)), ("challenger", None)]
    record = change_aliases(client, store, name, action="approve", primary="champion", moves=moves,
                            gate=_gate_from_tags(challenger), reason=reason, log=log, aliases=aliases,
                            mlflow_run_id=challenger.run_id, family=(challenger.tags or {}).get("family"))
    return {"promoted": True, "action": "approve", "model_name": name, "champion_version": str(challenger.version),
            "previous_version": str(current.version) if current is not None else None, "event": record["key"]}


def _override_version(settings, client, store, name: str, version: str, reason: str) -> dict:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, version)
    except MlflowException as exc:
        raise PromotionError(f"model {name!r} has no version {version}") from exc
    log, aliases = read_log(store, name), registry_aliases(client, name)
    pending = _pending(log, aliases)
    if pending is not None and pending["action"] == "override" and pending["to_version"] == version:
        return _resume(client, name, pending)
    current = aliases.get("champion")
    if current == version:
        return {"promoted": False, "model_name": name, "champion_version": current,
                "reasons": [f"version {version} is already the champion"]}
    gate = _gate_from_tags(mv)
    path = settings.workspace / layout.REPORTS_DIR / "evaluation.json"
    if path.exists():   # the evaluation of this very run has the reasons in full
        evaluation = json.loads(path.read_text())
        if evaluation.get("run_id") == mv.run_id:
            gate = {"passed": bool(evaluation["passed"]), "reasons": list(evaluation.get("reasons") or [])}
    moves = ([("previous", current)] if current else []) + [("champion", version)]
    record = change_aliases(client, store, name, action="override", primary="champion", moves=moves, gate=gate,
                            reason=reason, log=log, aliases=aliases, mlflow_run_id=mv.run_id,
                            family=(mv.tags or {}).get("family"))
    return {"promoted": True, "action": "override", "model_name": name, "champion_version": version,
            "previous_version": current, "event": record["key"]}


# ------------------------------------------------------------------------------ the one alias mover

def change_aliases(client, store, name: str, *, action: str, primary: str, moves: list, gate: dict | None,
                   reason: str | None = None, log: list[dict] | None = None, aliases: dict | None = None,
                   mlflow_run_id: str | None = None, family: str | None = None, **extra) -> dict:
    """The only code that moves aliases of a registered model: checks the gate rule and the target's
    artifacts, puts the event's record in the promotion log, then applies `moves` ((alias,
    version or None to remove) in order; `primary` must be among them and should come last: it is
    the commit point). Returns the record (with its "key")."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    moves = [(a, None if v is None else str(v)) for a, v in moves]
    targets = dict(moves)
    if primary not in targets:
        raise ValueError(f"primary alias {primary!r} is not among the moves {moves}")
    log = read_log(store, name) if log is None else log
    aliases = registry_aliases(client, name) if aliases is None else aliases
    if action == "override":
        _require_reason(reason)
    if targets.get("champion") is not None:
        _check_gate(client, name, targets["champion"], action, log)
    if targets[primary] is not None:
        verify_artifacts(client, name, targets[primary])
    record = {
        "schema": RECORD_SCHEMA, "model_name": name, "action": action, "alias": primary,
        "from_version": aliases.get(primary), "to_version": targets[primary],
        "moves": [[a, v] for a, v in moves], "aliases_before": {a: aliases.get(a) for a, _ in moves},
        "gate": gate, "reason": reason, "mlflow_run_id": mlflow_run_id, "family": family,
        "actor": actor(), "airflow": airflow_context(), **extra,
    }
    if action == "override":
        record["override"] = {"reason": reason, "failing_reasons": list((gate or {}).get("reasons") or [])
                              if gate and gate.get("passed") is False else []}
    record = write_record(store, record)
    failpoints.hit("promote_recorded")
    _apply(client, name, moves)
    return record


def _apply(client, name: str, moves) -> None:
    from mlflow.exceptions import MlflowException

    for alias, version in moves:
        if version is None:
            try:
                client.delete_registered_model_alias(name, alias)
            except MlflowException:
                pass   # already gone
        else:
            client.set_registered_model_alias(name, alias, version)
        failpoints.hit("promote_alias_moved")


def _resume(client, name: str, record: dict) -> dict:
    """Finish the pending (recorded, not applied) event `record`: apply its moves as recorded."""
    target = record["to_version"]
    if target is not None:
        verify_artifacts(client, name, target)
    _apply(client, name, [tuple(m) for m in record["moves"]])
    before = record["aliases_before"]
    out = {"promoted": record["alias"] == "champion", "model_name": name, "action": record["action"],
           "event": record["key"], "resumed": True}
    if record["alias"] == "champion":
        out.update(champion_version=target, previous_version=before.get("champion"))
    else:
        out.update(challenger=True, challenger_version=target,
                   champion_version=registry_aliases(client, name).get("champion"),
                   reasons=[f"promote.mode is challenger: version {target} is the challenger; "
                            "`campaignops promote --approve` makes it the champion"])
    return out


def _applied_event(log: list[dict], action: str, run_id: str, version: str) -> dict | None:
    """The newest record that moved `champion` if it is `action` of run `run_id` to `version`: the
    alias is where that event put it and nothing has moved it since (else None)."""
    last = next((r for r in reversed(log) if "champion" in (r.get("aliases_before") or {})), None)
    if last is None or last["alias"] != "champion":
        return None
    if (last["action"], last.get("mlflow_run_id"), last["to_version"]) != (action, run_id, version):
        return None
    return last


def _check_gate(client, name: str, version: str, action: str, log: list[dict]) -> None:
    if action == "override":
        return
    mv = client.get_model_version(name, version)
    if (mv.tags or {}).get("gate.passed") != "False":
        return   # passed, or registered outside promote (no verdict to enforce)
    if any(r.get("action") == "override" and r.get("to_version") == version for r in log):
        return   # it was made champion by a recorded override before (e.g. a rollback to it)
    reasons = "; ".join(_gate_from_tags(mv).get("reasons") or []) or "no reasons recorded"
    raise GateRefused(f"version {version} of {name!r} failed the gate ({reasons}); it becomes champion only by a "
                      "recorded override: campaignops promote --force --reason \"...\" --version " + version)


def verify_artifacts(client, name: str, version: str) -> str:
    """Check that version `version`'s model can be read (its MLmodel file downloads from the
    registry's download URI); returns that URI. Raises ArtifactsMissing otherwise."""
    import mlflow

    try:
        uri = client.get_model_version_download_uri(name, version)
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot vouch for the artifacts
        raise ArtifactsMissing(f"model {name!r} version {version}: no artifact location ({exc})") from exc
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri.rstrip("/") + "/MLmodel", dst_path=tmp)
            if not os.path.isfile(path) or os.path.getsize(path) == 0:
                raise FileNotFoundError(path)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactsMissing(f"model {name!r} version {version}: its artifacts at {uri} are missing or unreadable "
                               f"(MLmodel: {type(exc).__name__}: {str(exc)[:300]}); no alias is moved to it") from exc
    return uri


def history(settings: Settings, *, store=None, client=None) -> list[dict]:
    """The model's promotion log, oldest first, each record with `status` checked against the log
    and the registry (module docstring): applied | not applied | pending | unverified."""
    if client is None:
        from campaignops.pipelines import tracking

        client = tracking.configure(settings).MlflowClient()
    store = store or _store(settings)
    name = settings.params["train"]["model_name"]
    return verify(read_log(store, name), registry_aliases(client, name))


# --------------------------------------------------------------------------------------- helpers

def registered_version(client, name: str, run_id: str):
    """The version of `name` already registered from run `run_id` (a retried promote after a
    kill between register and alias move), or None."""
    found = [v for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")]
    return min(found, key=lambda v: int(v.version)) if found else None


def registry_aliases(client, name: str) -> dict[str, str]:
    """alias -> version of the registered model now ({} before its first version)."""
    from mlflow.exceptions import MlflowException

    try:
        return {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    except MlflowException:
        return {}


def _gate_from_tags(mv) -> dict | None:
    tags = mv.tags or {}
    if "gate.passed" not in tags:
        return None
    try:
        reasons = json.loads(tags.get("gate.reasons") or "[]")
    except ValueError:
        reasons = [tags["gate.reasons"]]
    return {"passed": tags["gate.passed"] == "True", "reasons": reasons}


def _require_reason(reason: str | None) -> None:
    if reason is None or not str(reason).strip():
        raise PromotionError("an override needs a reason: --force --reason \"why this version must serve\"")


def _state(settings: Settings, store=None) -> tuple:
    """(MLflow client, store, model name, its promotion log, its aliases now, the log's pending record)."""
    from campaignops.pipelines import tracking

    client = tracking.configure(settings).MlflowClient()
    store = store or _store(settings)
    name = settings.params["train"]["model_name"]
    log, aliases = read_log(store, name), registry_aliases(client, name)
    return client, store, name, log, aliases, _pending(log, aliases)


def _store(settings: Settings):
    from campaignops.pipelines.storage import ObjectStore

    return ObjectStore(settings)


def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
