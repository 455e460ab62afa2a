"""Cross-fitting (pipelines/crossfit.py) on a small generated world: folds partition the users,
every exposure gets one out-of-fold prediction under each arm from a model that never saw its
user, calibration makes pooled Qini agree with the per-fold mean when fold models differ in
scale, outputs are written atomically, and `campaignops evaluate --crossfit K` runs it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from campaignops.config import Settings
from campaignops.pipelines import crossfit, features, layout, synth
from campaignops.validation.contract import CONTROL

ROOT = Path(__file__).resolve().parents[2]
USERS = 1000


def _settings(ws: Path) -> Settings:
    return Settings(workspace=ws, state_dir=ws / ".state", env={"CAMPAIGNOPS_ID_SALT": "crossfit-test"})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A generated batch copied to data/validated as is, features built (a few seconds)."""
    root = tmp_path_factory.mktemp("crossfit-world")
    raw, ws = root / "raw", root / "ws"
    ws.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    params["evaluate"]["qini_noise_draws"] = 5
    params["evaluate"]["crossfit"]["models"] = ["network", "tlearner_logreg"]   # the GBT's fits cost ~10 s more
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    settings = _settings(ws)
    store = synth.LocalStore(raw)
    synth.generate(settings, users=USERS, seed=3, batch="b", store=store, progress=False)
    vdir = ws / layout.VALIDATED_DIR
    vdir.mkdir(parents=True)
    con = duckdb.connect()
    for table in ("users", "events", "campaigns", "exposures"):
        con.execute(f"COPY (SELECT * FROM read_parquet('{raw}/raw/b/{table}/*.parquet')) TO '{vdir / table}.parquet' "
                    "(FORMAT parquet)")
    shutil.copy(raw / "raw/b/_manifest.json", ws / layout.RAW_MANIFEST)
    features.build(settings, store=store)
    return settings


def _user_scores(frame: pd.DataFrame) -> np.ndarray:
    """A deterministic per (exposure, arm) score: hash of the exposure and arm in [0, 1)."""
    key = pd.util.hash_pandas_object(frame[["exposure_id", "arm_id"]], index=False).to_numpy()
    return (key % 10_000) / 10_000.0


def fake_fit(seen: list):
    """A `fit` that records what it was given and returns hashed scores on a fold-specific
    scale (p = 0.1 + score × 0.05 × (fold + 1)): cheap, and the fold models disagree in scale."""
    def fit(settings, cfg, meta, train, valid, valid_every_arm, held):
        seen.append({"train": set(train.column("user_id").to_pylist()), "valid": set(valid.column("user_id").to_pylist()),
                     "valid_every": set(valid_every_arm.column("user_id").to_pylist()),
                     "held": set(held.column("user_id").to_pylist()), "held_rows": held.num_rows})
        frame = held.select(["exposure_id", "arm_id"]).to_pandas()
        f = len(seen)
        return {m: 0.1 + _user_scores(frame) * 0.05 * f for m in cfg["models"]}
    return fit


def test_folds_partition_the_users_evenly_within_each_stratum_and_are_deterministic():
    rng = np.random.default_rng(0)
    n = 3000
    users = pd.DataFrame({"user_id": [f"u{i % 2200}" for i in range(n)],       # some users twice
                          "campaign_id": rng.choice(["A", "B"], n), "variant_id": rng.choice(["v1", "v2", CONTROL], n),
                          "exposure_ts": rng.integers(0, 10**6, n)})
    folds = crossfit.assign_folds(users, 5, seed=42)
    assert folds.index.is_unique and set(folds.index) == set(users["user_id"]) and set(folds) == set(range(5))
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 1
    first = users.sort_values("exposure_ts", kind="mergesort").drop_duplicates("user_id").set_index("user_id")
    strata = pd.crosstab([first["campaign_id"], first["variant_id"]], folds.reindex(first.index))
    assert (strata.max(axis=1) - strata.min(axis=1)).max() <= 1
    assert crossfit.assign_folds(users, 5, seed=42).equals(folds)
    assert not crossfit.assign_folds(users, 5, seed=43).equals(folds)


def _scaled_folds(k=5, n=4000, seed=0):
    """One campaign (arm T vs control) whose true uplift is a feature x; fold f's model predicts
    a_f·x + b_f + noise: the same ranking quality on very different scales and offsets."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.integers(0, 2, n)
    y = (rng.random(n) < 0.2 + t * 0.1 * (x > 0)).astype(int)
    fold = np.arange(n) % k
    a, b = np.array([0.2, 1.0, 5.0, 0.5, 2.0])[:k], np.array([-1.0, 0.5, 2.0, 0.0, -3.0])[:k]
    u = a[fold] * (x + rng.normal(scale=0.5, size=n)) + b[fold]
    ids = [f"x{i}" for i in range(n)]
    frame = pd.DataFrame({"exposure_id": np.repeat(ids, 2), "campaign_id": "C",
                          "variant_id": np.repeat(np.where(t == 1, "T", CONTROL), 2),
                          "arm_id": np.tile(["T", CONTROL], n), "responded": np.repeat(y, 2), "fold": np.repeat(fold, 2)})
    uplift = np.zeros(2 * n)
    uplift[0::2] = u
    return frame, uplift


@pytest.mark.parametrize("method", ["rank", "zscore"])
def test_calibration_brings_the_pooled_qini_to_the_per_fold_mean(method):
    frame, uplift = _scaled_folds()
    fig = crossfit.model_figures(frame, uplift, 5)["arms"]["C/T"]
    gap_raw = abs(fig["qini_pooled_none"] - fig["qini_fold_mean"])
    gap_cal = abs(fig[f"qini_pooled_{method}"] - fig["qini_fold_mean"])
    assert gap_raw > 0.01                 # the scales really do drag the raw pooled figure down
    assert fig["qini_pooled_none"] < fig["qini_fold_mean"]
    assert gap_cal < gap_raw / 3
    # within a fold the calibrated uplift ranks exactly as the raw one: per-fold Qini unchanged
    cal = crossfit.calibrate(frame, uplift, method)
    for f in range(5):
        m = (frame["fold"] == f).to_numpy()
        assert crossfit.qinis(frame[m], cal[m]) == pytest.approx(crossfit.qinis(frame[m], uplift[m]))
    assert (cal[(frame["arm_id"] == CONTROL).to_numpy()] == 0).all()


def test_every_exposure_is_predicted_once_under_each_arm_by_models_that_never_saw_its_user(world):
    seen: list = []
    cfg = crossfit.config(world, k=3)
    oof, record = crossfit.cross_fit(world, cfg, fake_fit(seen))
    every = pd.concat([pq.read_table(world.workspace / layout.FEATURES_DIR / f"{s}.parquet",
                                     columns=["exposure_id", "campaign_id"]).to_pandas() for s in crossfit.SPLITS])
    assert record["exposures"] == len(every) == oof["exposure_id"].nunique()
    arms = pq.read_table(world.workspace / layout.FEATURES_DIR / "arms.parquet").to_pandas()
    n_arms = arms.groupby("campaign_id").size()
    assert len(oof) == int(every["campaign_id"].map(n_arms).sum())          # each exposure × each arm ...
    assert not oof.duplicated(["exposure_id", "arm_id"]).any()              # ... exactly once
    assert (oof.groupby("exposure_id")["fold"].nunique() == 1).all()
    assert sorted(r["fold"] for r in record["folds"]) == [0, 1, 2]
    assert sum(r["exposures"] for r in record["folds"]) == record["exposures"]
    all_users = set().union(*(s["held"] for s in seen))
    for s in seen:
        assert not (s["train"] | s["valid"] | s["valid_every"]) & s["held"]   # never trained on the fold
        assert not s["train"] & s["valid"] and s["valid_every"] == s["valid"]
        assert s["train"] | s["valid"] | s["held"] == all_users
    assert sum(s["held_rows"] for s in seen) == len(oof)
    scored, figures = crossfit.summarise(oof, cfg, draws=0)
    assert set(figures["models"]) == set(cfg["models"])
    ctl = (scored["arm_id"] == CONTROL).to_numpy()
    assert (scored.loc[ctl, "uplift_network"] == 0).all() and scored["uplift_network_calibrated"].between(0, 1).all()


def test_outputs_are_written_atomically(world, monkeypatch):
    crossfit.run(world, k=2, mlflow=False, fit=fake_fit([]))
    out = world.workspace / crossfit.OUT_DIR
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == set(crossfit.FILES.values())
    oof = pq.read_table(out / "oof.parquet").to_pandas()
    assert {"exposure_id", "fold", "arm_id", "treatment", "treated", "responded", "p_network", "uplift_network",
            "uplift_network_calibrated"} <= set(oof.columns)
    assert json.loads((out / "crossfit.json").read_text())["config"]["k"] == 2

    def broken(report):
        raise RuntimeError("disk full")

    monkeypatch.setattr(crossfit, "markdown", broken)     # the last of the three files fails
    with pytest.raises(RuntimeError):
        crossfit.run(world, k=3, mlflow=False, fit=fake_fit([]))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before      # the previous complete set
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".crossfit")] == []


def test_config_comes_from_params_and_is_checked(world):
    cfg = crossfit.config(world)
    assert cfg["k"] == world.params["evaluate"]["crossfit"]["k"] and cfg["seed"] == world.params["train"]["seed"]
    assert crossfit.config(world, k=4)["k"] == 4
    with pytest.raises(ValueError, match="k >= 2"):
        crossfit.config(world, k=1)
    assert crossfit.use_mlflow(world, "auto", False) is False and crossfit.use_mlflow(world, False, True) is True


@pytest.mark.slow   # real fits per fold (~1 min)
def test_cli_crossfits_the_workspace_with_the_recipe_and_prints_the_table(world, monkeypatch):
    """The real fits (network recipe, 1 epoch; a T-learner baseline) over 2 folds, through the CLI."""
    from typer.testing import CliRunner

    from campaignops import cli

    monkeypatch.setenv("CAMPAIGNOPS_WORKSPACE", str(world.workspace))
    monkeypatch.setenv("CAMPAIGNOPS_STATE", str(world.state_dir))
    monkeypatch.setenv("CAMPAIGNOPS_ID_SALT", "crossfit-test")
    saved = dict(os.environ)
    try:
        result = CliRunner().invoke(cli.app, ["evaluate", "--crossfit", "2", "--no-mlflow"])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert result.exit_code == 0, result.output
    assert "pooled calibrated (rank)" in result.output and "all arms (mean)" in result.output
    assert "tlearner_logreg" in result.output and "crossfit.json" in result.output
    report = json.loads((world.workspace / crossfit.OUT_DIR / "crossfit.json").read_text())
    assert report["config"]["k"] == 2 and set(report["models"]) == {"network", "tlearner_logreg"}
    for fig in report["models"].values():
        assert all(np.isfinite(fig["mean"][k]) for k in ("qini_fold_mean", "qini_pooled_none", "qini_pooled_rank"))
        assert all(len(a["qini_folds"]) == 2 for a in fig["arms"].values())
    oof = pq.read_table(world.workspace / crossfit.OUT_DIR / "oof.parquet").to_pandas()
    assert oof["p_network"].between(0, 1).all() and oof["p_tlearner_logreg"].between(0, 1).all()
    bad = CliRunner().invoke(cli.app, ["evaluate", "--crossfit", "1", "--no-mlflow"])
    assert bad.exit_code == 2 and "k >= 2" in bad.output


def test_mlflow_run_is_logged_when_a_tracking_server_is_configured(world, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)   # SQLite MLflow keeps artifacts under ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    saved = dict(os.environ)
    try:
        assert crossfit.use_mlflow(world, "auto", None)
        report = crossfit.run(world, k=2, fit=fake_fit([]))    # params mlflow: auto
        import mlflow

        run = mlflow.MlflowClient().get_run(report["mlflow_run_id"])
        artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "crossfit")}
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert run.data.tags["mlflow.runName"] == "crossfit" and run.data.params["crossfit.k"] == "2"
    assert "crossfit.network.qini_pooled_rank" in run.data.metrics
    assert artifacts == {f"crossfit/{name}" for name in crossfit.FILES.values()}
