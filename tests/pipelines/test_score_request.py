"""Scoring refuses a request it cannot serve before any work (no model, no features, no S3), with
one line saying why and what to do: the budget, the campaign, the validation state of the batch."""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime

import boto3
import pytest
from moto import mock_aws

from campaignops.config import Settings
from campaignops.pipelines import ingest, layout, synth, validate
from campaignops.pipelines.scoring_frames import connect
from campaignops.pipelines.score_request import RequestError, check_request, parse_budget, validation_state
from campaignops.pipelines.storage import ObjectStore

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


def build_world(ws, users: int = 300, then=None) -> Settings:
    """A synthetic batch generated, ingested and validated in workspace `ws` on moto S3; `then(settings,
    store)` runs before the fake S3 goes away. The process environment is restored afterwards."""
    shutil.copy(ROOT / "params.yaml", ws / "params.yaml")
    settings = Settings(workspace=ws, state_dir=ws / ".state", env=dict(ENV))
    saved = dict(os.environ)
    try:
        os.environ.update(ENV)
        with mock_aws():
            store = ObjectStore(settings, client=boto3.client("s3", region_name="us-east-1"))
            store.client.create_bucket(Bucket=settings.bucket)
            synth.generate(settings, users=users, store=store, progress=False)
            ingest.ingest(settings, store=store)
            validate.run(settings, store=store)
            if then is not None:
                then(settings, store)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return settings


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    """A 300-user synthetic batch generated, ingested and validated once; each test gets its own
    copy of the workspace (check_request reads only local files)."""
    ws = tmp_path_factory.mktemp("score-request")
    build_world(ws)
    return ws


@pytest.fixture
def settings(world_dir, tmp_path) -> Settings:
    ws = tmp_path / "ws"
    shutil.copytree(world_dir, ws)
    return Settings(workspace=ws, state_dir=ws / ".state", env=dict(ENV))


def _raw(settings) -> dict:
    return json.loads((settings.workspace / layout.RAW_MANIFEST).read_text())


def _campaigns(settings) -> list[tuple[str, datetime, datetime]]:
    con = connect(settings.workspace / layout.VALIDATED_DIR)
    return con.execute("SELECT campaign_id, min(start_ts), max(end_ts) FROM campaigns GROUP BY 1 ORDER BY 1").fetchall()


# --------------------------------------------------------------------------- budget

@pytest.mark.parametrize("budget,shown", [(-5, "-5"), ("-5", "'-5'"), ("abc", "'abc'"), (float("nan"), "nan"),
                                          ("nan", "'nan'"), (float("inf"), "inf"), ("1e999", "'1e999'"),
                                          ([1], "[1]")])
def test_a_bad_budget_is_refused_naming_the_value(budget, shown):
    with pytest.raises(RequestError) as err:
        parse_budget(budget)
    msg = str(err.value)
    assert msg == f"budget must be a non-negative number, got {shown}" and "\n" not in msg


def test_budget_is_checked_before_anything_is_read(tmp_path):
    empty = Settings(workspace=tmp_path, state_dir=tmp_path / ".state")   # no params, no data at all
    with pytest.raises(RequestError, match="budget must be a non-negative number, got 'abc'"):
        check_request(empty, None, "abc")


@pytest.mark.parametrize("budget,want", [(None, None), ("", None), ("0", 0.0), (0, 0.0), ("12.5", 12.5), (3, 3.0)])
def test_good_budgets_parse(budget, want):
    assert parse_budget(budget) == want


# --------------------------------------------------------------------------- campaign

def test_no_campaign_id_scores_the_upcoming_campaign(settings):
    raw = _raw(settings)
    req = check_request(settings, None, "100")
    assert req.campaign_id == raw["upcoming_campaign_id"] == _campaigns(settings)[-1][0]
    assert req.budget == 100.0 and not req.replay and req.end > datetime.fromisoformat(raw["now"]).replace(tzinfo=None)
    ids = [a["variant_id"] for a in req.arms]
    assert ids[-1] == "control" and ids[:-1] == sorted(ids[:-1]) and len(ids) >= 2
    assert all(a["campaign_id"] == req.campaign_id for a in req.arms)
    assert req.validation["current"] and req.validation["batch"] == raw["batch"] and "stale_reason" not in req.validation
    share = settings.params["score"]["exploration"]["share"]
    assert req.exploration == {"share": share, "seed": settings.params["score"]["exploration"]["seed"]}


def test_an_unknown_campaign_lists_the_valid_ids(settings):
    ids = [c for c, _, _ in _campaigns(settings)]
    with pytest.raises(RequestError) as err:
        check_request(settings, "C999", None)
    msg = str(err.value)
    assert msg == f"unknown campaign 'C999'; valid ids: {', '.join(ids)}"


def test_an_ended_campaign_needs_replay(settings):
    now = datetime.fromisoformat(_raw(settings)["now"]).replace(tzinfo=None)
    past = [(c, end) for c, _, end in _campaigns(settings) if end <= now]
    assert past and past[0][0] == "C001"
    cid, end = past[0]
    with pytest.raises(RequestError) as err:
        check_request(settings, cid, "10")
    msg = str(err.value)
    assert f"campaign {cid!r} ended at {end}" in msg and "--replay" in msg and "\n" not in msg
    req = check_request(settings, cid, "10", replay=True)
    assert req.campaign_id == cid and req.replay and req.end == end
    assert [a["variant_id"] for a in req.arms][-1] == "control"


def test_an_exploration_share_outside_0_1_is_refused(settings):
    with pytest.raises(RequestError, match=r"exploration share must be within \[0, 1\], got 1.5"):
        check_request(settings, None, "10", exploration={"share": 1.5})
    assert check_request(settings, None, "10", exploration={"share": 0.0, "seed": 3}).exploration == {"share": 0.0,
                                                                                                        "seed": 3}


# --------------------------------------------------------------------------- validation state

def _fail_current_batch(settings, finished_at: str | None = None) -> dict:
    passed = json.loads((settings.workspace / layout.REPORTS_DIR / "validation.json").read_text())
    failed = {"run_id": "run-failed-1", "batch": passed["batch"], "status": "failed", "passed": False,
              "finished_at": finished_at or passed["finished_at"].replace(passed["finished_at"][:4], "2999"),
              "result_uri": "s3://bucket/validation/x/run-failed-1/result.json",
              "failures": [{"table": "events", "rule": "events.rows.quarantine_rate", "rate": 0.123},
                           {"table": "users", "rule": "users.rows.volume", "message": "users: 10 rows, 1% of the median"}]}
    (settings.workspace / layout.REPORTS_DIR / "validation_failed.json").write_text(json.dumps(failed))
    return passed


def test_a_failed_validation_of_the_ingested_batch_refuses_scoring(settings):
    passed = _fail_current_batch(settings)
    for call in (lambda: validation_state(settings), lambda: check_request(settings, None, "10")):
        with pytest.raises(RequestError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith("refusing to score: batch")
        assert "failed validation (run run-failed-1" in msg
        assert "events: rule events.rows.quarantine_rate quarantined 12.3%" in msg
        assert "users: 10 rows, 1% of the median" in msg
        assert "--use-last-validated" in msg and repr(passed["batch"]) in msg


def test_use_last_validated_scores_the_validated_batch_and_says_why(settings):
    passed = _fail_current_batch(settings)
    state = validation_state(settings, allow_last_validated=True)
    assert state["batch"] == passed["batch"] and state["run_id"] == passed["run_id"]
    assert "failed validation" in state["stale_reason"] and "quarantined 12.3%" in state["stale_reason"]
    req = check_request(settings, None, "10", allow_last_validated=True)
    assert req.validation["stale_reason"] == state["stale_reason"]


def test_a_failure_older_than_the_pass_does_not_block(settings):
    passed = _fail_current_batch(settings, finished_at="2000-01-01T00:00:00+00:00")
    state = validation_state(settings)
    assert state["current"] and state["batch"] == passed["batch"] and "stale_reason" not in state


def test_an_ingested_batch_that_was_never_validated_refuses_scoring(settings):
    raw = _raw(settings)
    validated = raw["batch"]
    raw["batch"] = "next-batch"
    (settings.workspace / layout.RAW_MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(RequestError) as err:
        check_request(settings, None, "10")
    msg = str(err.value)
    assert f"batch 'next-batch' has not been validated (data/validated holds batch {validated!r})" in msg
    assert "--use-last-validated" in msg
    state = validation_state(settings, allow_last_validated=True)
    assert state["batch"] == validated and not state["current"] and "has not been validated" in state["stale_reason"]


def test_no_validated_data_says_to_run_validate(settings):
    (settings.workspace / layout.REPORTS_DIR / "validation.json").unlink()
    with pytest.raises(RequestError, match="no validated data to score .*run `campaignops validate`"):
        check_request(settings, None, "10", allow_last_validated=True)


# --------------------------------------------------------------------------- the CLI

def test_cli_refuses_a_negative_budget_with_one_line_and_exit_2(settings, monkeypatch):
    from typer.testing import CliRunner

    from campaignops.cli import app

    monkeypatch.setenv("CAMPAIGNOPS_WORKSPACE", str(settings.workspace))
    monkeypatch.setenv("CAMPAIGNOPS_STATE", str(settings.workspace / ".state"))
    result = CliRunner().invoke(app, ["score", "--budget", "-5"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("score refused:"), result.output
    assert "'-5'" in lines[0]
    result = CliRunner().invoke(app, ["score", "--campaign-id", "C999"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("score refused: unknown campaign 'C999'")
