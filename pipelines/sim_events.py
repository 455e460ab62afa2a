"""Behaviour events of the synthetic world (sim_world.py): each user's history before the world's
origin, the events of each simulated day after it, purchases following carts and reviews following
purchases, the events table, and the recency counts the true response reads.

History: browse/cart events at a per-user activity (a share of them in the last 30 days), prices
from price sensitivity, categories from the interest active at the event's time; purchases of
carts that would fall after the origin are dropped from the undated world and kept by a horizon.
Simulated day k: each user present draws Poisson(rate × time present that day) browse/cart
events at the recent rate their history ended with, from the day's keyed stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa

from campaignops.pipelines.sim_world import (
    DAY_MS,
    HOUR_MS,
    INTEREST_SHARE,
    RECENT_BOOST_DAYS,
    RECENT_DAYS,
    Users,
    World,
    _fixed_strings,
    _take,
    _ts_array,
    categories,
)
from campaignops.validation.contract import SCHEMAS


@dataclass
class EventDraws:
    """Events as arrays (unsorted): user index, time, type (0 browse, 1 cart, 2 purchase, 3 review),
    category index, price."""
    ui: np.ndarray
    ts: np.ndarray
    etype: np.ndarray
    cat: np.ndarray
    price: np.ndarray

    @staticmethod
    def concat(parts: list["EventDraws"]) -> "EventDraws":
        return EventDraws(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(EventDraws)))

    def take(self, idx: np.ndarray) -> "EventDraws":
        return EventDraws(*(getattr(self, f.name)[idx] for f in fields(EventDraws)))


def _browse_and_carts(rng, w: World, u: Users, ui: np.ndarray, ts: np.ndarray):
    """Type, category and price of browse/cart events of users `ui` at times `ts`."""
    m = len(ui)
    active = np.where(ts < u.switch[ui], u.old[ui], u.cur[ui])
    cat = np.where(rng.random(m) < INTEREST_SHARE, active, rng.integers(0, w.n_categories, m))
    etype = np.where(rng.random(m) < 0.22, 1, 0).astype(np.int8)  # 0 browse, 1 cart
    cat_level = np.linspace(-0.4, 0.4, w.n_categories)
    price = np.exp(rng.normal(math.log(45.0) - 0.9 * u.ps[ui] + cat_level[cat], 0.55))
    return etype, cat, price


def _history(rng: np.random.Generator, w: World, u: Users, lo: np.ndarray) -> tuple[EventDraws, EventDraws]:
    """(events of a chunk's users before now, the spill: purchases and reviews of that history
    which fall after now — the undated world drops them, a horizon keeps them). Sets u.rate, each
    user's event rate after now (the recent rate the history ends with)."""
    n = u.n
    span = (w.now_ms - lo).astype(np.float64)
    activity = rng.lognormal(-0.18, 0.6, n)
    recent_w = rng.beta(0.7, 2.5, n)
    counts = rng.poisson(w.events_per_user * activity * span / w.history_ms * 0.95)
    counts = np.minimum(counts, 50_000)
    ui = np.repeat(np.arange(n), counts)
    m = len(ui)
    recent = rng.random(m) < recent_w[ui]
    width = np.where(recent, np.minimum(span[ui], RECENT_BOOST_DAYS * DAY_MS), span[ui])
    ts = (w.now_ms - 1 - np.floor(rng.random(m) * width)).astype(np.int64)
    etype, cat, price = _browse_and_carts(rng, w, u, ui, ts)
    boost = recent_w * np.maximum(span, 1.0) / np.clip(span, 1.0, RECENT_BOOST_DAYS * DAY_MS) + (1 - recent_w)
    u.rate = w.events_per_user * activity * 0.95 / w.history_ms * boost

    # purchases follow carts (unless abandoned), reviews follow purchases
    carts = np.flatnonzero(etype == 1)
    bought = carts[rng.random(len(carts)) >= u.abandon[ui[carts]]]
    p_ts = ts[bought] + rng.exponential(1.5 * HOUR_MS, len(bought)).astype(np.int64) + 1
    keep = p_ts < w.now_ms
    spill = EventDraws(ui[bought[~keep]], p_ts[~keep], np.full((~keep).sum(), 2, np.int8),
                       cat[bought[~keep]], price[bought[~keep]])
    bought, p_ts = bought[keep], p_ts[keep]
    rev = rng.random(len(bought)) < 0.15
    r_src, r_ts = bought[rev], p_ts[rev] + rng.exponential(2 * DAY_MS, rev.sum()).astype(np.int64) + 1
    late = r_ts >= w.now_ms
    spill = EventDraws.concat([spill, EventDraws(ui[r_src[late]], r_ts[late], np.full(late.sum(), 3, np.int8),
                                                 cat[r_src[late]], price[r_src[late]])])
    r_src, r_ts = r_src[~late], r_ts[~late]

    src = np.concatenate([np.arange(m), bought, r_src])
    return EventDraws(ui[src], np.concatenate([ts, p_ts, r_ts]),
                      np.concatenate([etype, np.full(len(bought), 2, np.int8), np.full(len(r_src), 3, np.int8)]),
                      cat[src], price[src]), spill


def _follow_ups(rng: np.random.Generator, u: Users, ev: EventDraws, purchases: bool = True) -> EventDraws:
    """Purchases of the carts in `ev` (unless abandoned) and reviews of those purchases (or, with
    purchases=False, reviews of the purchases in `ev`), whenever they fall."""
    parts = []
    if purchases:
        carts = np.flatnonzero(ev.etype == 1)
        bought = carts[rng.random(len(carts)) >= u.abandon[ev.ui[carts]]]
        p = ev.take(bought)
        p.ts = p.ts + rng.exponential(1.5 * HOUR_MS, len(bought)).astype(np.int64) + 1
        p.etype = np.full(len(bought), 2, np.int8)
        parts.append(p)
    else:
        p = ev.take(np.flatnonzero(ev.etype == 2))
    r = p.take(np.flatnonzero(rng.random(len(p.ui)) < 0.15))
    r.ts = r.ts + rng.exponential(2 * DAY_MS, len(r.ui)).astype(np.int64) + 1
    r.etype = np.full(len(r.ui), 3, np.int8)
    return EventDraws.concat(parts + [r])


def day_events(rng: np.random.Generator, w: World, u: Users, day: int) -> EventDraws:
    """Browse and cart events of horizon day `day` (at each user's rate from max(signup, day
    start)), with the purchases and reviews that follow them."""
    start, end = w.now_ms + day * DAY_MS, w.now_ms + (day + 1) * DAY_MS
    lo = np.maximum(u.signup, start)
    length = np.clip(end - lo, 0, None).astype(np.float64)
    counts = np.minimum(rng.poisson(u.rate * length), 5_000)
    ui = np.repeat(np.arange(u.n), counts)
    ts = (lo[ui] + np.floor(rng.random(len(ui)) * length[ui])).astype(np.int64)
    etype, cat, price = _browse_and_carts(rng, w, u, ui, ts)
    ev = EventDraws(ui, ts, etype, cat, price)
    return EventDraws.concat([ev, _follow_ups(rng, u, ev)])


def events_table(w: World, u: Users, ev: EventDraws) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Events sorted by (user, ts, type), numbered per user in that order. Returns (table, user
    index, ts ms)."""
    order = np.lexsort((ev.etype, ev.ts, ev.ui))
    ui, ts, etype = ev.ui[order], ev.ts[order], ev.etype[order]
    cat, price = ev.cat[order], np.round(ev.price[order], 2)
    total = len(ui)
    per_user = np.bincount(ui, minlength=u.n)
    starts = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    seq = np.arange(total) - starts[ui] + 1
    cats = categories(w.n_categories)
    table = pa.Table.from_arrays([
        _fixed_strings(["e", (u.number[ui], w.id_width), "-", (seq, 6)], total),
        _fixed_strings(["u", (u.number[ui], w.id_width)], total),
        _take(("browse", "cart", "purchase", "review"), etype),
        _take(cats, cat),
        pa.array(price, pa.float64()),
        _ts_array(ts),
    ], schema=SCHEMAS["events"])
    return table, ui, ts


def _events(rng: np.random.Generator, w: World, u: Users, lo: np.ndarray):
    """Events of a chunk's users before now, sorted by (user, ts). Returns (table, user index, ts ms)."""
    return events_table(w, u, _history(rng, w, u, lo)[0])


class _Recency:
    """Counts each user's events in [t − 14 days, t) via binary search on (user, ts) keys."""

    SHIFT = np.int64(1) << np.int64(42)

    def __init__(self, ui: np.ndarray, ts: np.ndarray, origin: int):
        self.origin = origin
        self.keys = ui.astype(np.int64) * self.SHIFT + (ts - origin)   # sorted: events sorted by (ui, ts)

    def count(self, ui: np.ndarray, t: np.ndarray) -> np.ndarray:
        hi = ui.astype(np.int64) * self.SHIFT + (t - self.origin)
        lo = hi - RECENT_DAYS * DAY_MS
        return np.searchsorted(self.keys, hi, "left") - np.searchsorted(self.keys, lo, "left")
