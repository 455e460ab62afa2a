"""The train stage's exposure weights: read from the features' propensity column (absent: all
unknown), inverse-propensity weighted when train.propensity_weights is on, summarised as metrics."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from campaignops.pipelines.train import exposure_weights, logged_policy


def test_logged_policy_reads_the_propensity_and_treats_an_absent_column_as_unknown():
    rows = pa.table({"campaign_id": ["a", "a", "b"], "propensity": pa.array([0.5, None, 0.1], pa.float64())})
    logged = logged_policy(rows)
    np.testing.assert_array_equal(logged["campaign_id"], ["a", "a", "b"])
    np.testing.assert_array_equal(logged["propensity"], [0.5, np.nan, 0.1])
    assert np.isnan(logged_policy(rows.drop_columns(["propensity"]))["propensity"]).all()


def test_exposure_weights_follow_the_params_and_report_their_summary():
    logged = {"campaign_id": np.array(["a", "a", "b", "b"], dtype=object),
              "propensity": np.array([0.5, 0.02, np.nan, np.nan])}
    assert exposure_weights(logged, {"propensity_weights": False, "max_weight": 20}) == (None, {})
    assert exposure_weights(logged, {})[0] is None                      # an older params.yaml: off
    w, metrics = exposure_weights(logged, {"propensity_weights": True, "max_weight": 20})
    np.testing.assert_allclose(w, [2 / 11, 20 / 11, 1.0, 1.0])          # 1/0.02 = 50 clipped at 20; b unknown
    assert metrics["weights.max"] == pytest.approx(20 / 11) and metrics["weights.min"] == pytest.approx(2 / 11)
    assert metrics["weights.null_propensity_rows"] == 2 and metrics["weights.clipped_rows"] == 1
    assert metrics["weights.ess"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum())
    assert 0 < metrics["weights.ess_share"] < 1
