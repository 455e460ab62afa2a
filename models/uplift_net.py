"""The campaign response network.

Inputs {"seq", "profile", "variant"} (models/inputs.encode), outputs "response" (probability)
and "revenue" (expected revenue / revenue_scale). Architecture (sizes in params.yaml `train:`):

- a shared encoder over the behaviour sequence (left-padded, masked). Each step is the sum of
  embeddings of its token (event type × category), its time-gap bucket and price bucket
  (the features step's seq channels) and its position. `encoder: gru` runs a GRU (its last
  state summarises the user); `encoder: attention` uses no recurrence (masked mean of the
  steps summarises the user) and is several times faster on CPU; either may be refined by one
  block of masked self-attention;
- target attention: the candidate arm (its encoded attributes, incl. target-category
  affinity) is the query over the per-step sequence embeddings, so what the user did that
  matters for *this* arm (e.g. recent interest in the bundle's category) is pooled per arm;
- an explicit uplift parameterisation
      logit p(arm) = base(user) + delta(user, arm) · (1 − is_control),
  so the control arm's prediction depends on the user only, and every treatment's uplift is
  carried by delta; scoring one user under every arm gives per-variant uplift directly;
- revenue = p(arm) · basket(user, arm) (softplus), i.e. expected revenue incl. non-responders.

Only built-in Keras layers are used, so the saved .keras file loads without custom objects
(the pyfunc wrapper loads it with plain keras.saving.load_model).
`sequence=False` builds the same network without the sequence encoder (the non-sequence MLP
baseline of models/baselines.py). `average` wraps several fitted networks (an ensemble of seeds)
into one model of the same inputs whose outputs are the members' mean."""
from __future__ import annotations

DEFAULTS = {
    "embed_dim": 16,
    "gru_units": 32,
    "dense_units": [64, 32],
    "dropout": 0.1,
    "learning_rate": 0.002,
    "attention_heads": 2,
    "encoder": "gru",
    "target_attention": "multihead",
    "self_attention": False,
    "uplift_head": True,
    "revenue_loss_weight": 0.01,
    "steps_per_execution": 1,
}


def _p(params: dict, key: str):
    return params.get(key, DEFAULTS[key])


def build_model(meta: dict, params: dict, n_profile: int, n_variant: int, sequence: bool = True,
                name: str | None = None):
    import keras
    from keras import layers

    from campaignops.models.inputs import seq_channel_sizes

    units = list(_p(params, "dense_units"))
    dropout = float(_p(params, "dropout"))
    seq_len = int(meta["seq_len"])
    seq_in = keras.Input((seq_len,), dtype="int32", name="seq")
    pos_in = keras.Input((seq_len,), dtype="int32", name="seq_pos")
    channel_in = {name: keras.Input((seq_len,), dtype="int32", name=name) for name in seq_channel_sizes(meta)}
    profile_in = keras.Input((n_profile,), name="profile")
    variant_in = keras.Input((n_variant,), name="variant")

    profile = layers.Normalization(name="profile_norm")(profile_in)
    arm = layers.Dense(units[0], activation="relu", name="arm_dense")(variant_in)

    user_parts, arm_parts = [profile], [arm]
    if sequence:
        n_cat = len(meta["vocab"]["categories"]) + 1
        vocab_size = 1 + len(meta["vocab"]["event_types"]) * n_cat
        d = int(_p(params, "embed_dim"))
        g = int(_p(params, "gru_units"))
        # The token embedding carries the padding mask; the other channels are added to it.
        steps = layers.Embedding(vocab_size, d, mask_zero=True, name="token_embedding")(seq_in)
        extra = [layers.Embedding(seq_len + 1, d, name="position_embedding")(pos_in)]
        extra += [layers.Embedding(size, d, name=f"{name}_embedding")(channel_in[name])
                  for name, size in seq_channel_sizes(meta).items()]
        steps = layers.Add(name="step_embedding")([steps, *extra])
        heads = int(_p(params, "attention_heads"))
        if _p(params, "encoder") == "gru":
            steps, last = layers.GRU(g, return_sequences=True, return_state=True, name="sequence_encoder")(steps)
        else:
            steps = layers.Dense(g, activation="relu", name="sequence_encoder")(steps)
            last = None
        if _p(params, "self_attention"):
            att = layers.MultiHeadAttention(heads, key_dim=max(g // heads, 4), name="self_attention")(steps, steps)
            steps = layers.LayerNormalization(name="self_attention_norm")(layers.Add()([steps, att]))
        if last is None:
            last = layers.GlobalAveragePooling1D(name="sequence_summary")(steps)
        # Target attention: the arm is the query over the sequence (padding masked out). "dot":
        # scaled dot product against the steps themselves (DIN-style, no key/value projections:
        # ~10x less compute per row than "multihead", which projects every step per head).
        query = layers.Reshape((1, g))(layers.Dense(g, name="arm_query")(variant_in))
        if _p(params, "target_attention") == "dot":
            ctx = layers.Attention(use_scale=True, name="target_attention")([query, steps])
        else:
            ctx = layers.MultiHeadAttention(heads, key_dim=max(g // heads, 4), name="target_attention")(query, steps)
        ctx = layers.Flatten(name="target_context")(ctx)
        user_parts.insert(0, last)
        arm_parts.append(ctx)

    user = layers.Concatenate(name="user")(user_parts) if len(user_parts) > 1 else user_parts[0]
    user = layers.Dense(units[0], activation="relu", name="user_dense")(user)
    arm_ctx = layers.Concatenate(name="arm_context")(arm_parts) if len(arm_parts) > 1 else arm
    arm_ctx = layers.Dense(units[0], activation="relu", name="arm_context_dense")(arm_ctx)
    x = layers.Concatenate()([user, arm_ctx, layers.Multiply(name="user_x_arm")([user, arm_ctx])])
    for i, n in enumerate(units):
        x = layers.Dense(n, activation="relu", name=f"head_dense_{i}")(x)
        x = layers.Dropout(dropout)(x)

    if _p(params, "uplift_head"):
        b = user
        for i, n in enumerate(units[1:]):
            b = layers.Dense(n, activation="relu", name=f"base_dense_{i}")(b)
        base = layers.Dense(1, name="base_logit")(b)
        delta = layers.Dense(1, name="delta_logit")(x)
        # treated = 1 − is_control (variant column 0), with a frozen Dense so no custom op is needed.
        treated = layers.Dense(1, trainable=False, name="treated",
                               kernel_initializer=keras.initializers.Constant(
                                   [[-1.0]] + [[0.0]] * (n_variant - 1)),
                               bias_initializer="ones")(variant_in)
        logit = layers.Add(name="logit")([base, layers.Multiply(name="delta_if_treated")([delta, treated])])
        response = layers.Activation("sigmoid", name="response")(logit)
    else:
        response = layers.Dense(1, activation="sigmoid", name="response")(x)
    basket = layers.Dense(1, activation="softplus", name="basket")(layers.Concatenate()([user, arm_ctx]))
    revenue = layers.Multiply(name="revenue")([response, basket])
    inputs = [seq_in, pos_in, *channel_in.values(), profile_in, variant_in] if sequence else [profile_in, variant_in]
    model = keras.Model(inputs, [response, revenue],
                        name=name or ("campaign_response" if sequence else "campaign_response_noseq"))
    model.compile(
        optimizer=keras.optimizers.Adam(float(_p(params, "learning_rate"))),
        loss={"response": "binary_crossentropy", "revenue": "mse"},
        loss_weights={"response": 1.0, "revenue": float(_p(params, "revenue_loss_weight"))},
        metrics={"response": [keras.metrics.AUC(name="auc")]},
        steps_per_execution=int(_p(params, "steps_per_execution")),
    )
    return model


def average(members: list):
    """One Keras model taking the members' inputs whose outputs "response" and "revenue" are the
    means of the members' (members built with distinct names); a single member is returned as is.
    Built-in layers only, so it saves and loads like one network."""
    if len(members) == 1:
        return members[0]
    import keras
    from keras import layers

    inputs = [keras.Input(t.shape[1:], dtype=t.dtype, name=t.name.split(":")[0]) for t in members[0].inputs]
    outs = [m(inputs) for m in members]
    response = layers.Average(name="response")([o[0] for o in outs])
    revenue = layers.Average(name="revenue")([o[1] for o in outs])
    return keras.Model(inputs, [response, revenue], name="campaign_response_ensemble")


def fit_network(model, params: dict, x_train, y_train, rev_train, x_valid, y_valid, rev_valid,
                uplift_valid: tuple | None = None, w_train=None, w_valid=None):
    """Fit with early stopping (params: epochs, batch_size, patience, early_stopping_monitor,
    shuffle: rows = every epoch draws batches from shuffled rows, batches = rows shuffled once
    (seeded by params seed) and each epoch shuffles whole batches);
    revenue targets are already divided by revenue_scale. Returns the Keras History.
    `uplift_valid` (encoded inputs, frame) of the validation exposures scored under every arm of
    their campaign (frame as models.arms') adds `val_qini` to the epoch logs, which
    early_stopping_monitor may name. `w_train` / `w_valid`: per-row sample weights of both outputs'
    losses (inverse-propensity weights, models/weights.py; None = unweighted); the AUC metric stays
    unweighted."""
    import keras
    import numpy as np

    from campaignops.models.arms import mean_qini
    from campaignops.models.inputs import select_inputs

    x_train, x_valid = select_inputs(model, x_train), select_inputs(model, x_valid)
    monitor = params.get("early_stopping_monitor", "val_response_auc")
    if monitor == "val_qini" and uplift_valid is None:
        raise ValueError("early_stopping_monitor val_qini needs the validation rows under every arm (uplift_valid)")
    callbacks = []
    if uplift_valid is not None:
        inputs, frame = uplift_valid

        class ValidQini(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if logs is not None:
                    logs["val_qini"] = mean_qini(frame, predict(self.model, inputs)[0])

        callbacks.append(ValidQini())
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    y_train, rev_train = f32(y_train), f32(rev_train)
    w_train = None if w_train is None else f32(w_train)
    shuffle = params.get("shuffle", "rows")
    if shuffle == "batches":
        # One seeded shuffle of the rows, then Keras reorders whole batches each epoch: gathering
        # every batch from random rows of a large training set made an epoch ~1.4x slower at 1M users.
        order = np.random.default_rng(int(params.get("seed", 0))).permutation(len(y_train))
        x_train = {k: v[order] for k, v in x_train.items()}
        y_train, rev_train = y_train[order], rev_train[order]
        w_train = None if w_train is None else w_train[order]
    elif shuffle != "rows":
        raise ValueError(f"params train.shuffle: {shuffle!r} is not rows | batches")
    callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor,
                                                   mode="max" if monitor.endswith(("auc", "qini")) else "min",
                                                   patience=int(params.get("patience", 3)), restore_best_weights=True))
    # Targets and weights as lists in the model's output order: Keras 3 resolves a per-output
    # sample_weight by the outputs' (list) positions, which a dict of targets does not match.
    outputs = list(model.output_names)
    targets = {"response": y_train, "revenue": rev_train}
    valid_targets = {"response": f32(y_valid), "revenue": f32(rev_valid)}
    valid = (x_valid, [valid_targets[n] for n in outputs])
    if w_valid is not None:
        valid += ([f32(w_valid)] * len(outputs),)
    return model.fit(
        x_train, [targets[n] for n in outputs],
        sample_weight=None if w_train is None else [w_train] * len(outputs),
        validation_data=valid,
        epochs=int(params.get("epochs", 20)),
        batch_size=int(params.get("batch_size", 512)),
        validation_batch_size=4096,   # inference only: larger batches, same result, half the time
        callbacks=callbacks,
        shuffle="batch" if shuffle == "batches" else True,
        verbose=int(params.get("verbose", 0)),
    )


def predict(model, inputs: dict, batch_size: int = 4096):
    """(response probability, revenue / revenue_scale) as float64 vectors for encoded inputs; only
    the inputs the model declares are passed (older models take fewer sequence channels)."""
    import numpy as np

    from campaignops.models.inputs import select_inputs

    response, revenue = model.predict(select_inputs(model, inputs), batch_size=batch_size, verbose=0)
    return response[:, 0].astype(np.float64), revenue[:, 0].astype(np.float64)
