"""What an experiment's orchestrator (the process running `run_experiment`) keeps in the experiment folder, so that
two orchestrators never run the same stage into one run directory and a rerun picks up the jobs a previous one
submitted.

`<experiment>/orchestrator/`:

* `<stage>.lock`: {"host", "pid", "started", "argv"} of the orchestrator that owns the stage. `stage_locks` takes
  the lock of every stage of an invocation before anything runs and removes them when it ends. An orchestrator whose
  stages overlap those of a live one stops at once (`ExperimentBusyError`, naming the holder); a lock whose process
  is gone (same host, pid no longer running: `lightning_t5.dist.liveness`) is stale and taken over. Invocations with
  disjoint stages (`experiment_options.rows` split over machines, docs/experiments.md) run side by side.
* `<stage>.job.json`: {"job_id", "executor", "submitted", "gpus"}, written when the stage's job is submitted
  (`JobRecords`), so that a rerun reattaches to a job still running instead of submitting the stage a second time.

The locks are checked and written under an exclusive `flock` of `orchestrator/.guard`, so two orchestrators
starting together cannot both take a stage.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lightning_t5.dist.liveness import is_gone, this_process
from lightning_t5.errors import ConfigError

__all__ = ["ORCHESTRATOR_DIR", "ExperimentBusyError", "JobRecords", "stage_locks"]

#: The folder inside an experiment folder that holds the stage locks and job records.
ORCHESTRATOR_DIR = "orchestrator"


class ExperimentBusyError(ConfigError):
    """Another live orchestrator owns some of this invocation's stages (reported by `train.py` as a configuration
    error: wait for it, or run other rows)."""


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


@contextlib.contextmanager
def _guard(folder: Path) -> Iterator[None]:
    with open(folder / ".guard", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def stage_locks(folder: Path, stages: Sequence[str]) -> Iterator[None]:
    """Own `stages` of the experiment whose orchestrator folder is `folder` while the block runs (see the module
    docstring); ExperimentBusyError, before anything is taken, when a live orchestrator owns one of them."""
    folder.mkdir(parents=True, exist_ok=True)
    me = {**this_process(), "started": time.time(), "argv": list(sys.argv)}
    taken: list[Path] = []
    try:
        with _guard(folder):
            busy = []
            for name in stages:
                holder = _read(folder / f"{name}.lock")
                if holder is not None and not is_gone(holder) and (holder.get("host"), holder.get("pid")) != (
                        me["host"], me["pid"]):
                    busy.append((name, holder))
            if busy:
                name, holder = busy[0]
                names = ", ".join(n for n, _ in busy[:4]) + (", ..." if len(busy) > 4 else "")
                started = time.ctime(float(holder.get("started", 0)))
                raise ExperimentBusyError(
                    f"{len(busy)} stage(s) of this experiment ({names}) belong to another orchestrator that is still "
                    f"running: pid {holder.get('pid')} on {holder.get('host')}, started {started} "
                    f"({' '.join(holder.get('argv') or [])}). Running them again now would train the same stage "
                    f"twice into one folder. Wait for it to end, or run other rows (experiment_options.rows); if "
                    f"that process is gone (another machine cannot be checked from here), delete "
                    f"{folder / (name + '.lock')}.")
            for name in stages:
                path = folder / f"{name}.lock"
                _write(path, me)
                taken.append(path)
        yield
    finally:
        for path in taken:
            holder = _read(path)
            if holder is not None and (holder.get("host"), holder.get("pid")) == (me["host"], me["pid"]):
                path.unlink(missing_ok=True)


class JobRecords:
    """The job each stage was last submitted as (`<stage>.job.json` in the orchestrator folder)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def record(self, stage: str, job_id: str, executor: str, gpus: Sequence[int] | None = None) -> None:
        _write(self.folder / f"{stage}.job.json", {"job_id": str(job_id), "executor": executor,
                                                    "submitted": time.time(), "gpus": list(gpus or [])})

    def get(self, stage: str) -> dict[str, Any] | None:
        return _read(self.folder / f"{stage}.job.json")
