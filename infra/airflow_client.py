"""A small client for Airflow 3's public REST API (/api/v2) with JWT auth (POST /auth/token)."""
from __future__ import annotations

import time
from typing import Any

import requests

TERMINAL_RUN_STATES = {"success", "failed"}
FAILED_TI_STATES = {"failed", "upstream_failed"}


class AirflowError(RuntimeError):
    """An Airflow API call failed, a DAG did not load, or a run did not succeed."""


class DagRunFailed(AirflowError):
    def __init__(self, message: str, state: str, failed_tasks: list[str]):
        super().__init__(message)
        self.state = state
        self.failed_tasks = failed_tasks


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self._session = requests.Session()
        self._token: str | None = None

    @classmethod
    def from_settings(cls, settings) -> "AirflowClient":
        if not settings.airflow_password:
            raise AirflowError(f"no Airflow password: CAMPAIGNOPS_AIRFLOW_PASSWORD is not set and not in "
                               f"{settings.env_file} (run `campaignops stack up` first)")
        return cls(settings.airflow_url, settings.airflow_user, settings.airflow_password)

    # ------------------------------------------------------------------ plumbing
    def token(self) -> str:
        """A fresh access token (POST /auth/token)."""
        r = self._session.post(f"{self.base_url}/auth/token", timeout=self.timeout,
                               json={"username": self.username, "password": self.password})
        if r.status_code not in (200, 201):
            raise AirflowError(f"POST /auth/token as {self.username!r} failed: {r.status_code} {r.text[:300]}")
        self._token = r.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """Authenticated call to base_url + path; refreshes the token once on 401."""
        kwargs.setdefault("timeout", self.timeout)
        for attempt in (1, 2):
            if self._token is None:
                self.token()
            headers = {"Authorization": f"Bearer {self._token}", **kwargs.pop("headers", {})}
            r = self._session.request(method, f"{self.base_url}{path}", headers=headers, **kwargs)
            if r.status_code == 401 and attempt == 1:
                self._token = None
                kwargs["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
                continue
            return r
        return r

    def _json(self, method: str, path: str, ok=(200,), **kwargs) -> Any:
        r = self.request(method, path, **kwargs)
        if r.status_code not in ok:
            raise AirflowError(f"{method} {path} failed: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    # ------------------------------------------------------------------ DAGs
    def get_dag(self, dag_id: str) -> dict | None:
        r = self.request("GET", f"/api/v2/dags/{dag_id}")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise AirflowError(f"GET /api/v2/dags/{dag_id} failed: {r.status_code} {r.text[:300]}")
        return r.json()

    def import_errors(self) -> list[dict]:
        return self._json("GET", "/api/v2/importErrors", params={"limit": 100}).get("import_errors", [])

    def wait_for_dag(self, dag_id: str, timeout: float = 120, poll: float = 2,
                     file_hint: str | None = None) -> dict:
        """Wait until the DAG is parsed and visible. Import errors in a file that matches the DAG id
        (or `file_hint`) fail fast; on timeout every current import error is reported."""
        deadline = time.monotonic() + timeout
        hint = file_hint or dag_id
        while True:
            dag = self.get_dag(dag_id)
            if dag is not None:
                return dag
            errors = self.import_errors()
            mine = [e for e in errors if hint in str(e.get("filename", ""))]
            if mine:
                raise AirflowError(f"DAG {dag_id!r} failed to import:\n{_format_import_errors(mine)}")
            if time.monotonic() > deadline:
                detail = _format_import_errors(errors) if errors else "no import errors reported"
                raise AirflowError(f"DAG {dag_id!r} not visible after {timeout:.0f}s; {detail}")
            time.sleep(poll)

    def unpause(self, dag_id: str) -> None:
        self._json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self._json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": True})

    # ------------------------------------------------------------------ runs
    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        body = {"logical_date": None, "conf": conf or {}}
        run = self._json("POST", f"/api/v2/dags/{dag_id}/dagRuns", ok=(200, 201), json=body)
        return run["dag_run_id"]

    def trigger_for_date(self, dag_id: str, logical_date: str, conf: dict | None = None) -> str:
        """A manual run with an explicit logical date (ISO, UTC)."""
        body = {"logical_date": logical_date, "conf": conf or {}}
        return self._json("POST", f"/api/v2/dags/{dag_id}/dagRuns", ok=(200, 201), json=body)["dag_run_id"]

    def runs(self, dag_id: str, limit: int = 100) -> list[dict]:
        return self._json("GET", f"/api/v2/dags/{dag_id}/dagRuns",
                          params={"limit": limit, "order_by": "run_after"}).get("dag_runs", [])

    def backfill(self, dag_id: str, from_date: str, to_date: str, reprocess_behavior: str = "none",
                 max_active_runs: int = 1, conf: dict | None = None) -> dict:
        """POST /api/v2/backfills: runs for every schedule date in [from_date, to_date], in order."""
        body = {"dag_id": dag_id, "from_date": from_date, "to_date": to_date, "reprocess_behavior": reprocess_behavior,
                "max_active_runs": max_active_runs, "dag_run_conf": conf or {}}
        return self._json("POST", "/api/v2/backfills", ok=(200, 201), json=body)

    def backfill_runs(self, dag_id: str) -> list[dict]:
        """The DAG's backfill runs, oldest logical date first."""
        runs = [r for r in self.runs(dag_id, limit=200) if r.get("run_type") == "backfill"]
        return sorted(runs, key=lambda r: r.get("logical_date") or "")

    def clear_run(self, dag_id: str, run_id: str) -> dict:
        """Clear every task of a run so it runs again (a rerun of the same logical date)."""
        body = {"dry_run": False, "dag_run_id": run_id, "only_failed": False, "reset_dag_runs": True}
        return self._json("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances", json=body)

    def post_asset_event(self, name: str, extra: dict) -> dict:
        """An asset event on the asset named `name` (it must be declared by a parsed DAG)."""
        found = self._json("GET", "/api/v2/assets", params={"name_pattern": name, "limit": 10}).get("assets", [])
        found = [a for a in found if a.get("name") == name]
        if not found:
            raise AirflowError(f"no Airflow asset named {name!r}: is the DAG that declares it parsed?")
        return self._json("POST", "/api/v2/assets/events", ok=(200, 201),
                          json={"asset_id": found[0]["id"], "extra": extra})

    def get_run(self, dag_id: str, run_id: str) -> dict:
        return self._json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        out: list[dict] = []
        offset = 0
        while True:
            page = self._json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                              params={"limit": 100, "offset": offset})
            out.extend(page.get("task_instances", []))
            offset += 100
            if offset >= page.get("total_entries", 0):
                return out

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        """The task try's log as text (structured entries rendered one per line)."""
        r = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                         params={"full_content": "true", "map_index": map_index},
                         headers={"Accept": "application/json"})
        if r.status_code != 200:
            return f"(log unavailable: {r.status_code} {r.text[:200]})"
        return _render_log(r.json().get("content", []))

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 1800, poll: float = 5,
                     log_lines: int = 60) -> str:
        """Poll until the run finishes. Returns "success"; raises DagRunFailed naming the failed
        task(s) with the tail of each one's log, or AirflowError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.get_run(dag_id, run_id)["state"]
            if state == "success":
                return state
            if state in TERMINAL_RUN_STATES:
                break
            if time.monotonic() > deadline:
                tis = self.task_instances(dag_id, run_id)
                summary = ", ".join(f"{t['task_id']}={t.get('state')}" for t in tis)
                raise AirflowError(f"{dag_id} run {run_id} still {state!r} after {timeout:.0f}s: {summary}")
            time.sleep(poll)
        tis = self.task_instances(dag_id, run_id)
        failed = [t for t in tis if t.get("state") == "failed"]
        upstream = [t["task_id"] for t in tis if t.get("state") == "upstream_failed"]
        names = [_ti_name(t) for t in failed]
        parts = [f"{dag_id} run {run_id} ended {state!r}; failed task(s): {', '.join(names) or 'none recorded'}"]
        if upstream:
            parts.append(f"not run (upstream failed): {', '.join(upstream)}")
        for t in failed:
            text = self.task_log(dag_id, run_id, t["task_id"], max(1, int(t.get("try_number") or 1)),
                                 int(t.get("map_index", -1)))
            tail = "\n".join(text.splitlines()[-log_lines:])
            parts.append(f"--- log tail of {_ti_name(t)} (try {t.get('try_number')}) ---\n{tail}")
        raise DagRunFailed("\n".join(parts), state, names)

    def run(self, dag_id: str, conf: dict | None = None, timeout: float = 1800, poll: float = 5) -> str:
        """wait_for_dag + unpause + trigger + wait_for_run. Returns the run id."""
        self.wait_for_dag(dag_id, timeout=min(timeout, 180))
        self.unpause(dag_id)
        run_id = self.trigger(dag_id, conf)
        self.wait_for_run(dag_id, run_id, timeout=timeout, poll=poll)
        return run_id


def _ti_name(ti: dict) -> str:
    idx = ti.get("map_index", -1)
    return ti["task_id"] if idx in (-1, None) else f"{ti['task_id']}[{idx}]"


def _format_import_errors(errors: list[dict]) -> str:
    return "\n".join(f"{e.get('filename')}:\n{e.get('stack_trace', '').rstrip()}" for e in errors)


def _render_log(content) -> str:
    if isinstance(content, str):
        return content
    lines = []
    for entry in content:
        if isinstance(entry, str):
            lines.append(entry)
            continue
        ts = str(entry.get("timestamp") or "")[:23]
        level = (entry.get("level") or "").upper()
        lines.append(" ".join(x for x in (ts, level, str(entry.get("event", ""))) if x))
        for err in entry.get("error_detail") or []:
            for frame in err.get("frames", []):
                lines.append(f'  File "{frame.get("filename")}", line {frame.get("lineno")}, in {frame.get("name")}')
            lines.append(f"  {err.get('exc_type')}: {err.get('exc_value')}")
    return "\n".join(lines)
