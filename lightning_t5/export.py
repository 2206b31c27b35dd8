"""Export a training checkpoint to the Hugging Face T5 format.

    python -m lightning_t5.export --ckpt runs/<run>/checkpoints/last.ckpt --out exported/
    python -m lightning_t5.export --ckpt runs/<run> --out exported/        # a run directory: its last checkpoint

A command: it reads the checkpoint with `lightning_t5.dist.checkpoint.load_model` (weights_only; a sharded run's
distributed checkpoint directory is re-assembled on one process) and writes it with `T5.save_hf` (config.json +
safetensors weights, loadable by `transformers.T5ForConditionalGeneration.from_pretrained`). The model is rebuilt on
the CPU-safe `model.fused=torch` kernels (`T5.from_state_dict`): the kernel backend changes no parameter, so a run
trained with `fused=apex` or `fused=liger` on a GPU machine exports on a machine that has neither.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning_t5.dist.checkpoint import load_model
from lightning_t5.errors import CheckpointError

__all__ = ["export_checkpoint", "load_model", "main"]


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Write the checkpoint's model to `out` in Hugging Face format; returns `out`."""
    out = Path(out)
    load_model(ckpt).save_hf(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_t5.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint file (.ckpt) or run directory")
    parser.add_argument("--out", required=True, help="output directory (Hugging Face format)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.ckpt, args.out)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.ckpt} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
