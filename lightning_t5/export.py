"""Export a training checkpoint to the Hugging Face T5 format: the model and its tokenizer.

    python -m lightning_t5.export --ckpt runs/<run>/checkpoints/last.ckpt --out exported/
    python -m lightning_t5.export --ckpt runs/<run> --out exported/        # a run directory: its last checkpoint
    python -m lightning_t5.export --ckpt some/copied.ckpt --vocab path/to/spiece.model --out exported/

A command: it reads the checkpoint with `lightning_t5.dist.checkpoint.load_model` (weights_only; a sharded run's
distributed checkpoint directory is re-assembled on one process) and writes it with `T5.save_hf` (config.json +
safetensors weights, loadable by `transformers.T5ForConditionalGeneration.from_pretrained`), next to the run's
vocabulary as tokenizer files (`SentencePieceVocabulary.save_hf_tokenizer`: `AutoTokenizer.from_pretrained(out)` gives
the ids the model was trained on). The model is rebuilt on the CPU-safe `model.fused=torch` kernels
(`T5.from_state_dict`): the kernel backend changes no parameter, so a run trained with `fused=apex` or `fused=liger`
on a GPU machine exports on a machine that has neither.

The vocabulary is the run's own: `<run>/config.yaml` (its `imports` and `mixture`) names the tasks, and their
vocabulary must have the fingerprint recorded in the checkpoint (`vocab_fingerprint`). `--vocab PATH` names the
SentencePiece model instead (checked the same way); a checkpoint outside its run directory without `--vocab` uses
the default vocabulary only when the fingerprints agree. Every check runs before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

import tasks
from lightning_t5.dist.checkpoint import load_checkpoint, load_model, resolve_checkpoint
from lightning_t5.errors import CheckpointError
from mixtures import MixtureRegistry
from mixtures.errors import MixtureError
from tasks import SentencePieceVocabulary, get_default_vocabulary
from tasks.errors import TaskError

__all__ = ["checkpoint_vocabulary", "export_checkpoint", "load_model", "main"]


def export_checkpoint(ckpt: str | Path, out: str | Path, vocab: str | Path | None = None) -> Path:
    """Write the checkpoint's model and its vocabulary's tokenizer to `out` in Hugging Face format; returns `out`.
    `vocab`: the SentencePiece model the run used, when the run's config.yaml is not beside the checkpoint."""
    out = Path(out)
    path = resolve_checkpoint(ckpt, "--ckpt")
    vocabulary = checkpoint_vocabulary(path, vocab)
    model = load_model(path)
    vocabulary.save_hf_tokenizer(out)
    model.save_hf(str(out))  # config.json last: the directory is a model once it is there
    return out


def checkpoint_vocabulary(path: Path, vocab: str | Path | None = None) -> SentencePieceVocabulary:
    """The vocabulary the checkpoint at `path` was trained with (see the module docstring for where it is looked
    up); CheckpointError when it cannot be found or its fingerprint is not the checkpoint's."""
    trained_with = (load_checkpoint(path).get("hyper_parameters") or {}).get("vocab_fingerprint")
    config = path.parent.parent / "config.yaml" if path.parent.name == "checkpoints" else None
    hint = "pass --vocab PATH, the SentencePiece model the run was trained with"
    if vocab is not None:
        try:
            found, source = SentencePieceVocabulary(vocab), f"--vocab {vocab}"
        except TaskError as err:
            raise CheckpointError(str(err)) from err
    elif config is not None and config.is_file():
        found, source = _config_vocabulary(config, trained_with, hint), f"the run's {config}"
    else:
        found, source = get_default_vocabulary(), "the default vocabulary"
        if trained_with is None or found.fingerprint != trained_with:
            raise CheckpointError(f"{str(path)!r} is not inside a run directory with a config.yaml, so its vocabulary "
                                  f"is unknown (the default vocabulary {found.path} has fingerprint "
                                  f"{found.fingerprint}, the checkpoint {trained_with}): {hint}.")
    if trained_with and found.fingerprint != trained_with:
        raise CheckpointError(f"{source} gives vocabulary {found.path} (fingerprint {found.fingerprint}), but "
                              f"{str(path)!r} was trained with fingerprint {trained_with}: its token ids would not "
                              f"match the model. {hint[0].upper()}{hint[1:]}.")
    return found


def _config_vocabulary(config: Path, trained_with: str | None, hint: str) -> SentencePieceVocabulary:
    """The vocabulary of the tasks of the run's mixture (its user modules imported first)."""
    cfg = OmegaConf.load(config)
    try:
        tasks.import_modules(list(cfg.get("imports") or []))
        mixture = MixtureRegistry.get(str(cfg.mixture))
        found = {task.vocabulary.fingerprint: task.vocabulary for task in mixture.tasks}
    except (TaskError, MixtureError) as err:
        raise CheckpointError(f"cannot rebuild the vocabulary of {config} (mixture {cfg.get('mixture')!r}): {err} "
                              "Run the export from the folder the run was started in (its imports are found from "
                              f"there), or {hint}.") from err
    return found.get(trained_with) or next(iter(found.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_t5.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint file (.ckpt) or run directory")
    parser.add_argument("--out", required=True, help="output directory (Hugging Face format)")
    parser.add_argument("--vocab", default=None,
                        help="the run's SentencePiece model (default: from the run's config.yaml)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.ckpt, args.out, args.vocab)
    except (CheckpointError, TaskError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.ckpt} -> {out} (model and tokenizer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
