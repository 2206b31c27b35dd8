"""Local rank 0 builds the missing token caches while the other local ranks of its machine wait: this module makes
that wait end within minutes, with the reason, when rank 0 fails or dies, instead of after the 24-hour deadline.

Why a status file: the wait happens before the process group exists (it is a file barrier on the caches' COMPLETE
markers), so rank 0 can tell the others nothing except through the file system. While it builds, rank 0 keeps
`<cache root>/tokens/.build-status/<key>.json` up to date (`BuildStatus.building`: state, pid, host, time, rewritten
every `BEAT_S` seconds by a thread; on an exception the state "failed" and the error). A waiter (`wait_for_caches`)
stops with a MixtureError naming the reason when the status says "failed" (written since it started waiting), when
the builder's process is gone (same host: the key includes the host), or when it has seen no live builder for
`LIGHTNING_T5_CACHE_STALE_S` seconds (default 120: rank 0 never started building, or its machine lost it).
`LIGHTNING_T5_CACHE_WAIT_S` (default 24 h) still caps a build that is alive but slow.

The key is a hash of the caches waited for, the host and the launch (torchrun's run id and restart count, SLURM's job
and step, the rendezvous address), so concurrent launches on one machine do not read each other's status.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lightning_t5.dist.liveness import is_gone, this_process
from mixtures import MixtureError
from tasks.utils import cache_root

__all__ = ["BEAT_S", "BuildStatus", "wait_for_caches"]

#: Seconds between two heartbeats of a building rank 0.
BEAT_S = 5.0
_LAUNCH_ENV = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "SLURM_JOB_ID", "SLURM_STEP_ID", "MASTER_ADDR",
               "MASTER_PORT")


class BuildStatus:
    """The status file of one set of caches built by local rank 0 of this host and launch."""

    def __init__(self, caches: Sequence[Any]) -> None:
        host = this_process()["host"]
        launch = {k: os.environ.get(k) for k in _LAUNCH_ENV}
        key = hashlib.sha1(json.dumps([host, launch, [str(c) for c in caches]], sort_keys=True).encode()).hexdigest()
        self.host = host
        self.path = cache_root() / "tokens" / ".build-status" / f"{key[:20]}.json"

    def write(self, state: str, message: str = "") -> None:
        """Atomically replace the status (temp file + rename, so a reader never sees half of it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"state": state, **this_process(), "time": time.time(), "message": message}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path)

    def read(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Rank 0's side: "building" with a heartbeat while the block runs, "failed" and the error if it raises,
        the status removed when it succeeds (the caches' own markers say the rest)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(BEAT_S):
                self.write("building")

        self.write("building")
        thread = threading.Thread(target=beat, name="cache-build-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        except BaseException as err:
            stop.set()
            thread.join()
            self.write("failed", f"{type(err).__name__}: {err}")
            raise
        stop.set()
        thread.join()
        self.path.unlink(missing_ok=True)


def wait_for_caches(ready: Callable[[], bool], status: BuildStatus, local_rank: int, poll_s: float = 0.5) -> None:
    """Return once `ready()`; raise MixtureError when local rank 0 failed, died, went silent, or the deadline passed."""
    start = time.time()
    deadline = start + float(os.environ.get("LIGHTNING_T5_CACHE_WAIT_S", "86400"))
    stale_s = float(os.environ.get("LIGHTNING_T5_CACHE_STALE_S", "120"))
    last_live = start
    while not ready():
        now = time.time()
        record = status.read()
        where = f"local rank {local_rank} on {status.host}"
        if record is not None and float(record.get("time", 0)) >= start:
            if record.get("state") == "failed":
                raise MixtureError(f"{where}: local rank 0 failed while building the token caches, so this rank "
                                   f"stops too: {record.get('message')}")
            if record.get("state") == "building" and is_gone(record):
                raise MixtureError(f"{where}: local rank 0 (pid {record.get('pid')}) died while building the token "
                                   f"caches (killed, e.g. out of memory?). Build them first with `python -m tasks "
                                   f"cache ...`, or rerun.")
        if (record is not None and record.get("state") == "building" and now - float(record.get("time", 0)) < stale_s
                and not is_gone(record)):
            last_live = now
        if now - last_live > stale_s:
            last = (f"its last status ({record.get('state')} at {time.ctime(float(record.get('time', 0)))}): "
                    f"{record.get('message') or '-'}" if record else f"no status in {status.path}")
            raise MixtureError(f"{where}: no sign of local rank 0 building the token caches for {stale_s:.0f} s "
                               f"(LIGHTNING_T5_CACHE_STALE_S); {last}.")
        if now > deadline:
            raise MixtureError(f"{where}: timed out waiting for local rank 0 to build the token caches "
                               f"(LIGHTNING_T5_CACHE_WAIT_S).")
        time.sleep(poll_s)
