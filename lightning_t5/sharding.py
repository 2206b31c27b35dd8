"""Sharded data parallelism (`trainer=fsdp`): FSDP2 (`torch.distributed.fsdp.fully_shard`) under Lightning's
`ModelParallelStrategy`, on CUDA (nccl) and on CPU (gloo), so the sharded path is tested without a GPU.

Why these choices:

* `ModelParallelStrategy`, not Lightning's `FSDPStrategy`: the latter wraps FSDP1, refuses `accelerator=cpu`, and its
  auto-wrap treats T5 as one unit. FSDP2 is applied by hand in `T5LightningModule.configure_model()`:
  `fully_shard` per `T5Block`, then at the root (embeddings, final norms, `lm_head`).
* Block 0 of each stack holds the relative-position bias table, which `T5.encode`/`decode` read *outside* the block's
  forward (the bias is computed once per stack). A per-block unit would leave that table sharded at that moment, so
  block 0 stays in the root unit, which is gathered for the whole forward. Every other block is its own unit.
* Mixed precision: `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` for bf16 precisions (parameters are
  all-gathered in bf16, gradients reduced in fp32, the sharded master weights and the optimizer state stay fp32);
  fp32 runs use no policy.
* Large models are built on the meta device and initialised after sharding with the model's own
  `reset_parameters()` on the local shards (`to_empty` + reset), so no rank ever holds the full fp32 model.
  Small ones (below `META_INIT_MIN_PARAMS`, or `trainer.fsdp.meta_init=false`) are built in full on every rank from
  the same seed and then sharded: their initial weights equal the single-process run's, which is what makes the
  "2-process FSDP == 1-process" test hold. (Initialising shards draws different random numbers than the full
  tensor would, so a meta-initialised run starts from an equally distributed but different point.)
* Optimizers: AdamW works element-wise on DTensor shards. Adafactor factors each parameter's second moment over its
  full 2-D shape (row and column means); on a row shard those means would be of the shard, not of the parameter, so
  it is refused: AdamW is the documented optimizer for sharded runs. Apex's fused optimizers do not accept DTensors.
* Activation checkpointing per block is the model's own `model.gradient_checkpointing=true` (the stack checkpoints
  each block call; FSDP re-gathers the block's parameters during recomputation).
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn

__all__ = [
    "META_INIT_MIN_PARAMS",
    "SHARDED_OPTIMIZERS",
    "SHARDED_STRATEGIES",
    "ShardedStrategy",
    "build_model",
    "check_config",
    "full_state_dict",
    "gather_root",
    "local_numel",
    "make_strategy",
    "reshard_root",
    "shard_model",
    "sharding_options",
]

log = logging.getLogger(__name__)

SHARDED_STRATEGIES = ("fsdp",)
SHARDED_OPTIMIZERS = ("adamw",)
#: Models with at least this many parameters are built on the meta device under `trainer.fsdp.meta_init=null`.
META_INIT_MIN_PARAMS = 500_000_000
_BF16_PRECISIONS = ("bf16-mixed", "bf16-true")


def is_sharded(strategy: Any) -> bool:
    return str(strategy) in SHARDED_STRATEGIES


def check_config(cfg: Any) -> None:
    """Refuse sharded-run settings that cannot work, before anything is built (ConfigError naming the key)."""
    from lightning_t5.schema import ConfigError

    if not is_sharded(cfg.trainer.strategy):
        return
    name = str(cfg.optim.name)
    if name not in SHARDED_OPTIMIZERS:
        raise ConfigError(
            f"optim.name={name!r} cannot be used with trainer.strategy=fsdp: "
            + ("Adafactor factors each parameter's second moment over its full shape, which a parameter shard does "
               "not have. " if name == "adafactor" else "this optimizer does not accept sharded (DTensor) parameters. ")
            + f"Use optim=adamw for sharded runs (supported: {', '.join(SHARDED_OPTIMIZERS)}).")
    if str(cfg.trainer.precision) in ("16-mixed", "16", "16-true"):
        raise ConfigError(f"trainer.precision={cfg.trainer.precision!r} is not supported with trainer.strategy=fsdp "
                          f"(fp16 needs a sharded gradient scaler); use bf16-mixed or 32-true.")
    if str(cfg.model.get("fused", "auto")) == "apex":
        raise ConfigError("model.fused='apex' cannot be used with trainer.strategy=fsdp: Apex's fused layers do not "
                          "accept sharded (DTensor) parameters; use model.fused=torch.")


def sharding_options(cfg: Any) -> dict[str, Any] | None:
    """What `T5LightningModule` needs to shard its model (a plain dict, saved with its hyper-parameters), or None."""
    if not is_sharded(cfg.trainer.strategy):
        return None
    fsdp = cfg.trainer.get("fsdp") or {}
    meta_init = False if cfg.get("init_from") else fsdp.get("meta_init")  # init_from loads into a full model
    return {
        "param_dtype": "bfloat16" if str(cfg.trainer.precision) in _BF16_PRECISIONS else "float32",
        "meta_init": None if meta_init is None else bool(meta_init),
    }


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
        from lightning_t5.sharded_checkpoint import (
            finalize,
            partial_dir,
            rank_state_file,
        )

        path = Path(self.broadcast(str(filepath)))
        tmp = partial_dir(path)
        if self.is_global_zero:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self.barrier("sharded_checkpoint_start")
        # Lightning's meta.pt holds rank 0's loop state; each rank's data loader position is its own.
        torch.save({"loops": checkpoint.get("loops")}, rank_state_file(tmp, self.global_rank))
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("sharded_checkpoint_written")
        if self.is_global_zero:
            finalize(tmp, path, step=int(checkpoint.get("global_step", -1)))
        self.barrier("sharded_checkpoint_done")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        from lightning_t5.sharded_checkpoint import rank_state_file

        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        own = rank_state_file(Path(self.broadcast(str(checkpoint_path))), self.global_rank)
        if own.is_file():
            checkpoint["loops"] = torch.load(own, map_location="cpu", weights_only=True)["loops"]
        return checkpoint


def make_strategy(trainer_cfg: Mapping[str, Any]) -> Any:
    """The `strategy=` argument of `pl.Trainer` for a `trainer` config section."""
    strategy = str(trainer_cfg["strategy"])
    return ShardedStrategy() if is_sharded(strategy) else strategy


# ---------------------------------------------------------------------------------------------------------------
def build_model(model_config: Mapping[str, Any], options: Mapping[str, Any] | None) -> nn.Module:
    """The T5 of `model_config`; on the meta device when sharding will initialise it (see the module docstring)."""
    from lightning_t5 import T5, T5Config

    config = T5Config.from_dict(dict(model_config))
    if not options or options.get("meta_init") is False:
        return T5(config)
    with torch.device("meta"):
        model = T5(config)
    if options.get("meta_init") is None and model.num_parameters() < META_INIT_MIN_PARAMS:
        return T5(config)
    model._lightning_t5_meta_init = True  # initialised by shard_model after sharding
    log.info("FSDP: %s parameters built on the meta device; initialised on the shards after sharding",
             f"{model.num_parameters():,}")
    return model


def _has_relative_bias(block: nn.Module) -> bool:
    return any("relative_attention_bias" in name for name, _ in block.named_parameters())


def shard_model(model: nn.Module, mesh: Any, options: Mapping[str, Any]) -> nn.Module:
    """Apply FSDP2 to a `T5` in place (per block, then the root); initialise meta-built weights on the shards.

    Idempotent: Lightning calls `configure_model` for every `fit`/`validate`, and a sharded model stays sharded.
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(model, FSDPModule):
        return model
    if mesh is None:
        raise RuntimeError("shard_model needs the strategy's device mesh (trainer.strategy=fsdp).")
    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    if options.get("param_dtype") == "bfloat16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    kwargs = {"mesh": dp_mesh, "mp_policy": mp}
    # A block returns its K/V cache tensors (views); T5Stack never modifies block outputs in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPT5Block\) returned a view tensor")
    for stack in (model.encoder, model.decoder):
        for block in stack.block:
            if not _has_relative_bias(block):
                fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    if getattr(model, "_lightning_t5_meta_init", False):
        device = torch.device("cuda", torch.cuda.current_device()) if dp_mesh.device_type == "cuda" else \
            torch.device(dp_mesh.device_type)
        model.to_empty(device=device)  # allocates only the local shards
        model.reset_parameters()  # the model's own init, applied to each rank's local shards
        model._lightning_t5_meta_init = False
    return model


def gather_root(model: nn.Module) -> None:
    """Gather the root unit's parameters (embeddings, block 0, final norms) for calls that bypass `forward`.

    Generation calls `model.encode`/`model.decoder` directly, so FSDP's root pre-forward hook never runs; the other
    blocks still gather themselves in their own forward hooks. Undo with `reshard_root`.
    """
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model._get_fsdp_state()._lazy_init()
        model.unshard()


def reshard_root(model: nn.Module) -> None:
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) CPU state dict of a possibly sharded model. Collective: every rank must call it; rank 0
    receives the full dict (other ranks an empty one under FSDP)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def local_numel(tensors: Any) -> int:
    """Elements this rank stores for `tensors` (a DTensor counts its local shard only)."""
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            local = t.to_local() if hasattr(t, "to_local") else t
            total += local.numel()
    return total
