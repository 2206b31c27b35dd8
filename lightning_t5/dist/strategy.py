"""The Lightning side of checkpointing and sharding: the atomic `CheckpointIO` plugin and the sharded strategy.

Both only adapt Lightning to `lightning_t5.dist.checkpoint` (formats, durability, reading) and
`lightning_t5.dist.sharding` (FSDP2): this module is the one place in `dist/` that imports Lightning, so the
configuration checks before a run (which import `dist.checkpoint` and `dist.sharding`) do not wait for it.

Every rank's data-loader position travels in the checkpoint's loop state, gathered by `train.data.SizedStream`
(one mechanism for DDP's single file and FSDP's `meta.pt`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.strategies import ModelParallelStrategy

from lightning_t5.dist.checkpoint import (
    META,
    finalize,
    load_checkpoint,
    load_meta,
    merge_sharded,
    partial_dir,
    read_dcp_metadata,
    refuse_byte_items,
    safe_reader,
    split_sharded,
    split_tensors,
    write_file,
)
from lightning_t5.dist.sharding import is_sharded
from lightning_t5.errors import CheckpointError

__all__ = ["AtomicCheckpointIO", "ShardedStrategy", "make_strategy"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """The Trainer's single-file checkpoint writer: `dist.checkpoint.write_file` (temp file, fsync, rename), so a
    process killed mid-write (SIGKILL, pre-emption) never leaves a truncated file under a checkpoint name; reads
    are `dist.checkpoint.load_checkpoint` (weights_only)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options (got {storage_options!r}).")
        write_file(checkpoint, path)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


class _Bf16AutocastPrecision(MixedPrecision):
    """bf16-mixed without Lightning's refusal to clip gradients of a fused optimizer.

    Lightning refuses clipping whenever the optimizer can unscale gradients itself (fused AdamW), which only matters
    with an fp16 loss scaler; bf16 autocast has none, so the gradients the optimizer sees are the clipped ones.
    """

    def clip_gradients(self, optimizer: Any, clip_val: float = 0.0, gradient_clip_algorithm: Any = None) -> None:
        if gradient_clip_algorithm is None:
            Precision.clip_gradients(self, optimizer, clip_val)
        else:
            Precision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)


class ShardedStrategy(ModelParallelStrategy):
    """`ModelParallelStrategy` as pure data parallelism over every process, with atomic DCP checkpoint directories
    that load without running pickled code.

    Saving: every rank writes the tensors of its shard (model and optimizer, `dist.checkpoint.split_sharded`) into
    `.<name>.partial/`, rank 0 writes everything else as `meta.pt`; after a barrier rank 0 fsyncs the files, writes
    the completion marker and renames the directory to its final name (`finalize`). A crash at any point leaves
    either the previous complete checkpoint or an incomplete `.partial` directory that `find_last_checkpoint` never
    picks. Loading (resume) reads through `dist.checkpoint.safe_reader` instead of Lightning's plain DCP load.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=True, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # all processes: FSDP, no tensor parallelism
        super().setup_environment()

    def setup(self, trainer: Any) -> None:
        plugin = self.precision_plugin
        if type(plugin) is MixedPrecision and plugin.scaler is None:  # bf16-mixed: see _Bf16AutocastPrecision
            self.precision_plugin = _Bf16AutocastPrecision(plugin.precision, plugin.device)
        super().setup(trainer)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        import torch.distributed.checkpoint as dcp

        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options (got {storage_options!r}).")
        path = Path(self.broadcast(str(filepath)))
        tmp = partial_dir(path)
        if self.is_global_zero:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self.barrier("sharded_checkpoint_start")
        sharded, meta = split_sharded(checkpoint)
        dcp.save(sharded, storage_writer=dcp.FileSystemWriter(str(tmp), sync_files=True))
        if self.is_global_zero:
            write_file(meta, tmp / META)
        self.barrier("sharded_checkpoint_written")
        if self.is_global_zero:
            finalize(tmp, path, step=int(checkpoint.get("global_step", -1)))
        self.barrier("sharded_checkpoint_done")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Restore the model and optimizer shards of a checkpoint directory in place and return the rest
        (`meta.pt`: loops, callbacks...), as `ModelParallelStrategy.load_checkpoint` does, through the safe reader."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(str(checkpoint_path)))
        if not path.is_dir():  # a single file (e.g. init from a DDP run's checkpoint): Lightning's weights_only path
            return super().load_checkpoint(path, weights_only=True)
        meta = load_meta(path)  # marker, metadata (read safely), shard lengths, meta.pt (weights_only)
        refuse_byte_items(path, read_dcp_metadata(path))
        rests = meta.pop("optimizer_states", None)
        if rests is None or len(rests) != len(self.optimizers):
            raise CheckpointError(
                f"{str(path)!r} cannot be resumed: its {META} has the settings of "
                f"{'no' if rests is None else len(rests)} optimizer(s), the run has {len(self.optimizers)}. Start "
                f"a new run from its weights with init_from={str(path)!r}.")
        module = self.model
        state = {"state_dict": get_model_state_dict(module)}
        dcp.load(state, storage_reader=safe_reader(path))
        module.load_state_dict(state["state_dict"], strict=self.lightning_module.strict_loading)
        for i, optimizer in enumerate(self.optimizers):
            tensors, _ = split_tensors(get_optimizer_state_dict(module, optimizer))  # the shards to fill in
            loaded = {f"optimizer_{i}": tensors}
            dcp.load(loaded, storage_reader=safe_reader(path))
            set_optimizer_state_dict(module, optimizer, optim_state_dict=merge_sharded(tensors, rests[i]),
                                     options=StateDictOptions(cpu_offload=True))
        return meta


def make_strategy(trainer_cfg: Mapping[str, Any]) -> Any:
    """The `strategy=` argument of `pl.Trainer` for a `trainer` config section."""
    strategy = str(trainer_cfg["strategy"])
    return ShardedStrategy() if is_sharded(strategy) else strategy


