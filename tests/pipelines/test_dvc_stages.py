"""DVC stage declarations of the features stage, exercised with the real dvc binary in a temp git
repo holding a copy of the project's dvc.yaml, params.yaml, .dvc/config and code dirs, with
data/raw_manifest.json and data/validated prepared locally (no S3: only `features` runs, via
`dvc repro --single-item features`, so the validate stage upstream is never executed)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from campaignops.config import Settings
from campaignops.pipelines import synth

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DVC = BIN / "dvc"

pytestmark = pytest.mark.skipif(not DVC.exists(), reason="dvc not installed in the venv")


def _run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "CAMPAIGNOPS_WORKSPACE": str(repo), "CAMPAIGNOPS_STATE": str(repo / ".campaignops"),
           "CAMPAIGNOPS_ID_SALT": "dvc-stage-test-salt", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _repro(repo: Path) -> bool:
    """Run the features stage alone; True when DVC executed it, False when it skipped it."""
    out = _run(repo, str(DVC), "repro", "--no-run-cache", "--single-item", "features")
    text = out.stdout + out.stderr
    ran = "Running stage 'features'" in text
    assert ran or "didn't change, skipping" in text, text
    return ran


def _lock_outs(repo: Path) -> dict:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for o in lock["stages"]["features"]["outs"]}


def _set_param(repo: Path, section: str, key: str, value) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("dvcrepo")
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    (repo / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    for d in ("pipelines", "validation", "models", "campaignops"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    # A small world, written straight into data/validated (what the validate stage would produce).
    settings = Settings(workspace=repo, state_dir=repo / ".campaignops")
    raw = tmp_path_factory.mktemp("raw")
    manifest = synth.generate(settings, users=300, store=synth.LocalStore(raw), progress=False)
    vdir = repo / "data" / "validated"
    vdir.mkdir(parents=True)
    for table in ("users", "events", "campaigns", "exposures"):
        parts = [pq.read_table(raw / k) for k in manifest["tables"][table]["files"]]
        import pyarrow as pa

        pq.write_table(pa.concat_tables(parts), vdir / f"{table}.parquet")
    manifest.pop("truth")  # no ground-truth files outside S3 here
    (repo / "data" / "raw_manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    _run(repo, "git", "init", "-q")
    _run(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    _run(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "project copy")
    return repo


def test_features_stage_reruns_exactly_when_its_inputs_change(repo):
    assert _repro(repo)  # first run
    first = _lock_outs(repo)
    assert set(first) == {"data/features"}
    assert not _repro(repo), "an unchanged `dvc repro features` must be a no-op"

    _set_param(repo, "train", "epochs", 3)  # another stage's param
    assert not _repro(repo), "a train.* param must not re-run features"

    _set_param(repo, "features", "seq_len", 20)
    assert _repro(repo), "changing features.seq_len must re-run features"
    meta = json.loads((repo / "data/features/meta.json").read_text())
    assert meta["seq_len"] == 20 and _lock_outs(repo) != first
    assert not _repro(repo)

    _set_param(repo, "features", "seq_len", yaml.safe_load((ROOT / "params.yaml").read_text())["features"]["seq_len"])
    _repro(repo)
    assert _lock_outs(repo) == first, "same inputs and params must give the same output hash"


def test_features_output_is_deterministic(repo):
    _repro(repo)
    before = _lock_outs(repo)
    _run(repo, str(DVC), "repro", "--no-run-cache", "--single-item", "--force", "features")  # rebuild from scratch
    assert _lock_outs(repo) == before
    # ... and independent of the chunking (chunk count is a memory knob, not a semantic one).
    _set_param(repo, "features", "chunk_events", 3000)
    assert _repro(repo)
    meta = json.loads((repo / "data/features/meta.json").read_text())
    assert meta["chunks"] > 1
    after = {f.name: f.read_bytes() for f in (repo / "data/features").iterdir() if f.name != "meta.json"}
    _set_param(repo, "features", "chunk_events", 4_000_000)
    _repro(repo)
    single = {f.name: f.read_bytes() for f in (repo / "data/features").iterdir() if f.name != "meta.json"}
    for name in ("train.parquet", "valid.parquet", "holdout.parquet", "arms.parquet"):
        assert pq.read_table(repo / "data/features" / name).equals(
            pq.read_table(__import__("io").BytesIO(after[name]))), name
    assert set(after) == set(single)


def test_validate_stage_keeps_its_outputs_and_declares_all_its_code():
    """A failed validation must not cost the last good batch: DVC deletes a stage's outputs before
    running it unless they persist (the step itself replaces them only on success). Every module of
    the step is a dependency, so a change to any of them re-runs validate."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["validate"]
    outs = {path: opts for out in stage["outs"] + stage["metrics"] for path, opts in out.items()}
    assert set(outs) == {"data/validated", "reports/validation.json"}
    assert all(opts.get("persist") is True for opts in outs.values()), outs
    code = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pipelines").glob("validate*.py")}
    assert code <= set(stage["deps"]), code - set(stage["deps"])
