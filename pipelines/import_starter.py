"""Writes a starter mapping for a campaign log from its columns (`campaignops data import --init
FILE`): the treatment, outcome, id, time, user and feature columns guessed by name and by
dtype / cardinality, each guess commented, and documented defaults for what a plain RCT log
cannot know (campaign window, arm attributes, user fills), so a user edits instead of writing
from scratch. It never overwrites a file. Format and checks: pipelines/import_mapping.py.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from campaignops.pipelines.import_mapping import ATTR_RE, indistinguishable_arms
from campaignops.pipelines.inputs import MAX_ID_LENGTH, InputError, is_safe_id
from campaignops.validation import suites
from campaignops.validation.contract import CONTROL, GENDERS

# Name stems (a column's name split into lower-case words; a word starting with a stem matches).
TREATMENT = ("treat", "arm", "variant", "group", "assign", "segment", "offer", "campaign", "condition", "cell",
             "promo", "w", "t")                     # strongest first; "w" and "t" match whole words only
RESPONSE = ("visit", "conver", "respon", "click", "purchas", "buy", "bought", "redeem", "outcome", "target", "label",
            "churn", "order", "success", "y")
REVENUE = ("spend", "spent", "revenue", "gmv", "amount", "sales", "profit")
AFTER_SEND = ("exposure", "exposed", "deliver", "open", "unsubscrib")   # measured after the send: never features
SENT = ("sent", "send", "expos", "time", "ts", "timestamp", "date", "day")   # a date column named so: exposure time
NOT_SENT = ("birth", "dob", "last", "first", "signup", "registration", "registered", "joined")
ID = ("id", "uid", "user", "customer", "client", "member", "account", "cust")
SPLIT = ("split", "fold", "holdout", "partition")
USER_COLUMNS = {"age": ("age",), "gender": ("gender", "sex"),
                "region": ("region", "zip", "state", "country", "city", "area", "postcode", "postal", "province"),
                "occupation": ("occupation", "job", "profession"),
                "signup_ts": ("signup", "registration", "registered", "joined")}
CONTROL_VALUE = re.compile(r"^(no|none|control|ctrl|hold.?out|baseline|placebo|untreated|0|false|n)\b|\bno[ _-]?"
                           r"(e-?mail|mail|send|offer|treat|contact|campaign|promo)", re.I)
MAX_CATEGORIES = 50   # a text column with more distinct values is left out (an id, free text)
WINDOW = ("2024-01-01T00:00:00", "2024-01-15T00:00:00")   # placeholder campaign window (two weeks)


class StarterError(InputError):
    """The starter mapping cannot be written (one line naming the file and what to do)."""


@dataclass
class Column:
    name: str
    words: list[str]
    rows: int            # non-null values
    distinct: int
    numeric: bool
    binary: bool         # numeric with values in {0, 1}
    date: bool
    top: list[str]       # the most frequent values, as text

    def named(self, stems: tuple[str, ...]) -> int | None:
        """Index of the first stem a word of the name starts with (1-letter stems: whole word)."""
        for i, s in enumerate(stems):
            if any(w == s or (len(s) > 1 and w.startswith(s)) for w in self.words):
                return i
        return None


def _words(name: str) -> list[str]:
    return re.findall(r"[a-z]+|\d+", re.sub(r"([a-z])([A-Z])", r"\1_\2", str(name)).lower())


def profile(df: pd.DataFrame) -> list[Column]:
    """One Column per data column: what the guesses below read."""
    out = []
    for name in df.columns:
        s = df[name].dropna()
        s = s[s.astype(str).str.strip() != ""]
        num = pd.to_numeric(s, errors="coerce")
        numeric = len(s) > 0 and bool(num.notna().all())
        date = pd.api.types.is_datetime64_any_dtype(s)
        if not numeric and not date and len(s):
            sample = s.astype(str).head(200)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
            date = bool(parsed.notna().mean() >= 0.9 and sample.str.contains(r"\d").all())
        text = s.astype(str)
        binary = numeric and set(num.unique()) <= {0, 1}
        top = text.value_counts().index[:MAX_CATEGORIES].tolist()
        out.append(Column(str(name), _words(str(name)), len(s), int(text.nunique()), numeric, binary, date, top))
    return out


def _q(v) -> str:
    """A YAML flow scalar / mapping (quoted where YAML would read it as another type)."""
    s = yaml.safe_dump(v, default_flow_style=True, width=10**6, allow_unicode=True, sort_keys=False)
    return s[:-5] if s.endswith("\n...\n") else s.strip()


def _treatment(cols: list[Column], n: int) -> tuple[Column | None, str]:
    def score(c: Column):
        i = c.named(TREATMENT)
        return ((len(TREATMENT) - i) * 10 if i is not None else 0) + 5 * any(CONTROL_VALUE.search(v) for v in c.top) \
            + (c.distinct <= 10)
    cands = [c for c in cols if 2 <= c.distinct <= 20 and c.distinct < n and not c.date
             and not (c.named(RESPONSE) is not None and c.named(TREATMENT) is None) and c.named(SPLIT) is None]
    if not cands:
        return None, "CHECK: no column with 2-20 distinct values: name the arm column"
    best = max(cands, key=score)
    why = f"{best.distinct} values {best.top[:4]}" + (", named like a treatment" if best.named(TREATMENT) is not None
                                                        else "")
    return best, ("guess: " if score(best) >= 10 else "WEAK guess (CHECK): ") + why


def _control(t: Column) -> tuple[str, str]:
    hit = [v for v in t.top if CONTROL_VALUE.search(v)]
    if hit:
        return hit[0], "guess: the value that reads as no send; CHECK it is the randomized control"
    return t.top[0], "WEAK guess (CHECK): no value reads as no send; the most frequent one"


def _arm(value: str, column: str, taken: set) -> dict:
    low = value.lower()
    words = set(_words(value))
    channel = next((ch for ch, ws in (("sms", {"sms", "text"}), ("push", {"push"}), ("app", {"app", "inapp"}))
                    if words & ws), "email")
    kind = next((k for k, ws in (("coupon", {"coupon", "voucher", "code"}), ("free_shipping", {"shipping", "ship"}),
                                 ("bundle", {"bundle"})) if words & ws), "discount")
    pct = re.search(r"(\d+(?:\.\d+)?)\s*(%|pct|percent|off)", low)
    rate = float(pct.group(1)) / 100 if pct and float(pct.group(1)) <= 100 else 0.0
    variant = re.sub(r"[^a-z0-9]+", "_", low).strip("_")[:MAX_ID_LENGTH]
    if not variant or variant.isdigit() or variant == CONTROL or not is_safe_id(variant):
        prefix = re.sub(r"[^a-z0-9]+", "_", column.lower()).strip("_") or "arm"
        variant = f"{prefix}_{variant or len(taken)}"[:MAX_ID_LENGTH]
    while variant in taken:
        variant = f"{variant[:MAX_ID_LENGTH - 4]}_{len(taken)}"
    taken.add(variant)
    return {"variant": variant, "type": kind, "channel": channel, "discount_rate": rate, "cost_per_send": 0.0,
            "target_category": None}


def starter(df: pd.DataFrame, name: str, fmt: str) -> tuple[str, dict]:
    """(mapping YAML text with comments, the guesses) for a log read into `df` (file name `name`)."""
    n, cols = len(df), profile(df)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem).strip("_.-")[:MAX_ID_LENGTH] or "imported"
    t, t_why = _treatment(cols, n)
    rest = [c for c in cols if c is not t]
    binaries = [c for c in rest if c.binary and c.named(RESPONSE) is not None]
    revenues = [c for c in rest if c.numeric and not c.binary and c.named(REVENUE) is not None]
    ident = next((c for c in rest if c.distinct == n == c.rows and c.named(ID) is not None), None)
    times = [c for c in rest if c.date and c.named(SENT) is not None and c.named(NOT_SENT) is None]
    stamp = times[0] if times else None
    g = {"treatment": t.name if t else None, "response": binaries[0].name if binaries else None,
         "revenue": revenues[0].name if revenues else None, "id": ident.name if ident else None,
         "timestamp": stamp.name if stamp else None, "features": {}, "left_out": {}}
    lines = [f"# Starter mapping for {name} ({n} rows, {len(cols)} columns), written by `campaignops data import",
             "# --init`. Every value is a guess (commented) or a documented default: check the ones marked CHECK,",
             "# edit, then import (the holdout: --holdout-fraction P, --holdout-fold F/K or --holdout-column COL[=V]):",
             f"#   campaignops data import --mapping <this file> {name}",
             "# Format and rules: pipelines/import_mapping.py; a worked example: validation/mappings/hillstrom.yaml.",
             # quoted: a slug like "no" or "1e3" stays text
             f"source: {{format: {fmt}}}", f"batch: {_q(slug)}", "campaign:", f"  id: {_q(slug)}"]
    start = pd.Timestamp(WINDOW[0])
    if stamp is None:
        lines += ["  # Default: the log has no exposure-time column, so a placeholder two-week window. Exposure times",
                  "  # are spread over it by a hash of the user id (the time split is then a random split); put the",
                  "  # real send dates if you know them.",
                  f"  window: {{start: {_q(WINDOW[0])}, end: {_q(WINDOW[1])}}}"]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = pd.to_datetime(df[stamp.name], errors="coerce", format="mixed", utc=True).min().tz_localize(None)
        lines.append(f"  # no window: exposure times come from column {stamp.name!r} (guess: its values are dates)")
    lines += _treatment_lines(t, t_why, df, g)
    lines.append("outcomes:")
    others = [c.name for c in binaries[1:]]
    lines.append(f"  response: {_q(g['response'])}   # " + (
        "guess: a 0/1 column named like an outcome" + (f"; also 0/1 outcomes: {', '.join(others)} (--response NAME)"
                                                        if others else "") if g["response"] else
        "CHECK: no 0/1 column is named like an outcome: name the 0/1 response column"))
    lines.append(f"  revenue: {_q(g['revenue'])}   # " + ("guess: a numeric column named like money" if g["revenue"]
                                                        else "default: no numeric column named like money (optional)"))
    lines.append(f"id: {_q(g['id'])}   # " + ("guess: unique values, named like an id" if ident else
                                              "default: no unique column named like an id: the row number"))
    lines.append(f"timestamp: {_q(g['timestamp'])}   # " + ("guess: a column of dates" if stamp else
                                                            "default: no column of dates: spread over campaign.window"))
    lines += _users_lines(rest, start)
    outcomes = {c.name for c in binaries + revenues} | {c.name for c in rest if c.named(AFTER_SEND) is not None}
    used = {g["treatment"], g["id"], g["timestamp"]}
    for c in rest:
        why = ("the response" if c.name == g["response"] else "the revenue" if c.name == g["revenue"]
               else "an outcome or measured after the send" if c.name in outcomes else "the id or the exposure time"
               if c.name in used else "a split column: use --holdout-column" if c.named(SPLIT) is not None
               else "a date" if c.date else "empty or constant" if c.distinct < 2
               else f"not an attribute name ({suites.ATTRIBUTE_NAME_REGEX}): rename it" if not ATTR_RE.match(c.name)
               else f"{c.distinct} distinct values, too many to one-hot"
               if not c.numeric and c.distinct > MAX_CATEGORIES
               else None)
        if why:
            g["left_out"][c.name] = why
        else:
            g["features"][c.name] = "numeric" if c.numeric else "categorical"
    lines += ["features:",
              "  # What the model reads about each customer, known before the send (stamped as_of: default the",
              "  # window start). numeric: numbers (0/1 flags too); categorical: text, one-hot."]
    if stamp is not None and g["features"]:
        lines.append(f"  as_of: {_q(start.isoformat())}   # default: the first exposure time; CHECK they were known then")
    lines += [f"  numeric: {_q([k for k, v in g['features'].items() if v == 'numeric'])}",
              f"  categorical: {_q([k for k, v in g['features'].items() if v == 'categorical'])}"]
    lines += [f"  # left out: {k} ({v})" for k, v in g["left_out"].items()]
    return "\n".join(lines) + "\n", g


def _treatment_lines(t: Column | None, why: str, df: pd.DataFrame, g: dict) -> list[str]:
    if t is None:
        g.update(control=None, arms={})
        return ["treatment:", f"  column: null   # {why}", "  control: null   # CHECK: the no-send value",
                "  arms: {}   # CHECK: value -> {variant, type, channel, discount_rate, cost_per_send}"]
    control, c_why = _control(t)
    counts = df[t.name].dropna().astype(str).value_counts()   # the values as the importer compares them
    taken: set = set()
    arms = {v: _arm(v, t.name, taken) for v in sorted(counts.index) if v != control}
    g.update(control=control, arms={v: a["variant"] for v, a in arms.items()})
    out = ["treatment:", f"  column: {_q(t.name)}   # {why}", f"  control: {_q(control)}   # {c_why}",
           "  # One line per treatment arm: value -> attributes the log does not know. Defaults: type discount",
           "  # (coupon / free_shipping / bundle when the value names one), channel email (sms / push / app when",
           "  # named), discount_rate from an 'NN%' in the value (else 0.0), cost_per_send 0.0, no target_category.",
           "  # The network sees an arm only through type, channel, discount_rate, cost_per_send and",
           "  # target_category: arms equal in all of them are one arm to it."]
    for group in indistinguishable_arms(arms):
        out += [f"  # CHECK: {', '.join(map(repr, group))} have equal attributes: give each its real ones or a",
                "  # distinct target_category (what it promotes), or the import warns."]
    out.append("  arms:")
    out += [f"    {_q(v)}: {_q(a)}   # {counts[v]} rows" for v, a in arms.items()]
    return out


def _users_lines(cols: list[Column], start: pd.Timestamp) -> list[str]:
    found = {f: next((c for c in cols if c.named(stems) is not None), None) for f, stems in USER_COLUMNS.items()}
    lo, hi = suites.AGE_RANGE
    out = ["users:", "  # Contract columns: a column of the log when one is named like it, else an explicit default",
           "  # (a constant carries no information to any model)."]
    age = found["age"]
    out.append(f"  age: {{column: {_q(age.name)}}}   # guess: named like an age (rows outside [{lo}, {hi}] are "
               "quarantined)" if age and age.numeric else
               f"  age: {{fill: 40}}   # default (the contract requires an integer in [{lo}, {hi}])")
    sex = found["gender"]
    if sex and set(sex.top) <= set(GENDERS):
        out.append(f"  gender: {{column: {_q(sex.name)}}}   # guess: named like a gender, values in {list(GENDERS)}")
    else:
        note = f"; column {sex.name!r} has values {sex.top[:5]}: map them to {list(GENDERS)} first" if sex else ""
        out.append(f"  gender: {{fill: U}}   # default: the contract's unknown{note}")
    for f in ("region", "occupation"):
        c = found[f]
        out.append(f"  {f}: {{column: {_q(c.name)}}}   # guess: named like a {f}" if c and not c.numeric else
                   f"  {f}: null   # default: unknown (nullable)")
    su = found["signup_ts"]
    year_before = (start - pd.Timedelta(days=365)).isoformat()
    out.append(f"  signup_ts: {{column: {_q(su.name)}}}   # guess: named like a signup date" if su and su.date else
               f"  signup_ts: {{fill: {_q(year_before)}}}   # default: a year before the window start")
    return out


def write_starter(data_path: Path | str, out_path: Path | str | None = None) -> tuple[Path, dict]:
    """Write the starter mapping of `data_path` to `out_path` (default: <stem>.mapping.yaml in the
    current directory); never overwrites. Returns (the path written, the guesses)."""
    from campaignops.pipelines.importer import check_data_file, read_source

    data_path = Path(data_path)
    check_data_file(data_path)
    out = Path(out_path) if out_path is not None else Path(f"{data_path.stem}.mapping.yaml")
    if out.exists():
        raise StarterError(f"{out}: already exists; --init never overwrites a mapping: pass --mapping NEW.yaml "
                           "or move the file away")
    fmt = "parquet" if data_path.suffix.lower() in (".parquet", ".pq") else "csv"
    df = read_source(data_path, fmt)   # a DataFileError names the file and what is wrong with it
    if df.empty:
        raise StarterError(f"{data_path}: no data rows: the starter guesses from the values")
    text, guesses = starter(df, data_path.name, fmt)
    try:
        with open(out, "x") as fh:   # exclusive: a file created meanwhile is not overwritten either
            fh.write(text)
    except OSError as exc:
        raise StarterError(f"{out}: cannot be written ({exc.strerror or exc})") from None
    return out, guesses
