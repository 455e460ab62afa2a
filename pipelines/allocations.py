"""Where a campaign's allocation versions live and how they are read: one immutable run per version
under allocations/<campaign>/<version>/ (parts, report.json, manifest.json written last; the
run_commit protocol), latest.json naming the newest, and the row in effect for each user (the
newest version that covers the user's wave). Written by pipelines/adjust.py, read by it and by
the simulator (pipelines/sim_waves.py)."""
from __future__ import annotations

import pandas as pd

from campaignops.pipelines.storage import ObjectStore

SIM_COLUMNS = ["user_id", "wave", "chosen_variant", "send", "propensity"]


def campaign_prefix(campaign_id: str) -> str:
    return f"allocations/{campaign_id}/"


def version_prefix(campaign_id: str, version: str) -> str:
    return f"{campaign_prefix(campaign_id)}{version}/"


def latest_key(campaign_id: str) -> str:
    from campaignops.pipelines.run_commit import LATEST

    return campaign_prefix(campaign_id) + LATEST


def has_plan(store: ObjectStore, campaign_id: str) -> bool:
    """Whether the campaign is sent in waves (an allocation version exists)."""
    return store.get_bytes_or_none(latest_key(campaign_id)) is not None


def versions(store: ObjectStore, campaign_id: str) -> list[dict]:
    """Committed version manifests in the order they take effect: by first wave, then commit time."""
    from campaignops.pipelines.run_commit import committed_runs

    runs = committed_runs(store, campaign_prefix(campaign_id))    # oldest commit first
    return sorted(runs, key=lambda m: int(m["from_wave"]))        # stable: commit order within a wave


def rows(store: ObjectStore, manifest: dict, columns: list[str] | None = None) -> pd.DataFrame:
    """A version's rows (parts checked against the manifest)."""
    from campaignops.pipelines.run_commit import read_run

    table = read_run(store, manifest)
    return (table.select(columns) if columns else table).to_pandas()


def in_effect(store: ObjectStore, campaign_id: str, columns: list[str] | None = None,
              manifests: list[dict] | None = None) -> pd.DataFrame:
    """One row per user: from the newest version listing the user (each version lists the users of
    its waves from_wave on, so that is the version in effect for the user's wave); + `version`."""
    manifests = versions(store, campaign_id) if manifests is None else manifests
    cols = columns or SIM_COLUMNS
    parts = [rows(store, m, cols).assign(version=m["version"], _order=i) for i, m in enumerate(manifests)]
    if not parts:
        return pd.DataFrame(columns=[*cols, "version"])
    frame = pd.concat(parts, ignore_index=True).sort_values("_order", kind="stable")
    return frame.drop_duplicates("user_id", keep="last").drop(columns="_order").reset_index(drop=True)
