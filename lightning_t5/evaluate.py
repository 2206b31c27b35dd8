"""Evaluate a trained checkpoint on any registered task and split, without training.

    python -m lightning_t5.evaluate --ckpt runs/<run>                       # the run's own eval tasks, validation
    python -m lightning_t5.evaluate --ckpt runs/<run> --tasks glue_rte my_task --split test --imports my_tasks
    python -m lightning_t5.evaluate --ckpt runs/<run>/checkpoints/step_500.ckpt --max-examples 200 --out eval_out

Why: researchers keep held-out sets. This scores them exactly as training's evaluation does (generation ->
postprocessor -> the task's metrics, plus rank classification) and writes the same outputs: `metrics.json` (metrics
with 95 % bootstrap intervals, example counts, the majority-class reference), `results.md`, and
`predictions/<task>.jsonl`. Defaults (sequence length, generation length, batch size, rank classification) come
from the run's `config.yaml` when the checkpoint sits in a run directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf

import tasks as task_lib
from lightning_t5.dist.checkpoint import load_checkpoint, load_model, resolve_checkpoint
from lightning_t5.errors import CheckpointError, ConfigError
from lightning_t5.eval.evaluation import (
    TaskEvaluator,
    collate_eval,
    eval_details,
    evaluate_predictions,
    format_metrics_table,
    gather_predictions,
    write_json,
    write_predictions,
)
from mixtures import MixtureRegistry
from tasks import TaskRegistry
from tasks.errors import TaskError

__all__ = ["evaluate_checkpoint", "main"]


def _resolve(ckpt: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint file or directory, its run directory or None)."""
    path = resolve_checkpoint(ckpt, "--ckpt")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    return path, run_dir if run_dir is not None and (run_dir / "config.yaml").is_file() else None


def _default_tasks(run_cfg: Any) -> list[str]:
    """The run's evaluation tasks: `eval.tasks`, else the supervised tasks of its mixture."""
    if run_cfg is None:
        raise ConfigError("--tasks is required when the checkpoint is not inside a run directory with config.yaml")
    if run_cfg.get("eval", {}).get("tasks"):
        return list(run_cfg.eval.tasks)
    mixture = MixtureRegistry.get(run_cfg.mixture)
    return [t.name for t in mixture.tasks if getattr(t, "supervised", True) is not False]


def evaluate_checkpoint(ckpt: str | Path, tasks: Sequence[str] | None = None, split: str = "validation",
                        imports: Sequence[str] = (), max_examples: int | None = None, out: str | Path | None = None,
                        batch_size: int | None = None, max_new_tokens: int | None = None) -> dict[str, Any]:
    """Score `ckpt` on `tasks`/`split`, write metrics.json, results.md and predictions/ into `out`; returns the
    result dict (metrics.json's content)."""
    start = time.time()
    path, run_dir = _resolve(ckpt)
    run_cfg = OmegaConf.load(run_dir / "config.yaml") if run_dir is not None else None
    modules = list(imports) + [m for m in (run_cfg.get("imports") or [] if run_cfg is not None else [])
                               if m not in imports]
    task_lib.import_modules(modules)
    names = list(tasks) if tasks else _default_tasks(run_cfg)
    known = set(TaskRegistry.names())
    unknown = [t for t in names if t not in known]
    if unknown:
        raise ConfigError(f"--tasks: unknown task(s) {unknown}; `python -m tasks list` shows the registered ones "
                          "(use --imports MODULE for your own).")
    eval_cfg = run_cfg.get("eval", {}) if run_cfg is not None else {}
    max_in = int(OmegaConf.select(run_cfg, "data.sequence_length.inputs", default=512)) if run_cfg is not None else 512
    checkpoint = load_checkpoint(path)
    fingerprint = (checkpoint.get("hyper_parameters") or {}).get("vocab_fingerprint")
    evaluators = []
    for name in names:
        task = TaskRegistry.get(name)
        if split not in task.splits:
            raise ConfigError(f"--split {split!r}: task {name!r} has splits {task.splits}.")
        if fingerprint and task.vocabulary.fingerprint != fingerprint:
            raise ConfigError(f"task {name!r} uses a different vocabulary than the checkpoint {path}.")
        evaluators.append(TaskEvaluator(task, split=split, max_examples=max_examples, max_input_length=max_in,
                                        rank_classification=bool(eval_cfg.get("rank_classification", True))))
    del checkpoint
    model = load_model(path)
    bs = int(batch_size or eval_cfg.get("batch_size", 64))
    new_tokens = max_new_tokens or eval_cfg.get("max_new_tokens")  # None: each task's longest target
    cap = OmegaConf.select(run_cfg, "data.sequence_length.targets", default=None) if run_cfg is not None else None
    beams = int(eval_cfg.get("num_beams", 1))
    local: dict[str, list] = {}
    with torch.no_grad():
        for ev in evaluators:
            loader = torch.utils.data.DataLoader(ev.dataset(), batch_size=bs, shuffle=False, collate_fn=collate_eval)
            for batch in loader:
                local.setdefault(ev.name, []).extend(ev.predict(model, batch, max_new_tokens=new_tokens,
                                                                num_beams=beams, target_cap=cap))
    evaluation = evaluate_predictions(evaluators, gather_predictions(local), step=-1)
    out_dir = Path(out) if out else (run_dir or path.parent) / f"evaluate_{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(path), "split": split, "metrics": evaluation["metrics"],
              "averages": evaluation["averages"], **eval_details(evaluation),
              "wall_time_s": round(time.time() - start, 2)}
    write_predictions(out_dir, evaluation)
    write_json(out_dir / "metrics.json", result)
    counts = ", ".join(f"{t} {n}" for t, n in sorted(result["num_examples"].items()))
    table = format_metrics_table(result["metrics"], None, result["averages"], ci=result["ci"],
                                 counts=result["num_examples"], majority=result["majority"])
    (out_dir / "results.md").write_text(
        f"# Evaluation of {path}\n\nSplit `{split}` ({counts} examples); 95 % bootstrap intervals over the examples; "
        "\"majority class\" = always predicting the train split's most frequent target (see the notes below the "
        "table).\n\n" + table + "\n")
    result["out_dir"] = str(out_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_t5.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="run directory (its last checkpoint) or a .ckpt file")
    parser.add_argument("--tasks", nargs="+", help="registered task names (default: the run's evaluation tasks)")
    parser.add_argument("--split", default="validation", help="split to score (default: validation)")
    parser.add_argument("--imports", nargs="+", default=[], help="modules that register your tasks (e.g. my_tasks)")
    parser.add_argument("--max-examples", type=int, default=None, help="first N examples per task (default: all)")
    parser.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: the run's)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default: the run's)")
    parser.add_argument("--out", default=None, help="output directory (default: <run>/evaluate_<split>)")
    args = parser.parse_args(argv)
    if args.max_examples is not None and args.max_examples <= 0:
        parser.error("--max-examples must be positive")
    try:
        result = evaluate_checkpoint(args.ckpt, args.tasks, args.split, args.imports, args.max_examples, args.out,
                                     args.batch_size, args.max_new_tokens)
    except (CheckpointError, ConfigError, TaskError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(result["out_dir"]) / "results.md").read_text())
    print(f"written to {result['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
