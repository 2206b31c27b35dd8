"""Checkpoint files: weights_only-safe loading, compatibility checks, weight initialisation.

A checkpoint written by this package holds only tensors and primitive containers (the run config is stored as a
plain dict under `hyper_parameters`), so every load here uses `torch.load(weights_only=True)`: loading a checkpoint
never executes pickled code. Atomic writes: `lightning_t5.checkpoint_io.AtomicCheckpointIO` (kept apart because it
imports Lightning, which the config checks before a run must not wait for).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = [
    "CheckpointError",
    "RunInterrupted",
    "load_checkpoint",
    "find_last_checkpoint",
    "check_compatible",
    "model_state_dict",
]


class CheckpointError(ValueError):
    """A checkpoint or run directory cannot be used (missing, unreadable or incompatible)."""


class RunInterrupted(Exception):
    """Training was stopped by Ctrl-C after writing a resumable checkpoint; the message says how to continue.

    `train.py` prints it and exits with status 130 (the shell's code for SIGINT), so scripts see a failure.
    """

    def __init__(self, checkpoint: str | os.PathLike, step: int, run_dir: str | os.PathLike) -> None:
        self.checkpoint, self.step, self.run_dir = Path(checkpoint), int(step), Path(run_dir)
        super().__init__(f"interrupted at step {self.step}; resumable checkpoint saved to {self.checkpoint}.\n"
                         f"Resume with: python train.py resume={self.run_dir}")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(weights_only=True)` with an error that says what to do when the file is not a checkpoint."""
    path = Path(path)
    if path.is_dir():  # a sharded run's distributed checkpoint: its non-tensor part (hyper-parameters, loops...)
        from lightning_t5.sharded_checkpoint import load_meta

        return load_meta(path, map_location=map_location)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise CheckpointError(
            f"Cannot load checkpoint {str(path)!r} with weights_only=True ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Only checkpoints holding tensors and plain containers "
            f"are accepted; was it written by lightning_t5?") from err


def find_last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """`run_dir/checkpoints/last.ckpt`, else the newest step checkpoint, else None. A checkpoint is a file or a
    complete distributed-checkpoint directory (sharded runs); an interrupted directory write is skipped."""
    from lightning_t5.sharded_checkpoint import is_checkpoint

    ckpt_dir = Path(run_dir) / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if is_checkpoint(last):
        return last
    steps = sorted((p for p in ckpt_dir.glob("step*.ckpt") if is_checkpoint(p)), key=lambda p: p.stat().st_mtime)
    return steps[-1] if steps else None


def _diff(saved: Mapping[str, Any], current: Mapping[str, Any], ignore: tuple[str, ...]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}" for k in keys
            if k not in ignore and saved.get(k) != current.get(k)]


# Fields that may change between runs without changing the parameters' shapes or meaning.
_MODEL_RUNTIME_FIELDS = ("name", "dropout_rate", "fused", "attention", "gradient_checkpointing", "compile",
                         "autocast_dtype", "z_loss")


def check_compatible(checkpoint: Mapping[str, Any], model_config: Mapping[str, Any], vocab_fingerprint: str | None,
                     path: str = "checkpoint") -> None:
    """Raise CheckpointError when the checkpoint's model architecture or vocabulary differ from the run's."""
    hp = checkpoint.get("hyper_parameters") or {}
    saved_model = hp.get("model_config")
    if saved_model is None:
        raise CheckpointError(f"{path} has no lightning_t5 hyper-parameters (model_config); it was not written by "
                              f"lightning_t5.training and cannot be resumed.")
    diffs = _diff(dict(saved_model), dict(model_config), _MODEL_RUNTIME_FIELDS)
    if diffs:
        raise CheckpointError(f"{path} is incompatible with the configured model: {'; '.join(diffs)}. Resume with "
                              f"the run's own model config, or start a new run (use init_from= to reuse weights of "
                              f"the same architecture).")
    saved_vocab = hp.get("vocab_fingerprint")
    if saved_vocab and vocab_fingerprint and saved_vocab != vocab_fingerprint:
        raise CheckpointError(f"{path} was trained with a different vocabulary (fingerprint {saved_vocab} vs "
                              f"{vocab_fingerprint} for the configured tasks): token ids would not match.")


def model_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The T5 weights of a Lightning checkpoint (the module stores the model under `model.`)."""
    state = checkpoint.get("state_dict")
    if state is None:
        raise CheckpointError("The checkpoint has no 'state_dict'.")
    prefix = "model."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
