"""The end-to-end tests' one running stack (SeaweedFS, MLflow, Airflow on free ports, in a sandbox
copy of the project): started once per session and shared by every e2e module, stopped at the end."""
from __future__ import annotations

import pytest


def small_world(params: dict) -> None:
    params["data"]["users"] = 6000
    params["score"]["part_rows"] = 2500     # several output parts: the kill test stops between them
    params["train"]["epochs"] = 6
    # A small world trains a weak model; this test is about the chain, the gate has unit tests.
    params["evaluate"].update(min_auc=0.5, max_logloss=1.0, min_qini=-1.0, min_policy_value_fraction=-10.0)
    params["stack"]["start_timeout_s"] = 600     # Airflow's first start (db migrate) on 2 busy cores


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
