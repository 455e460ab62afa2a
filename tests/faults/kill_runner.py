"""A fork server for kill tests: imports the pipeline's heavy modules once, then runs each request
in a forked child process (its own environment, stdout/stderr files) and answers its exit status,
so a trial costs the step's work, not ~15 s of imports. The child is a real process: the failpoint's
SIGKILL ends it alone, with no cleanup, exactly as in a fresh interpreter.

Protocol (JSON lines): stdin {"code", "args", "env", "stdout", "stderr"} -> stdout {"returncode"}
(negative: killed by that signal). Started by tests/faults/test_kill_points.py; single-threaded
until it forks, so the children inherit no held locks."""
from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

PRELOAD = ("numpy", "pandas", "pyarrow.parquet", "duckdb", "scipy.stats", "sklearn.linear_model", "boto3",
           "mlflow", "mlflow.pyfunc", "campaignops.models.pyfunc", "campaignops.models.baselines",
           "campaignops.pipelines.score", "campaignops.pipelines.promote", "campaignops.pipelines.tracking",
           "campaignops.pipelines.run_commit", "campaignops.pipelines.scoring_frames",
           "campaignops.pipelines.drift", "campaignops.pipelines.lineage", "campaignops.pipelines.forecast")


def _child(request: dict) -> None:
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["-c", *request["args"]]
    code = 0
    try:
        exec(compile(request["code"], "<step>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report any failure as the step's
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"returncode": code}), flush=True)


if __name__ == "__main__":
    main()
