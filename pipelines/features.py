"""Builds point-in-time model features: behaviour sequences, user profiles and campaign/variant
attributes for each exposure (training) or for every user at a cut-off (scoring).

Every feature of a point (an exposure, or a user at a cut-off) uses only data known at the point's
time: events strictly before it, past campaigns that had *ended* before it, and user attributes
with as_of <= it (a value as of `as_of` is known from then on, pipelines/attributes.py).
Population-level definitions (price buckets, RFM score edges, segment centroids, activity tiers)
are fitted once on data strictly before the earliest exposure (`profile_fit.fit_as_of`; the
attribute columns on rows with as_of <= it), stored in meta.json and reused unchanged at scoring
time.

Persisted outputs carry pseudonymous ids only (pipelines/privacy.py). The work is done by DuckDB in
chunks of users (contiguous ranges of the user pseudonym), so memory is bounded by the chunk size
and the output order (user pseudonym, exposure pseudonym) does not depend on the number of chunks.
Events and ground truth are split by chunk in one streamed pass each; every output, truth included,
is appended chunk by chunk (a background thread writes while the next chunk is computed).
"""
from __future__ import annotations

import json
import math
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import attributes, layout, privacy
from campaignops.pipelines.storage import ObjectStore, atomic_dir, sha256_file
from campaignops.validation.contract import CAMPAIGN_TYPES, CHANNELS, CONTROL, EVENT_TYPES, GENDERS

PROFILE_COLS = (
    "n_browse",
    "n_cart",
    "n_purchase",
    "n_review",
    "log_avg_price",
    "log_min_price",
    "days_since_last_event",
    "days_since_last_purchase",
    "cart_to_purchase",
    "n_past_exposures",
    "n_past_responses",
    "age_bucket",
    *(f"gender_{g}" for g in GENDERS),
)
# Per-user profile columns added by issue 5 (all numeric, all point-in-time).
USER_PROFILE_COLS = (
    "log_monetary",             # ln(1 + purchase value in the window)
    "price_sensitivity",        # ln((1 + avg purchase price) / (1 + avg browsed price)); < 0: buys cheaper
    "activity_rate",            # ln(1 + events per week since the first event in the window)
    "days_since_last_exposure",  # to a past (ended) campaign, /window, capped at 1
    "resp_rate_discount",       # smoothed response rate to past discount/coupon arms
    "resp_rate_other",          # ... to other treatment arms
    *(f"resp_rate_{c}" for c in CHANNELS),  # ... by channel (the only per-user channel signal)
    "rfm_r", "rfm_f", "rfm_m",  # quintile scores in {0, .2, ..., 1} (0: no purchase)
)
ARM_COLS = ("campaign_id", "variant_id", "is_control", "type", "discount_rate", "channel",
            "target_category", "cost_per_send")
AFFINITY_WEIGHTS = {"browse": 1.0, "cart": 2.0, "purchase": 4.0, "review": 1.0}
DISCOUNT_TYPES = ("discount", "coupon")
RATE_PRIOR = (1.0, 19.0)  # Beta prior of smoothed response rates (mean 0.05)
RFM_QUANTILES = (0.2, 0.4, 0.6, 0.8)
SEGMENT_FEATURES = ("recency_days", "purchases", "monetary", "events")
RAW_COLS = ("_recency_days", "_purchases", "_monetary", "_events")  # internal, never persisted
FIT_USERS = 50_000  # users the RFM edges / activity tiers are fitted on
SEGMENT_FIT_ROWS = 20_000  # users the k-means is fitted on (a uniform sample: rows are in pseudonym order)
MAX_BUCKETS = 15  # gap / price buckets are packed into 4 bits each
SCORING_CHUNK_USERS = 200_000  # users per scoring chunk (bounds DuckDB's working set, not the output)


def vocabulary(con: duckdb.DuckDBPyConnection) -> dict:
    """Token vocabulary: event types × (sorted known categories + one out-of-vocabulary slot)."""
    cats = [r[0] for r in con.sql("SELECT DISTINCT category FROM events ORDER BY 1").fetchall()]
    return {"event_types": list(EVENT_TYPES), "categories": cats}


def profile_columns(recent_days: list[int], n_categories: int | None = None, n_segments: int = 0) -> list[str]:
    """Numeric profile columns in model order. Without n_categories: the pre-issue-5 base set."""
    base = [*PROFILE_COLS, *(f"n_events_{d}d" for d in recent_days)]
    if n_categories is None:
        return base
    return [*base, *USER_PROFILE_COLS, *affinity_columns(n_categories), *(f"segment_{i}" for i in range(n_segments))]


def affinity_columns(n_categories: int) -> list[str]:
    return [f"affinity_{i:02d}" for i in range(n_categories)]


def meta_profile_columns(meta: dict) -> list[str]:
    fit = meta.get("profile_fit")
    if not fit:
        return profile_columns(meta["recent_days"])
    return profile_columns(meta["recent_days"], len(meta["vocab"]["categories"]), len(fit["segments"]["names"])) \
        + attributes.columns(fit.get("attributes"))


# --------------------------------------------------------------------------- SQL building blocks

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


def exposure_history(source: str) -> str:
    """Exposures of the `source` relation with their campaign's end and the arm's type/channel:
    the campaign history a point may see (campaigns that ended before it)."""
    return f"""SELECT x.user_id, x.exposure_ts, x.responded, c.end_ts, v.type, v.channel
      FROM {source} x JOIN (SELECT campaign_id, max(end_ts) AS end_ts FROM campaigns GROUP BY 1) c
        ON c.campaign_id = x.campaign_id
      LEFT JOIN campaigns v ON v.campaign_id = x.campaign_id AND v.variant_id = x.variant_id"""


def point_features(con: duckdb.DuckDBPyConnection, points: str, vocab: dict, seq_len: int,
                   window_days: int, recent_days: list[int], fit: dict, keep_point_id: bool = True,
                   order_by: str = "p.point_id", derive: bool = True, sequences: bool = True,
                   as_of: str | None = None, history: str | None = None) -> pa.Table:
    """Features for each row of the `points` relation (point_id, user_id, ts, [carried columns])
    from the prepared `_ev` table, using only data strictly before each point's ts. Without
    `sequences` the seq_* columns are left out (profile snapshots do not persist them). `as_of`
    declares a snapshot: one point per user (point_id = user_id), all at that time, and `_ev`
    holds no other users; its events are then aggregated without a join. `history`: a table of
    exposure_history() rows covering the points' users (default: computed from `exposures`)."""
    n_cat = len(vocab["categories"]) + 1
    t_browse, t_cart, t_purchase, t_review = (vocab["event_types"].index(t) if t in vocab["event_types"] else -1
                                              for t in ("browse", "cart", "purchase", "review"))
    w = int(window_days)
    tau = float(fit["interest_half_life_days"]) / math.log(2) * 86400.0
    recent_sql = "".join(f",\n        ln(1 + count(*) FILTER (WHERE ts >= pts - INTERVAL {int(d)} DAY)) AS n_events_{int(d)}d"
                         for d in recent_days)
    recent_out = "".join(f", coalesce(a.n_events_{int(d)}d, 0) AS n_events_{int(d)}d" for d in recent_days)
    aff_sql = "".join(f",\n        sum(dw) FILTER (WHERE cat_idx = {i}) AS aff_{i}" for i in range(n_cat - 1))
    aff_out = "".join(f", coalesce(a.aff_{i} / nullif(a.aff_total, 0), 0) AS affinity_{i:02d}" for i in range(n_cat - 1))
    a0, b0 = RATE_PRIOR
    disc = ", ".join(f"'{t}'" for t in DISCOUNT_TYPES)
    chan_sql = "".join(f", count(*) FILTER (WHERE x.channel = '{c}') AS e_{c}, "
                       f"coalesce(sum(x.responded) FILTER (WHERE x.channel = '{c}'), 0) AS r_{c}" for c in CHANNELS)
    chan_out = "".join(f", (coalesce(h.r_{c}, 0) + {a0}) / (coalesce(h.e_{c}, 0) + {a0 + b0}) AS resp_rate_{c}"
                       for c in CHANNELS)
    if as_of is None:
        point_id, pts, source = "p.point_id", "p.ts", f"{points} p JOIN _ev e ON e.user_id = p.user_id"
    else:
        point_id, pts, source = "e.user_id AS point_id", f"TIMESTAMP '{as_of}'", "_ev e WHERE true"
    sql = f"""
    WITH j AS (
      SELECT {point_id}, e.type_idx, e.price, e.ts, {pts} AS pts, e.cat_idx, e.k, e.pc,
             round(1e9 * e.aff_w * exp(-date_diff('second', e.ts, {pts}) / {tau}))::BIGINT AS dw
      FROM {source} AND e.ts < {pts} AND e.ts >= {pts} - INTERVAL {w} DAY
    ),
    agg AS (
      SELECT point_id,  -- sums of fixed-point integers: exact, so independent of thread scheduling
        max(k) AS k_last, min(k) AS k_first,
        count(*) AS n_all,
        count(*) FILTER (WHERE type_idx = {t_browse}) AS c_browse,
        count(*) FILTER (WHERE type_idx = {t_cart}) AS c_cart,
        count(*) FILTER (WHERE type_idx = {t_purchase}) AS c_purchase,
        count(*) FILTER (WHERE type_idx = {t_review}) AS c_review,
        sum(pc) / count(*) / 1e4 AS avg_price, min(price) AS min_price,
        sum(pc) FILTER (WHERE type_idx = {t_purchase}) / nullif(count(*) FILTER (WHERE type_idx = {t_purchase}), 0) / 1e4 AS avg_pprice,
        sum(pc) FILTER (WHERE type_idx = {t_browse}) / nullif(count(*) FILTER (WHERE type_idx = {t_browse}), 0) / 1e4 AS avg_bprice,
        sum(pc) FILTER (WHERE type_idx = {t_purchase}) / 1e4 AS monetary,
        date_diff('second', max(ts), any_value(pts)) / 86400.0 AS days_last,
        date_diff('second', max(ts) FILTER (WHERE type_idx = {t_purchase}), any_value(pts)) / 86400.0 AS days_last_p,
        date_diff('second', min(ts), any_value(pts)) / 86400.0 AS days_first,
        sum(dw) AS aff_total{aff_sql}{recent_sql}
      FROM j GROUP BY point_id
    ),
    hist AS (  -- past campaigns whose outcome was known before the point (campaign ended)
      SELECT p.point_id, count(*) AS n_exp, sum(x.responded) AS n_resp,
             date_diff('second', max(x.exposure_ts), any_value(p.ts)) / 86400.0 AS days_last_x,
             count(*) FILTER (WHERE x.type IN ({disc})) AS e_disc,
             coalesce(sum(x.responded) FILTER (WHERE x.type IN ({disc})), 0) AS r_disc,
             count(*) FILTER (WHERE x.type IS NOT NULL AND x.type NOT IN ({disc})) AS e_other,
             coalesce(sum(x.responded) FILTER (WHERE x.type IS NOT NULL AND x.type NOT IN ({disc})), 0) AS r_other
             {chan_sql}
      FROM {points} p
      JOIN {history or f"({exposure_history('exposures')})"} x
        ON x.user_id = p.user_id AND x.exposure_ts < p.ts AND x.end_ts < p.ts
      GROUP BY p.point_id
    )
    SELECT {"p.point_id, " if keep_point_id else ""}p.* EXCLUDE (point_id, user_id, ts),
      {f"coalesce(o.off + a.k_last, 0) AS _seq_end, least(coalesce(a.k_last - a.k_first + 1, 0), {int(seq_len)}) AS _seq_len,"
       if sequences else ""}
      ln(1 + coalesce(a.c_browse, 0)) AS n_browse, ln(1 + coalesce(a.c_cart, 0)) AS n_cart,
      ln(1 + coalesce(a.c_purchase, 0)) AS n_purchase, ln(1 + coalesce(a.c_review, 0)) AS n_review,
      coalesce(ln(1 + a.avg_price), 0) AS log_avg_price, coalesce(ln(1 + a.min_price), 0) AS log_min_price,
      least(coalesce(a.days_last, {w}), {w}) / {w} AS days_since_last_event,
      least(coalesce(a.days_last_p, {w}), {w}) / {w} AS days_since_last_purchase,
      coalesce((a.c_purchase + 1.0) / (a.c_cart + 1.0), 1.0) AS cart_to_purchase,
      ln(1 + coalesce(h.n_exp, 0)) AS n_past_exposures,
      ln(1 + coalesce(h.n_resp, 0)) AS n_past_responses,
      floor(u.age / 10.0) / 10.0 AS age_bucket,
      {", ".join(f"(u.gender = '{g}')::DOUBLE AS gender_{g}" for g in GENDERS)}{recent_out},
      ln(1 + coalesce(a.monetary, 0)) AS log_monetary,
      coalesce(ln((1 + a.avg_pprice) / (1 + a.avg_bprice)), 0) AS price_sensitivity,
      ln(1 + 7.0 * coalesce(a.n_all, 0) / greatest(coalesce(a.days_first, 1), 1)) AS activity_rate,
      least(coalesce(h.days_last_x, {w}), {w}) / {w} AS days_since_last_exposure,
      (coalesce(h.r_disc, 0) + {a0}) / (coalesce(h.e_disc, 0) + {a0 + b0}) AS resp_rate_discount,
      (coalesce(h.r_other, 0) + {a0}) / (coalesce(h.e_other, 0) + {a0 + b0}) AS resp_rate_other{chan_out}{aff_out},
      a.days_last_p AS _recency_days, coalesce(a.c_purchase, 0)::DOUBLE AS _purchases,
      coalesce(a.monetary, 0) AS _monetary, coalesce(a.n_all, 0)::DOUBLE AS _events
    FROM {points} p
    LEFT JOIN agg a USING (point_id)
    LEFT JOIN hist h USING (point_id)
    LEFT JOIN users u ON u.user_id = p.user_id{" LEFT JOIN _uoff o ON o.user_id = p.user_id" if sequences else ""}
    ORDER BY {order_by}
    """
    if sequences:  # every packed event in (user, k) order; a point's sequence is a contiguous slice of it
        con.execute("CREATE OR REPLACE TEMP TABLE _uoff AS SELECT user_id, (sum(n) OVER (ORDER BY user_id) - n)::BIGINT AS off "
                    "FROM (SELECT user_id, count(*) AS n FROM _ev GROUP BY user_id)")
        pos = con.sql("SELECT o.off + e.k - 1 AS pos, e.packed FROM _ev e JOIN _uoff o USING (user_id)").fetchnumpy()
        events = np.zeros(len(pos["pos"]), np.int32)
        events[pos["pos"]] = pos["packed"]
        del pos
    table = con.sql(sql).to_arrow_table()
    if sequences:
        idx = table.schema.get_field_index("_seq_end")
        packed = gather_sequences(events, table.column("_seq_end").to_numpy(), table.column("_seq_len").to_numpy(),
                                  seq_len).ravel()
        table = table.remove_column(idx + 1).remove_column(idx)
        for name, values in (("seq_price", packed & 15), ("seq_gap", (packed >> 4) & 15), ("seq_tokens", packed >> 8)):
            table = table.add_column(idx, name, pa.FixedSizeListArray.from_arrays(pa.array(values, pa.int32()), seq_len))
    if derive:
        table = derive_profile(table, fit, window_days)
    return table


def derive_profile(table: pa.Table, fit: dict, window_days: int) -> pa.Table:
    """Add RFM scores and segment one-hots (fitted definitions) and drop the internal raw columns."""
    raw = _raw_matrix(table, window_days)
    rfm = fit["rfm_edges"]
    has_p = raw[:, 1] > 0
    r = np.where(has_p, 1.0 - np.searchsorted(rfm["recency_days"], raw[:, 0], side="right") / 5.0, 0.0)
    f = np.where(has_p, (np.searchsorted(rfm["purchases"], raw[:, 1], side="right") + 1) / 5.0, 0.0)
    m = np.where(has_p, (np.searchsorted(rfm["monetary"], raw[:, 2], side="right") + 1) / 5.0, 0.0)
    seg = assign_segments(raw, fit["segments"])
    cols = {"rfm_r": r, "rfm_f": np.minimum(f, 1.0), "rfm_m": np.minimum(m, 1.0)}
    for i in range(len(fit["segments"]["names"])):
        cols[f"segment_{i}"] = (seg == i).astype(np.float64)
    for name in RAW_COLS:
        table = table.remove_column(table.schema.get_field_index(name))
    for name, values in cols.items():
        table = table.append_column(name, pa.array(values, pa.float64()))
    return table


def _raw_matrix(table: pa.Table, window_days: int) -> np.ndarray:
    rec = table.column("_recency_days").to_numpy(zero_copy_only=False).astype(np.float64)
    rec = np.where(np.isnan(rec), float(window_days), np.minimum(rec, float(window_days)))
    return np.stack([rec, *(table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                            for c in RAW_COLS[1:])], axis=1)


def _segment_space(raw: np.ndarray, seg: dict) -> np.ndarray:
    return (np.log1p(raw) - np.asarray(seg["mean"])) / np.asarray(seg["std"])


def assign_segments(raw: np.ndarray, seg: dict) -> np.ndarray:
    c = np.asarray(seg["centroids"], dtype=np.float64)
    x = _segment_space(raw, seg)
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1).argmin(1) if len(x) else np.zeros(0, np.int64)


def fit_segments(raw: np.ndarray, k: int, seed: int, window_days: int) -> dict:
    """k-means (k-means++ init, fixed seed) on log1p(recency days, purchases, monetary, events),
    standardized; clusters named by their centroid's recency and value tiers."""
    logs = np.log1p(raw[:SEGMENT_FIT_ROWS]) if len(raw) else np.zeros((1, raw.shape[1]))  # rows: pseudonym order
    mean, std = logs.mean(0), np.maximum(logs.std(0), 1e-6)
    x = (logs - mean) / std
    uniq = np.unique(np.round(x, 9), axis=0)
    k = max(1, min(k, len(uniq)))
    rng = np.random.default_rng(seed)
    cent = [uniq[rng.integers(len(uniq))]]
    for _ in range(1, k):
        d = ((uniq[:, None, :] - np.asarray(cent)[None]) ** 2).sum(-1).min(1)
        cent.append(uniq[rng.choice(len(uniq), p=d / d.sum())] if d.sum() > 0 else uniq[len(cent)])
    cent = np.asarray(cent)
    for _ in range(50):
        lab = ((x[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([x[lab == i].mean(0) if (lab == i).any() else cent[i] for i in range(k)])
        if np.allclose(new, cent):
            break
        cent = new
    # Stable order: by monetary then purchases (ascending), so names/ids do not depend on init.
    units = np.expm1(cent * std + mean)
    order = np.lexsort((units[:, 1], units[:, 2]))
    cent, units = cent[order], units[order]
    names = _segment_names(units, window_days)
    return {"features": list(SEGMENT_FEATURES), "mean": mean.tolist(), "std": std.tolist(),
            "centroids": cent.tolist(), "names": names,
            "centroid_units": [dict(zip(SEGMENT_FEATURES, map(float, u))) for u in units]}


def _segment_names(units: np.ndarray, window_days: int) -> list[str]:
    names = []
    value_rank = np.argsort(np.argsort(units[:, 2]))  # 0 = lowest monetary
    n = len(units)
    for i, (rec, purchases, monetary, events) in enumerate(units):
        if events < 0.5:
            names.append("no_history")
            continue
        if purchases < 0.5:
            rtier = "browsing" if rec >= window_days - 1e-6 else "lapsed"
            names.append(f"{'active' if events >= 5 else 'occasional'}_{rtier}")
            continue
        rtier = "recent" if rec <= window_days / 6 else ("lapsing" if rec <= window_days / 2 else "dormant")
        vtier = "high_value" if value_rank[i] >= n - max(1, n // 3) else ("low_value" if value_rank[i] < max(1, n // 3) else "mid_value")
        names.append(f"{rtier}_{vtier}")
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def fit_rfm(raw: np.ndarray) -> dict:
    buyers = raw[raw[:, 1] > 0]

    def q(col, default):
        return np.quantile(buyers[:, col], RFM_QUANTILES).tolist() if len(buyers) else list(default)

    return {"recency_days": q(0, (3, 7, 14, 30)), "purchases": q(1, (1, 2, 3, 5)), "monetary": q(2, (20, 50, 100, 200)),
            "quantiles": list(RFM_QUANTILES)}


def gather_sequences(events: np.ndarray, end: np.ndarray, length: np.ndarray, seq_len: int) -> np.ndarray:
    """[n, seq_len] left-padded with 0: row r holds events[end[r] - length[r]:end[r]] (oldest→newest)."""
    end, length = end.astype(np.int64), length.astype(np.int64)
    n = len(end)
    cum = np.cumsum(length)
    i = np.arange(int(cum[-1]) if n else 0, dtype=np.int64)
    out = np.zeros(n * seq_len, dtype=np.int32)
    out[i + np.repeat(np.arange(1, n + 1, dtype=np.int64) * seq_len - cum, length)] = events[i + np.repeat(end - cum, length)]
    return out.reshape(n, seq_len)


def campaign_arms(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """One row per arm (control + each variant) of every campaign."""
    return con.sql(f"""
      SELECT campaign_id, variant_id, 0::DOUBLE AS is_control, type, discount_rate, channel,
             target_category, cost_per_send FROM campaigns
      UNION ALL
      SELECT DISTINCT campaign_id, '{CONTROL}', 1.0, 'none', 0.0, 'none', 'none', 0.0 FROM campaigns
      ORDER BY campaign_id, variant_id
    """).to_arrow_table()


def connect(validated_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name in ("users", "events", "campaigns", "exposures"):
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{validated_dir / (name + '.parquet')}')")
    if (validated_dir / f"{attributes.TABLE}.parquet").exists():  # optional raw table
        con.execute(f"CREATE VIEW {attributes.TABLE} AS SELECT * FROM read_parquet('{validated_dir / attributes.TABLE}.parquet')")
    return con


# --------------------------------------------------------------------------- the stage

def _configure(con: duckdb.DuckDBPyConnection, p: dict, tmp: Path) -> None:
    if p.get("memory_limit"):
        con.execute(f"SET memory_limit = '{p['memory_limit']}'")
    if int(p.get("threads") or 0) > 0:
        con.execute(f"SET threads = {int(p['threads'])}")
    con.execute(f"SET temp_directory = '{tmp / 'spill'}'")
    con.execute("SET preserve_insertion_order = false")


def _fit_base(con: duckdb.DuckDBPyConnection, p: dict) -> dict:
    """Definitions fitted before the per-user pass: fit time and price/gap bucket edges."""
    fit_ts = con.execute("SELECT min(exposure_ts) FROM exposures").fetchone()[0]
    if fit_ts is None:
        fit_ts = con.execute("SELECT max(ts) + INTERVAL 1 MILLISECOND FROM events").fetchone()[0]
    qs = [float(q) for q in p.get("price_quantiles", [0.25, 0.5, 0.75])]
    edges = []
    if qs:
        row = con.execute("SELECT quantile_cont(price, $1::DOUBLE[]) FROM events WHERE ts < $2", [qs, fit_ts]).fetchone()[0]
        edges = sorted(set(round(float(e), 6) for e in row)) if row else []
    gap_edges = [float(h) for h in p.get("gap_bucket_hours", [1, 24, 168])]
    if len(edges) + 2 > MAX_BUCKETS or len(gap_edges) + 3 > MAX_BUCKETS:
        raise ValueError(f"at most {MAX_BUCKETS - 3} gap / {MAX_BUCKETS - 2} price bucket edges")
    return {"fit_as_of": fit_ts.isoformat(sep=" "), "price_edges": edges, "gap_edges_hours": sorted(gap_edges),
            "interest_half_life_days": float(p.get("interest_half_life_days", 14))}


def build(settings: Settings, store: ObjectStore | None = None) -> dict:
    """The DVC `features` stage: data/validated → data/features (train/valid/holdout + arms + meta,
    profile / profile_prev snapshots and segments.json), all keyed by pseudonymous ids."""
    ws = settings.workspace
    p = settings.params["features"]
    seq_len, window, recent = int(p["seq_len"]), int(p["profile_window_days"]), list(p["recent_days"])
    raw_manifest = json.loads((ws / layout.RAW_MANIFEST).read_text())
    salt = privacy.id_salt(settings)
    work = Path(tempfile.mkdtemp(prefix="features-"))
    try:
        con = connect(ws / layout.VALIDATED_DIR)
        _configure(con, p, work)
        privacy.bind_salt(con, salt)
        meta = _build(settings, con, p, seq_len, window, recent, raw_manifest, store, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return meta


def _build(settings, con, p, seq_len, window, recent, raw_manifest, store, work):
    ws = settings.workspace
    vocab = vocabulary(con)
    fit = _fit_base(con, p)
    n_cat = len(vocab["categories"])
    now_ts = con.execute("SELECT coalesce(max(start_ts) FILTER (WHERE start_ts >= (SELECT max(ts) FROM events)), "
                     "max(ts) + INTERVAL 1 MILLISECOND) FROM campaigns, events").fetchone()[0] \
        if not raw_manifest.get("now") else raw_manifest["now"]
    now_ts = str(now_ts).replace("T", " ")
    prev_days = int(p.get("profile_refresh_days", 30))
    prev_ts = con.execute(f"SELECT TIMESTAMP '{now_ts}' - INTERVAL {prev_days} DAY").fetchone()[0].isoformat(sep=" ")

    # Pseudonyms and chunk numbers of every user (contiguous pseudonym ranges).
    n_events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    n_chunks = max(1, math.ceil(n_events / int(p.get("chunk_events", 4_000_000))))
    con.execute(f"""CREATE TEMP TABLE ids AS
      SELECT user_id, ukey, {privacy.bucket_sql('ukey', n_chunks)} AS b FROM (
        SELECT user_id, {privacy.pseudonym_sql('user_id', 'u')} AS ukey
        FROM (SELECT user_id FROM users UNION SELECT user_id FROM exposures))""")
    q_train, q_valid = p["split"]["train"], p["split"]["train"] + p["split"]["valid"]
    con.execute(f"""CREATE TEMP TABLE xpts AS
      WITH cut AS (SELECT quantile_disc(exposure_ts, {q_train}) AS t1,
                          quantile_disc(exposure_ts, {q_valid}) AS t2 FROM exposures)
      SELECT row_number() OVER () AS point_id, x.exposure_id AS xid, x.user_id, x.exposure_ts AS ts, i.b,
             {privacy.pseudonym_sql('x.exposure_id', 'x')} AS exposure_id, i.ukey AS user_key,
             x.campaign_id, x.variant_id, x.exposure_ts, x.responded, x.revenue,
             CASE WHEN x.exposure_ts <= cut.t1 THEN 'train'
                  WHEN x.exposure_ts <= cut.t2 THEN 'valid' ELSE 'holdout' END AS split
      FROM exposures x CROSS JOIN cut JOIN ids i USING (user_id)""")
    if n_chunks > 1:  # one pass to split events by chunk (indexed); each chunk then reads only its own part
        vocabulary_tables(con, vocab)
        con.execute(f"""COPY (SELECT e.*, i.b FROM ({indexed_events('events', vocab)}) e JOIN ids i USING (user_id))
                        TO '{work / 'events'}' (FORMAT parquet, PARTITION_BY (b))""")
    truth_src = _stage_truth(settings, store, raw_manifest, work)
    if truth_src and n_chunks > 1:  # truth too, still with raw ids (re-keyed per chunk)
        con.execute(f"""COPY (SELECT t.*, i.b FROM {truth_src} t JOIN ids i USING (user_id))
                        TO '{work / 'truth'}' (FORMAT parquet, PARTITION_BY (b))""")

    # Population definitions (RFM edges, segments, activity tiers) are fitted strictly before
    # fit_as_of on the FIT_USERS users with the smallest pseudonyms: a uniform sample that does
    # not depend on the chunking.
    con.execute(f"""CREATE OR REPLACE TEMP TABLE fpts AS SELECT user_id AS point_id, user_id,
                    TIMESTAMP '{fit['fit_as_of']}' AS ts, ukey FROM ids ORDER BY ukey LIMIT {FIT_USERS}""")
    fit_src, indexed = "events", False
    if n_chunks > 1:  # the smallest pseudonyms live in the first chunks: read only their parts
        last = con.execute("SELECT max(b) FROM ids WHERE user_id IN (SELECT user_id FROM fpts)").fetchone()[0] or 0
        parts = [f"'{work / 'events' / f'b={b}' / '*.parquet'}'" for b in range(last + 1)
                 if (work / "events" / f"b={b}").exists()]
        if parts:
            fit_src, indexed = f"(SELECT * EXCLUDE (b) FROM read_parquet([{', '.join(parts)}]))", True
    prepare_events(con, f"(SELECT * FROM {fit_src} WHERE user_id IN (SELECT user_id FROM fpts))", vocab, fit,
                   indexed=indexed)
    snap = point_features(con, "fpts", vocab, seq_len, window, recent, fit, derive=False, order_by="p.ukey",
                          sequences=False, as_of=fit["fit_as_of"])
    raw = _raw_matrix(snap, window)
    fit["rfm_edges"] = fit_rfm(raw)
    fit["segments"] = fit_segments(raw, int(p.get("segments", 6)), int(p.get("segment_seed", 0)), window)
    act = snap.column("activity_rate").to_numpy()
    fit["activity_edges"] = np.quantile(act, [1 / 3, 2 / 3]).tolist() if len(act) else [0.5, 1.5]
    fit["fit_users"] = snap.num_rows
    fit["attributes"] = attributes.prepare(con, ws / layout.VALIDATED_DIR, fit["fit_as_of"],
                                           int(p.get("attribute_max_categories", attributes.MAX_CATEGORIES)))
    del snap, raw

    counts = {"train": 0, "valid": 0, "holdout": 0}
    out_tmp = work / "out"
    out_tmp.mkdir()
    diff = _DiffAccumulator(vocab, window)
    with _ParquetOutputs(out_tmp) as out:
        for b in range(n_chunks):
            _build_chunk(con, b, n_chunks, work, vocab, fit, seq_len, window, recent, now_ts, prev_ts, truth_src,
                         counts, diff, out.write)
    any_schema = out.schemas.get("train") or out.schemas.get("valid") or out.schemas.get("holdout")
    for split in counts:
        if split not in out.schemas and any_schema is not None:
            pq.write_table(any_schema.empty_table(), out_tmp / f"{split}.parquet")

    arms = campaign_arms(con)
    profile_cols = profile_columns(recent, n_cat, len(fit["segments"]["names"])) + attributes.columns(fit["attributes"])
    out_dir = ws / layout.FEATURES_DIR
    with atomic_dir(out_dir) as tmp:
        for f in out_tmp.iterdir():
            shutil.move(str(f), tmp / f.name)
        pq.write_table(arms, tmp / "arms.parquet")
        segments = diff.segments_summary(fit, now_ts, prev_ts)
        (tmp / "segments.json").write_text(json.dumps(segments, indent=2, sort_keys=True) + "\n")
        meta = {
            "vocab": vocab,
            "seq_len": seq_len,
            "profile_window_days": window,
            "recent_days": recent,
            "profile_cols": profile_cols,
            "campaign_types": list(CAMPAIGN_TYPES),
            "channels": list(CHANNELS),
            "rows": counts,
            "batch": raw_manifest.get("batch"),
            "now": raw_manifest.get("now"),
            "upcoming_campaign_id": raw_manifest.get("upcoming_campaign_id"),
            "has_truth": bool(truth_src),
            "profile_fit": fit,
            "seq_channels": {
                "seq_gap": {"size": len(fit["gap_edges_hours"]) + 3, "edges_hours": fit["gap_edges_hours"],
                            "doc": "0 pad, 1 first event of the user, 2+ #edges <= hours since previous event"},
                "seq_price": {"size": len(fit["price_edges"]) + 2, "edges": fit["price_edges"],
                              "doc": "0 pad, 1 + #edges <= price"},
            },
            "profile_as_of": now_ts,
            "profile_prev_as_of": prev_ts,
            "profile_diff": diff.summary(),
            "segments": fit["segments"]["names"],
            "ids": {"pseudonymized": True, "scheme": "sha256(salt, kind, id)[:128 bits], salt not stored",
                    "kinds": {"u": "user_id", "x": "exposure_id"}},
            "chunks": n_chunks,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        files = sorted(tmp.iterdir())
        with ThreadPoolExecutor(2) as pool:  # hashlib releases the GIL: two files at a time
            meta["hashes"] = dict(zip((f.name for f in files), pool.map(sha256_file, files)))
    return meta


def _build_chunk(con, b, n_chunks, work, vocab, fit, seq_len, window, recent, now_ts, prev_ts, truth_src,
                 counts, diff, write) -> None:
    """Exposure features, profile snapshots and truth of user chunk b, handed to `write`."""
    if n_chunks == 1:
        prepare_events(con, "events", vocab, fit)
    elif (work / "events" / f"b={b}").exists():
        prepare_events(con, f"(SELECT * EXCLUDE (b) FROM read_parquet('{work / 'events' / f'b={b}' / '*.parquet'}'))",
                       vocab, fit, indexed=True)
    else:
        prepare_events(con, "(SELECT * FROM events WHERE false)", vocab, fit)
    con.execute(f"CREATE OR REPLACE TEMP TABLE cpts AS SELECT * EXCLUDE (b, xid) FROM xpts WHERE b = {b}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _hx AS {exposure_history('cpts')}")
    x = point_features(con, "cpts",
                       vocab, seq_len, window, recent, fit, keep_point_id=False,
                       order_by="p.user_key, p.exposure_id", history="_hx")
    x = x.rename_columns(["user_id" if c == "user_key" else c for c in x.column_names])
    x = _reorder_exposure_columns(attributes.attach(con, x, fit["attributes"], ts_col="exposure_ts"))
    for split in counts:
        part = x.filter(pc.equal(x.column("split"), split))
        counts[split] += part.num_rows
        write(split, part)
    snaps = {}
    for name, ts in (("profile", now_ts), ("profile_prev", prev_ts)):
        con.execute(f"""CREATE OR REPLACE TEMP TABLE spts AS SELECT user_id AS point_id, user_id,
                        TIMESTAMP '{ts}' AS ts, ukey AS user_key FROM ids WHERE b = {b}""")
        s = point_features(con, "spts", vocab, seq_len, window, recent, fit, keep_point_id=False,
                           order_by="p.user_key", sequences=False, as_of=ts, history="_hx")
        s = attributes.attach(con, _with_tags(s, vocab, fit, ts), fit["attributes"], as_of=ts)
        snaps[name] = s
        write(name, s)
    diff.add(snaps["profile"], snaps["profile_prev"], fit)
    if truth_src:
        write("truth", _truth_chunk(con, truth_src, work, b, n_chunks))


def _reorder_exposure_columns(x: pa.Table) -> pa.Table:
    head = ["exposure_id", "user_id", "campaign_id", "variant_id", "exposure_ts", "responded", "revenue", "split"]
    return x.select([*head, *(c for c in x.column_names if c not in head)])


def _with_tags(s: pa.Table, vocab: dict, fit: dict, as_of: str) -> pa.Table:
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
    s = s.drop_columns([c for c in ("seq_tokens", "seq_gap", "seq_price") if c in s.column_names])
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


class _ParquetOutputs:
    """One parquet file per output name, appended to in call order by a background thread (pyarrow
    releases the GIL), so writing chunk b overlaps computing chunk b + 1; at most a few tables wait."""

    def __init__(self, out_dir: Path, depth: int = 3):
        self.out_dir, self.schemas = out_dir, {}
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="features-writer", daemon=True)

    def __enter__(self) -> "_ParquetOutputs":
        self._thread.start()
        return self

    def write(self, name: str, table: pa.Table) -> None:
        if self._error:
            raise self._error
        if name not in self.schemas:
            self.schemas[name] = table.schema
        self._queue.put((name, table))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._append(*item)
                except BaseException as e:  # re-raised in the building thread
                    self._error = e

    def _append(self, name: str, table: pa.Table) -> None:
        schema = self.schemas[name]
        if name not in self._writers:  # dictionaries only for strings: numbers and sequences rarely repeat
            self._writers[name] = pq.ParquetWriter(self.out_dir / f"{name}.parquet", schema, compression="zstd",
                                                   use_dictionary=[f.name for f in schema if pa.types.is_string(f.type)])
        if table.num_rows:
            self._writers[name].write_table(table.cast(schema))

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()
        for w in self._writers.values():
            w.close()
        if self._error and not exc[0]:
            raise self._error


class _DiffAccumulator:
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


def _stage_truth(settings: Settings, store: ObjectStore | None, raw_manifest: dict, work: Path) -> str:
    """Ground truth exists only for synthetic batches; real data has none (evaluation then uses
    IPS). Copies its parts into the work dir (file by file) and returns a DuckDB relation reading
    them, or '' without truth."""
    keys = raw_manifest.get("truth", {}).get("files") or []
    if not keys:
        return ""
    store = store or ObjectStore(settings)
    (work / "truth_raw").mkdir()
    paths = []
    for i, key in enumerate(keys):
        path = work / "truth_raw" / f"part-{i:05d}.parquet"
        if hasattr(store, "download_file"):
            store.download_file(key, path)
        else:
            path.write_bytes(store.get_bytes(key))
        paths.append(f"'{path}'")
    return f"read_parquet([{', '.join(paths)}])"


def _truth_chunk(con: duckdb.DuckDBPyConnection, src: str, work: Path, b: int, n_chunks: int) -> pa.Table:
    """The truth rows of user chunk b, re-keyed with the pseudonyms already computed (a join, not
    a second round of hashing), in (user, exposure, campaign, arm) pseudonym order."""
    part = work / "truth" / f"b={b}"
    if n_chunks == 1:
        rows, ids, xpts = src, "ids", "xpts"
    else:
        rows = f"(SELECT * EXCLUDE (b) FROM read_parquet('{part / '*.parquet'}'))" if part.exists() else \
            f"(SELECT * FROM {src} WHERE false)"
        ids, xpts = f"(SELECT * FROM ids WHERE b = {b})", f"(SELECT * FROM xpts WHERE b = {b})"
    return con.sql(f"""SELECT x.exposure_id, i.ukey AS user_id, t.* EXCLUDE (exposure_id, user_id)
                       FROM {rows} t JOIN {ids} i USING (user_id) LEFT JOIN {xpts} x ON x.xid = t.exposure_id
                       ORDER BY i.ukey, x.exposure_id NULLS LAST, t.campaign_id, t.variant_id""").to_arrow_table()


def scoring_frame(con: duckdb.DuckDBPyConnection, as_of: str, meta: dict,
                  chunk_users: int = SCORING_CHUNK_USERS) -> pa.Table:
    """Features of every user as of `as_of` (ISO time), with the model's own vocabulary and fitted
    profile definitions, in user id order. Runs inside the trusted boundary: returns real user ids
    (for targeting). Built by scoring_chunks, so DuckDB holds one chunk's events at a time."""
    return pa.concat_tables(scoring_chunks(con, as_of, meta, chunk_users))


def campaign_scoring_frame(con: duckdb.DuckDBPyConnection, campaign_id: str, meta: dict):
    """(scoring_frame as of the campaign's first start, that start): what scoring and its drift
    gate compare."""
    start = con.execute("SELECT min(start_ts) FROM campaigns WHERE campaign_id = ?", [campaign_id]).fetchone()[0]
    if start is None:
        raise ValueError(f"campaign {campaign_id!r} is not in the validated campaigns table")
    return scoring_frame(con, start.isoformat(sep=" "), meta), start


def scoring_chunks(con: duckdb.DuckDBPyConnection, as_of: str, meta: dict,
                   chunk_users: int = SCORING_CHUNK_USERS) -> Iterator[pa.Table]:
    """scoring_frame's rows, chunk_users users at a time (contiguous ranges of user ids)."""
    fit = meta.get("profile_fit") or {"gap_edges_hours": [], "price_edges": [], "interest_half_life_days": 14.0}
    n_users = con.execute("SELECT count(*) FROM users").fetchone()[0]
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _score_users AS
        SELECT user_id, (row_number() OVER (ORDER BY user_id) - 1) // {int(chunk_users)} AS b FROM users""")
    for b in range(max(1, math.ceil(n_users / int(chunk_users)))):
        prepare_events(con, f"(SELECT * FROM events WHERE user_id IN (SELECT user_id FROM _score_users WHERE b = {b}))",
                       meta["vocab"], fit)
        con.execute(f"""CREATE OR REPLACE TEMP TABLE score_points AS
            SELECT user_id AS point_id, user_id, TIMESTAMP '{as_of}' AS ts FROM _score_users WHERE b = {b}""")
        feats = point_features(con, "score_points", meta["vocab"], meta["seq_len"], meta["profile_window_days"],
                               meta["recent_days"], fit, derive="segments" in fit, as_of=as_of)
        if "segments" not in fit:
            feats = feats.drop_columns(list(RAW_COLS))
        feats = feats.rename_columns(["user_id", *feats.column_names[1:]])
        yield attributes.attach_scoring(con, feats, fit.get("attributes"), as_of)


def attach_arms(rows: pa.Table, arms: pa.Table, row_key: str, every_arm: bool) -> pa.Table:
    """Join arm attributes onto rows: the logged arm (every_arm=False, rows need variant_id)
    or one row per arm of the row's campaign (every_arm=True), ordered by row_key, variant_id."""
    con = duckdb.connect()
    con.register("r", rows)
    con.register("a", arms)
    on = "a.campaign_id = r.campaign_id" + ("" if every_arm else " AND a.variant_id = r.variant_id")
    extra = "a.variant_id AS arm_id, " if every_arm else ""
    return con.sql(f"SELECT r.*, {extra}a.* EXCLUDE (campaign_id, variant_id) FROM r JOIN a ON {on} "
                   f"ORDER BY r.{row_key}, a.variant_id").to_arrow_table()
