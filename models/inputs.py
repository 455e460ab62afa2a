"""Turns feature frames (one row per user × arm) into the model's numeric input tensors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

RECENT = 10  # events counted as "recent" for the target-category affinity cross feature


def _column(frame, name: str) -> np.ndarray:
    if isinstance(frame, pa.Table):
        col = frame.column(name)
        if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
            return np.asarray(col.combine_chunks().flatten().to_numpy(zero_copy_only=False))
        return col.to_numpy(zero_copy_only=False)
    if name.startswith("seq_"):  # per-step list columns
        return np.concatenate([np.asarray(v) for v in frame[name].to_numpy()]) if len(frame) else np.zeros(0)
    return frame[name].to_numpy()


def variant_dim(meta: dict) -> int:
    return 1 + len(meta["campaign_types"]) + 1 + len(meta["channels"]) + 1 + 2


def seq_channel_sizes(meta: dict) -> dict[str, int]:
    """Extra per-step sequence channels the features step wrote (name -> vocabulary size incl. 0 = pad)."""
    return {name: int(spec["size"]) for name, spec in sorted(meta.get("seq_channels", {}).items())}


def select_inputs(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The subset of `inputs` a Keras model declares (older models take fewer channels)."""
    return {t.name: inputs[t.name] for t in model.inputs}


def encode(frame: pa.Table | pd.DataFrame, meta: dict) -> dict[str, np.ndarray]:
    """Return {"seq", "seq_pos", <seq channels>, "profile", "variant"} arrays for a frame of
    user × arm rows. seq_pos is the slot index 1..K of real steps (K = the most recent), 0 on padding."""
    n = frame.num_rows if isinstance(frame, pa.Table) else len(frame)
    seq_len = meta["seq_len"]
    seq = _column(frame, "seq_tokens").astype(np.int32).reshape(n, seq_len)
    seq_extra = {name: _column(frame, name).astype(np.int32).reshape(n, seq_len) for name in seq_channel_sizes(meta)}
    seq_pos = np.where(seq > 0, np.arange(1, seq_len + 1, dtype=np.int32)[None, :], 0).astype(np.int32)
    profile = np.stack([_column(frame, c).astype(np.float32) for c in meta["profile_cols"]], axis=1) \
        if n else np.zeros((0, len(meta["profile_cols"])), np.float32)

    types, channels = np.asarray(_column(frame, "type"), dtype=object), np.asarray(_column(frame, "channel"), dtype=object)
    parts = [_column(frame, "is_control").astype(np.float32)[:, None]]
    parts += [(types == t).astype(np.float32)[:, None] for t in meta["campaign_types"]]
    parts.append(_column(frame, "discount_rate").astype(np.float32)[:, None])
    parts += [(channels == c).astype(np.float32)[:, None] for c in meta["channels"]]
    parts.append(_column(frame, "cost_per_send").astype(np.float32)[:, None])
    parts += list(target_affinity(seq, np.asarray(_column(frame, "target_category"), dtype=object), meta).T[:, :, None])
    variant = np.concatenate(parts, axis=1) if n else np.zeros((0, variant_dim(meta)), np.float32)
    return {"seq": seq, "seq_pos": seq_pos, **seq_extra, "profile": profile, "variant": variant}


def target_affinity(seq: np.ndarray, target_category: np.ndarray, meta: dict) -> np.ndarray:
    """Share of the user's events (all K, and the last RECENT) in each row's target category."""
    cats = meta["vocab"]["categories"]
    n_cat = len(cats) + 1
    index = {c: i for i, c in enumerate(cats)}
    target = np.array([index.get(c, -2) for c in target_category], dtype=np.int64)
    valid = seq > 0
    cat_of = np.where(valid, (seq - 1) % n_cat, -1)
    hit = (cat_of == target[:, None]) & valid
    share_all = hit.sum(1) / np.maximum(valid.sum(1), 1)
    recent_hit, recent_valid = hit[:, -RECENT:], valid[:, -RECENT:]
    share_recent = recent_hit.sum(1) / np.maximum(recent_valid.sum(1), 1)
    return np.stack([share_all, share_recent], axis=1).astype(np.float32)
