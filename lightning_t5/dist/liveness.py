"""Whether the process that wrote a status or lock file is still there: one answer for the token-cache wait of the
non-zero local ranks (`lightning_t5.train.cache_wait`) and the experiment orchestrator's stage locks
(`lightning_t5.experiments.orchestration`). Such files record `this_process()` (host and pid)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["is_gone", "pid_alive", "this_process"]


def this_process() -> dict[str, Any]:
    """{"host", "pid"} of the calling process, as status and lock files record it."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs (a zombie, dead but not yet reaped by its parent, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat[stat.rindex(")") + 2:][:1] != "Z"


def is_gone(record: Mapping[str, Any]) -> bool:
    """True when the process a record names is known to have ended: same host and its pid no longer runs. A process
    on another host cannot be checked from here and counts as alive."""
    return record.get("host") == socket.gethostname() and not pid_alive(int(record.get("pid") or 0))
