"""Sharded data parallelism (`trainer=fsdp`): FSDP2 (`torch.distributed.fsdp.fully_shard`) applied to a `T5`, on
CUDA (nccl) and on CPU (gloo), so the sharded path is tested without a GPU. Plain torch: the Lightning strategy that
runs it is `lightning_t5.dist.strategy.ShardedStrategy`.

Why these choices:

* Lightning's `ModelParallelStrategy`, not its `FSDPStrategy`: the latter wraps FSDP1, refuses `accelerator=cpu`, and
  its auto-wrap treats T5 as one unit. FSDP2 is applied by hand in `T5LightningModule.configure_model()`:
  `fully_shard` per `T5Block`, then at the root (embeddings, final norms, `lm_head`).
* Block 0 of each stack holds the relative-position bias table, which `T5.encode`/`decode` read *outside* the block's
  forward (the bias is computed once per stack). A per-block unit would leave that table sharded at that moment, so
  block 0 stays in the root unit, which is gathered for the whole forward. Every other block is its own unit.
* Mixed precision: `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` for bf16 precisions (parameters are
  all-gathered in bf16, gradients reduced in fp32, the sharded master weights and the optimizer state stay fp32);
  fp32 runs use no policy.
* Large models are built on the meta device and initialised after sharding (`to_empty`, then the model's own
  `reset_parameters()` under `_FullTensorInit`): each parameter's *full* tensor is drawn on the CPU from the
  model's init generator, in the model's init order, and each rank keeps its shard of it. So a sharded run starts
  from exactly the weights a 1-process run with the same seed starts from, on CPU and CUDA alike (DTensor's own
  random ops would draw per shard, and on CPU every rank the same numbers), while no rank holds more than one full
  parameter at a time; the price is that every rank draws every parameter on its CPU, once, at start.
  Small models (below `META_INIT_MIN_PARAMS`, or `trainer.fsdp.meta_init=false`) are built in full on every rank
  from the same seed and then sharded, which gives the same weights.
* Optimizers: AdamW works element-wise on DTensor shards. Adafactor factors each parameter's second moment over its
  full 2-D shape (row and column means); on a row shard those means would be of the shard, not of the parameter, so
  it is refused: AdamW is the documented optimizer for sharded runs. Apex's fused optimizers do not accept DTensors.
* Activation checkpointing per block is the model's own `model.gradient_checkpointing=true` (the stack checkpoints
  each block call; FSDP re-gathers the block's parameters during recomputation).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_t5.errors import ConfigError
from lightning_t5.model.config import T5Config
from lightning_t5.model.t5 import T5

__all__ = [
    "META_INIT_MIN_PARAMS",
    "SHARDED_OPTIMIZERS",
    "SHARDED_STRATEGIES",
    "build_model",
    "check_config",
    "full_state_dict",
    "gather_root",
    "is_sharded",
    "local_numel",
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


# ---------------------------------------------------------------------------------------------------------------
def build_model(model_config: Mapping[str, Any], options: Mapping[str, Any] | None) -> nn.Module:
    """The T5 of `model_config`; on the meta device when sharding will initialise it (see the module docstring)."""
    config = T5Config.from_dict(dict(model_config))
    if not options or options.get("meta_init") is False:
        return T5(config)
    if options.get("meta_init") is None:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):  # a size probe: the model draws its init seed
            small = T5(config).num_parameters() < META_INIT_MIN_PARAMS  # from the RNG, which the real build must see
        if small:
            return T5(config)
    with torch.device("meta"):
        model = T5(config)
    model._lightning_t5_meta_init = True  # initialised by shard_model after sharding
    log.info("FSDP: %s parameters built on the meta device; initialised on the shards after sharding",
             f"{model.num_parameters():,}")
    return model


class _FullTensorInit(TorchFunctionMode):
    """While active, `nn.init.normal_` of a sharded parameter (DTensor) draws the parameter's full tensor on the CPU
    from the generator it is given, exactly as an unsharded model's init does, and keeps this rank's shard of it.

    Why not DTensor's own random ops: they draw only the local shard, consistently with the full tensor only
    through CUDA's offset-based RNG tracker (CPU ranks all draw the same numbers) and never equal to the CPU
    generator a 1-process run is initialised from. Other calls (`nn.init.ones_` of the norms) pass through.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        from torch.distributed.tensor import DTensor, distribute_tensor

        kwargs = dict(kwargs or {})
        if func is nn.init.normal_:
            tensor = kwargs.pop("tensor") if "tensor" in kwargs else args[0]
            rest = args[1:] if args and args[0] is tensor else args
            if isinstance(tensor, DTensor):
                full = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
                nn.init.normal_(full, *rest, **kwargs)  # this mode is off inside its own handler
                shard = distribute_tensor(full.to(tensor.device), tensor.device_mesh, tensor.placements,
                                          src_data_rank=None)  # every rank holds `full`: slice locally, no scatter
                tensor.to_local().copy_(shard.to_local())
                return tensor
            return func(tensor, *rest, **kwargs)
        return func(*args, **kwargs)


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
        with _FullTensorInit():
            model.reset_parameters()  # the model's own init: full tensors drawn on the CPU, the local shard kept
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
