"""Small fixture worlds for the tests: one builder of a clean batch that meets the contract (users,
campaigns, events, exposures, as plain rows) and the writer that lands it as a raw batch the way
the producers do (part files per table, the manifest last). Tests mutate the rows to break rules."""
from __future__ import annotations

import io
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from campaignops.pipelines import layout
from campaignops.validation.contract import CONTROL, SCHEMAS

NOW = datetime(2026, 5, 20)   # the batch's as-of time
T0 = datetime(2026, 5, 1)     # the world's start
EVENT_TYPES = ("browse", "cart", "purchase", "review")
UNCATEGORIZED_EVENT = 3       # each user's event number k == 3 has no category (a declared fill)


def small_world(users: int = 10, events_per_user: int = 4) -> dict[str, list[dict]]:
    """A clean batch, tables in validation order: `users` users (u0 has no occupation), each with
    `events_per_user` events (the fourth without category), campaigns C1 (running at T0 + 2 days)
    and C2 (upcoming, T0 + 30 days) with two variants each, one C1 exposure per user (every third
    at control, the other two variants alternating; odd users respond)."""
    user_rows = [{"user_id": f"u{i}", "age": 20 + i, "gender": "FMU"[i % 3], "region": "r1",
                  "occupation": None if i == 0 else "o1", "signup_ts": T0 - timedelta(days=300 + i)}
                 for i in range(users)]
    campaigns = [{"campaign_id": c, "variant_id": f"{c}-V{v}", "type": "discount", "discount_rate": 0.1 * v,
                  "channel": "email", "target_category": "c1", "cost_per_send": 0.1,
                  "start_ts": T0 + timedelta(days=d), "end_ts": T0 + timedelta(days=d + 7)}
                 for c, d in (("C1", 2), ("C2", 30)) for v in (1, 2)]
    events = [{"event_id": f"e{u}-{k}", "user_id": f"u{u}", "event_type": EVENT_TYPES[k % 4],
               "category": None if k == UNCATEGORIZED_EVENT else f"c{k}", "price": 5.0 + k,
               "ts": T0 + timedelta(hours=u * 5 + k)}
              for u in range(users) for k in range(events_per_user)]
    exposures = [{"exposure_id": f"x{i}", "user_id": f"u{i}", "campaign_id": "C1",
                  "variant_id": CONTROL if i % 3 == 0 else f"C1-V{1 + i % 2}",
                  "exposure_ts": T0 + timedelta(days=3, hours=i), "responded": i % 2, "revenue": 10.0 * (i % 2)}
                 for i in range(users)]
    return {"users": user_rows, "campaigns": campaigns, "events": events, "exposures": exposures}


def without_column(world: dict[str, list[dict]], table: str, column: str) -> tuple[dict, dict[str, pa.Schema]]:
    """The world with `column` dropped from every row of `table`, and the schemas to land it with:
    a schema-broken batch, rejected outright by validation."""
    schema = SCHEMAS[table].remove(SCHEMAS[table].get_field_index(column))
    broken = dict(world, **{table: [{k: v for k, v in r.items() if k != column} for r in world[table]]})
    return broken, {table: schema}


def table_bytes(rows: list[dict], schema: pa.Schema, fmt: str = "parquet") -> bytes:
    """Rows as one parquet or CSV file."""
    t = pa.Table.from_pylist(rows, schema)
    buf = io.BytesIO()
    if fmt == "csv":
        pacsv.write_csv(t, buf)
    else:
        pq.write_table(t, buf)
    return buf.getvalue()


def put_parquet(store, key: str, rows: list[dict], schema: pa.Schema) -> None:
    store.put_bytes(key, table_bytes(rows, schema))


def land_world(store, world: dict[str, list[dict]], batch: str, parts: int = 2,
               schemas: dict[str, pa.Schema] | None = None, upcoming: str = "C2", now: datetime = NOW) -> dict:
    """Write a raw batch like the producers do: `parts` part files per table, the manifest last.
    Returns the manifest."""
    tables = {}
    for table, rows in world.items():
        schema = (schemas or {}).get(table, SCHEMAS[table])
        chunk = max(1, -(-len(rows) // parts))
        keys = []
        for p, start in enumerate(range(0, len(rows), chunk)):
            key = f"{layout.raw_prefix(batch, table)}part-{p:05d}.parquet"
            put_parquet(store, key, rows[start:start + chunk], schema)
            keys.append(key)
        tables[table] = {"files": keys, "rows": len(rows)}
    manifest = {"batch": batch, "now": now.isoformat(), "upcoming_campaign_id": upcoming, "tables": tables}
    store.put_json(layout.raw_manifest_key(batch), manifest)
    return manifest
