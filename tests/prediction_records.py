"""Synthetic per-example predictions of any catalog task, written the way evaluation writes them.

Tests of the results tables and statistics need stage results with `predictions/<task>.jsonl` files for tasks
whose data is not shipped (MultiRC, ReCoRD, WSC, ...). This builds raw examples carrying the fields the task's own
postprocessor reads, postprocesses targets and predictions with it, scores them with the task's own metric functions
(`scored_metrics`, as `TaskEvaluator.compute` does) and writes the records with `write_predictions`: no model, no
training, the record format of a real run.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lightning_t5.eval.evaluation import scored_metrics, write_predictions
from tasks import TaskRegistry

WORDS = ("the cat sat on a mat while every dog ran home fast over lazy brown fox jumps near old river bank "
         "under bright cold moon").split()


def _sentence(rng: np.random.Generator, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS, n))


def _corrupt(rng: np.random.Generator, text: str, quality: float) -> str:
    words = text.split()
    kept = [w if rng.random() < quality else str(rng.choice(WORDS)) for w in words]
    return " ".join(kept)


def synthetic_examples(task_name: str, n: int, seed: int = 0) -> list[tuple[dict[str, Any], str]]:
    """n (raw example, target text) pairs for `task_name`; grouped tasks get ~4 answers per question / query."""
    task = TaskRegistry.get(task_name)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if task.label_choices:
            target = str(rng.choice(task.label_choices))
            example: dict[str, Any] = {"idx/question": i // 4}  # MultiRC groups answers by question
        elif task_name == "super_glue_wsc":
            target = str(rng.choice(["the cat", "the old dog", "my brown fox"]))
            example = {"label": int(rng.integers(0, 2))}
        elif task_name == "super_glue_record":
            answers = [str(rng.choice(WORDS)).title() for _ in range(2)]
            target = answers[0]
            example = {"answers": answers, "idx/passage": i // 4, "idx/query": i // 4}
        elif task_name == "squad":
            answers = [_sentence(rng, 3), _sentence(rng, 2)]
            target = answers[0]
            example = {"answers": answers}
        else:  # translation, summarisation: free text
            target = _sentence(rng)
            example = {}
        out.append(({"inputs": f"{task_name} input {i}", "targets": target, **example}, target))
    return out


def synthetic_predictions(task_name: str, examples: list[tuple[dict[str, Any], str]], quality: float,
                          seed: int = 0, constant: str | None = None) -> list[str]:
    """Predicted texts: the target with probability `quality` (free text: each word kept with it), else a wrong
    label / answer; `constant`: that text for every example (a constant-predicting model)."""
    if constant is not None:
        return [constant] * len(examples)
    task = TaskRegistry.get(task_name)
    rng = np.random.default_rng(seed)
    out = []
    for example, target in examples:
        if task.label_choices:
            wrong = [c for c in task.label_choices if c != target]
            out.append(target if rng.random() < quality else str(rng.choice(wrong)))
        elif task.metric_fns and any(getattr(f, "__name__", "") in ("bleu", "rouge") for f in task.metric_fns):
            out.append(_corrupt(rng, target, quality))
        else:
            out.append(target if rng.random() < quality else "nothing")
    return out


def write_stage_task(run_dir: Path, task_name: str, examples: list[tuple[dict[str, Any], str]],
                     predictions: list[str], rank_predictions: list[str] | None = None,
                     majority: str | None = None) -> dict[str, Any]:
    """Write `<run_dir>/predictions/<task>.jsonl` and return this task's entries of a stage result:
    {"metrics", "num_examples", "majority"} as `fit` records them."""
    with warnings.catch_warnings():  # scipy's ConstantInputWarning for a constant prediction: scored as 0
        warnings.simplefilter("ignore")
        return _write_stage_task(run_dir, task_name, examples, predictions, rank_predictions, majority)


def _write_stage_task(run_dir: Path, task_name: str, examples: list[tuple[dict[str, Any], str]],
                      predictions: list[str], rank_predictions: list[str] | None, majority: str | None
                      ) -> dict[str, Any]:
    task = TaskRegistry.get(task_name)
    targets = [task.postprocess(t, example=ex, is_target=True) for ex, t in examples]
    preds = [task.postprocess(p, example=ex) for (ex, _), p in zip(examples, predictions)]
    metrics = scored_metrics(task.compute_metrics(targets, preds))
    ranked = None
    if task.label_choices:
        rank_texts = rank_predictions or predictions
        ranked = [task.postprocess(p, example=ex) for (ex, _), p in zip(examples, rank_texts)]
        metrics.update({f"rank_{k}": v for k, v in scored_metrics(task.compute_metrics(targets, ranked)).items()})
    maj_preds = None
    maj_entry = None
    if majority is not None:
        maj_preds = [task.postprocess(majority, example=ex) for ex, _ in examples]
        maj_metrics = scored_metrics(task.compute_metrics(targets, maj_preds))
        if task.label_choices:
            maj_metrics.update({f"rank_{k}": v for k, v in list(maj_metrics.items())})
        maj_entry = {"prediction": majority, "metrics": maj_metrics, "source": "train"}
    rows = []
    for i, ((ex, t), target, pred, text) in enumerate(zip(examples, targets, preds, predictions)):
        row = {"index": i, "inputs": ex["inputs"], "targets": t, "target": target, "prediction": pred,
               "generated": text}
        if ranked is not None:
            row["rank_prediction"] = ranked[i]
        if maj_preds is not None:
            row["majority_prediction"] = maj_preds[i]
        rows.append(row)
    write_predictions(run_dir, {"records": {task_name: rows}})
    return {"metrics": metrics, "num_examples": len(rows), "majority": maj_entry}


def stage_results(plan: Any, tmp_path: Path, predict: Any, n: int = 48, majority: bool = True
                  ) -> dict[str, dict[str, Any]]:
    """Stage results of every stage of `plan`, with prediction files for each evaluated task.

    `predict(row_key, task, examples, seed) -> (predictions, rank_predictions or None)` decides what each row
    predicts; the majority reference predicts the first synthetic target (the same for every row)."""
    results: dict[str, dict[str, Any]] = {}
    examples = {t: synthetic_examples(t, n, seed=1) for t in plan.tasks}
    for row in plan.rows:
        for seed, mapping in row.eval_stages():
            for task, stage_name in mapping.items():
                preds, ranked = predict(row.key, task, examples[task], seed or 0)
                run_dir = tmp_path / stage_name
                entry = results.setdefault(stage_name, {"steps": 6, "tokens": 600, "wall_time_s": 1.0,
                                                        "checkpoint": "x", "run_dir": str(run_dir), "metrics": {},
                                                        "num_examples": {}, "majority": {}})
                got = write_stage_task(run_dir, task, examples[task], preds, ranked,
                                       majority=examples[task][0][1] if majority else None)
                entry["metrics"][task] = got["metrics"]
                entry["num_examples"][task] = got["num_examples"]
                if got["majority"] is not None:
                    entry["majority"][task] = got["majority"]
        for s in row.stages:
            results.setdefault(s, {"steps": plan.stage(s).steps, "tokens": 1, "wall_time_s": 1.0, "checkpoint": "x",
                                   "metrics": {}})
    return results
