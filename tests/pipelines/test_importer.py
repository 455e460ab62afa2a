"""Campaign-log import (pipelines/importer.py): mapping checks, a Hillstrom slice through ingest →
validate (bad rows quarantined with their rule and source row) → features, and the scikit-uplift
references of evaluate computed on the features' holdout."""
from __future__ import annotations

import io
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from moto import mock_aws

from campaignops.pipelines import evaluate, features, importer, ingest, layout, scoring_frames, uplift_references, validate
from campaignops.pipelines.storage import ObjectStore
from campaignops.validation.contract import CONTROL

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "validation" / "mappings" / "hillstrom.yaml"
DATA = ROOT.parent / "shared" / "data" / "hillstrom.csv"
N = 400
COLUMNS = ["recency", "history_segment", "history", "mens", "womens", "zip_code", "newbie", "channel", "segment",
           "visit", "conversion", "spend"]

needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} not present")


def _mapping(tmp_path: Path, edit) -> Path:
    m = yaml.safe_load(MAPPING.read_text())
    edit(m)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(m))
    return path


def _set(path: str, value):
    def edit(m):
        *head, last = path.split(".")
        d = m
        for k in head:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return edit


@pytest.mark.parametrize("edit, key, words", [
    (_set("treatment.column", "arm"), "treatment.column", "column 'arm' is not in the data file"),
    (_set("treatment.arms", {}), "treatment.arms", "at least one treatment arm"),
    (_set("treatment.control", KeyError), "treatment.control", "not declared"),
    (_set("treatment.arms.Mens E-Mail.type", "newsletter"), "treatment.arms.Mens E-Mail.type", "campaign types"),
    (_set("treatment.arms.Mens E-Mail.channel", "fax"), "treatment.arms.Mens E-Mail.channel", "channels"),
    (_set("treatment.arms.Mens E-Mail.discount_rate", 1.5), "treatment.arms.Mens E-Mail.discount_rate", "<= 1.0"),
    (_set("treatment.arms.Mens E-Mail.variant", "control"), "treatment.arms.Mens E-Mail.variant", "unique id"),
    (_set("treatment.arms.No E-Mail", {}), "treatment.arms.No E-Mail", "control arm is implicit"),
    (_set("outcomes.response", "clicks"), "outcomes.response", "column 'clicks'"),
    (_set("features.numeric", ["recency", "income"]), "features.numeric", "column 'income'"),
    (_set("users.age", KeyError), "users.age", "requires age"),
    (_set("users.gender", {"fill": "X"}), "users.gender.fill", "genders"),
    (_set("campaign.window", KeyError), "campaign.window", "required when no timestamp column"),
    (_set("colour", "blue"), "colour", "unknown key"),
])
def test_mapping_errors_name_the_file_and_key(tmp_path, edit, key, words):
    path = _mapping(tmp_path, edit)
    with pytest.raises(importer.MappingError) as exc:
        importer.load_mapping(path, COLUMNS)
    assert str(exc.value).startswith(f"{path}: {key}: ") and words in str(exc.value), str(exc.value)


def test_hillstrom_mapping_is_valid_and_response_switches():
    m = importer.load_mapping(MAPPING, COLUMNS)
    assert (m["treatment"], m["control"], m["response"], m["revenue"]) == ("segment", "No E-Mail", "visit", "spend")
    assert importer.load_mapping(MAPPING, COLUMNS, response="conversion")["response"] == "conversion"
    with pytest.raises(importer.MappingError, match="--response: column 'clicks'"):
        importer.load_mapping(MAPPING, COLUMNS, response="clicks")


def test_spread_is_deterministic_and_fills_the_window():
    keys = [f"r{i}" for i in range(20000)]
    a, b = importer._spread_ms(keys, "c", 1000), importer._spread_ms(keys, "c", 1000)
    assert (a == b).all() and a.min() >= 1 and a.max() <= 1000
    assert abs(np.median(a) - 500) < 25  # ~uniform: the time split acts as a random split


# --------------------------------------------------------------------------- a slice through the chain

BAD = {5: ("segment", "Kids E-Mail"), 6: ("visit", "2"), 7: ("visit", "yes"), 8: ("recency", "soon")}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    if not DATA.exists():
        pytest.skip(f"{DATA} not present")
    from campaignops.config import Settings

    tmp = tmp_path_factory.mktemp("import")
    df = pd.read_csv(DATA, dtype=str, nrows=N)
    for row, (col, value) in BAD.items():
        df.loc[row, col] = value
    data = tmp / "slice.csv"
    df.to_csv(data, index=False)
    (tmp / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    settings = Settings(workspace=tmp, state_dir=tmp / ".state",
                        env={"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "CAMPAIGNOPS_ID_SALT": "s"})
    mp = pytest.MonkeyPatch()
    for k, v in settings.env.items():
        mp.setenv(k, v)
    with mock_aws():
        store = ObjectStore(settings, client=boto3.client("s3", region_name="us-east-1"))
        store.client.create_bucket(Bucket=settings.bucket)
        manifest = importer.import_file(settings, MAPPING, data, batch="slice", store=store)
        ingest.ingest(settings, batch="slice", store=store)
        report = validate.run(settings, store=store)
        quarantine = {t: store.read_table(store.key(v["quarantine_uri"])).to_pandas()
                      for t, v in report["tables"].items() if v["quarantine_uri"]}
        meta = features.build(settings, store=store)
        yield settings, manifest, report, quarantine, meta
    mp.undo()


def test_an_imported_batch_id_is_immutable(chain):
    """The same import again is a no-op; other content under the landed id is refused and the
    landed objects stay byte for byte (raw batch ids are immutable)."""
    settings, manifest, *_ = chain
    store = ObjectStore(settings, client=boto3.client("s3", region_name="us-east-1"))
    data = Path(manifest["generator"]["data_file"])
    before = {k: store.get_bytes(k) for k in store.list_keys("raw/slice/")}
    assert importer.import_file(settings, MAPPING, data, batch="slice", store=store)["tables"] == manifest["tables"]
    with pytest.raises(ingest.BatchExists, match="raw batch 'slice' already landed .* new batch id"):
        importer.import_file(settings, MAPPING, data, batch="slice", store=store, limit=N // 2)
    assert {k: store.get_bytes(k) for k in store.list_keys("raw/slice/")} == before


def test_import_rows_in_equal_rows_out_and_the_batch_validates(chain):
    settings, manifest, report, _, meta = chain
    n_attr = 8 * N
    assert {t: e["rows"] for t, e in manifest["tables"].items()} == \
        {"users": N, "events": 0, "campaigns": 2, "exposures": N, "user_attributes": n_attr}
    assert manifest["tables"]["events"]["empty_by_design"] and manifest["import"]["undeclared_arms"] == {"Kids E-Mail": 1}
    assert report["passed"]
    for t, e in manifest["tables"].items():
        r = report["tables"][t]
        assert r["rows_in"] == e["rows"] == r["rows_valid"] + r["rows_quarantined"] + r["rows_deduplicated"]
    validated = settings.workspace / layout.VALIDATED_DIR
    assert pq.read_metadata(validated / "events.parquet").num_rows == 0
    assert pq.read_metadata(validated / "user_attributes.parquet").num_rows == n_attr - 1
    assert sum(meta["rows"].values()) == N - 3 and not meta["has_truth"]
    assert "attr_recency" in meta["profile_cols"] and "attr_zip_code__urban" in meta["profile_cols"]


def test_malformed_rows_are_quarantined_with_rule_and_source_row(chain):
    _, _, report, q, _ = chain
    x = q["exposures"].set_index("_source_row")
    assert x.loc[5, "_rule"] == "exposures.variant_id.in_campaigns" and x.loc[5, "variant_id"] == "Kids E-Mail"
    assert x.loc[6, "_rule"] == "exposures.responded.allowed"
    assert x.loc[7, "_rule"] == "exposures.responded.not_null"
    assert set(x.index) == {5, 6, 7} and x.loc[6, "exposure_id"].endswith("r0000006")
    a = q["user_attributes"]
    assert a[["user_id", "name", "_rule"]].values.tolist() == [["r0000008", "recency", "user_attributes.value.none_set"]]


def test_attribute_rules_hold_in_gx_and_sql():
    """The user_attributes suite and its SQL twin flag the same rows (validate cross-checks them on every run)."""
    from datetime import datetime

    from campaignops.validation import suites

    ids = [r.id for r in suites.rules("user_attributes")]
    assert {"user_attributes.key.unique", "user_attributes.user_id.in_users", "user_attributes.value.both_set",
            "user_attributes.value.none_set", "user_attributes.name.format"} <= set(ids)
    preds = dict(suites.sql_predicates("user_attributes", datetime(2026, 1, 1), "rel"))
    assert "regexp_full_match" in preds["user_attributes.name.format"]


def test_references_are_scored_on_the_same_holdout(chain):
    settings, *_ = chain
    expanded, frame, truth = evaluate.load_holdout(settings)
    assert truth is None
    p = np.random.default_rng(0).random(len(frame))
    refs = uplift_references.reference_uplift(settings, features_meta(settings), expanded, frame, p)
    hold = frame[frame["arm_id"] == frame["variant_id"]]
    assert set(refs["arms"]) == {"hillstrom_2008/mens_email", "hillstrom_2008/womens_email"}
    for arm, res in refs["arms"].items():
        variant = arm.split("/")[1]
        assert res["rows"]["holdout"] == int(hold["variant_id"].isin([variant, CONTROL]).sum())
        assert set(res) == {"rows", "candidate", "two_model", "class_transformation"}
        for name in ("candidate", "two_model", "class_transformation"):
            assert set(res[name]) == {"qini", "auuc", "uplift_at_30"} and np.isfinite(res[name]["qini"])


def features_meta(settings):
    import json

    return json.loads((settings.workspace / layout.FEATURES_DIR / "meta.json").read_text())


def test_scoring_frame_carries_the_attribute_columns(chain):
    settings, manifest, _, _, meta = chain
    con = scoring_frames.connect(settings.workspace / layout.VALIDATED_DIR)
    frame = scoring_frames.scoring_frame(con, manifest["now"].replace("T", " "), meta)
    assert frame.num_rows == N and set(meta["profile_cols"]) <= set(frame.column_names)
    history = pd.read_csv(DATA, nrows=N)["history"].to_numpy()
    assert np.allclose(frame.column("attr_history").to_numpy(), history)  # real ids, in users order


def _imported_attributes() -> pd.DataFrame:
    """The slice's feature columns as imported (the chain fixture's bad cells included)."""
    df = pd.read_csv(DATA, dtype=str, nrows=N)
    for row, (col, value) in BAD.items():
        df.loc[row, col] = value
    return df


def test_scoring_at_the_campaign_start_sees_the_imported_attributes(chain, tmp_path):
    """The attributes are stamped at the window start, which is also the campaign's start_ts:
    scoring (and its drift gate) builds every user's features as of that time and must see them
    (as_of <= t), exactly as imported, not all zeros / all missing (issue 13)."""
    from campaignops.pipelines import attributes, drift

    settings, *_ = chain
    meta = features_meta(settings)  # what scoring's model.meta and the drift snapshot carry
    m = importer.load_mapping(MAPPING, COLUMNS)
    no_as_of = _mapping(tmp_path, _set("features.as_of", KeyError))
    assert m["as_of"] == m["window"][0] == importer.load_mapping(no_as_of, COLUMNS)["as_of"]  # default: the same
    con = scoring_frames.connect(settings.workspace / layout.VALIDATED_DIR)
    frame, start = scoring_frames.campaign_scoring_frame(con, m["campaign_id"], meta)
    assert pd.Timestamp(start) == m["as_of"] and frame.num_rows == N
    df, got = _imported_attributes(), frame.to_pandas()
    assert got["user_id"].tolist() == [f"r{i:07d}" for i in range(N)]  # real ids, the data rows' order
    for item in meta["profile_fit"]["attributes"]:
        name, cols = item["name"], attributes.columns([item])
        if item["kind"] == "numeric":
            value = pd.to_numeric(df[name], errors="coerce")
            assert np.array_equal(got[f"attr_{name}"], value.fillna(0.0)), name
            if item["missing"]:
                assert np.array_equal(got[f"attr_{name}__missing"], value.isna().astype(float)), name
        else:
            for v, c in zip(item["values"], cols):
                assert np.array_equal(got[c], (df[name] == v).astype(float)), c
    assert got.loc[8, "attr_recency__missing"] == 1.0 and got["attr_history"].gt(0).all()

    ref_dir = drift.write_reference(settings.workspace / layout.FEATURES_DIR, meta, tmp_path / "ref")
    pol = drift.policy(settings.params, "score")
    for population in ("profile", "train"):  # profile: what gate_scoring compares with
        ref, _, _ = drift.read_reference(ref_dir, population)
        report = drift.assess(ref, frame, pol)
        psi = {c: f["psi"] for c, f in report["features"].items() if c.startswith(attributes.PREFIX)}
        assert set(psi) == set(attributes.columns(meta["profile_fit"]["attributes"]))
        assert max(psi.values()) < (1e-9 if population == "profile" else pol["max_psi"]), (population, psi)


def test_volume_history_compares_batches_of_the_same_source_only():
    hist = {"tables": {"users": [{"batch": "demo", "rows_in": 20000, "source": "campaignops.pipelines.synth"}]}}
    imported = "campaignops.pipelines.importer:validation/mappings/hillstrom.yaml"
    assert validate.check_volume(hist, "users", "hs", 64000, 0.5, 2.0, imported)["status"] == "first"
    assert validate.check_volume(hist, "users", "demo2", 64000, 0.5, 2.0, "campaignops.pipelines.synth")["status"] == "failed"


def test_references_skip_arms_of_a_campaign_absent_from_training(workspace):
    """Synthetic worlds hold out a later campaign: nothing to fit per arm, reported as skipped."""
    import pyarrow as pa

    fdir = workspace.workspace / layout.FEATURES_DIR
    fdir.mkdir(parents=True)
    pq.write_table(pa.table({"campaign_id": ["C1", "C1"]}), fdir / "train.parquet")
    frame = pd.DataFrame({"exposure_id": ["x1", "x1", "x2", "x2"], "campaign_id": ["C2"] * 4,
                          "variant_id": ["V1", "V1", CONTROL, CONTROL], "arm_id": ["V1", CONTROL] * 2,
                          "responded": [1, 1, 0, 0]})
    refs = uplift_references.reference_uplift(workspace, {}, None, frame, np.zeros(4))
    assert refs["arms"] == {} and list(refs["skipped"]) == ["C2/V1"]


# --------------------------------------------------------------------------- cross-fitting folds

def test_folds_have_equal_sizes_partition_the_keys_and_keep_a_user_together():
    keys = [f"u{i % 997}" for i in range(3000)]  # repeated users
    folds = importer.fold_of(keys, "c", 5)
    assert (folds == importer.fold_of(keys, "c", 5)).all() and set(folds) == set(range(5))
    per_user = pd.Series(folds).groupby(pd.Series(keys)).nunique()
    assert (per_user == 1).all()  # every row of a user in one fold
    users_per_fold = pd.Series(folds).groupby(pd.Series(keys)).first().value_counts()
    assert users_per_fold.max() - users_per_fold.min() <= 1
    assert not (importer.fold_of(keys, "other", 5) == folds).all()  # the salt reshuffles


@needs_data
def test_holdout_fold_puts_its_rows_last_and_k_imports_hold_out_every_row_once():
    m = importer.load_mapping(MAPPING, COLUMNS)
    df = pd.read_csv(DATA, dtype=str, nrows=1000)
    k, held_ids = 4, []
    for f in range(k):
        tables, stats = importer.build_tables({**m, "holdout_fold": (f, k)}, df)
        x = tables["exposures"].to_pandas()
        held = importer.fold_of(x["user_id"].tolist(), m["campaign_id"], k) == f
        assert x.loc[held, "exposure_ts"].min() > x.loc[~held, "exposure_ts"].max()
        assert x["exposure_ts"].min() > m["window"][0] and x["exposure_ts"].max() <= m["window"][1]
        assert stats["holdout_fold"] == {"fold": f, "k": k, "rows": 250, "share": 0.25, "time_quantile": 749.5 / 1000}
        held_ids += x.loc[held, "exposure_id"].tolist()
    assert sorted(held_ids) == sorted(x["exposure_id"])  # every row held out exactly once


@needs_data
def test_holdout_fold_is_the_features_holdout(tmp_path):
    """Through ingest → validate → features: a time split with the fold's share holds out exactly that fold."""
    from campaignops.config import Settings

    data = tmp_path / "slice.csv"
    pd.read_csv(DATA, dtype=str, nrows=300).to_csv(data, index=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    q = importer.build_tables({**importer.load_mapping(MAPPING, COLUMNS), "holdout_fold": (2, 3)},
                              pd.read_csv(data, dtype=str))[1]["holdout_fold"]["time_quantile"]
    assert 199 < q * 300 < 200  # between the other folds' last row and the fold's first
    params["features"]["split"] = {"train": 0.5, "valid": q - 0.5}
    params["stack"]["bucket"] = "campaignops-fold"  # own volume history, apart from the module's chain fixture
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    settings = Settings(workspace=tmp_path, state_dir=tmp_path / ".state",
                        env={"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    mp = pytest.MonkeyPatch()
    for k, v in settings.env.items():
        mp.setenv(k, v)
    try:
        with mock_aws():
            store = ObjectStore(settings, client=boto3.client("s3", region_name="us-east-1"))
            store.client.create_bucket(Bucket=settings.bucket)
            manifest = importer.import_file(settings, MAPPING, data, batch="fold", store=store, holdout_fold=(2, 3))
            ingest.ingest(settings, batch="fold", store=store)
            validate.run(settings, store=store)
            features.build(settings, store=store)
    finally:
        mp.undo()
    assert manifest["import"]["holdout_fold"] == {"fold": 2, "k": 3, "rows": 100, "share": 100 / 300, "time_quantile": q}
    from campaignops.pipelines.privacy import id_salt, pseudonymize

    hold = pq.read_table(settings.workspace / layout.FEATURES_DIR / "holdout.parquet", columns=["exposure_id"])
    fold = importer.fold_of([f"r{i:07d}" for i in range(300)], "hillstrom_2008", 3) == 2
    salt = id_salt(settings)
    assert sorted(hold.column("exposure_id").to_pylist()) == sorted(
        pseudonymize(salt, f"hillstrom_2008-r{i:07d}", "x") for i in np.flatnonzero(fold))


def test_holdout_fold_needs_a_valid_fold_and_spread_times(tmp_path):
    data = tmp_path / "log.csv"
    pd.DataFrame({c: ["1"] for c in COLUMNS} | {"segment": ["No E-Mail"], "ts": ["2008-03-02"]}).to_csv(data, index=False)
    with pytest.raises(ValueError, match="0 <= f < k"):
        importer.import_file(None, MAPPING, data, holdout_fold=(3, 3))
    timed = _mapping(tmp_path, _set("timestamp", "ts"))
    with pytest.raises(importer.MappingError, match="timestamp: holdout_fold needs exposure times spread"):
        importer.import_file(None, timed, data, holdout_fold=(0, 3))


def test_cli_rejects_a_malformed_holdout_fold(tmp_path):
    from typer.testing import CliRunner

    from campaignops import cli

    out = CliRunner().invoke(cli.app, ["data", "import", "--mapping", "m.yaml", "--holdout-fold", "2-5", "x.csv"])
    assert out.exit_code == 2 and "F/K" in out.output


def test_an_imported_log_trains_and_scores_on_the_imported_values(chain, tmp_path, monkeypatch):
    """The whole way for an imported log: train a champion on it, score its campaign, and read
    back the features the scorer stored beside its manifest — the imported attributes, with the
    drift gate passing (before the as_of fix every attr_* was 0 there and the gate blocked)."""
    from campaignops.pipelines import promote, score, train

    import os

    settings, *_ = chain
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    settings.params["train"].update(epochs=1, baselines=[])
    settings.params["evaluate"].update(min_auc=0.0, max_logloss=10.0, min_qini=-10.0, qini_noise_draws=0,
                                       report=False, reference_uplift_models=[])
    saved = dict(os.environ)  # the steps export endpoints (config.apply_env): keep them out of other tests
    try:
        train.run(settings)
        store = ObjectStore(settings, client=boto3.client("s3", region_name="us-east-1",
                                                          endpoint_url="https://s3.amazonaws.com"))
        assert evaluate.run(settings)["passed"] and promote.run(settings, store=store)["promoted"]
        held = pq.read_table(settings.workspace / "reports/holdout_predictions.parquet").to_pandas()
        assert held["source_row"].notna().all() and held["source_row"].between(0, N - 1).all()   # back to the file
        assert all(sid.endswith(f"-r{row:07d}") for sid, row in zip(held["source_exposure_id"], held["source_row"]))
        m = importer.load_mapping(MAPPING, COLUMNS)
        out = score.run(settings, campaign_id=m["campaign_id"], replay=True, store=store)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert out["drift"]["status"] != "blocked" and out["replay"] and out["rows"] == N
    seen = store.read_table(store.key(out["inputs"]["features"]["uri"])).to_pandas()
    df = _imported_attributes()
    for item in features_meta(settings)["profile_fit"]["attributes"]:
        if item["kind"] == "numeric":
            value = pd.to_numeric(df[item["name"]], errors="coerce").fillna(0.0)
            assert np.array_equal(seen[f"attr_{item['name']}"], value), item["name"]
    assert not store.exists(f"scores/{m['campaign_id']}/latest.json")   # a replay never moves latest


# --------------------------------------------------------------------------- onboarding a new log (issue 15)

from campaignops.pipelines import import_holdout, import_mapping, import_starter  # noqa: E402

ARMS = ["control", "10% off SMS", "Free shipping e-mail", "newsletter A", "newsletter B"]


def _new_log(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """A 5-arm RCT from elsewhere: an id, the arm, user columns, features, two 0/1 outcomes, revenue,
    a split column and free text."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "customer_id": [f"c{i:04d}" for i in range(n)], "group": np.array(ARMS)[np.arange(n) % 5],
        "age": rng.integers(18, 80, n), "sex": rng.choice(["F", "M"], n), "state": rng.choice(["north", "south"], n),
        "tenureMonths": rng.integers(0, 60, n), "plan": rng.choice(["basic", "plus"], n),
        "purchased": rng.integers(0, 2, n), "clicked": rng.integers(0, 2, n), "revenue": rng.integers(0, 90, n),
        "split": np.where(np.arange(n) % 4 == 0, "test", "train"), "note": [f"free text {i}" for i in range(n)]})


def _write(tmp_path: Path, df: pd.DataFrame, name: str = "new_log.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_mapping_validator_reports_every_problem_at_once(tmp_path):
    def edit(m):
        m["colour"] = "blue"
        m["treatment"]["column"] = "arm"
        m["treatment"]["arms"]["Mens E-Mail"]["type"] = "newsletter"
        m["treatment"]["arms"]["Womens E-Mail"]["discount_rate"] = 2
        del m["treatment"]["arms"]["Womens E-Mail"]["channel"]
        m["users"]["gender"] = {"fill": "X"}
        m["features"]["numeric"] = ["recency", "income"]
    path = _mapping(tmp_path, edit)
    with pytest.raises(importer.MappingError) as exc:
        importer.load_mapping(path, COLUMNS)
    keys = [k for k, _ in exc.value.problems]
    assert keys == ["colour", "treatment.column", "treatment.arms.Mens E-Mail.type",
                    "treatment.arms.Womens E-Mail.channel", "treatment.arms.Womens E-Mail.discount_rate",
                    "users.gender.fill", "features.numeric"]
    lines = str(exc.value).splitlines()
    assert len(lines) == len(keys) and all(line.startswith(f"{path}: {k}: ") for line, k in zip(lines, keys))
    assert "column 'income' is not in the data file" in lines[-1]


def test_cli_lists_every_mapping_problem(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from campaignops import cli

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.setenv("CAMPAIGNOPS_WORKSPACE", str(tmp_path))
    data = _write(tmp_path, pd.DataFrame({c: ["1"] for c in COLUMNS} | {"segment": ["No E-Mail"]}))
    path = _mapping(tmp_path, lambda m: m.update(colour="blue", outcomes={"response": "clicks"}))
    out = CliRunner().invoke(cli.app, ["data", "import", "--mapping", str(path), str(data)])
    assert out.exit_code == 2, out.output
    lines = out.output.splitlines()
    assert lines[0] == "mapping errors (2):" and lines[1].startswith(f"{path}: colour: unknown key")
    assert lines[2].startswith(f"{path}: outcomes.response: column 'clicks'") and len(lines) == 3


def test_arm_values_of_the_data_are_checked_against_the_mapping():
    m = importer.load_mapping(MAPPING, COLUMNS)
    values = pd.Series(["No E-Mail", "Mens E-Mail", "Kids E-Mail", "Kids E-Mail"])
    warnings = import_mapping.check_arm_values(m, values)
    assert warnings[0].startswith("treatment.arms.Womens E-Mail: declared but no row")
    assert "'Kids E-Mail' (2 rows)" in warnings[1] and "quarantines" in warnings[1]
    with pytest.raises(importer.MappingError) as exc:
        import_mapping.check_arm_values(m, pd.Series(["No E-mail", "Mens E-Mail"]))
    assert exc.value.problems[0][0] == "treatment.control" and "'No E-mail' (1)" in str(exc.value)


def test_arms_equal_in_every_attribute_are_indistinguishable():
    base = {"variant": "a", "type": "discount", "channel": "email", "discount_rate": 0.0, "cost_per_send": 0.0,
            "target_category": None}
    arms = {"A": base, "B": {**base, "variant": "b", "target_category": ""}, "C": {**base, "variant": "c",
                                                                                 "cost_per_send": 0.01},
            "D": {**base, "variant": "d", "target_category": "kids"}, "E": {**base, "variant": "e"}}
    assert import_mapping.indistinguishable_arms(arms) == [["A", "B", "E"]]
    text = import_mapping.arms_warning(["A", "B", "E"], arms)
    assert "'A' (variant a), 'B' (variant b), 'E' (variant e)" in text and "target_category" in text
    assert import_mapping.indistinguishable_arms(importer.load_mapping(MAPPING, COLUMNS)["arms"]) == []


def test_starter_mapping_guesses_the_columns_and_loads(tmp_path):
    df = _new_log()
    path, g = import_starter.write_starter(_write(tmp_path, df), tmp_path / "new.yaml")
    text = path.read_text()
    m = importer.load_mapping(path, list(df.columns))   # the starter is a valid mapping as written
    assert (m["treatment"], m["control"], m["id"], m["response"], m["revenue"], m["timestamp"]) == \
        ("group", "control", "customer_id", "purchased", "revenue", None)
    assert m["features"] == {"age": "numeric", "sex": "categorical", "state": "categorical",
                             "tenureMonths": "numeric", "plan": "categorical"}
    assert m["users"]["age"] == ("column", "age") and m["users"]["gender"] == ("column", "sex")
    assert m["users"]["region"] == ("column", "state") and m["users"]["occupation"] is None
    assert m["arms"]["10% off SMS"] | {"variant": None} == {"variant": None, "type": "discount", "channel": "sms",
                                                            "discount_rate": 0.1, "cost_per_send": 0.0,
                                                            "target_category": None}
    assert m["arms"]["Free shipping e-mail"]["type"] == "free_shipping"
    assert {a["variant"] for a in m["arms"].values()} == {"10_off_sms", "free_shipping_e_mail", "newsletter_a",
                                                          "newsletter_b"}
    assert g["left_out"] == {"purchased": "the response", "clicked": "an outcome or measured after the send",
                             "revenue": "the revenue", "split": "a split column: use --holdout-column",
                             "note": "240 distinct values, too many to one-hot",
                             "customer_id": "the id or the exposure time"}
    assert "also 0/1 outcomes: clicked (--response NAME)" in text
    assert "# CHECK: 'newsletter A', 'newsletter B' have equal attributes" in text
    assert "placeholder two-week window" in text and "signup_ts: {fill: '2023-01-01T00:00:00'}" in text


def test_starter_for_a_binary_treatment_and_a_timestamp_column(tmp_path):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"f0": rng.normal(size=50).round(3), "treatment": rng.integers(0, 2, 50),
                       "sent_at": pd.date_range("2025-05-01", periods=50, freq="h").astype(str),
                       "conversion": rng.integers(0, 2, 50), "exposure": rng.integers(0, 2, 50)})
    path, g = import_starter.write_starter(_write(tmp_path, df, "criteo.csv"), tmp_path / "c.yaml")
    m = importer.load_mapping(path, list(df.columns))
    assert (m["treatment"], m["control"], list(m["arms"]), m["arms"]["1"]["variant"]) == \
        ("treatment", "0", ["1"], "treatment_1")
    assert m["timestamp"] == "sent_at" and m["window"] is None and m["as_of"] == pd.Timestamp("2025-05-01")
    assert m["features"] == {"f0": "numeric"} and g["left_out"]["exposure"] == "an outcome or measured after the send"


def test_starter_never_overwrites_a_mapping(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from campaignops import cli

    data = _write(tmp_path, _new_log(40))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    out = runner.invoke(cli.app, ["data", "import", "--init", str(data)], terminal_width=400)
    assert out.exit_code == 0, out.output
    written = tmp_path / "new_log.mapping.yaml"
    assert "wrote new_log.mapping.yaml" in out.output and written.read_text().startswith("# Starter mapping")
    written.write_text("edited: by hand\n")
    out = runner.invoke(cli.app, ["data", "import", "--init", str(data)], terminal_width=400)
    assert out.exit_code == 2 and "already exists" in out.output and "never overwrites" in out.output
    assert written.read_text() == "edited: by hand\n"
    with pytest.raises(import_starter.StarterError, match="no data rows"):
        import_starter.write_starter(_write(tmp_path, _new_log(40).iloc[:0], "empty.csv"), tmp_path / "e.yaml")


# --------------------------------------------------------------------------- the holdout chosen at import

@pytest.fixture
def new_log_mapping(tmp_path):
    df = _new_log()
    data = _write(tmp_path, df)
    path, _ = import_starter.write_starter(data, tmp_path / "new.yaml")
    return df, data, importer.load_mapping(path, list(df.columns))


def _held_by_time(tables, record):
    x = tables["exposures"].to_pandas()
    after = pd.Timestamp(record["after"])
    return x["exposure_ts"] > after, x


def test_holdout_fraction_holds_out_that_share_of_users_last_in_time(new_log_mapping):
    df, _, m = new_log_mapping
    tables, stats = importer.build_tables({**m, "holdout": {"fraction": 0.3}}, df)
    rec = stats["holdout"]
    held, x = _held_by_time(tables, rec)
    assert rec["rule"] == "fraction" and rec["rows"] == int(held.sum()) == 72 and rec["share"] == 0.3
    assert x.loc[held, "exposure_ts"].min() > pd.Timestamp(rec["after"]) >= x.loc[~held, "exposure_ts"].max()
    assert rec["first_rows"] == np.flatnonzero(held)[:5].tolist()
    again = importer.build_tables({**m, "holdout": {"fraction": 0.3}}, df)[1]["holdout"]
    assert again == rec and "holdout_fold" not in stats   # deterministic
    other = importer.build_tables({**m, "holdout": {"fraction": 0.3}, "spread_salt": "x"}, df)[1]["holdout"]
    assert other["first_rows"] != rec["first_rows"]


def test_holdout_column_holds_out_the_rows_it_marks(new_log_mapping):
    df, _, m = new_log_mapping
    test_rows = np.flatnonzero(df["split"] == "test")
    for spec in ({"column": "split", "value": None}, {"column": "split", "value": "test"}):
        tables, stats = importer.build_tables({**m, "holdout": spec}, df)
        held, _ = _held_by_time(tables, stats["holdout"])
        assert np.flatnonzero(held).tolist() == test_rows.tolist() and stats["holdout"]["rows"] == 60
    with pytest.raises(ValueError, match=r"holdout_column 'split': rows with value 'valid' are none .*'train' \(180\)"):
        importer.build_tables({**m, "holdout": {"column": "split", "value": "valid"}, "data_path": "x.csv"}, df)
    with pytest.raises(ValueError, match="x.csv: holdout_column: column 'fold' is not in the data file"):
        importer.build_tables({**m, "holdout": {"column": "fold", "value": None}, "data_path": "x.csv"}, df)


def test_holdout_options_are_one_of_and_checked():
    assert import_holdout.parse(column="split=test") == {"column": "split", "value": "test"}
    assert import_holdout.parse() is None
    with pytest.raises(ValueError, match="choose one holdout option, not holdout_fold and holdout_fraction"):
        import_holdout.parse(fold=(0, 5), fraction=0.2)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            import_holdout.parse(fraction=bad)


def test_params_split_counts_the_rows_duckdb_holds_out():
    """Without a chosen holdout the record counts what the features step's rank cut holds out
    (the last 1 − (train + valid) share by time), ties at one instant included."""
    import duckdb

    rng = np.random.default_rng(3)
    for n, spread in ((7, 10**9), (100, 10**9), (1001, 10**9), (500, 3)):   # the last: nearly all ties
        ts = (np.datetime64("2024-01-01T00:00:00", "ms") + rng.integers(0, spread, n).astype("timedelta64[ms]"))
        ts[0] = np.datetime64("NaT")
        rec = import_holdout.params_split(ts, {"train": 0.7, "valid": 0.15}, spread=True)
        con = duckdb.connect()
        con.register("x", pd.DataFrame({"t": ts}))
        want = con.execute("""SELECT count(*) FROM (SELECT row_number() OVER (ORDER BY t) AS rk, count(*) OVER () AS n
                              FROM x WHERE t IS NOT NULL) WHERE rk > round(0.85 * n)""").fetchone()[0]
        assert rec["rows"] == want > 0 and rec["rule"] == "params" and "after" not in rec


def test_imported_holdout_is_the_features_holdout_without_editing_params(new_log_mapping, workspace, monkeypatch):
    """--init, then an import holding out the rows the split column marks, through ingest →
    validate → features with the project's params.yaml untouched: the holdout is exactly those
    rows. The manifest records how, and warns that two arms look the same to the network."""
    from campaignops.pipelines.privacy import id_salt, pseudonymize

    df, data, m = new_log_mapping
    for k, v in workspace.env.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        store = ObjectStore(workspace, client=boto3.client("s3", region_name="us-east-1"))
        store.ensure_bucket()
        manifest = importer.import_file(workspace, m["path"], data, store=store, holdout_column="split")
        ingest.ingest(workspace, batch=manifest["batch"], store=store)
        report = validate.run(workspace, store=store)
        meta = features.build(workspace, store=store)
    rec = manifest["import"]["holdout"]
    assert rec["rule"] == "column" and rec["rows"] == 60 and "column 'split'" in rec["how"]
    assert manifest["generator"]["holdout_column"] == "split" and report["passed"]
    assert meta["exposures"]["holdout_after"] == rec["after"] and meta["rows"]["holdout"] == 60
    hold = pq.read_table(workspace.workspace / layout.FEATURES_DIR / "holdout.parquet", columns=["exposure_id"])
    salt, cid = id_salt(workspace), m["campaign_id"]
    assert sorted(hold.column("exposure_id").to_pylist()) == sorted(
        pseudonymize(salt, f"{cid}-r{i:07d}", "x") for i in np.flatnonzero(df["split"] == "test"))
    assert manifest["import"]["indistinguishable_arms"] == [["newsletter A", "newsletter B"]]
    assert any("'newsletter A' (variant newsletter_a), 'newsletter B' (variant newsletter_b) have the same" in w
               for w in manifest["import"]["warnings"])


def test_a_holdout_needs_spread_times(tmp_path):
    log = pd.DataFrame({c: ["1"] for c in COLUMNS} | {"segment": ["No E-Mail"], "ts": ["2008-03-02"]})
    data = _write(tmp_path, log)
    timed = _mapping(tmp_path, _set("timestamp", "ts"))
    with pytest.raises(importer.MappingError, match="timestamp: holdout_fraction needs exposure times spread"):
        importer.import_file(None, timed, data, holdout_fraction=0.2)


# --------------------------------------------------------------------------- bad input (issue 17)

def _hillstrom_text(**replace) -> str:
    """The Hillstrom mapping's text with `old=new` line fragments replaced (bare YAML scalars)."""
    text = MAPPING.read_text()
    for old, new in replace.values():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def test_unquoted_yes_no_in_a_mapping_stop_the_import_with_a_hint(tmp_path):
    """A log whose arm column holds Yes / No: before, `control: No` became the text "False" and
    `Yes:` the arm "True" (their rows quarantined later); now the mapping is refused, key by key."""
    path = tmp_path / "yesno.yaml"
    path.write_text(_hillstrom_text(control=("control: No E-Mail", "control: No"),
                                    arm=("    Mens E-Mail: {", "    Yes: {")))
    with pytest.raises(importer.MappingError) as exc:
        importer.load_mapping(path, COLUMNS)
    assert [k for k, _ in exc.value.problems] == ["treatment.arms.Yes", "treatment.control"]
    assert str(exc.value).splitlines()[1] == (
        f'{path}: treatment.control: unquoted No is read by YAML as the boolean false; the mapping has no '
        'true/false settings: quote it ("No") to mean the text')
    path.write_text(_hillstrom_text(control=("control: No E-Mail", 'control: "No"'),
                                    arm=("    Mens E-Mail: {", "    'Yes': {")))
    m = importer.load_mapping(path, COLUMNS)   # quoted: the text
    assert m["control"] == "No" and "Yes" in m["arms"]


@pytest.mark.parametrize("old, new, key", [
    ("gender: {fill: U}", "gender: {fill: off}", "users.gender.fill"),
    ("id: hillstrom_2008", "id: on", "campaign.id"),
    ("batch: hillstrom", "batch: YES", "batch"),
    ("categorical: [history_segment, zip_code, channel]", "categorical: [history_segment, no, channel]",
     "features.categorical[1]"),
    ("target_category: womens}", "target_category: false}", "treatment.arms.Womens E-Mail.target_category"),
])
def test_a_boolean_anywhere_in_a_mapping_is_named_by_its_key(tmp_path, old, new, key):
    path = tmp_path / "b.yaml"
    path.write_text(_hillstrom_text(x=(old, new)))
    with pytest.raises(importer.MappingError) as exc:
        importer.load_mapping(path, COLUMNS)
    assert [k for k, _ in exc.value.problems] == [key] and "quote it" in str(exc.value)


@pytest.mark.parametrize("field, value, words", [
    ("batch", "../../etc", "not a safe id"), ("batch", ".hidden", "not a safe id"), ("batch", "a b", "not a safe id"),
    ("batch", "x" * 65, "not a safe id"), ("batch", 2024, "quote it"), ("batch", "2024-01-01", None),
    ("campaign.id", "a/b", "not a safe id"), ("campaign.id", "..", "not a safe id"), ("campaign.id", 3.5, "quote it"),
    ("treatment.arms.Mens E-Mail.variant", "../m", "unique id"),
])
def test_mapping_ids_follow_the_safe_id_rule(tmp_path, field, value, words):
    path = _mapping(tmp_path, _set(field, value))
    if words is None:
        assert importer.load_mapping(path, COLUMNS)["batch"] == value
        return
    with pytest.raises(importer.MappingError) as exc:
        importer.load_mapping(path, COLUMNS)
    assert [k for k, _ in exc.value.problems] == [field] and words in str(exc.value)


@pytest.mark.parametrize("content, words", [
    (None, "mapping file not found"), ("dir", "is a directory"), (b"\xff\xfebatch: x\n", "not UTF-8"),
    (b"- source\n- batch\n", "got a YAML list"), (b"", "got an empty file"), (b"batch: [\n", "not valid YAML"),
    (b"a: " + b"[" * 50 + b"]" * 50 + b"\n", "nested more than"),
    (b"batch: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
])
def test_an_unreadable_mapping_is_one_problem_naming_the_file(tmp_path, content, words):
    path = tmp_path / "m.yaml"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(importer.MappingError) as exc:
        importer.load_mapping(path, COLUMNS)
    (line,) = str(exc.value).splitlines()
    assert line.startswith(f"{path}: ") and words in line, line


def _log_bytes(kind: str) -> tuple[str, bytes | None]:
    df = pd.read_csv(io.StringIO("segment,visit,spend\nNo E-Mail,0,0\nMens E-Mail,1,3.5\n"), dtype=str)
    text = df.to_csv(index=False)
    return {
        "missing": ("log.csv", None), "latin1": ("log.csv", (text + "Mens E-Mail,1,café\n").encode("latin-1")),
        "extra_every_row": ("log.csv", "segment,visit\nNo E-Mail,0,0\nMens E-Mail,1,3\n".encode()),
        "extra_one_row": ("log.csv", (text + "Mens E-Mail,1,3,9\n").encode()), "empty": ("log.csv", b""),
        "header_only": ("log.csv", b"segment,visit,spend\n"), "bad_quote": ("log.csv", (text + '"Mens,1,2\n').encode()),
        "not_parquet": ("log.parquet", text.encode()),
    }[kind]


@pytest.mark.parametrize("kind, words", [
    ("missing", "not found"), ("dir", "is a directory"), ("latin1", "not UTF-8 text"),
    ("extra_every_row", "more fields than the header"), ("extra_one_row", "not a well-formed CSV"),
    ("empty", "empty (no header row)"), ("header_only", "no data rows"), ("bad_quote", "not a well-formed CSV"),
    ("not_parquet", "cannot be read as parquet"),
])
def test_an_unreadable_data_file_is_one_line_naming_it(tmp_path, kind, words):
    """Before, these were tracebacks, or (every row one field longer than the header) the first
    column silently became the index and every value shifted one column."""
    name, data = _log_bytes(kind) if kind != "dir" else ("log.csv", None)
    path = tmp_path / name
    if kind == "dir":
        path.mkdir()
    elif data is not None:
        path.write_bytes(data)
    mapping = MAPPING
    if kind == "not_parquet":   # the mapping's source.format decides how the file is read
        mapping = tmp_path / "pq.yaml"
        mapping.write_text(MAPPING.read_text().replace("format: csv", "format: parquet"))
    with pytest.raises(importer.DataFileError) as exc:
        importer.import_file(None, mapping, path, batch="b")
    assert "\n" not in str(exc.value) and str(exc.value).startswith(f"data file {path}: ") and words in str(exc.value)


def test_parquet_duplicate_or_nested_mapped_columns_are_refused(tmp_path):
    import pyarrow as pa

    cols = {"segment": ["No E-Mail", "Mens E-Mail"], "visit": [0, 1], "spend": [0.0, 2.0]}
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(v) for v in cols.values()] + [pa.array([1, 2])],
                                        names=[*cols, "visit"]), dup)
    with pytest.raises(importer.DataFileError, match=r"column name\(s\) \['visit'\] appear more than once"):
        importer.read_source(dup, "parquet")
    nested = tmp_path / "nested.parquet"
    pq.write_table(pa.table({**cols, "segment": [["No E-Mail"], ["Mens E-Mail"]]}), nested)
    df = importer.read_source(nested, "parquet")
    with pytest.raises(importer.DataFileError, match=r"\['segment'\] hold lists or structs"):
        importer.check_flat(df, ["segment", "visit"], f"data file {nested}")


def test_a_batch_id_from_an_unsafe_file_name_is_refused(tmp_path):
    data = _write(tmp_path, pd.DataFrame({c: ["1", "0"] for c in COLUMNS} | {"segment": ["No E-Mail"] * 2}),
                  "my log (copy).csv")
    path = tmp_path / "m.yaml"
    path.write_text(MAPPING.read_text().replace("batch: hillstrom\n", ""))
    assert "batch" not in yaml.safe_load(path.read_text())
    with pytest.raises(importer.UnsafeId, match=r"its name gives the batch id 'my log \(copy\)'.*pass --batch"):
        importer.import_file(None, path, data, store=object())


def test_starter_quotes_ids_yaml_would_read_as_another_type(tmp_path):
    """A log named yes.csv: the starter wrote `batch: yes` (a boolean), now `batch: 'yes'`."""
    data = _write(tmp_path, _new_log(40), "yes.csv")
    out, _ = import_starter.write_starter(data, tmp_path / "yes.mapping.yaml")
    m = importer.load_mapping(out, list(_new_log(1).columns))
    assert m["batch"] == "yes" and m["campaign_id"] == "yes"
