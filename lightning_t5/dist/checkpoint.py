"""The one checkpointing module: how checkpoints are written, found, checked and read (single-file and DCP).

Formats
* A single-process or DDP run writes `checkpoints/last.ckpt` and `checkpoints/stepNNNNNN.ckpt` as single files
  (`write_file`: temp file in the same directory, fsync, rename, fsync of the directory), so a killed process
  leaves either the previous complete file or the new complete file under the final name.
* A sharded run (`trainer=fsdp`) writes each checkpoint as a *directory*: one `.distcp` shard file per rank plus
  DCP's `.metadata`, Lightning's `meta.pt` (loops, callbacks, hyper-parameters: everything but weights and
  optimizer state; every rank's data-loader position is in it, gathered by `train.data.SizedStream`) and our
  completion marker `COMPLETE` (JSON: global step). It is written as `.<name>.partial/` and renamed into place by
  `finalize` once every rank's shard and `meta.pt` exist, so a directory under a checkpoint name without the
  marker is never treated as a checkpoint.

Reading: checkpoints hold only tensors and primitive containers (the run config is stored as a plain dict under
`hyper_parameters`), so single files and `meta.pt` are read with `torch.load(weights_only=True)`.

The Lightning side (the `CheckpointIO` plugin and the sharded strategy that call `write_file` / `finalize`) is in
`lightning_t5.dist.strategy`, kept apart because importing Lightning takes seconds that the configuration checks
before a run must not wait for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from lightning_t5.errors import CheckpointError
from lightning_t5.model.t5 import T5

__all__ = [
    "MARKER",
    "META",
    "check_compatible",
    "checkpoint_step",
    "finalize",
    "find_last_checkpoint",
    "fsync_dir",
    "is_checkpoint",
    "is_complete",
    "load_checkpoint",
    "load_full_model_state",
    "load_meta",
    "load_model",
    "load_weights",
    "model_state_dict",
    "partial_dir",
    "resolve_checkpoint",
    "write_file",
]

MARKER = "COMPLETE"
META = "meta.pt"  # lightning_fabric.utilities.load._METADATA_FILENAME
_STEP_NAME = re.compile(r"^step(\d+)\.ckpt$")


# ------------------------------------------------------------------------------------------------ writing
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """`torch.save` to a temporary file beside `path`, fsync, rename over `path`, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(checkpoint, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def partial_dir(path: Path) -> Path:
    """Where a sharded checkpoint directory is written before `finalize` renames it to `path`."""
    return path.parent / f".{path.name}.partial"


def finalize(tmp: Path, path: Path, step: int) -> None:
    """Mark the fully written directory `tmp` complete and move it to `path` (rank 0 only, after a barrier).

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
    fsync_dir(tmp)
    old = path.parent / f".{path.name}.old"
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    if path.exists() or path.is_symlink():
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


# ------------------------------------------------------------------------------------------------ finding
def is_complete(path: Path) -> bool:
    """A distributed checkpoint directory whose writing finished."""
    path = Path(path)
    return path.is_dir() and (path / MARKER).is_file() and (path / META).is_file()


def is_checkpoint(path: Path) -> bool:
    """A single-file checkpoint or a complete checkpoint directory."""
    path = Path(path)
    return path.is_file() or is_complete(path)


def checkpoint_step(path: Path) -> int:
    """The global step a step checkpoint was written at, from its name (`step000100.ckpt`); -1 when unknown."""
    match = _STEP_NAME.match(Path(path).name)
    return int(match.group(1)) if match else -1


def find_last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """`run_dir/checkpoints/last.ckpt`, else the step checkpoint with the highest step, else None. A checkpoint is
    a file or a complete distributed-checkpoint directory (sharded runs); an interrupted directory write is
    skipped."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if is_checkpoint(last):
        return last
    steps = sorted((p for p in ckpt_dir.glob("step*.ckpt") if is_checkpoint(p)), key=checkpoint_step)
    return steps[-1] if steps else None


def resolve_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """A checkpoint file or complete checkpoint directory for `path`: itself, or a run directory's last checkpoint
    (`run/checkpoints/last.ckpt` or the newest step checkpoint). `what` names the option in the error."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    if path.is_dir():
        found = find_last_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{what} {str(path)!r}: no checkpoints/last.ckpt or step checkpoint in it.")
        return found
    raise CheckpointError(f"{what} {str(path)!r} does not exist (pass a run directory or a checkpoint).")


# ------------------------------------------------------------------------------------------------ reading
def load_meta(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Everything but weights and optimizer state of a checkpoint directory (weights_only-safe)."""
    if not is_complete(path):
        raise CheckpointError(f"{str(path)!r} is not a complete distributed checkpoint (no {MARKER} marker or "
                              f"{META}); it was interrupted while being written.")
    return torch.load(Path(path) / META, map_location=map_location, weights_only=True)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(weights_only=True)` of a checkpoint file (a directory: its `meta.pt`), with an error that says
    what to do when the file is not a checkpoint."""
    path = Path(path)
    if path.is_dir():  # a sharded run's distributed checkpoint: its non-tensor part (hyper-parameters, loops...)
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


def load_full_model_state(path: Path) -> dict[str, torch.Tensor]:
    """The full, unsharded `state_dict` (LightningModule keys, `model.` prefix) of a checkpoint directory, read on
    one process without a process group (DCP re-assembles the shards of every rank)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import (
        _load_state_dict_from_keys,
    )

    if not is_complete(path):
        raise CheckpointError(f"{str(path)!r} is not a complete distributed checkpoint.")
    loaded = _load_state_dict_from_keys({"state_dict"}, storage_reader=FileSystemReader(str(path)))
    state = loaded.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{str(path)!r} holds no model state_dict.")
    return {k: v.detach().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}


def model_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The T5 weights of a Lightning checkpoint (the module stores the model under `model.`)."""
    state = checkpoint.get("state_dict")
    if state is None:
        raise CheckpointError("The checkpoint has no 'state_dict'.")
    prefix = "model."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _weights(path: Path, checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The T5 weights of the checkpoint at `path` (`checkpoint` = its `load_checkpoint`)."""
    return model_state_dict({"state_dict": load_full_model_state(path)} if path.is_dir() else checkpoint)


# ------------------------------------------------------------------------------------------------ checking
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
                              f"lightning_t5 training and cannot be resumed.")
    diffs = _diff(dict(saved_model), dict(model_config), _MODEL_RUNTIME_FIELDS)
    if diffs:
        raise CheckpointError(f"{path} is incompatible with the configured model: {'; '.join(diffs)}. Resume with "
                              f"the run's own model config, or start a new run (use init_from= to reuse weights of "
                              f"the same architecture).")
    saved_vocab = hp.get("vocab_fingerprint")
    if saved_vocab and vocab_fingerprint and saved_vocab != vocab_fingerprint:
        raise CheckpointError(f"{path} was trained with a different vocabulary (fingerprint {saved_vocab} vs "
                              f"{vocab_fingerprint} for the configured tasks): token ids would not match.")


# ------------------------------------------------------------------------------------------------ models
def load_model(ckpt: str | os.PathLike) -> T5:
    """The T5 stored in a lightning_t5 checkpoint (file, checkpoint directory or run directory), rebuilt on the
    CPU-safe kernels in eval mode (`T5.from_state_dict`), so it loads where the training kernels do not exist."""
    path = resolve_checkpoint(ckpt, "--ckpt")
    checkpoint = load_checkpoint(path)
    model_config = (checkpoint.get("hyper_parameters") or {}).get("model_config")
    if model_config is None:
        raise CheckpointError(f"{str(path)!r} has no model_config in its hyper-parameters; not a lightning_t5 run.")
    return T5.from_state_dict(model_config, _weights(path, checkpoint))


def load_weights(model: T5, init_from: str, model_config: Mapping[str, Any], vocab_fingerprint: str | None) -> None:
    """`init_from=`: load weights only into `model`, from a lightning_t5 checkpoint (file, directory or run
    directory; architecture and vocabulary checked) or a Hugging Face T5 directory."""
    path = Path(init_from)
    if path.is_dir() and is_checkpoint(path / "last.ckpt"):  # a run's checkpoints/ folder
        path = path / "last.ckpt"
    if path.is_dir() and (path / "config.json").is_file() and not (path / "checkpoints").is_dir():
        source = T5.from_hf(str(path))
        try:
            model.load_state_dict(source.state_dict())
        except RuntimeError as err:
            raise CheckpointError(f"init_from={init_from!r}: the Hugging Face model does not match model config "
                                  f"({str(err).splitlines()[0]}).") from err
        return
    if not path.exists():
        raise CheckpointError(f"init_from={init_from!r} is neither a checkpoint file nor a directory.")
    path = resolve_checkpoint(path, "init_from=")
    checkpoint = load_checkpoint(path)
    check_compatible(checkpoint, model_config, vocab_fingerprint, path=str(path))
    model.load_state_dict(_weights(path, checkpoint))
