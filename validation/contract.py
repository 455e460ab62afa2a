"""The raw data contract: tables, columns, types and allowed values every source must meet."""
from __future__ import annotations

import pyarrow as pa

EVENT_TYPES = ("browse", "cart", "purchase", "review")
CAMPAIGN_TYPES = ("discount", "coupon", "free_shipping", "bundle")
CHANNELS = ("email", "sms", "push", "app")
GENDERS = ("F", "M", "U")
CONTROL = "control"  # variant_id of the no-send arm in exposures

TS = pa.timestamp("ms")

SCHEMAS: dict[str, pa.Schema] = {
    "users": pa.schema(
        [
            ("user_id", pa.string()),
            ("age", pa.int32()),
            ("gender", pa.string()),
            ("region", pa.string()),
            ("occupation", pa.string()),
            ("signup_ts", TS),
        ]
    ),
    "events": pa.schema(
        [
            ("event_id", pa.string()),
            ("user_id", pa.string()),
            ("event_type", pa.string()),
            ("category", pa.string()),
            ("price", pa.float64()),
            ("ts", TS),
        ]
    ),
    "campaigns": pa.schema(
        [
            ("campaign_id", pa.string()),
            ("variant_id", pa.string()),
            ("type", pa.string()),
            ("discount_rate", pa.float64()),
            ("channel", pa.string()),
            ("target_category", pa.string()),
            ("cost_per_send", pa.float64()),
            ("start_ts", TS),
            ("end_ts", TS),
        ]
    ),
    "exposures": pa.schema(
        [
            ("exposure_id", pa.string()),
            ("user_id", pa.string()),
            ("campaign_id", pa.string()),
            ("variant_id", pa.string()),  # CONTROL for the randomized no-send arm
            ("exposure_ts", TS),
            ("responded", pa.int8()),
            ("revenue", pa.float64()),
            # Optional (OPTIONAL_COLUMNS): P(logged arm | user) under the policy that chose it;
            # null = unknown (a CRM log without it is valid; validation adds it as nulls).
            ("propensity", pa.float64()),
        ]
    ),
    # Optional: per-user attributes of any name, long format, each the user's value as of `as_of`
    # and known from then on (a point at time t sees the latest value with as_of <= t; events, by
    # contrast, only strictly before t). Exactly one of value_num / value_str is set: numeric vs
    # categorical attribute.
    "user_attributes": pa.schema(
        [
            ("user_id", pa.string()),
            ("name", pa.string()),
            ("as_of", TS),
            ("value_num", pa.float64()),
            ("value_str", pa.string()),
        ]
    ),
}

PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "users": ("user_id",),
    "events": ("event_id",),
    "campaigns": ("campaign_id", "variant_id"),
    "exposures": ("exposure_id",),
    "user_attributes": ("user_id", "name", "as_of"),
}

# Trailing columns a file may omit (validation adds them as nulls): columns added to the contract
# after sources already existed, or that many sources cannot know.
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {"exposures": ("propensity",)}


def accepts_columns(table: str, names: list[str]) -> bool:
    """True if a file with columns `names` meets the contract: all of them in order, or without
    some trailing optional columns."""
    full = SCHEMAS[table].names
    names = list(names)
    return names == full[:len(names)] and all(c in OPTIONAL_COLUMNS.get(table, ()) for c in full[len(names):])


def required_schema(table: str) -> pa.Schema:
    """The contract's columns without the optional ones: the least a file must have."""
    optional = OPTIONAL_COLUMNS.get(table, ())
    return pa.schema([f for f in SCHEMAS[table] if f.name not in optional])


TABLES = ("users", "events", "campaigns", "exposures")  # every batch has these
OPTIONAL_TABLES = ("user_attributes",)                    # a batch may omit these (not in its manifest)
ALL_TABLES = (*TABLES, *OPTIONAL_TABLES)
# Tables a producer may declare empty by design in its manifest ("empty_by_design": true), e.g. an
# imported campaign log with no behaviour events; any other empty table fails the batch.
MAY_BE_EMPTY = frozenset({"events", "user_attributes"})

# Ground truth written beside synthetic data only (never validated, never a model input).
TRUTH_SCHEMA = pa.schema(
    [
        ("exposure_id", pa.string()),  # null for rows of the upcoming (scoring) campaign
        ("user_id", pa.string()),
        ("campaign_id", pa.string()),
        ("variant_id", pa.string()),
        ("p_response", pa.float64()),
        ("expected_revenue", pa.float64()),
    ]
)
