"""Run Airflow 3's components as one unit (what `airflow standalone` does, minus its drawbacks).

`python -m campaignops.infra.airflow_launcher` (started by infra.stack in its own process group)
migrates the metadata DB, then runs api-server, scheduler, dag-processor and triggerer as children.
Unlike `airflow standalone`, the scheduler and triggerer run with --skip-serve-logs: their log
servers would bind every interface on fixed ports (8793/8794) and are not needed with the
LocalExecutor (the API server reads task logs from local files). If any component exits, the
others are stopped and the launcher exits with that component's code, so a half-dead Airflow
never passes for a running one. SIGTERM/SIGINT stop all components, then whatever they left in
the launcher's session: a task runs in a process group of its own and would outlive the scheduler
that started it (and be run again by the next scheduler).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from campaignops.infra import processes

AIRFLOW = str(Path(sys.executable).parent / "airflow")
COMPONENTS = {
    "api-server": [AIRFLOW, "api-server"],
    "scheduler": [AIRFLOW, "scheduler", "--skip-serve-logs"],
    "dag-processor": [AIRFLOW, "dag-processor"],
    "triggerer": [AIRFLOW, "triggerer", "--skip-serve-logs"],
}


COMPONENT_STOP_S = 6   # SIGTERM -> SIGKILL for the components, then for what they left; together
TASK_STOP_S = 2        # inside infra.stack.down's own timeout, which then kills whatever is left


def _say(msg: str) -> None:
    print(f"[launcher] {time.strftime('%H:%M:%S')} {msg}", flush=True)


def main() -> int:
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    _say("airflow db migrate")
    rc = subprocess.call([AIRFLOW, "db", "migrate"])
    if rc != 0:
        _say(f"db migrate failed with exit code {rc}")
        return rc
    components = dict(COMPONENTS)
    workers = int(os.environ.get("CAMPAIGNOPS_AIRFLOW_CELERY_WORKERS") or 0)   # profile distributed
    if workers:
        from campaignops.infra.distributed import worker_commands

        components.update(worker_commands(AIRFLOW, workers, int(os.environ.get("AIRFLOW__CELERY__WORKER_CONCURRENCY") or 0)))
    procs: dict[str, subprocess.Popen] = {}
    for name, cmd in components.items():
        if stopping:
            break
        procs[name] = subprocess.Popen(cmd)
        _say(f"started {name} (pid {procs[name].pid})")
    code = 0
    while not stopping:
        dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
        if dead:
            name, code = next(iter(dead.items()))
            _say(f"{name} exited with code {code}; stopping the other components")
            code = code or 1
            break
        time.sleep(0.5)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + COMPONENT_STOP_S
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    left = processes.tree(os.getpid())
    if left:   # task processes (and theirs) the components did not stop
        _say(f"stopping {len(left)} process(es) left by the components")
        processes.stop({"tasks": os.getpid()}, TASK_STOP_S)
    _say("stopped")
    return code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
