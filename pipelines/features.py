"""Builds point-in-time model features: behaviour sequences, user profiles and campaign/variant
attributes for each exposure (training) or for every user at a cut-off (scoring)."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from campaignops.config import Settings
from campaignops.pipelines import layout
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
ARM_COLS = ("campaign_id", "variant_id", "is_control", "type", "discount_rate", "channel",
            "target_category", "cost_per_send")


def vocabulary(con: duckdb.DuckDBPyConnection) -> dict:
    """Token vocabulary: event types × (sorted known categories + one out-of-vocabulary slot)."""
    cats = [r[0] for r in con.sql("SELECT DISTINCT category FROM events ORDER BY 1").fetchall()]
    return {"event_types": list(EVENT_TYPES), "categories": cats}


def profile_columns(recent_days: list[int]) -> list[str]:
    return [*PROFILE_COLS, *(f"n_events_{d}d" for d in recent_days)]


def point_features(con: duckdb.DuckDBPyConnection, points: str, vocab: dict, seq_len: int,
                   window_days: int, recent_days: list[int]) -> pa.Table:
    """Features for each row of the `points` relation (point_id, user_id, ts) using only data
    strictly before its ts: last-`seq_len` event tokens and profile aggregates."""
    recent_sql = "".join(f",\n        ln(1 + count(*) FILTER (WHERE ts >= pts - INTERVAL {int(d)} DAY)) AS n_events_{int(d)}d"
                         for d in recent_days)
    recent_out = "".join(f", coalesce(a.n_events_{int(d)}d, 0) AS n_events_{int(d)}d" for d in recent_days)
    n_cat = len(vocab["categories"]) + 1  # + OOV
    con.execute("CREATE OR REPLACE TEMP TABLE _cats AS SELECT unnest($1::VARCHAR[]) AS category, "
                "generate_subscripts($1::VARCHAR[], 1) - 1 AS cat_idx", [vocab["categories"]])
    con.execute("CREATE OR REPLACE TEMP TABLE _types AS SELECT unnest($1::VARCHAR[]) AS event_type, "
                "generate_subscripts($1::VARCHAR[], 1) - 1 AS type_idx", [vocab["event_types"]])
    sql = f"""
    WITH j AS (
      SELECT p.point_id, e.event_type, e.price, e.ts, p.ts AS pts,
             1 + t.type_idx * {n_cat} + coalesce(c.cat_idx, {n_cat - 1}) AS token,
             row_number() OVER (PARTITION BY p.point_id ORDER BY e.ts DESC, e.event_id DESC) AS rn
      FROM {points} p
      JOIN events e ON e.user_id = p.user_id AND e.ts < p.ts
                   AND e.ts >= p.ts - INTERVAL {int(window_days)} DAY
      JOIN _types t USING (event_type)
      LEFT JOIN _cats c USING (category)
    ),
    agg AS (
      SELECT point_id,
        list(token ORDER BY rn DESC) FILTER (WHERE rn <= {int(seq_len)}) AS seq_tokens,
        ln(1 + count(*) FILTER (WHERE event_type = 'browse')) AS n_browse,
        ln(1 + count(*) FILTER (WHERE event_type = 'cart')) AS n_cart,
        ln(1 + count(*) FILTER (WHERE event_type = 'purchase')) AS n_purchase,
        ln(1 + count(*) FILTER (WHERE event_type = 'review')) AS n_review,
        ln(1 + avg(price)) AS log_avg_price,
        ln(1 + min(price)) AS log_min_price,
        date_diff('second', max(ts), any_value(pts)) / 86400.0 AS days_since_last_event,
        date_diff('second', max(ts) FILTER (WHERE event_type = 'purchase'), any_value(pts)) / 86400.0
          AS days_since_last_purchase,
        (count(*) FILTER (WHERE event_type = 'purchase') + 1.0)
          / (count(*) FILTER (WHERE event_type = 'cart') + 1.0) AS cart_to_purchase{recent_sql}
      FROM j GROUP BY point_id
    ),
    hist AS (  -- past campaigns whose outcome was known before the point (campaign ended)
      SELECT p.point_id, count(*) AS n_exp, sum(x.responded) AS n_resp
      FROM {points} p
      JOIN exposures x ON x.user_id = p.user_id AND x.exposure_ts < p.ts
      JOIN (SELECT campaign_id, max(end_ts) AS end_ts FROM campaigns GROUP BY 1) c
        ON c.campaign_id = x.campaign_id AND c.end_ts < p.ts
      GROUP BY p.point_id
    )
    SELECT p.point_id,
      coalesce(a.seq_tokens, []::INTEGER[]) AS seq_tokens,
      coalesce(a.n_browse, 0) AS n_browse, coalesce(a.n_cart, 0) AS n_cart,
      coalesce(a.n_purchase, 0) AS n_purchase, coalesce(a.n_review, 0) AS n_review,
      coalesce(a.log_avg_price, 0) AS log_avg_price, coalesce(a.log_min_price, 0) AS log_min_price,
      least(coalesce(a.days_since_last_event, {window_days}), {window_days}) / {window_days} AS days_since_last_event,
      least(coalesce(a.days_since_last_purchase, {window_days}), {window_days}) / {window_days}
        AS days_since_last_purchase,
      coalesce(a.cart_to_purchase, 1.0) AS cart_to_purchase,
      ln(1 + coalesce(h.n_exp, 0)) AS n_past_exposures,
      ln(1 + coalesce(h.n_resp, 0)) AS n_past_responses,
      floor(u.age / 10.0) / 10.0 AS age_bucket,
      {", ".join(f"(u.gender = '{g}')::DOUBLE AS gender_{g}" for g in GENDERS)}{recent_out}
    FROM {points} p
    LEFT JOIN agg a USING (point_id)
    LEFT JOIN hist h USING (point_id)
    LEFT JOIN users u ON u.user_id = p.user_id
    ORDER BY p.point_id
    """
    table = con.sql(sql).to_arrow_table()
    seq = pad_sequences(table.column("seq_tokens"), seq_len)
    seq_col = pa.FixedSizeListArray.from_arrays(pa.array(seq.ravel(), pa.int32()), seq_len)
    return table.set_column(table.schema.get_field_index("seq_tokens"), "seq_tokens", seq_col)


def pad_sequences(lists: pa.ChunkedArray | pa.ListArray, seq_len: int) -> np.ndarray:
    """Left-pad variable-length token lists (oldest→newest) to [n, seq_len] with 0."""
    arr = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    offsets = arr.offsets.to_numpy()
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.int32)
    n = len(arr)
    out = np.zeros((n, seq_len), dtype=np.int32)
    lengths = np.diff(offsets)
    rows = np.repeat(np.arange(n), lengths)
    cols = seq_len - lengths[rows] + (np.arange(len(values)) - offsets[:-1][rows])
    out[rows, cols] = values
    return out


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
    return con


def build(settings: Settings, store: ObjectStore | None = None) -> dict:
    """The DVC `features` stage: data/validated → data/features (train/valid/holdout + arms + meta)."""
    ws = settings.workspace
    p = settings.params["features"]
    seq_len, window, recent = int(p["seq_len"]), int(p["profile_window_days"]), list(p["recent_days"])
    raw_manifest = json.loads((ws / layout.RAW_MANIFEST).read_text())
    con = connect(ws / layout.VALIDATED_DIR)
    vocab = vocabulary(con)
    con.execute("""CREATE TEMP TABLE points AS
        SELECT exposure_id AS point_id, user_id, exposure_ts AS ts FROM exposures""")
    feats = point_features(con, "points", vocab, seq_len, window, recent)
    con.register("feats", feats)
    q_train, q_valid = p["split"]["train"], p["split"]["train"] + p["split"]["valid"]
    labelled = con.sql(f"""
      WITH cut AS (SELECT quantile_disc(exposure_ts, {q_train}) AS t1,
                          quantile_disc(exposure_ts, {q_valid}) AS t2 FROM exposures)
      SELECT x.exposure_id, x.user_id, x.campaign_id, x.variant_id, x.exposure_ts,
             x.responded, x.revenue,
             CASE WHEN x.exposure_ts <= cut.t1 THEN 'train'
                  WHEN x.exposure_ts <= cut.t2 THEN 'valid' ELSE 'holdout' END AS split,
             f.* EXCLUDE (point_id)
      FROM exposures x CROSS JOIN cut JOIN feats f ON f.point_id = x.exposure_id
      ORDER BY x.exposure_id
    """).to_arrow_table()
    arms = campaign_arms(con)
    truth = _load_truth(settings, store, raw_manifest)
    out_dir = ws / layout.FEATURES_DIR
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for split in ("train", "valid", "holdout"):
            part = labelled.filter(pc.equal(labelled.column("split"), split))
            pq.write_table(part, tmp / f"{split}.parquet")
            counts[split] = part.num_rows
        pq.write_table(arms, tmp / "arms.parquet")
        if truth is not None:
            pq.write_table(truth, tmp / "truth.parquet")
        meta = {
            "vocab": vocab,
            "seq_len": seq_len,
            "profile_window_days": window,
            "recent_days": recent,
            "profile_cols": profile_columns(recent),
            "campaign_types": list(CAMPAIGN_TYPES),
            "channels": list(CHANNELS),
            "rows": counts,
            "batch": raw_manifest.get("batch"),
            "now": raw_manifest.get("now"),
            "upcoming_campaign_id": raw_manifest.get("upcoming_campaign_id"),
            "has_truth": truth is not None,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        meta["hashes"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
    return meta


def _load_truth(settings: Settings, store: ObjectStore | None, raw_manifest: dict) -> pa.Table | None:
    """Ground truth exists only for synthetic batches; real data has none (evaluation then uses IPS)."""
    keys = raw_manifest.get("truth", {}).get("files") or []
    if not keys:
        return None
    store = store or ObjectStore(settings)
    return pa.concat_tables([store.read_table(k) for k in keys])


def scoring_frame(con: duckdb.DuckDBPyConnection, as_of: str, meta: dict) -> pa.Table:
    """Features of every user as of `as_of` (ISO time), with the model's own vocabulary."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE score_points AS
        SELECT user_id AS point_id, user_id, TIMESTAMP '{as_of}' AS ts FROM users""")
    feats = point_features(con, "score_points", meta["vocab"], meta["seq_len"], meta["profile_window_days"],
                           meta["recent_days"])
    return feats.rename_columns(["user_id", *feats.column_names[1:]])


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
