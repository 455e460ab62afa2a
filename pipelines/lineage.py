"""Lineage of a scored row: one command from a scores manifest (or a campaign, a model version,
an MLflow run) back to the raw batch, every hop checked against the hash the previous hop recorded.

``trace(settings, ref)`` returns the chain as ordered hops::

    scores parts          sha256 of each part object vs the manifest's parts[].sha256 (+ rows)
    scores manifest       commit block, run id = v<version>-sha256(request)[:16] recomputed,
                          scoring features object sha256 vs inputs.features.sha256,
                          Airflow dag/run id and triggering user (context)
    model version         registry tags: mlflow_run_id, git_sha, dvc.<stage>.<path> md5s,
                          validation.run_id/result_uri, data.batch, family, gate.passed
    MLflow run            params, dataset.<file>.sha256 tags, evaluation/evaluation.json (gate verdict)
    code + dvc.lock       the run's git_sha; the run's artifact lineage/dvc.lock (if logged) whose
                          outs md5 are compared with the version's dvc.* tags (else the tags alone)
    DVC outs              data/validated, data/features, data/model: the md5 object in the DVC
                          remote (s3://<bucket>/dvc/files/md5/xx/...); a .dir object is re-hashed
                          and every listed file must exist; files the run or the scores manifest
                          cite by sha256 are downloaded and hashed both ways (md5 for DVC, sha256
                          for MLflow / the manifest): the link between the three hash schemes
    validation            validation/<batch>/<run>/result.json: run id, passed, md5 vs the DVC
                          md5 of reports/validation.json; GX Data Docs present
    raw batch             raw/<batch>/_manifest.json: ETag vs the one validation read, every file
                          listed exists, rows per table vs what validation counted in

Each hop: name, identifier, link (MLflow UI for versions/runs when the tracking URI is http, s3://
for objects, the Airflow UI for a dag run), facts, checks, and a status: ``verified`` (every check
matched), ``mismatch`` (a hash, size, row count or id differs: expected vs actual in the detail),
``missing`` (an object the chain points at is gone) or ``unverifiable`` (nothing to compare with,
e.g. a raw batch's parts carry no hash, a run without lineage/dvc.lock, a file over the download
budget). A hop's status is its worst check's.

Downloads are bounded by ``max_bytes`` (sum over the trace); what would exceed it is checked by
size only and reported unverifiable. ``lineage_render`` draws the chain as text (the CLI) and as one
self-contained HTML page, which scoring stores beside its manifest (scores/<campaign>/<run>/lineage.html).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import yaml

from campaignops.config import Settings
from campaignops.pipelines import layout, tracking

VERIFIED, MISMATCH, MISSING, UNVERIFIABLE = "verified", "mismatch", "missing", "unverifiable"
SEVERITY = {VERIFIED: 0, UNVERIFIABLE: 1, MISSING: 2, MISMATCH: 3}
DEFAULT_MAX_BYTES = 512 << 20
DVC_REMOTE_PREFIX = "dvc/"      # versioning.configure_remote: s3://<bucket>/dvc
DVC_LOCK_ARTIFACT = "lineage/dvc.lock"
TRAIN_STAGE = "train"           # its outs are locked after the run logged dvc.lock


class LineageError(ValueError):
    """The reference names nothing that can be traced."""


def worst(statuses) -> str:
    return max(statuses, key=SEVERITY.__getitem__, default=VERIFIED)


# --------------------------------------------------------------------------- hops

class Hop:
    def __init__(self, name: str, identifier: str, link: str | None = None):
        self.name, self.identifier, self.link = name, identifier, link
        self.links: list[dict] = []
        self.facts: dict = {}
        self.checks: list[dict] = []

    def check(self, what: str, status: str, detail: str = "", expected=None, actual=None) -> str:
        self.checks.append({"what": what, "status": status, "detail": detail,
                            "expected": expected, "actual": actual})
        return status

    def compare(self, what: str, expected, actual, scheme: str = "", missing_detail: str = "") -> str:
        if expected in (None, "", "None") or actual in (None, "", "None"):
            side = "recorded value" if expected in (None, "", "None") else "value to compare"
            return self.check(what, UNVERIFIABLE, missing_detail or f"no {side}", expected, actual)
        ok = str(expected) == str(actual)
        detail = f"{scheme + ' ' if scheme else ''}{'matches' if ok else 'differs'}"
        return self.check(what, VERIFIED if ok else MISMATCH, detail, expected, actual)

    def add_link(self, label: str, url: str | None) -> None:
        if url:
            self.links.append({"label": label, "url": url})
            self.link = self.link or url

    def to_dict(self) -> dict:
        status = worst(c["status"] for c in self.checks) if self.checks else UNVERIFIABLE
        bad = [c for c in self.checks if c["status"] != VERIFIED]
        detail = "; ".join(f"{c['what']}: {c['detail']}" + (
            f" (expected {c['expected']}, actual {c['actual']})" if c["status"] == MISMATCH else "") for c in bad)
        if not self.checks:
            detail = "nothing to check"
        elif not bad:
            detail = f"{len(self.checks)} check(s) verified"
        return {"name": self.name, "identifier": self.identifier, "link": self.link, "links": self.links,
                "status": status, "detail": detail, "facts": self.facts, "checks": self.checks}


# --------------------------------------------------------------------------- the tracer

class _Tracer:
    def __init__(self, settings: Settings, store, client, max_bytes: int):
        self.settings, self.store, self.client = settings, store, client
        self.budget = int(max_bytes)
        self.hops: list[Hop] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="lineage-")
        self.mlflow_ui = tracking.ui_url(settings)
        self.model_name = settings.params["train"]["model_name"]

    # ---- helpers
    def hop(self, name: str, identifier: str, link: str | None = None) -> Hop:
        h = Hop(name, identifier, link)
        self.hops.append(h)
        return h

    def fetch(self, key: str, size: int | None = None) -> tuple[str, bytes | None]:
        """("ok", bytes) | ("missing", None) | ("over_budget", None)."""
        if size is None:
            head = self.store.head_or_none(key)
            if head is None:
                return "missing", None
            size = int(head.get("ContentLength", 0))
        if size > self.budget:
            return "over_budget", None
        data = self.store.get_bytes_or_none(key)
        if data is None:
            return "missing", None
        self.budget -= len(data)
        return "ok", data

    def key_of(self, uri: str | None) -> str | None:
        if not uri:
            return None
        try:
            return self.store.key(uri)
        except ValueError:
            return None

    def run_link(self, run) -> str | None:
        return None if run is None else tracking.run_url(self.mlflow_ui, run.info.experiment_id, run.info.run_id)

    def version_link(self, name: str, version: str) -> str | None:
        return tracking.version_url(self.mlflow_ui, name, version)

    def artifact(self, run_id: str, path: str) -> bytes | None:
        try:
            local = self.client.download_artifacts(run_id, path, self._tmp.name)
        except Exception:   # MlflowException / OSError: the artifact does not exist
            return None
        p = Path(local)
        return p.read_bytes() if p.is_file() else None

    # ---- hops
    def scores_parts(self, manifest: dict) -> None:
        out = manifest.get("output") or {}
        h = self.hop("scores parts", out.get("prefix") or "?", out.get("prefix"))
        parts = manifest.get("parts")
        if parts is None:
            h.check("parts", UNVERIFIABLE, "manifest from before RunWriter: a single output file, no part hashes")
            return
        h.facts = {"parts": len(parts), "rows": manifest.get("rows"), "bytes": sum(p.get("bytes", 0) for p in parts)}
        for p in parts:
            key, what = p["key"], p["key"].rpartition("/")[2]
            head = self.store.head_or_none(key)
            if head is None:
                h.check(what, MISSING, f"{self.store.uri(key)} is listed in the manifest but missing")
                continue
            size = int(head.get("ContentLength", 0))
            if size != p.get("bytes", size):
                h.check(what, MISMATCH, "size differs from the manifest", p.get("bytes"), size)
                continue
            state, data = self.fetch(key, size)
            if state == "over_budget":
                h.check(what, UNVERIFIABLE, "size matches; sha256 not re-read (over the download budget)")
                continue
            if state == "missing":
                h.check(what, MISSING, f"{self.store.uri(key)} vanished while reading")
                continue
            sha = hashlib.sha256(data).hexdigest()
            same = sha == p["sha256"]
            h.check(f"{what} sha256", VERIFIED if same else MISMATCH,
                    f"sha256 {'matches' if same else 'differs from'} the manifest", p["sha256"], sha)
            if same:
                import pyarrow.parquet as pq

                h.compare(f"{what} rows", p.get("rows"), pq.ParquetFile(io.BytesIO(data)).metadata.num_rows, "rows")

    def scores_manifest(self, key: str, manifest: dict, via: str | None) -> None:
        uri = self.store.uri(key)
        h = self.hop("scores manifest", uri, uri)
        ctx = manifest.get("context") or {}
        commit = manifest.get("commit") or {}
        h.facts = {"campaign_id": manifest.get("campaign_id"), "score_run_id": manifest.get("score_run_id"),
                   "committed_at": commit.get("committed_at"), "scored_at": manifest.get("scored_at"),
                   "status": manifest.get("status"), "rows": manifest.get("rows"),
                   "users_targeted": manifest.get("users_targeted"),
                   "dag_id": ctx.get("dag_id"), "dag_run_id": ctx.get("dag_run_id"),
                   "triggered_by": ctx.get("triggered_by") or "not recorded",
                   "scoring_code_git_sha": (manifest.get("code") or {}).get("git_sha"),
                   "model": (manifest.get("model") or {}).get("uri"),
                   "raw_batch": (manifest.get("inputs") or {}).get("raw_batch"),
                   "validation_run_id": (manifest.get("inputs") or {}).get("validation_run_id")}
        if via:
            h.facts["resolved_from"] = via
        if ctx.get("dag_id") and ctx.get("dag_run_id"):
            h.add_link("Airflow dag run", f"{self.settings.airflow_url.rstrip('/')}/dags/{quote(ctx['dag_id'])}"
                                          f"/runs/{quote(str(ctx['dag_run_id']), safe='')}")
        h.compare("commit.manifest_key", key, commit.get("manifest_key"),
                  missing_detail="no commit block (manifest from before RunWriter)")
        req = dict(manifest.get("request") or {})
        req.pop("engine", None)
        version = str((manifest.get("model") or {}).get("version"))
        if req:
            expected = f"v{version}-" + hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()[:16]
            h.compare("run id = v<model version>-sha256(request)", expected, manifest.get("score_run_id"))
        feats = (manifest.get("inputs") or {}).get("features") or {}
        fkey = self.key_of(feats.get("uri"))
        if fkey:
            state, data = self.fetch(fkey)
            if state == "missing":
                h.check("scoring features", MISSING, f"{feats['uri']} is gone")
            elif state == "over_budget":
                h.check("scoring features", UNVERIFIABLE, f"{feats['uri']} exists; sha256 not re-read (over budget)")
            else:
                h.compare("scoring features sha256", feats.get("sha256"), hashlib.sha256(data).hexdigest(), "sha256")
            h.add_link("scoring features", feats.get("uri"))
        else:
            h.check("scoring features", UNVERIFIABLE, "the manifest names no scoring features object")

    def model_version(self, name: str, version: str, manifest: dict | None):
        h = self.hop("model version", f"models:/{name}/{version}", self.version_link(name, version))
        try:
            mv = self.client.get_model_version(name, version)
        except Exception as exc:
            h.check("registry", MISSING, f"{name} version {version} not found in the registry: {str(exc)[:200]}")
            return None
        tags = dict(mv.tags or {})
        aliases = list(getattr(mv, "aliases", None) or [])
        h.facts = {"run_id": mv.run_id, "source": mv.source, "status": mv.status, "aliases": aliases,
                   "created": _ms(mv.creation_timestamp), "tags": tags}
        h.check("registry", VERIFIED, "version exists")
        if manifest is not None:
            h.compare("run id (manifest model.run_id)", (manifest.get("model") or {}).get("run_id"), mv.run_id)
            h.compare("family (manifest model.family)", (manifest.get("model") or {}).get("family"),
                      tags.get("family", "network"))
        h.compare("tag mlflow_run_id", tags.get("mlflow_run_id"), mv.run_id,
                  missing_detail="no mlflow_run_id tag (not promoted by pipelines/promote.py)")
        events = self.promotion_events(name, str(version))
        if events:
            h.facts["promotion_log"] = events
        gate = tags.get("gate.passed")
        overrides = [e for e in events if e.get("action") == "override"]
        if gate is None:
            h.check("tag gate.passed", UNVERIFIABLE, "no gate.passed tag")
        elif gate == "True":
            h.check("tag gate.passed", VERIFIED, "promoted after passing the gate", "True", gate)
        elif overrides:
            h.check("tag gate.passed", VERIFIED, f"failed the gate; forced in by a recorded override "
                    f"({overrides[-1].get('actor')}: {overrides[-1].get('reason')})", "True or an override", gate)
        else:
            h.check("tag gate.passed", MISMATCH, "the gate failed and the promotion log holds no override for it",
                    "True", gate)
        if not any(k.startswith("dvc.") for k in tags):
            h.check("tags dvc.*", UNVERIFIABLE, "no dvc.* tags: the promoting workspace had no dvc.lock")
        return mv

    def promotion_events(self, name: str, version: str) -> list[dict]:
        """Records of the promotion log (pipelines/promote.py) that moved an alias to `version`."""
        prefix_of = getattr(layout, "promotion_log_prefix", None)
        if prefix_of is None:
            return []
        out = []
        try:
            for key in self.store.list_keys(prefix_of(name)):
                data = self.store.get_bytes_or_none(key)
                rec = json.loads(data) if data else {}
                if version in [str(v) for _, v in rec.get("moves") or []] or str(rec.get("to_version")) == version:
                    out.append({k: rec.get(k) for k in ("action", "alias", "from_version", "to_version", "actor",
                                                        "reason", "airflow")} | {"record": self.store.uri(key)})
        except Exception:   # the log is context, not a link of the chain
            return out
        return out

    def mlflow_run(self, run_id: str, mv) -> tuple:
        h = self.hop("MLflow run", run_id)
        try:
            run = self.client.get_run(run_id)
        except Exception as exc:
            h.check("run", MISSING, f"run {run_id} not found: {str(exc)[:200]}")
            return None, None
        h.link = self.run_link(run)
        if h.link:
            h.links.append({"label": "MLflow run", "url": h.link})
        tags, params = dict(run.data.tags), dict(run.data.params)
        h.facts = {"experiment_id": run.info.experiment_id, "status": run.info.status,
                   "start": _ms(run.info.start_time), "params": params,
                   "datasets": {k: v for k, v in tags.items() if k.startswith("dataset.")},
                   "git_sha": tags.get("git_sha"), "gate.passed": tags.get("gate.passed"),
                   "family.served": tags.get("family.served"),
                   "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith("holdout_")}}
        h.check("run", VERIFIED, "run exists")
        raw = self.artifact(run_id, "evaluation/evaluation.json")
        evaluation = None
        if raw is None:
            h.check("evaluation/evaluation.json", MISSING, "the run has no evaluation artifact (never evaluated?)")
        else:
            evaluation = json.loads(raw)
            h.facts["gate"] = {"passed": evaluation.get("passed"), "reasons": evaluation.get("reasons"),
                               "champion_version": evaluation.get("champion_version"),
                               "model_uri": evaluation.get("model_uri")}
            h.compare("evaluation run_id", run_id, evaluation.get("run_id"))
            passed = evaluation.get("passed")
            h.check("gate verdict", VERIFIED if passed else MISMATCH,
                    "the evaluation passed the gate" if passed else "the evaluation failed the gate", True, passed)
            h.compare("tag gate.passed vs evaluation", str(passed), tags.get("gate.passed"))
            if mv is not None:
                h.compare("version tag gate.passed vs evaluation", str(passed), (mv.tags or {}).get("gate.passed"))
                h.compare("version tag family vs evaluation", (evaluation.get("family") or {}).get("served", "network"),
                          (mv.tags or {}).get("family", "network"))
        if not h.facts["datasets"]:
            h.check("tags dataset.*", UNVERIFIABLE, "the run records no dataset sha256 tags")
        return run, evaluation

    def code_and_lock(self, run, mv) -> dict:
        """The run's git sha and dvc.lock; returns {"<stage>.<path>": md5} pinning the data (the
        run's lock if logged, else the version's dvc.* tags)."""
        vtags = dict(mv.tags or {}) if mv is not None else {}
        rtags = dict(run.data.tags) if run is not None else {}
        sha = rtags.get("git_sha") or vtags.get("git_sha")
        h = self.hop("code + dvc.lock", f"git {sha or 'unknown'}")
        h.facts = {"run_git_sha": rtags.get("git_sha"), "version_git_sha (at promote)": vtags.get("git_sha")}
        if not sha or sha == "unknown":
            h.check("git sha", UNVERIFIABLE, "no git sha recorded (the training workspace was not a git checkout)")
        else:
            clean = sha.removesuffix("-dirty")
            if sha.endswith("-dirty"):
                h.check("git sha", UNVERIFIABLE, "the working tree had uncommitted changes: the sha does not pin the code")
            found = _git_has(self.settings.workspace, clean)
            if found is None:
                h.check("commit in repository", UNVERIFIABLE, f"{self.settings.workspace} is not a git checkout")
            else:
                h.check("commit in repository", VERIFIED if found else MISSING,
                        "commit found" if found else f"commit {clean} is not in {self.settings.workspace}")
        tag_md5 = {k[len("dvc."):]: v for k, v in vtags.items() if k.startswith("dvc.")}
        lock = self.artifact(run.info.run_id, DVC_LOCK_ARTIFACT) if run is not None else None
        if lock is None:
            h.check(DVC_LOCK_ARTIFACT, UNVERIFIABLE,
                    "the run has no lineage/dvc.lock artifact: the data is pinned only by the version's dvc.* tags, "
                    "recorded at promote from the promoting workspace's dvc.lock")
            h.facts["pinned_by"] = "version tags dvc.*" if tag_md5 else "nothing"
            return tag_md5
        if self.mlflow_ui and run is not None:
            h.add_link("run dvc.lock", f"{self.run_link(run)}/artifacts/{DVC_LOCK_ARTIFACT}")
        lock_md5 = {}
        for stage, body in (yaml.safe_load(lock) or {}).get("stages", {}).items():
            for out in body.get("outs", []):
                lock_md5[f"{stage}.{out['path']}"] = out.get("md5", "")
        h.facts["pinned_by"] = "run artifact lineage/dvc.lock"
        h.facts["dvc.lock outs"] = lock_md5
        for k in sorted(set(lock_md5) | set(tag_md5)):
            a, b = lock_md5.get(k), tag_md5.get(k)
            if k.startswith(TRAIN_STAGE + "."):
                # The train stage's own outputs are locked after the run logged dvc.lock (its entry there
                # is the previous run's, if any): the version tag is the reference, and the model hop
                # re-hashes that object in the DVC remote. Nothing to compare, so no check.
                h.facts.setdefault("pinned by the version tag (the run's dvc.lock predates them)", {})[k] = b
            elif a is None or b is None:
                h.check(f"dvc.{k}", UNVERIFIABLE, "only in " + ("the version tags" if a is None else "the run's dvc.lock"),
                        a, b)
            else:
                h.compare(f"dvc.{k} (run dvc.lock vs version tag)", a, b, "md5")
        return {**tag_md5, **{k: v for k, v in lock_md5.items() if not k.startswith(TRAIN_STAGE + ".")}}

    def dvc_out(self, name: str, path: str, md5: str | None, sha256_links: dict[str, str], link_what: str) -> None:
        """One DVC output (a .dir or a file) in the remote; files of it named in `sha256_links`
        ({relpath: sha256}) are downloaded and hashed both ways."""
        h = self.hop(name, f"{path} md5 {md5}" if md5 else path)
        if not md5:
            h.check("dvc md5", UNVERIFIABLE, f"no md5 recorded for {path} (no dvc.* tag, no run dvc.lock)")
            return
        key = _dvc_key(md5)
        h.link = self.store.uri(key)
        state, data = self.fetch(key) if md5.endswith(".dir") else (None, None)
        if not md5.endswith(".dir"):
            head = self.store.head_or_none(key)
            if head is None:
                h.check("object in DVC remote", MISSING, f"{self.store.uri(key)} not in the remote (not pushed?)")
                return
            state, data = self.fetch(key, int(head.get("ContentLength", 0)))
            if state == "ok":
                h.compare("object md5", md5, hashlib.md5(data).hexdigest(), "md5")
            else:
                h.check("object in DVC remote", UNVERIFIABLE, "exists; not re-hashed (over the download budget)")
            return
        if state == "missing":
            h.check("directory manifest in DVC remote", MISSING, f"{self.store.uri(key)} not in the remote (not pushed?)")
            return
        if state == "over_budget":
            h.check("directory manifest in DVC remote", UNVERIFIABLE, "exists; not read (over the download budget)")
            return
        h.compare("directory manifest md5", md5.removesuffix(".dir"), hashlib.md5(data).hexdigest(), "md5")
        entries = json.loads(data)
        h.facts = {"files": {e["relpath"]: e.get("md5") for e in entries}}
        missing = []
        for e in entries:
            fkey = _dvc_key(e["md5"])
            head = self.store.head_or_none(fkey)
            if head is None:
                missing.append(e["relpath"])
                continue
            if e["relpath"] not in sha256_links:
                continue
            state, blob = self.fetch(fkey, int(head.get("ContentLength", 0)))
            if state != "ok":
                h.check(f"{e['relpath']} sha256 ({link_what})", UNVERIFIABLE, "not re-read (over the download budget)")
                continue
            if hashlib.md5(blob).hexdigest() != e["md5"]:
                h.check(f"{e['relpath']} md5", MISMATCH, "object content differs from its DVC md5",
                        e["md5"], hashlib.md5(blob).hexdigest())
                continue
            h.compare(f"{e['relpath']} sha256 ({link_what})", sha256_links[e["relpath"]],
                      hashlib.sha256(blob).hexdigest(), "md5 matches DVC; sha256")
        if missing:
            h.check("files in DVC remote", MISSING, f"{len(missing)} of {len(entries)} file object(s) missing: "
                    + ", ".join(missing[:5]))
        else:
            h.check("files in DVC remote", VERIFIED, f"all {len(entries)} file object(s) present")
        for rel in sorted(set(sha256_links) - {e["relpath"] for e in entries}):
            h.check(f"{rel} ({link_what})", MISMATCH, f"{rel} is cited by sha256 but not in the DVC directory")

    def validation(self, name: str, run_id: str | None, result_uri: str | None, report_md5: str | None) -> dict | None:
        h = self.hop(name, f"validation run {run_id}" if run_id else "validation run ?", result_uri)
        key = self.key_of(result_uri)
        if key is None:
            h.check("result.json", UNVERIFIABLE, "no validation result URI recorded")
            return None
        state, data = self.fetch(key)
        if state != "ok":
            h.check("result.json", MISSING if state == "missing" else UNVERIFIABLE,
                    f"{result_uri} {'is gone' if state == 'missing' else 'not read (over budget)'}")
            return None
        result = json.loads(data)
        h.facts = {k: result.get(k) for k in ("batch", "status", "rows_in", "rows_valid", "rows_quarantined",
                                              "rows_deduplicated", "gx_success", "finished_at", "raw_manifest_etag")}
        h.compare("run id", run_id, result.get("run_id"))
        h.check("passed", VERIFIED if result.get("passed") else MISMATCH,
                "the batch passed validation" if result.get("passed") else "the batch failed validation",
                True, result.get("passed"))
        if report_md5:   # reports/validation.json = the same JSON + "\n" (storage.write_json vs put_json)
            h.compare("md5 vs DVC reports/validation.json", report_md5, hashlib.md5(data + b"\n").hexdigest(), "md5")
        else:
            h.check("md5 vs DVC reports/validation.json", UNVERIFIABLE, "no dvc md5 recorded for reports/validation.json")
        docs = result.get("docs_uri")
        dkey = self.key_of(docs)
        if dkey:
            h.add_link("Data Docs", docs)
            listed = self.store.list_objects(dkey.rpartition("/")[0] + "/")
            if not any(o["Key"] == dkey for o in listed):
                h.check("Data Docs", MISSING, f"{docs} is gone")
            else:
                n = result.get("docs_files")
                h.check("Data Docs files", VERIFIED if n in (None, len(listed)) or len(listed) >= n else MISSING,
                        f"{len(listed)} file(s) under docs/" + (f", {n} uploaded" if n is not None else ""),
                        n, len(listed))
        else:
            h.check("Data Docs", UNVERIFIABLE, "no docs_uri in the result")
        return result

    def raw_batch(self, name: str, batch: str | None, validation: dict | None) -> None:
        if not batch:
            self.hop(name, "raw batch ?").check("batch", UNVERIFIABLE, "no raw batch recorded")
            return
        key = layout.raw_manifest_key(batch)
        h = self.hop(name, f"raw batch {batch}", self.store.uri(key))
        head = self.store.head_or_none(key)
        if head is None:
            h.check("_manifest.json", MISSING, f"{self.store.uri(key)} is gone")
            return
        etag = str(head.get("ETag", "")).strip('"')
        h.compare("manifest ETag (as validation read it)", (validation or {}).get("raw_manifest_etag"), etag, "ETag",
                  missing_detail="the validation result records no raw_manifest_etag")
        manifest = json.loads(self.store.get_bytes(key))
        snapshot = _ingest_snapshot(self.settings, batch, etag)
        h.facts = {"now": manifest.get("now"), "generator": manifest.get("generator"),
                   "tables": {t: {"files": len(e.get("files", [])), "rows": e.get("rows")}
                              for t, e in (manifest.get("tables") or {}).items()},
                   "part_hashes": "ETag/size from the local ingest snapshot" if snapshot else
                                  "none: the raw manifest lists files and rows, not hashes"}
        missing, compared, differ = [], 0, []
        for table, entry in (manifest.get("tables") or {}).items():
            seen = {o["key"]: o for o in ((snapshot or {}).get("tables", {}).get(table, {}).get("objects") or [])}
            for f in entry.get("files", []):
                fh = self.store.head_or_none(f)
                if fh is None:
                    missing.append(f)
                elif f in seen:
                    compared += 1
                    got = (str(fh.get("ETag", "")).strip('"'), int(fh.get("ContentLength", 0)))
                    if got != (seen[f]["etag"], seen[f]["size"]):
                        differ.append((f, (seen[f]["etag"], seen[f]["size"]), got))
            rows_in = (((validation or {}).get("tables") or {}).get(table) or {}).get("rows_in")
            if rows_in is not None:
                h.compare(f"{table} rows (manifest vs validation rows_in)", entry.get("rows"), rows_in)
        if missing:
            h.check("parts exist", MISSING, f"{len(missing)} listed part(s) missing: " + ", ".join(missing[:5]))
        else:
            h.check("parts exist", VERIFIED, "every listed part exists")
        for f, exp, got in differ:
            h.check(f"{f} ETag/size", MISMATCH, "differs from the ingest snapshot", exp, got)
        if snapshot is None:
            h.check("part hashes", UNVERIFIABLE, "the raw manifest records no part hashes; only existence and row "
                    "counts are checked (ingest's ETag snapshot is not stored with the run)")
        elif not differ:
            h.check("part ETag/size", VERIFIED, f"{compared} part(s) match the ingest snapshot (data/raw_manifest.json)")


# --------------------------------------------------------------------------- entry point

def trace(settings: Settings, ref: str, store=None, mlflow_client=None, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """The lineage chain of `ref`: a scores manifest URI (s3://…/manifest.json or …/latest.json), a
    campaign id (its scores/<cid>/latest.json), a model version ("3", "name/3", "models:/name/3")
    or an MLflow run id. Raises LineageError if `ref` resolves to nothing."""
    from campaignops.pipelines.storage import ObjectStore

    store = store or ObjectStore(settings)
    if mlflow_client is None:
        mlflow_client = tracking.configure(settings).MlflowClient()
    t = _Tracer(settings, store, mlflow_client, max_bytes)
    try:
        kind, manifest_key, manifest, via, version, run_id = _resolve(t, ref.strip())
        name = t.model_name
        if manifest is not None:
            t.scores_parts(manifest)
            t.scores_manifest(manifest_key, manifest, via)
            model = manifest.get("model") or {}
            name, version, run_id = model.get("name") or name, model.get("version"), model.get("run_id")
        else:
            if isinstance(version, tuple):
                name, version = version
        mv = t.model_version(name, str(version), manifest) if version is not None else None
        run_id = (mv.run_id if mv is not None else None) or run_id
        run, _ = t.mlflow_run(run_id, mv) if run_id else (None, None)
        pins = t.code_and_lock(run, mv)
        rtags = dict(run.data.tags) if run is not None else {}
        vtags = dict(mv.tags or {}) if mv is not None else {}
        datasets = {k[len("dataset."):-len(".sha256")]: v for k, v in rtags.items()
                    if k.startswith("dataset.") and k.endswith(".sha256")}
        train_validation = vtags.get("validation.run_id")
        inputs = (manifest or {}).get("inputs") or {}
        same_validation = bool(inputs) and inputs.get("validation_run_id") == train_validation
        t.dvc_out("validated data (DVC)", "data/validated", pins.get("validate.data/validated"),
                  inputs.get("validated_sha256") or {} if same_validation else {}, "scores manifest")
        t.dvc_out("features (DVC)", "data/features", pins.get("features.data/features"), datasets, "run tag")
        t.dvc_out("model files (DVC)", "data/model", pins.get("train.data/model"), {}, "")
        validation = t.validation("validation (training data)", train_validation, vtags.get("validation.result_uri"),
                                  pins.get("validate.reports/validation.json"))
        t.raw_batch("raw batch (training data)", vtags.get("data.batch") or (validation or {}).get("batch"), validation)
        if inputs and not same_validation:   # scored on another batch than the model was trained on
            v2 = t.validation("validation (scoring input)", inputs.get("validation_run_id"),
                              inputs.get("validation_result_uri"), None)
            t.raw_batch("raw batch (scoring input)", inputs.get("raw_batch") or (v2 or {}).get("batch"), v2)
        hops = [h.to_dict() for h in t.hops]
    finally:
        t._tmp.cleanup()
    counts = {s: sum(h["status"] == s for h in hops) for s in SEVERITY}
    return {"ref": ref, "kind": kind, "traced_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": worst(h["status"] for h in hops), "counts": counts, "hops": hops,
            "download_budget_left": t.budget}


def _resolve(t: _Tracer, ref: str):
    """(kind, manifest_key, manifest, via, version, run_id)."""
    store = t.store
    if ref.startswith("s3://"):
        key = store.key(ref)
        via = None
        if key.endswith("/" + "latest.json") or key.endswith("latest.json"):
            latest = store.get_bytes_or_none(key)
            if latest is None:
                raise LineageError(f"{ref} does not exist")
            via, key = ref, store.key(json.loads(latest)["manifest"])
        data = store.get_bytes_or_none(key)
        if data is None:
            raise LineageError(f"{store.uri(key)} does not exist")
        return "scores_manifest", key, json.loads(data), via, None, None
    m = re.fullmatch(r"(?:models:/)?(?:([^/@]+)/)?(\d+)", ref)
    if m:
        return "model_version", None, None, None, (m.group(1) or t.model_name, m.group(2)), None
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        try:
            run = t.client.get_run(ref)
        except Exception as exc:
            raise LineageError(f"no MLflow run {ref}: {str(exc)[:200]}") from None
        versions = t.client.search_model_versions(f"run_id='{ref}'")
        if versions:
            v = min(versions, key=lambda v: int(v.version))
            return "mlflow_run", None, None, None, (v.name, str(v.version)), run.info.run_id
        return "mlflow_run", None, None, None, None, run.info.run_id
    if re.fullmatch(r"[A-Za-z0-9_.-]+", ref):
        latest_key = f"scores/{ref}/latest.json"
        latest = store.get_bytes_or_none(latest_key)
        if latest is None:
            raise LineageError(f"campaign {ref!r} has no {store.uri(latest_key)} (no run targets anyone yet); "
                               "pass a manifest URI instead")
        key = store.key(json.loads(latest)["manifest"])
        data = store.get_bytes_or_none(key)
        if data is None:
            raise LineageError(f"{store.uri(latest_key)} points at {store.uri(key)}, which does not exist")
        return "campaign", key, json.loads(data), store.uri(latest_key), None, None
    raise LineageError(f"{ref!r} is not a scores manifest URI, a campaign id, a model version or an MLflow run id")


def _dvc_key(md5: str) -> str:
    return f"{DVC_REMOTE_PREFIX}files/md5/{md5[:2]}/{md5[2:]}"


def _git_has(workspace: Path, sha: str) -> bool | None:
    """Whether commit `sha` is in the git repository at `workspace` (None: not a git checkout)."""
    try:
        inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=workspace, capture_output=True,
                                text=True, timeout=10)
        if inside.returncode != 0:
            return None
        return subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=workspace, capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return None


def _ingest_snapshot(settings: Settings, batch: str, etag: str) -> dict | None:
    """The local ingest snapshot (data/raw_manifest.json) if it is of this very manifest."""
    path = settings.workspace / layout.RAW_MANIFEST
    try:
        snap = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return snap if snap.get("batch") == batch and snap.get("manifest_etag") == etag else None


def _ms(ts) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts / 1000, timezone.utc).isoformat(timespec="seconds")
