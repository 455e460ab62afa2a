"""The promotion log: one immutable S3 object per alias change of a registered model
(``promotions/<model_name>/<UTC timestamp>-<event id>.json``, written with a conditional put so no
record is overwritten), who made it (`actor`), and each record's status checked against the log
and the registry (`verify`). pipelines/promote.py writes a record before it moves an alias (its
docstring has the crash-safety argument) and reads the log for `campaignops promote --history`."""
from __future__ import annotations

import getpass
import json
import os
import uuid
from datetime import datetime, timezone

from campaignops.pipelines import layout


class PromotionError(RuntimeError):
    """A promotion request that cannot be served (the CLI exits 2 with the message)."""




def actor() -> dict:
    """Who changes the aliases, first found of: env CAMPAIGNOPS_ACTOR (set it in CI, scripts and
    the deployment); env AIRFLOW_CTX_TRIGGERING_USER (Airflow exports AIRFLOW_CTX_* to a task's
    process; the triggering user is among them when the deployment's airflow_local_settings
    `get_airflow_context_vars` returns {"triggering_user": dag_run.triggering_user_name}); inside an
    Airflow task otherwise "airflow:<dag_id>" (the record's `airflow` block has the run); else the
    OS user. Only these names are read: never a credential."""
    for var, source in (("CAMPAIGNOPS_ACTOR", "env CAMPAIGNOPS_ACTOR"),
                        ("AIRFLOW_CTX_TRIGGERING_USER", "airflow triggering user")):
        if os.environ.get(var, "").strip():
            return {"name": os.environ[var].strip()[:200], "source": source}
    if os.environ.get("AIRFLOW_CTX_DAG_ID"):
        return {"name": f"airflow:{os.environ['AIRFLOW_CTX_DAG_ID']}"[:200], "source": "airflow dag"}
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in a container
        user = "unknown"
    return {"name": user[:200], "source": "os user"}


def airflow_context() -> dict | None:
    ctx = {k: os.environ[f"AIRFLOW_CTX_{k.upper()}"] for k in ("dag_id", "dag_run_id", "task_id", "try_number")
           if os.environ.get(f"AIRFLOW_CTX_{k.upper()}")}
    return ctx or None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _event_id() -> str:
    return uuid.uuid4().hex[:12]


def record_key(name: str, when: datetime, event_id: str) -> str:
    """``promotions/<name>/<YYYYMMDDTHHMMSS.ffffffZ>-<event id>.json``: keys sort by time."""
    return f"{layout.promotion_log_prefix(name)}{when.strftime('%Y%m%dT%H%M%S.%fZ')}-{event_id}.json"


def write_record(store, record: dict) -> dict:
    """Put `record` (plus event_id, recorded_at, key) as a new object of the model's log; never
    overwrites: a taken key (conditional put refused) gets a fresh event id."""
    for _ in range(5):
        when, event_id = _now(), _event_id()
        key = record_key(record["model_name"], when, event_id)
        body = {**record, "event_id": event_id, "recorded_at": when.isoformat(timespec="microseconds"), "key": key}
        data = json.dumps(body, indent=2, sort_keys=True, default=str).encode()
        if store.put_bytes_if_absent(key, data) or store.get_bytes_or_none(key) == data:
            return body   # (equal bytes: our put landed, its answer was lost)
    prefix = store.uri(layout.promotion_log_prefix(record["model_name"]))
    raise PromotionError(f"could not write a promotion record under {prefix}")


def read_log(store, name: str) -> list[dict]:
    """The model's promotion records, oldest first."""
    out = []
    for key in store.list_keys(layout.promotion_log_prefix(name)):
        if key.endswith(".json"):
            data = store.get_bytes_or_none(key)
            if data is not None:
                out.append({**json.loads(data), "key": key})
    return out


def verify(records: list[dict], aliases: dict) -> list[dict]:
    out = []
    for i, rec in enumerate(records):
        alias = rec["alias"]
        target, before = rec["to_version"], (rec.get("aliases_before") or {}).get(alias)
        nxt = next((r for r in records[i + 1:] if alias in (r.get("aliases_before") or {})), None)
        seen = aliases.get(alias) if nxt is None else nxt["aliases_before"][alias]
        if seen == target:
            status = "applied"
        elif seen == before:
            status = "pending" if nxt is None else "not applied"
        else:
            status = "unverified"
        out.append({**rec, "status": status})
    return out


def table_rows(records: list[dict]) -> list[list[str]]:
    """Rows of `campaignops promote --history` (columns HISTORY_COLUMNS)."""
    rows = []
    for r in records:
        gate = r.get("gate") or {}
        verdict = {True: "passed", False: "failed", None: "–"}[gate.get("passed")]
        notes = []
        if r.get("reason"):
            notes.append(f"reason: {r['reason']}")
        if gate.get("passed") is False and gate.get("reasons"):
            notes.append("gate: " + "; ".join(gate["reasons"]))
        others = [f"{a}→{'v' + v if v else '(removed)'}" for a, v in r.get("moves", []) if a != r["alias"]]
        if others:
            notes.append(", ".join(others))
        when = str(r.get("recorded_at", ""))[:19].replace("T", " ")
        rows.append([when, r["action"], r["alias"], f"{_v(r.get('from_version'))} → {_v(r.get('to_version'))}",
                     (r.get("actor") or {}).get("name", "?"), verdict, r.get("family") or "–",
                     (r.get("mlflow_run_id") or "–")[:12], r.get("status", "–"), " | ".join(notes)])
    return rows


HISTORY_COLUMNS = ["when (UTC)", "action", "alias", "from → to", "actor", "gate", "family", "run", "status", "notes"]


def _pending(log: list[dict], aliases: dict) -> dict | None:
    """The newest record if its primary alias still shows the value from before it (recorded, not applied)."""
    if not log:
        return None
    last = log[-1]
    alias = last["alias"]
    now = aliases.get(alias)
    if now != last["to_version"] and now == (last.get("aliases_before") or {}).get(alias):
        return last
    return None



def _v(version) -> str:
    return "–" if version is None else f"v{version}"
