"""The simulator's side of dynamic adjustment: a campaign the platform sends in waves (it has an
allocation plan under allocations/<campaign>/, pipelines/allocations.py) is sent wave by wave —
wave w on the campaign's day w, each user as the allocation version in effect for its wave decided
— and a wave's outcomes are in the snapshots from its day + outcome_delay_days on."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from campaignops.pipelines import allocations
from campaignops.pipelines.sim_clock import Clock
from campaignops.pipelines.sim_responses import Decision, decision
from campaignops.pipelines.sim_world import DAY_MS, Campaign


def load_decision(store, camp: Campaign, clock: Clock) -> Decision | None:
    """The landed waves of `camp` as its allocation versions decided (None: no plan, so the campaign
    is sent in one go as its scores run decided)."""
    if not allocations.has_plan(store, camp.campaign_id):
        return None
    manifests = allocations.versions(store, camp.campaign_id)
    rows = allocations.in_effect(store, camp.campaign_id, manifests=manifests)
    wave = rows["wave"].to_numpy(np.int64)
    landed = camp.start_ms + (wave + clock.delay_days) * DAY_MS <= clock.date_ms
    rows = rows[landed]
    latest = manifests[-1]
    key = latest["commit"]["manifest_key"]
    table = pa.Table.from_pandas(rows[["user_id", "chosen_variant", "send", "propensity"]], preserve_index=False)
    return decision(table, camp, f"allocation {store.uri(key)}", latest["version"], key, wave[landed])
