"""kill -9 at random points of scoring and promotion, then a clean rerun (the Airflow retry).

One world for the module: a moto S3 *server* (so child processes share it), a SQLite MLflow
registry whose artifacts live in that S3, a generated batch through ingest, validate, features,
train (one epoch; the T-learner baseline is served, so children never import TensorFlow), evaluate
and promote. An uninterrupted child run of each step is traced (pipelines/failpoints.py
CAMPAIGNOPS_FAILPOINT_TRACE) to list every kill point it passes; a seeded draw picks one occurrence
of each failpoint name plus random others (SEED; set CAMPAIGNOPS_KILL_SEED to explore others).

Each trial: run the step in a child process with CAMPAIGNOPS_FAILPOINT=<point> (SIGKILL there),
check what readers see, rerun without it, check again and compare with the uninterrupted run.
Children are forked from tests/faults/kill_runner.py, which imported the heavy modules once.

- score: no manifest without all its parts (every committed run reads back against its sha256s),
  latest.json never names a missing or partial run; the rerun's parts are byte-identical (sha256)
  to the uninterrupted run's, nothing but the manifest, its parts and lineage.html is left under
  the run, and latest.json moves as it did.
- promote: every alias points at a version whose MLmodel is in S3; after the rerun one version per
  candidate run, one record per event (status applied), the aliases as an uninterrupted promotion
  leaves them, the same answer and the same record and tags up to ids and times.

Prints the trial table (point, outcome). Marked slow: 15 min on 2 cores at load average 12 (world
~5 min, 14 score trials ~7, 8 promote trials ~3)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import land_features, project_settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SEED = int(os.environ.get("CAMPAIGNOPS_KILL_SEED", "17"))
SCORE_TRIALS, PROMOTE_TRIALS = 14, 8          # >= 20 kill points in all
USERS = 800
PROMOTE_MODEL = "kill_sweep_uplift"           # the promote trials' own registered model

SCORE_CHILD = r"""
import json, sys
from campaignops.config import load_settings
from campaignops.pipelines import score
m = score.run(load_settings(), budget=float(sys.argv[1]))
print(json.dumps({"run_id": m["score_run_id"], "manifest": m["output"]["manifest"], "reused": bool(m.get("reused"))}))
"""

PROMOTE_CHILD = r"""
import json
from campaignops.config import load_settings
from campaignops.pipelines import promote
print(json.dumps(promote.run(load_settings())))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    tmp = tmp_path_factory.mktemp("kill")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved, cwd = dict(os.environ), os.getcwd()
    try:
        os.chdir(tmp)
        os.environ.pop("CAMPAIGNOPS_FAILPOINT", None)
        os.environ.update({"CAMPAIGNOPS_S3_ENDPOINT": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                           "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "CAMPAIGNOPS_ACTOR": "kill-sweep"})
        built = _build(tmp)
        with _runner(built["settings"]) as runner:
            yield {**built, "runner": runner}
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


def _build(tmp: Path) -> dict:
    import mlflow

    from campaignops.pipelines import evaluate, promote, score, tracking, train
    from campaignops.pipelines.storage import ObjectStore

    ws, wp = tmp / "score_ws", tmp / "promote_ws"
    ws.mkdir()
    wp.mkdir()

    def score_params(p):
        p["train"].update(epochs=1, baselines=["tlearner_logreg"])
        p["evaluate"].update(min_auc=0.0, max_logloss=10.0, min_qini=-10.0, min_policy_value_fraction=-10.0,
                             qini_noise_draws=0, report=False, reference_uplift_models=[])
        p["evaluate"]["new_campaigns"]["campaigns"] = 0
        p["evaluate"].setdefault("family", {})["serve"] = "tlearner_logreg"
        p["score"].update(batch_rows=128, part_rows=200)      # several batches and parts: points to kill at

    settings = project_settings(ws, score_params)
    psettings = project_settings(wp, lambda p: p["train"].update(model_name=PROMOTE_MODEL))
    os.environ.update({"CAMPAIGNOPS_WORKSPACE": str(ws), "CAMPAIGNOPS_STATE": str(ws / ".state")})
    store = ObjectStore(settings)
    store.ensure_bucket()
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.MlflowClient().create_experiment(tracking.EXPERIMENT, artifact_location=f"s3://{store.bucket}/mlflow")

    land_features(settings, store, users=USERS)
    train.run(settings)
    evaluate.run(settings)
    assert promote.run(settings, store=store)["promoted"]
    old = score.run(settings, budget=settings.params["score"]["default_budget"] / 2, store=store)
    return {"tmp": tmp, "settings": settings, "psettings": psettings, "store": store, "old_run": old}


# --------------------------------------------------------------------------- children and points

def _env(settings, extra: dict | None = None) -> dict:
    env = settings.process_env()
    env.pop("CAMPAIGNOPS_FAILPOINT", None)
    env.pop("CAMPAIGNOPS_FAILPOINT_TRACE", None)
    env.update(extra or {})
    return env


@contextmanager
def _runner(settings):
    """tests/faults/kill_runner.py in its own process: each step runs in a child forked from it."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("kill_runner.py"))], env=_env(settings),
                            cwd=settings.workspace.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline()) == {"ready": True}
        yield proc
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _child(world, settings, code: str, *args: str, failpoint: str | None = None, trace: Path | None = None):
    """Run `code` (argv = args) in a fresh child process for `settings`' workspace, with the
    failpoint armed or traced; returns (returncode, stdout, stderr) like subprocess.run."""
    from campaignops.pipelines import failpoints

    extra = {}
    if failpoint:
        extra[failpoints.ENV] = failpoint
    if trace:
        extra[failpoints.TRACE_ENV] = str(trace)
    out, err = world["tmp"] / "child.out", world["tmp"] / "child.err"
    runner = world["runner"]
    runner.stdin.write(json.dumps({"code": code, "args": list(args), "env": _env(settings, extra),
                                   "stdout": str(out), "stderr": str(err)}) + "\n")
    runner.stdin.flush()
    rc = json.loads(runner.stdout.readline())["returncode"]
    return subprocess.CompletedProcess(args, rc, out.read_text(), err.read_text())


def _answer(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _draw(points: list[str], n: int, rng: random.Random) -> list[str]:
    """One random occurrence of each failpoint name, then random others: n points in run order."""
    by_name: dict[str, list[str]] = {}
    for p in points:
        by_name.setdefault(p.split(":")[0], []).append(p)
    chosen = {rng.choice(v) for v in by_name.values()}
    rest = [p for p in points if p not in chosen]
    chosen |= set(rng.sample(rest, max(0, min(n - len(chosen), len(rest)))))
    return [p for p in points if p in chosen]


def _print_table(title: str, rows: list[tuple[str, str]]) -> str:
    width = max(len(p) for p, _ in rows)
    text = "\n".join([f"{title} (seed {SEED})", f"{'point':<{width}}  outcome"]
                     + [f"{p:<{width}}  {o}" for p, o in rows])
    print("\n" + text)
    return text


# --------------------------------------------------------------------------- what readers see

def _score_reader_problems(store, campaign_prefix: str) -> list[str]:
    """What a reader of scores/<campaign>/ could trip over: a manifest whose parts are missing or
    differ, latest.json naming a missing or broken run."""
    from campaignops.pipelines.run_commit import committed_runs, read_run

    problems = []
    for m in committed_runs(store, campaign_prefix):
        try:
            read_run(store, m)
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            problems.append(f"committed run {m['commit']['run_id']} unreadable: {exc}")
    latest = store.get_bytes_or_none(campaign_prefix + "latest.json")
    if latest is not None:
        data = store.get_bytes_or_none(store.key(json.loads(latest)["manifest"]))
        if data is None:
            problems.append("latest.json names a missing manifest")
        else:
            try:
                read_run(store, json.loads(data))
            except Exception as exc:  # noqa: BLE001
                problems.append(f"latest.json names an unreadable run: {exc}")
    return problems


def _alias_problems(store, name: str) -> list[str]:
    """Aliases of `name` whose version's MLmodel is not in S3."""
    import mlflow

    from campaignops.pipelines import promote

    client = mlflow.MlflowClient()
    problems = []
    for alias, version in promote.registry_aliases(client, name).items():
        uri = client.get_model_version_download_uri(name, version)
        if not uri.startswith(f"s3://{store.bucket}/"):
            problems.append(f"{alias} -> v{version}: artifacts not in S3 ({uri})")
        elif not store.exists(store.key(uri.rstrip("/") + "/MLmodel")):
            problems.append(f"{alias} -> v{version}: {uri}/MLmodel missing")
    return problems


# --------------------------------------------------------------------------- scoring

def _parts(manifest: dict) -> list[tuple[str, str, int]]:
    return [(p["key"].rsplit("/", 1)[1], p["sha256"], p["rows"]) for p in manifest["parts"]]


STABLE = ("score_run_id", "rows", "status", "budget", "spent", "users_targeted", "users_targeted_by_model",
          "by_variant", "forecast", "model", "inputs", "exploration", "request", "arms")


def test_kill_9_anywhere_in_scoring_leaves_nothing_partial_and_the_rerun_writes_the_same_parts(world):
    from campaignops.pipelines import failpoints

    settings, store = world["settings"], world["store"]
    budget = str(settings.params["score"]["default_budget"])
    campaign_prefix = store.key(world["old_run"]["output"]["manifest"]).split("/", 2)[:2]
    campaign_prefix = "/".join(campaign_prefix) + "/"
    old_latest = store.get_bytes_or_none(campaign_prefix + "latest.json")   # the older run's, if it targeted
    trace = world["tmp"] / "score.trace"
    ref = _answer(_child(world, settings, SCORE_CHILD, budget, trace=trace))
    points = failpoints.points(trace.read_text().splitlines())
    run_prefix = store.key(ref["manifest"]).rpartition("/")[0] + "/"
    assert run_prefix.startswith(campaign_prefix), (run_prefix, campaign_prefix)
    reference = store.get_json(store.key(ref["manifest"]))
    ref_keys = {k.rsplit("/", 1)[1] for k in store.list_keys(run_prefix)}
    ref_latest = store.get_bytes_or_none(campaign_prefix + "latest.json")
    assert not ref["reused"] and len(reference["parts"]) >= 3 and "manifest.json" in ref_keys
    assert {"features_written", "drift_checked", "predict_batch", "predicted", "part_uploaded", "part_copied",
            "before_commit", "after_commit"} <= {p.split(":")[0] for p in points}, points

    def reset():   # the world before the request: only the older run, and latest.json as it left it
        store.delete_keys(store.list_keys(run_prefix))
        if old_latest is None:
            store.delete_keys([campaign_prefix + "latest.json"])
        else:
            store.put_bytes(campaign_prefix + "latest.json", old_latest)

    rows = []
    for point in _draw(points, SCORE_TRIALS, random.Random(SEED)):
        reset()
        problems = []
        killed = _child(world, settings, SCORE_CHILD, budget, failpoint=point)
        if killed.returncode != -signal.SIGKILL:
            problems.append(f"not killed (exit {killed.returncode}): {killed.stderr[-500:]}")
        problems += [f"after kill: {p}" for p in _score_reader_problems(store, campaign_prefix)]
        committed = store.exists(run_prefix + "manifest.json")
        rerun = _child(world, settings, SCORE_CHILD, budget)
        if rerun.returncode != 0:
            problems.append(f"rerun failed: {rerun.stderr[-1500:]}")
        else:
            out = _answer(rerun)
            manifest = store.get_json(store.key(out["manifest"]))
            problems += [f"after rerun: {p}" for p in _score_reader_problems(store, campaign_prefix)]
            if out["run_id"] != ref["run_id"] or out["reused"] is not committed:
                problems.append(f"rerun answered {out} (committed before: {committed})")
            if _parts(manifest) != _parts(reference):
                problems.append("parts differ from the uninterrupted run's")
            if {k: manifest.get(k) for k in STABLE} != {k: reference.get(k) for k in STABLE}:
                problems.append("manifest differs from the uninterrupted run's")
            keys = {k.rsplit("/", 1)[1] for k in store.list_keys(run_prefix)}
            if keys != ref_keys:
                problems.append(f"left under the run: {sorted(keys ^ ref_keys)}")
            latest = store.get_bytes_or_none(campaign_prefix + "latest.json")
            if (latest and json.loads(latest)["manifest"]) != (ref_latest and json.loads(ref_latest)["manifest"]):
                problems.append("latest.json does not name what the uninterrupted run left")
        rows.append((point, "ok: killed, nothing partial, rerun identical" if not problems else "; ".join(problems)))
    table = _print_table(f"score: {len(rows)} kill points of {len(points)}", rows)
    assert len(rows) >= min(SCORE_TRIALS, len(points))
    assert all(o.startswith("ok") for _, o in rows), table


# --------------------------------------------------------------------------- promotion

def _candidate(settings, champion_version: str | None) -> dict:
    """A trivial pyfunc logged to a new run (artifacts in S3) and reports/evaluation.json for it."""
    import mlflow

    from campaignops.pipelines import layout, tracking
    from campaignops.pipelines.storage import write_json

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    tracking.configure(settings)
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"])
    evaluation = {"run_id": run.info.run_id, "model_uri": f"runs:/{run.info.run_id}/model", "passed": True,
                  "reasons": [], "candidate": {"auc": 0.61}, "champion_version": champion_version,
                  "family": {"served": "network", "model_uri": f"runs:/{run.info.run_id}/model"}}
    write_json(settings.workspace / layout.REPORTS_DIR / "evaluation.json", evaluation)
    return evaluation


VOLATILE_RECORD = ("event_id", "recorded_at", "key", "mlflow_run_id", "model_uri", "from_version", "to_version",
                   "moves", "aliases_before", "evaluated_against")


def _promotion_state(store, name: str) -> dict:
    import mlflow

    from campaignops.pipelines import promote

    client = mlflow.MlflowClient()
    versions = {str(v.version): v for v in client.search_model_versions(f"name='{name}'")}
    return {"versions": versions, "aliases": promote.registry_aliases(client, name),
            "log": promote.read_log(store, name)}


def _promotion_shape(out: dict, record: dict, tags: dict) -> tuple:
    """What must equal between an uninterrupted and a killed-then-retried promotion."""
    return ({k: v for k, v in out.items() if k not in ("event", "champion_version", "previous_version", "resumed")},
            {k: v for k, v in record.items() if k not in VOLATILE_RECORD},
            {k: v for k, v in tags.items() if k != "mlflow_run_id"})


def _promote_once(world, point: str | None, trace: Path | None = None) -> tuple[dict, tuple, list[str]]:
    """Promote a new candidate over the current champion (killed at `point`, then rerun); returns
    the answer, its shape and the problems seen."""
    import mlflow

    from campaignops.pipelines import promote

    psettings, store = world["psettings"], world["store"]
    before = _promotion_state(store, PROMOTE_MODEL)
    champion = before["aliases"].get("champion")
    evaluation = _candidate(psettings, champion)
    problems = []
    if point:
        killed = _child(world, psettings, PROMOTE_CHILD, failpoint=point)
        if killed.returncode != -signal.SIGKILL:
            problems.append(f"not killed (exit {killed.returncode}): {killed.stderr[-500:]}")
        mid = _promotion_state(store, PROMOTE_MODEL)
        problems += [f"after kill: {p}" for p in _alias_problems(store, PROMOTE_MODEL)]
        if len(mid["log"]) - len(before["log"]) > 1:
            problems.append("after kill: more than one record")
    proc = _child(world, psettings, PROMOTE_CHILD, trace=trace)
    if proc.returncode != 0:
        return {}, (), problems + [f"rerun failed: {proc.stderr[-1500:]}"]
    out = _answer(proc)
    after = _promotion_state(store, PROMOTE_MODEL)
    problems += [f"after rerun: {p}" for p in _alias_problems(store, PROMOTE_MODEL)]
    mine = [v for v, mv in after["versions"].items() if mv.run_id == evaluation["run_id"]]
    new_records = after["log"][len(before["log"]):]
    if len(mine) != 1:
        problems.append(f"{len(mine)} versions registered from the candidate's run")
    if len(new_records) != 1:
        problems.append(f"{len(new_records)} records for one promotion")
    if problems:
        return out, (), problems
    version, record = mine[0], new_records[0]
    expected = {"champion": version, **({"previous": champion} if champion else {})}
    if after["aliases"] != expected:
        problems.append(f"aliases {after['aliases']}, expected {expected}")
    statuses = [r["status"] for r in promote.history(world["psettings"], store=store,
                                                      client=mlflow.MlflowClient())]
    if set(statuses) != {"applied"}:
        problems.append(f"history statuses {statuses}")
    if (out.get("promoted"), out.get("champion_version"), out.get("previous_version"), out.get("event")) != (
            True, version, champion, record["key"]):
        problems.append(f"answered {out}")
    if (record["to_version"], record["mlflow_run_id"]) != (version, evaluation["run_id"]):
        problems.append(f"record {record['key']} is not of v{version} from the candidate's run")
    return out, _promotion_shape(out, record, after["versions"][version].tags), problems


def test_kill_9_anywhere_in_promotion_leaves_one_version_one_record_and_no_alias_on_missing_artifacts(world):
    from campaignops.pipelines import failpoints

    first, _, problems = _promote_once(world, None)          # a champion to replace, so `previous` moves too
    assert first.get("promoted") and not problems, problems
    trace = world["tmp"] / "promote.trace"
    _, reference, problems = _promote_once(world, None, trace=trace)
    assert reference and not problems, problems
    points = failpoints.points(trace.read_text().splitlines())
    assert {"promote_registered", "promote_tagged", "promote_recorded", "promote_alias_moved"} == {
        p.split(":")[0] for p in points}, points
    assert "promote_alias_moved:2" in points

    rows = []
    for point in _draw(points, PROMOTE_TRIALS, random.Random(SEED + 1)):
        _, shape, problems = _promote_once(world, point)
        if not problems and shape != reference:
            problems.append(f"differs from the uninterrupted promotion: {shape} vs {reference}")
        rows.append((point, "ok: killed, aliases on readable versions, one version, one record" if not problems
                     else "; ".join(problems)))
    table = _print_table(f"promote: {len(rows)} kill points of {len(points)}", rows)
    assert len(rows) >= min(PROMOTE_TRIALS, len(points))
    assert all(o.startswith("ok") for _, o in rows), table
