"""Chooses the holdout of an imported log at import time and spreads exposure times to match.

Without a timestamp column the import spreads exposure times over the campaign window by a
seeded hash of the user id (or row number), so the features step's time split (params
features.split) acts as a random split. A holdout chosen at import — fold F of K users, a
fraction of the users, or the rows a split column marks — is instead spread over the last part
of the window, every other row before it; the manifest's `import.holdout` records the rule, the
rows and that cut (`after`), and the features step holds out exactly the exposures after it
(train : valid before it keep the params' ratio), so params.yaml needs no edit. Without a chosen
holdout the record states the params' rule and the rows it holds out at import (before
validation quarantines any).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd

HOLDOUT_VALUES = ("holdout", "test", "true", "1", "yes")  # split-column values held out without COL=VALUE


def spread_ms(keys: list[str], salt: str, span_ms: int) -> np.ndarray:
    """Deterministic offsets in [1, span_ms] from sha256(salt, key): a seeded uniform spread."""
    out = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys):
        h = int.from_bytes(hashlib.sha256(f"{salt}\x1f{k}".encode()).digest()[:8], "big")
        out[i] = 1 + h % span_ms
    return out


def _rank(keys: list[str], salt: str) -> tuple[np.ndarray, int]:
    """(rank of each row's key among the distinct keys ordered by sha256(salt, key), #distinct)."""
    uniq, inverse = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    h = np.array([int.from_bytes(hashlib.sha256(f"{salt}\x1ffold\x1f{u}".encode()).digest()[:8], "big")
                  for u in uniq], dtype=np.uint64)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(h, kind="stable")] = np.arange(len(uniq))
    return rank[inverse], len(uniq)


def fold_of(keys: list[str], salt: str, k: int) -> np.ndarray:
    """Fold 0..k-1 of each key: distinct keys ranked by sha256(salt, key) and dealt into k folds
    whose sizes differ by at most one key; equal keys share a fold."""
    rank, n = _rank(keys, salt)
    return rank * k // max(n, 1)


def parse(fold: tuple[int, int] | None = None, fraction: float | None = None, column: str | None = None) -> dict | None:
    """The holdout spec of the import's options (at most one): {"fold": (f, k)} | {"fraction": p} |
    {"column": name, "value": v or None}; None: the params' time split."""
    given = [o for o, v in (("holdout_fold", fold), ("holdout_fraction", fraction), ("holdout_column", column))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"choose one holdout option, not {' and '.join(given)}")
    if fold is not None:
        f, k = (int(v) for v in fold)
        if not (k >= 2 and 0 <= f < k):
            raise ValueError(f"holdout_fold {fold!r}: need (f, k) with k >= 2 and 0 <= f < k")
        return {"fold": (f, k)}
    if fraction is not None:
        if not 0.0 < float(fraction) < 1.0:
            raise ValueError(f"holdout_fraction {fraction!r}: need a share of the users strictly between 0 and 1")
        return {"fraction": float(fraction)}
    if column is not None:
        name, _, value = str(column).partition("=")
        return {"column": name, "value": value if _ else None}
    return None


def choose(spec: dict, keys: list[str], salt: str, df: pd.DataFrame, where: str) -> tuple[np.ndarray, str]:
    """(held-out mask over the rows, how they were chosen) for a spec of `parse`; `where` names
    the data file in errors."""
    if "fold" in spec:
        f, k = spec["fold"]
        return fold_of(keys, salt, k) == f, (f"fold {f} of {k}: the users dealt into {k} folds of equal size by "
                                             f"sha256({salt!r}, user id or row number)")
    if "fraction" in spec:
        rank, n = _rank(keys, salt)
        h = round(spec["fraction"] * n)
        if not 0 < h < n:
            raise ValueError(f"{where}: holdout_fraction {spec['fraction']}: holds out {h} of {n} users; need at "
                             "least one user on each side")
        return rank < h, (f"fraction {spec['fraction']:g}: {h} of {n} users, the first by sha256({salt!r}, "
                          "user id or row number)")
    name, value = spec["column"], spec["value"]
    if name not in df.columns:
        raise ValueError(f"{where}: holdout_column: column {name!r} is not in the data file "
                         f"(columns: {[str(c) for c in df.columns]})")
    raw = df[name].astype("string").str.strip()
    held = (raw == value) if value is not None else raw.str.lower().isin(HOLDOUT_VALUES)
    held = held.fillna(False).to_numpy(dtype=bool)
    if held.all() or not held.any():
        seen = ", ".join(f"{v!r} ({n})" for v, n in raw.value_counts(dropna=False).head(20).items())
        wanted = repr(value) if value is not None else f"one of {list(HOLDOUT_VALUES)} (or give COL=VALUE)"
        raise ValueError(f"{where}: holdout_column {name!r}: rows with value {wanted} are "
                         f"{'all' if held.all() else 'none'} of the rows; need some on each side "
                         f"(values and rows: {seen})")
    rule = f"value {value!r}" if value is not None else f"a value in {list(HOLDOUT_VALUES)} (case-insensitive)"
    return held, f"column {name!r}: the rows with {rule}"


def place(held: np.ndarray, keys: list[str], salt: str, span: int, cut: int) -> np.ndarray:
    """Offsets in the window: held rows in (cut, span], the others in [1, cut], each by spread_ms."""
    return np.where(held, cut + spread_ms(keys, salt, span - cut), spread_ms(keys, salt, cut))


def record(rule: str, how: str, held: np.ndarray, after: pd.Timestamp | None = None) -> dict:
    """The manifest's `import.holdout`: rule, how, rows held out, their share, the first few data
    rows (0-based) and the cut the features step splits at (None: params features.split)."""
    n, h = len(held), int(held.sum())
    out = {"rule": rule, "how": how, "rows": h, "of_rows": n, "share": h / n if n else 0.0,
           "first_rows": np.flatnonzero(held)[:5].tolist()}
    if after is not None:
        out["after"] = after.isoformat(timespec="milliseconds")
        out["time_quantile"] = (n - h - 0.5) / n if n else 0.0
    return out


def params_split(ts: np.ndarray, split: dict, spread: bool) -> dict:
    """The record of the params' time split on the imported exposure times (datetime64; NaT rows
    are quarantined by validate and count on neither side): the last 1 − (train + valid) share of
    the rows by time, as the features step cuts them (it shares rows of one instant between the
    splits by a hash of the exposure id, so which of those is held out is decided there)."""
    q = float(split["train"]) + float(split["valid"])
    t = ts.astype("datetime64[ms]").astype(np.int64)
    known = ~np.isnat(ts)
    held = np.zeros(len(ts), bool)
    if known.any():
        rows = np.flatnonzero(known)
        by_time = rows[np.argsort(t[known], kind="stable")]
        held[by_time[math.floor(q * len(rows) + 0.5):]] = True
    how = (f"params features.split: the last {1 - q:g} of the exposures by time"
           + (" (times spread by a seeded hash of the user id or row: a random share of the rows)" if spread else ""))
    return record("params", how, held) | {"note": "counted at import; rows validate quarantines shift it"}
