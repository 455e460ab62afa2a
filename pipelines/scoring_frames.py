"""Frames read outside the features stage, from the validated tables: every user's point-in-time
features at a cut-off with the model's own definitions (scoring and its drift gate; real user
ids, inside the trusted boundary), the campaigns' arms, and arm attributes joined onto rows
(training, evaluation, drift).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa

from campaignops.pipelines import attributes
from campaignops.pipelines.profiles import point_features
from campaignops.pipelines.segments import RAW_COLS
from campaignops.pipelines.sequences import prepare_events
from campaignops.validation.contract import CONTROL

SCORING_CHUNK_USERS = 200_000  # users per scoring chunk (bounds DuckDB's working set, not the output)


def connect(validated_dir: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per validated table (user_attributes when present)."""
    con = duckdb.connect()
    for name in ("users", "events", "campaigns", "exposures"):
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{validated_dir / (name + '.parquet')}')")
    if (validated_dir / f"{attributes.TABLE}.parquet").exists():  # optional raw table
        con.execute(f"CREATE VIEW {attributes.TABLE} AS SELECT * FROM read_parquet('{validated_dir / attributes.TABLE}.parquet')")
    return con


def campaign_arms(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """One row per arm (control + each variant) of every campaign."""
    return con.sql(f"""
      SELECT campaign_id, variant_id, 0::DOUBLE AS is_control, type, discount_rate, channel,
             target_category, cost_per_send FROM campaigns
      UNION ALL
      SELECT DISTINCT campaign_id, '{CONTROL}', 1.0, 'none', 0.0, 'none', 'none', 0.0 FROM campaigns
      ORDER BY campaign_id, variant_id
    """).to_arrow_table()


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
