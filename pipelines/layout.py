"""Where each step's inputs and outputs live: S3 keys and workspace paths, in one place."""
from __future__ import annotations

from pathlib import Path


def raw_prefix(batch: str, table: str) -> str:
    return f"raw/{batch}/{table}/"


def raw_manifest_key(batch: str) -> str:
    """Written last by a producer: a batch without it is incomplete and is not read."""
    return f"raw/{batch}/_manifest.json"


def truth_prefix(batch: str) -> str:
    return f"raw/{batch}/_truth/"


def quarantine_prefix(table: str, batch: str) -> str:
    return f"quarantine/{table}/{batch}/"


def validation_prefix(batch: str, run_id: str) -> str:
    return f"validation/{batch}/{run_id}/"


def scores_prefix(campaign_id: str, run_id: str) -> str:
    return f"scores/{campaign_id}/{run_id}/"


def retrain_record_key(batch: str) -> str:
    """The immutable record of one retraining day (pipelines/retrain_day.py)."""
    return f"retrain/{batch}/record.json"


def drift_prefix(stage: str, batch: str, check_id: str) -> str:
    """One drift gate check (report.json, report.html) before `stage` (train | score)."""
    return f"drift/{stage}/{batch}/{check_id}/"


def feedback_prefix(campaign_id: str, run_id: str) -> str:
    """The feedback report (report.json, report.html) of scores run `run_id`: forecast vs actual."""
    return f"feedback/{campaign_id}/{run_id}/"


def feedback_link_key(campaign_id: str, run_id: str) -> str:
    """Beside the (immutable) scores manifest: points at the run's feedback report once written."""
    return scores_prefix(campaign_id, run_id) + "feedback.json"


def promotion_log_prefix(model_name: str) -> str:
    """The promotion log of a registered model (pipelines/promote.py): one immutable object per
    alias change, ``<sortable UTC timestamp>-<event id>.json``."""
    return f"promotions/{model_name}/"


# Workspace paths (relative to the workspace root); DVC tracks the data/ ones.
RAW_MANIFEST = Path("data/raw_manifest.json")
VALIDATED_DIR = Path("data/validated")
FEATURES_DIR = Path("data/features")
MODEL_DIR = Path("data/model")
REPORTS_DIR = Path("reports")

