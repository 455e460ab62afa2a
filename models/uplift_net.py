"""The campaign response network: a GRU encoder over the behaviour sequence, joined with the
user profile and the candidate arm's attributes, with response and revenue heads.
Scoring one user under every arm (control included) gives per-variant uplift."""
from __future__ import annotations


def build_model(meta: dict, params: dict, n_profile: int, n_variant: int):
    import keras
    from keras import layers

    n_cat = len(meta["vocab"]["categories"]) + 1
    vocab_size = 1 + len(meta["vocab"]["event_types"]) * n_cat
    seq_in = keras.Input((meta["seq_len"],), dtype="int32", name="seq")
    profile_in = keras.Input((n_profile,), name="profile")
    variant_in = keras.Input((n_variant,), name="variant")

    emb = layers.Embedding(vocab_size, params["embed_dim"], mask_zero=True, name="token_embedding")(seq_in)
    seq_vec = layers.GRU(params["gru_units"], name="sequence_encoder")(emb)
    profile = layers.Normalization(name="profile_norm")(profile_in)
    user = layers.Concatenate(name="user")([seq_vec, profile])
    user = layers.Dense(params["dense_units"][0], activation="relu", name="user_dense")(user)
    # Explicit user × arm interaction so uplift can differ by user, plus the plain concat.
    arm = layers.Dense(params["dense_units"][0], activation="relu", name="arm_dense")(variant_in)
    x = layers.Concatenate()([user, arm, layers.Multiply(name="user_x_arm")([user, arm])])
    for i, units in enumerate(params["dense_units"]):
        x = layers.Dense(units, activation="relu", name=f"head_dense_{i}")(x)
        x = layers.Dropout(params["dropout"])(x)
    response = layers.Dense(1, activation="sigmoid", name="response")(x)
    revenue = layers.Dense(1, activation="softplus", name="revenue")(x)
    model = keras.Model([seq_in, profile_in, variant_in], [response, revenue], name="campaign_response")
    model.compile(
        optimizer=keras.optimizers.Adam(params["learning_rate"]),
        loss={"response": "binary_crossentropy", "revenue": "mse"},
        loss_weights={"response": 1.0, "revenue": 0.01},
        metrics={"response": [keras.metrics.AUC(name="auc")]},
    )
    return model
