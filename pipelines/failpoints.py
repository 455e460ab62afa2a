"""Crash-test hooks: `hit(name)` kills this process with SIGKILL when CAMPAIGNOPS_FAILPOINT selects it.

``CAMPAIGNOPS_FAILPOINT=<name>`` fires on the first hit of ``name``; ``<name>:<N>`` on the N-th
hit (1-based) in this process. Unset (production), ``hit`` is one environment lookup and returns.
SIGKILL gives the process no chance to clean up (no finally blocks, no atexit), like the OOM killer
or a node loss, which is the point.

``CAMPAIGNOPS_FAILPOINT_TRACE=<file>`` appends one line per hit (the failpoint's name) to `file`
and kills nothing: an uninterrupted run traced this way lists every point a kill can be aimed at,
in order (tests/faults/test_kill_points.py draws its random kill points from such a trace; the
N-th line naming ``x`` is the point ``x:<N>``).

Failpoints in use, in the order a run meets them. Scoring (campaignops.pipelines.score.run):

- ``features_written``     every user's scoring features built and stored (S3 scoring_features/)
- ``drift_checked``        the scoring drift gate passed (its report written), nothing predicted
- ``predict_batch``        after each batch of users predicted (``predict_batch:3`` = the third;
                           params ``score.batch_rows`` sets the batch size)
- ``predicted``            every user predicted, nothing uploaded

then the run commit (campaignops.pipelines.run_commit.RunWriter, also used by other writers):

- ``part_uploaded``  right after each part is uploaded to the attempt's temporary prefix
                     (``part_uploaded:2`` = after the second part; params ``score.part_rows``)
- ``part_copied``    after each staged part is copied to its final, content-addressed key
- ``before_commit``  parts copied to their final keys, manifest not yet put
- ``after_commit``   manifest put (the run is committed), latest.json and cleanup not yet done
- ``latest_moved``   latest.json points at the committed run, garbage not yet removed

Promotion (campaignops.pipelines.promote):

- ``promote_registered``   model version registered (or reused), no tag, no record, no alias moved
- ``promote_tagged``       after each audit tag set on the version (``promote_tagged:5`` = the fifth)
- ``promote_recorded``     the event's promotion record is put, no alias moved yet
- ``promote_alias_moved``  after each alias assignment of an event (``promote_alias_moved:1`` =
                           after the first, e.g. `previous` set, `champion` not yet)
"""
from __future__ import annotations

import os
import signal

ENV = "CAMPAIGNOPS_FAILPOINT"
TRACE_ENV = "CAMPAIGNOPS_FAILPOINT_TRACE"

_hits: dict[str, int] = {}


def hit(name: str) -> None:
    """Count a hit of failpoint `name`; SIGKILL this process if CAMPAIGNOPS_FAILPOINT selects it."""
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a") as f:
            f.write(name + "\n")
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _hits[name] = count = _hits.get(name, 0) + 1
    if count == (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)


def points(trace_lines: list[str]) -> list[str]:
    """The kill points (``name:N``) of a traced run, in the order they were hit."""
    seen: dict[str, int] = {}
    out = []
    for name in (line.strip() for line in trace_lines):
        if name:
            seen[name] = seen.get(name, 0) + 1
            out.append(f"{name}:{seen[name]}")
    return out
