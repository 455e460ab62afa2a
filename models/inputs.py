"""Turns feature frames (one row per user × arm) into the model's numeric input tensors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

RECENT = 10  # events counted as "recent" for the target-category affinity cross feature


def _column(frame, name: str) -> np.ndarray:
    if isinstance(frame, dict):
        return np.asarray(frame[name])
    if isinstance(frame, pa.Table):
        col = frame.column(name)
        if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
            return np.asarray(col.combine_chunks().flatten().to_numpy(zero_copy_only=False))
        return col.to_numpy(zero_copy_only=False)
    if name.startswith("seq_"):  # per-step list columns
        return np.concatenate([np.asarray(v) for v in frame[name].to_numpy()]) if len(frame) else np.zeros(0)
    return frame[name].to_numpy()


def variant_dim(meta: dict) -> int:
    return (1 + len(meta["campaign_types"]) + 1 + len(meta["channels"]) + 1 + 2 + len(history_crosses(meta))
            + len(meta.get("arm_targets", [])))


def arm_target_vocabulary(arms: pa.Table) -> list[str]:
    """The target categories of the treatment arms known at training time (the model's arm-target
    one-hot): arms that differ only in what they promote (e.g. men's vs women's e-mail) stay
    distinguishable even when no behaviour events exist to compute interest crosses from."""
    values = arms.filter(pa.compute.equal(arms.column("is_control"), 0)).column("target_category").to_pylist()
    return sorted({v for v in values if v not in (None, "", "none")})


DISCOUNT_TYPES = ("discount", "coupon")   # the profile's resp_rate_discount covers these; resp_rate_other the rest


def history_crosses(meta: dict) -> list[str]:
    """User × candidate cross features the profile allows: the user's past response rate on the
    arm's channel and on its type family, the user's decayed interest in its target category, and
    the arm's discount depth times the user's usual price level (a discount means more to a user
    who shops cheap; the network can shift it: a·dr·level + b·dr = dr·(a·level + b))."""
    cols = set(meta["profile_cols"])
    out = []
    if all(f"resp_rate_{c}" in cols for c in meta["channels"]):
        out.append("resp_rate_arm_channel")
    if {"resp_rate_discount", "resp_rate_other"} <= cols:
        out.append("resp_rate_arm_type")
    if all(f"affinity_{i:02d}" in cols for i in range(len(meta["vocab"]["categories"]))):
        out.append("interest_arm_target")
    if "log_avg_price" in cols:
        out.append("discount_x_price_level")
    return out


def _history_cross_values(frame, meta: dict, types: np.ndarray, channels: np.ndarray,
                          target_category: np.ndarray, is_control: np.ndarray) -> list[np.ndarray]:
    n = len(types)
    out = []
    for name in history_crosses(meta):
        v = np.zeros(n, np.float32)
        if name == "resp_rate_arm_channel":
            for c in meta["channels"]:
                m = channels == c
                v[m] = _column(frame, f"resp_rate_{c}")[m]
        elif name == "resp_rate_arm_type":
            disc = np.isin(types, DISCOUNT_TYPES)
            v = np.where(disc, _column(frame, "resp_rate_discount"), _column(frame, "resp_rate_other")).astype(np.float32)
        elif name == "discount_x_price_level":
            v = (_column(frame, "discount_rate") * _column(frame, "log_avg_price")).astype(np.float32)
        else:
            for i, c in enumerate(meta["vocab"]["categories"]):
                m = target_category == c
                v[m] = _column(frame, f"affinity_{i:02d}")[m]
        out.append(np.where(is_control > 0, 0.0, v).astype(np.float32)[:, None])
    return out


def seq_channel_sizes(meta: dict) -> dict[str, int]:
    """Extra per-step sequence channels the features step wrote (name -> vocabulary size incl. 0 = pad)."""
    return {name: int(spec["size"]) for name, spec in sorted(meta.get("seq_channels", {}).items())}


def select_inputs(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The subset of `inputs` a Keras model declares (older models take fewer channels)."""
    return {t.name: inputs[t.name] for t in model.inputs}


def encode(frame: pa.Table | pd.DataFrame, meta: dict) -> dict[str, np.ndarray]:
    """Return {"seq", "seq_pos", <seq channels>, "profile", "variant"} arrays for a frame of
    user × arm rows. seq_pos is the slot index 1..K of real steps (K = the most recent), 0 on padding."""
    user = encode_user(frame, meta)
    return {**user, "variant": encode_variant(frame, meta, user["seq"])}


def encode_user(frame: pa.Table | pd.DataFrame, meta: dict) -> dict[str, np.ndarray]:
    """The user part of the inputs ({"seq", "seq_pos", <seq channels>, "profile"}) of a frame's rows."""
    n = frame.num_rows if isinstance(frame, pa.Table) else len(frame)
    seq_len = meta["seq_len"]
    seq = _column(frame, "seq_tokens").astype(np.int32).reshape(n, seq_len)
    seq_extra = {name: _column(frame, name).astype(np.int32).reshape(n, seq_len) for name in seq_channel_sizes(meta)}
    seq_pos = np.where(seq > 0, np.arange(1, seq_len + 1, dtype=np.int32)[None, :], 0).astype(np.int32)
    profile = np.stack([_column(frame, c).astype(np.float32) for c in meta["profile_cols"]], axis=1) \
        if n and meta["profile_cols"] else np.zeros((n, len(meta["profile_cols"])), np.float32)
    return {"seq": seq, "seq_pos": seq_pos, **seq_extra, "profile": profile}


def encode_variant(frame, meta: dict, seq: np.ndarray) -> np.ndarray:
    """The "variant" input [rows, variant_dim]: the arm's attributes and the user × arm crosses.
    `frame` has the arm columns (ARM_COLUMNS) and the profile columns the crosses read."""
    n = len(seq)
    types, channels = np.asarray(_column(frame, "type"), dtype=object), np.asarray(_column(frame, "channel"), dtype=object)
    parts = [_column(frame, "is_control").astype(np.float32)[:, None]]
    parts += [(types == t).astype(np.float32)[:, None] for t in meta["campaign_types"]]
    parts.append(_column(frame, "discount_rate").astype(np.float32)[:, None])
    parts += [(channels == c).astype(np.float32)[:, None] for c in meta["channels"]]
    parts.append(_column(frame, "cost_per_send").astype(np.float32)[:, None])
    targets = np.asarray(_column(frame, "target_category"), dtype=object)
    parts += list(target_affinity(seq, targets, meta).T[:, :, None])
    parts += _history_cross_values(frame, meta, types, channels, targets, parts[0][:, 0])
    parts += [(targets == t).astype(np.float32)[:, None] for t in meta.get("arm_targets", [])]
    return np.concatenate(parts, axis=1) if n else np.zeros((0, variant_dim(meta)), np.float32)


ARM_COLUMNS = ("is_control", "type", "discount_rate", "channel", "target_category", "cost_per_send")


def encode_arms(users: pa.Table, arms: list[dict], meta: dict, seq: np.ndarray) -> np.ndarray:
    """The "variant" input of every user under every arm, [users, arms, variant_dim]: what
    encode() gives for the user × arm rows, without repeating the users' sequences per arm.

    An arm's own columns are the same for every user: encode_variant of the arm on one row, then
    broadcast. Only the user × arm columns (target affinity, history crosses; after the arm's own
    columns, before the arm-target one-hot) are computed per user, with the arm's values as
    scalars and the same arithmetic as encode_variant (equal bit for bit: tests/models/test_split.py),
    the sequence's categories and each profile column computed once for all arms."""
    n = users.num_rows
    dim = variant_dim(meta)
    if not arms:
        return np.zeros((n, 0, dim), np.float32)
    crosses = history_crosses(meta)
    at = dim - len(meta.get("arm_targets", [])) - len(crosses) - 2     # target affinity, then the crosses
    cache: dict[str, np.ndarray] = {}

    def column(name: str) -> np.ndarray:   # profile columns, read once for all arms
        if name not in cache:
            cache[name] = _column(users, name)
        return cache[name]

    cat_of, valid = event_categories(seq, meta)
    index = {c: i for i, c in enumerate(meta["vocab"]["categories"])}
    out = np.empty((n, len(arms), dim), np.float32)
    for j, arm in enumerate(arms):
        value = {c: np.asarray(arm[c], dtype=object if isinstance(arm[c], str) else np.float64)
                 for c in ARM_COLUMNS}
        one = {c: v[None] for c, v in value.items()}
        one.update({c: np.zeros(1) for c in meta["profile_cols"]})
        out[:, j] = encode_variant(one, meta, np.zeros((1, seq.shape[1]), seq.dtype))[0]
        out[:, j, at:at + 2] = category_shares((cat_of == index.get(arm["target_category"], -2)) & valid, valid)
        for k, name in enumerate(crosses):
            out[:, j, at + 2 + k] = 0.0 if value["is_control"] > 0 else _arm_cross(name, arm, column, meta)
    return out


def _arm_cross(name: str, arm: dict, column, meta: dict) -> np.ndarray | float:
    """One history cross (_history_cross_values) of every user under one treatment arm."""
    if name == "resp_rate_arm_channel":
        if arm["channel"] not in meta["channels"]:
            return 0.0
        return column(f"resp_rate_{arm['channel']}").astype(np.float32)
    if name == "resp_rate_arm_type":
        disc = arm["type"] in DISCOUNT_TYPES
        return column("resp_rate_discount" if disc else "resp_rate_other").astype(np.float32)
    if name == "discount_x_price_level":
        return (np.asarray(arm["discount_rate"], dtype=np.float64) * column("log_avg_price")).astype(np.float32)
    cats = meta["vocab"]["categories"]
    if arm["target_category"] in cats:
        return column(f"affinity_{cats.index(arm['target_category']):02d}").astype(np.float32)
    return 0.0


def target_affinity(seq: np.ndarray, target_category: np.ndarray, meta: dict) -> np.ndarray:
    """Share of the user's events (all K, and the last RECENT) in each row's target category."""
    index = {c: i for i, c in enumerate(meta["vocab"]["categories"])}
    target = np.array([index.get(c, -2) for c in target_category], dtype=np.int64)
    cat_of, valid = event_categories(seq, meta)
    return category_shares((cat_of == target[:, None]) & valid, valid)


def event_categories(seq: np.ndarray, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """(category index of each step, -1 on padding; the real-step mask) of token sequences."""
    n_cat = len(meta["vocab"]["categories"]) + 1
    valid = seq > 0
    return np.where(valid, (seq - 1) % n_cat, -1), valid


def category_shares(hit: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[rows, 2]: the share of real steps that `hit`, over all steps and over the last RECENT."""
    share_all = hit.sum(1) / np.maximum(valid.sum(1), 1)
    share_recent = hit[:, -RECENT:].sum(1) / np.maximum(valid[:, -RECENT:].sum(1), 1)
    return np.stack([share_all, share_recent], axis=1).astype(np.float32)
