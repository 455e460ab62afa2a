"""The drift gate on generated worlds (synth → features, SQLite MLflow, a local object store):
a champion's training snapshot, then the train and score gates on a fresh draw of the same world
(passes), on tripled prices (blocks, naming the features), in warn mode and without a champion."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import duckdb
import pytest
import yaml

from campaignops.config import Settings
from campaignops.pipelines import drift, features, layout, synth

ROOT = Path(__file__).resolve().parents[2]
USERS = 2000
TABLES = ("users", "events", "campaigns", "exposures")


def make_world(root: Path, tag: str, seed: int, events_sql: str | None = None) -> Settings:
    """A generated batch (batch id = seed), copied to data/validated as is (or with events
    rewritten), features built."""
    raw, ws, batch = root / f"raw_{seed}", root / f"ws_{tag}", str(seed)
    ws.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", ws / "params.yaml")
    settings = Settings(workspace=ws, state_dir=ws / ".state")
    store = synth.LocalStore(raw)
    if not raw.exists():
        synth.generate(settings, users=USERS, seed=seed, batch=batch, store=store, progress=False)
    vdir = ws / layout.VALIDATED_DIR
    vdir.mkdir(parents=True)
    con = duckdb.connect()
    for table in TABLES:
        src = f"read_parquet('{raw}/raw/{batch}/{table}/*.parquet')"
        sql = events_sql.format(src=src) if table == "events" and events_sql else f"SELECT * FROM {src}"
        con.execute(f"COPY ({sql}) TO '{vdir / table}.parquet' (FORMAT parquet)")
    shutil.copy(raw / f"raw/{batch}/_manifest.json", ws / layout.RAW_MANIFEST)
    features.build(settings, store=store)
    return settings


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """World `a` trains the champion (its snapshot is the run's artifact, registered as v1);
    `b` is a fresh draw of the same generator; `prices` is world `a` with every price × 3."""
    root = tmp_path_factory.mktemp("drift-worlds")
    saved = dict(os.environ)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # SQLite MLflow keeps artifacts under ./mlruns
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        try:
            out = {"a": make_world(root, "a", 7), "b": make_world(root, "b", 8),
                   "prices": make_world(root, "prices", 7, "SELECT * REPLACE (price * 3 AS price) FROM {src}")}
            a = out["a"]
            from campaignops.pipelines import tracking

            mlflow = tracking.configure(a)
            meta = json.loads((a.workspace / layout.FEATURES_DIR / "meta.json").read_text())
            with mlflow.start_run() as run:
                drift.write_reference(a.workspace / layout.FEATURES_DIR, meta,
                                      a.workspace / layout.MODEL_DIR / drift.REFERENCE_DIR, mlflow)
            client, name = mlflow.MlflowClient(), a.params["train"]["model_name"]
            client.create_registered_model(name)
            version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
            client.set_registered_model_alias(name, "champion", version.version)
            yield out, synth.LocalStore(root / "s3")
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _report(settings: Settings, stage: str) -> dict:
    return json.loads((settings.workspace / layout.REPORTS_DIR / f"drift_{stage}.json").read_text())


def test_snapshot_is_bounded_deterministic_and_has_no_ids(worlds):
    (w, _store) = worlds
    ref_dir = w["a"].workspace / layout.MODEL_DIR / drift.REFERENCE_DIR
    train, info, meta = drift.read_reference(ref_dir, "train")
    profile, pinfo, _ = drift.read_reference(ref_dir, "profile")
    assert set(train.column_names) == {*meta["profile_cols"], *drift.ARM_FEATURES}
    assert "user_id" not in profile.column_names and profile.num_rows == pinfo["rows_total"] == USERS
    again = drift.write_reference(w["a"].workspace / layout.FEATURES_DIR, meta, ref_dir.parent / "again", rows=500)
    small, sinfo, _ = drift.read_reference(again, "train")
    assert small.num_rows == 500 and sinfo["rows_total"] == info["rows_total"] > 500
    assert small.equals(drift.read_reference(drift.write_reference(
        w["a"].workspace / layout.FEATURES_DIR, meta, ref_dir.parent / "again2", rows=500), "train")[0])


def test_gates_pass_on_a_fresh_draw_of_the_same_world(worlds):
    w, store = worlds
    b = w["b"]
    trained = drift.gate_training(b, store=store)
    scored = drift.gate_scoring(b, store=store)
    for stage, report in (("train", trained), ("score", scored)):
        assert report["status"] == "passed" and report["breaches"] == {}, (stage, report["breaches"])
        assert report["reference"]["model_version"] == "1"
        on_disk = _report(b, stage)
        assert on_disk["check_id"] == report["check_id"] and on_disk["status"] == "passed"
        key = layout.drift_prefix(stage, "8", report["check_id"]) + "report.json"
        assert report["report_uri"] == store.uri(key) and store.get_json(key)["check_id"] == report["check_id"]
        assert (b.workspace / layout.REPORTS_DIR / f"drift_{stage}.html").read_text().count("<tr") > 10
    # the campaign calendar differs between draws: exempt features moved but did not block
    moved = {f for f, r in trained["features"].items() if r["psi"] > 0.2}
    assert moved & {"type", "channel", "target_category"}, trained["features"]
    assert all(trained["features"][f]["status"] == "exempt" for f in moved)
    assert scored["reference"]["population"] == "profile" and trained["reference"]["population"] == "train"


def test_gates_block_tripled_prices_naming_the_features(worlds):
    w, store = worlds
    p = w["prices"]
    for stage, gate in (("train", drift.gate_training), ("score", drift.gate_scoring)):
        with pytest.raises(drift.DriftDetected) as err:
            gate(p, store=store)
        msg = str(err.value)
        assert "log_avg_price" in msg and "log_min_price" in msg and f"drift.on_breach.{stage}: warn" in msg
        assert {"log_avg_price", "log_min_price"} <= set(err.value.features)
        report = _report(p, stage)  # written before raising
        assert report["status"] == "blocked" and set(report["breaches"]) == set(err.value.features)
        assert report["features"]["log_avg_price"]["psi"] > 1.0
        assert not any(report["features"][n]["exempt"] for n in report["breaches"])


def test_warn_mode_records_the_breach_without_raising(worlds):
    w, store = worlds
    p = w["prices"]
    p.params["drift"]["on_breach"]["score"] = "warn"
    try:
        report = drift.gate_scoring(p, store=store)
    finally:
        p.params["drift"]["on_breach"]["score"] = "block"
    assert report["status"] == "warned" and "log_avg_price" in report["breaches"]
    assert _report(p, "score")["status"] == "warned"
    assert drift.summary(report)["breaches"] == report["breaches"]


def test_no_champion_passes_with_a_note(worlds, monkeypatch):
    w, store = worlds
    monkeypatch.setitem(w["prices"].params["train"], "model_name", "never-promoted")
    report = drift.gate_training(w["prices"], store=store)
    assert report["status"] == "skipped" and "no champion" in report["note"]
    assert _report(w["prices"], "train")["status"] == "skipped"


# --------------------------------------------------------------------------- policy (no world needed)

def _frames(shift: dict[str, float], n: int = 4000):
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(1)
    cols = ("log_avg_price", "n_past_exposures", "segment_1")
    ref = pa.table({c: rng.normal(0, 1, n) for c in cols})
    cur = pa.table({c: rng.normal(shift.get(c, 0.0), 1, n) for c in cols})
    return ref, cur


def test_exempt_features_never_block_and_stage_exemptions_apply_per_stage():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    ref, cur = _frames({"n_past_exposures": 5.0, "segment_1": 5.0})
    train = drift.assess(ref, cur, drift.policy(params, "train"))
    assert train["status"] == "passed" and train["features"]["n_past_exposures"]["psi"] > 5
    assert train["features"]["segment_1"]["status"] == "exempt" and train["features"]["segment_1"]["rule"] == "segment_*"
    score = drift.assess(ref, cur, drift.policy(params, "score"))  # segment_* is exempt before training only
    assert score["status"] == "blocked" and set(score["breaches"]) == {"segment_1"}
    with pytest.raises(drift.DriftDetected, match="segment_1"):
        drift.enforce(score)
    assert drift.enforce(train) is train


def test_feature_rules_and_bad_policy_are_named():
    params = {"drift": {"max_psi": 0.1, "features": {
        "a": {"max_psi": 0.5}, "b_*": "exempt", "c": {"exempt": ["score"], "why": "x"}}}}
    pol = drift.policy(params, "train")
    assert drift.feature_rule(pol, "a")["max_psi"] == 0.5 and not drift.feature_rule(pol, "a")["exempt"]
    assert drift.feature_rule(pol, "b_1")["exempt"] and drift.feature_rule(pol, "zz")["max_psi"] == 0.1
    assert not drift.feature_rule(pol, "c")["exempt"]
    assert drift.feature_rule(drift.policy(params, "score"), "c") == {"max_psi": 0.1, "exempt": True, "rule": "c", "why": "x"}
    with pytest.raises(ValueError, match="drift.on_breach.train"):
        drift.policy({"drift": {"on_breach": {"train": "stop"}}}, "train")
    with pytest.raises(ValueError, match="drift.features.a"):
        drift.feature_rule(drift.policy({"drift": {"features": {"a": {"maxpsi": 1}}}}, "train"), "a")


def test_report_write_is_atomic(tmp_path, monkeypatch):
    settings = Settings(workspace=tmp_path, state_dir=tmp_path / ".state")
    store = synth.LocalStore(tmp_path / "s3")
    ref, cur = _frames({"log_avg_price": 3.0})
    pol = drift.policy({}, "score")
    first = drift.write_report(settings, drift.assess(ref, ref, pol), store)
    path = tmp_path / layout.REPORTS_DIR / "drift_score.json"
    before = path.read_bytes()
    assert json.loads(before)["check_id"] == first["check_id"]

    def broken(*_a, **_k):
        raise OSError("S3 down (injected)")

    monkeypatch.setattr(store, "put_bytes", broken)
    with pytest.raises(OSError, match="injected"):
        drift.write_report(settings, drift.assess(ref, cur, pol), store)
    assert path.read_bytes() == before  # the previous report stays whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["drift_score.html", "drift_score.json"]


def test_scoring_manifest_entry_points_at_the_report(worlds, tmp_path):
    import pyarrow.parquet as pq

    from campaignops.pipelines import score

    w, store = worlds
    b = w["b"]
    _ref, _info, meta = drift.read_reference(w["a"].workspace / layout.MODEL_DIR / drift.REFERENCE_DIR, "profile")
    users, campaign_id = drift.scoring_users(b, None, meta)
    pq.write_table(users, tmp_path / "features.parquet", row_group_size=500)   # as score.scoring_features writes it
    entry = score._drift(b, tmp_path / "features.parquet", campaign_id, store)
    assert entry["status"] == "passed" and entry["reference_model_version"] == "1"
    assert entry["report_uri"] == store.uri(layout.drift_prefix("score", "8", entry["check_id"]) + "report.json")
    assert entry["report_path"] == "reports/drift_score.json"
    report = _report(b, "score")   # the calendar-driven features that moved are listed, not hidden
    moved = sorted(f for f, r in report["features"].items() if r["status"] == "exempt" and r["psi"] > r["max_psi"])
    assert sorted(entry["exempt_over_threshold"]) == moved


def test_cli_exits_nonzero_on_a_blocking_breach(monkeypatch):
    from typer.testing import CliRunner

    from campaignops import cli

    def blocked(_settings):
        raise drift.DriftDetected("drift gate blocked train: log_avg_price (PSI 5.5 > 0.2)", {"log_avg_price": 5.5})

    monkeypatch.setattr(drift, "gate_training", blocked)
    result = CliRunner().invoke(cli.app, ["drift", "--stage", "train"])
    assert result.exit_code == 1 and "log_avg_price" in result.output
    assert CliRunner().invoke(cli.app, ["drift", "--stage", "serve"]).exit_code == 2


def test_an_override_reason_lets_one_blocked_run_through_and_is_recorded(worlds):
    w, store = worlds
    p = w["prices"]
    report = drift.gate_scoring(p, store=store, override={"reason": "new price list from 1 Dec", "by": "eve"})
    assert report["status"] == "overridden" and "log_avg_price" in report["breaches"]
    assert _report(p, "score")["override"] == {"reason": "new price list from 1 Dec", "by": "eve"}
    assert drift.summary(report)["override"]["by"] == "eve"
    with pytest.raises(drift.DriftDetected):      # an empty reason is no override
        drift.gate_scoring(p, store=store, override={"reason": "  ", "by": "eve"})
