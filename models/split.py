"""Splits a trained campaign response network (models/uplift_net.py) into a user encoder, run
once per user, and an arm head, run for all of a campaign's arms at once — the same weights and
the same outputs as the full network on the user × arm rows, at a fraction of the cost when a
campaign has several arms.

The network's only user × arm interactions are the target attention (the arm's query over the
user's encoded steps) and the head over (user, arm context, user × arm context). So:
- `user part` (a Keras sub-model of the trained graph): the encoded steps, the user vector after
  `user_dense`, the base logit (control's logit, user only) and the padding mask;
- `arm head` (a new graph calling the trained layers): variant rows of shape [users, arms, dims]
  go through the arm layers with the arm axis kept, the target attention takes the arms as
  query positions over the same steps, and the user vector is broadcast over the arms.
An ensemble (models/uplift_net.average) is split member by member and averaged like the full one.
Older or simpler networks (no sequence, no uplift head) split the same way;
`split` raises ValueError for a graph it does not recognise, and callers fall back to the full
network on the expanded rows."""
from __future__ import annotations

import weakref

import numpy as np

class SplitModel:
    """predict(user_inputs, variants [n, A, V]) -> (p [n, A], revenue [n, A]) of one network."""

    def __init__(self, members: list[tuple]):
        self.members = members          # [(user_model, head_model)]
        self.user_input_names = [t.name.split(":")[0] for t in members[0][0].inputs]

    def predict(self, inputs: dict[str, np.ndarray], variants: np.ndarray,
                batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Users in chunks of `batch_size` (fewer beyond 4 arms: at most 4 × batch_size user × arm
        rows per call); each member's user part and arm head run as one compiled graph
        (_compiled), so only the [users, arms] outputs leave it, not the per-step user tensors."""
        n, n_arms = variants.shape[0], variants.shape[1]
        p_sum, r_sum = np.zeros((n, n_arms)), np.zeros((n, n_arms))
        user_x = {k: inputs[k] for k in self.user_input_names}
        variants = np.asarray(variants, dtype=np.float32)
        step = max(1, min(batch_size, 4 * batch_size // max(n_arms, 1)))
        for user_model, head in self.members:
            fn = _compiled(user_model, head)
            for s in range(0, n, step):
                p, r = _call(fn, {k: v[s:s + step] for k, v in user_x.items()}, variants[s:s + step])
                p_sum[s:s + step] += p[..., 0]
                r_sum[s:s + step] += r[..., 0]
        k = len(self.members)
        return p_sum / k, r_sum / k


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _compiled(user_model, head):
    """user part → arm head as one tf.function with the parts' input signatures (batch axes open:
    traced once per member, cached while its head lives). Called eagerly, Keras runs every layer
    from Python, which costs more than these small layers' arithmetic (~4x the time of the graph
    at 4096 users, plus the user part's per-step outputs copied out and back in); the graph gives
    the same outputs bit for bit."""
    fn = _COMPILED.get(head)
    if fn is None:
        import tensorflow as tf

        user_ref, head_ref = weakref.ref(user_model), weakref.ref(head)   # the cache keeps no model alive
        names = [t.name.split(":")[0] for t in head.inputs]
        spec = lambda t: tf.TensorSpec(t.shape, t.dtype)  # noqa: E731

        def run(x, variants):
            parts = user_ref()(x, training=False)
            parts = list(parts) if isinstance(parts, (list, tuple)) else [parts]
            return head_ref()(dict(zip(names, parts + [variants])), training=False)

        fn = _COMPILED[head] = tf.function(run, input_signature=[
            {t.name.split(":")[0]: spec(t) for t in user_model.inputs}, spec(head.inputs[-1])])
    return fn


def _call(fn, x: dict, variants: np.ndarray) -> list[np.ndarray]:
    """(p, revenue) [users, arms, 1] of a compiled member on one chunk of users, as numpy arrays
    (no Keras predict loop: it builds a tf.data pipeline per call, which costs more than the arm
    head itself)."""
    return [np.asarray(t) for t in fn(x, variants)]


def split(model, tolerance: float = 1e-5) -> SplitModel:
    """The SplitModel of a trained network or of an ensemble of them, checked against the full
    network on a probe batch (random users with left padding, some with no events, random arm
    rows): whether the target attention of a saved graph masks padded steps is decided by how its
    layers propagate Keras masks at run time, so both readings are built and the one that
    reproduces the full network is kept; ValueError if neither does (also when the network's
    output on the probe is not finite)."""
    members = [layer for layer in model.layers if hasattr(layer, "layers") and _is_network(layer)]
    nets = members or [model]
    if not all(_is_network(m) for m in nets):
        raise ValueError(f"{model.name}: not a campaign response network")
    parts = []
    for m in nets:
        probe, variants = _probe(m)
        want = _full_predict(m, probe, variants)
        for masked in (False, True):
            one = _split_one(m, masked)
            got = SplitModel([one]).predict(probe, variants)
            err = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
            if err <= tolerance:
                parts.append(one)
                break
        else:
            raise ValueError(f"{m.name}: the split network differs from the full one by {err:.2e} on a probe batch")
    return SplitModel(parts)


def _probe(m, n: int = 24, n_arms: int = 3, seed: int = 0):
    """Random inputs within the network's vocabularies: left-padded sequences, one control arm."""
    rng = np.random.default_rng(seed)
    x = {}
    seq_len = None
    for t in m.inputs:
        name = t.name.split(":")[0]
        if name == "variant":
            continue
        if name.startswith("seq"):
            seq_len = int(t.shape[1])
            layer = {"seq": "token_embedding", "seq_pos": "position_embedding"}.get(name, f"{name}_embedding")
            size = int(m.get_layer(layer).input_dim)
            x[name] = rng.integers(1, size, (n, seq_len)).astype(np.int32)
        else:
            x[name] = rng.normal(size=(n, int(t.shape[1]))).astype(np.float32)
    if seq_len:
        # Left padding of every length, an empty history included (users with no events are scored
        # too: a graph whose output on them is not finite must not be split).
        cut = rng.integers(0, seq_len, n)
        cut[:2] = seq_len
        pad = np.arange(seq_len)[None, :] < cut[:, None]
        for k in x:
            if k.startswith("seq"):
                x[k] = np.where(pad, 0, x[k]).astype(np.int32)
    n_variant = int(next(t for t in m.inputs if t.name.split(":")[0] == "variant").shape[1])
    variants = rng.random((n, n_arms, n_variant)).astype(np.float32)
    variants[:, :, 0] = 0.0
    variants[:, -1] = 0.0
    variants[:, -1, 0] = 1.0
    return x, variants


def _full_predict(m, x: dict, variants: np.ndarray):
    n, a = variants.shape[:2]
    rows = {k: np.repeat(v, a, axis=0) for k, v in x.items()}
    rows["variant"] = variants.reshape(n * a, -1)
    p, r = m(rows, training=False)
    return np.asarray(p)[:, 0].reshape(n, a), np.asarray(r)[:, 0].reshape(n, a)


def _is_network(m) -> bool:
    names = {layer.name for layer in m.layers}
    return {"user_dense", "arm_dense", "arm_context_dense"} <= names


def _split_one(m, masked: bool):
    import keras
    from keras import layers

    L = m.get_layer
    names = {layer.name for layer in m.layers}
    inputs = {t.name.split(":")[0]: t for t in m.inputs}
    sequence = "target_attention" in names
    uplift = "base_logit" in names
    user_vec = L("user_dense").output
    outs = {"user": user_vec}
    if sequence:
        outs["steps"] = _steps_tensor(m)
        if masked:
            outs["seq_mask"] = keras.ops.not_equal(inputs["seq"], 0)
    if uplift:
        outs["base"] = L("base_logit").output
    user_in = [t for t in m.inputs if t.name.split(":")[0] != "variant"]
    user_model = keras.Model(user_in, list(outs.values()), name=f"{m.name}_user")

    # The arm head: fresh inputs, the trained layers called with the arm axis kept.
    h = {name: keras.Input(tuple(t.shape[1:]), dtype=t.dtype, name=name) for name, t in outs.items()}
    n_variant = int(inputs["variant"].shape[-1])
    var = keras.Input((None, n_variant), name="variants")
    arm = L("arm_dense")(var)
    arm_parts = [arm]
    if sequence:
        query = L("arm_query")(var)                                   # [n, A, g]
        att = L("target_attention")
        mask = h.get("seq_mask")
        if isinstance(att, layers.MultiHeadAttention):
            ctx = att(query, h["steps"], value_mask=mask)
        else:
            ctx = att([query, h["steps"]], mask=None if mask is None else [None, mask])
        arm_parts.append(ctx)
    arm_ctx = layers.Concatenate()(arm_parts) if len(arm_parts) > 1 else arm
    arm_ctx = L("arm_context_dense")(arm_ctx)
    user = _broadcast_arms(h["user"], var)
    x = layers.Concatenate()([user, arm_ctx, layers.Multiply()([user, arm_ctx])])
    for layer in _head_dense_layers(m):
        x = layer(x)
    if uplift:
        delta = L("delta_logit")(x)
        treated = L("treated")(var)
        base = _broadcast_arms(h["base"], var)
        logit = layers.Add()([base, layers.Multiply()([delta, treated])])
        response = layers.Activation("sigmoid")(logit)
    else:
        response = L("response")(x)
    basket = L("basket")(layers.Concatenate()([user, arm_ctx]))
    revenue = layers.Multiply()([response, basket])
    head = keras.Model([*h.values(), var], [response, revenue], name=f"{m.name}_arm_head")
    return user_model, head


def _steps_tensor(m):
    """The per-step sequence tensor the target attention attends over (its value input)."""
    att = m.get_layer("target_attention")
    node = att._inbound_nodes[0]
    args = node.arguments.args
    # Attention([query, steps]) or MultiHeadAttention(query, steps)
    return args[0][1] if isinstance(args[0], (list, tuple)) else args[1]


def _head_dense_layers(m) -> list:
    """head_dense_i (relu) layers in order; Dropout is the identity at inference."""
    dense = sorted((layer for layer in m.layers if layer.name.startswith("head_dense_")),
                   key=lambda layer: int(layer.name.rsplit("_", 1)[1]))
    return dense


def _broadcast_arms(t, like):
    """[n, d] → [n, A, d] with A the arm axis of `like` [n, A, v]."""
    from keras import layers, ops

    return layers.Lambda(lambda xs: ops.broadcast_to(ops.expand_dims(xs[0], 1),
                                                     (ops.shape(xs[1])[0], ops.shape(xs[1])[1], ops.shape(xs[0])[-1])))(
        [t, like])
