"""A copy of the project as a DVC repo (git, dvc.yaml, params.yaml, .dvc/config, code) whose S3 —
raw batches and the DVC remote — is an in-process moto server, for fault tests that run the real
`dvc` binary through pipelines/versioning.py."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from campaignops.config import Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CODE_DIRS = ("pipelines", "validation", "models", "campaignops")
PROJECT_FILES = ("dvc.yaml", "params.yaml")
# DVC refuses to run any stage while dvc.lock is git-ignored ("'dvc.lock' is git-ignored"), so the
# copy's .gitignore leaves that one line of the project's out.
GITIGNORE_DROPPED = ("/dvc.lock",)


@dataclass
class Project:
    settings: Settings
    store: object          # ObjectStore on the moto server
    endpoint: str

    @property
    def repo(self) -> Path:
        return self.settings.workspace

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = self.settings.process_env()
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        proc = subprocess.run([str(BIN / "dvc"), *args], cwd=self.repo, env=env, capture_output=True, text=True)
        if check and proc.returncode:
            raise AssertionError(f"dvc {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_project(repo: Path, params_update=None) -> None:
    """The files DVC needs to run the stages, committed to a fresh git repo; `params_update(params)`
    may edit params.yaml first."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy(ROOT / name, repo / name)
    if params_update is not None:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params_update(params)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    kept = [line for line in (ROOT / ".gitignore").read_text().splitlines() if line.strip() not in GITIGNORE_DROPPED]
    (repo / ".gitignore").write_text("\n".join(kept) + "\n")
    (repo / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    for d in CODE_DIRS:
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project copy"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)


def start_project(tmp: Path, params_update=None):
    """(Project, stop): the repo in `tmp`/repo (params edited by `params_update`) with its bucket on a
    fresh moto server."""
    import boto3
    from moto.server import ThreadedMotoServer

    from campaignops.pipelines.storage import ObjectStore

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "CAMPAIGNOPS_S3_ENDPOINT": endpoint, "CAMPAIGNOPS_ID_SALT": "faults-test-salt", "DVC_NO_ANALYTICS": "1",
           # moto keeps every server's buckets in one in-process backend: a bucket of its own per project
           "CAMPAIGNOPS_BUCKET": f"campaignops-{port}"}
    repo = tmp / "repo"
    copy_project(repo, params_update)
    settings = Settings(workspace=repo, state_dir=tmp / "state", env=env)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    store = ObjectStore(settings, client=client)
    store.ensure_bucket()
    return Project(settings, store, endpoint), server.stop
