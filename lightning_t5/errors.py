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
    """Training was stopped by Ctrl-C after writing a resumable checkpoint; the message says how to continue.

    `train.py` prints it and exits with status 130 (the shell's code for SIGINT), so scripts see a failure.
    """

    def __init__(self, checkpoint: str | os.PathLike, step: int, run_dir: str | os.PathLike) -> None:
        self.checkpoint, self.step, self.run_dir = Path(checkpoint), int(step), Path(run_dir)
        super().__init__(f"interrupted at step {self.step}; resumable checkpoint saved to {self.checkpoint}.\n"
                         f"Resume with: python train.py resume={self.run_dir}")
