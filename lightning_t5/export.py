"""Export a training checkpoint to the Hugging Face T5 format.

    python -m lightning_t5.export --ckpt runs/<run>/checkpoints/last.ckpt --out exported/
    python -m lightning_t5.export --ckpt runs/<run> --out exported/        # a run directory: its last checkpoint

A sharded run's checkpoint (`trainer=fsdp`) is a distributed checkpoint directory; it is read on one process here
(DCP re-assembles every rank's shards into the full state dict).

The checkpoint is read with `torch.load(weights_only=True)`; the model is rebuilt from the `model_config` stored in
its hyper-parameters and written by `T5.save_hf` (config.json + safetensors weights, loadable by
`transformers.T5ForConditionalGeneration.from_pretrained`).

Every export path (this CLI, `export_checkpoint`, and training's `export_hf=`) rebuilds the model with the CPU-safe
`model.fused=torch` backend (`EXPORT_BACKEND`): the kernel backend changes no parameter, so a run trained with
`fused=apex` or `fused=liger` on a GPU machine exports on a machine that has neither.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["export_checkpoint", "export_model", "export_state_dict", "load_model", "model_from_state_dict",
           "EXPORT_BACKEND"]

EXPORT_BACKEND = "torch"  # runs on any CPU; parameter names and values are the same for every backend


def load_model(ckpt: str | Path):  # -> lightning_t5.T5
    """The T5 stored in a lightning_t5 checkpoint file or run directory (weights_only-safe load)."""
    from lightning_t5.checkpoint import CheckpointError, find_last_checkpoint, load_checkpoint, model_state_dict
    from lightning_t5.sharded_checkpoint import is_complete, load_full_model_state

    path = Path(ckpt)
    if path.is_dir() and not is_complete(path):  # a run directory
        found = find_last_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{str(path)!r} has no checkpoints/last.ckpt or step checkpoint to export.")
        path = found
    checkpoint = load_checkpoint(path)
    model_config = (checkpoint.get("hyper_parameters") or {}).get("model_config")
    if model_config is None:
        raise CheckpointError(f"{str(path)!r} has no model_config in its hyper-parameters; not a lightning_t5 run.")
    state = model_state_dict({"state_dict": load_full_model_state(path)} if path.is_dir() else checkpoint)
    return model_from_state_dict(model_config, state)


def model_from_state_dict(model_config: dict, state: dict):  # -> lightning_t5.T5
    """A T5 built from a run's `model_config` on `EXPORT_BACKEND`, holding the full (unsharded) weights `state`
    (keys of compiled blocks, `._orig_mod`, are accepted), in eval mode."""
    from lightning_t5 import T5, T5Config

    config = {**dict(model_config), "fused": EXPORT_BACKEND, "compile": False}  # export never needs compiled blocks
    model = T5(T5Config.from_dict(config))
    model.load_state_dict({k.replace("._orig_mod", ""): v for k, v in state.items()})
    return model.eval()


def export_state_dict(model_config: dict, state: dict, out: str | Path) -> Path:
    """Write full weights `state` (e.g. `lightning_t5.sharding.full_state_dict` of a sharded model) to `out` in
    Hugging Face format (what training's `export_hf=` calls); returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_from_state_dict(model_config, state).save_hf(str(out))
    return out


def export_model(model, out: str | Path) -> Path:  # model: lightning_t5.T5, not sharded
    """Write an in-memory T5 (any backend, any device) to `out` in Hugging Face format, through a CPU copy rebuilt
    on `EXPORT_BACKEND`; returns `out`."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return export_state_dict(model.config.to_dict(), state, out)


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Write the checkpoint's model to `out` in Hugging Face format; returns `out`."""
    model = load_model(ckpt)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_hf(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_t5.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint file (.ckpt) or run directory")
    parser.add_argument("--out", required=True, help="output directory (Hugging Face format)")
    args = parser.parse_args(argv)
    from lightning_t5.checkpoint import CheckpointError

    try:
        out = export_checkpoint(args.ckpt, args.out)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.ckpt} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
