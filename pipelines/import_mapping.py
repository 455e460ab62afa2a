"""Reads and checks the mapping YAML of a campaign-log import, reporting every problem at once.

Mapping (validation/mappings/hillstrom.yaml is a complete one; `campaignops data import --init
FILE` writes a starter from a log's columns, pipelines/import_starter.py):

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

The network sees an arm only through ARM_ATTRIBUTES: arms equal in all of them are one arm to it
(`indistinguishable_arms`; the import warns and records them).

The mapping has no true/false settings: an unquoted yes/no/on/off/true/false (any case YAML 1.1
reads as a boolean, e.g. `control: No`) stops the import with a hint to quote it, instead of
becoming the text "False" that matches no row. Batch and campaign ids follow the safe-id rule of
pipelines/inputs.py. A mapping that cannot be read (missing, a directory, not UTF-8, not YAML, not
a mapping of keys) is a MappingError naming the file, like every other problem.
"""
from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from campaignops.pipelines.inputs import ID_RULE, InputError, is_safe_id, one_line
from campaignops.validation import suites
from campaignops.validation.contract import CAMPAIGN_TYPES, CHANNELS, CONTROL, GENDERS

FORMATS = ("csv", "parquet")
ARM_KEYS = {"variant", "type", "channel", "discount_rate", "cost_per_send", "target_category"}
ARM_ATTRIBUTES = ("type", "channel", "discount_rate", "cost_per_send", "target_category")  # models/inputs.ARM_COLUMNS
USER_FIELDS = ("age", "gender", "region", "occupation", "signup_ts")
MAX_DEPTH = 8   # levels of nesting read_mapping accepts (a valid mapping has 4; deeper is garbage)
TOP_KEYS = {"source", "batch", "campaign", "treatment", "outcomes", "id", "timestamp", "users", "features"}
ATTR_RE = re.compile(suites.ATTRIBUTE_NAME_REGEX)


class MappingError(InputError):
    """The mapping is invalid or does not fit the data file: every problem, one line each,
    as `<file>: <key>: <what is wrong and what to do>`."""

    def __init__(self, path: Path | str, problems: list[tuple[str, str]]):
        self.path = str(path)
        self.problems = [(one_line(k), one_line(msg)) for k, msg in problems]
        ValueError.__init__(self, "\n".join(f"{self.path}: {k}: {msg}" if k else f"{self.path}: {msg}"
                                             for k, msg in self.problems))   # lines kept: one per problem


@dataclass(frozen=True)
class _YamlBool:
    """A scalar YAML 1.1 read as a boolean, with the text it was written as."""
    text: str
    value: bool

    def __str__(self) -> str:
        return self.text


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):   # libyaml when present: same rules, faster
    """yaml's safe loader, but booleans stay _YamlBool so the mapping can name them."""


_Loader.add_constructor("tag:yaml.org,2002:bool",
                        lambda loader, node: _YamlBool(node.value, loader.construct_yaml_bool(node)))


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    what = ": ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x) or str(exc)
    return what + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def _scan(tree) -> tuple[list[tuple[str, _YamlBool]], int]:
    """(key path, boolean) for every boolean key or value in the parsed mapping, and its nesting
    depth. Iterative, and shared (aliased) nodes are visited once: an alias bomb stays cheap."""
    found, seen, todo, depth = [], set(), [("", tree, 0)], 0
    while todo:
        path, node, level = todo.pop()
        depth = max(depth, level)
        if isinstance(node, _YamlBool):
            found.append((path, node))
        elif isinstance(node, (dict, list)) and id(node) not in seen and level <= MAX_DEPTH:
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else ((f"[{i}]", v) for i, v in enumerate(node))
            for k, v in items:
                sub = f"{path}{k}" if isinstance(node, list) else (f"{path}.{k}" if path else str(k))
                if isinstance(k, _YamlBool):
                    found.append((sub, k))
                todo.append((sub, v, level + 1))
    return sorted(found, key=lambda f: f[0]), depth


def read_mapping(path: Path | str) -> dict:
    """The mapping file parsed: a dict of keys, or MappingError naming the file and why not (not
    found, not a file, not UTF-8, not YAML, not a mapping, unquoted booleans)."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():
            raise MappingError(path, [("", "is a directory, not a mapping file" if path.is_dir()
                                       else "is not a regular file")])
        text = path.read_bytes().decode("utf-8-sig")
        tree = yaml.load(text, Loader=_Loader)
    except FileNotFoundError:
        raise MappingError(path, [("", "mapping file not found")]) from None
    except UnicodeDecodeError as exc:
        raise MappingError(path, [("", f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): "
                                       "save the mapping as UTF-8")]) from None
    except OSError as exc:   # permission denied, a broken link, ...
        raise MappingError(path, [("", f"cannot be read ({exc.strerror or exc})")]) from None
    except yaml.YAMLError as exc:
        raise MappingError(path, [("", f"not valid YAML: {_where(exc)}")]) from None
    except RecursionError:
        raise MappingError(path, [("", "not valid YAML for a mapping: nested too deeply")]) from None
    if not isinstance(tree, dict):
        kind = "boolean" if isinstance(tree, _YamlBool) else type(tree).__name__
        got = "an empty file" if tree is None else f"a YAML {kind} ({reprlib.repr(tree)})"
        raise MappingError(path, [("", f"the mapping must be a YAML mapping of keys {sorted(TOP_KEYS)}, got {got}")])
    bools, depth = _scan(tree)
    if depth > MAX_DEPTH:
        raise MappingError(path, [("", f"nested more than {MAX_DEPTH} levels deep; a valid mapping nests 4 "
                                       "(treatment.arms.<value>.<attribute>)")])
    if bools:
        raise MappingError(path, [(k, f"unquoted {b.text} is read by YAML as the boolean {str(b.value).lower()}; the "
                                      f"mapping has no true/false settings: quote it (\"{b.text}\") to mean the text")
                                  for k, b in bools])
    return tree


class _Checks:
    """Collects (key, message) problems; each check returns None when it failed."""

    def __init__(self, columns: list[str]):
        self.columns, self.problems = columns, []

    def fail(self, key: str, msg: str) -> None:
        self.problems.append((key, msg))

    def column(self, key: str, value) -> str | None:
        if isinstance(value, str) and value in self.columns:
            return value
        return self.fail(key, f"column {value!r} is not in the data file (columns: {self.columns})")

    def ts(self, key: str, value) -> pd.Timestamp | None:
        try:
            t = pd.Timestamp(str(value))
        except (ValueError, TypeError):
            return self.fail(key, f"{value!r} is not a date/time (ISO 8601, e.g. 2008-03-01T00:00:00)")
        return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t

    def section(self, m: dict, key: str, required: bool = True) -> dict | None:
        v = m.get(key)
        if v is None and not required:
            return {}
        if not isinstance(v, dict):
            return self.fail(key, "missing or not a mapping")
        return v


def load_mapping(path: Path | str, columns: list[str], response: str | None = None, raw: dict | None = None) -> dict:
    """Parse and check a mapping against the data file's columns. Returns the normalized mapping;
    raises MappingError listing every problem found (file and key each). `raw`: the file as
    read_mapping returned it (else it is read here)."""
    path = Path(path)
    m = read_mapping(path) if raw is None else raw
    c = _Checks(columns)
    for k in sorted(set(m) - TOP_KEYS, key=str):
        c.fail(str(k), f"unknown key; allowed top-level keys are {sorted(TOP_KEYS)}")
    src = c.section(m, "source", required=False) or {}
    fmt = src.get("format")
    if fmt is not None and fmt not in FORMATS:
        c.fail("source.format", f"{fmt!r} is not one of {list(FORMATS)}")
    batch = m.get("batch")
    if batch is not None and not is_safe_id(batch):
        c.fail("batch", _id_problem(batch))
    out: dict = {"batch": batch, "format": fmt}
    out["timestamp"] = c.column("timestamp", m["timestamp"]) if m.get("timestamp") is not None else None
    campaign = _campaign(m, c, has_timestamp=m.get("timestamp") is not None)
    window_declared = campaign.pop("window_declared")
    out.update(campaign)
    out.update(_treatment(m, c))
    oc = c.section(m, "outcomes") or {}
    resp = response or oc.get("response")
    if resp is None:
        c.fail("outcomes.response", "missing: the 0/1 response column")
    out["response"] = None if resp is None else c.column("outcomes.response" if response is None else "--response", resp)
    out["revenue"] = c.column("outcomes.revenue", oc["revenue"]) if oc.get("revenue") is not None else None
    out["id"] = c.column("id", m["id"]) if m.get("id") is not None else None
    out["users"] = _users(m, c)
    out.update(_features(m, c, out, window_declared))
    if c.problems:
        raise MappingError(path, c.problems)
    out["path"] = str(path)
    return out


def _campaign(m: dict, c: _Checks, has_timestamp: bool) -> dict:
    camp = c.section(m, "campaign")
    if camp is None:
        return {"campaign_id": None, "window": None, "window_declared": False}
    cid = camp.get("id")
    if not is_safe_id(cid):
        c.fail("campaign.id", _id_problem(cid))
    window = camp.get("window")
    out = {"campaign_id": cid, "window": None, "window_declared": window is not None}
    if window is None:
        if not has_timestamp:
            c.fail("campaign.window", "required when no timestamp column is declared (exposure times are spread "
                   "over it)")
        return out
    if not isinstance(window, dict) or set(window) != {"start", "end"}:
        c.fail("campaign.window", "need {start: <time>, end: <time>}")
        return out
    start, end = c.ts("campaign.window.start", window["start"]), c.ts("campaign.window.end", window["end"])
    if start is not None and end is not None:
        if start < end:
            out["window"] = (start, end)
        else:
            c.fail("campaign.window", f"start {start} is not before end {end}")
    return out


def _treatment(m: dict, c: _Checks) -> dict:
    out = {"treatment": None, "control": None, "arms": {}}
    tr = c.section(m, "treatment")
    if tr is None:
        return out
    out["treatment"] = c.column("treatment.column", tr.get("column"))
    if tr.get("control") is None:
        c.fail("treatment.control", "not declared: name the arm value of the randomized control (no-send) group")
    elif isinstance(tr["control"], (dict, list)):
        c.fail("treatment.control", f"{tr['control']!r}: need one arm value (text or a number), not a "
               f"{type(tr['control']).__name__}")
    else:
        out["control"] = str(tr["control"])
    arms = tr.get("arms")
    if not isinstance(arms, dict) or not arms:
        c.fail("treatment.arms", "missing: declare at least one treatment arm (arm value -> attributes)")
        return out
    variants = set()
    for value, a in arms.items():
        key = f"treatment.arms.{value}"
        if str(value) == out["control"]:
            c.fail(key, "the control arm is implicit; do not list it under arms")
            continue
        arm = _arm(key, a, c, variants)
        if arm is not None:
            out["arms"][str(value)] = arm
    return out


def _arm(key: str, a, c: _Checks, variants: set) -> dict | None:
    if not isinstance(a, dict):
        return c.fail(key, "need a mapping of " + ", ".join(sorted(ARM_KEYS)))
    n = len(c.problems)
    for k in sorted(set(a) - ARM_KEYS, key=str):
        c.fail(f"{key}.{k}", f"unknown key; allowed: {sorted(ARM_KEYS)}")
    for k in sorted(ARM_KEYS - set(a) - {"target_category"}):
        c.fail(f"{key}.{k}", "missing (every arm declares variant, type, channel, discount_rate, cost_per_send)")
    if "variant" in a:
        v = str(a["variant"])
        if not isinstance(a["variant"], str) or not is_safe_id(v) or v == CONTROL or v in variants:
            c.fail(f"{key}.variant", f"{a['variant']!r}: need a unique id as text ({ID_RULE}), not {CONTROL!r}")
        variants.add(v)
    if "type" in a and a["type"] not in CAMPAIGN_TYPES:
        c.fail(f"{key}.type", f"{a['type']!r} is not one of the contract's campaign types {list(CAMPAIGN_TYPES)}")
    if "channel" in a and a["channel"] not in CHANNELS:
        c.fail(f"{key}.channel", f"{a['channel']!r} is not one of the contract's channels {list(CHANNELS)}")
    for k, lo, hi in (("discount_rate", 0.0, 1.0), ("cost_per_send", 0.0, None)):
        x = a.get(k, 0.0)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x < lo or (hi is not None and x > hi):
            c.fail(f"{key}.{k}", f"{x!r} must be a number >= {lo}" + (f" and <= {hi}" if hi else ""))
    if len(c.problems) > n:
        return None
    tc = a.get("target_category")
    return {"variant": str(a["variant"]), "type": a["type"], "channel": a["channel"],
            "discount_rate": float(a["discount_rate"]), "cost_per_send": float(a["cost_per_send"]),
            "target_category": None if tc is None else str(tc)}


def _id_problem(value) -> str:
    if isinstance(value, str):
        return f"{value!r}: not a safe id ({ID_RULE})"
    return (f"{value!r}: YAML read this as a {type(value).__name__}, not text: quote it, and use a safe id "
            f"({ID_RULE})")


def _users(m: dict, c: _Checks) -> dict:
    users = c.section(m, "users")
    if users is None:
        return {}
    out = {}
    for f in USER_FIELDS:
        rule, key = users.get(f), f"users.{f}"
        if rule is None:
            if f not in suites.NULLABLE["users"]:
                c.fail(key, f"the contract requires {f} and the mapping gives no rule: declare {{column: <col>}} "
                       "or an explicit {fill: <value>}")
            out[f] = None
        elif not isinstance(rule, dict) or len(rule) != 1 or next(iter(rule)) not in ("column", "fill"):
            c.fail(key, "need {column: <col>} or {fill: <value>} (or null for a nullable column)")
        elif "column" in rule:
            col = c.column(f"{key}.column", rule["column"])
            out[f] = None if col is None else ("column", col)
        else:
            v = _fill(f, rule["fill"], c)
            out[f] = None if v is None else ("fill", v)
    for k in sorted(set(users) - set(USER_FIELDS), key=str):
        c.fail(f"users.{k}", f"not a users column of the contract {list(USER_FIELDS)}")
    return out


def _fill(field: str, v, c: _Checks):
    key = f"users.{field}.fill"
    if field == "age" and (isinstance(v, bool) or not isinstance(v, int)
                           or not suites.AGE_RANGE[0] <= v <= suites.AGE_RANGE[1]):
        return c.fail(key, f"{v!r} is not an integer in {list(suites.AGE_RANGE)}")
    if field == "gender" and v not in GENDERS:
        return c.fail(key, f"{v!r} is not one of the contract's genders {list(GENDERS)}")
    if field == "signup_ts":
        return c.ts(key, v)
    return v


def _features(m: dict, c: _Checks, out: dict, window_declared: bool) -> dict:
    feats = c.section(m, "features", required=False) or {}
    found: dict[str, str] = {}
    for kind in ("numeric", "categorical"):
        cols = feats.get(kind) or []
        if not isinstance(cols, list):
            c.fail(f"features.{kind}", "need a list of column names")
            continue
        for col in cols:
            if c.column(f"features.{kind}", col) is None:
                continue
            if not ATTR_RE.match(col):
                c.fail(f"features.{kind}", f"column {col!r} cannot be an attribute name ({suites.ATTRIBUTE_NAME_REGEX})")
            elif col in found:
                c.fail(f"features.{kind}", f"column {col!r} is declared twice")
            else:
                found[col] = kind
    for col in sorted({out["treatment"], out["response"]} & set(found)):
        c.fail("features", f"column {col!r} is the treatment or the response; it cannot be a feature")
    as_of = None
    if feats.get("as_of") is not None:
        as_of = c.ts("features.as_of", feats["as_of"])
    elif out["window"] is not None:
        as_of = out["window"][0]
    elif found and not window_declared:
        c.fail("features.as_of", "required with a timestamp column and no campaign.window: when were the "
               "feature values known?")
    return {"features": found, "as_of": as_of}


def check_arm_values(m: dict, values: pd.Series) -> list[str]:
    """The treatment column's values against the declared arms: raises MappingError when the
    control value never occurs (no uplift can be measured); returns warnings for declared arms
    without rows and for values no arm declares (their rows are quarantined by validate)."""
    counts = values.dropna().astype(str).value_counts()
    key = "treatment.control"
    if m["control"] not in counts.index:
        seen = ", ".join(f"{v!r} ({n})" for v, n in counts.head(20).items())
        raise MappingError(m["path"], [(key, f"{m['control']!r} never occurs in column {m['treatment']!r} "
                                             f"(values and rows: {seen or 'none'})")])
    warnings = [f"treatment.arms.{a}: declared but no row of column {m['treatment']!r} has this value"
                for a in m["arms"] if a not in counts.index]
    undeclared = [f"{v!r} ({n} rows)" for v, n in counts.items() if v != m["control"] and v not in m["arms"]]
    if undeclared:
        warnings.append(f"treatment.arms: values of column {m['treatment']!r} not declared as arms: "
                        f"{', '.join(undeclared)}; validate quarantines their rows")
    return warnings


def indistinguishable_arms(arms: dict[str, dict]) -> list[list[str]]:
    """Groups (arm values, as in the log) of two or more arms equal in every ARM_ATTRIBUTES:
    the network, which sees an arm only through them, cannot tell them apart."""
    groups: dict[tuple, list[str]] = {}
    for value, a in arms.items():
        tc = a.get("target_category")
        key = tuple(a[k] for k in ARM_ATTRIBUTES[:-1]) + (None if tc in (None, "", "none") else tc,)
        groups.setdefault(key, []).append(value)
    return [g for g in groups.values() if len(g) > 1]


def arms_warning(group: list[str], arms: dict[str, dict]) -> str:
    a = arms[group[0]]
    names = ", ".join(f"{v!r} (variant {arms[v]['variant']})" for v in group)
    same = ", ".join(f"{k} {a[k]!r}" for k in ARM_ATTRIBUTES)
    return (f"treatment.arms: {names} have the same attributes ({same}): the network sees an arm only "
            "through these, so it predicts one effect for all of them; give each its real type, channel, "
            "discount_rate, cost_per_send or a distinct target_category")
