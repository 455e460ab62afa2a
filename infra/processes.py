"""The processes the stack started, found through /proc, and how to stop all of them.

Each service starts as the leader of a new session (``start_new_session=True``), so its pid is
also its process group and session id. What a service starts later may leave that group: Airflow
puts every task in a process group of its own, and a task may start a new session. A service's
processes are therefore its process group, its session, and every descendant of those; ``stop``
takes that snapshot before it signals anything (a child whose parent dies is re-parented to init and
can no longer be traced), then stops them all. Only processes that descend from the leaders we
started are touched; a pid is only signalled while its kernel start time is the one recorded.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("campaignops.stack")


class Stat(NamedTuple):
    ppid: int
    pgid: int
    sid: int
    start_time: int   # clock ticks since boot: (pid, start_time) names one process for good


def stat(pid: int) -> Stat | None:
    """The process's parent, group, session and start time; None if it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] == "Z":  # zombie: as good as gone
        return None
    return Stat(int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


def start_time(pid: int) -> int | None:
    """Kernel start time of a process (clock ticks since boot), None if it does not exist."""
    st = stat(pid)
    return st.start_time if st else None


def _all() -> dict[int, Stat]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = stat(int(entry.name))
            if st is not None:
                out[int(entry.name)] = st
    return out


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid`."""
    return [pid for pid, st in _all().items() if st.pgid == pgid]


def tree(leader: int) -> dict[int, int]:
    """{pid: start time} of everything that belongs to a service started as session leader
    `leader`: its process group, its session (process groups a task made inside it) and every
    descendant of those (also one that started a session of its own). A pgid or sid cannot be
    reused while a process still carries it, so these are ours."""
    procs = _all()
    found = {pid for pid, st in procs.items() if leader in (st.pgid, st.sid)}
    children: dict[int, list[int]] = {}
    for pid, st in procs.items():
        children.setdefault(st.ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    found.discard(os.getpid())
    return {pid: procs[pid].start_time for pid in found}


def alive(procs: dict[int, int]) -> dict[int, int]:
    """The processes of {pid: start time} that still run (the same processes, not a reused pid)."""
    return {pid: t for pid, t in procs.items() if start_time(pid) == t}


def signal_all(procs: dict[int, int], sig: int) -> None:
    for pid in alive(procs):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop(leaders: dict[str, int], timeout: float) -> None:
    """Stop every service tree in {name: leader pid}: SIGTERM to all of each tree (the leaders shut
    their components down in order), SIGKILL to what is left after `timeout` seconds, including
    processes started meanwhile."""
    snapshot = {name: tree(leader) for name, leader in leaders.items()}

    def remaining(name: str) -> dict[int, int]:
        return alive({**snapshot[name], **tree(leaders[name])})

    for procs in snapshot.values():
        signal_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(remaining(n) for n in leaders):
        time.sleep(0.2)
    for name in leaders:
        left = remaining(name)
        if left:
            log.info("%s: %d process(es) did not stop on SIGTERM within %.0fs; sending SIGKILL",
                     name, len(left), timeout)
            signal_all(left, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(remaining(n) for n in leaders):
        time.sleep(0.1)
