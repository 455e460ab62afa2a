"""Model input encoding: sequence channels and the user × candidate cross features."""
from __future__ import annotations

import numpy as np
import pandas as pd

from campaignops.models.inputs import encode, history_crosses, variant_dim

CATS = ["c00", "c01"]
META = {"seq_len": 3, "vocab": {"categories": CATS, "event_types": ["browse"]},
        "campaign_types": ["discount", "bundle"], "channels": ["email", "sms"],
        "seq_channels": {"seq_gap": {"size": 4}},
        "profile_cols": ["log_avg_price", "resp_rate_email", "resp_rate_sms", "resp_rate_discount",
                         "resp_rate_other", "affinity_00", "affinity_01"]}


def frame() -> pd.DataFrame:
    user = {"seq_tokens": np.array([0, 1, 2]), "seq_gap": np.array([0, 1, 3]), "log_avg_price": 3.0,
            "resp_rate_email": 0.1, "resp_rate_sms": 0.4, "resp_rate_discount": 0.2, "resp_rate_other": 0.05,
            "affinity_00": 0.7, "affinity_01": 0.3}
    arms = [dict(is_control=0.0, type="discount", discount_rate=0.2, channel="sms", target_category="c01", cost_per_send=0.1),
            dict(is_control=0.0, type="bundle", discount_rate=0.0, channel="email", target_category="c00", cost_per_send=0.1),
            dict(is_control=1.0, type="none", discount_rate=0.0, channel="none", target_category="none", cost_per_send=0.0)]
    return pd.DataFrame([{**user, **a} for a in arms])


def test_crosses_take_the_candidate_arms_channel_type_and_target():
    x = encode(frame(), META)
    crosses = history_crosses(META)
    assert crosses == ["resp_rate_arm_channel", "resp_rate_arm_type", "interest_arm_target", "discount_x_price_level"]
    assert x["variant"].shape == (3, variant_dim(META))
    cross = x["variant"][:, -len(crosses):]
    np.testing.assert_allclose(cross[0], [0.4, 0.2, 0.3, 0.6], rtol=1e-6)   # sms, discount, c01, 0.2 * 3.0
    np.testing.assert_allclose(cross[1], [0.1, 0.05, 0.7, 0.0], rtol=1e-6)  # email, other, c00, no discount
    np.testing.assert_allclose(cross[2], 0.0)                               # control: no candidate


def test_sequence_channels_and_positions_are_aligned_with_tokens():
    x = encode(frame(), META)
    np.testing.assert_array_equal(x["seq"][0], [0, 1, 2])
    np.testing.assert_array_equal(x["seq_gap"][0], [0, 1, 3])
    np.testing.assert_array_equal(x["seq_pos"][0], [0, 2, 3])   # slot index; 0 on padding


def test_crosses_are_left_out_when_the_profile_lacks_their_columns():
    meta = {**META, "profile_cols": ["log_avg_price"]}
    assert history_crosses(meta) == ["discount_x_price_level"]
    assert encode(frame(), meta)["variant"].shape == (3, variant_dim(meta))


def test_arm_target_one_hot_tells_apart_arms_that_differ_only_in_their_target():
    import pyarrow as pa

    from campaignops.models.inputs import arm_target_vocabulary

    arms = pa.table({"is_control": [0.0, 0.0, 1.0], "target_category": ["c01", "c00", "none"]})
    assert arm_target_vocabulary(arms) == ["c00", "c01"]
    meta = {**META, "profile_cols": [], "arm_targets": ["c00", "c01"]}   # no events, no crosses
    x = encode(frame(), meta)
    assert x["variant"].shape == (3, variant_dim(meta))
    np.testing.assert_array_equal(x["variant"][:, -2:], [[0, 1], [1, 0], [0, 0]])
    assert not np.array_equal(x["variant"][0], x["variant"][1])
