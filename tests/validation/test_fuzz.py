"""Fuzz the in-memory core of the validate step (stage_file → Engine) with >= 1,000 malformed
batches made from a valid one. For each batch: either a clear error (BatchRejected naming the
file and the rule) or a correct quarantine (every mutated row quarantined with the expected
rule, exact duplicates removed), and rows in = valid + quarantined + deduplicated per table."""
from __future__ import annotations

import io
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from campaignops.pipelines import validate
from campaignops.validation.contract import CONTROL, OPTIONAL_COLUMNS, SCHEMAS
from worlds import NOW, T0, small_world, table_bytes

N_USERS = 30
EVENTS_PER_USER = 4
N_BATCHES = 1000
SEED = 20260520
MAX_LEN = 64


def clean_world() -> dict[str, list[dict]]:
    """The shared small world (tests/worlds.py) at the fuzz's size: 30 users, 4 events each."""
    return small_world(users=N_USERS, events_per_user=EVENTS_PER_USER)


# Row mutations: (table, column, value or callable, expected rule). Callables get (rng, row).
ROW_MUTATIONS = [
    ("users", "user_id", None, "users.user_id.not_null"),
    ("users", "age", 5, "users.age.range"),
    ("users", "age", 500, "users.age.range"),
    ("users", "gender", "Q", "users.gender.allowed"),
    ("users", "signup_ts", NOW + timedelta(days=3), "users.signup_ts.not_future"),
    ("users", "region", "x" * (MAX_LEN + 1), "users.region.max_length"),
    ("events", "price", -1.0, "events.price.non_negative"),
    ("events", "price", float("nan"), "events.price.not_null"),
    ("events", "price", None, "events.price.not_null"),
    ("events", "event_type", "teleport", "events.event_type.allowed"),
    ("events", "ts", NOW + timedelta(seconds=1), "events.ts.not_future"),
    ("events", "ts", None, "events.ts.not_null"),
    ("events", "user_id", "ghost", "events.user_id.in_users"),
    ("events", "category", "é" * (MAX_LEN + 1), "events.category.max_length"),
    ("events", "event_id", "", None),  # empty string: a valid (if odd) id, must not crash
    ("campaigns", "discount_rate", 1.5, "campaigns.discount_rate.range"),
    ("campaigns", "channel", "fax", "campaigns.channel.allowed"),
    ("campaigns", "variant_id", CONTROL, "campaigns.variant_id.not_control"),
    ("exposures", "responded", 2, "exposures.responded.allowed"),
    ("exposures", "revenue", -3.0, "exposures.revenue.non_negative"),
    ("exposures", "user_id", "ghost", "exposures.user_id.in_users"),
    ("exposures", "variant_id", "C1-V9", "exposures.variant_id.in_campaigns"),
    ("exposures", "exposure_ts", T0 + timedelta(days=15), "exposures.exposure_ts.in_campaign_window"),
    ("exposures", "propensity", 0.0, "exposures.propensity.range"),
    ("exposures", "propensity", 1.5, "exposures.propensity.range"),
    ("exposures", "propensity", 0.25, None),   # optional column, set: valid
]
CROSS_TABLE = {r.id for t in ("events", "exposures") for r in validate.suites.CROSS_TABLE_RULES[t]}
FILE_MUTATIONS = ["drop_column", "extra_column", "wrong_type", "reorder", "empty_bytes", "truncated", "garbage",
                  "csv_semicolon", "csv_latin1", "csv_bad_value", "no_rows"]


def make_batch(rng: random.Random):
    """(files: table → [(name, bytes)], expectations)"""
    world = clean_world()
    expect = {"rows": [], "dups": 0, "error": None}
    if rng.random() < 0.2:  # a file-level fault in one table
        table = rng.choice(["users", "campaigns", "events", "exposures"])
        kind = rng.choice(FILE_MUTATIONS)
    else:
        table = kind = None
    # row-level mutations on distinct rows
    used: dict[str, set] = {t: set() for t in world}
    for _ in range(rng.randint(1, 4)):
        t, col, value, rule = rng.choice(ROW_MUTATIONS)
        free = [i for i in range(len(world[t])) if i not in used[t]]
        i = rng.choice(free)
        used[t].add(i)
        world[t][i][col] = value
        if rule:
            expect["rows"].append((t, i, rule))
    if rng.random() < 0.3:  # exact duplicate event (same or new event_id), from a clean row
        ev = world["events"]
        free = [i for i in range(len(ev)) if i not in used["events"]]
        src, dst = rng.sample(free, 2)
        used["events"] |= {src, dst}
        ev[dst] = dict(ev[src], event_id=ev[src]["event_id"] if rng.random() < 0.5 else f"dup{dst}")
        expect["dups"] += 1
    if rng.random() < 0.1:  # duplicate key (different content): both copies quarantined
        us = world["users"]
        free = [i for i in range(len(us)) if i not in used["users"]]
        a, b = rng.sample(free, 2)
        used["users"] |= {a, b}
        us[b]["user_id"] = us[a]["user_id"]
        expect["rows"] += [("users", a, "users.user_id.unique"), ("users", b, "users.user_id.unique")]

    files: dict[str, list[tuple[str, bytes]]] = {}
    for t, rows in world.items():
        half = len(rows) // 2
        chunks = [rows[:half], rows[half:]]
        out = []
        for p, chunk in enumerate(chunks):
            fmt = "csv" if rng.random() < 0.15 else "parquet"
            out.append((f"raw/b/{t}/part-{p}.{fmt}", table_bytes(chunk, SCHEMAS[t], fmt)))
        files[t] = out
    if table:
        p = rng.randrange(2)
        name, data = files[table][p]
        rows = [dict(r) for r in (world[table][: len(world[table]) // 2] if p == 0 else world[table][len(world[table]) // 2:])]
        schema = SCHEMAS[table]
        rule = None
        if kind == "drop_column":
            col = rng.choice(schema.names)
            data = table_bytes([{k: v for k, v in r.items() if k != col} for r in rows], schema.remove(schema.get_field_index(col)), "parquet")
            # a trailing optional column may be omitted: the file stays valid
            name, rule = name.rsplit(".", 1)[0] + ".parquet", (None if col in OPTIONAL_COLUMNS.get(table, ()) else
                                                               f"{table}.schema.columns")
        elif kind == "extra_column":
            data = table_bytes([dict(r, junk=1) for r in rows], schema.append(pa.field("junk", pa.int64())), "parquet")
            name, rule = name.rsplit(".", 1)[0] + ".parquet", f"{table}.schema.columns"
        elif kind == "wrong_type":
            i = rng.randrange(len(schema))
            f = schema.field(i)
            new_t = pa.int64() if pa.types.is_string(f.type) else pa.string()
            conv = (lambda v: None if v is None else len(v)) if pa.types.is_string(f.type) else (lambda v: None if v is None else str(v))
            data = table_bytes([dict(r, **{f.name: conv(r[f.name])}) for r in rows], schema.set(i, pa.field(f.name, new_t)), "parquet")
            name, rule = name.rsplit(".", 1)[0] + ".parquet", f"{table}.schema.types"
        elif kind == "reorder":
            rev = pa.schema(list(reversed(list(schema))))
            data = table_bytes(rows, rev, "parquet")
            name, rule = name.rsplit(".", 1)[0] + ".parquet", f"{table}.schema.columns"
        elif kind == "empty_bytes":
            data, rule = b"", f"{table}.file.readable"
        elif kind == "truncated":
            pqdata = table_bytes(rows, schema, "parquet")
            name, data, rule = name.rsplit(".", 1)[0] + ".parquet", pqdata[: len(pqdata) // 2], f"{table}.file.readable"
        elif kind == "garbage":
            name = name.rsplit(".", 1)[0] + ".parquet"
            data, rule = bytes(rng.getrandbits(8) for _ in range(200)), f"{table}.file.readable"
        elif kind == "csv_semicolon":
            text = table_bytes(rows, schema, "csv").decode().replace(",", ";")
            name, data, rule = name.rsplit(".", 1)[0] + ".csv", text.encode(), f"{table}.file.delimiter"
        elif kind == "csv_latin1":
            text = table_bytes(rows, schema, "csv").decode()
            name, data, rule = name.rsplit(".", 1)[0] + ".csv", (text + '"é"\n').encode("latin-1"), f"{table}.file.encoding"
        elif kind == "csv_bad_value":
            num = [f.name for f in schema if not pa.types.is_string(f.type)]
            col = rng.choice(num)
            t = pa.Table.from_pylist(rows, schema)
            t = t.set_column(schema.get_field_index(col), col, pa.array(["not-a-value"] * t.num_rows))
            buf = io.BytesIO()
            pacsv.write_csv(t, buf)
            name, data, rule = name.rsplit(".", 1)[0] + ".csv", buf.getvalue(), f"{table}.schema.types"
        elif kind == "no_rows":
            files[table] = [(n.rsplit(".", 1)[0] + ".parquet", table_bytes([], schema, "parquet")) for n, _ in files[table]]
            expect["error"] = (f"{table}.rows.non_empty", table)
            return files, expect
        files[table][p] = (name, data)
        expect["error"] = (rule, name) if rule else None
    return files, expect


def run_core(files, workdir: Path, engine: validate.Engine | None = None):
    """stage → engine → outputs; returns per-table (summary, valid rows, quarantine table).
    An engine may be reused across batches (its relations are replaced table by table)."""
    own = engine is None
    engine = engine or validate.Engine(NOW, max_len=MAX_LEN, threads=1)
    try:
        out = {}
        for t in validate.ORDER:
            st = validate.Staged(t, [], [], [])
            for name, data in files[t]:
                local = workdir / name.replace("/", "_")
                local.write_bytes(data)
                path, rows = validate.stage_file(local, t, name, workdir)
                st.files.append(name)
                st.paths.append(path)
                st.rows.append(rows)
            engine.evaluate(st)
        for t in validate.ORDER:
            s = engine.summary[t]
            q = engine.quarantine(t)
            fills: dict[str, int] = {}
            valid = pa.concat_tables(list(engine.valid_batches(t, fills)) or [SCHEMAS[t].empty_table()])
            out[t] = (s, valid, q, fills)
        return out
    finally:
        if own:
            engine.close()


def check(files, expect, tmp: Path, engine=None):
    try:
        out = run_core(files, tmp, engine)
    except validate.BatchRejected as exc:
        assert expect["error"], f"unexpected rejection: {exc}"
        rule, where = expect["error"]
        msg = str(exc)
        assert f"[rule {rule}]" in msg and where in msg, (msg, expect["error"])
        return "rejected"
    assert not expect["error"], f"expected {expect['error']}"
    for t, (s, valid, q, fills) in out.items():
        assert s["rows_in"] == len(clean_world()[t]), t
        assert s["rows_in"] == s["rows_valid"] + s["rows_quarantined"] + s["rows_deduplicated"], t
        assert valid.num_rows == s["rows_valid"] and q.num_rows == s["rows_quarantined"], t
        assert valid.schema.equals(SCHEMAS[t]) and q.column_names == SCHEMAS[t].names + list(validate.META_COLS)
        for c in validate.suites.FILLS[t]:
            assert valid.column(c).null_count == 0
    assert out["events"][0]["rows_deduplicated"] == expect["dups"]
    for t, i, rule in expect["rows"]:
        half = len(clean_world()[t]) // 2
        name = files[t][0 if i < half else 1][0]
        row = i if i < half else i - half
        q = out[t][2]
        hit = [r["_rule"] for r in q.select(["_source_file", "_source_row", "_rule"]).to_pylist()
               if r["_source_file"] == name and r["_source_row"] == row]
        assert hit, (t, i, rule, "not quarantined")
        got = set(hit[0].split(";"))
        if rule in CROSS_TABLE:  # a mutated parent can make another cross-table rule fire first
            assert got & CROSS_TABLE, (t, i, rule, hit)
        else:
            assert rule in got, (t, i, rule, hit)
    return "quarantined"


def fuzz_chunk(ks: list[int]) -> dict:
    """Check batches number ks (batch k is generated from its own seed: deterministic whatever the split)."""
    outcomes = {"rejected": 0, "quarantined": 0}
    engine = validate.Engine(NOW, max_len=MAX_LEN, threads=1)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        try:
            for k in ks:
                files, expect = make_batch(random.Random(SEED * 1_000_003 + k))
                d = Path(tmp) / f"b{k}"
                d.mkdir()
                try:
                    outcomes[check(files, expect, d, engine)] += 1
                except AssertionError as exc:
                    raise AssertionError(f"fuzz batch {k}: {exc}") from exc
                shutil.rmtree(d)
        finally:
            engine.close()
    return outcomes


def test_fuzz_1000_malformed_batches():
    t0 = time.perf_counter()
    workers = max(1, min(2, os.cpu_count() or 1))
    chunks = [list(range(w, N_BATCHES, workers)) for w in range(workers)]
    if workers == 1:
        results = [fuzz_chunk(chunks[0])]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(fuzz_chunk, chunks))
    outcomes = {k: sum(r[k] for r in results) for k in ("rejected", "quarantined")}
    elapsed = time.perf_counter() - t0
    print(f"fuzz: {N_BATCHES} batches in {elapsed:.1f}s on {workers} process(es): {outcomes}")
    assert sum(outcomes.values()) == N_BATCHES
    assert outcomes["rejected"] > 100 and outcomes["quarantined"] > 600
