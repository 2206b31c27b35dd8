"""Run by tests/test_fsdp.py under `torchrun --nproc_per_node=2`: one sharded run through `lightning_t5.train.fit.fit`
with a callback that measures what each rank stores, written to `<run_dir>/shards_rank<r>.json` (and the gathered
weights the run started from, `<run_dir>/initial_weights.pt`); or, with `--initial-weights`, only the model built
and sharded as `T5LightningModule` does it with meta-initialisation forced on, its gathered weights written to
`OUT_DIR/initial_weights.pt`.

    torchrun --nproc_per_node=2 tests/fsdp_worker.py OUT_DIR [--seed-per-rank] key=value...
    torchrun --nproc_per_node=2 tests/fsdp_worker.py OUT_DIR --initial-weights SEED MODEL_CONFIG_JSON
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_train_helpers import compose_config

from lightning_t5.dist.sharding import build_model, full_state_dict, local_numel, shard_model
from lightning_t5.train.fit import fit


class MeasureShards(pl.Callback):
    """After the second optimizer step: parameters and optimizer-state elements held by this rank, vs the total."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.forward_dtypes: set[str] = set()

    def on_train_start(self, trainer, pl_module) -> None:
        initial = full_state_dict(pl_module.model)  # collective; before the first step
        if trainer.global_rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            torch.save(initial, self.out / "initial_weights.pt")
        block = pl_module.model.encoder.block[1]  # its own FSDP unit: gathered in its pre-forward hook

        def record(module, args) -> None:
            self.forward_dtypes.add(str(module.layer[0].SelfAttention.q.weight.dtype))

        block.register_forward_pre_hook(record)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != 2:
            return
        params = list(pl_module.model.parameters())
        states = [v for state in trainer.optimizers[0].state.values() for v in state.values()
                  if isinstance(v, torch.Tensor) and v.ndim > 0]
        std = {name: float(p.full_tensor().float().std()) for name, p in pl_module.model.named_parameters()
               if p.ndim == 2}
        record = {
            "rank": trainer.global_rank,
            "local_params": local_numel(params),
            "total_params": sum(p.numel() for p in params),
            "local_optimizer_state": local_numel(states),
            "total_optimizer_state": sum(v.numel() for v in states),
            "param_types": sorted({type(p).__name__ for p in params}),
            "param_dtypes": sorted({str(p.dtype) for p in params}),
            "grad_dtypes": sorted({str(p.grad.dtype) for p in params if p.grad is not None}),
            "forward_param_dtypes": sorted(self.forward_dtypes),
            "std": std,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"shards_rank{trainer.global_rank}.json").write_text(json.dumps(record))


def initial_weights(out: Path, seed: int, model_config: dict) -> None:
    """Build and shard the model as `T5LightningModule` + `configure_model` do, with meta-initialisation on."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo")
    try:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("data_parallel",))
        options = {"param_dtype": "float32", "meta_init": True}
        torch.manual_seed(seed)
        model = build_model(model_config, options)
        assert next(model.parameters()).is_meta
        shard_model(model, mesh, options)
        state = full_state_dict(model)
        if dist.get_rank() == 0:
            torch.save(state, out / "initial_weights.pt")
    finally:
        dist.destroy_process_group()


def main() -> None:
    if sys.argv[2:3] == ["--initial-weights"]:
        initial_weights(Path(sys.argv[1]), int(sys.argv[3]), json.loads(sys.argv[4]))
        return
    out, *overrides = sys.argv[1:]
    if "--seed-per-rank" in overrides:  # a misconfigured launch: each rank gets another seed
        overrides = [o for o in overrides if o != "--seed-per-rank"] + [f"seed={40 + int(os.environ['RANK'])}"]
    cfg = compose_config(Path(out), *overrides, run_name="measured")
    fit(cfg, callbacks=[MeasureShards(Path(out) / "measured")])


if __name__ == "__main__":
    main()
