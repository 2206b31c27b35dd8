"""Distributed (DCP) checkpoint directories of sharded runs: atomic completion, discovery, offline full state dict.

A sharded run's checkpoint `checkpoints/last.ckpt` (or `step000100.ckpt`) is a *directory*: one `.distcp` shard file
per rank plus DCP's `.metadata`, Lightning's `meta.pt` (loops, callbacks, hyper-parameters: everything but weights and
optimizer state, as seen by rank 0), `loops_rank<r>.pt` (each rank's own loop and data-loader position) and our
completion marker `COMPLETE` (JSON: global step). It is written as `.<name>.partial/` and
renamed into place only after every rank's shard and `meta.pt` exist (`ShardedStrategy.save_checkpoint`), so a
directory under a checkpoint name without the marker is never treated as a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MARKER",
    "META",
    "finalize",
    "is_checkpoint",
    "is_complete",
    "load_full_model_state",
    "load_meta",
    "partial_dir",
    "rank_state_file",
]

MARKER = "COMPLETE"
META = "meta.pt"  # lightning_fabric.utilities.load._METADATA_FILENAME


def rank_state_file(path: Path, rank: int) -> Path:
    """Per-rank non-tensor state (the rank's loop and data-loader position), beside the shared `meta.pt`."""
    return path / f"loops_rank{int(rank)}.pt"


def partial_dir(path: Path) -> Path:
    return path.parent / f".{path.name}.partial"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finalize(tmp: Path, path: Path, step: int) -> None:
    """Mark the fully written `tmp` complete and move it to `path` (rank 0 only, after a barrier).

    A directory cannot be `os.replace`d over a non-empty one, so an existing checkpoint is first renamed aside
    (`.<name>.old`) and removed after the new one is in place; a crash between the two renames leaves no `path`, and
    `find_last_checkpoint` falls back to the newest complete step checkpoint.
    """
    if not (tmp / META).is_file():
        raise RuntimeError(f"{tmp} has no {META}: the distributed checkpoint was not fully written.")
    marker = tmp / MARKER
    with open(marker, "w", encoding="utf-8") as fh:
        json.dump({"global_step": int(step)}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    old = path.parent / f".{path.name}.old"
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    if path.exists() or path.is_symlink():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def is_complete(path: Path) -> bool:
    """A distributed checkpoint directory whose writing finished."""
    return path.is_dir() and (path / MARKER).is_file() and (path / META).is_file()


def is_checkpoint(path: Path) -> bool:
    """A single-file checkpoint or a complete checkpoint directory."""
    return path.is_file() or is_complete(path)


def load_meta(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Everything but weights and optimizer state of a checkpoint directory (weights_only-safe)."""
    from lightning_t5.checkpoint import CheckpointError

    if not is_complete(path):
        raise CheckpointError(f"{str(path)!r} is not a complete distributed checkpoint (no {MARKER} marker or "
                              f"{META}); it was interrupted while being written.")
    return torch.load(path / META, map_location=map_location, weights_only=True)


def load_full_model_state(path: Path) -> dict[str, torch.Tensor]:
    """The full, unsharded `state_dict` (LightningModule keys, `model.` prefix) of a checkpoint directory, read on
    one process without a process group (DCP re-assembles the shards of every rank)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import (
        _load_state_dict_from_keys,
    )

    from lightning_t5.checkpoint import CheckpointError

    if not is_complete(path):
        raise CheckpointError(f"{str(path)!r} is not a complete distributed checkpoint.")
    loaded = _load_state_dict_from_keys({"state_dict"}, storage_reader=FileSystemReader(str(path)))
    state = loaded.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{str(path)!r} holds no model state_dict.")
    return {k: v.detach().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}
