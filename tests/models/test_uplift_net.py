"""The response network: contract (inputs/outputs, save/load without custom objects), the
explicit uplift parameterisation (control depends on the user only) and that target attention
learns an arm × sequence interaction."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from campaignops.models.uplift_net import build_model, fit_network  # noqa: E402

META = {"seq_len": 12, "vocab": {"categories": ["c0", "c1", "c2"], "event_types": ["browse", "buy"]},
        "seq_channels": {"seq_gap": {"size": 4}}}
N_PROFILE, N_VARIANT = 3, 5   # variant: [is_control, targets c0, targets c1, targets c2, discount]
PARAMS = {"embed_dim": 8, "gru_units": 8, "dense_units": [32, 16], "dropout": 0.0, "learning_rate": 0.003,
          "attention_heads": 2, "epochs": 40, "batch_size": 128, "patience": 8, "early_stopping_monitor": "val_loss"}


def world(n=3000, seed=0):
    """Each user is interested in one category (all events in it). Treatment helps only when the
    arm targets the user's category (only visible through the sequence); control rate 10%."""
    rng = np.random.default_rng(seed)
    interest = rng.integers(0, 3, n)
    n_cat = 4
    typ = rng.integers(0, 2, (n, META["seq_len"]))
    seq = (1 + typ * n_cat + interest[:, None]).astype(np.int32)
    seq[:, : rng.integers(0, 6)] = 0                      # left padding
    arm = rng.integers(0, 4, n)                            # 3 = control
    variant = np.zeros((n, N_VARIANT), np.float32)
    variant[arm == 3, 0] = 1
    variant[np.arange(n)[arm < 3], 1 + arm[arm < 3]] = 1
    variant[arm < 3, 4] = 0.1
    profile = rng.normal(size=(n, N_PROFILE)).astype(np.float32)
    p = np.where(arm == 3, 0.1, np.where(arm == interest, 0.6, 0.08))
    y = (rng.random(n) < p).astype(np.float32)
    pos = np.where(seq > 0, np.arange(1, META["seq_len"] + 1)[None, :], 0).astype(np.int32)
    gap = np.where(seq > 0, 2, 0).astype(np.int32)   # an uninformative extra channel
    return {"seq": seq, "seq_pos": pos, "seq_gap": gap, "profile": profile, "variant": variant}, y, interest


def _control_rows(x):
    v = x["variant"].copy()
    v[:] = 0
    v[:, 0] = 1
    return {**x, "variant": v}


@pytest.mark.parametrize("encoder,target", [("gru", "multihead"), ("attention", "dot")])
def test_outputs_save_load_and_control_ignores_arm_attributes(tmp_path, encoder, target):
    x, y, _ = world(200)
    keras.utils.set_random_seed(0)
    model = build_model(META, {**PARAMS, "encoder": encoder, "target_attention": target}, N_PROFILE, N_VARIANT)
    model.get_layer("profile_norm").adapt(x["profile"])
    assert {t.name.split(":")[0] for t in model.inputs} == {"seq", "seq_pos", "seq_gap", "profile", "variant"}
    assert model.get_layer("target_attention") is not None
    p, rev = model.predict(x, verbose=0)
    assert p.shape == (200, 1) and rev.shape == (200, 1) and ((p > 0) & (p < 1)).all() and (rev >= 0).all()
    # delta is switched off for control: other arm columns do not change a control row.
    ctrl = _control_rows(x)
    noisy = {**ctrl, "variant": ctrl["variant"] + np.c_[np.zeros(200), np.ones((200, N_VARIANT - 1))].astype(np.float32)}
    np.testing.assert_allclose(model.predict(ctrl, verbose=0)[0], model.predict(noisy, verbose=0)[0], atol=1e-6)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)   # no custom objects needed
    np.testing.assert_allclose(again.predict(x, verbose=0)[0], p, atol=1e-6)


def test_without_sequence_encoder_has_no_sequence_layers():
    model = build_model(META, PARAMS, N_PROFILE, N_VARIANT, sequence=False)
    names = {layer.name for layer in model.layers}
    assert "sequence_encoder" not in names and "target_attention" not in names
    assert "delta_logit" in names


@pytest.mark.parametrize("encoder,target", [("gru", "multihead"), ("attention", "dot")])
def test_learns_arm_by_sequence_uplift_and_picks_the_matching_arm(encoder, target):
    x, y, _ = world(4000, seed=1)
    xv, yv, _ = world(1000, seed=2)
    keras.utils.set_random_seed(0)
    model = build_model(META, {**PARAMS, "encoder": encoder, "target_attention": target}, N_PROFILE, N_VARIANT)
    model.get_layer("profile_norm").adapt(x["profile"])
    fit_network(model, PARAMS, x, y, y * 0, xv, yv, yv * 0)
    xt, _, interest = world(600, seed=3)
    preds = []
    for a in range(3):
        v = np.zeros_like(xt["variant"])
        v[:, 1 + a], v[:, 4] = 1, 0.1
        preds.append(model.predict({**xt, "variant": v}, verbose=0)[0][:, 0])
    preds = np.stack(preds, 1)
    control = model.predict(_control_rows(xt), verbose=0)[0][:, 0]
    assert np.mean(preds.argmax(1) == interest) > 0.9          # chance is 1/3
    best = preds[np.arange(len(preds)), interest]
    assert np.mean(best - control) > 0.3                      # true uplift 0.5
    assert abs(control.mean() - 0.1) < 0.05


def test_average_is_the_members_mean_and_saves_as_one_network(tmp_path):
    from campaignops.models.uplift_net import average, predict

    x, _, _ = world(300)
    members = []
    for i in range(2):
        keras.utils.set_random_seed(i)
        m = build_model(META, {**PARAMS, "encoder": "attention", "target_attention": "dot"}, N_PROFILE, N_VARIANT,
                        name=f"member_{i}")
        m.get_layer("profile_norm").adapt(x["profile"])
        members.append(m)
    assert average(members[:1]) is members[0]
    model = average(members)
    p = [predict(m, x) for m in members]
    assert not np.allclose(p[0][0], p[1][0])  # two seeds, two networks
    both = predict(model, x)
    np.testing.assert_allclose(both[0], (p[0][0] + p[1][0]) / 2, atol=1e-6)
    np.testing.assert_allclose(both[1], (p[0][1] + p[1][1]) / 2, atol=1e-6)
    model.save(tmp_path / "e.keras")
    again = keras.saving.load_model(tmp_path / "e.keras", compile=False)
    np.testing.assert_allclose(predict(again, x)[0], both[0], atol=1e-6)


def test_val_qini_is_logged_per_epoch_and_can_stop_training(arm_frame):
    x, y, _ = world(600, seed=4)
    xv, yv, _ = world(300, seed=5)
    frame = arm_frame(100)
    xa, _, _ = world(300, seed=6)  # 100 exposures × 3 arms of encoded rows
    keras.utils.set_random_seed(0)
    model = build_model(META, {**PARAMS, "encoder": "attention", "target_attention": "dot"}, N_PROFILE, N_VARIANT)
    with pytest.raises(ValueError, match="val_qini needs"):
        fit_network(model, {**PARAMS, "early_stopping_monitor": "val_qini"}, x, y, y * 0, xv, yv, yv * 0)
    h = fit_network(model, {**PARAMS, "epochs": 3, "early_stopping_monitor": "val_qini"}, x, y, y * 0, xv, yv, yv * 0,
                    uplift_valid=(xa, frame))
    assert len(h.history["val_qini"]) == len(h.history["loss"]) == 3
    assert all(np.isfinite(h.history["val_qini"]))


def test_batch_shuffling_is_seeded_and_learns_like_row_shuffling():
    x, y, _ = world(1200, seed=8)
    xv, yv, _ = world(400, seed=9)
    params = {**PARAMS, "encoder": "attention", "target_attention": "dot", "epochs": 4, "patience": 10}

    def fit(**over):
        keras.utils.set_random_seed(0)
        model = build_model(META, {**params, **over}, N_PROFILE, N_VARIANT)
        h = fit_network(model, {**params, **over}, x, y, y * 0, xv, yv, yv * 0)
        return model, h.history["val_response_auc"][-1]

    with pytest.raises(ValueError, match="train.shuffle"):
        fit(shuffle="sometimes")
    a, auc_a = fit(shuffle="batches", seed=1)
    b, _ = fit(shuffle="batches", seed=1)
    c, _ = fit(shuffle="batches", seed=2)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)                       # same seed, same batches, same model
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(a.get_weights(), c.get_weights()))
    _, auc_rows = fit(shuffle="rows")
    assert auc_a > 0.6 and abs(auc_a - auc_rows) < 0.05


def test_steps_per_execution_batches_the_dispatch_not_the_updates():
    x, y, _ = world(1200, seed=8)
    xv, yv, _ = world(400, seed=9)
    params = {**PARAMS, "encoder": "attention", "target_attention": "dot", "epochs": 2, "patience": 10,
              "shuffle": "batches", "seed": 1}

    def fit(steps):
        keras.utils.set_random_seed(0)
        model = build_model(META, {**params, "steps_per_execution": steps}, N_PROFILE, N_VARIANT)
        fit_network(model, {**params, "steps_per_execution": steps}, x, y, y * 0, xv, yv, yv * 0)
        return model

    one, many = fit(1), fit(4)     # 1200 rows / 128 = 10 batches: two full calls of 4 and a remainder
    assert many.steps_per_execution == 4
    for a, b in zip(one.get_weights(), many.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_sample_weights_weigh_both_outputs_and_all_ones_change_nothing():
    """fit_network's inverse-propensity weights: all-one weights give the unweighted network bit
    for bit; up-weighting the responders raises the predicted response and revenue toward the
    weighted data's, with the weights applied in the seeded batch order."""
    from campaignops.models.uplift_net import predict

    x, y, _ = world(600, seed=10)
    xv, yv, _ = world(200, seed=11)
    params = {**PARAMS, "epochs": 3, "patience": 10, "shuffle": "batches", "seed": 1, "revenue_loss_weight": 1.0}

    def fit(**weights):   # the network without the sequence encoder: the same fit, a fraction of the time
        keras.utils.set_random_seed(0)
        model = build_model(META, params, N_PROFILE, N_VARIANT, sequence=False)
        model.get_layer("profile_norm").adapt(x["profile"])
        fit_network(model, params, x, y, y * 2.0, xv, yv, yv * 2.0, **weights)
        return model

    plain = fit()
    ones = fit(w_train=np.ones(len(y)), w_valid=np.ones(len(yv)))
    for a, b in zip(plain.get_weights(), ones.get_weights()):
        np.testing.assert_array_equal(a, b)
    w = np.where(y > 0, 4.0, 1.0)
    heavy = fit(w_train=w / w.mean(), w_valid=np.ones(len(yv)))
    (p0, r0), (p1, r1) = predict(plain, xv), predict(heavy, xv)
    assert p1.mean() > p0.mean() + 0.05 and r1.mean() > r0.mean() + 0.1
