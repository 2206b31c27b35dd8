"""The exception types that cross rooms (imports nothing of the project, so every room may raise them).

`train.py` and the commands turn each of them into one readable paragraph and an exit status: `ConfigError`,
`CheckpointError` -> 2, `RunInterrupted` -> 130. The model room's own errors (`FusedBackendError`,
`HFCheckpointError`) stay in the model room, which imports nothing of the project.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ConfigError", "CheckpointError", "RunInterrupted"]


class ConfigError(ValueError):
    """An invalid run configuration, described in one paragraph that names the key (raised before any work)."""


class CheckpointError(ValueError):
    """A checkpoint or run directory cannot be used (missing, unreadable, unsafe or incompatible)."""


class RunInterrupted(Exception):
    """Training was stopped by Ctrl-C; the message says how to continue.

    `saved`: the first Ctrl-C wrote `checkpoint` at `step`. Otherwise a second Ctrl-C stopped training before that,
    and `checkpoint` is the run's last checkpoint (None when it has none: nothing to resume).
    `train.py` prints it and exits with status 130 (the shell's code for SIGINT), so scripts see a failure.
    """

    def __init__(self, checkpoint: str | os.PathLike | None, step: int, run_dir: str | os.PathLike,
                 saved: bool = True) -> None:
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.step, self.run_dir, self.saved = int(step), Path(run_dir), bool(saved)
        if saved:
            message = f"interrupted at step {self.step}; resumable checkpoint saved to {self.checkpoint}."
        elif self.checkpoint is not None:
            message = (f"stopped at step {self.step} by a second Ctrl-C, before a new checkpoint was written; the run "
                       f"resumes from its last checkpoint, {self.checkpoint}.")
        else:
            message = (f"stopped at step {self.step} by a second Ctrl-C, before any checkpoint was written: there is "
                       f"nothing to resume; start the run again.")
        if self.checkpoint is not None:
            message += f"\nResume with: python train.py resume={self.run_dir}"
        super().__init__(message)
