"""Maps a user's randomized campaign log (CSV or parquet, one row per customer: arm, outcomes,
features) into a raw batch of the data contract, as a mapping YAML declares; the chain then
runs on it unchanged (`campaignops data import --mapping FILE.yaml DATAFILE`).

Mapping (see validation/mappings/hillstrom.yaml for a complete one):

    source: {format: csv}                 # csv | parquet (default: the file suffix)
    batch: hillstrom                      # default batch id (--batch overrides)
    campaign:
      id: hillstrom_2008
      window: {start: 2008-03-01, end: 2008-03-15}   # required without a timestamp column
    treatment:
      column: segment
      control: No E-Mail                  # the arm value of the randomized no-send group
      arms:                               # arm value -> variant and campaign attributes
        Mens E-Mail: {variant: mens, type: discount, channel: email, discount_rate: 0.0,
                      cost_per_send: 0.0, target_category: mens}
    outcomes: {response: visit, revenue: spend}       # 0/1 column; numeric column (optional)
    id: null                              # user id column; null: the row number
    timestamp: null                       # exposure time column; null: spread over the window
    users:                                # contract columns a log lacks need an explicit rule
      age: {fill: 40}                     #   {column: C} | {fill: V} | null (nullable ones only)
      gender: {fill: U}
      region: {column: zip_code}
      occupation: null
      signup_ts: {fill: 2007-03-01}
    features:                             # -> user_attributes (known from `as_of` on, inclusive)
      as_of: 2008-03-01                   # default: the window start (= the campaign's start_ts)
      numeric: [recency, history]
      categorical: [zip_code, channel]

Rows are never dropped: a value that cannot be parsed becomes null, an undeclared arm keeps its
raw name as variant_id, and the validate step quarantines such rows with the rule they broke
(exposure ids carry the source row number). Missing feature values (empty cells) are absent
attribute rows, i.e. "unknown" to the model. Feature values are stamped `features.as_of`: a point
at or after it sees them (pipelines/attributes.py), so training exposures and scoring as of the
campaign's start both do with the default; a later as_of hides them from earlier exposures.

Without a timestamp column, exposure times are spread deterministically over the window by a
hash of the user id (or row number): the chain's time-quantile train/valid/holdout split then
behaves as a seeded random split of the customers. For cross-fitting, `holdout_fold=(f, k)`
deals the users into k folds of equal size (±1 user, by a seeded hash of the id) and spreads fold
f over the last part of the window, the other folds before it: a time split whose train + valid
share is `import.holdout_fold.time_quantile` (half a row below the other folds' share, so any
quantile rounding lands between the two) then holds out exactly fold f, and k imports with
f = 0..k-1 score every row once, by a model that did not train on it. The log has no behaviour events: the events
table is written empty and declared so (`empty_by_design`) in the manifest.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from campaignops.pipelines import layout
from campaignops.pipelines.storage import sha256_file
from campaignops.validation import suites
from campaignops.validation.contract import CAMPAIGN_TYPES, CHANNELS, CONTROL, GENDERS, SCHEMAS, required_schema

FORMATS = ("csv", "parquet")
ARM_KEYS = {"variant", "type", "channel", "discount_rate", "cost_per_send", "target_category"}
USER_FIELDS = ("age", "gender", "region", "occupation", "signup_ts")
TOP_KEYS = {"source", "batch", "campaign", "treatment", "outcomes", "id", "timestamp", "users", "features"}
VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ATTR_RE = re.compile(suites.ATTRIBUTE_NAME_REGEX)


class MappingError(ValueError):
    """The mapping file is invalid or does not fit the data file (names the file and key)."""


# --------------------------------------------------------------------------- mapping

def _ts(value, where: str, err) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(str(value))
    except (ValueError, TypeError):
        raise err(where, f"{value!r} is not a date/time (ISO 8601, e.g. 2008-03-01T00:00:00)")
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def load_mapping(path: Path | str, columns: list[str], response: str | None = None) -> dict:
    """Parse and check a mapping against the data file's columns. Returns the normalized mapping;
    raises MappingError naming the file and key of the first problem found."""
    path = Path(path)

    def err(key: str, msg: str) -> MappingError:
        return MappingError(f"{path}: {key}: {msg}")

    try:
        m = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(m, dict):
        raise MappingError(f"{path}: the mapping must be a YAML mapping of keys {sorted(TOP_KEYS)}")
    unknown = sorted(set(m) - TOP_KEYS)
    if unknown:
        raise err(unknown[0], f"unknown key; allowed top-level keys are {sorted(TOP_KEYS)}")

    def column(key: str, value) -> str:
        if not isinstance(value, str) or value not in columns:
            raise err(key, f"column {value!r} is not in the data file (columns: {columns})")
        return value

    def section(key: str, required: bool = True) -> dict:
        v = m.get(key)
        if v is None and not required:
            return {}
        if not isinstance(v, dict):
            raise err(key, "missing or not a mapping")
        return v

    out: dict = {"batch": m.get("batch")}
    src = section("source", required=False)
    fmt = src.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise err("source.format", f"{fmt!r} is not one of {list(FORMATS)}")
    out["format"] = fmt

    camp = section("campaign")
    cid = camp.get("id")
    if not isinstance(cid, str) or not VARIANT_RE.match(cid):
        raise err("campaign.id", f"{cid!r}: need an id of letters, digits, '_', '.', '-' (max 64)")
    out["campaign_id"] = cid
    window = camp.get("window")
    out["timestamp"] = column("timestamp", m["timestamp"]) if m.get("timestamp") is not None else None
    if window is None and out["timestamp"] is None:
        raise err("campaign.window", "required when no timestamp column is declared (exposure times are spread "
                  "over it)")
    if window is not None:
        if not isinstance(window, dict) or set(window) != {"start", "end"}:
            raise err("campaign.window", "need {start: <time>, end: <time>}")
        start = _ts(window["start"], "campaign.window.start", err)
        end = _ts(window["end"], "campaign.window.end", err)
        if not start < end:
            raise err("campaign.window", f"start {start} is not before end {end}")
        out["window"] = (start, end)
    else:
        out["window"] = None

    tr = section("treatment")
    out["treatment"] = column("treatment.column", tr.get("column"))
    if tr.get("control") is None:
        raise err("treatment.control", "not declared: name the arm value of the randomized control (no-send) group")
    out["control"] = str(tr["control"])
    arms = tr.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise err("treatment.arms", "missing: declare at least one treatment arm (arm value -> attributes)")
    if out["control"] in map(str, arms):
        raise err(f"treatment.arms.{out['control']}", "the control arm is implicit; do not list it under arms")
    out["arms"] = {}
    variants = set()
    for value, a in arms.items():
        key = f"treatment.arms.{value}"
        if not isinstance(a, dict):
            raise err(key, "need a mapping of " + ", ".join(sorted(ARM_KEYS)))
        extra, missing = sorted(set(a) - ARM_KEYS), sorted(ARM_KEYS - set(a) - {"target_category"})
        if extra:
            raise err(f"{key}.{extra[0]}", f"unknown key; allowed: {sorted(ARM_KEYS)}")
        if missing:
            raise err(f"{key}.{missing[0]}", "missing (every arm declares variant, type, channel, discount_rate, "
                      "cost_per_send)")
        v = str(a["variant"])
        if not VARIANT_RE.match(v) or v == CONTROL or v in variants:
            raise err(f"{key}.variant", f"{v!r}: need a unique id (letters, digits, '_', '.', '-'), not {CONTROL!r}")
        variants.add(v)
        if a["type"] not in CAMPAIGN_TYPES:
            raise err(f"{key}.type", f"{a['type']!r} is not one of the contract's campaign types {list(CAMPAIGN_TYPES)}")
        if a["channel"] not in CHANNELS:
            raise err(f"{key}.channel", f"{a['channel']!r} is not one of the contract's channels {list(CHANNELS)}")
        for k, lo, hi in (("discount_rate", 0.0, 1.0), ("cost_per_send", 0.0, None)):
            x = a[k]
            if isinstance(x, bool) or not isinstance(x, (int, float)) or x < lo or (hi is not None and x > hi):
                raise err(f"{key}.{k}", f"{x!r} must be a number >= {lo}" + (f" and <= {hi}" if hi else ""))
        tc = a.get("target_category")
        out["arms"][str(value)] = {"variant": v, "type": a["type"], "channel": a["channel"],
                                   "discount_rate": float(a["discount_rate"]), "cost_per_send": float(a["cost_per_send"]),
                                   "target_category": None if tc is None else str(tc)}

    oc = section("outcomes")
    resp = response or oc.get("response")
    if resp is None:
        raise err("outcomes.response", "missing: the 0/1 response column")
    out["response"] = column("outcomes.response" if response is None else "--response", resp)
    out["revenue"] = column("outcomes.revenue", oc["revenue"]) if oc.get("revenue") is not None else None
    out["id"] = column("id", m["id"]) if m.get("id") is not None else None

    users = section("users")
    out["users"] = {}
    for f in USER_FIELDS:
        rule = users.get(f)
        key = f"users.{f}"
        if f not in users or rule is None:
            if f not in suites.NULLABLE["users"]:
                raise err(key, f"the contract requires {f} and the mapping gives no rule: declare {{column: <col>}} "
                          "or an explicit {fill: <value>}")
            out["users"][f] = None
            continue
        if not isinstance(rule, dict) or len(rule) != 1 or next(iter(rule)) not in ("column", "fill"):
            raise err(key, "need {column: <col>} or {fill: <value>} (or null for a nullable column)")
        if "column" in rule:
            out["users"][f] = ("column", column(f"{key}.column", rule["column"]))
            continue
        v = rule["fill"]
        if f == "age" and (isinstance(v, bool) or not isinstance(v, int) or not suites.AGE_RANGE[0] <= v <= suites.AGE_RANGE[1]):
            raise err(f"{key}.fill", f"{v!r} is not an integer in {list(suites.AGE_RANGE)}")
        if f == "gender" and v not in GENDERS:
            raise err(f"{key}.fill", f"{v!r} is not one of the contract's genders {list(GENDERS)}")
        if f == "signup_ts":
            v = _ts(v, f"{key}.fill", err)
        out["users"][f] = ("fill", v)
    unknown = sorted(set(users) - set(USER_FIELDS))
    if unknown:
        raise err(f"users.{unknown[0]}", f"not a users column of the contract {list(USER_FIELDS)}")

    feats = section("features", required=False)
    out["features"] = {}
    for kind in ("numeric", "categorical"):
        cols = feats.get(kind) or []
        if not isinstance(cols, list):
            raise err(f"features.{kind}", "need a list of column names")
        for c in cols:
            column(f"features.{kind}", c)
            if not ATTR_RE.match(c):
                raise err(f"features.{kind}", f"column {c!r} cannot be an attribute name ({suites.ATTRIBUTE_NAME_REGEX})")
            if c in out["features"]:
                raise err(f"features.{kind}", f"column {c!r} is declared twice")
            out["features"][c] = kind
    used = {out["treatment"], out["response"]}
    clash = sorted(used & set(out["features"]))
    if clash:
        raise err("features", f"column {clash[0]!r} is the treatment or the response; it cannot be a feature")
    as_of = feats.get("as_of")
    if as_of is not None:
        out["as_of"] = _ts(as_of, "features.as_of", err)
    elif out["window"] is not None:
        out["as_of"] = out["window"][0]
    elif out["features"]:
        raise err("features.as_of", "required with a timestamp column and no campaign.window: when were the "
                  "feature values known?")
    else:
        out["as_of"] = None
    out["path"] = str(path)
    return out


# --------------------------------------------------------------------------- data

def read_source(path: Path, fmt: str | None) -> pd.DataFrame:
    """The data file as strings (CSV) or its own types (parquet); nothing is parsed yet."""
    fmt = fmt or ("parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv")
    if fmt == "parquet":
        return pq.read_table(path).to_pandas()
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])


def _num(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").astype("float64")


def _int_or_null(s: pd.Series, lo: int, hi: int) -> pa.Array:
    x = _num(s)
    ok = x.notna() & (x == np.floor(x)) & (x >= lo) & (x <= hi)
    return pa.array(np.where(ok, x.fillna(0), 0).astype(np.int64), mask=~ok.to_numpy())


def _str_or_null(s: pd.Series) -> pa.Array:
    return pa.array([None if pd.isna(v) else str(v) for v in s], pa.string())


def _ts_array(s: pd.Series) -> pa.Array:
    t = pd.to_datetime(s, errors="coerce", utc=True, format="mixed").dt.tz_localize(None)
    return pa.array(t.astype("datetime64[ms]"), pa.timestamp("ms"))


def _spread_ms(keys: list[str], salt: str, span_ms: int) -> np.ndarray:
    """Deterministic offsets in [1, span_ms] from sha256(salt, key): a seeded uniform spread."""
    out = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys):
        h = int.from_bytes(hashlib.sha256(f"{salt}\x1f{k}".encode()).digest()[:8], "big")
        out[i] = 1 + h % span_ms
    return out


def fold_of(keys: list[str], salt: str, k: int) -> np.ndarray:
    """Fold 0..k-1 of each key: distinct keys ranked by sha256(salt, key) and dealt into k folds
    whose sizes differ by at most one key; equal keys share a fold."""
    uniq, inverse = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    h = np.array([int.from_bytes(hashlib.sha256(f"{salt}\x1ffold\x1f{u}".encode()).digest()[:8], "big")
                  for u in uniq], dtype=np.uint64)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(h, kind="stable")] = np.arange(len(uniq))
    return (rank * k // max(len(uniq), 1))[inverse]


def build_tables(m: dict, df: pd.DataFrame) -> tuple[dict[str, pa.Table], dict]:
    """The raw tables (contract schemas) and import statistics for one data frame."""
    n = len(df)
    width = max(7, len(str(n)))
    rownum = [f"r{i:0{width}d}" for i in range(n)]
    uid = _str_or_null(df[m["id"]]) if m["id"] else pa.array(rownum, pa.string())
    exposure_id = pa.array([f"{m['campaign_id']}-{r}" for r in rownum], pa.string())

    arm_raw = df[m["treatment"]]
    arm_str = [None if pd.isna(v) else str(v) for v in arm_raw]
    variant_of = {k: a["variant"] for k, a in m["arms"].items()}
    variant = [CONTROL if v == m["control"] else variant_of.get(v, v) for v in arm_str]

    fold_stats = None
    if m["timestamp"]:
        ts = _ts_array(df[m["timestamp"]])
    else:
        start, end = m["window"]
        span = int((end - start) / pd.Timedelta(milliseconds=1))
        keys = [k or r for k, r in zip(uid.to_pylist() if m["id"] else rownum, rownum)]
        salt = m.get("spread_salt", m["campaign_id"])
        if m.get("holdout_fold") is None:
            offs = _spread_ms(keys, salt, span)
        else:  # fold f after a cut at (k-1)/k of the window, the other folds before it
            f, k = m["holdout_fold"]
            held = fold_of(keys, salt, k) == f
            cut = span * (k - 1) // k
            offs = np.where(held, cut + _spread_ms(keys, salt, span - cut), _spread_ms(keys, salt, cut))
            h = int(held.sum())
            fold_stats = {"fold": f, "k": k, "rows": h, "share": h / n if n else 0.0,
                          "time_quantile": (n - h - 0.5) / n if n else 0.0}
        ts = pa.array((np.datetime64(start.to_datetime64(), "ms") + offs.astype("timedelta64[ms]")), pa.timestamp("ms"))
    if m["window"] is not None:
        start, end = m["window"]
    else:
        valid = pd.Series(ts.to_pandas()).dropna()
        start, end = valid.min(), valid.max()
    now = max(end, pd.Series(ts.to_pandas()).max() if len(ts) else end)

    responded = _int_or_null(df[m["response"]], 0, 127).cast(pa.int8())  # 0/1 is the contract's rule
    revenue = pa.array(_num(df[m["revenue"]]).to_numpy(), pa.float64(), from_pandas=True) if m["revenue"] \
        else pa.array(np.zeros(n), pa.float64())
    exposures = pa.Table.from_arrays(   # a log has no propensities: the optional column is omitted
        [exposure_id, uid, pa.array([m["campaign_id"]] * n, pa.string()), pa.array(variant, pa.string()), ts,
         responded, revenue], schema=required_schema("exposures"))

    # One users row per distinct user id (its first row); attributes from that row.
    first = ~pd.Series(uid.to_pylist()).duplicated(keep="first").to_numpy() if m["id"] else np.ones(n, bool)
    rows = np.flatnonzero(first)
    sub = df.iloc[rows]
    ucols = []
    for f in SCHEMAS["users"].names[1:]:
        rule = m["users"][f]
        typ = SCHEMAS["users"].field(f).type
        if rule is None:
            ucols.append(pa.nulls(len(rows), typ))
        elif rule[0] == "fill":
            v = rule[1].to_datetime64() if f == "signup_ts" else rule[1]
            ucols.append(pa.array([v] * len(rows)).cast(typ))
        elif f == "age":
            ucols.append(_int_or_null(sub[rule[1]], -2**31, 2**31 - 1).cast(pa.int32()))
        elif f == "signup_ts":
            ucols.append(_ts_array(sub[rule[1]]))
        else:
            ucols.append(_str_or_null(sub[rule[1]]))
    users = pa.Table.from_arrays([uid.take(pa.array(rows)), *ucols], schema=SCHEMAS["users"])

    parts, missing = [], {}
    users_uid = uid.take(pa.array(rows))
    for name, kind in m["features"].items():
        col = sub[name]
        present = col.notna().to_numpy().copy()
        if kind == "categorical":
            present &= (col.astype(str).str.len() > 0).to_numpy()
        missing[name] = int((~present).sum())
        idx = np.flatnonzero(present)
        vals = col.iloc[idx]
        if kind == "numeric":
            num, s = pa.array(_num(vals).to_numpy(), pa.float64(), from_pandas=True), pa.nulls(len(idx), pa.string())
        else:
            num, s = pa.nulls(len(idx), pa.float64()), _str_or_null(vals)
        parts.append(pa.Table.from_arrays([
            users_uid.take(pa.array(idx)), pa.array([name] * len(idx), pa.string()),
            pa.array(np.full(len(idx), np.datetime64(m["as_of"].to_datetime64(), "ms")), pa.timestamp("ms")), num, s,
        ], schema=SCHEMAS["user_attributes"]).append_column("_row", pa.array(idx)))
    attrs = (pa.concat_tables(parts) if parts else SCHEMAS["user_attributes"].empty_table().append_column(
        "_row", pa.array([], pa.int64())))
    attrs = attrs.sort_by([("_row", "ascending")]).drop_columns(["_row"])  # stable: data row, then feature order

    campaigns = pa.Table.from_pylist([
        {"campaign_id": m["campaign_id"], "variant_id": a["variant"], "type": a["type"],
         "discount_rate": a["discount_rate"], "channel": a["channel"], "target_category": a["target_category"],
         "cost_per_send": a["cost_per_send"], "start_ts": start.to_pydatetime(), "end_ts": end.to_pydatetime()}
        for a in m["arms"].values()], schema=SCHEMAS["campaigns"])

    counts = pd.Series(arm_str, dtype=object).value_counts(dropna=False)
    declared = set(m["arms"]) | {m["control"]}
    stats = {"rows": n, "arms": {str(k): int(v) for k, v in counts.items() if k in declared},
             "undeclared_arms": {str(k): int(v) for k, v in counts.items() if k not in declared},
             "missing_feature_values": missing, "now": pd.Timestamp(now).isoformat()}
    if fold_stats is not None:
        stats["holdout_fold"] = fold_stats
    tables = {"users": users, "events": SCHEMAS["events"].empty_table(), "campaigns": campaigns,
              "exposures": exposures, "user_attributes": attrs}
    return tables, stats


def import_file(settings, mapping_path: Path | str, data_path: Path | str, batch: str | None = None,
                response: str | None = None, store=None, limit: int | None = None,
                split_seed: int | None = None, holdout_fold: tuple[int, int] | None = None) -> dict:
    """Map `data_path` with the mapping into raw/<batch>/ (one part per table, the manifest last).
    Returns the manifest. `limit`: first rows only (tests, dry looks). `split_seed`: another
    spread of exposure times (another random train/valid/holdout split), for repeated splits.
    `holdout_fold` (f, k): exposure times put fold f of k last, for cross-fitting (module docstring);
    needs spread times (no timestamp column)."""
    data_path, mapping_path = Path(data_path), Path(mapping_path)
    if not data_path.is_file():
        raise FileNotFoundError(f"data file {data_path} not found")
    with open(mapping_path) as fh:  # the format option decides how the data file is read
        fmt = (yaml.safe_load(fh) or {}).get("source", {}) or {}
    df = read_source(data_path, fmt.get("format") if isinstance(fmt, dict) else None)
    if limit is not None:
        df = df.iloc[:limit].reset_index(drop=True)
    m = load_mapping(mapping_path, [str(c) for c in df.columns], response=response)
    batch = str(batch or m["batch"] or data_path.stem)
    if split_seed is not None:
        m["spread_salt"] = f"{m['campaign_id']}#{int(split_seed)}"
    if holdout_fold is not None:
        f, k = (int(v) for v in holdout_fold)
        if not (k >= 2 and 0 <= f < k):
            raise ValueError(f"holdout_fold {holdout_fold!r}: need (f, k) with k >= 2 and 0 <= f < k")
        if m["timestamp"]:
            raise MappingError(f"{mapping_path}: timestamp: holdout_fold needs exposure times spread by the "
                               "import; this mapping takes them from a column")
        m["holdout_fold"] = (f, k)
    tables, stats = build_tables(m, df)
    if store is None:
        from campaignops.pipelines.storage import ObjectStore

        store = ObjectStore(settings)

    store.delete_prefix(layout.raw_manifest_key(batch))  # the commit marker first, then old parts
    store.delete_prefix(f"raw/{batch}/")
    entries = {}
    tmp = Path(tempfile.mkdtemp(prefix="import-"))
    try:
        for name, t in tables.items():
            key = f"{layout.raw_prefix(batch, name)}part-00000.parquet"
            pq.write_table(t, tmp / f"{name}.parquet", compression="zstd")
            store.upload_file(tmp / f"{name}.parquet", key)
            entries[name] = {"files": [key], "rows": t.num_rows}
            if name in ("events", "user_attributes") and t.num_rows == 0:
                entries[name]["empty_by_design"] = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entries["events"]["empty_by_design"] = True  # a campaign log has no behaviour events
    manifest = {
        "batch": batch,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "now": stats["now"],
        "upcoming_campaign_id": None,
        "generator": {"name": "campaignops.pipelines.importer", "mapping": str(mapping_path),
                      "mapping_sha256": sha256_file(mapping_path), "data_file": str(data_path),
                      "data_sha256": sha256_file(data_path), "rows_limit": limit, "campaign_id": m["campaign_id"],
                      "response": m["response"], "revenue": m["revenue"],
                      "exposure_times": "column " + m["timestamp"] if m["timestamp"] else
                      "spread over the campaign window by sha256(campaign id, user id or row)",
                      "split_seed": split_seed, "holdout_fold": None if holdout_fold is None else list(holdout_fold)},
        "import": stats,
        "tables": entries,
    }
    store.put_json(layout.raw_manifest_key(batch), manifest)  # last: the commit marker
    return manifest
