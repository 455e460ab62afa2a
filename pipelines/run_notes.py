"""The Airflow run's note: what a run did, in one glance from the runs list, with links to the
MLflow run and model version, the evaluation report and the scoring manifest (+ the lineage
command). Tasks set it through Airflow's REST API as the pipeline's service account; a note is a
convenience, so failing to set one logs a warning and never fails the task."""
from __future__ import annotations

import logging
from urllib.parse import quote

from campaignops.config import Settings

log = logging.getLogger(__name__)


def set_note(settings: Settings, dag_id: str | None, run_id: str | None, text: str) -> bool:
    """PATCH the run's note (markdown). True when Airflow accepted it."""
    if not dag_id or not run_id:
        return False
    try:
        from campaignops.infra.airflow_client import AirflowClient

        r = AirflowClient.from_settings(settings).request(
            "PATCH", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}", json={"note": text[:1000]})
        if r.status_code != 200:
            log.warning("run note not set (%s): %s", r.status_code, r.text[:200])
        return r.status_code == 200
    except Exception as exc:   # noqa: BLE001 - a note must never fail the task
        log.warning("run note not set: %s", str(exc)[:200])
        return False


def note(settings: Settings, dag_id: str | None, run_id: str | None, build) -> bool:
    """set_note with the text from `build()`; a failure to build it is logged, never raised."""
    try:
        text = build()
    except Exception as exc:   # noqa: BLE001 - a note must never fail the task
        log.warning("run note not built: %s: %s", type(exc).__name__, str(exc)[:200])
        return False
    return set_note(settings, dag_id, run_id, text)


def mlflow_run_link(settings: Settings, run_id: str | None, experiment_id: str | None = None) -> str | None:
    from campaignops.pipelines import tracking

    ui = tracking.ui_url(settings)
    if not ui or not run_id:
        return None
    if experiment_id is None:
        try:
            experiment_id = tracking.configure(settings).MlflowClient().get_run(run_id).info.experiment_id
        except Exception:   # noqa: BLE001
            return None
    return tracking.run_url(ui, experiment_id, run_id)


def model_version_link(settings: Settings, name: str, version) -> str | None:
    from campaignops.pipelines import tracking

    return tracking.version_url(tracking.ui_url(settings), name, version)


def request_note(campaign_id: str, budget: float, engine: str | None, override: str | None = None) -> str:
    text = f"**{campaign_id}** · budget {budget:,.2f} · engine {engine or 'local'}"
    return text + (f" · drift override: {override}" if override else "")


def _num(value) -> float:
    """A figure from a summary field: a number, or a forecast's {"forecast", "lo", "hi"} (its forecast)."""
    if isinstance(value, dict):
        value = value.get("forecast", value.get("value"))
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def score_note(settings: Settings, summary: dict, manifest_model: dict | None = None) -> str:
    """After scoring: who was targeted, spend, forecast, and where everything is."""
    fc = summary.get("forecast_incremental_responses")
    interval = (f" ({_num(fc.get('lo')):,.1f} to {_num(fc.get('hi')):,.1f})"
                if isinstance(fc, dict) and "lo" in fc and "hi" in fc else "")
    parts = [f"**{summary['campaign_id']}** · {summary.get('status')} · {int(_num(summary.get('users_targeted'))):,} "
             f"users · spent {_num(summary.get('spent')):,.2f} of {_num(summary.get('budget')):,.2f} · "
             f"forecast +{_num(fc):,.1f} responses{interval}"]
    model = summary.get("model") or ""
    name, _, version = model.removeprefix("models:/").partition("/")
    link = model_version_link(settings, name, version) if version else None
    parts.append(f"model [{model}]({link})" if link else f"model {model}")
    if manifest_model and manifest_model.get("family"):
        parts[-1] += f" ({manifest_model['family']})"
    parts.append(f"manifest `{summary.get('manifest')}` · trace: `campaignops lineage {summary['campaign_id']}`")
    if summary.get("drift_override"):
        parts.append(f"drift gate overridden: {summary['drift_override']}")
    return "  \n".join(parts)


def blocked_note(what: str, message: str, param: str) -> str:
    first = message.split(". ")[0][:400]
    return (f"**BLOCKED by the drift gate** ({what}): {first}.  \nTo go on anyway, trigger again with "
            f"`{param}` (the reason is recorded with your user name).")


def refused_note(what: str, message: str) -> str:
    """A request the pipeline refused (bad budget, unknown campaign, ...): the reason, first."""
    return f"**REFUSED** ({what}): {message[:600]}"


def retrain_note(settings: Settings, batch: str, evaluation: dict | None, promotion: dict | None) -> str:
    """After retraining: the gate's verdict, the champion, links to the MLflow run and the report."""
    ev = evaluation or {}
    passed = ev.get("passed")
    verdict = "gate passed" if passed else ("gate refused: " + "; ".join(ev.get("reasons") or [])[:300]
                                            if passed is False else "not evaluated")
    parts = [f"batch **{batch}** · {verdict}"]
    if promotion and promotion.get("promoted"):
        name = settings.params["train"]["model_name"]
        version = promotion.get("champion_version") or promotion.get("version")
        link = model_version_link(settings, name, version)
        parts[-1] += f" · champion [v{version}]({link})" if link else f" · champion v{version}"
    run_link = mlflow_run_link(settings, ev.get("run_id"))
    if run_link:
        parts.append(f"[MLflow run]({run_link}) · [evaluation report]({run_link}/artifacts/evaluation)")
    return "  \n".join(parts)
