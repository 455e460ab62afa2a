"""Promotion log, overrides, challenger mode and crash safety of pipelines/promote.py, on
in-process fakes (moto S3, SQLite MLflow) with tiny pyfunc models instead of trained networks."""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest

from campaignops.pipelines import failpoints, layout, promote, promotion_log
from campaignops.pipelines.storage import write_json
from conftest import moto_store

NAME = "campaign_uplift"


class Killed(BaseException):
    """Stands for SIGKILL at a failpoint (nothing after it runs; no cleanup in promote catches it)."""


@pytest.fixture
def env(workspace, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # MLflow with a SQLite store writes artifacts under ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("CAMPAIGNOPS_ACTOR", "alice")
    for k, v in workspace.env.items():
        monkeypatch.setenv(k, v)
    saved = dict(os.environ)  # the steps export endpoints (apply_env); keep them out of other tests
    try:
        with moto_store(workspace) as store:
            yield workspace, store
    finally:
        os.environ.clear()
        os.environ.update(saved)


def candidate(settings, *, passed=True, reasons=(), champion_version=None, family="network") -> dict:
    """Log a trivial pyfunc model to a new run and write reports/evaluation.json for it."""
    import mlflow

    from campaignops.pipelines import tracking

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    tracking.configure(settings)
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"])
    evaluation = {"run_id": run.info.run_id, "model_uri": f"runs:/{run.info.run_id}/model", "passed": passed,
                  "reasons": list(reasons), "candidate": {"auc": 0.6}, "champion_version": champion_version,
                  "family": {"served": family, "model_uri": f"runs:/{run.info.run_id}/model"},
                  "_model_id": info.model_id}
    write_json(settings.workspace / layout.REPORTS_DIR / "evaluation.json", evaluation)
    return evaluation


def client():
    import mlflow

    return mlflow.MlflowClient()


def aliases():
    return promote.registry_aliases(client(), NAME)


def versions() -> list[str]:
    return sorted(str(v.version) for v in client().search_model_versions(f"name='{NAME}'"))


def log(store) -> list[dict]:
    return promote.read_log(store, NAME)


REAL_HIT = failpoints.hit


def revive(monkeypatch):
    """The next process: failpoints off again (not revive(monkeypatch): that drops the env too)."""
    monkeypatch.setattr(failpoints, "hit", REAL_HIT)


def kill_at(monkeypatch, name: str, nth: int = 1):
    hits = {"n": 0}
    real = REAL_HIT

    def hit(point):
        if point == name:
            hits["n"] += 1
            if hits["n"] == nth:
                raise Killed(point)
        real(point)

    monkeypatch.setattr(failpoints, "hit", hit)


def test_promotion_and_rollback_each_write_one_record(env):
    settings, store = env
    a = candidate(settings, family="tlearner_gbt")
    first = promote.run(settings, store=store)
    assert first["promoted"] and first["champion_version"] == "1" and first["previous_version"] is None
    (rec,) = log(store)
    assert rec["key"] == first["event"] and rec["key"].startswith(f"promotions/{NAME}/")
    assert rec["action"] == "promote" and rec["alias"] == "champion"
    assert (rec["from_version"], rec["to_version"]) == (None, "1")
    assert rec["actor"] == {"name": "alice", "source": "env CAMPAIGNOPS_ACTOR"}
    assert rec["gate"] == {"passed": True, "reasons": []} and rec["mlflow_run_id"] == a["run_id"]
    assert rec["family"] == "tlearner_gbt" and rec["recorded_at"].endswith("+00:00")

    b = candidate(settings, champion_version="1")
    second = promote.run(settings, store=store)
    assert second["promoted"] and (second["champion_version"], second["previous_version"]) == ("2", "1")
    assert aliases() == {"champion": "2", "previous": "1"}
    back = promote.rollback(settings, store=store, reason="v2 overspends")
    assert (back["champion_version"], back["previous_version"]) == ("1", "2")
    assert aliases() == {"champion": "1", "previous": "2"}
    records = promote.history(settings, store=store)
    assert [r["action"] for r in records] == ["promote", "promote", "rollback"]
    assert [(r["from_version"], r["to_version"]) for r in records] == [(None, "1"), ("1", "2"), ("2", "1")]
    assert records[1]["mlflow_run_id"] == b["run_id"] and records[2]["reason"] == "v2 overspends"
    assert records[2]["moves"] == [["previous", "2"], ["champion", "1"]]
    assert [r["status"] for r in records] == ["applied"] * 3
    # A record is immutable JSON in S3, keys in time order.
    assert [r["key"] for r in records] == sorted(r["key"] for r in records)
    assert json.loads(store.get_bytes(records[0]["key"]))["event_id"] == records[0]["event_id"]


def test_a_failed_gate_needs_a_recorded_override(env):
    settings, store = env
    candidate(settings)
    promote.run(settings, store=store)
    failing = ["auc 0.50 < 0.55", "qini -0.02 < 0.0"]
    bad = candidate(settings, passed=False, reasons=failing, champion_version="1")
    refused = promote.run(settings, store=store)
    assert refused["promoted"] is False and refused["reasons"] == failing
    assert versions() == ["1"] and len(log(store)) == 1        # nothing registered, nothing recorded
    for reason in (None, "", "   "):
        with pytest.raises(promote.PromotionError, match="reason"):
            promote.run(settings, store=store, force=True, reason=reason)
    assert len(log(store)) == 1 and aliases() == {"champion": "1"}

    out = promote.run(settings, store=store, force=True, reason="campaign launch cannot wait; AUC checked by hand")
    assert out["promoted"] and out["action"] == "override" and aliases() == {"champion": "2", "previous": "1"}
    rec = log(store)[-1]
    assert rec["action"] == "override" and rec["mlflow_run_id"] == bad["run_id"]
    assert rec["gate"] == {"passed": False, "reasons": failing}
    assert rec["override"] == {"reason": "campaign launch cannot wait; AUC checked by hand", "failing_reasons": failing}
    assert client().get_model_version(NAME, "2").tags["gate.passed"] == "False"

    # The failed version may come back by rollback: its override is on record.
    promote.rollback(settings, store=store)
    assert promote.rollback(settings, store=store)["champion_version"] == "2"
    # A failed version never overridden cannot get champion by any other action.
    candidate(settings, passed=False, reasons=["auc 0.40 < 0.55"], champion_version="2")
    promote.run(settings, store=store, force=True, reason="try")      # v3, overridden
    mv3 = client().get_model_version(NAME, "3")
    client().set_model_version_tag(NAME, "1", "gate.passed", "False")  # pretend v1 had failed
    with pytest.raises(promote.GateRefused, match="version 1 .*failed the gate"):
        promote.change_aliases(client(), store, NAME, action="promote", primary="champion",
                               moves=[("champion", "1")], gate=None)
    assert aliases()["champion"] == str(mv3.version)
    # ... but by a manual override of that version: --force --reason --version N.
    n = len(log(store))
    with pytest.raises(promote.PromotionError, match="--force"):
        promote.run(settings, store=store, version="1")
    out = promote.run(settings, store=store, force=True, reason="back to the known one", version="1")
    assert out["champion_version"] == "1" and aliases()["champion"] == "1"
    rec = log(store)[-1]
    assert len(log(store)) == n + 1 and rec["action"] == "override" and rec["to_version"] == "1"
    assert rec["override"]["reason"] == "back to the known one"


def test_a_conditional_put_never_overwrites_a_record(env, monkeypatch):
    settings, store = env
    frozen = datetime(2026, 6, 1, 3, 0, 0, 123456, tzinfo=timezone.utc)
    monkeypatch.setattr(promotion_log, "_now", lambda: frozen)
    body = {"model_name": NAME, "action": "promote", "alias": "champion", "from_version": None, "to_version": "1"}
    one = promote.write_record(store, {**body, "note": "first"})
    two = promote.write_record(store, {**body, "note": "second"})         # same timestamp: both survive
    assert one["key"] != two["key"] and one["recorded_at"] == two["recorded_at"]
    ids = iter(["sameid", "sameid", "otherid"])
    monkeypatch.setattr(promotion_log, "_event_id", lambda: next(ids))
    three = promote.write_record(store, {**body, "note": "third"})
    four = promote.write_record(store, {**body, "note": "fourth"})        # its first key is taken
    assert three["event_id"] == "sameid" and four["event_id"] == "otherid"
    notes = [r["note"] for r in log(store)]
    assert sorted(notes) == ["first", "fourth", "second", "third"]
    assert store.get_json(three["key"])["note"] == "third"                # untouched by the fourth
    assert store.put_bytes_if_absent(three["key"], b"{}") is False


def test_a_retry_after_a_kill_registers_once_and_records_once(env, monkeypatch):
    settings, store = env
    candidate(settings)
    kill_at(monkeypatch, "promote_registered")                            # registered, nothing recorded
    with pytest.raises(Killed):
        promote.run(settings, store=store)
    assert versions() == ["1"] and aliases() == {} and log(store) == []
    revive(monkeypatch)
    assert promote.run(settings, store=store)["champion_version"] == "1"
    assert versions() == ["1"] and len(log(store)) == 1

    candidate(settings, champion_version="1")
    kill_at(monkeypatch, "promote_recorded")                              # recorded, no alias moved
    with pytest.raises(Killed):
        promote.run(settings, store=store)
    revive(monkeypatch)
    assert aliases() == {"champion": "1"}
    assert [r["status"] for r in promote.history(settings, store=store)] == ["applied", "pending"]
    again = promote.run(settings, store=store)                            # resumes the pending record
    assert again["promoted"] and again["resumed"] and again["champion_version"] == "2"
    assert versions() == ["1", "2"] and aliases() == {"champion": "2", "previous": "1"}
    records = promote.history(settings, store=store)
    assert len(records) == 2 and again["event"] == records[-1]["key"]
    assert [r["status"] for r in records] == ["applied", "applied"]

    kill_at(monkeypatch, "promote_alias_moved", 1)                         # rollback: `previous` set, champion not
    with pytest.raises(Killed):
        promote.rollback(settings, store=store)
    revive(monkeypatch)
    assert aliases() == {"champion": "2", "previous": "2"}
    back = promote.rollback(settings, store=store)
    assert back["resumed"] and aliases() == {"champion": "1", "previous": "2"} and len(log(store)) == 3
    assert promote.history(settings, store=store)[-1]["status"] == "applied"


def test_a_retry_after_the_last_alias_moved_answers_as_the_uninterrupted_run(env, monkeypatch):
    """Killed after `champion` moved (the event is complete): the retried task must not report
    "not promoted" (the DAG would skip promote and the day record would say nothing was promoted)."""
    settings, store = env
    candidate(settings)
    promote.run(settings, store=store)
    candidate(settings, champion_version="1")
    kill_at(monkeypatch, "promote_alias_moved", 2)                         # previous, then champion: both moved
    with pytest.raises(Killed):
        promote.run(settings, store=store)
    revive(monkeypatch)
    assert aliases() == {"champion": "2", "previous": "1"}
    again = promote.run(settings, store=store)
    (_, second) = log(store)
    assert again == {"promoted": True, "model_name": NAME, "champion_version": "2", "previous_version": "1",
                     "action": "promote", "event": second["key"], "resumed": True}
    assert versions() == ["1", "2"] and len(log(store)) == 2
    # Once the champion moved on (a rollback), the candidate is not "promoted" by a rerun any more.
    promote.rollback(settings, store=store)
    promote.rollback(settings, store=store)                              # back to 2, by rollbacks
    assert promote.run(settings, store=store)["reasons"] == ["candidate is already the champion"]


def test_a_record_whose_move_never_happened_shows_as_not_applied(env, monkeypatch):
    settings, store = env
    candidate(settings)
    kill_at(monkeypatch, "promote_recorded")
    with pytest.raises(Killed):
        promote.run(settings, store=store)
    revive(monkeypatch)
    candidate(settings)            # another candidate is promoted instead of retrying the first
    promote.run(settings, store=store)
    records = promote.history(settings, store=store)
    assert [(r["to_version"], r["status"]) for r in records] == [("1", "not applied"), ("2", "applied")]


def test_missing_artifacts_refuse_the_alias_move(env):
    import mlflow

    settings, store = env
    ev = candidate(settings)
    location = mlflow.get_logged_model(ev["_model_id"]).artifact_location
    shutil.rmtree(url2pathname(urlparse(location).path))
    with pytest.raises(promote.ArtifactsMissing, match="version 1.*missing"):
        promote.run(settings, store=store)
    assert aliases() == {} and log(store) == []                          # no alias moved, nothing recorded


def test_challenger_mode_and_approve(env):
    settings, store = env
    settings.params["promote"] = {"mode": "challenger"}
    candidate(settings)
    out = promote.run(settings, store=store)
    assert out["promoted"] is False and out["challenger"] and out["challenger_version"] == "1"
    assert "--approve" in out["reasons"][0] and aliases() == {"challenger": "1"}
    assert promote.run(settings, store=store)["reasons"] == ["candidate is already the challenger"]
    approved = promote.approve(settings, store=store)
    assert approved["promoted"] and approved["champion_version"] == "1" and aliases() == {"champion": "1"}

    candidate(settings, champion_version="1")
    assert promote.run(settings, store=store)["challenger_version"] == "2"
    assert aliases() == {"champion": "1", "challenger": "2"}
    approved = promote.approve(settings, store=store, reason="reviewed the report")
    assert (approved["champion_version"], approved["previous_version"]) == ("2", "1")
    assert aliases() == {"champion": "2", "previous": "1"}
    with pytest.raises(promote.PromotionError, match="no 'challenger'"):
        promote.approve(settings, store=store)
    records = promote.history(settings, store=store)
    assert [(r["action"], r["alias"], r["to_version"]) for r in records] == [
        ("challenger", "challenger", "1"), ("approve", "champion", "1"),
        ("challenger", "challenger", "2"), ("approve", "champion", "2")]
    assert records[-1]["moves"] == [["previous", "1"], ["champion", "2"], ["challenger", None]]
    assert records[-1]["reason"] == "reviewed the report"
    assert all(r["status"] == "applied" for r in records)
    settings.params["promote"] = {"mode": "shadow"}
    with pytest.raises(promote.PromotionError, match="promote.mode"):
        promote.mode(settings)


def test_actor_order(monkeypatch):
    for var in ("CAMPAIGNOPS_ACTOR", "AIRFLOW_CTX_TRIGGERING_USER", "AIRFLOW_CTX_DAG_ID"):
        monkeypatch.delenv(var, raising=False)
    assert promote.actor()["source"] == "os user"
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "campaign_retrain")
    assert promote.actor() == {"name": "airflow:campaign_retrain", "source": "airflow dag"}
    monkeypatch.setenv("AIRFLOW_CTX_TRIGGERING_USER", "bob")
    assert promote.actor() == {"name": "bob", "source": "airflow triggering user"}
    monkeypatch.setenv("CAMPAIGNOPS_ACTOR", "carol")
    assert promote.actor() == {"name": "carol", "source": "env CAMPAIGNOPS_ACTOR"}


def test_cli_promote_override_and_history(env, monkeypatch):
    from typer.testing import CliRunner

    from campaignops import cli
    from campaignops.cli import app

    settings, store = env
    monkeypatch.setenv("CAMPAIGNOPS_WORKSPACE", str(settings.workspace))
    monkeypatch.setenv("CAMPAIGNOPS_S3_ENDPOINT", "https://s3.amazonaws.com")   # the CLI's own store: moto's
    monkeypatch.setattr(cli.console, "width", 200)
    runner = CliRunner()
    candidate(settings)
    result = runner.invoke(app, ["promote"])
    assert result.exit_code == 0, result.output
    candidate(settings, passed=False, reasons=["auc 0.50 < 0.55"], champion_version="1")
    result = runner.invoke(app, ["promote", "--force"])
    assert result.exit_code == 2 and "reason" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["promote", "--force", "--reason", "hand-checked"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["promote", "--history"])
    assert result.exit_code == 0, result.output
    for text in ("promotion log of campaign_uplift", "promote", "override", "– → v1", "v1 → v2", "alice",
                 "reason: hand-checked", "gate: auc 0.50 < 0.55", "applied"):
        assert text in result.output, (text, result.output)
    result = runner.invoke(app, ["promote", "--history", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [r["action"] for r in rows] == ["promote", "override"] and rows[1]["status"] == "applied"
    result = runner.invoke(app, ["promote", "--rollback", "--approve"])
    assert result.exit_code == 2
