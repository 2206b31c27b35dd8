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

from lightning_t5.dist.checkpoint import finalize, load_checkpoint, partial_dir, write_file
from lightning_t5.dist.sharding import is_sharded

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
    """`ModelParallelStrategy` as pure data parallelism over every process, with atomic DCP checkpoint directories.

    Every rank writes its shard into `.<name>.partial/`; after a barrier rank 0 writes the completion marker and
    renames the directory to its final name. A crash at any point leaves either the previous complete checkpoint or
    an incomplete `.partial` directory that `find_last_checkpoint` never picks.
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
        path = Path(self.broadcast(str(filepath)))
        tmp = partial_dir(path)
        if self.is_global_zero:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self.barrier("sharded_checkpoint_start")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("sharded_checkpoint_written")
        if self.is_global_zero:
            finalize(tmp, path, step=int(checkpoint.get("global_step", -1)))
        self.barrier("sharded_checkpoint_done")


def make_strategy(trainer_cfg: Mapping[str, Any]) -> Any:
    """The `strategy=` argument of `pl.Trainer` for a `trainer` config section."""
    strategy = str(trainer_cfg["strategy"])
    return ShardedStrategy() if is_sharded(strategy) else strategy


