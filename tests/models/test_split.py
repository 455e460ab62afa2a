"""models/split.py: the user encoder + all-arms head gives the full network's outputs on the
expanded user × arm rows, for every network shape the trainer builds; and models/inputs.encode_arms
gives encode()'s variant rows without expanding the users."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

keras = pytest.importorskip("keras")

from campaignops.models.inputs import encode, encode_arms, encode_user, variant_dim  # noqa: E402
from campaignops.models.split import split  # noqa: E402
from campaignops.models.uplift_net import average, build_model  # noqa: E402

from tests.models.test_inputs import META as INPUT_META  # noqa: E402
from tests.models.test_uplift_net import META, N_PROFILE, N_VARIANT, PARAMS, world  # noqa: E402

N_USERS, N_ARMS = 90, 4


def _users(n: int = N_USERS, seed: int = 11) -> dict:
    """world()'s users with a different left padding per user: full, partial, one step, none at all."""
    x, _, _ = world(n, seed=seed)
    rng = np.random.default_rng(seed)
    seq_len = META["seq_len"]
    pad = rng.integers(0, seq_len, n)
    pad[:4] = [0, seq_len - 1, seq_len, seq_len]          # full history, one event, two users with none
    keep = np.arange(seq_len)[None, :] >= pad[:, None]
    for k in ("seq", "seq_pos", "seq_gap"):
        x[k] = np.where(keep, x[k], 0).astype(np.int32)
    x["seq_pos"] = np.where(x["seq"] > 0, np.arange(1, seq_len + 1)[None, :], 0).astype(np.int32)
    x.pop("variant")
    return x


def _variants(n: int, n_arms: int, seed: int, per_user: bool) -> np.ndarray:
    """[n, A, N_VARIANT]: treatments target a category with a discount; the last arm is control."""
    rng = np.random.default_rng(seed)
    v = np.zeros((n if per_user else 1, n_arms, N_VARIANT), np.float32)
    targets = rng.integers(0, 3, (v.shape[0], n_arms - 1))
    for a in range(n_arms - 1):
        v[np.arange(v.shape[0]), a, 1 + targets[:, a]] = 1.0
        v[:, a, 4] = rng.choice([0.0, 0.1, 0.3], v.shape[0])
    v[:, -1, 0] = 1.0
    return np.ascontiguousarray(np.broadcast_to(v, (n, n_arms, N_VARIANT)))


def _full(model, x: dict, variants: np.ndarray):
    n, a = variants.shape[:2]
    rows = {k: np.repeat(v, a, axis=0) for k, v in x.items()}
    rows["variant"] = variants.reshape(n * a, -1)
    p, r = model.predict(rows, batch_size=4096, verbose=0)
    return p[:, 0].reshape(n, a), r[:, 0].reshape(n, a)


def _network(x: dict, name: str | None = None, seed: int = 0, sequence: bool = True, **params):
    keras.utils.set_random_seed(seed)
    m = build_model(META, {**PARAMS, **params}, N_PROFILE, N_VARIANT, sequence=sequence, name=name)
    m.get_layer("profile_norm").adapt(x["profile"])
    return m


CONFIGS = {
    "gru-multihead": dict(encoder="gru", target_attention="multihead"),
    "gru-dot": dict(encoder="gru", target_attention="dot"),
    "attention-multihead": dict(encoder="attention", target_attention="multihead"),
    "attention-dot": dict(encoder="attention", target_attention="dot"),
    "gru-multihead-self_attention": dict(encoder="gru", target_attention="multihead", self_attention=True),
    "attention-dot-self_attention": dict(encoder="attention", target_attention="dot", self_attention=True),
    "gru-multihead-no_uplift_head": dict(encoder="gru", target_attention="multihead", uplift_head=False),
    "attention-dot-no_uplift_head": dict(encoder="attention", target_attention="dot", uplift_head=False),
}


def _check(model, x, per_user: bool = False):
    variants = _variants(len(x["seq"]), N_ARMS, seed=5, per_user=per_user)
    s = split(model)
    p, r = s.predict({k: v for k, v in x.items() if k in s.user_input_names}, variants, batch_size=32)
    want_p, want_r = _full(model, {k: v for k, v in x.items()
                                   if k in {t.name.split(":")[0] for t in model.inputs}}, variants)
    assert p.shape == (len(x["seq"]), N_ARMS) and r.shape == p.shape
    assert np.isfinite(p).all() and np.isfinite(r).all()
    np.testing.assert_allclose(p, want_p, atol=1e-5, rtol=0)
    np.testing.assert_allclose(r, want_r, atol=1e-5, rtol=0)
    assert np.ptp(p, axis=1).max() > 1e-3        # the arms do differ: the comparison is not vacuous
    return s


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_split_equals_the_full_network_on_the_expanded_rows(config):
    x = _users()
    _check(_network(x, **CONFIGS[config]), x)


def test_split_with_different_arms_per_user_and_across_batches():
    x = _users(150)
    s = _check(_network(x, encoder="gru", target_attention="dot"), x, per_user=True)
    assert len(s.members) == 1


def test_split_of_an_ensemble_averages_its_members():
    x = _users()
    members = [_network(x, name=f"campaign_response_{i}", seed=i, encoder="attention", target_attention="dot")
               for i in range(2)]
    model = average(members)
    s = _check(model, x)
    assert len(s.members) == 2
    one = _check(members[0], x)
    variants = _variants(N_USERS, N_ARMS, seed=5, per_user=False)
    assert not np.allclose(one.predict(x, variants)[0], s.predict(x, variants)[0])   # both members count


def test_split_of_a_network_without_sequence():
    x = _users()
    x = {"profile": x["profile"], "seq": x["seq"]}      # predict takes what the user part declares
    model = _network({"profile": x["profile"]}, sequence=False)
    s = split(model)
    variants = _variants(N_USERS, N_ARMS, seed=5, per_user=True)
    p, r = s.predict(x, variants)
    want_p, want_r = _full(model, {"profile": x["profile"]}, variants)
    np.testing.assert_allclose(p, want_p, atol=1e-5, rtol=0)
    np.testing.assert_allclose(r, want_r, atol=1e-5, rtol=0)


def test_split_refuses_a_graph_it_does_not_know():
    inp = keras.Input((3,), name="profile")
    other = keras.Model(inp, keras.layers.Dense(1, name="response")(inp), name="something_else")
    with pytest.raises(ValueError, match="not a campaign response network"):
        split(other)


# --------------------------------------------------------------------------- encode_arms

ARMS = [
    dict(is_control=0.0, type="discount", discount_rate=0.2, channel="sms", target_category="c01", cost_per_send=0.1),
    dict(is_control=0.0, type="bundle", discount_rate=0.05, channel="email", target_category="c00", cost_per_send=0.12),
    dict(is_control=0.0, type="coupon", discount_rate=0.1, channel="email", target_category="c99", cost_per_send=0.2),
    # a type and a channel the model's vocabulary does not know; ints where the table has floats
    dict(is_control=0, type="loyalty", discount_rate=0, channel="push", target_category="c00", cost_per_send=0.05),
    dict(is_control=1.0, type="none", discount_rate=0.0, channel="none", target_category="none", cost_per_send=0.0),
]


def _user_table(n: int = 40, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    seq_len, n_tok = INPUT_META["seq_len"], 1 + len(INPUT_META["vocab"]["event_types"]) * (len(INPUT_META["vocab"]["categories"]) + 1)
    seq = rng.integers(1, n_tok, (n, seq_len))
    seq[np.arange(seq_len)[None, :] < rng.integers(0, seq_len + 1, n)[:, None]] = 0
    cols = {"user_id": [f"u{i}" for i in range(n)],
            "seq_tokens": pa.array(list(seq.astype(np.int32)), pa.list_(pa.int32())),
            "seq_gap": pa.array(list(np.where(seq > 0, rng.integers(1, 4, seq.shape), 0).astype(np.int32)),
                                pa.list_(pa.int32()))}
    for c in INPUT_META["profile_cols"]:
        cols[c] = pa.array(rng.random(n) * (4.0 if c == "log_avg_price" else 1.0), pa.float64())
    return pa.table(cols)


@pytest.mark.parametrize("meta", [INPUT_META, {**INPUT_META, "arm_targets": ["c00", "c01"]},
                                  {**INPUT_META, "profile_cols": ["log_avg_price"]}],
                         ids=["crosses", "arm-targets", "few-profile-cols"])
def test_encode_arms_equals_encode_of_the_expanded_rows(meta):
    users = _user_table()
    n, a = users.num_rows, len(ARMS)
    seq = encode_user(users, meta)["seq"]
    got = encode_arms(users, ARMS, meta, seq)
    # the expanded rows, user-major: user 0 under every arm, then user 1, ...
    expanded = users.take(np.repeat(np.arange(n), a))
    for c in ARMS[0]:
        expanded = expanded.append_column(c, pa.array([arm[c] for arm in ARMS] * n))
    want = encode(expanded, meta)["variant"]
    assert got.shape == (n, a, variant_dim(meta))
    np.testing.assert_array_equal(got.reshape(n * a, -1), want)
    np.testing.assert_array_equal(encode_arms(users, [], meta, seq).shape, (n, 0, variant_dim(meta)))
