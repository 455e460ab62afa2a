"""Profile snapshots (profile.parquet, profile_prev.parquet): every user's profile as of a time
with readable tags (segment, top interest tags, activity level, preferred channel), and the
streamed comparison of the current snapshot with the previous one (meta.json profile_diff,
segments.json).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from campaignops.pipelines.profiles import RATE_PRIOR, affinity_columns
from campaignops.pipelines.sequences import SEQ_CHANNELS
from campaignops.validation.contract import CHANNELS


def tag_snapshot(s: pa.Table, vocab: dict, fit: dict, as_of: str) -> pa.Table:
    """Profile snapshot rows: user pseudonym, as_of, numeric profile, and readable tags."""
    s = s.rename_columns(["user_id" if c == "user_key" else c for c in s.column_names])
    n = s.num_rows
    names = np.asarray(fit["segments"]["names"], dtype=object)
    seg_cols = [f"segment_{i}" for i in range(len(names))]
    seg = np.stack([s.column(c).to_numpy() for c in seg_cols], 1).argmax(1) if n else np.zeros(0, int)
    cats = vocab["categories"]
    aff = np.stack([s.column(c).to_numpy() for c in affinity_columns(len(cats))], 1) if n and cats \
        else np.zeros((n, 0))
    top = np.argsort(-aff, axis=1, kind="stable")[:, :3] if aff.shape[1] else np.zeros((n, 0), int)
    keep = np.take_along_axis(aff, top, 1) > 0.1  # row-major: each row's tags stay in rank order
    offsets = np.concatenate([[0], np.cumsum(keep.sum(1))]).astype(np.int32)
    tags = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                    pa.array(np.asarray(cats, dtype=object)[top[keep]], pa.string()))
    act = s.column("activity_rate").to_numpy()
    level = np.asarray(["low", "medium", "high"], dtype=object)[np.searchsorted(fit["activity_edges"], act, side="right")]
    rates = np.stack([s.column(f"resp_rate_{c}").to_numpy() for c in CHANNELS], 1) if n else np.zeros((0, len(CHANNELS)))
    prior = RATE_PRIOR[0] / sum(RATE_PRIOR)
    best = rates.argmax(1) if n else np.zeros(0, int)
    pref = np.where(np.abs(rates[np.arange(n), best] - prior) > 1e-12, np.asarray(CHANNELS, dtype=object)[best], None)
    s = s.drop_columns([c for c in SEQ_CHANNELS if c in s.column_names])
    s = s.add_column(1, "as_of", pa.array([as_of] * n, pa.string()))
    s = s.append_column("segment", pa.array(names[seg] if n else [], pa.string()))
    s = s.append_column("interest_tags", tags)
    s = s.append_column("activity_level", pa.array(level, pa.string()))
    return s.append_column("preferred_channel", pa.array(pref, pa.string()))


def _first_tags(snapshot: pa.Table) -> np.ndarray:
    """Each row's first interest tag (None when it has none)."""
    tags = snapshot.column("interest_tags").combine_chunks()
    if isinstance(tags, pa.ChunkedArray):
        tags = pa.array([], tags.type)
    off = tags.offsets.to_numpy().astype(np.int64)
    values = tags.flatten().to_numpy(zero_copy_only=False)
    first = np.full(len(tags), None, dtype=object)
    has = np.diff(off) > 0
    first[has] = values[off[:-1][has] - off[0]]
    return first


class SnapshotDiff:
    """Streams the comparison of the current profile with the previous one (rows align: same
    users, same order) into the meta diff summary and segments.json."""

    def __init__(self, vocab: dict, window: int):
        self.n = 0
        self.abs_change: dict[str, float] = {}
        self.transitions: dict[str, int] = {}
        self.seg_changed = 0
        self.interest_changed = 0
        self.seg_now: dict[str, dict] = {}
        self.seg_prev: dict[str, int] = {}

    def add(self, now: pa.Table, prev: pa.Table, fit: dict) -> None:
        if not now.num_rows:
            return
        numeric = [c for c, t in zip(now.column_names, now.schema.types) if pa.types.is_floating(t)]
        for c in numeric:
            d = np.abs(now.column(c).to_numpy() - prev.column(c).to_numpy())
            self.abs_change[c] = self.abs_change.get(c, 0.0) + float(np.nansum(d))
        names = list(fit["segments"]["names"])
        code = {name: i for i, name in enumerate(names)}
        a = now.column("segment").to_numpy(zero_copy_only=False)
        b = prev.column("segment").to_numpy(zero_copy_only=False)
        ia, ib = (np.fromiter((code[v] for v in x), np.int64, len(x)) for x in (a, b))
        pairs, cnt = np.unique(ib * len(names) + ia, return_counts=True)
        for pair, k in zip(pairs, cnt):
            pb, pa_ = names[pair // len(names)], names[pair % len(names)]
            if pb != pa_:
                key = f"{pb} -> {pa_}"
                self.transitions[key] = self.transitions.get(key, 0) + int(k)
        self.seg_changed += int((ia != ib).sum())
        self.interest_changed += int((_first_tags(now) != _first_tags(prev)).sum())
        self.n += now.num_rows
        for name in np.unique(a):
            m = a == name
            acc = self.seg_now.setdefault(name, {"users": 0, "sums": {}})
            acc["users"] += int(m.sum())
            for c in ("activity_rate", "log_monetary", "price_sensitivity", "rfm_r", "rfm_f", "rfm_m",
                      "days_since_last_event", "resp_rate_discount"):
                acc["sums"][c] = acc["sums"].get(c, 0.0) + float(now.column(c).to_numpy()[m].sum())
        for name, k in zip(*np.unique(b, return_counts=True)):
            self.seg_prev[name] = self.seg_prev.get(name, 0) + int(k)

    def summary(self) -> dict:
        n = max(self.n, 1)
        return {"users": self.n,
                "mean_abs_change": {c: v / n for c, v in sorted(self.abs_change.items())},
                "segment_changed_share": self.seg_changed / n,
                "top_interest_changed_share": self.interest_changed / n,
                "segment_transitions": dict(sorted(self.transitions.items(), key=lambda kv: (-kv[1], kv[0]))[:30])}

    def segments_summary(self, fit: dict, now_ts: str, prev_ts: str) -> dict:
        n = max(self.n, 1)
        segs = []
        for i, name in enumerate(fit["segments"]["names"]):
            acc = self.seg_now.get(name, {"users": 0, "sums": {}})
            segs.append({"id": i, "name": name, "centroid": fit["segments"]["centroid_units"][i],
                         "users": acc["users"], "share": acc["users"] / n,
                         "users_prev": self.seg_prev.get(name, 0), "share_prev": self.seg_prev.get(name, 0) / n,
                         "mean": {c: v / max(acc["users"], 1) for c, v in sorted(acc["sums"].items())}})
        return {"as_of": now_ts, "prev_as_of": prev_ts, "fit_as_of": fit["fit_as_of"],
                "fit_users": fit["fit_users"], "rfm_edges": fit["rfm_edges"], "segments": segs,
                "method": "k-means on standardized log1p(recency days, purchases, monetary, events) in the profile "
                          "window, fitted on a user sample strictly before fit_as_of"}
