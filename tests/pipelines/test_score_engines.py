"""The scoring engines agree: the Spark engine (one task per parquet row group, the model loaded from
an MLflow pyfunc directory in each Python worker) gives the local streamed engine's predictions in
the same user order, hence the same targeting; and the split network (user encoder + all-arms head)
gives the naive per-arm full network's predictions."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from campaignops.pipelines import features, layout, scoring_frames
from campaignops.pipelines.score_request import check_request
from campaignops.pipelines.score_engine import ArmScorer, predict_spark, predict_stream
from campaignops.pipelines.targeting import assign, exploration_draws

from tests.pipelines.test_score_request import build_world

pytestmark = [pytest.mark.spark, pytest.mark.timeout(300),
              pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")]


# One Python worker: each worker imports TensorFlow and loads the model (~20 s on a 2-CPU machine);
# the three row groups are still three Spark tasks. map_arrow's task order over several workers is
# tested in test_spark_engine.py.
SPARK = {"master": "local[1]", "app_name": "test-score-engines"}


@pytest.fixture(scope="module")
def scoring(tmp_path_factory):
    """A 300-user world with its features, an untrained network of the trainer's shape saved as an
    MLflow pyfunc directory, the upcoming campaign's arms and its scoring frame in a local parquet
    of 100-row row groups (three Spark tasks)."""
    import keras
    import mlflow.pyfunc

    from campaignops.models.inputs import arm_target_vocabulary, encode_user, variant_dim
    from campaignops.models.pyfunc import CampaignResponseModel
    from campaignops.models.uplift_net import build_model
    from campaignops.pipelines import tracking

    tmp = tmp_path_factory.mktemp("score-engines")
    (tmp / "ws").mkdir()
    settings = build_world(tmp / "ws", then=lambda s, store: features.build(s, store=store))
    fdir = settings.workspace / layout.FEATURES_DIR
    meta = json.loads((fdir / "meta.json").read_text())
    meta["arm_targets"] = arm_target_vocabulary(pq.read_table(fdir / "arms.parquet"))
    meta["revenue_scale"] = 40.0
    req = check_request(settings, None, None)
    con = scoring_frames.connect(settings.workspace / layout.VALIDATED_DIR)
    frame = scoring_frames.campaign_scoring_frame(con, req.campaign_id, meta)[0]
    source = tmp / "features.parquet"
    pq.write_table(frame, source, row_group_size=100)

    params = {**settings.params["train"], "ensemble": 1}
    keras.utils.set_random_seed(3)
    model = build_model(meta, params, len(meta["profile_cols"]), variant_dim(meta))
    model.get_layer("profile_norm").adapt(encode_user(frame, meta)["profile"])
    model.save(tmp / "model.keras")
    (tmp / "meta.json").write_text(json.dumps(meta))
    uri = str(tmp / "pyfunc")
    mlflow.pyfunc.save_model(uri, python_model=CampaignResponseModel(),
                             artifacts={"keras_model": str(tmp / "model.keras"), "meta": str(tmp / "meta.json")},
                             pip_requirements=tracking.pip_requirements())
    return {"model": model, "meta": meta, "arms": req.arms, "uri": uri, "source": str(source), "frame": frame,
            "campaign_id": req.campaign_id}


def _value_per_response(preds, arms) -> float:
    """A value per response at which about half the users' best arm pays for itself (the network is
    untrained: its uplifts are small)."""
    costs = np.array([a["cost_per_send"] for a in arms], dtype=np.float64)[:-1]
    p = preds.p.astype(np.float64)
    uplift = (p[:, :-1] - p[:, -1:]).max(axis=1)
    return float(2 * costs.max() / max(np.quantile(np.abs(uplift), 0.5), 1e-6))


def _targeting(preds, arms, campaign_id, vpr, share=0.2):
    costs = np.array([a["cost_per_send"] for a in arms], dtype=np.float64)[:-1]
    explored, arm = exploration_draws(preds.user_ids.to_numpy(zero_copy_only=False), share, len(arms), 0, campaign_id)
    budget = float(np.append(costs, 0)[arm[explored]].sum() + costs.max() * 40)   # ~40 sends beyond the slice
    return assign(preds.p, costs, vpr, budget, explored, arm, share)


def test_spark_and_local_engines_give_the_same_predictions_and_targeting(scoring):
    arms = scoring["arms"]
    f = pq.ParquetFile(scoring["source"])
    assert f.metadata.num_row_groups == 3 and f.metadata.num_rows == 300

    local = predict_stream(ArmScorer(scoring["model"], scoring["meta"], arms), scoring["source"], batch_rows=128)
    spark = predict_spark(scoring["uri"], arms, scoring["source"], s3=None, spark=SPARK)

    assert spark.user_ids.to_pylist() == local.user_ids.to_pylist() == scoring["frame"].column("user_id").to_pylist()
    assert local.p.shape == spark.p.shape == (300, len(arms))
    np.testing.assert_allclose(spark.p, local.p, atol=1e-6, rtol=0)
    np.testing.assert_allclose(spark.revenue, local.revenue, atol=1e-6 * scoring["meta"]["revenue_scale"], rtol=0)
    assert np.isfinite(local.p).all() and np.ptp(local.p, axis=1).max() > 1e-4

    vpr = _value_per_response(local, arms)
    a_local = _targeting(local, arms, scoring["campaign_id"], vpr)
    a_spark = _targeting(spark, arms, scoring["campaign_id"], vpr)
    np.testing.assert_array_equal(a_spark.chosen, a_local.chosen)
    np.testing.assert_array_equal(a_spark.greedy, a_local.greedy)
    np.testing.assert_array_equal(a_spark.propensity, a_local.propensity)
    sent_by_model = a_local.send & ~a_local.explored
    assert 0 < sent_by_model.sum() < (~a_local.explored).sum()      # the budget binds: a real comparison
    assert a_local.explored.any()


def test_split_path_equals_the_naive_per_arm_path(scoring):
    arms = scoring["arms"]
    split = ArmScorer(scoring["model"], scoring["meta"], arms)
    naive = ArmScorer(scoring["model"], scoring["meta"], arms, naive=True)
    assert split.split is not None and naive.split is None
    fast = predict_stream(split, scoring["source"], batch_rows=100)
    slow = predict_stream(naive, scoring["source"], batch_rows=100)
    assert fast.user_ids.to_pylist() == slow.user_ids.to_pylist()
    np.testing.assert_allclose(fast.p, slow.p, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fast.revenue, slow.revenue, atol=1e-5 * scoring["meta"]["revenue_scale"], rtol=0)
    # streamed in other batch sizes: the same predictions
    again = predict_stream(split, scoring["source"], batch_rows=37)
    np.testing.assert_allclose(again.p, fast.p, atol=1e-6, rtol=0)
