"""The one checkpointing module: how checkpoints are written, found, checked and read (single-file and DCP).

Formats
* A single-process or DDP run writes `checkpoints/last.ckpt` and `checkpoints/stepNNNNNN.ckpt` as single files
  (`write_file`: temp file in the same directory, fsync, rename, fsync of the directory), so a killed process
  leaves either the previous complete file or the new complete file under the final name.
* A sharded run (`trainer=fsdp`) writes each checkpoint as a *directory*: one `.distcp` shard file per rank plus
  DCP's `.metadata`, holding tensors only (the model's and the optimizer's: `split_sharded`), `meta.pt` (everything
  else: loops, callbacks, hyper-parameters, the optimizers' param groups; every rank's data-loader position is in
  it, gathered by `train.data.SizedStream`) and our completion marker `COMPLETE` (JSON: global step). It is
  written as `.<name>.partial/` and renamed into place by `finalize` once every rank's shard and `meta.pt` exist
  and every file of it is fsynced, so a directory under a checkpoint name without the marker is never treated as
  a checkpoint.

Reading never runs pickled code: single files and `meta.pt` hold only tensors and primitive containers (the run
config is stored as a plain dict under `hyper_parameters`) and are read with `torch.load(weights_only=True)`;
DCP's `.metadata` is a pickle, read by `read_dcp_metadata` with an unpickler that builds only the classes DCP's
metadata is made of (anything else raises `UnsafeCheckpointError`); DCP "byte items" (pickled non-tensor values,
which DCP would `torch.load(weights_only=False)`) are refused (`safe_reader`), and our sharded saves write none.
(torch.distributed.checkpoint is imported inside the functions that need it: it costs about a second, which the
configuration checks before a run, importing this module, do not pay.)

Finding (`find_last_checkpoint`): the candidates are ordered by the step recorded in them (a directory's marker,
a step file's name, `last.ckpt`'s `global_step`), and one that does not load (empty or cut `meta.pt`, a missing
or short shard, a truncated file) is skipped, with a warning, for the next one.

The Lightning side (the `CheckpointIO` plugin and the sharded strategy that call `write_file` / `finalize`) is in
`lightning_t5.dist.strategy`, kept apart because importing Lightning takes seconds that the configuration checks
before a run must not wait for.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from lightning_t5.errors import CheckpointError
from lightning_t5.model.t5 import T5
from tasks.utils import fsync_dir, fsync_file, write_atomic

__all__ = [
    "MARKER",
    "META",
    "byte_items",
    "check_compatible",
    "checkpoint_step",
    "finalize",
    "find_last_checkpoint",
    "is_checkpoint",
    "is_complete",
    "load_checkpoint",
    "load_full_model_state",
    "load_meta",
    "load_model",
    "load_weights",
    "merge_sharded",
    "model_state_dict",
    "partial_dir",
    "read_dcp_metadata",
    "recorded_step",
    "refuse_byte_items",
    "resolve_checkpoint",
    "safe_reader",
    "split_sharded",
    "split_tensors",
    "UnsafeCheckpointError",
    "validate_checkpoint",
    "write_file",
]

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
META = "meta.pt"  # lightning_fabric.utilities.load._METADATA_FILENAME
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint.filesystem._metadata_fn
_STEP_NAME = re.compile(r"^step(\d+)\.ckpt$")
#: The checkpoint keys a sharded save hands to DCP (their tensors; the rest of them goes to `meta.pt`).
SHARDED_KEYS = ("state_dict", "optimizer_states")


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds a pickled object that loading would have to construct by running code: refused, never
    skipped for an older checkpoint (it is not damage from a crash, someone or something else wrote it)."""


# ------------------------------------------------------------------------------------------------ writing
def write_file(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """`torch.save` to a temporary file beside `path`, fsync, rename over `path`, fsync the directory
    (`tasks.utils.write_atomic`)."""
    write_atomic(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def partial_dir(path: Path) -> Path:
    """Where a sharded checkpoint directory is written before `finalize` renames it to `path`."""
    return path.parent / f".{path.name}.partial"


def finalize(tmp: Path, path: Path, step: int) -> None:
    """Mark the fully written directory `tmp` complete and move it to `path` (rank 0 only, after a barrier).

    Every file in `tmp` (the ranks' shards, DCP's `.metadata`, `meta.pt`) is fsynced before the marker is written,
    and the marker before the rename, so after a power loss a directory with the marker has all its data.
    A directory cannot be `os.replace`d over a non-empty one, so an existing checkpoint is first renamed aside
    (`.<name>.old`) and removed after the new one is in place; a crash between the two renames leaves no `path`, and
    `find_last_checkpoint` falls back to the newest complete step checkpoint.
    """
    if not (tmp / META).is_file():
        raise RuntimeError(f"{tmp} has no {META}: the distributed checkpoint was not fully written.")
    for file in sorted(tmp.iterdir()):
        if file.is_file():
            fsync_file(file)
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


def split_tensors(tree: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, the rest) of a nested dict, each keeping the nesting; lists and other values belong to the rest."""
    tensors: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value
        elif isinstance(value, Mapping) and value:
            t, r = split_tensors(value)
            if t:
                tensors[key] = t
            if r or not t:
                rest[key] = r
        else:
            if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
                raise TypeError(f"checkpoint entry {key!r} is a list holding tensors; a sharded checkpoint keeps "
                                f"tensors in dicts only.")
            rest[key] = value
    return tensors, rest


def split_sharded(checkpoint: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what DCP writes, what goes to `meta.pt`) of a Lightning checkpoint of a sharded run.

    DCP gets only the tensors of the model state (`state_dict`) and of each optimizer (`optimizer_<i>`, as Lightning
    names them); their non-tensor values (the optimizers' param groups: lr, betas, parameter names) stay in the
    checkpoint dict that is saved as `meta.pt`. Without this split DCP pickles them as "byte items", which loading
    would have to unpickle with `weights_only=False`.
    """
    meta = {k: v for k, v in checkpoint.items() if k not in SHARDED_KEYS}
    model_tensors, model_rest = split_tensors(checkpoint.get("state_dict") or {})
    if model_rest:
        raise TypeError(f"the model state dict holds non-tensor entries {sorted(model_rest)}.")
    sharded: dict[str, Any] = {"state_dict": model_tensors}
    rests = []
    for i, state in enumerate(checkpoint.get("optimizer_states") or []):
        tensors, rest = split_tensors(state)
        sharded[f"optimizer_{i}"] = tensors
        rests.append(rest)
    meta["optimizer_states"] = rests
    return sharded, meta


def merge_sharded(tensors: Mapping[str, Any], rest: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `split_tensors`: the nested dict with the loaded tensors put back beside the rest."""
    out = dict(rest)
    for key, value in tensors.items():
        out[key] = merge_sharded(value, rest.get(key) or {}) if isinstance(value, Mapping) else value
    return out


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


def recorded_step(path: Path) -> int:
    """The global step a checkpoint records without loading it: a directory's marker, a step file's name; -1 for a
    single file without a step in its name (`last.ckpt`: `validate_checkpoint` reads it)."""
    path = Path(path)
    if path.is_dir():
        try:
            return int(json.loads((path / MARKER).read_text(encoding="utf-8"))["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1
    return checkpoint_step(path)


def validate_checkpoint(path: Path) -> int:
    """Check that the checkpoint at `path` loads, and return the global step recorded in it.

    A directory: marker, DCP metadata (safely), every shard file it names at full length, and `meta.pt`, whose step
    must be the marker's. A file: `torch.load(weights_only=True, mmap=True)` (the tensors are mapped, not read).
    Raises CheckpointError naming what is wrong (`UnsafeCheckpointError` for a pickle that would run code).
    """
    path = Path(path)
    if path.is_dir():
        meta = load_meta(path)
        step = recorded_step(path)
        if int(meta.get("global_step", step)) != step:
            raise CheckpointError(f"{str(path)!r}: {META} is at step {meta.get('global_step')} but the {MARKER} "
                                  f"marker says {step}; the directory mixes two checkpoints.")
        return step
    checkpoint = _load_file(path, map_location="cpu", mmap=True)
    step = checkpoint.get("global_step") if isinstance(checkpoint, Mapping) else None
    if not isinstance(step, int):
        raise CheckpointError(f"{str(path)!r} records no global_step; not a lightning_t5 training checkpoint.")
    return step


def find_last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint of `run_dir/checkpoints` with the highest step recorded in it that loads, else None.

    Candidates are `last.ckpt` and the step checkpoints (files, or complete directories of sharded runs; an
    interrupted directory write has no marker and is no candidate), ordered by their recorded step (`last.ckpt`
    first among equals); each is validated (`validate_checkpoint`) and one that does not load is skipped for the
    next, with a warning. A checkpoint refused as unsafe stops the search (UnsafeCheckpointError).
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    def loads(path: Path) -> int | None:
        try:
            return validate_checkpoint(path)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as err:
            log.warning("skipping checkpoint %s: %s", path, err)
            return None

    candidates: list[tuple[int, int, Path]] = []
    validated: set[Path] = set()
    for path in [last, *ckpt_dir.glob("step*.ckpt")]:
        if not is_checkpoint(path):
            continue
        step = recorded_step(path)
        if step < 0:  # `last.ckpt` as a file: its step is inside
            step = loads(path)
            if step is None:
                continue
            validated.add(path)
        candidates.append((step, int(path == last), path))
    for _, _, path in sorted(candidates, reverse=True):
        if path in validated or loads(path) is not None:
            return path
    return None


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
# The classes a DCP `.metadata` pickle is made of (torch 2.13: see torch.distributed.checkpoint.metadata and
# filesystem._StorageInfo), besides builtins' containers and torch's dtypes.
_DCP_GLOBALS = frozenset({
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout by name (torch.strided), as weights_only allows it
    *((module, name) for module in ("pathlib", "pathlib._local") for name in ("PosixPath", "WindowsPath",
                                                                             "PurePosixPath", "PureWindowsPath")),
    *(("builtins", name) for name in ("set", "frozenset", "slice", "complex")),
    ("collections", "OrderedDict"),
})


class _DcpMetadataUnpickler(pickle.Unpickler):
    """Builds only what DCP metadata legitimately holds; any other global (a function to call, a class with a
    custom `__reduce__`) raises UnsafeCheckpointError before it is looked up, so nothing of it runs."""

    path = ""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                torch.dtype)):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.path}: refusing to load it: the pickle refers to {module}.{name}, which is not part of a "
            f"distributed checkpoint's metadata, and unpickling it could run arbitrary code. lightning_t5 never "
            f"writes such a file; only load checkpoints from a source you trust.")


def read_dcp_metadata(path: str | os.PathLike, filename: str = DCP_METADATA) -> Any:
    """The `torch.distributed.checkpoint.metadata.Metadata` of the checkpoint directory `path`, unpickled with
    an allowlist of DCP's own classes (UnsafeCheckpointError for anything else; CheckpointError if unreadable)."""
    from torch.distributed.checkpoint.metadata import Metadata

    file = Path(path) / filename
    try:
        with open(file, "rb") as fh:
            unpickler = _DcpMetadataUnpickler(fh)
            unpickler.path = str(file)
            metadata = unpickler.load()
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - OSError, EOFError, UnpicklingError...: re-raised with context
        raise CheckpointError(f"cannot read {str(file)!r} ({type(err).__name__}: {err}); the distributed "
                              f"checkpoint is damaged or incomplete.") from err
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{str(file)!r} holds a {type(metadata).__name__}, not DCP metadata.")
    return metadata


def _check_shards(path: Path, metadata: Any) -> None:
    """Every shard file the metadata names exists and is long enough for every item stored in it."""
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        name = str(info.relative_path)
        needed[name] = max(needed.get(name, 0), int(info.offset) + int(info.length))
    for name, size in sorted(needed.items()):
        file = path / name
        actual = file.stat().st_size if file.is_file() else None
        if actual is None or actual < size:
            have = "missing" if actual is None else f"{actual:,} bytes"
            raise CheckpointError(f"{str(path)!r}: shard {name} is {have} (its metadata needs {size:,} bytes); the "
                                  f"checkpoint is damaged.")


def byte_items(metadata: Any, prefix: str = "") -> list[str]:
    """The keys under `prefix` that DCP stored as pickled bytes (none in checkpoints lightning_t5 writes)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    return sorted(k for k, v in metadata.state_dict_metadata.items()
                  if isinstance(v, BytesStorageMetadata) and k.startswith(prefix))


def refuse_byte_items(path: Path, metadata: Any, prefix: str = "") -> None:
    """UnsafeCheckpointError when DCP would have to unpickle items under `prefix` (before DCP is called, whose own
    errors bury the reason in every rank's traceback)."""
    pickled = byte_items(metadata, prefix)
    if pickled:
        raise UnsafeCheckpointError(
            f"{str(path)!r}: refusing to load {len(pickled)} pickled item(s) ({', '.join(pickled[:3])}): DCP would "
            f"unpickle them with weights_only=False, which can run arbitrary code. lightning_t5 keeps non-tensor "
            f"values in {META} (checkpoints of versions before this check kept the optimizers' settings in the "
            f"shards: start a new run from their weights with init_from=).")


@functools.cache
def _safe_reader_class() -> type:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.planner import LoadItemType

    class SafeFileSystemReader(FileSystemReader):
        """DCP's file reader without its two ways of running pickled code: `.metadata` goes through
        `read_dcp_metadata`, and byte items (which DCP unpickles with `weights_only=False`) are refused."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            rank = kwargs.get("rank")
            metadata = read_dcp_metadata(self.path, DCP_METADATA if rank is None else f"__{rank}{DCP_METADATA}")
            from torch.distributed.checkpoint.metadata import StorageMeta

            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

        def read_data(self, plan: Any, planner: Any) -> Any:
            pickled = [item.dest_index.fqn for item in plan.items if item.type == LoadItemType.BYTE_IO]
            if pickled:  # callers check first (refuse_byte_items); this is the guarantee
                raise UnsafeCheckpointError(f"{self.path}: refusing to unpickle the DCP byte item(s) {pickled[:3]}.")
            return super().read_data(plan, planner)

    return SafeFileSystemReader


def safe_reader(path: str | os.PathLike) -> Any:
    """A `torch.distributed.checkpoint` storage reader for the directory `path` that never runs pickled code."""
    return _safe_reader_class()(str(path))


def load_meta(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Everything but weights and optimizer tensors of a checkpoint directory, after checking the directory: its
    marker, its DCP metadata (read safely: UnsafeCheckpointError), its shard files' lengths and `meta.pt`."""
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"{str(path)!r} is not a complete distributed checkpoint (no {MARKER} marker or "
                              f"{META}); it was interrupted while being written.")
    _check_shards(path, read_dcp_metadata(path))
    return _load_file(path / META, map_location=map_location)


def _load_file(path: Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """`torch.load(weights_only=True)` with errors that say what is wrong: UnsafeCheckpointError when the pickle
    names a global weights_only refuses, CheckpointError when the file is empty, cut or not a checkpoint."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in str(err).upper():
            refused = [ln.strip() for ln in str(err).splitlines() if "global" in ln.lower()]
            raise UnsafeCheckpointError(
                f"refusing to load {str(path)!r}: it holds objects that only arbitrary code can rebuild "
                f"({refused[-1] if refused else first}). lightning_t5 checkpoints hold tensors and plain "
                f"containers only; was it written by lightning_t5?") from err
        size = path.stat().st_size if path.is_file() else None
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r} ({'missing' if size is None else f'{size:,} bytes'}; "
            f"{type(err).__name__}: {first}). It is damaged or was not written by lightning_t5.") from err


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(weights_only=True)` of a checkpoint file (a directory: its checked `meta.pt`), with an error that
    says what is wrong when it is not a loadable checkpoint."""
    path = Path(path)
    if path.is_dir():  # a sharded run's distributed checkpoint: its non-tensor part (hyper-parameters, loops...)
        return load_meta(path, map_location=map_location)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist.")
    return _load_file(path, map_location=map_location)


def load_full_model_state(path: Path) -> dict[str, torch.Tensor]:
    """The full, unsharded `state_dict` (LightningModule keys, `model.` prefix) of a checkpoint directory, read on
    one process without a process group (DCP re-assembles the shards of every rank) through `safe_reader`."""
    from torch.distributed.checkpoint.state_dict_loader import (
        _load_state_dict_from_keys,
    )

    load_meta(path)  # marker, metadata (safely), shard lengths, meta.pt
    refuse_byte_items(path, read_dcp_metadata(path), "state_dict.")
    loaded = _load_state_dict_from_keys({"state_dict"}, storage_reader=safe_reader(path))
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
