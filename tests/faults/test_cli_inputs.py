"""Bad input on the command line (issue 17, item 6), through the `campaignops` entry point run
in-process (Typer's CliRunner) on an in-process S3 (moto).

1. Each case the probe found — a malformed mapping, a YAML list, a missing data or mapping file,
   a directory given as a file, `--batch ../../etc`, unquoted YAML booleans — prints one line
   naming the file (or option) and the problem and exits 2, without a traceback.
2. A fuzz of >= 1,000 generated bad data files and mappings (truncated / garbled / mis-delimited
   CSV, wrong types, bad encodings, broken parquet, YAML of the wrong shape, booleans, directories,
   missing files, hostile ids) through `campaignops data import`: zero tracebacks; a failure exits
   non-zero with one line per problem, each naming the data or mapping file or the option; an
   import that succeeds lost no row — every data record landed once as an exposure whose id
   carries its row number. A sample of the successes (all of them in the slow variant) goes on
   through ingest and validate: every row is in the validated data or in quarantine with a rule.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer.main
import typer.testing
import yaml
from typer.testing import CliRunner

from campaignops import cli
from campaignops.pipelines import ingest, layout, storage, validate
from campaignops.pipelines.inputs import MAX_ID_LENGTH
from conftest import moto_store, project_settings

N_CASES = 1000
N_CASES_SLOW = 3000
SEED = 20261201
VALIDATE_SAMPLE = 3            # imports validated in the fast run (GX makes each ~3 s)
VALIDATE_SLOW = 40             # ... and in the slow one
ARMS = ("ctl", "A", "B")
BOOL_WORDS = ("yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "true", "True", "false",
              "FALSE")
HOSTILE_IDS = ("../../etc", "..", ".", ".hidden", "a/b", "a\\b", "/abs", "", " ", "x" * (MAX_ID_LENGTH + 1),
               "a\nb", "a b", "-rf", "ü", "a:b", "a*", "%2e%2e", "C:\\x", "a\x00b", "a\tb", "ｆｕｌｌ", "a;rm -rf /",
               "$(id)", "raw/../x")
TRACEBACK_MARKS = ("Traceback", "╭", "╰", "│ ")


# --------------------------------------------------------------------------- the world

@pytest.fixture
def cli_world(tmp_path, monkeypatch):
    """(settings, store, tmp dir): the CLI's settings and S3 are this workspace and a moto bucket."""
    settings = project_settings(tmp_path)
    settings.env["CAMPAIGNOPS_ID_SALT"] = "fuzz-salt"
    for k, v in settings.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CAMPAIGNOPS_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("CAMPAIGNOPS_STATE", str(settings.state_dir))
    monkeypatch.delenv("CAMPAIGNOPS_DEBUG", raising=False)
    monkeypatch.setattr(cli, "load_settings", lambda: settings)   # params.yaml parsed once, not per command
    # the click command built from the Typer app once, not per invocation
    monkeypatch.setattr(typer.testing, "_get_command", functools.lru_cache(typer.main.get_command))
    with moto_store(settings) as store:
        monkeypatch.setattr(storage, "s3_client", lambda _settings: store.client)
        yield settings, store, tmp_path


def invoke(args: list[str]):
    return CliRunner().invoke(cli.app, args, catch_exceptions=True)


def assert_one_line_error(result, *names: str) -> str:
    """Exit 2, no traceback, one line (or a counted list of mapping problems), naming one of `names`."""
    out = result.output
    assert result.exit_code == 2, (result.exit_code, out, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert not any(m in out for m in TRACEBACK_MARKS), out
    lines = [line for line in out.splitlines() if line.strip()]
    if lines and lines[0].startswith("mapping errors ("):
        assert lines[0] == f"mapping errors ({len(lines) - 1}):", out
        body = lines[1:]
    else:
        assert len(lines) == 1, out
        body = lines
    for line in body:
        assert any(n in line for n in names), (names, line)
    return "\n".join(lines)


# --------------------------------------------------------------------------- generated inputs

def base_frame(rng: random.Random, n: int, arms=ARMS) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n)],
        "arm": [rng.choice(arms) for _ in range(n - 1)] + [arms[0]],   # the control occurs
        "visit": [str(rng.randint(0, 1)) for _ in range(n)],
        "spend": [f"{rng.random() * 50:.2f}" for _ in range(n)],
        "age": [str(rng.randint(18, 80)) for _ in range(n)],
        "gender": [rng.choice("FMU") for _ in range(n)],
        "zip": [rng.choice(["Urban", "Rural", "Surburban"]) for _ in range(n)],
        "recency": [str(rng.randint(1, 12)) for _ in range(n)],
        "channel": [rng.choice(["Web", "Phone", "Multichannel"]) for _ in range(n)],
    })


def base_mapping(batch: str, campaign: str, arms=ARMS) -> dict:
    def arm(variant, rate):
        return {"variant": variant, "type": "discount", "channel": "email", "discount_rate": rate,
                "cost_per_send": 0.05, "target_category": None}
    return {
        "source": {"format": "csv"}, "batch": batch,
        "campaign": {"id": campaign, "window": {"start": "2026-03-01T00:00:00", "end": "2026-03-15T00:00:00"}},
        "treatment": {"column": "arm", "control": arms[0],
                      "arms": {arms[1]: arm("a", 0.1), arms[2]: arm("b", 0.2)}},
        "outcomes": {"response": "visit", "revenue": "spend"},
        "id": "user_id", "timestamp": None,
        "users": {"age": {"column": "age"}, "gender": {"column": "gender"}, "region": {"column": "zip"},
                  "occupation": None, "signup_ts": {"fill": "2025-01-01T00:00:00"}},
        "features": {"numeric": ["recency"], "categorical": ["channel"]},
    }


def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def csv_records(data: bytes) -> int | None:
    """Data records of a CSV as a reader independent of pandas counts them (blank lines are no
    record); None when it is not UTF-8 text."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    except csv.Error:
        return None
    return max(0, len(rows) - 1)


@dataclass
class Case:
    kind: str
    data: bytes | None            # None: no file at the data path
    mapping: str | None           # YAML text; None: no file at the mapping path
    expect: str                   # "error" | "ok" | "either"
    rows: int | None = None       # data records (when an import may succeed)
    batch: str = ""
    campaign: str = ""
    data_name: str = "data.csv"
    data_dir: bool = False        # a directory at the data path
    mapping_dir: bool = False
    options: list[str] = field(default_factory=list)
    words: tuple[str, ...] = ()   # an error must say one of these


def _garble(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(len(b))
        op = rng.random()
        if op < 0.4:
            b[i] = rng.choice(b'",;\n\r\x00\xff\xc3"xyz0129-. ')
        elif op < 0.7:
            b.insert(i, rng.choice(b'",\n\xe9\x00'))
        else:
            del b[i]
    return bytes(b)


def _wrong_types(rng: random.Random, df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    bad = {"visit": ["yes", "2", "-1", "0.5", "", "NaN", "1e3"], "spend": ["abc", "-5", "", "inf", "1,5"],
           "age": ["-3", "200", "forty", "", "3.5", "99999999999999999999"], "gender": ["X", "", "female"],
           "user_id": ["", "u0", "x" * 2000], "arm": ["Kids", "", "CTL", " ctl"], "recency": ["soon", ""],
           "channel": ["", "é" * 10], "zip": ["", "z" * 1500]}
    for _ in range(rng.randint(1, 5)):
        col = rng.choice(list(bad))
        df.loc[rng.randrange(len(df)), col] = rng.choice(bad[col])
    return df


def _unquote(text: str, value: str) -> str:
    """The YAML text with the quoted scalar `value` written bare."""
    for q in (f"'{value}'", f'"{value}"'):
        text = text.replace(q, value)
    return text


def make_case(rng: random.Random, k: int) -> Case:
    n = rng.randint(3, 25)
    batch, campaign = f"fz{k}", f"camp{k}"
    df = base_frame(rng, n)
    m = base_mapping(batch, campaign)
    kind = rng.choices(KINDS, weights=[KIND_WEIGHTS.get(k_, 1) for k_ in KINDS])[0]
    return KINDS_MAKERS[kind](rng, k, df, m, batch, campaign)


def _ok(df, m, batch, campaign, kind="clean", expect="ok"):
    data = csv_bytes(df)
    return Case(kind, data, yaml.safe_dump(m, sort_keys=False), expect, csv_records(data), batch, campaign)


def k_clean(rng, k, df, m, batch, campaign):
    return _ok(df, m, batch, campaign)


def k_wrong_types(rng, k, df, m, batch, campaign):
    return _ok(_wrong_types(rng, df), m, batch, campaign, "wrong_types")


def k_truncated(rng, k, df, m, batch, campaign):
    data = csv_bytes(df)
    cut = data[: rng.randrange(1, len(data))]
    return Case("truncated", cut, yaml.safe_dump(m), "either", csv_records(cut), batch, campaign)


def k_garbled(rng, k, df, m, batch, campaign):
    data = _garble(rng, csv_bytes(df))
    return Case("garbled", data, yaml.safe_dump(m), "either", csv_records(data), batch, campaign)


def k_encoding(rng, k, df, m, batch, campaign):
    df = df.copy()
    df.loc[rng.randrange(len(df)), "channel"] = "Téléphone"
    text = df.to_csv(index=False)
    enc = rng.choice(["latin-1", "utf-16", "cp1252"])
    return Case("encoding", text.encode(enc), yaml.safe_dump(m), "error", None, batch, campaign,
                words=("not UTF-8",))


def k_delimiter(rng, k, df, m, batch, campaign):
    data = df.to_csv(index=False, sep=rng.choice([";", "\t", "|"])).encode()
    return Case("delimiter", data, yaml.safe_dump(m), "error", None, batch, campaign)   # columns not found


def k_extra_fields(rng, k, df, m, batch, campaign):
    lines = df.to_csv(index=False).splitlines()
    rows = range(1, len(lines)) if rng.random() < 0.5 else [rng.randrange(1, len(lines))]
    for i in rows:
        lines[i] += ",extra"
    return Case("extra_fields", ("\n".join(lines) + "\n").encode(), yaml.safe_dump(m), "error", None, batch, campaign,
                words=("more fields", "well-formed"))


def k_empty(rng, k, df, m, batch, campaign):
    data = rng.choice([b"", df.iloc[:0].to_csv(index=False).encode(), b"\n\n"])
    return Case("empty", data, yaml.safe_dump(m), "error", None, batch, campaign, words=("empty", "no data rows"))


def k_binary(rng, k, df, m, batch, campaign):
    data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400)))
    return Case("binary", data, yaml.safe_dump(m), "error", None, batch, campaign)


def k_odd_but_fine(rng, k, df, m, batch, campaign):
    """Quirks a CSV reader must take without losing a row: CRLF / CR line ends, a BOM, quoted
    newlines and delimiters in values, NUL bytes, duplicate user ids, long values."""
    df = df.copy()
    i = rng.randrange(len(df))
    quirk = rng.choice(["crlf", "cr", "bom", "quoted_newline", "nul", "dup_ids", "long"])
    if quirk == "quoted_newline":
        df.loc[i, "channel"] = 'We,b\n"line"\r\ntwo'
    elif quirk == "nul":
        df.loc[i, "zip"] = "Ur\x00ban"
    elif quirk == "dup_ids":
        df["user_id"] = [f"u{j % 3}" for j in range(len(df))]
    elif quirk == "long":
        df.loc[i, "zip"] = "z" * 5000
    text = df.to_csv(index=False, lineterminator={"crlf": "\r\n", "cr": "\r"}.get(quirk, "\n"))
    data = ("\ufeff" if quirk == "bom" else "").encode() + text.encode()
    return Case(f"odd_{quirk}", data, yaml.safe_dump(m), "ok", csv_records(data), batch, campaign)


def k_parquet(rng, k, df, m, batch, campaign):
    m["source"]["format"] = "parquet"
    t = pa.Table.from_pandas(df, preserve_index=False)
    fault = rng.choice(["ok", "typed", "truncated", "csv_bytes", "dup_columns", "nested"])
    expect, words = "ok", ()
    if fault == "typed":   # numbers as numbers, some nulls: the importer parses its own types
        t = t.set_column(t.schema.get_field_index("visit"), "visit",
                         pa.array([None if j == 0 else int(v) for j, v in enumerate(df["visit"])], pa.int64()))
        t = t.set_column(t.schema.get_field_index("age"), "age", pa.array([float(v) for v in df["age"]]))
    elif fault == "nested":   # a list column: refused when mapped, ignored when not
        t = t.append_column("tags", pa.array([[j, j + 1] for j in range(len(df))]))
        if rng.random() < 0.5:
            m["features"]["categorical"].append("tags")
            expect, words = "error", ("lists or structs",)
    elif fault == "dup_columns":
        t = pa.Table.from_arrays([*t.columns, t.column("arm")], names=[*t.column_names, "arm"])
        expect, words = "error", ("more than once",)
    data = parquet_bytes(t)
    if fault == "truncated":
        data, expect, words = data[: rng.randrange(1, len(data))], "error", ("cannot be read",)
    elif fault == "csv_bytes":
        data, expect, words = csv_bytes(df), "error", ("cannot be read",)
    return Case(f"parquet_{fault}", data, yaml.safe_dump(m), expect, t.num_rows, batch, campaign,
                data_name="data.parquet", words=words)


def k_yaml_malformed(rng, k, df, m, batch, campaign):
    text = yaml.safe_dump(m, sort_keys=False)
    how = rng.choice(["truncate", "bracket", "tab", "colon", "garble", "indent"])
    if how == "truncate":
        text = text[: rng.randrange(1, len(text))]
    elif how == "bracket":
        text = text.replace("treatment:", "treatment: {", 1)
    elif how == "tab":
        text = text.replace("  column", "\tcolumn", 1)
    elif how == "colon":
        text = text.replace("control:", "control: a: b:", 1)
    elif how == "indent":
        text = text.replace("\n  ", "\n ", 1)
    else:
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.choice(b"{}[]:-&*!|>'\"%@`\t\n ")
        text = b.decode("utf-8", "replace")
    data = csv_bytes(df)   # a truncated mapping may still parse (and be valid): either outcome
    return Case(f"yaml_{how}", data, text, "either", csv_records(data), batch, campaign)


def k_yaml_shape(rng, k, df, m, batch, campaign):
    shapes = [
        "- a\n- b\n", "just text\n", "42\n", "", "~\n", "[]\n", "{}\n", "- " + yaml.safe_dump(m).replace("\n", "\n  "),
        yaml.safe_dump({**m, "treatment": ["arm", "ctl"]}), yaml.safe_dump({**m, "users": "all"}),
        yaml.safe_dump({**m, "campaign": None}), yaml.safe_dump({**m, "features": {"numeric": "recency"}}),
        yaml.safe_dump({**m, "treatment": {**m["treatment"], "arms": ["A", "B"]}}),
        yaml.safe_dump({**m, "treatment": {**m["treatment"], "control": ["ctl"]}}),
        yaml.safe_dump({**m, "outcomes": {"response": {"column": "visit"}}}),
        yaml.safe_dump({**m, "source": "csv"}), yaml.safe_dump({**m, "campaign": {"id": campaign, "window": [1, 2]}}),
        yaml.safe_dump({**m, "users": {**m["users"], "age": {"fill": "forty"}}}),
        yaml.safe_dump({**m, "treatment": {**m["treatment"], "arms": {"A": {"variant": "a"}}}}),
        yaml.safe_dump({**m, "extra": 1}),
        "a: &x [1, 2]\nb: &y [*x, *x, *x, *x, *x, *x, *x, *x]\nc: &z [*y, *y, *y, *y, *y, *y, *y, *y]\n"
        "d: [*z, *z, *z, *z, *z, *z, *z, *z]\n",                   # aliases: shared, not expanded
        "[" * 3000 + "]" * 3000 + "\n",                           # nested too deeply for a mapping
        "treatment: !!python/object/apply:os.system ['true']\n",  # no code runs from a mapping
    ]
    return Case("yaml_shape", csv_bytes(df), rng.choice(shapes), "error", None, batch, campaign)


def k_yaml_bool(rng, k, df, m, batch, campaign):
    """A value the log holds as text, written bare in the mapping where YAML 1.1 reads a boolean."""
    word = rng.choice(BOOL_WORDS)
    where = rng.choice(["control", "arm", "variant", "category", "gender", "campaign", "batch", "feature", "column"])
    df = df.copy()
    if where in ("control", "arm"):
        arms = (word, "A", "B") if where == "control" else ("ctl", word, "B")
        df["arm"] = [arms[ARMS.index(a)] for a in df["arm"]]
        m = base_mapping(batch, campaign, arms)
        placeholder = word
    elif where == "variant":
        m["treatment"]["arms"]["A"]["variant"] = placeholder = word
    elif where == "category":
        m["treatment"]["arms"]["B"]["target_category"] = placeholder = word
    elif where == "gender":
        m["users"]["gender"] = {"fill": word}
        placeholder = word
    elif where == "campaign":
        m["campaign"]["id"] = placeholder = word
    elif where == "batch":
        m["batch"] = placeholder = word
    elif where == "feature":
        df[word] = "x"
        m["features"]["categorical"].append(word)
        placeholder = word
    else:
        df = df.rename(columns={"arm": word})
        m["treatment"]["column"] = placeholder = word
    text = _unquote(yaml.safe_dump(m, sort_keys=False), placeholder)
    assert f": {placeholder}" in text or f"- {placeholder}" in text or f"{placeholder}:" in text
    return Case(f"yaml_bool_{where}", csv_bytes(df), text, "error", None, batch, campaign,
                words=("boolean", "quote it"))


def k_missing(rng, k, df, m, batch, campaign):
    which = rng.choice(["data", "mapping", "data_dir", "mapping_dir", "both"])
    c = Case(f"missing_{which}", csv_bytes(df), yaml.safe_dump(m), "error", None, batch, campaign)
    if which in ("data", "both"):
        c.data = None
    if which in ("mapping", "both"):
        c.mapping = None
    c.data_dir, c.mapping_dir = which == "data_dir", which == "mapping_dir"
    c.words = {"data": ("not found",), "mapping": ("not found",), "both": ("not found",),
               "data_dir": ("directory",), "mapping_dir": ("directory",)}[which]
    return c


def k_hostile_id(rng, k, df, m, batch, campaign):
    bad = rng.choice(HOSTILE_IDS)
    where = rng.choice(["option", "mapping_batch", "campaign", "variant", "stem"])
    c = _ok(df, m, batch, campaign, f"hostile_{where}", "error")
    if where == "option":
        c.options = [f"--batch={bad}"]
    elif where == "mapping_batch":
        c.mapping = yaml.safe_dump({**m, "batch": bad})
    elif where == "campaign":
        c.mapping = yaml.safe_dump({**m, "campaign": {**m["campaign"], "id": bad}})
    elif where == "variant":
        arms = dict(m["treatment"]["arms"], A={**m["treatment"]["arms"]["A"], "variant": bad})
        c.mapping = yaml.safe_dump({**m, "treatment": {**m["treatment"], "arms": arms}})
    else:   # no batch anywhere: the data file's stem would be the batch id
        stem = rng.choice([".hidden", "my data", "x" * (MAX_ID_LENGTH + 1), "[red]ü", "-lead", "a;b"])
        c.mapping = yaml.safe_dump({k_: v for k_, v in m.items() if k_ != "batch"})
        c.data_name = f"{stem}.csv"
    c.words = ("safe id",) if where != "variant" else ("unique id",)
    return c


KINDS_MAKERS = {
    "clean": k_clean, "wrong_types": k_wrong_types, "truncated": k_truncated, "garbled": k_garbled,
    "encoding": k_encoding, "delimiter": k_delimiter, "extra_fields": k_extra_fields, "empty": k_empty,
    "binary": k_binary, "odd": k_odd_but_fine, "parquet": k_parquet, "yaml_malformed": k_yaml_malformed,
    "yaml_shape": k_yaml_shape, "yaml_bool": k_yaml_bool, "missing": k_missing, "hostile_id": k_hostile_id,
}
KINDS = sorted(KINDS_MAKERS)
# An import costs ~25x a refusal (mostly S3 calls): about a fifth of the cases import.
KIND_WEIGHTS = {"clean": 0.3, "odd": 0.6, "parquet": 0.8, "truncated": 0.8, "wrong_types": 1, "garbled": 1.2,
                "yaml_malformed": 1, "yaml_shape": 1.2, "yaml_bool": 1.5, "hostile_id": 1.5, "missing": 1.2}


# --------------------------------------------------------------------------- running a case

def write_case(c: Case, where: Path) -> tuple[Path, Path]:
    where.mkdir(parents=True)
    data, mapping = where / c.data_name, where / "mapping.yaml"
    if c.data_dir:
        data.mkdir()
    elif c.data is not None:
        data.write_bytes(c.data)
    if c.mapping_dir:
        mapping.mkdir()
    elif c.mapping is not None:
        mapping.write_text(c.mapping)
    return data, mapping


def exposure_ids(campaign: str, n: int) -> set[str]:
    width = max(7, len(str(n)))
    return {f"{campaign}-r{i:0{width}d}" for i in range(n)}


def run_case(c: Case, where: Path, store) -> dict:
    """Runs one case through `campaignops data import`; asserts the contract; returns what happened."""
    data, mapping = write_case(c, where)
    result = invoke(["data", "import", "--mapping", str(mapping), *c.options, str(data)])
    out = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{c.kind}: {result.exception!r}\n{out}"
    assert not any(mark in out for mark in TRACEBACK_MARKS), f"{c.kind}: a traceback\n{out}"
    if result.exit_code != 0:
        assert c.expect != "ok", f"{c.kind}: expected an import, got exit {result.exit_code}\n{out}"
        text = assert_one_line_error(result, str(data), str(mapping), "--batch")
        if c.words:
            assert any(w in text for w in c.words), (c.kind, c.words, text)
        return {"outcome": "refused", "kind": c.kind}
    assert c.expect != "error", f"{c.kind}: expected a refusal, got exit 0\n{out}"
    assert c.rows is not None, f"{c.kind}: imported a file no independent reader could count\n{out}"
    manifest = store.get_json(layout.raw_manifest_key(c.batch))
    exposures = pa.concat_tables(store.read_table(key) for key in manifest["tables"]["exposures"]["files"])
    ids = exposures.column("exposure_id").to_pylist()
    assert manifest["import"]["rows"] == exposures.num_rows == c.rows, \
        (c.kind, manifest["import"]["rows"], exposures.num_rows, c.rows)
    assert set(ids) == exposure_ids(c.campaign, c.rows) and len(set(ids)) == len(ids), c.kind   # each row once
    return {"outcome": "imported", "kind": c.kind, "rows": c.rows, "batch": c.batch, "campaign": c.campaign}


def validate_rows_accounted(settings, store, imported: dict) -> dict:
    """ingest + validate the imported batch: every data row is a valid exposure (in data/validated
    when the batch passed) or quarantined with a rule; rows in == valid + quarantined."""
    ingest.ingest(settings, batch=imported["batch"], store=store)
    try:
        report = validate.run(settings, store=store)
    except validate.ValidationFailed:
        report = json.loads((settings.workspace / layout.REPORTS_DIR / "validation_failed.json").read_text())
    ex = report["tables"]["exposures"]
    assert ex["rows_in"] == imported["rows"] == ex["rows_valid"] + ex["rows_quarantined"], ex
    quarantined = []
    if ex["quarantine_uri"]:
        q = store.read_table(store.key(ex["quarantine_uri"]))
        assert all(r for r in q.column("_rule").to_pylist()), "a quarantined row without its rule"
        quarantined = q.column("exposure_id").to_pylist()
    assert len(quarantined) == ex["rows_quarantined"]
    expected = exposure_ids(imported["campaign"], imported["rows"])
    if report["passed"]:
        valid = pq.read_table(settings.workspace / layout.VALIDATED_DIR / "exposures.parquet")
        got = valid.column("exposure_id").to_pylist() + quarantined
        assert sorted(got) == sorted(expected), "rows lost or duplicated between validated data and quarantine"
    else:
        assert set(quarantined) <= expected
    return {"passed": report["passed"], "valid": ex["rows_valid"], "quarantined": ex["rows_quarantined"]}


def fuzz(settings, store, tmp: Path, n_cases: int, n_validate: int | None) -> dict:
    t0 = time.perf_counter()
    outcomes: dict[str, dict[str, int]] = {}
    imported = []
    for k in range(n_cases):
        c = make_case(random.Random(SEED * 1_000_003 + k), k)
        try:
            r = run_case(c, tmp / f"case{k}", store)
        except AssertionError as exc:
            raise AssertionError(f"fuzz case {k} ({c.kind}): {exc}") from exc
        outcomes.setdefault(c.kind, {}).setdefault(r["outcome"], 0)
        outcomes[c.kind][r["outcome"]] += 1
        if r["outcome"] == "imported":
            imported.append(r)
    t_import = time.perf_counter() - t0
    # validate the imports that quarantine something first (the interesting ones), then the rest
    order = sorted(imported, key=lambda r: r["kind"] not in ("wrong_types", "garbled", "truncated"))
    checked = [validate_rows_accounted(settings, store, r) for r in order[:n_validate]]
    print(f"cli fuzz: {n_cases} cases in {t_import:.1f}s ({len(imported)} imported, "
          f"{n_cases - len(imported)} refused with one line); validated {len(checked)} imports in "
          f"{time.perf_counter() - t0 - t_import:.1f}s: {sum(c['valid'] for c in checked)} rows valid, "
          f"{sum(c['quarantined'] for c in checked)} quarantined, 0 lost; per kind: {outcomes}")
    return {"outcomes": outcomes, "imported": len(imported), "checked": checked}


# --------------------------------------------------------------------------- the probe's cases

@pytest.fixture
def log_files(cli_world):
    settings, store, tmp = cli_world
    rng = random.Random(1)
    df = base_frame(rng, 12)
    data = tmp / "log.csv"
    data.write_bytes(csv_bytes(df))
    mapping = tmp / "log.yaml"
    mapping.write_text(yaml.safe_dump(base_mapping("probe", "probe_c")))
    return data, mapping, tmp


@pytest.mark.parametrize("case", ["malformed", "list", "missing_data", "missing_mapping", "dir_data", "dir_mapping",
                                  "unsafe_batch", "boolean"])
def test_each_probe_case_prints_one_line_naming_the_file(log_files, case):
    data, mapping, tmp = log_files
    args, named, words = None, str(mapping), ()
    if case == "malformed":
        mapping.write_text("source: {format: csv\nbatch: [\n")
        words = ("not valid YAML", "line 2")
    elif case == "list":
        mapping.write_text("- source\n- batch\n")
        words = ("must be a YAML mapping", "list")
    elif case == "missing_data":
        data, named, words = tmp / "nope.csv", str(tmp / "nope.csv"), ("not found",)
    elif case == "missing_mapping":
        mapping, named, words = tmp / "nope.yaml", str(tmp / "nope.yaml"), ("not found",)
    elif case == "dir_data":
        data, named, words = tmp, str(tmp), ("is a directory",)
    elif case == "dir_mapping":
        mapping, named, words = tmp, str(tmp), ("is a directory",)
    elif case == "unsafe_batch":
        args, named, words = ["--batch", "../../etc"], "--batch '../../etc'", ("not a safe id",)
    else:   # the log's arm values are Yes / No; the mapping names them bare
        df = pd.read_csv(data, dtype=str)
        df["arm"] = df["arm"].map({"ctl": "No", "A": "Yes", "B": "Maybe"})
        df.to_csv(data, index=False)
        mapping.write_text(_unquote(yaml.safe_dump(base_mapping("probe", "probe_c", ("No", "Yes", "Maybe"))), "No")
                           .replace("'Yes'", "Yes"))
        words = ("treatment.control: unquoted No is read by YAML as the boolean false", 'quote it ("No")')
    result = invoke(["data", "import", "--mapping", str(mapping), *(args or []), str(data)])
    text = assert_one_line_error(result, named)
    assert all(w in text for w in words), text


def test_unsafe_ids_are_refused_by_every_command_that_takes_one(cli_world):
    for args in (["ingest", "--batch=../../etc"], ["data", "generate", "--batch=.hidden"],
                 ["score", "--campaign-id=a/b"], ["drift", "--stage", "score", "--campaign-id=.."],
                 ["feedback", "--campaign-id=C1", "--scores-run=../x"], ["adjust", "--campaign-id=" + "c" * 65]):
        option = args[-1].split("=")[0]
        text = assert_one_line_error(invoke(args), option)
        assert "not a safe id" in text, text


def test_debug_env_shows_the_traceback(log_files, monkeypatch):
    data, mapping, tmp = log_files
    monkeypatch.setenv("CAMPAIGNOPS_DEBUG", "1")
    result = invoke(["data", "import", "--mapping", str(tmp / "nope.yaml"), str(data)])
    assert result.exit_code != 0 and type(result.exception).__name__ == "MappingError"


def test_a_mapping_with_booleans_never_lands_a_batch(log_files, cli_world):
    """Before: `control: No` became the text "False" and `Yes:` the arm "True"; now nothing lands."""
    data, mapping, tmp = log_files
    _, store, _ = cli_world
    df = pd.read_csv(data, dtype=str)
    df["arm"] = df["arm"].map({"ctl": "no", "A": "on", "B": "off"})
    df.to_csv(data, index=False)
    m = base_mapping("boolbatch", "boolcamp", ("no", "on", "off"))
    mapping.write_text(_unquote(_unquote(_unquote(yaml.safe_dump(m), "no"), "on"), "off"))
    result = invoke(["data", "import", "--mapping", str(mapping), str(data)])
    text = assert_one_line_error(result, str(mapping))
    assert text.startswith("mapping errors (3):") and "treatment.arms.on: unquoted on" in text
    assert store.list_keys("raw/boolbatch/") == []


# --------------------------------------------------------------------------- the fuzz

def test_cli_fuzz_1000_bad_files_no_traceback_no_row_lost(cli_world):
    settings, store, tmp = cli_world
    result = fuzz(settings, store, tmp, N_CASES, 0)
    kinds = {c.split("_")[0] for c in result["outcomes"]}
    assert sum(sum(v.values()) for v in result["outcomes"].values()) == N_CASES
    assert {"clean", "wrong", "truncated", "garbled", "encoding", "yaml", "missing", "hostile", "parquet"} <= kinds
    assert 100 < result["imported"] < N_CASES // 2   # both outcomes well represented


def test_imported_bad_rows_are_validated_or_quarantined_with_a_rule(cli_world):
    """The fuzz's imports with wrong-typed cells, through ingest and validate: no row lost there either."""
    settings, store, tmp = cli_world
    result = fuzz(settings, store, tmp, 60, VALIDATE_SAMPLE)
    assert len(result["checked"]) == VALIDATE_SAMPLE and any(c["quarantined"] for c in result["checked"])


@pytest.mark.slow
@pytest.mark.soak   # 3,000 cases (~10 min): `make test-soak`, not part of `make test`
def test_cli_fuzz_many_bad_files_imports_validated(cli_world):
    settings, store, tmp = cli_world
    result = fuzz(settings, store, tmp, N_CASES_SLOW, VALIDATE_SLOW)
    assert result["imported"] > VALIDATE_SLOW and len(result["checked"]) == VALIDATE_SLOW
