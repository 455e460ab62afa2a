"""Shared fixtures: a workspace in a temp dir with the project's params.yaml."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from campaignops.config import Settings

ROOT = Path(__file__).resolve().parents[1]


TEST_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


def project_settings(ws: Path, edit=None) -> Settings:
    """Settings on workspace `ws` with the project's params.yaml, changed first by `edit(params)`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if edit is not None:
        edit(params)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return Settings(workspace=ws, state_dir=ws / ".state", env=dict(TEST_ENV))


def land_features(settings: Settings, store, users: int, date: str | None = None) -> dict:
    """A generated world through ingest, validate and features on `store`; returns the raw manifest."""
    from campaignops.pipelines import features, ingest, synth, validate

    manifest = synth.generate(settings, users=users, store=store, progress=False, date=date)
    ingest.ingest(settings, batch=manifest["batch"], store=store)
    validate.run(settings, store=store)
    features.build(settings, store=store)
    return manifest


@contextmanager
def moto_store(settings: Settings, store_class=None):
    """An ObjectStore (or `store_class`) on an in-process S3 (moto) holding the settings' bucket."""
    import boto3
    from moto import mock_aws

    from campaignops.pipelines.storage import ObjectStore

    with mock_aws():
        s = (store_class or ObjectStore)(settings, client=boto3.client("s3", region_name="us-east-1"))
        s.ensure_bucket()
        yield s


@pytest.fixture
def store(workspace):
    """An ObjectStore on an in-process S3 (moto) with the workspace's bucket."""
    with moto_store(workspace) as s:
        yield s


@pytest.fixture
def workspace(tmp_path: Path) -> Settings:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return Settings(workspace=tmp_path, state_dir=tmp_path / ".state", env=dict(TEST_ENV))


def _arm_frame(n: int = 400, seed: int = 0, campaigns: tuple[str, ...] = ("C",)):
    """n exposures per campaign logged at a, b or control (arm ids prefixed by the campaign when
    there are several), each scored under all three arms; random responses."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for c in campaigns:
        names = {a: (a if len(campaigns) == 1 or a == "control" else f"{c}-{a}") for a in ("a", "b", "control")}
        logged = rng.choice(list(names.values()), n)
        y = rng.integers(0, 2, n)
        rows += [(f"{c}x{i}", c, logged[i], arm, y[i]) for i in range(n) for arm in names.values()]
    return pd.DataFrame(rows, columns=["exposure_id", "campaign_id", "variant_id", "arm_id", "responded"])


@pytest.fixture
def arm_frame():
    """Builds frames of exposures scored under every arm (models.arms' input): arm_frame(n, seed, campaigns)."""
    return _arm_frame


# --------------------------------------------------------------------------- the e2e tests' shared stack
# One running stack (SeaweedFS, MLflow, Airflow on free ports, in a sandbox copy of the project),
# started once per session by the first e2e test that asks for `stack`, stopped at the end. Here and
# not in tests/e2e/conftest.py: test modules import helpers with `from conftest import ...`, and a
# second conftest.py would shadow this one.

def small_world(params: dict) -> None:
    params["data"]["users"] = 6000
    params["score"]["part_rows"] = 2500     # several output parts: the kill test stops between them
    params["train"]["epochs"] = 6
    # A small world trains a weak model; this test is about the chain, the gate has unit tests.
    params["evaluate"].update(min_auc=0.5, max_logloss=1.0, min_qini=-1.0, min_policy_value_fraction=-10.0)
    params["stack"]["start_timeout_s"] = 600     # Airflow's first start (db migrate) on 2 busy cores


@pytest.fixture(autouse=True, scope="module")
def _process_state_restored():
    """Each test module gets back the process state it started with: os.environ (the code's
    `config.apply_env` exports endpoints with setdefault, and monkeypatch restores only the keys it
    set: a module's S3 endpoint outlived it and sent the next module's in-process S3 (moto) to a
    stopped server) and MLflow's `set_tracking_uri`/`set_registry_uri` globals (same story for
    the tracking server). Session fixtures (the shared stack) are set up before this one."""
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    saved_env, saved_uris = dict(os.environ), (tracking._tracking_uri, registry._registry_uri)
    yield
    if dict(os.environ) != saved_env:
        os.environ.clear()
        os.environ.update(saved_env)
    tracking._tracking_uri, registry._registry_uri = saved_uris


SHARED_STACK_ORDER = {"test_chain.py": 0, "test_browser.py": 1}


def pytest_collection_modifyitems(config, items):
    """The shared stack's users first, the browser test right after test_chain.py: it reuses the
    champion test_chain trains instead of training one first (which would make test_chain's retrain
    a challenger of it). Modules with stacks of their own come after."""
    items.sort(key=lambda item: SHARED_STACK_ORDER.get(item.fspath.basename, 2))


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    from campaignops.infra.sandbox import sandbox_stack

    with sandbox_stack(tmp_path_factory.mktemp("e2e"), small_world) as settings:
        yield settings
