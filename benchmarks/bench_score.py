"""Benchmark of batch scoring, S3 → S3 on the real SeaweedFS (issue 13 "Speed and memory").

    .venv/bin/python benchmarks/bench_score.py [--users 1250000] [--naive-users 250000]
        [--rss-users 125000] [--world-users 3000] [--budget-share 0.05] [--exploration 0.1] [--keep DIR]

What it measures, with a throwaway SeaweedFS (infra/stack.py, s3 only, free ports, temp state dir;
stopped at the end, also on error or SIGTERM):

- preparation (not timed against the goals): a small synthetic world in a temp workspace
  (synth → ingest → validate → features, against that S3), an untrained network built like
  pipelines/train.py builds it (build_model on the train split's input widths, profile_norm adapted;
  speed does not depend on the weights), the upcoming campaign's arms (3 treatments + control, control
  last) and its scoring frame, tiled to N users with new unique user ids into a scoring-features
  parquet in S3 (row groups of 50k users, zstd), as pipelines/score.py `scoring_features` writes it;
- streamed (the production path): score_engine.predict_stream over the S3 object with the pyarrow S3
  filesystem (one record batch at a time, user sequence encoded once, all arms by the arm head),
  exploration draws + targeting.assign (budget = the exploration slice's expected spend + budget-share
  of the users at the mean treatment cost), score.output_table parts written by RunWriter to S3, the
  forecast, and the manifest commit — what score.run does minus MLflow, the drift gate, feature building
  and the truth check (tiled users have no truth). Wall time and user × arm pairs per second;
- naive (the baseline): the same run with ArmScorer(naive=True) (the full network once per arm on the
  users with that arm's columns attached), on a subset of --naive-users and on half of it (to check
  that it scales linearly), extrapolated linearly to N users; ratio naive / streamed per pair;
- peak RSS: every run is its own child process (this script with --child, started through a small
  launcher process: Linux carries ru_maxrss over fork + exec, so a child of this large process would
  report at least its peak); ru_maxrss at the end of the streamed children at --rss-users (0.5M pairs)
  and at N users (5M pairs), and their ratio; the children also report their RSS high-water mark
  (VmHWM) after each stage, to show where memory grows.

Imports (TensorFlow) and model load (Keras load + the arm-head split and its probe check) are timed
separately and excluded from the wall times. The streamed run's time is broken down by stage
(wait for parquet batches from S3 — read ahead in a thread — encode_user, encode_arms, the network =
user part + arm head, exploration draws, assign, output_table, parquet serialization, upload, forecast,
commit), with the process's CPU seconds in the timed
section and the load average around it (on a shared machine wall times vary ±20%).
Goals: streamed ≤ 60 s at 5M pairs on 2 cores, ≥ 4× faster than naive per pair, peak RSS ratio
5M / 0.5M pairs ≤ 1.5.
"""
from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --------------------------------------------------------------------------- child: one scoring run

def _rss_mb() -> tuple[float, float]:
    """(current RSS, high-water mark) of this process in MB, from /proc/self/status."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) / 1024
    return out.get("VmRSS", 0.0), out.get("VmHWM", 0.0)


class Timers:
    """Accumulated seconds per name, by wrapping module functions (cheap: one call per batch)."""

    def __init__(self):
        self.s: dict[str, float] = {}
        self.n: dict[str, int] = {}

    def wrap(self, module, attr: str, name: str | None = None):
        fn = getattr(module, attr)
        key = name or attr

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.s[key] = self.s.get(key, 0.0) + time.perf_counter() - t
                self.n[key] = self.n.get(key, 0) + 1

        setattr(module, attr, timed)
        return fn

    def add(self, key: str, seconds: float) -> None:
        self.s[key] = self.s.get(key, 0.0) + seconds


def child(spec_path: str) -> dict:
    """One scoring run (streamed or naive) as described by the spec file; prints one JSON line."""
    spec = json.loads(Path(spec_path).read_text())
    import keras
    import numpy as np
    import tensorflow  # noqa: F401

    from campaignops.config import load_settings
    from campaignops.models import inputs as inputs_mod
    from campaignops.models import split as split_mod
    from campaignops.models import uplift_net
    from campaignops.pipelines import layout, run_commit, score, score_engine, targeting
    from campaignops.pipelines.forecast import campaign_forecast
    from campaignops.pipelines.run_commit import RunWriter
    from campaignops.pipelines.storage import ObjectStore
    import_s = time.perf_counter() - T_START   # interpreter start, this script's imports, TensorFlow, project

    t = time.perf_counter()
    meta = json.loads(Path(spec["meta"]).read_text())
    arms = json.loads(Path(spec["arms"]).read_text())
    model = keras.saving.load_model(spec["model"], compile=False)
    scorer = score_engine.ArmScorer(model, meta, arms, naive=spec["mode"] == "naive")
    if spec["mode"] == "streamed" and scorer.split is None:
        raise SystemExit("the arm-head split failed: the streamed run would be the naive one")
    load_s = time.perf_counter() - t
    rss = {"after_load": _rss_mb()}

    tm = Timers()
    # Stage timers: the scorer calls these through their modules, so wrapping the module attributes
    # times them without touching the engine (one call per batch: no measurable overhead).
    if spec["mode"] == "streamed":
        tm.wrap(inputs_mod, "encode_user")
        tm.wrap(inputs_mod, "encode_arms")
        tm.wrap(split_mod, "_call", "network (user part + arm head, one graph)")
    else:
        tm.wrap(inputs_mod, "encode", "encode (user + arm rows, per arm)")
        tm.wrap(uplift_net, "predict", "full network (model.predict per arm)")
    tm.wrap(run_commit, "part_bytes", "parquet serialization (part_bytes)")
    predict_fn = scorer.predict

    def timed_predict(batch):
        t0 = time.perf_counter()
        try:
            return predict_fn(batch)
        finally:
            tm.add("scorer.predict", time.perf_counter() - t0)

    scorer.predict = timed_predict

    settings = load_settings()
    params = settings.params["score"]
    vpr = float(params["value_per_response"])
    store = ObjectStore(settings)
    fs = score_engine.s3_filesystem(endpoint=settings.s3_endpoint)
    arm_ids = [a["variant_id"] for a in arms]
    costs = np.array([a["cost_per_send"] for a in arms], dtype=np.float64)
    run_id = spec["run_id"]
    prefix = layout.scores_prefix(spec["campaign_id"], run_id)

    load_before = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    preds = score_engine.predict_stream(scorer, spec["source"], fs, batch_rows=int(params.get("batch_rows", 16384)))
    t_pred = time.perf_counter()
    rss["after_predict"] = _rss_mb()
    explored, explore_arm = targeting.exploration_draws(preds.user_ids.to_numpy(zero_copy_only=False),
                                                        spec["share"], len(arm_ids), 0, spec["campaign_id"])
    t_draw = time.perf_counter()
    a = targeting.assign(preds.p, costs[:-1], vpr, spec["budget"], explored, explore_arm, spec["share"])
    t_assign = time.perf_counter()
    rss["after_assign"] = _rss_mb()
    writer = RunWriter(store, prefix, run_id, cleanup_grace_s=float(params.get("orphan_grace_s", 3600)), latest=False)
    rows = int(params.get("part_rows", 250_000))
    meta_cols = {"model_name": "bench", "model_version": "0", "score_run_id": run_id}
    out_s = write_s = 0.0
    parts = []
    for s in range(0, len(preds.p), rows):
        t = time.perf_counter()
        table = score.output_table(preds, a, arm_ids, costs, spec["campaign_id"], meta_cols, vpr, slice(s, s + rows))
        out_s += time.perf_counter() - t
        t = time.perf_counter()
        parts.append(writer.write_part(table))
        write_s += time.perf_counter() - t
        del table
    t_parts = time.perf_counter()
    rss["after_parts"] = _rss_mb()
    forecast = campaign_forecast(preds.p, preds.revenue, a.chosen, arm_ids, costs, vpr)
    t_fc = time.perf_counter()
    manifest = {"campaign_id": spec["campaign_id"], "score_run_id": run_id, "rows": len(preds.p),
                "budget": spec["budget"], "spent": float(costs[a.chosen].sum()),
                "users_targeted": int(a.send.sum()), "users_targeted_by_model": int((a.send & ~a.explored).sum()),
                "exploration": {"share": spec["share"], "users": int(a.explored.sum())},
                "by_variant": {x: int((a.chosen == i).sum()) for i, x in enumerate(arm_ids[:-1])},
                "forecast": forecast, "inputs": {"features": {"uri": spec["source"]}}}
    writer.latest = bool((a.send & ~a.explored).any())
    committed, won = writer.commit(manifest)
    t_end = time.perf_counter()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    rss["end"] = _rss_mb()
    wall = t_end - t0
    if spec.get("save_p"):
        np.save(spec["save_p"], preds.p)
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    in_predict = tm.s.pop("scorer.predict", 0.0)
    serialize = tm.s.pop("parquet serialization (part_bytes)", 0.0)
    # predict_stream reads the next batch in a thread while this one is scored: what is left of the
    # read is the wait for it (and the batch loop).
    stages = {"waiting for parquet batches from S3": (t_pred - t0) - in_predict, **tm.s,
              "rest of scorer.predict (glue, casts)": in_predict - sum(tm.s.values()),
              "exploration_draws": t_draw - t_pred, "assign": t_assign - t_draw, "output_table": out_s,
              "parquet serialization (part_bytes)": serialize, "upload of parts": write_s - serialize,
              "forecast": t_fc - t_parts, "commit (copies + manifest + cleanup)": t_end - t_fc}
    return {"mode": spec["mode"], "users": len(preds.p), "arms": len(arms), "pairs": len(preds.p) * len(arms),
            "wall_s": wall, "predict_s": t_pred - t0, "import_s": import_s, "load_s": load_s,
            "stages_s": stages, "calls": tm.n, "rss_mb": rss, "maxrss_mb": maxrss_mb,
            "hwm_mb": _rss_mb()[1], "parts": len(committed["parts"]), "won": won,
            "users_targeted": manifest["users_targeted"],
            "users_targeted_by_model": manifest["users_targeted_by_model"], "spent": manifest["spent"],
            "budget": spec["budget"], "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
            "load": (load_before, os.getloadavg()[0])}


# --------------------------------------------------------------------------- parent: stack, world, runs

def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def sandbox_settings(tmp: Path):
    """Settings of a throwaway workspace in tmp with the stack's state there and free ports, like
    the e2e test's SeaweedFS fixture (this process's environment is changed: the caller restores it)."""
    from campaignops.infra.sandbox import PORTS, free_port

    ws = tmp / "ws"
    ws.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", ws / "params.yaml")
    os.environ.update({"CAMPAIGNOPS_WORKSPACE": str(ws), "CAMPAIGNOPS_STATE": str(tmp / "state")})
    os.environ.update({f"CAMPAIGNOPS_{n.upper()}_PORT": str(free_port()) for n in PORTS})
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CAMPAIGNOPS_S3_ENDPOINT", "CAMPAIGNOPS_BUCKET",
              "MLFLOW_TRACKING_URI"):
        os.environ.pop(k, None)
    from campaignops.config import load_settings

    return load_settings()


def prepare_world(settings, tmp: Path, world_users: int) -> dict:
    """Synthetic world → features → untrained network + scoring frame + arms (files under tmp)."""
    import numpy as np
    import pyarrow.parquet as pq

    from campaignops.pipelines import features, ingest, layout, scoring_frames, synth, validate
    from campaignops.pipelines.storage import ObjectStore
    from campaignops.validation.contract import CONTROL

    store = ObjectStore(settings)
    timings = {}
    t = time.perf_counter()
    synth.generate(settings, users=world_users, store=store, progress=False)
    ingest.ingest(settings, store=store)
    validate.run(settings, store=store)
    features.build(settings, store=store)
    timings["world_s"] = time.perf_counter() - t

    from campaignops.models.inputs import arm_target_vocabulary
    from campaignops.models.uplift_net import build_model
    from campaignops.pipelines.train import seed_everything, training_arrays

    t = time.perf_counter()
    ws = settings.workspace
    fdir = ws / layout.FEATURES_DIR
    params = settings.params["train"]
    meta = json.loads((fdir / "meta.json").read_text())
    meta["arm_targets"] = arm_target_vocabulary(pq.read_table(fdir / "arms.parquet"))
    seed_everything(int(params["seed"]))
    x_train, _, rev_train, _ = training_arrays(settings, "train", meta)          # as pipelines/train.py
    meta["revenue_scale"] = float(rev_train[rev_train > 0].mean()) if (rev_train > 0).any() else 1.0
    model = build_model(meta, params, x_train["profile"].shape[1], x_train["variant"].shape[1])
    model.get_layer("profile_norm").adapt(x_train["profile"])
    model.save(tmp / "model.keras")
    (tmp / "meta.json").write_text(json.dumps(meta))

    raw = json.loads((ws / layout.RAW_MANIFEST).read_text())
    campaign_id = raw["upcoming_campaign_id"]
    con = scoring_frames.connect(ws / layout.VALIDATED_DIR)
    arms = [x for x in scoring_frames.campaign_arms(con).to_pylist() if x["campaign_id"] == campaign_id]
    arms = sorted(arms, key=lambda x: (x["variant_id"] == CONTROL, x["variant_id"]))   # as score_request.check_request
    (tmp / "arms.json").write_text(json.dumps(arms, default=float))
    frame = scoring_frames.campaign_scoring_frame(con, campaign_id, meta)[0]
    timings["model_frame_s"] = time.perf_counter() - t
    n_params = int(sum(np.prod(w.shape) for w in model.weights))
    return {"campaign_id": campaign_id, "arms": arms, "frame": frame, "timings": timings, "n_params": n_params,
            "world_users": world_users}


def tile(frame, start: int, stop: int, rng, wide: set[str]):
    """Rows start..stop-1 of the world's scoring frame repeated, with new unique user ids, made
    distinct so the file compresses like real users' (exact copies compress ~13x better): each
    row's real steps in a random order (the same order for every sequence channel; left padding
    kept), and the columns in `wide` (mostly distinct values in the world: the continuous ones)
    times 1 + 1% noise; low-cardinality columns (counts, buckets, one-hots) are left as they are."""
    import numpy as np
    import pyarrow as pa

    n = frame.num_rows
    idx = np.arange(start, stop)
    chunk = frame.take(pa.array(idx % n))
    m = chunk.num_rows
    schema = chunk.schema
    ids = pa.array([f"u{i + 1:09d}" for i in idx], pa.string())
    chunk = chunk.set_column(schema.get_field_index("user_id"), schema.field("user_id"), ids)
    seq_cols = [f.name for f in schema if pa.types.is_fixed_size_list(f.type)]
    if seq_cols:
        size = schema.field(seq_cols[0]).type.list_size
        arrays = {c: chunk.column(c).combine_chunks().flatten().to_numpy().reshape(m, size) for c in seq_cols}
        keys = rng.random((m, size))
        keys[arrays["seq_tokens"] == 0] = -1.0
        order = np.argsort(keys, axis=1)
        for c in seq_cols:
            f = schema.field(c)
            values = pa.array(np.take_along_axis(arrays[c], order, 1).ravel(), f.type.value_type)
            chunk = chunk.set_column(schema.get_field_index(c), f, pa.FixedSizeListArray.from_arrays(values, size))
    for name in wide:
        f = schema.field(name)
        v = chunk.column(name).to_numpy()
        noisy = pa.array(v * (1 + 0.01 * rng.standard_normal(m)), f.type)
        chunk = chunk.set_column(schema.get_field_index(name), f, noisy)
    return chunk


def write_features(settings, frame, users: int, key: str, group: int = 50_000) -> tuple[float, float]:
    """The world's scoring frame tiled to `users` rows (tile) written to s3://<bucket>/<key> in
    row groups of `group` users, zstd. Returns (seconds, compressed bytes per user)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from campaignops.pipelines.score_engine import s3_filesystem

    t = time.perf_counter()
    fs = s3_filesystem(endpoint=settings.s3_endpoint)
    rng = np.random.default_rng(users)
    wide = {f.name for f in frame.schema if pa.types.is_floating(f.type)
            and len(np.unique(frame.column(f.name).to_numpy())) > frame.num_rows // 2}
    path = f"{settings.bucket}/{key}"
    with pq.ParquetWriter(path, frame.schema, compression="zstd", filesystem=fs) as w:
        for s in range(0, users, group):
            w.write_table(tile(frame, s, min(s + group, users), rng, wide), row_group_size=group)
    return time.perf_counter() - t, fs.get_file_info(path).size / users


def world_bytes_per_user(frame) -> float:
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(frame, buf, compression="zstd")
    return len(buf.getvalue()) / frame.num_rows


# Linux carries ru_maxrss across fork + exec: a child started by this (large: TensorFlow, the world)
# process would report at least this process's peak. A small launcher process in between starts
# the child from a ~10 MB process instead, so the child's ru_maxrss is its own.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def run_child(tmp: Path, settings, spec: dict) -> dict:
    path = tmp / f"spec-{spec['run_id']}.json"
    path.write_text(json.dumps(spec))
    env = settings.process_env()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, sys.executable, __file__, "--child", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate()
    except BaseException:   # interrupted (SIGTERM, Ctrl-C): stop the launcher and its child, the group started here
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode:
        sys.stderr.write(err[-5000:])
        raise SystemExit(f"child {spec['run_id']} failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_250_000, help="users scored by the streamed run (×4 arms = pairs)")
    ap.add_argument("--naive-users", type=int, default=250_000,
                    help="subset the naive baseline is timed on (and on half of it), extrapolated linearly")
    ap.add_argument("--rss-users", type=int, default=125_000, help="small streamed run for the peak-RSS ratio")
    ap.add_argument("--world-users", type=int, default=3000, help="users of the synthetic world that is tiled")
    ap.add_argument("--budget-share", type=float, default=0.05,
                    help="budget beyond the exploration slice: this share of the users at the mean treatment cost")
    ap.add_argument("--exploration", type=float, default=0.1, help="exploration share")
    ap.add_argument("--keep", type=Path, default=None, help="work directory, kept (default: a temp dir, removed)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return

    import numpy as np

    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        raise SystemExit(f"--keep {args.keep}: give a new or empty directory")
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench-score-"))
    tmp.mkdir(parents=True, exist_ok=True)
    from campaignops.config import apply_env
    from campaignops.infra import stack

    saved = dict(os.environ)
    settings = None
    try:
        settings = sandbox_settings(tmp)
        t = time.perf_counter()
        stack.up(settings, services=("s3",))
        apply_env(settings)   # AWS_* for pyarrow's S3 filesystem (the environment is restored at the end)
        print(f"SeaweedFS up at {settings.s3_endpoint} in {time.perf_counter() - t:.1f} s", flush=True)
        world = prepare_world(settings, tmp, args.world_users)
        arms = world["arms"]
        n_arms = len(arms)
        print(f"world of {args.world_users} users (synth → ingest → validate → features) in "
              f"{world['timings']['world_s']:.1f} s; "
              f"untrained network ({world['n_params']:,} weights) + scoring frame in "
              f"{world['timings']['model_frame_s']:.1f} s; campaign {world['campaign_id']}, arms "
              f"{[a['variant_id'] for a in arms]}", flush=True)
        if n_arms != 4:
            print(f"WARNING: the campaign has {n_arms} arms, not 4 (3 variants + control)", flush=True)
        half = args.naive_users // 2
        sizes = sorted({args.users, args.naive_users, half, args.rss_users})
        sources = {}
        for n in sizes:
            key = f"scoring_features/{world['campaign_id']}/bench-{n}.parquet"
            s, per_user = write_features(settings, world["frame"], n, key)
            sources[n] = f"s3://{settings.bucket}/{key}"
            print(f"features of {n:,} users tiled into {sources[n]} in {s:.1f} s ({per_user:.0f} bytes/user; "
                  f"the world's own frame: {world_bytes_per_user(world['frame']):.0f})", flush=True)
        del world["frame"]
        treat_cost = float(np.mean([a["cost_per_send"] for a in arms[:-1]]))
        all_cost = float(np.mean([a["cost_per_send"] for a in arms]))

        def spec(mode: str, n: int, save: bool = False) -> dict:
            budget = args.exploration * n * all_cost + args.budget_share * n * treat_cost
            run_id = f"{mode}-{n}"
            return {"mode": mode, "source": sources[n], "campaign_id": world["campaign_id"], "run_id": run_id,
                    "model": str(tmp / "model.keras"), "meta": str(tmp / "meta.json"), "arms": str(tmp / "arms.json"),
                    "budget": budget, "share": args.exploration,
                    "save_p": str(tmp / f"p-{run_id}.npy") if save else None}

        res = {}
        for name, mode, n in (("streamed", "streamed", args.users), ("streamed_small", "streamed", args.rss_users),
                              ("naive", "naive", args.naive_users), ("naive_half", "naive", half)):
            r = run_child(tmp, settings, spec(mode, n, save=n == half))
            res[name] = r
            st = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items())
            print(f"{name:14s} {mode:8s} users={r['users']:>9,} pairs={r['pairs']:>10,} wall={r['wall_s']:7.1f}s "
                  f"pairs/s={r['pairs'] / r['wall_s']:>10,.0f} cpu={r['cpu_s']:.0f}s "
                  f"loadavg={r['load'][0]:.1f}-{r['load'][1]:.1f} import={r['import_s']:.1f}s "
                  f"model load={r['load_s']:.1f}s peak_rss={r['maxrss_mb']:.0f} MB (VmHWM {r['hwm_mb']:.0f}) "
                  f"targeted={r['users_targeted']:,} (model {r['users_targeted_by_model']:,}) "
                  f"spent={r['spent']:.0f}/{r['budget']:.0f}", flush=True)
            print(f"{'':14s} stages s: {st}", flush=True)
            print(f"{'':14s} RSS (now/high-water MB) " + ", ".join(
                f"{k} {v[0]:.0f}/{v[1]:.0f}" for k, v in r["rss_mb"].items()), flush=True)
        same = None   # streamed vs naive predictions on the same users (both runs saved them)
        if (tmp / f"p-streamed-{half}.npy").exists():
            same = float(np.abs(np.load(tmp / f"p-streamed-{half}.npy") - np.load(tmp / f"p-naive-{half}.npy")).max())
    finally:
        try:
            if settings is not None:   # stops exactly the process group stack.up recorded (if any)
                print(f"stopped {stack.down(settings, services=('s3',))}", flush=True)
        finally:
            os.environ.clear()
            os.environ.update(saved)
            signal.signal(signal.SIGTERM, previous)
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    report(args, res, same)


def report(args, res: dict, same) -> None:
    s, small, nv, nh = res["streamed"], res["streamed_small"], res["naive"], res["naive_half"]
    per_pair_naive = nv["wall_s"] / nv["pairs"]
    extrapolated = nv["pairs"] != s["pairs"]
    naive_s = per_pair_naive * s["pairs"]
    lin = (nv["wall_s"] / nv["pairs"]) / (nh["wall_s"] / nh["pairs"])
    ratio = per_pair_naive / (s["wall_s"] / s["pairs"])
    rss_ratio = s["maxrss_mb"] / small["maxrss_mb"]
    at_5m = s["wall_s"] * 5_000_000 / s["pairs"]
    print()
    print(f"cores={os.cpu_count()}, load average at the end {os.getloadavg()[0]:.1f}; per child process, not in "
          f"the wall times: imports (TensorFlow, project) {s['import_s']:.1f} s, model load + split "
          f"{s['load_s']:.1f} s (streamed at {s['users']:,} users)")
    head = (f"{'users':>10} {'pairs':>10} {'streamed s':>10} {'pairs/s':>9} {'naive s':>9} {'naive/streamed':>14} "
            f"{'peak RSS ' + format(small['pairs'] / 1e6, 'g') + 'M pairs':>20} "
            f"{'peak RSS ' + format(s['pairs'] / 1e6, 'g') + 'M pairs':>18} {'RSS ratio':>9}")
    print(head)
    print(f"{s['users']:>10,} {s['pairs']:>10,} {s['wall_s']:>10.1f} {s['pairs'] / s['wall_s']:>9,.0f} "
          f"{naive_s:>8.1f}{'*' if extrapolated else ' '} {ratio:>13.1f}x {small['maxrss_mb']:>17.0f} MB "
          f"{s['maxrss_mb']:>15.0f} MB {rss_ratio:>9.2f}")
    if extrapolated:
        print(f"* naive measured on {nv['users']:,} users ({nv['wall_s']:.1f} s, {nv['pairs']:,} pairs) and "
              f"extrapolated linearly; its seconds per pair at {nv['users']:,} vs {nh['users']:,} users: "
              f"{lin:.2f} (1.00 = linear)")
    if same is not None:
        print(f"streamed vs naive predictions on the same {nh['users']:,} users: max |Δp| = {same:.2e}")
    print(f"goal: streamed ≤ 60 s at 5M pairs on 2 cores: {s['wall_s']:.1f} s at {s['pairs']:,} pairs"
          + ("" if s["pairs"] == 5_000_000 else f" ({at_5m:.1f} s scaled to 5M pairs)")
          + f" -> {verdict(at_5m <= 60)}")
    print(f"goal: ≥ 4x faster than naive per pair: {ratio:.1f}x -> {verdict(ratio >= 4)}")
    print(f"goal: peak RSS ratio {s['pairs']:,} / {small['pairs']:,} pairs ≤ 1.5: {rss_ratio:.2f} "
          f"-> {verdict(rss_ratio <= 1.5)}")


if __name__ == "__main__":
    main()
