"""Crash-test hooks: `hit(name)` kills this process with SIGKILL when CAMPAIGNOPS_FAILPOINT selects it.

``CAMPAIGNOPS_FAILPOINT=<name>`` fires on the first hit of ``name``; ``<name>:<N>`` on the N-th
hit (1-based) in this process. Unset (production), ``hit`` is one environment lookup and returns.
SIGKILL gives the process no chance to clean up (no finally blocks, no atexit), like the OOM killer
or a node loss, which is the point.

Failpoints in use (campaignops.pipelines.run_commit.RunWriter):

- ``part_uploaded``  right after each part is uploaded to the attempt's temporary prefix
                     (``part_uploaded:2`` = after the second part)
- ``before_commit``  parts copied to their final keys, manifest not yet put
- ``after_commit``   manifest put (the run is committed), latest.json and cleanup not yet done

Failpoints in use (campaignops.pipelines.promote):

- ``promote_registered``   model version registered (or reused), no record, no alias moved
- ``promote_recorded``     the event's promotion record is put, no alias moved yet
- ``promote_alias_moved``  after each alias assignment of an event (``promote_alias_moved:1`` =
                           after the first, e.g. `previous` set, `champion` not yet)
"""
from __future__ import annotations

import os
import signal

ENV = "CAMPAIGNOPS_FAILPOINT"

_hits: dict[str, int] = {}


def hit(name: str) -> None:
    """Count a hit of failpoint `name`; SIGKILL this process if CAMPAIGNOPS_FAILPOINT selects it."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _hits[name] = count = _hits.get(name, 0) + 1
    if count == (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)
