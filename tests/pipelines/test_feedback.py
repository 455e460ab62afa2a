"""Feedback (pipelines/feedback.py): the IPW measurement of a targeted campaign's sends is unbiased
where the naive sent-minus-not-sent difference is not; hand-checked per-variant figures; the report,
its HTML and the link land in S3 and one MLflow run holds them; a rerun changes nothing;
OutcomesNotReady and refused requests; the gate's rules; the CLI's exit codes."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from campaignops.pipelines import feedback, layout
from campaignops.pipelines.feedback_estimate import (FeedbackError, OutcomesNotReady, compare, gate, interval,
                                                     naive_difference, policy_terms, propensity_matrix, send_terms)
from campaignops.pipelines.forecast import campaign_forecast
from campaignops.pipelines.run_commit import write_run
from campaignops.pipelines.score import output_table
from campaignops.pipelines.storage import ObjectStore
from campaignops.pipelines.targeting import assign

ARMS = ["a", "b", "control"]
COSTS = np.array([0.1, 0.15, 0.0])
VPR = 30.0


# --------------------------------------------------------------------------- one campaign world

def true_world(n: int, seed: int = 0):
    """True response probabilities [n, arms]: uplift grows with the no-send propensity, so
    targeting by uplift sends the users who would have responded anyway (the naive bias)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(-2.3, 0.8, n)
    eff = np.stack([rng.normal(0.3, 0.5, n) + 0.3 * (base + 2.3), rng.normal(0.1, 0.6, n)], 1)
    sig = lambda x: 1 / (1 + np.exp(-x))   # noqa: E731
    return np.column_stack([sig(base[:, None] + eff), sig(base)])


def campaign(n: int = 3000, share: float = 0.2, seed: int = 0, world_seed: int = 0, model_bias: float = 0.0,
             sends: float = 0.3):
    """A scored campaign and its outcomes: truth T, model M (T shifted by `model_bias` on the
    treatments), the targeting (budget for about `sends`·n greedy sends), drawn arms and outcomes."""
    T = true_world(n, world_seed)
    M = np.clip(T + np.r_[model_bias, model_bias, 0.0], 1e-4, 1 - 1e-4)
    rng = np.random.default_rng(1000 + seed)
    explored = rng.random(n) < share
    explore_arm = rng.integers(0, len(ARMS), n)
    budget = COSTS[explore_arm[explored]].sum() + COSTS[1] * n * sends
    a = assign(M, COSTS[:-1], VPR, budget, explored, explore_arm, share)
    rows = np.arange(n)
    y = (rng.random(n) < T[rows, a.chosen]).astype(np.int8)
    order_value = 40.0
    revenue = y * order_value * rng.uniform(0.5, 1.5, n)
    return SimpleNamespace(T=T, M=M, a=a, y=y, revenue=revenue, order_value=order_value, share=share, n=n)


def scores_table(c, campaign_id: str = "C9") -> pa.Table:
    preds = SimpleNamespace(p=c.M, revenue=c.M * c.order_value, user_ids=pa.array([f"u{i}" for i in range(c.n)]))
    return output_table(preds, c.a, ARMS, COSTS, campaign_id, {"score_run_id": "r1"}, VPR, slice(0, c.n))


def manifest_for(c, campaign_id: str = "C9", run_id: str = "r1", features_uri: str | None = None) -> dict:
    fc = campaign_forecast(c.M, c.M * c.order_value, c.a.chosen, ARMS, COSTS, VPR)
    return {"campaign_id": campaign_id, "score_run_id": run_id, "status": "targeted", "replay": False,
            "arms": [{"variant_id": v, "cost_per_send": float(k)} for v, k in zip(ARMS, COSTS)],
            "exploration": {"share": c.share, "seed": 0}, "forecast": fc, "request": {"value_per_response": VPR},
            "model": {"uri": "models:/campaign_uplift/1"},
            "inputs": {"features": {"uri": features_uri, "sha256": "x", "rows": c.n}}}


def outcomes_for(c, campaign_id: str = "C9") -> pd.DataFrame:
    return pd.DataFrame({"exposure_id": [f"e{i}" for i in range(c.n)], "user_id": [f"u{i}" for i in range(c.n)],
                         "campaign_id": campaign_id, "variant_id": np.array(ARMS)[c.a.chosen],
                         "exposure_ts": pd.Timestamp("2026-06-02"), "responded": c.y.astype(np.int8),
                         "revenue": c.revenue, "propensity": c.a.propensity})


def truth_for(c, campaign_id: str = "C9") -> pd.DataFrame:
    n, k = c.n, len(ARMS)
    return pd.DataFrame({"exposure_id": np.repeat([f"e{i}" for i in range(n)], k),
                         "user_id": np.repeat([f"u{i}" for i in range(n)], k), "campaign_id": campaign_id,
                         "variant_id": np.tile(ARMS, n), "p_response": c.T.ravel(),
                         "expected_revenue": (c.T * c.order_value).ravel()})


# --------------------------------------------------------------------------- the estimator

def test_ipw_is_unbiased_for_the_sends_effect_where_the_naive_difference_is_not():
    """Over 150 draws of exploration and outcomes of one targeted campaign: the IPW (and DR, with a
    biased model) estimate minus the truth of the realised sends averages to 0 within its standard
    error, per variant and in total, and the 90% interval covers the truth ~90% of the time; the naive
    difference is off by many standard errors."""
    errs, dr_errs, naive_errs, covered, var_errs, pv_errs = [], [], [], [], [], []
    for seed in range(150):
        c = campaign(n=3000, seed=seed, model_bias=0.02)
        P = propensity_matrix(c.a.greedy, 3, c.share)
        y, logged, rows = c.y.astype(float), c.a.chosen, np.arange(c.n)
        assert np.allclose(P[rows, logged], c.a.propensity)
        gain = c.T[rows, logged] - c.T[:, 2]
        sent = logged != 2
        truth = gain[sent].sum()
        est = interval(send_terms(y, logged, P), 0.9)
        errs.append(est["estimate"] - truth)
        covered.append(est["lo"] <= truth <= est["hi"])
        dr_errs.append(send_terms(y, logged, P, m_control=c.M[:, 2]).sum() - truth)
        naive_errs.append(naive_difference(y, sent) - truth)
        var_errs.append(send_terms(y, logged, P, arm=0).sum() - gain[logged == 0].sum())
        pv_errs.append(policy_terms(y, logged, c.a.greedy, P, c.M).sum()
                       - np.where(c.a.greedy != 2, c.T[rows, c.a.greedy] - c.T[:, 2], 0).sum())
    for e in (errs, dr_errs, var_errs, pv_errs):
        e = np.array(e)
        assert abs(e.mean()) < 3 * e.std() / np.sqrt(len(e)), (e.mean(), e.std())
    assert 0.83 <= np.mean(covered) <= 0.97
    naive = np.array(naive_errs)
    assert abs(naive.mean()) > 10 * naive.std() / np.sqrt(len(naive)) and abs(naive.mean()) > np.std(errs)


def test_gate_rule_both_rarely_flags_an_exact_forecast_and_catches_a_wrong_one():
    """With the exact model the actual is often outside the forecast's own interval (it carries the
    counterfactual's noise too): rule `forecast_interval` would flag most runs, rule `both` about
    10%; a forecast inflated by a biased model (~1.9x) is flagged by `both` most of the time."""
    def rates(bias):
        lit, both = [], []
        for seed in range(40):
            c = campaign(n=4000, seed=seed, model_bias=bias)
            r = compare(manifest_for(c), scores_table(c).to_pandas(), outcomes_for(c),
                        {"gate": {"metrics": ["total.incremental_responses"]}})
            m = r["total"]["metrics"]["incremental_responses"]
            lit.append(not m["within_interval"])
            both.append(r["outside_interval"] == ["total.incremental_responses"])
        return np.mean(lit), np.mean(both)

    lit, both = rates(0.0)                 # measured: 0.45 and 0.10 (share 0.2; 0.68 / 0.2 at share 0.1)
    assert lit > 0.3 and both <= 0.2
    _, both_wrong = rates(0.1)             # forecast ~1.9x the truth: flagged in 0.95 of the draws
    assert both_wrong >= 0.7


def test_hand_checked_tiny_campaign():
    """6 users, arms a / b / control, share 0.5 (π = 1/6 off the greedy arm, 2/3 on it)."""
    greedy = np.array([0, 0, 1, 2, 0, 2])
    logged = np.array([0, 2, 1, 2, 2, 0])
    y = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    P = propensity_matrix(greedy, 3, 0.5)
    assert P[0].tolist() == pytest.approx([2 / 3, 1 / 6, 1 / 6])
    # variant a: sent rows 0 and 5 respond (2); control rows 1 (greedy a: w = (2/3)/(1/6) = 4, y 1),
    # 3 (greedy control: w = (1/6)/(2/3) = 1/4, y 1), 4 (greedy a: w 4, y 0) -> 2 − (4 + 0.25) = −2.25
    assert send_terms(y, logged, P, arm=0).sum() == pytest.approx(-2.25)
    # variant b: row 2 (0); control weights: row 1 π(b)/π(c) = 1, row 3 1/4 -> 0 − 1.25
    assert send_terms(y, logged, P, arm=1).sum() == pytest.approx(-1.25)
    # total: 2 − [1·(5/6)/(1/6) + 1·(1/3)/(2/3)] = 2 − 5.5
    assert send_terms(y, logged, P).sum() == pytest.approx(-3.5)
    # policy value IPW: users with greedy a/b: 0 (on g: 1/(2/3)), 1 (control: −1/(1/6)), 2 (0), 4 (0)
    assert policy_terms(y, logged, greedy, P).sum() == pytest.approx(1.5 - 6)

    # the same through compare(), with the scores/outcomes layout and a forecast
    c = SimpleNamespace(n=6, share=0.5, order_value=10.0, T=None,
                        M=np.tile([0.3, 0.2, 0.1], (6, 1)), y=y.astype(np.int8), revenue=y * 10.0,
                        a=SimpleNamespace(chosen=logged, greedy=greedy, explored=logged != greedy,
                                          propensity=P[np.arange(6), logged], rank=np.zeros(6, np.int64)))
    r = compare(manifest_for(c), scores_table(c).to_pandas(), outcomes_for(c), {})
    va = r["by_variant"]["a"]
    assert va["sends"] == {"forecast": 2, "actual": 2}
    assert va["metrics"]["incremental_responses"]["actual"]["estimate"] == pytest.approx(-2.25)
    assert va["metrics"]["incremental_gmv"]["actual"]["estimate"] == pytest.approx(-22.5)
    fa = va["metrics"]["incremental_responses"]["forecast"]
    assert fa["forecast"] == pytest.approx(2 * 0.2)          # two sends of a, model uplift 0.2 each
    assert va["metrics"]["incremental_responses"]["forecast_over_actual"] == pytest.approx(0.4 / -2.25)
    assert r["total"]["metrics"]["incremental_responses"]["actual"]["estimate"] == pytest.approx(-3.5)
    # DR with m(control) = 0.1: a: (1 − .1) + (1 − .1) − [4·.9 + .25·.9 + 4·(−.1)] = 1.8 − 3.425
    assert va["metrics"]["incremental_responses"]["actual_dr"]["estimate"] == pytest.approx(1.8 - 3.425)
    assert r["coverage"]["arm_mismatches"] == 0 and r["truth"] is None


# --------------------------------------------------------------------------- the step on fake S3 and MLflow

class FakeMlflow:
    """The MlflowClient calls feedback.log_mlflow makes, in memory."""

    def __init__(self):
        self.experiments, self.runs, self.calls = {}, {}, []

    def get_experiment_by_name(self, name):
        return SimpleNamespace(experiment_id=self.experiments[name]) if name in self.experiments else None

    def create_experiment(self, name):
        self.experiments[name] = str(len(self.experiments) + 1)
        return self.experiments[name]

    def search_runs(self, experiment_ids, filter_string, max_results):
        want = dict(re.findall(r"tags\.(\w+) = '([^']*)'", filter_string))
        hits = [r for r in self.runs.values() if r.exp in experiment_ids
                and all(r.data.tags.get(k) == v for k, v in want.items())]
        return hits[:max_results]

    def create_run(self, experiment_id, run_name, tags):
        rid = f"run{len(self.runs) + 1}"
        self.runs[rid] = SimpleNamespace(exp=experiment_id, info=SimpleNamespace(run_id=rid),
                                         data=SimpleNamespace(tags=dict(tags), metrics={}, artifacts={}))
        return self.runs[rid]

    def log_batch(self, run_id, metrics):
        self.calls.append("log_batch")
        self.runs[run_id].data.metrics.update({m.key: m.value for m in metrics})

    def log_artifacts(self, run_id, local_dir, artifact_path):
        from pathlib import Path

        self.calls.append("log_artifacts")
        for p in Path(local_dir).iterdir():
            self.runs[run_id].data.artifacts[f"{artifact_path}/{p.name}"] = p.read_bytes()

    def set_tag(self, run_id, key, value):
        self.runs[run_id].data.tags[key] = value

    def set_terminated(self, run_id):
        pass


@pytest.fixture
def landed(workspace):
    """A committed scores run of campaign C9 on moto S3 (latest.json, its scoring features with
    segments), the world's truth in the raw batch, and the outcome rows in data/validated."""
    c = campaign(n=2000, seed=1)
    with mock_aws():
        store = ObjectStore(workspace, client=boto3.client("s3", region_name="us-east-1"))
        store.client.create_bucket(Bucket=workspace.bucket)
        seg = np.arange(c.n) % 3
        feats = pa.table({"user_id": [f"u{i}" for i in range(c.n)], "age": np.ones(c.n),
                          **{f"segment_{k}": (seg == k).astype(np.float64) for k in range(3)}})
        store.write_table(feats, "scoring_features/C9/abc.parquet")
        manifest = manifest_for(c, features_uri=store.uri("scoring_features/C9/abc.parquet"))
        write_run(store, layout.scores_prefix("C9", "r1"), "r1", [scores_table(c)], manifest)
        store.write_table(pa.Table.from_pandas(truth_for(c), preserve_index=False), "raw/b2/_truth/part-0.parquet")
        ws = workspace.workspace
        (ws / "data" / "validated").mkdir(parents=True)
        (ws / "reports").mkdir()
        pq.write_table(pa.Table.from_pandas(outcomes_for(c), preserve_index=False),
                       ws / "data" / "validated" / "exposures.parquet")
        (ws / "data" / "raw_manifest.json").write_text(json.dumps({"batch": "b2",
                                                                   "truth": {"files": ["raw/b2/_truth/part-0.parquet"]}}))
        (ws / "reports" / "validation.json").write_text(json.dumps({"batch": "b2", "run_id": "val-1"}))
        yield SimpleNamespace(settings=workspace, store=store, c=c)


def test_run_writes_report_html_and_link_and_one_mlflow_run(landed):
    s, store = landed.settings, landed.store
    ml = FakeMlflow()
    out = feedback.run(s, "C9", store=store, mlflow_client=ml)
    assert out["scores_run_id"] == "r1" and not out["reused"]
    prefix = layout.feedback_prefix("C9", "r1")
    report = store.get_json(prefix + "report.json")
    html = store.get_bytes(prefix + "report.html").decode()
    link = store.get_json(layout.feedback_link_key("C9", "r1"))
    assert link["report_json"] == store.uri(prefix + "report.json") and link["report_id"] == report["report_id"]
    assert link["report_html"] == store.uri(prefix + "report.html")
    assert link["mlflow_run_id"] == out["mlflow_run_id"] == "run1" and link["gate_passed"] == report["gate"]["passed"]
    assert set(report["by_variant"]) == {"a", "b"} and set(report["by_segment"]) == {"segment_0", "segment_1",
                                                                                       "segment_2"}
    tot = report["total"]["metrics"]
    assert set(tot) == {"incremental_responses", "incremental_conversions", "incremental_gmv"}
    assert report["total"]["sends"]["actual"] == int((landed.c.a.chosen != 2).sum())
    rows = np.arange(landed.c.n)
    sent = landed.c.a.chosen != 2
    assert tot["incremental_responses"]["truth"] == pytest.approx(
        (landed.c.T[rows, landed.c.a.chosen] - landed.c.T[:, 2])[sent].sum())
    assert report["truth"]["share_of_oracle"] < 1 and report["inputs"]["outcomes"]["batch"] == "b2"
    assert sum(b["users"] for b in report["by_segment"].values()) == landed.c.n
    assert report["policy_value"]["incremental_responses"]["truth"] is not None
    # self-contained HTML: inline SVG, no external resource
    assert "<svg" in html and not re.search(r"(src|href)=['\"]?https?:", html)
    # one MLflow run with metrics and both files
    run = ml.runs["run1"]
    assert run.data.tags["report_id"] == report["report_id"] and run.data.tags["campaign_id"] == "C9"
    assert run.data.artifacts["feedback/report.json"] == store.get_bytes(prefix + "report.json")
    assert run.data.metrics["total.incremental_responses.actual"] == pytest.approx(tot["incremental_responses"]["actual"]["estimate"])

    # a rerun: the same report bytes, the same link, no new MLflow run nor logging
    before = {k: store.get_bytes(k) for k in (prefix + "report.json", prefix + "report.html",
                                              layout.feedback_link_key("C9", "r1"))}
    calls = list(ml.calls)
    again = feedback.run(s, "C9", "r1", store=store, mlflow_client=ml)
    assert again["reused"] and again["report_id"] == report["report_id"]
    assert {k: store.get_bytes(k) for k in before} == before
    assert len(ml.runs) == 1 and ml.calls == calls
    assert feedback.pending(s, store) == []
    # the next day's batch carries the same outcome rows: still the same report
    (s.workspace / "reports" / "validation.json").write_text(json.dumps({"batch": "b3", "run_id": "val-2"}))
    assert feedback.run(s, "C9", store=store, mlflow_client=ml)["reused"] and ml.calls == calls


def test_a_real_mlflow_store_holds_one_run_per_campaign_and_scores_run(landed, monkeypatch, tmp_path):
    """The same calls against MLflow itself (SQLite store, artifacts under tmp_path): the run is
    found by its tags on the rerun, nothing is logged twice."""
    import os

    import mlflow

    monkeypatch.chdir(tmp_path)                 # the SQLite store's default artifact root is ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    saved = dict(os.environ)                    # tracking.configure exports the stack's endpoints
    try:
        first = feedback.run(landed.settings, "C9", store=landed.store)
        again = feedback.run(landed.settings, "C9", store=landed.store)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(feedback.EXPERIMENT)
        runs = client.search_runs([exp.experiment_id])
        assert [r.info.run_id for r in runs] == [first["mlflow_run_id"]] == [again["mlflow_run_id"]]
        run = runs[0]
        assert run.data.tags["report_id"] == first["report_id"] and run.data.tags["scores_run_id"] == "r1"
        assert run.data.metrics["total.incremental_responses.actual"] == pytest.approx(
            first["total"]["metrics"]["incremental_responses"]["actual"]["estimate"])
        assert len(client.get_metric_history(run.info.run_id, "total.incremental_responses.actual")) == 1
        assert sorted(f.path for f in client.list_artifacts(run.info.run_id, "feedback")) == [
            "feedback/report.html", "feedback/report.json"]
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_new_outcomes_rewrite_the_report_in_the_same_mlflow_run(landed):
    s, store, c = landed.settings, landed.store, landed.c
    ml = FakeMlflow()
    first = feedback.run(s, "C9", store=store, mlflow_client=ml)
    late = outcomes_for(c)
    late.loc[late.index[:5], "responded"] = 1 - late.loc[late.index[:5], "responded"]
    second = feedback.run(s, "C9", store=store, exposures=late, mlflow_client=ml)
    assert not second["reused"] and second["report_id"] != first["report_id"]
    assert len(ml.runs) == 1 and ml.runs["run1"].data.tags["report_id"] == second["report_id"]
    assert store.get_json(layout.feedback_link_key("C9", "r1"))["report_id"] == second["report_id"]


def test_outcomes_not_ready_names_the_campaign_and_the_batch(landed):
    s, store = landed.settings, landed.store
    other = outcomes_for(landed.c, campaign_id="C8")
    pq.write_table(pa.Table.from_pandas(other, preserve_index=False),
                   s.workspace / "data" / "validated" / "exposures.parquet")
    with pytest.raises(OutcomesNotReady, match=r"campaign 'C9' have not landed: .*exposures.parquet \(batch 'b2'\)"):
        feedback.run(s, "C9", store=store, mlflow_client=FakeMlflow())
    assert feedback.pending(s, store) == []                       # C9's outcomes are not there
    half = outcomes_for(landed.c).iloc[: landed.c.n // 2]
    with pytest.raises(OutcomesNotReady, match="only 1000 of 2000 scored users"):
        feedback.run(s, "C9", store=store, exposures=half, mlflow_client=FakeMlflow())


def test_requests_that_cannot_be_served_are_refused(landed):
    s, store, c = landed.settings, landed.store, landed.c
    with pytest.raises(FeedbackError, match="no committed scores run 'nope'; committed runs: r1"):
        feedback.run(s, "C9", "nope", store=store)
    with pytest.raises(FeedbackError, match="'C7' has no scores run acted on"):
        feedback.run(s, "C7", store=store)
    moved = outcomes_for(c)
    moved["variant_id"] = np.where(moved["variant_id"] == "a", "b", moved["variant_id"])
    with pytest.raises(FeedbackError, match="logged another arm than scores run r1 chose"):
        feedback.run(s, "C9", store=store, exposures=moved)
    off = outcomes_for(c)
    off["propensity"] = off["propensity"] * 0.9
    with pytest.raises(FeedbackError, match="logged propensities differ"):
        feedback.run(s, "C9", store=store, exposures=off)
    m = manifest_for(c)
    with pytest.raises(FeedbackError, match="no exploration"):
        compare({**m, "exploration": {"share": 0.0}}, scores_table(c).to_pandas(), outcomes_for(c), {})


def test_run_due_reports_on_pending_runs_only(landed, monkeypatch):
    s, store = landed.settings, landed.store
    assert feedback.pending(s, store) == [("C9", "r1")]
    ml = FakeMlflow()
    log_mlflow = feedback.log_mlflow
    monkeypatch.setattr(feedback, "log_mlflow", lambda settings, report, files, client=None:
                        log_mlflow(settings, report, files, ml))
    [first] = feedback.run_due(s, store=store)
    assert first["campaign_id"] == "C9" and first["scores_run_id"] == "r1" and first["mlflow_run_id"] == "run1"
    assert set(first["total"]) == {"incremental_responses", "incremental_conversions", "incremental_gmv"}
    assert feedback.pending(s, store) == [] and feedback.run_due(s, store=store) == []
    [named] = feedback.run_due(s, "C9", store=store)           # a named campaign is always (re)checked
    assert named["reused"] and len(ml.runs) == 1


def test_gate_metrics_are_patterns_over_scope_and_metric():
    m_in = {"within_interval": True, "forecast_within_actual_interval": True}
    m_out = {"within_interval": False, "forecast_within_actual_interval": True}
    m_far = {"within_interval": False, "forecast_within_actual_interval": False}
    report = {"total": {"metrics": {"incremental_responses": m_out, "incremental_gmv": m_in}},
              "by_variant": {"a": {"metrics": {"incremental_responses": m_far, "incremental_gmv": m_far}}}}
    assert gate(report, {})["outside_interval"] == ["a.incremental_responses", "a.incremental_gmv"]
    assert gate(report, {"rule": "forecast_interval", "metrics": ["*.incremental_responses"]})["outside_interval"] == [
        "total.incremental_responses", "a.incremental_responses"]
    assert gate(report, {"metrics": ["total.*"]}) == {"rule": "both", "metrics": ["total.*"], "passed": True,
                                                      "checked": ["total.incremental_responses", "total.incremental_gmv"],
                                                      "outside_interval": []}
    with pytest.raises(FeedbackError, match="feedback.gate.rule must be"):
        gate(report, {"rule": "strict"})


# --------------------------------------------------------------------------- the CLI

def _report(passed: bool) -> dict:
    c = campaign(n=500, seed=2)
    r = compare(manifest_for(c), scores_table(c).to_pandas(), outcomes_for(c), {}, truth_for(c))
    r["gate"]["passed"] = passed
    r["outside_interval"] = [] if passed else ["total.incremental_responses"]
    r["output"] = {"report": "s3://b/feedback/C9/r1/report.json", "html": "s3://b/feedback/C9/r1/report.html"}
    return r


@pytest.mark.parametrize("outcome,code", [("pass", 0), ("flag", 3), ("not_ready", 2), ("bad", 2)])
def test_cli_exit_codes(monkeypatch, workspace, outcome, code):
    from typer.testing import CliRunner

    from campaignops import cli
    from campaignops.cli import app

    def fake_run(settings, campaign_id, scores_run_id=None, **_):
        assert campaign_id == "C9" and scores_run_id == "r1"
        if outcome == "not_ready":
            raise OutcomesNotReady("outcomes of campaign 'C9' have not landed: batch 'b2'")
        if outcome == "bad":
            raise FeedbackError("campaign 'C9' has no committed scores run 'r1'")
        return _report(outcome == "pass")

    monkeypatch.setattr(feedback, "run", fake_run)
    monkeypatch.setattr(cli.console, "width", 200)      # the table is not wrapped into the test's 80 columns
    monkeypatch.setenv("CAMPAIGNOPS_WORKSPACE", str(workspace.workspace))
    result = CliRunner().invoke(app, ["feedback", "--campaign-id", "C9", "--scores-run", "r1"])
    assert result.exit_code == code, result.output
    if code == 2:
        assert "C9" in result.output and "Traceback" not in result.output
    else:
        assert "incremental_responses" in result.output and "total" in result.output
    if code == 3:
        assert "outside the forecast" in result.output


@pytest.mark.parametrize("bad", ["../C001", "C001/../../x", "", "C 1", "x" * 200])
def test_ids_from_forms_are_refused_before_any_s3_key_is_built(workspace, bad):
    """campaign_feedback / campaign_adjust take campaign ids from Airflow forms; they become S3
    prefixes, so anything outside the safe-id rule stops at the door, naming the field."""
    from campaignops.pipelines import adjust
    from campaignops.pipelines.inputs import UnsafeId

    class NoStore:                          # touching S3 at all would be a failure of the check
        def __getattr__(self, name):
            raise AssertionError(f"store.{name} used before the id was checked")

    with pytest.raises(UnsafeId, match="campaign_id"):
        feedback.run(workspace, bad, store=NoStore())
    with pytest.raises(UnsafeId, match="scores_run_id"):
        feedback.run(workspace, "C001", scores_run_id=bad or "..", store=NoStore())
    with pytest.raises(UnsafeId, match="campaign_id"):
        adjust.run(workspace, bad, store=NoStore())
