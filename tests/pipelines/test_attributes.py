"""User attributes → profile columns (pipelines/attributes.py): point-in-time, fitted before the
cut-off, deterministic."""
from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from campaignops.pipelines import attributes
from campaignops.validation.contract import SCHEMAS

T0, T1, T2 = datetime(2026, 1, 1), datetime(2026, 2, 1), datetime(2026, 3, 1)
ROWS = [  # user, name, as_of, value_num, value_str
    ("u1", "score", T0, 1.0, None), ("u1", "score", T1, 5.0, None),  # changes at T1
    ("u2", "score", T0, 2.0, None),
    ("u1", "tier", T0, None, "gold"), ("u2", "tier", T0, None, "silver"), ("u3", "tier", T0, None, "gold"),
    ("u3", "tier", T1, None, "platinum"),  # first seen after the fit cut-off: no column
    ("u3", "late", T2, 9.0, None),         # attribute known only after the cut-off: ignored
]


def _con(tmp_path, rows):
    t = pa.Table.from_pylist([dict(zip(SCHEMAS["user_attributes"].names, r)) for r in rows],
                             schema=SCHEMAS["user_attributes"])
    pq.write_table(t, tmp_path / "user_attributes.parquet")
    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE ids AS SELECT * FROM (VALUES ('u1', 'k1'), ('u2', 'k2'), ('u3', 'k3')) v(user_id, ukey)")
    return con


def test_spec_is_fitted_before_the_cutoff(tmp_path):
    spec = attributes.prepare(_con(tmp_path, ROWS), tmp_path, "2026-01-15 00:00:00", max_categories=5, min_users=1)
    assert spec == [{"name": "score", "kind": "numeric", "missing": True},  # u3 has no score
                    {"name": "tier", "kind": "categorical", "missing": False, "values": ["gold", "silver"]}]
    assert attributes.columns(spec) == ["attr_score", "attr_score__missing", "attr_tier__gold", "attr_tier__silver"]
    capped = attributes.prepare(_con(tmp_path, ROWS), tmp_path, "2026-01-15 00:00:00", max_categories=1, min_users=1)
    assert capped[1]["values"] == ["gold"]  # the most frequent
    floor = attributes.prepare(_con(tmp_path, ROWS), tmp_path, "2026-01-15 00:00:00", min_users=2)
    assert floor[1]["values"] == ["gold"]  # silver is held by one user only: no column


def test_pivot_is_point_in_time(tmp_path):
    con = _con(tmp_path, ROWS)
    spec = attributes.prepare(con, tmp_path, "2026-01-15 00:00:00", min_users=1)
    keys = pa.array(["k1", "k1", "k1", "k3", "k2"])
    ts = pa.array([T0, datetime(2026, 1, 20), datetime(2026, 2, 2), datetime(2026, 2, 2), T0], pa.timestamp("ms"))
    out = attributes.pivot(con, keys, ts, spec).to_pydict()
    # a value is known from its as_of on: at T0 the T0 values are seen; u1's score 5.0 from T1 on
    assert out["attr_score"] == [1.0, 1.0, 5.0, 0.0, 2.0]
    assert out["attr_score__missing"] == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert out["attr_tier__gold"] == [1.0, 1.0, 1.0, 0.0, 0.0]  # u3 is platinum by then: an unseen value
    assert out["attr_tier__silver"] == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_a_value_is_seen_from_its_as_of_on(tmp_path):
    """as_of <= t: a value stamped exactly at the point's time is seen (also by the fit at
    fit_as_of), one stamped after it is not, and the latest at or before it wins."""
    con = _con(tmp_path, ROWS)
    spec = attributes.prepare(con, tmp_path, T2.isoformat(sep=" "), min_users=1)
    assert [item["name"] for item in spec] == ["late", "score", "tier"]  # late: stamped exactly at the fit time
    keys = pa.array(["k1", "k1", "k2", "k3", "k3"])
    ts = pa.array([T1 - timedelta(milliseconds=1), T1, T0, T0, T2], pa.timestamp("ms"))
    out = attributes.pivot(con, keys, ts, spec).to_pydict()
    assert out["attr_score"] == [1.0, 5.0, 2.0, 0.0, 0.0]  # 5.0 from T1 on: the latest at or before t
    assert out["attr_tier__gold"] == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert out["attr_tier__platinum"] == [0.0, 0.0, 0.0, 0.0, 1.0]  # stamped T1: after T0, at or before T2
    assert out["attr_tier__silver"] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert out["attr_late"] == [0.0, 0.0, 0.0, 0.0, 9.0]
    assert out["attr_late__missing"] == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_pivot_is_deterministic_whatever_the_row_order(tmp_path):
    keys = pa.array(["k1", "k2", "k3"] * 3)
    ts = pa.array([T2] * 9, pa.timestamp("ms"))
    outs = []
    for seed in range(3):
        rows = [ROWS[i] for i in np.random.default_rng(seed).permutation(len(ROWS))]
        con = _con(tmp_path, rows)
        spec = attributes.prepare(con, tmp_path, "2026-01-15 00:00:00", min_users=1)
        outs.append((spec, attributes.pivot(con, keys, ts, spec)))
    assert all(s == outs[0][0] and t.equals(outs[0][1]) for s, t in outs)


def test_no_attributes_table_changes_nothing(tmp_path):
    con = duckdb.connect()
    assert attributes.prepare(con, tmp_path, "2026-01-15 00:00:00") == []
    t = pa.table({"user_id": ["k1"]})
    assert attributes.attach(con, t, [], as_of="2026-01-15 00:00:00").equals(t)
