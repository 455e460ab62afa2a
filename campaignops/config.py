"""Reads the one config source: params.yaml for knobs, the environment (and the stack's
git-ignored env file) for endpoints and secrets."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@dataclass
class Settings:
    """Resolved settings for one process. Environment wins over the env file."""

    workspace: Path
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @cached_property
    def params(self) -> dict:
        return yaml.safe_load((self.workspace / "params.yaml").read_text())

    def _get(self, key: str, default: str | None = None) -> str | None:
        return os.environ.get(key) or self.env.get(key) or default

    def port(self, name: str) -> int:
        return int(self._get(f"CAMPAIGNOPS_{name.upper()}_PORT", str(self.params["stack"][f"{name}_port"])))

    @property
    def host(self) -> str:
        return self._get("CAMPAIGNOPS_HOST", self.params["stack"]["host"])

    @property
    def bucket(self) -> str:
        return self._get("CAMPAIGNOPS_BUCKET", self.params["stack"]["bucket"])

    @property
    def s3_endpoint(self) -> str:
        return self._get("CAMPAIGNOPS_S3_ENDPOINT", f"http://{self.host}:{self.port('s3')}")

    @property
    def mlflow_uri(self) -> str:
        return self._get("MLFLOW_TRACKING_URI", f"http://{self.host}:{self.port('mlflow')}")

    @property
    def airflow_url(self) -> str:
        return self._get("CAMPAIGNOPS_AIRFLOW_URL", f"http://{self.host}:{self.port('airflow')}")

    @property
    def aws_access_key(self) -> str | None:
        return self._get("AWS_ACCESS_KEY_ID")

    @property
    def aws_secret_key(self) -> str | None:
        return self._get("AWS_SECRET_ACCESS_KEY")

    @property
    def airflow_user(self) -> str:
        return self._get("CAMPAIGNOPS_AIRFLOW_USER", "admin")

    @property
    def airflow_password(self) -> str | None:
        return self._get("CAMPAIGNOPS_AIRFLOW_PASSWORD")

    @property
    def env_file(self) -> Path:
        return self.state_dir / "stack.env"

    def process_env(self) -> dict[str, str]:
        """Environment for child processes (servers, DVC, tasks): endpoints + credentials."""
        env = dict(os.environ)
        env.update({k: v for k, v in self.env.items() if k not in os.environ})
        env.update(
            {
                "CAMPAIGNOPS_WORKSPACE": str(self.workspace),
                "CAMPAIGNOPS_STATE": str(self.state_dir),
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
                "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
                "MLFLOW_TRACKING_URI": self.mlflow_uri,
                "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", "us-east-1"),
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": env.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
            }
        )
        return env


def apply_env(settings: Settings) -> None:
    """Export endpoints and credentials to this process (MLflow, boto3 and DVC read os.environ)."""
    for key, value in settings.process_env().items():
        os.environ.setdefault(key, value)


def load_settings() -> Settings:
    workspace = Path(os.environ.get("CAMPAIGNOPS_WORKSPACE", PACKAGE_ROOT)).resolve()
    state_dir = Path(os.environ.get("CAMPAIGNOPS_STATE", workspace / ".campaignops")).resolve()
    return Settings(workspace=workspace, state_dir=state_dir, env=_read_env_file(state_dir / "stack.env"))
