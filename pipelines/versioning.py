"""Runs DVC for Airflow tasks and the CLI: points the S3 remote at the stack (with content
verification on every download), reproduces one stage and pushes its outputs, so every task leaves
its data versioned in S3; pulls outputs back, naming any file whose remote object is corrupted."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from campaignops.config import Settings

REMOTE = "store"            # the remote named in .dvc/config
REMOTE_PREFIX = "dvc"       # s3://<bucket>/dvc (pipelines/lineage.py DVC_REMOTE_PREFIX)
# dvc-data logs each downloaded object whose content does not hash to its name (remote `verify`)
_CORRUPTED = re.compile(r"corrupted cache file '([^']+)'")


class CorruptRemoteData(RuntimeError):
    """`dvc pull` downloaded objects whose content does not match their hash: the remote was altered."""


def _dvc(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = settings.process_env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    proc = subprocess.run([dvc, *args], cwd=settings.workspace, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {settings.workspace} "
                           f"(exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def remote_url(settings: Settings) -> str:
    return f"s3://{settings.bucket}/{REMOTE_PREFIX}"


def configure_remote(settings: Settings) -> None:
    """Machine-local remote settings (endpoint, bucket) go to .dvc/config.local, never to git. `verify`
    makes DVC re-hash every object it downloads: a pull of an object altered in S3 fails instead of
    putting wrong data in the workspace with `dvc status` clean (DVC trusts S3 remotes otherwise)."""
    _dvc(settings, "remote", "modify", "--local", REMOTE, "url", remote_url(settings))
    _dvc(settings, "remote", "modify", "--local", REMOTE, "endpointurl", settings.s3_endpoint)
    _dvc(settings, "remote", "modify", "--local", REMOTE, "verify", "true")


def repro(settings: Settings, stage: str, push: bool = True) -> dict:
    """`dvc repro --single-item <stage>` then `dvc push <stage>`. Returns what a person needs: whether
    the stage ran or was up to date, its outputs with their md5 and where they went, and the time."""
    import time

    import yaml

    from campaignops.pipelines.tasklog import phase

    configure_remote(settings)
    with phase(f"dvc stage {stage}") as facts:
        t0 = time.perf_counter()
        out = _dvc(settings, "repro", "--single-item", stage)
        ran = "Running stage" in out.stdout
        facts.update(ran=ran, seconds=round(time.perf_counter() - t0, 1))
        pushed = _dvc(settings, "push", stage).stdout.strip() if push else ""
        n_pushed = next((int(w) for line in pushed.splitlines() for w in line.split()[:1] if w.isdigit()), 0)
        lock = settings.workspace / "dvc.lock"
        outs = ((yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage, {}).get("outs", [])
                if lock.is_file() else [])
        facts.update(outputs={o["path"]: o.get("md5") for o in outs}, pushed_files=n_pushed)
    remote = f"s3://{settings.bucket}/dvc"
    return {"stage": stage, "ran": ran, "outputs": facts["outputs"], "pushed_files": n_pushed,
            "remote": remote if push else None}


def pull(settings: Settings, *targets: str) -> dict:
    """`dvc pull [targets]` with the remote's content verified. Raises CorruptRemoteData naming every
    workspace file whose remote object does not hash to its name, else RuntimeError with DVC's output."""
    configure_remote(settings)
    proc = _dvc(settings, "pull", "--verbose", *targets, check=False)
    if proc.returncode == 0:
        return {"targets": list(targets), "dvc": [line for line in proc.stdout.strip().splitlines()
                                                    if "DEBUG" not in line][-3:]}
    log = proc.stdout + proc.stderr
    corrupted = [_object_md5(p) for p in dict.fromkeys(_CORRUPTED.findall(log))]
    if not corrupted:
        raise RuntimeError(f"`dvc pull {' '.join(targets)}` failed in {settings.workspace} (exit {proc.returncode}):\n"
                           + "\n".join(line for line in log.splitlines() if "DEBUG" not in line)[-3000:])
    names = workspace_paths(settings.workspace, _cache_dir(settings))
    lines = [f"{names.get(md5, 'an object of ' + (' '.join(targets) or 'the workspace'))}: remote object "
             f"{remote_url(settings)}/files/md5/{md5[:2]}/{md5[2:]} does not hash to its name" for md5 in corrupted]
    raise CorruptRemoteData(
        f"`dvc pull {' '.join(targets)}` refused {len(lines)} corrupted object(s) from the DVC remote (altered after "
        f"it was pushed): " + "; ".join(lines) + ". Their data was not checked out. Restore each object: from a "
        "workspace holding the right data, delete the object from the remote and run `dvc push` there again.")


def _object_md5(cache_path: str) -> str:
    """`.../files/md5/ab/cdef…[.dir]` → `abcdef…[.dir]`."""
    p = Path(cache_path)
    return p.parent.name + p.name


def _cache_dir(settings: Settings) -> Path:
    out = _dvc(settings, "cache", "dir", check=False).stdout.strip().splitlines()
    return Path(out[-1]) if out else settings.workspace / ".dvc" / "cache"


def workspace_paths(workspace: Path, cache_dir: Path) -> dict[str, str]:
    """Every object md5 the workspace's dvc.lock (and top-level .dvc files) name → its workspace path
    (a directory's files through its `.dir` listing when that is in the cache)."""
    workspace = Path(workspace)
    outs: list[tuple[Path, dict]] = []          # (directory the out's path is relative to, out)
    lock = workspace / "dvc.lock"
    if lock.is_file():
        for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
            outs += [(Path("."), o) for o in stage.get("outs") or []]
    for dvcfile in workspace.glob("*.dvc"):    # the project's outputs are stages; top-level .dvc files too
        if dvcfile.is_file():
            outs += [(Path("."), o) for o in (yaml.safe_load(dvcfile.read_text()) or {}).get("outs") or []]
    names: dict[str, str] = {}
    for base, out in outs:
        md5 = out.get("md5")
        if not md5 or not out.get("path"):
            continue
        path = (base / out["path"]).as_posix()
        if not md5.endswith(".dir"):
            names[md5] = path
            continue
        names[md5] = f"{path} (its directory listing)"
        listing = Path(cache_dir) / "files" / "md5" / md5[:2] / md5[2:]
        if listing.is_file():
            for entry in json.loads(listing.read_text()):
                names[entry["md5"]] = f"{path}/{entry['relpath']}"
    return names
