"""MLflow wiring shared by train, evaluate, promote and score: tracking URI, experiment,
pinned model requirements and the git revision for audit tags."""
from __future__ import annotations

import subprocess
from importlib.metadata import version

from urllib.parse import quote

from campaignops.config import Settings, apply_env

EXPERIMENT = "campaignops"
# MLflow 3's experiment kind: the UI opens the experiment in its model-training view (runs, models)
# rather than the GenAI one (traces); values: custom_model_development | genai_development.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
MODEL_REQUIREMENTS = ("tensorflow-cpu", "keras", "mlflow", "numpy", "pandas", "pyarrow")


def ui_url(settings: Settings) -> str | None:
    """The MLflow UI's base URL (None when tracking is not a server, e.g. a sqlite file)."""
    uri = settings.mlflow_uri.rstrip("/")
    return uri if uri.startswith(("http://", "https://")) else None


def run_url(ui: str | None, experiment_id, run_id: str | None) -> str | None:
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}" if ui and run_id else None


def version_url(ui: str | None, name: str, version) -> str | None:
    return f"{ui}/#/models/{quote(name)}/versions/{version}" if ui and version is not None else None


def configure(settings: Settings):
    """Point MLflow at the stack's tracking server and return the module."""
    apply_env(settings)
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_uri)
    experiment = mlflow.set_experiment(EXPERIMENT)
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):   # new, or created before the tag was set
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return mlflow


def pip_requirements() -> list[str]:
    """Exact versions of what the pyfunc model needs (inferring them costs ~20 s)."""
    return [f"{name}=={version(name)}" for name in MODEL_REQUIREMENTS]


def git_revision(settings: Settings) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=settings.workspace, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=settings.workspace,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
