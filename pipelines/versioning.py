"""Runs DVC stages for Airflow tasks and the CLI: points the S3 remote at the stack, reproduces
one stage and pushes its outputs, so every task leaves its data versioned in S3."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from campaignops.config import Settings


def _dvc(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = settings.process_env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    proc = subprocess.run([dvc, *args], cwd=settings.workspace, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {settings.workspace} "
                           f"(exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def configure_remote(settings: Settings) -> None:
    """Machine-local remote settings (endpoint, bucket) go to .dvc/config.local, never to git."""
    _dvc(settings, "remote", "modify", "--local", "store", "url", f"s3://{settings.bucket}/dvc")
    _dvc(settings, "remote", "modify", "--local", "store", "endpointurl", settings.s3_endpoint)


def repro(settings: Settings, stage: str, push: bool = True) -> dict:
    """`dvc repro --single-item <stage>` then `dvc push <stage>`; returns what DVC said."""
    configure_remote(settings)
    out = _dvc(settings, "repro", "--single-item", stage)
    ran = "Running stage" in out.stdout
    pushed = _dvc(settings, "push", stage).stdout.strip() if push else ""
    return {"stage": stage, "ran": ran, "dvc": out.stdout.strip().splitlines()[-3:], "push": pushed}
