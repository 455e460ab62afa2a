"""The simulator's clock: which day of the simulation a date is, which campaigns are known, running
or resolved as of it, and the cut of the world's streams a snapshot batch holds (params
`data.sim`).

Day 0 is `start_date` (the world's origin, the undated batch's `now`); a snapshot as of day d
(midnight UTC) holds the users signed up before it, their events before it (from the start of the
world's history: day d+1's snapshot is a superset of day d's), the campaigns started by then, and
the exposures of every campaign whose outcomes have resolved: the past campaigns always, the
campaign started on day k from day k + outcome_delay_days on. The campaign starting on day d is
the snapshot's upcoming one (the one the platform scores that day).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from campaignops.pipelines.sim_world import DAY_MS, NOW, Campaign, _ms

PAST, RESOLVED, PENDING, UPCOMING, FUTURE = "past", "resolved", "pending", "upcoming", "future"


def utc_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class Clock:
    start_ms: int        # day 0, midnight UTC
    days: int            # horizon of the world drawn (0: the world ends at day 0)
    delay_days: int      # a send on day k has resolved in the snapshots of day k + delay on
    day: int             # the snapshot's day

    @property
    def date_ms(self) -> int:
        return self.start_ms + self.day * DAY_MS

    @property
    def date(self) -> datetime:
        return utc_datetime(self.date_ms)

    def status(self, camp: Campaign) -> str:
        """past (started before day 0: the legacy history), resolved (its outcomes are in this
        snapshot), pending (started, outcomes not yet resolved), upcoming (starts on this day)
        or future (not known yet)."""
        if camp.start_ms < self.start_ms:
            return PAST
        if camp.start_ms == self.date_ms:
            return UPCOMING
        if camp.start_ms > self.date_ms:
            return FUTURE
        return RESOLVED if camp.start_ms + self.delay_days * DAY_MS <= self.date_ms else PENDING

    def known(self, campaigns: list[Campaign]) -> list[Campaign]:
        """The calendar as of the snapshot: every campaign started on or before its date."""
        return [c for c in campaigns if self.status(c) != FUTURE]

    def upcoming(self, campaigns: list[Campaign]) -> Campaign:
        found = [c for c in campaigns if self.status(c) == UPCOMING]
        if len(found) != 1:
            raise ValueError(f"no campaign starts on {self.date:%Y-%m-%d} (day {self.day}) of this world")
        return found[0]


def parse_date(value) -> datetime:
    """An ISO date ("2026-06-03") or a date/datetime at midnight, as naive UTC midnight."""
    if isinstance(value, datetime):
        dt = value.replace(tzinfo=None)
    elif isinstance(value, Date):
        dt = datetime(value.year, value.month, value.day)
    else:
        try:
            dt = datetime.fromisoformat(str(value))
        except ValueError:
            raise ValueError(f"date must be an ISO date like 2026-06-03, got {value!r}") from None
    if (dt.hour, dt.minute, dt.second, dt.microsecond) != (0, 0, 0, 0):
        raise ValueError(f"a snapshot is as of midnight UTC; got {value!r}")
    return dt


def sim_params(p: dict) -> dict:
    """params data.sim with defaults, checked."""
    sim = dict(p.get("sim") or {})
    out = {"start_date": parse_date(sim.get("start_date", NOW)), "days": int(sim.get("days", 0)),
           "outcome_delay_days": int(sim.get("outcome_delay_days", 1)),
           "new_users_per_day": float(sim.get("new_users_per_day", 0.0))}
    if out["days"] < 0:
        raise ValueError(f"params data.sim.days must be >= 0, got {out['days']}")
    if out["outcome_delay_days"] < 1:
        raise ValueError("params data.sim.outcome_delay_days must be >= 1: a campaign is scored on its start day, "
                         f"its outcomes come later; got {out['outcome_delay_days']}")
    if not 0.0 <= out["new_users_per_day"] < 1.0:
        raise ValueError(f"params data.sim.new_users_per_day must be in [0, 1), got {out['new_users_per_day']}")
    return out


def make_clock(p: dict, date=None) -> Clock:
    """The clock of params `data:` `p` as of `date` (None: day 0 of a world without horizon, the
    undated batch)."""
    sim = sim_params(p)
    start = sim["start_date"]
    if date is None:
        return Clock(_ms(start), 0, sim["outcome_delay_days"], 0)
    d = parse_date(date)
    day = (d - start).days
    if not 0 <= day <= sim["days"]:
        last = utc_datetime(_ms(start) + sim["days"] * DAY_MS)
        raise ValueError(f"date {d:%Y-%m-%d} is outside the simulation's calendar {start:%Y-%m-%d} .. {last:%Y-%m-%d} "
                         "(params data.sim.start_date and days)")
    return Clock(_ms(start), sim["days"], sim["outcome_delay_days"], day)


def before(table: pa.Table, column: str, t_ms: int) -> pa.Table:
    """Rows of `table` whose timestamp `column` is strictly before t_ms (order kept)."""
    cut = pa.scalar(np.datetime64(int(t_ms), "ms"), pa.timestamp("ms"))
    mask = pc.less(table.column(column), cut)
    return table if pc.all(mask).as_py() is not False else table.filter(mask)
