"""User profiles at a point in time: the numeric profile of each point (an exposure, or every
user at a cut-off) — activity counts, prices, recency, the campaign history that had ended
before it, time-decayed interest affinities, RFM scores and segments — plus the point's
behaviour sequence, computed by DuckDB from the prepared `_ev` events (pipelines/sequences.py)
using only data strictly before the point.
"""
from __future__ import annotations

import math

import duckdb
import pyarrow as pa

from campaignops.pipelines import attributes
from campaignops.pipelines.segments import derive_profile
from campaignops.pipelines.sequences import attach_sequences, packed_steps
from campaignops.validation.contract import CHANNELS, GENDERS

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
DISCOUNT_TYPES = ("discount", "coupon")
RATE_PRIOR = (1.0, 19.0)  # Beta prior of smoothed response rates (mean 0.05)


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
    steps = packed_steps(con) if sequences else None
    table = con.sql(sql).to_arrow_table()
    if sequences:
        table = attach_sequences(table, steps, seq_len)
    if derive:
        table = derive_profile(table, fit, window_days)
    return table
