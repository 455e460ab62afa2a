"""PSI against hand-computed values; drift report, policy and the blocking check."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from campaignops.pipelines import drift


def test_numeric_psi_matches_hand_computation():
    # reference 1..10, 2 bins → inner edge at the median 5.5: shares (0.5, 0.5), no nulls
    # current: eight 1s, two 10s → shares (0.8, 0.2)
    # PSI = (0.8-0.5)·ln(0.8/0.5) + (0.2-0.5)·ln(0.2/0.5) = 0.3·0.4700036 + 0.3·0.9162907 = 0.4158883
    ref = np.arange(1, 11, dtype=float)
    cur = np.array([1.0] * 8 + [10.0] * 2)
    assert drift.psi(ref, cur, bins=2) == pytest.approx(0.4158883, abs=1e-6)
    assert drift.psi(ref, ref, bins=10) == pytest.approx(0.0, abs=1e-12)


def test_numeric_psi_counts_nulls_and_out_of_range():
    ref = np.arange(1, 11, dtype=float)
    # out-of-range values land in the outer bins: same shares → 0
    assert drift.psi(ref, np.array([-100.0] * 5 + [100.0] * 5), bins=2) == pytest.approx(0.0, abs=1e-12)
    # half nulls: r = (0.5, 0.5, EPS), c = (0.25, 0.25, 0.5)
    cur = np.array([1.0, 2.0, 9.0, 10.0] + [np.nan] * 4)
    eps = drift.EPS
    expected = 2 * (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.5 - eps) * np.log(0.5 / eps)
    assert drift.psi(ref, cur, bins=2) == pytest.approx(expected, rel=1e-9)


def test_categorical_psi_matches_hand_computation():
    # r = (a .6, b .4, c EPS), c = (a .3, b .3, c .4)
    # PSI = -.3·ln(.5) - .1·ln(.75) + (.4 - 1e-4)·ln(.4/1e-4) = .2079442 + .0287682 + 3.3167897 = 3.5535021
    ref = ["a"] * 6 + ["b"] * 4
    cur = ["a"] * 3 + ["b"] * 3 + ["c"] * 4
    assert drift.categorical_psi(ref, cur) == pytest.approx(3.5535021, abs=1e-6)
    assert drift.categorical_psi(ref, list(reversed(ref))) == 0.0
    assert drift.categorical_psi(["a", None], ["a", "a"]) > 0  # null is its own category


def test_drift_report_and_check_name_the_features():
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"price": rng.normal(10, 2, 5000), "age": rng.integers(18, 80, 5000),
                        "region": rng.choice(["n", "s", "e"], 5000)})
    same = pd.DataFrame({"price": rng.normal(10, 2, 5000), "age": rng.integers(18, 80, 5000),
                         "region": rng.choice(["n", "s", "e"], 5000)})
    shifted = same.assign(price=same["price"] + 4, region="n")
    ok = drift.drift_report(ref, same, ["price", "age", "region"])
    assert ok["features"]["price"]["kind"] == "numeric" and ok["features"]["region"]["kind"] == "categorical"
    assert ok["max_psi"] < 0.05
    pol = drift.policy({"drift": {"max_psi": 0.2}}, "score")
    table = pa.Table.from_pandas
    passed = drift.assess(table(ref), table(same), pol, categorical=["region"])
    assert passed["status"] == "passed" and drift.enforce(passed) is passed
    bad = drift.drift_report(ref, shifted, ["price", "age", "region"])
    blocked = drift.assess(table(ref), table(shifted), pol, categorical=["region"])
    with pytest.raises(drift.DriftDetected) as err:
        drift.enforce(blocked)
    msg = str(err.value)
    assert "price" in msg and "region" in msg and "age" not in msg and "0.2" in msg
    assert set(err.value.features) == {"price", "region"}
    # pyarrow tables work the same, default columns = shared ones
    rep = drift.drift_report(pa.Table.from_pandas(ref), pa.Table.from_pandas(shifted))
    assert rep["features"]["price"]["psi"] == pytest.approx(bad["features"]["price"]["psi"])


def test_policy_from_params():
    import yaml
    from pathlib import Path

    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    pol = drift.policy(params, "train")
    assert 0 < pol["max_psi"] < 1 and pol["bins"] >= 2
