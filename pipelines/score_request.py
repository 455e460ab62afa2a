"""A scoring request, checked before any work: the budget, the validated batch it would read (a
batch whose validation failed is refused, or scored on the last validated batch only when asked
and then recorded), and the campaign (known, not ended unless replayed); one line says what is
wrong and what to do."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from campaignops.config import Settings
from campaignops.pipelines import layout
from campaignops.validation.contract import CONTROL


class RequestError(ValueError):
    """A scoring request that cannot be served; the message is one line saying why and what to do."""


@dataclass
class Request:
    campaign_id: str
    budget: float | None
    start: datetime
    end: datetime
    arms: list[dict]                  # treatments sorted by variant id, then control
    validation: dict                  # which validated batch is scored and whether it is the current one
    replay: bool = False
    exploration: dict = field(default_factory=dict)


def parse_budget(budget) -> float | None:
    """The request's budget as a number (None = the default), or RequestError."""
    if budget is None or budget == "":
        return None
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise RequestError(f"budget must be a non-negative number, got {budget!r}") from None
    if not math.isfinite(value) or value < 0:
        raise RequestError(f"budget must be a non-negative number, got {budget!r}")
    return value


def validation_state(settings: Settings, allow_last_validated: bool = False) -> dict:
    """Which validated batch scoring reads. The ingested batch (data/raw_manifest.json) must be the
    one in data/validated; if its validation failed (or never ran) scoring refuses, unless
    `allow_last_validated`, which scores the last validated batch and says so."""
    ws = settings.workspace
    reports = ws / layout.REPORTS_DIR
    passed = read_json(reports / "validation.json")
    failed = read_json(reports / "validation_failed.json")
    raw = read_json(ws / layout.RAW_MANIFEST)
    if not (ws / layout.VALIDATED_DIR).exists() or not passed:
        raise RequestError("no validated data to score (data/validated or reports/validation.json is missing): "
                           "run `campaignops validate` on a batch first")
    current = raw.get("batch")
    state = {"batch": passed.get("batch"), "run_id": passed.get("run_id"), "result_uri": passed.get("result_uri"),
             "ingested_batch": current, "current": passed.get("batch") == current}
    if state["current"] and not (failed.get("batch") == current
                                 and str(failed.get("finished_at", "")) > str(passed.get("finished_at", ""))):
        return state
    if failed.get("batch") == current:
        why = (f"batch {current!r} failed validation (run {failed.get('run_id')}: "
               f"{'; '.join(_failure_lines(failed))}; report {failed.get('result_uri', 'reports/validation_failed.json')})")
    else:
        why = f"batch {current!r} has not been validated (data/validated holds batch {passed.get('batch')!r})"
    if not allow_last_validated:
        raise RequestError(f"refusing to score: {why}. Fix the batch, or score the last validated batch "
                           f"{passed.get('batch')!r} explicitly with --use-last-validated (recorded in the manifest)")
    state["stale_reason"] = why
    return state


def check_request(settings: Settings, campaign_id: str | None, budget, allow_last_validated: bool = False,
                  replay: bool = False, exploration: dict | None = None) -> Request:
    """Every check that needs no model: budget, validation state, campaign known and not ended."""
    from campaignops.pipelines.scoring_frames import campaign_arms, connect

    budget = parse_budget(budget)
    state = validation_state(settings, allow_last_validated)
    raw = read_json(settings.workspace / layout.RAW_MANIFEST)
    campaign_id = campaign_id or raw.get("upcoming_campaign_id")
    con = connect(settings.workspace / layout.VALIDATED_DIR)
    known = sorted(r[0] for r in con.execute("SELECT DISTINCT campaign_id FROM campaigns").fetchall())
    if not campaign_id:
        raise RequestError(f"no campaign id given and batch {raw.get('batch')!r} names no upcoming campaign; "
                           f"known campaigns: {', '.join(known)}")
    if campaign_id not in known:
        raise RequestError(f"unknown campaign {campaign_id!r}; valid ids: {', '.join(known)}")
    start, end = con.execute("SELECT min(start_ts), max(end_ts) FROM campaigns WHERE campaign_id = ?",
                             [campaign_id]).fetchall()[0]
    now = _batch_now(con, raw)
    if end <= now and not replay:
        raise RequestError(f"campaign {campaign_id!r} ended at {end} (batch time {now}): nothing left to send; "
                           "use --replay to re-score a past campaign for analysis")
    arms = campaign_arms(con).to_pylist()
    arms = [a for a in arms if a["campaign_id"] == campaign_id]
    arms = sorted(arms, key=lambda a: (a["variant_id"] == CONTROL, a["variant_id"]))
    exploration = dict(settings.params["score"].get("exploration", {}), **(exploration or {}))
    share = float(exploration.get("share", 0.0))
    if not 0.0 <= share <= 1.0:
        raise RequestError(f"exploration share must be within [0, 1], got {share!r}")
    return Request(campaign_id, budget, start, end, arms, state, replay,
                   {"share": share, "seed": int(exploration.get("seed", 0))})


def _batch_now(con, raw: dict) -> datetime:
    if raw.get("now"):
        return datetime.fromisoformat(str(raw["now"])).replace(tzinfo=None)
    return con.execute("SELECT max(ts) FROM events").fetchall()[0][0] or datetime.min


def _failure_lines(report: dict) -> list[str]:
    out = []
    for f in report.get("failures", [])[:3]:
        out.append(f.get("message") or f"{f.get('table')}: rule {f.get('rule')} quarantined {f.get('rate', 0):.1%}")
    return out or ["see the report"]


def read_json(path) -> dict:
    """A JSON report of the workspace, {} when absent."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}
