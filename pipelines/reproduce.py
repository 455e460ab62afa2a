"""Reproduce a model version's features: its code (git), its data (the run's stored dvc.lock and the
DVC remote) in a temporary workspace, the features stage re-run there, the hashes compared.

``reproduce(settings, ref)`` for a registered version (``7``, ``models:/<name>/7``, ``<name>/7``,
``champion`` or ``models:/<name>@champion``):

1. the version's MLflow run → its ``git_sha`` tag, ``data.batch`` and the ``lineage/dvc.lock``
   artifact train logged (the lock as the run saw it: this run's validate and features entries);
2. ``git clone`` of the workspace's repository into a temp dir, checked out at that sha (a run
   trained from a dirty tree checks out its base commit; the code check below then names the files
   that differed), the stored dvc.lock put in place, the DVC remote configured as the stack's;
3. ``campaignops ingest --batch <batch>`` (raw batches are immutable, so this re-creates the raw
   manifest the run saw) and ``dvc pull`` of the validated data the lock names;
4. ``dvc repro --force --single-item features`` with the *checked-out* code: a ``campaignops`` shim
   first on PATH imports the package from the checkout (PYTHONPATH), not from this installation;
5. every features-stage dependency (code files, params, raw manifest, validated data) and output
   compared with the stored lock: the features directory's md5, and file by file through the two
   ``.dir`` listings (the recorded one from the remote, the rebuilt one from the temp cache).

Each check is ``matched``, ``mismatch`` or ``missing`` (nothing to compare with, e.g. a run that
logged no dvc.lock, a commit not in this repository). Training itself is not re-run: Keras on CPU
threads is not bit-for-bit deterministic, and the features are what the version's data lineage rests
on (the model's own bytes are verified by `campaignops lineage`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from campaignops.config import Settings
from campaignops.pipelines import layout, versioning
from campaignops.pipelines.lineage import DVC_LOCK_ARTIFACT   # what train logs with each run

MATCHED, MISMATCH, MISSING = "matched", "mismatch", "missing"
STAGE = "features"
SHIM = """#!{python}
import sys
sys.path.insert(0, {root!r})   # before the installed (editable) campaignops
from campaignops.cli import app
sys.exit(app())
"""


class ReproduceError(ValueError):
    """The reference names no model version (or none this registry knows)."""


def _check(name: str, recorded, reproduced, detail: str = "") -> dict:
    if recorded is None or reproduced is None:
        status = MISSING
    else:
        status = MATCHED if recorded == reproduced else MISMATCH
    return {"name": name, "recorded": recorded, "reproduced": reproduced, "status": status, "detail": detail}


def resolve_version(client, ref: str, model_name: str):
    """A model version from ``7``, ``<name>/7``, ``models:/<name>/7``, ``champion`` or ``models:/<name>@alias``."""
    m = re.fullmatch(r"(?:models:/)?(?:([^/@]+)/)?(\d+)", ref)
    try:
        if m:
            return client.get_model_version(m.group(1) or model_name, m.group(2))
        m = re.fullmatch(r"(?:models:/([^/@]+))?@?([A-Za-z][\w-]*)", ref)
        if m:
            return client.get_model_version_by_alias(m.group(1) or model_name, m.group(2))
    except Exception as exc:   # MLflow raises MlflowException / RestException for unknown names
        raise ReproduceError(f"no model version {ref!r} in the registry: {str(exc)[:200]}") from None
    raise ReproduceError(f"{ref!r} is not a model version (7, models:/<name>/7) or an alias (champion)")


def _run(cmd: list[str], cwd: Path, env: dict, what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def _lock_stage(lock: dict, stage: str) -> dict:
    return ((lock or {}).get("stages") or {}).get(stage) or {}


def _dir_listing(path: Path | None) -> dict[str, str] | None:
    if path is None or not path.is_file():
        return None
    return {e["relpath"]: e["md5"] for e in json.loads(path.read_text())}


def _shim(tmp: Path, checkout: Path) -> tuple[Path, Path]:
    """A PYTHONPATH root that maps the package names onto the checkout's directories (the
    checkout's pyproject package-dir), and a bin dir whose `campaignops` runs from it."""
    import tomllib

    pyproject = tomllib.loads((checkout / "pyproject.toml").read_text())
    mapping = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir") or {"campaignops": "campaignops"}
    root = tmp / "pythonpath"
    pkg = root / "campaignops"
    pkg.mkdir(parents=True)
    for entry in (checkout / mapping.get("campaignops", "campaignops")).iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, rel in mapping.items():
        if name.startswith("campaignops."):
            link = pkg / name.split(".", 1)[1]
            if not link.exists():
                link.symlink_to(checkout / rel)
    bindir = tmp / "bin"
    bindir.mkdir()
    script = bindir / "campaignops"
    script.write_text(SHIM.format(python=sys.executable, root=str(root)))
    script.chmod(0o755)
    return root, bindir


def reproduce(settings: Settings, ref: str, client=None, store=None, keep: bool = False, progress=None) -> dict:
    """Rebuild `ref`'s features from its recorded code and data; returns the checks (see module doc)."""
    say = progress or (lambda msg: None)
    if client is None:
        from campaignops.pipelines import tracking

        client = tracking.configure(settings).MlflowClient()
    model_name = settings.params["train"]["model_name"]
    mv = resolve_version(client, ref, model_name)
    tags = dict(mv.tags or {})
    run_id = tags.get("mlflow_run_id") or mv.run_id
    run = client.get_run(run_id)
    run_tags = dict(run.data.tags or {})
    git_sha = tags.get("git_sha") or run_tags.get("git_sha") or "unknown"
    batch = tags.get("data.batch") or run.data.params.get("data.batch")
    out = {"version": {"name": mv.name, "version": str(mv.version), "run_id": run_id, "git_sha": git_sha,
                       "batch": batch}, "checks": [], "workspace": None}
    checks = out["checks"]

    say(f"version {mv.name}/{mv.version}: run {run_id}, code {git_sha}, batch {batch}")
    lock_text = _download_lock(client, run_id)
    if lock_text is None:
        checks.append(_check("stored dvc.lock", None, None, f"run {run_id} logged no {DVC_LOCK_ARTIFACT}: "
                             "the data it trained on cannot be pinned"))
        return _finish(out)
    lock = yaml.safe_load(lock_text) or {}
    recorded = _lock_stage(lock, STAGE)
    if not recorded.get("outs"):
        checks.append(_check("stored dvc.lock", None, None, f"{DVC_LOCK_ARTIFACT} has no `{STAGE}` stage"))
        return _finish(out)
    features_out = layout.FEATURES_DIR.as_posix()
    tag_md5 = tags.get(f"dvc.{STAGE}.{features_out}")
    rec_md5 = next((o.get("md5") for o in recorded["outs"] if o.get("path") == features_out), None)
    if tag_md5:
        checks.append(_check("version tag vs stored lock", tag_md5, rec_md5,
                             f"dvc.{STAGE}.{features_out} tag (lock at promote time) vs the run's {DVC_LOCK_ARTIFACT}"))

    sha = git_sha.removesuffix("-dirty")
    if not re.fullmatch(r"[0-9a-f]{7,40}", sha):
        checks.append(_check("code", None, None, f"the run recorded no git commit ({git_sha!r})"))
        return _finish(out)

    tmp = Path(tempfile.mkdtemp(prefix="campaignops-reproduce-"))
    out["workspace"] = str(tmp)
    try:
        ws = tmp / "ws"
        try:
            _run(["git", "clone", "--quiet", "--no-checkout", str(settings.workspace), str(ws)], tmp, dict(os.environ),
                 "git clone of the workspace")
            _run(["git", "checkout", "--quiet", "--detach", sha], ws, dict(os.environ), f"git checkout {sha}")
        except RuntimeError as exc:
            checks.append(_check("code", None, None, f"commit {sha} is not in {settings.workspace}: {exc}"))
            return _finish(out)
        checks.append(_check("code", sha, _run(["git", "rev-parse", "HEAD"], ws, dict(os.environ), "git rev-parse")
                             .stdout.strip(), "checked out" + (" (the run's tree was dirty: its base commit; "
                                                               "see the code files below)" if git_sha.endswith("-dirty") else "")))
        (ws / "dvc.lock").write_text(lock_text)
        say(f"checked out {sha[:12]} into {ws}")

        wss = Settings(workspace=ws, state_dir=settings.state_dir, env=dict(settings.env))
        pyroot, bindir = _shim(tmp, ws)
        env = wss.process_env()
        env["PATH"] = f"{bindir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(pyroot)
        env["DVC_NO_ANALYTICS"] = "1"
        dvc = str(Path(sys.executable).with_name("dvc"))
        versioning.configure_remote(wss)   # the stack's remote, downloads verified

        if batch:
            say(f"re-landing raw batch {batch}'s manifest (ingest)")
            _run([str(bindir / "campaignops"), "ingest", "--batch", batch], ws, env, f"ingest of batch {batch}")
        validated = layout.VALIDATED_DIR.as_posix()
        say(f"pulling {validated} from the DVC remote")
        try:
            versioning.pull(wss, validated)
        except RuntimeError as exc:   # CorruptRemoteData names the file
            checks.append(_check(validated, _dep_md5(recorded, validated), None, f"pull failed: {str(exc)[-500:]}"))
            return _finish(out)

        say("rebuilding the features with the checked-out code (dvc repro --force features)")
        _run([dvc, "repro", "--force", "--single-item", "--no-run-cache", STAGE], ws, env, "dvc repro features")
        rebuilt = _lock_stage(yaml.safe_load((ws / "dvc.lock").read_text()), STAGE)
        _compare(checks, recorded, rebuilt, ws, store or _store(settings), features_out)
        return _finish(out)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
            out["workspace"] = None


def _dep_md5(stage: dict, path: str) -> str | None:
    return next((d.get("md5") for d in stage.get("deps") or [] if d.get("path") == path), None)


def _compare(checks: list, recorded: dict, rebuilt: dict, ws: Path, store, features_out: str) -> None:
    rec_deps = {d["path"]: d.get("md5") for d in recorded.get("deps") or []}
    new_deps = {d["path"]: d.get("md5") for d in rebuilt.get("deps") or []}
    for path in sorted(rec_deps.keys() | new_deps.keys()):
        kind = "data" if path.startswith("data/") else "code"
        checks.append(_check(f"{kind} {path}", rec_deps.get(path), new_deps.get(path), "features-stage dependency (md5)"))
    rec_params, new_params = recorded.get("params") or {}, rebuilt.get("params") or {}
    for file in sorted(rec_params.keys() | new_params.keys()):
        a, b = rec_params.get(file) or {}, new_params.get(file) or {}
        for key in sorted(a.keys() | b.keys()):
            checks.append(_check(f"params {key}", json.dumps(a.get(key), sort_keys=True) if key in a else None,
                                 json.dumps(b.get(key), sort_keys=True) if key in b else None, file))
    rec_md5 = next((o.get("md5") for o in recorded.get("outs") or [] if o.get("path") == features_out), None)
    new_md5 = next((o.get("md5") for o in rebuilt.get("outs") or [] if o.get("path") == features_out), None)
    checks.append(_check(f"output {features_out}", rec_md5, new_md5, "the rebuilt features directory (DVC md5)"))
    if rec_md5 and new_md5 and rec_md5.endswith(".dir") and new_md5.endswith(".dir"):
        new_list = _dir_listing(ws / ".dvc" / "cache" / "files" / "md5" / new_md5[:2] / new_md5[2:])
        from campaignops.pipelines.lineage import _dvc_key

        raw = store.get_bytes_or_none(_dvc_key(rec_md5))
        rec_list = {e["relpath"]: e["md5"] for e in json.loads(raw)} if raw else None
        if rec_list is None or new_list is None:
            checks.append(_check(f"files of {features_out}", None, None,
                                 "the recorded .dir listing is not in the DVC remote" if rec_list is None
                                 else "the rebuilt .dir listing is not in the temp cache"))
            return
        for rel in sorted(rec_list.keys() | new_list.keys()):
            checks.append(_check(f"file {features_out}/{rel}", rec_list.get(rel), new_list.get(rel), "md5"))


def _download_lock(client, run_id: str) -> str | None:
    with tempfile.TemporaryDirectory() as d:
        try:
            path = client.download_artifacts(run_id, DVC_LOCK_ARTIFACT, d)
        except Exception:   # MLflow: no such artifact
            return None
        return Path(path).read_text()


def _store(settings: Settings):
    from campaignops.pipelines.storage import ObjectStore

    return ObjectStore(settings)


def _finish(out: dict) -> dict:
    statuses = [c["status"] for c in out["checks"]]
    out["status"] = (MISMATCH if MISMATCH in statuses else MISSING if MISSING in statuses or not statuses else MATCHED)
    out["matched"] = statuses.count(MATCHED)
    return out


def render_text(result: dict) -> str:
    v = result["version"]
    mark = {MATCHED: "ok", MISMATCH: "MISMATCH", MISSING: "missing"}
    lines = [f"reproduce {v['name']}/{v['version']}  run {v['run_id']}  code {v['git_sha']}  batch {v['batch']}", ""]
    width = max([len(c["name"]) for c in result["checks"]] + [10])
    for c in result["checks"]:
        line = f"  {mark[c['status']]:<8} {c['name']:<{width}}"
        if c["status"] == MATCHED:
            line += f"  {c['recorded']}"
        else:
            line += f"  recorded {c['recorded']}  reproduced {c['reproduced']}"
        if c["detail"] and c["status"] != MATCHED:
            line += f"  ({c['detail']})"
        lines.append(line)
    n = len(result["checks"])
    lines += ["", f"{result['status']}: {result['matched']} of {n} checks matched"
              + (f"; workspace kept at {result['workspace']}" if result.get("workspace") else "")]
    return "\n".join(lines)
