"""Every DAG file imports cleanly, quickly and without heavy libraries, and wires the steps."""
from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"campaign_retrain", "campaign_score", "campaign_feedback", "campaign_adjust"}


def test_retrain_chain_order(dagbag):
    dag = dagbag.dags["campaign_retrain"]
    order = ["plan", "ingest", "validate", "features", "drift_check", "train", "evaluate", "promote", "record"]
    for upstream, downstream in zip(order, order[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert dag.max_active_runs == 1


def test_retrain_runs_on_landed_batches_and_daily_and_publishes_the_champion(dagbag):
    from airflow.sdk import AssetOrTimeSchedule

    dag = dagbag.dags["campaign_retrain"]
    assert isinstance(dag.schedule, AssetOrTimeSchedule)
    from airflow.serialization.serialized_objects import DagSerialization

    served = DagSerialization.from_dict(DagSerialization.to_dict(dag))   # what the scheduler sees
    assert served.timetable.periodic                              # backfills need a time schedule
    assert dag.schedule.asset_condition.name == "campaignops.raw_batch"
    from airflow.sdk import Asset

    assert [o.name for o in dag.get_task("promote").outlets if isinstance(o, Asset)] == ["campaignops.champion"]
    assert not [o for t in dagbag.dags["campaign_retrain"].tasks for o in t.outlets   # the other outlets are lineage
                if isinstance(o, Asset) and t.task_id != "promote"]                   # only: no asset events
    assert dag.get_task("record").trigger_rule == "none_failed"   # runs when promote is skipped by the gate


def test_no_dag_starts_a_run_when_unpaused(dagbag):
    """Unpausing (the demo, the e2e tests) must start nothing by itself: timed schedules wait for
    their next tick (no catchup; no run for the tick just missed: test_schedules.py sets the clock)."""
    from airflow.serialization.serialized_objects import DagSerialization

    for dag in dagbag.dags.values():
        timetable = DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable
        inner = getattr(timetable, "timetable", timetable)       # AssetOrTimeSchedule wraps a timetable
        assert not dag.catchup, dag.dag_id
        # False would still run a tick under 10% of the period old; 0 waits for the next one
        assert getattr(inner, "_run_immediately", timedelta(0)) == timedelta(0), dag.dag_id


def test_score_has_a_params_form(dagbag):
    dag = dagbag.dags["campaign_score"]
    assert {"campaign_id", "budget", "engine", "exploration_share", "use_last_validated", "replay"} <= set(dag.params.keys())
    assert dag.params.get_param("engine").schema["enum"] == ["local", "spark"]


def test_score_checks_the_request_before_any_work(dagbag):
    dag = dagbag.dags["campaign_score"]
    assert set(dag.task_ids) == {"check_request", "score"}
    assert dag.get_task("check_request").downstream_task_ids == {"score"}


def test_feedback_compares_then_checks_daily_with_a_form(dagbag):
    dag = dagbag.dags["campaign_feedback"]
    assert set(dag.task_ids) == {"compare", "check_forecast"}
    assert dag.get_task("compare").downstream_task_ids == {"check_forecast"}
    assert {"campaign_id", "scores_run_id"} <= set(dag.params.keys())
    assert dag.params["campaign_id"] is None and dag.params["scores_run_id"] is None
    assert dag.schedule.expression == "0 5 * * *" and not dag.catchup and dag.description and dag.doc_md
    assert dag.owner == "campaign-ml" and dag.tags >= {"campaignops", "feedback"}
    assert dag.get_task("compare").retries >= 2 and dag.get_task("check_forecast").retries == 0
    assert all(dag.get_task(t).doc_md for t in dag.task_ids)


def test_adjust_runs_daily_one_mapped_task_per_due_campaign_with_a_form(dagbag):
    dag = dagbag.dags["campaign_adjust"]
    assert set(dag.task_ids) == {"due", "adjust"}
    assert dag.get_task("due").downstream_task_ids == {"adjust"}
    assert type(dag.get_task("adjust")).__name__ == "DecoratedMappedOperator"     # one instance per campaign
    assert {"campaign_id", "date"} <= set(dag.params.keys())
    assert dag.params["campaign_id"] is None and dag.params["date"] is None
    assert dag.schedule.expression == "0 6 * * *" and not dag.catchup and dag.max_active_runs == 1
    assert dag.description and dag.doc_md and dag.owner == "campaign-ml" and dag.tags >= {"campaignops", "adjust"}
    assert all(dag.get_task(t).retries >= 2 and dag.get_task(t).doc_md for t in dag.task_ids)


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS.glob("*.py")))
def test_dag_parse_does_not_import_heavy_libraries(dag_file):
    code = (f"import runpy, sys; runpy.run_path({str(DAGS / dag_file)!r}); "
            "heavy = [m for m in ('tensorflow', 'keras', 'great_expectations', 'mlflow', 'duckdb') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_data_task_declares_its_s3_datasets_for_openlineage(dagbag):
    """What the OpenLineage provider will emit as each task's inputs and outputs (its inlets and
    outlets, converted exactly as the provider's listener does)."""
    from airflow.providers.openlineage.extractors.base import OperatorLineage
    from airflow.providers.openlineage.extractors.manager import ExtractorManager

    manager = ExtractorManager()

    def datasets(dag_id, task_id):
        md = OperatorLineage()
        manager.extract_inlets_and_outlets(md, dagbag.dags[dag_id].get_task(task_id))
        return ({f"{d.namespace}/{d.name}".split("campaignops/", 1)[1] for d in md.inputs},
                {f"{d.namespace}/{d.name}".split("campaignops/", 1)[1] for d in md.outputs})

    assert datasets("campaign_retrain", "validate") == ({"raw"}, {"dvc/data/validated", "quarantine"})
    assert datasets("campaign_retrain", "features") == ({"dvc/data/validated"}, {"dvc/data/features"})
    assert datasets("campaign_retrain", "train") == ({"dvc/data/features"}, {"mlflow/runs"})
    assert datasets("campaign_retrain", "promote") == ({"mlflow/runs"}, {"mlflow"})
    assert datasets("campaign_score", "score") == ({"mlflow", "dvc/data/validated"}, {"scores"})
    assert datasets("campaign_feedback", "compare")[1] == {"feedback"}
    assert datasets("campaign_adjust", "adjust")[1] == {"allocations"}


# --------------------------------------------------------------------------- failure policy

NOT_RETRIED = "Not retried:"    # a task's doc_md says so, with the reason, when it has fewer than 2 retries


def _policy_problems(dag) -> list[str]:
    """Every task has an owner, a time limit and >= 2 retries with exponential backoff, unless its
    doc says why it is not retried (then it has none)."""
    from datetime import timedelta

    problems = []
    for t in dag.tasks:
        where = f"{dag.dag_id}.{t.task_id}"
        if not t.owner or t.owner == "airflow":           # Airflow's default names nobody
            problems.append(f"{where}: no owner")
        if t.execution_timeout is None or t.execution_timeout <= timedelta(0):
            problems.append(f"{where}: no execution_timeout")
        doc = t.doc_md or ""
        if NOT_RETRIED in doc:
            reason = doc.split(NOT_RETRIED, 1)[1].strip()
            if len(reason.split()) < 5:
                problems.append(f"{where}: '{NOT_RETRIED}' without a reason")
            if t.retries != 0:
                problems.append(f"{where}: documented as not retried but has retries={t.retries}")
        elif t.retries < 2:
            problems.append(f"{where}: retries={t.retries} and no '{NOT_RETRIED} <reason>' in its doc")
        elif not (t.retry_exponential_backoff > 1 and t.max_retry_delay and t.retry_delay <= t.max_retry_delay):
            problems.append(f"{where}: retried without exponential backoff under a max_retry_delay")
    return problems


def test_every_task_has_an_owner_a_time_limit_and_retries_unless_its_doc_says_why_not(dagbag):
    """The exceptions live in the DAG code (each task's doc_md, shown in the UI), not here."""
    assert [p for dag in dagbag.dags.values() for p in _policy_problems(dag)] == []
    # the steps kill-tested for idempotency (tests/faults/test_kill_points.py) are retried
    for dag_id, task_id in (("campaign_score", "score"), ("campaign_retrain", "promote")):
        assert dagbag.dags[dag_id].get_task(task_id).retries >= 2


def test_the_policy_check_flags_a_task_that_breaks_it(dagbag):
    import copy

    dag = copy.deepcopy(dagbag.dags["campaign_score"])
    dag.get_task("score").retries = 0
    dag.get_task("check_request").owner = "airflow"
    dag.get_task("check_request").execution_timeout = None
    problems = _policy_problems(dag)
    assert any("campaign_score.score: retries=0" in p for p in problems)
    assert any("check_request: no owner" in p for p in problems)
    assert any("check_request: no execution_timeout" in p for p in problems)
    dag.get_task("score").doc_md = "Scores.\n\nNot retried: because."
    dag.get_task("check_request").doc_md = "Not retried: a check whose answer a retry cannot change."
    problems = _policy_problems(dag)
    assert any("campaign_score.score: 'Not retried:' without a reason" in p for p in problems)
    assert any(f"check_request: documented as not retried but has retries={dag.get_task('check_request').retries}"
               in p for p in problems)


def _promote_callable(dagbag):
    return dagbag.dags["campaign_retrain"].get_task("promote").python_callable


def test_a_refused_candidate_skips_promote_with_the_gates_reasons(dagbag, monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    from campaignops.pipelines import promote

    calls = []
    monkeypatch.setattr(promote, "run", lambda settings: calls.append(settings) or {"promoted": True})
    with pytest.raises(AirflowSkipException, match=r"gate refused the candidate: auc 0\.50 < 0\.55; qini -0\.02 < 0"):
        _promote_callable(dagbag)({"passed": False, "reasons": ["auc 0.50 < 0.55", "qini -0.02 < 0"]})
    assert calls == []                                  # nothing registered, nothing recorded

    monkeypatch.setattr(promote, "run", lambda settings: {
        "promoted": False, "reasons": ["promote.mode is challenger: version 3 is the challenger"]})
    with pytest.raises(AirflowSkipException, match="not promoted: promote.mode is challenger: version 3"):
        _promote_callable(dagbag)({"passed": True, "reasons": []})

    monkeypatch.setattr(promote, "run", lambda settings: {"promoted": True, "champion_version": "3"})
    assert _promote_callable(dagbag)({"passed": True, "reasons": []})["champion_version"] == "3"


def test_a_drift_block_is_a_labelled_skip_and_an_override_reason_goes_through(dagbag, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from campaignops.pipelines import drift, run_notes, score

    notes, seen = [], {}
    monkeypatch.setattr(run_notes, "set_note", lambda settings, dag_id, run_id, text: notes.append(text) or True)

    def breach(*a, **kw):
        seen.update(kw)
        if kw.get("drift_override") or kw.get("override"):
            return {"stage": "score", "status": "overridden"} if "override" in kw else _manifest()
        raise drift.DriftDetected("PSI 0.40 > 0.25 on recency_days", {"recency_days": 0.40})

    def _manifest():
        return {"campaign_id": "C1", "status": "targeted", "rows": 5, "users_targeted": 2, "budget": 10.0,
                "spent": 4.0, "forecast": {"total": {"incremental_responses": 1.5}}, "model": {"uri": "models:/m/3"},
                "output": {"manifest": "s3://b/scores/C1/r/manifest.json"}, "exploration": {},
                "drift": {"status": "overridden", "override": {"reason": "new catalogue", "by": "eve"}}}

    class Run:
        run_id, triggering_user_name = "manual__1", "eve"

    monkeypatch.setattr(score, "run", breach)
    task = dagbag.dags["campaign_score"].get_task("score")
    with pytest.raises(AirflowSkipException, match="blocked by the drift gate: PSI 0.40"):
        task.python_callable({"campaign_id": "C1", "budget": 10.0}, params={"engine": "local"}, dag_run=Run())
    assert "BLOCKED by the drift gate" in notes[-1] and "drift_override_reason" in notes[-1]
    out = task.python_callable({"campaign_id": "C1", "budget": 10.0}, dag_run=Run(),
                               params={"engine": "local", "drift_override_reason": "new catalogue"})
    assert seen["drift_override"] == {"reason": "new catalogue", "by": "eve"}
    assert out["drift_override"] == "new catalogue" and "drift gate overridden: new catalogue" in notes[-1]

    def refused(*a, **kw):
        raise score.RequestError("budget must be positive")

    monkeypatch.setattr(score, "run", refused)
    with pytest.raises(AirflowFailException, match="score refused: budget"):    # AirflowFailException: no retry
        task.python_callable({"campaign_id": "C1", "budget": 10.0}, params={"engine": "local"}, dag_run=Run())

    monkeypatch.setattr(drift, "gate_training", breach)
    check = dagbag.dags["campaign_retrain"].get_task("drift_check")
    with pytest.raises(AirflowSkipException, match="drift gate: PSI 0.40"):
        check.python_callable(params={}, dag_run=Run())
    assert "BLOCKED" in notes[-1]
    assert check.python_callable(params={"drift_override_reason": "seasonal"}, dag_run=Run())["status"] == "overridden"
    assert seen["override"] == {"reason": "seasonal", "by": "eve"}
    with pytest.raises(AirflowSkipException, match="not recorded"):
        dagbag.dags["campaign_retrain"].get_task("record").python_callable({"batch": "2026-01-01"}, None, None)


def test_dags_describe_themselves_and_show_defaults_in_their_forms(dagbag):
    from campaignops.config import load_settings

    for dag_id, dag in dagbag.dags.items():
        assert dag.description and dag.doc_md, dag_id
        assert all(t.owner not in ("airflow", "") and t.doc_md for t in dag.tasks), dag_id
        for key, param in dag.params.items():
            param = dag.params.get_param(key)
            assert param.schema.get("title") and param.description, (dag_id, key)
    form = dagbag.dags["campaign_score"].params
    assert form["budget"] == float(load_settings().params["score"]["default_budget"])
    assert form.get_param("engine").schema["enum"] == ["local", "spark"]


def test_a_failed_validation_fails_at_once_other_stage_errors_are_retried(dagbag, monkeypatch, tmp_path):
    import shutil

    from airflow.sdk.exceptions import AirflowFailException

    from campaignops.pipelines import layout, versioning

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.setenv("CAMPAIGNOPS_WORKSPACE", str(tmp_path))
    report = tmp_path / layout.REPORTS_DIR / "validation_failed.json"

    def stage_fails(settings, stage):
        if stage == "validate":
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text('{"passed": false}')
        raise RuntimeError(f"`dvc repro --single-item {stage}` failed")

    monkeypatch.setattr(versioning, "repro", stage_fails)
    dag = dagbag.dags["campaign_retrain"]
    with pytest.raises(AirflowFailException, match="failed validation .*validation_failed.json"):
        dag.get_task("validate").python_callable("validate")
    with pytest.raises(RuntimeError, match="features"):     # not an AirflowFailException: retried
        dag.get_task("features").python_callable("features")
    monkeypatch.setattr(versioning, "repro", lambda settings, stage: (_ for _ in ()).throw(RuntimeError("S3 timeout")))
    with pytest.raises(RuntimeError, match="S3 timeout") as exc:     # an old report does not turn it into a refusal
        dag.get_task("validate").python_callable("validate")
    assert not isinstance(exc.value, AirflowFailException)


def test_optional_form_fields_accept_an_empty_form(dagbag):
    """A field a person may leave empty must allow null: Airflow's form marks a non-nullable field
    required and refuses the trigger while it is empty (the browser test caught an empty-string one)."""
    for dag_id in ("campaign_score", "campaign_retrain"):
        param = dagbag.dags[dag_id].params.get_param("drift_override_reason")
        assert param.value is None and "null" in param.schema["type"], dag_id
        param.resolve(None)   # valid when left empty
