"""Shared fixtures: a workspace in a temp dir with the project's params.yaml."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from campaignops.config import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path: Path) -> Settings:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return Settings(workspace=tmp_path, state_dir=tmp_path / ".state",
                    env={"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
