"""Behaviour sequences: the event vocabulary, every event's packed step token (event type ×
category, time-gap bucket, price bucket) in the prepared TEMP TABLE `_ev`, and each point's
left-padded slice of the user's steps (the seq_tokens / seq_gap / seq_price channels).

`_ev` also carries what the profile aggregates read (type index, fixed-point price, interest
affinity weight, rank k per user): pipelines/profiles.py computes both from it in one query.
"""
from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from campaignops.validation.contract import EVENT_TYPES

AFFINITY_WEIGHTS = {"browse": 1.0, "cart": 2.0, "purchase": 4.0, "review": 1.0}  # interest affinity per event type
MAX_BUCKETS = 15  # gap / price buckets are packed into 4 bits each
SEQ_CHANNELS = ("seq_tokens", "seq_gap", "seq_price")


def vocabulary(con: duckdb.DuckDBPyConnection) -> dict:
    """Token vocabulary: event types × (sorted known categories + one out-of-vocabulary slot)."""
    cats = [r[0] for r in con.sql("SELECT DISTINCT category FROM events ORDER BY 1").fetchall()]
    return {"event_types": list(EVENT_TYPES), "categories": cats}


def _bucket_case(expr: str, edges: list[float], first: int) -> str:
    """first + number of edges <= expr (edges ascending)."""
    if not edges:
        return str(first)
    return f"({first} + " + " + ".join(f"({expr} >= {float(e)!r})::INTEGER" for e in edges) + ")"


def vocabulary_tables(con: duckdb.DuckDBPyConnection, vocab: dict) -> None:
    """TEMP TABLEs _cats (category → index) and _types (event type → index, affinity weight)."""
    con.execute("CREATE OR REPLACE TEMP TABLE _cats AS SELECT unnest($1::VARCHAR[]) AS category, "
                "generate_subscripts($1::VARCHAR[], 1) - 1 AS cat_idx", [vocab["categories"]])
    con.execute("CREATE OR REPLACE TEMP TABLE _types AS SELECT unnest($1::VARCHAR[]) AS event_type, "
                "generate_subscripts($1::VARCHAR[], 1) - 1 AS type_idx, unnest($2::DOUBLE[]) AS aff_w",
                [vocab["event_types"], [AFFINITY_WEIGHTS.get(t, 1.0) for t in vocab["event_types"]]])


def indexed_events(source: str, vocab: dict) -> str:
    """The `source` events with type and category as indices (needs vocabulary_tables): unknown
    event types are dropped, unknown categories take the out-of-vocabulary slot."""
    return f"""SELECT s.user_id, s.event_id, s.ts, s.price, t.type_idx,
               coalesce(c.cat_idx, {len(vocab["categories"])}) AS cat_idx
      FROM {source} s JOIN _types t USING (event_type) LEFT JOIN _cats c USING (category)"""


def prepare_events(con: duckdb.DuckDBPyConnection, source: str, vocab: dict, fit: dict, indexed: bool = False) -> None:
    """TEMP TABLE _ev from the `source` events relation (raw, or already indexed_events()): per
    event its packed token ((type × category token) << 8 | gap bucket << 4 | price bucket), its
    rank k per user, its type index, fixed-point price and affinity weight. Gap = time since the
    user's previous event (bucket 1: none)."""
    n_cat = len(vocab["categories"]) + 1
    vocabulary_tables(con, vocab)
    source = source if indexed else f"({indexed_events(source, vocab)})"
    gap = _bucket_case("date_diff('second', prev_ts, ts) / 3600.0", fit["gap_edges_hours"], 2)
    price = _bucket_case("price", fit["price_edges"], 1)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _ev AS
      WITH e AS (
        SELECT s.user_id, s.ts, s.price, s.type_idx, t.aff_w, s.cat_idx,
               row_number() OVER w AS k, lag(s.ts) OVER w AS prev_ts
        FROM {source} s JOIN _types t USING (type_idx)
        WINDOW w AS (PARTITION BY s.user_id ORDER BY s.ts, s.event_id)
      )
      SELECT user_id, ts, price, round(price * 1e4)::BIGINT AS pc, type_idx, cat_idx, aff_w, k,
             ((1 + type_idx * {n_cat} + cat_idx) * 256
              + (CASE WHEN prev_ts IS NULL THEN 1 ELSE {gap} END) * 16 + {price})::INTEGER AS packed
      FROM e""")


def gather_sequences(events: np.ndarray, end: np.ndarray, length: np.ndarray, seq_len: int) -> np.ndarray:
    """[n, seq_len] left-padded with 0: row r holds events[end[r] - length[r]:end[r]] (oldest→newest)."""
    end, length = end.astype(np.int64), length.astype(np.int64)
    n = len(end)
    cum = np.cumsum(length)
    i = np.arange(int(cum[-1]) if n else 0, dtype=np.int64)
    out = np.zeros(n * seq_len, dtype=np.int32)
    out[i + np.repeat(np.arange(1, n + 1, dtype=np.int64) * seq_len - cum, length)] = events[i + np.repeat(end - cum, length)]
    return out.reshape(n, seq_len)


def packed_steps(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """Every `_ev` step's packed token in (user, k) order, and TEMP TABLE _uoff (user_id → offset
    of the user's first step in it): a point's sequence is a contiguous slice, ending at
    off + k of its last step before the point (the `_seq_end` / `_seq_len` columns)."""
    con.execute("CREATE OR REPLACE TEMP TABLE _uoff AS SELECT user_id, (sum(n) OVER (ORDER BY user_id) - n)::BIGINT AS off "
                "FROM (SELECT user_id, count(*) AS n FROM _ev GROUP BY user_id)")
    pos = con.sql("SELECT o.off + e.k - 1 AS pos, e.packed FROM _ev e JOIN _uoff o USING (user_id)").fetchnumpy()
    steps = np.zeros(len(pos["pos"]), np.int32)
    steps[pos["pos"]] = pos["packed"]
    return steps


def attach_sequences(table: pa.Table, steps: np.ndarray, seq_len: int) -> pa.Table:
    """The table with its `_seq_end` / `_seq_len` columns replaced, in place, by the three
    sequence channels of length seq_len (unpacked from the slices of `steps`)."""
    idx = table.schema.get_field_index("_seq_end")
    packed = gather_sequences(steps, table.column("_seq_end").to_numpy(), table.column("_seq_len").to_numpy(),
                              seq_len).ravel()
    table = table.remove_column(idx + 1).remove_column(idx)
    for name, values in (("seq_price", packed & 15), ("seq_gap", (packed >> 4) & 15), ("seq_tokens", packed >> 8)):
        table = table.add_column(idx, name, pa.FixedSizeListArray.from_arrays(pa.array(values, pa.int32()), seq_len))
    return table
