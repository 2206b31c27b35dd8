"""Per-task evaluation: generation -> task postprocessor -> task metrics, rank classification, benchmark averages.

The evaluation follows seqio/T5: every task is scored on its own validation split with its own metric functions on
the *postprocessed* prediction and target strings; a benchmark score (GLUE, SuperGLUE) averages each task's metrics
first and then the tasks, so a task with two metrics (MRPC: accuracy and F1) counts once.

Examples are sharded by rank (example i goes to rank i % world_size) and the predictions are gathered by example
index before scoring, so DDP evaluation scores the same examples, in the same order, as one process.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "TaskEvaluator",
    "EvalDataset",
    "collate_eval",
    "task_score",
    "benchmark_averages",
    "format_metrics_table",
    "gather_predictions",
]


class EvalDataset(torch.utils.data.Dataset):
    """One rank's shard of a task's tokenized evaluation inputs: items {"index", "input_ids"}."""

    def __init__(self, inputs: Sequence[np.ndarray], rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, len(inputs), world_size))
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        return {"index": index, "input_ids": self.inputs[index]}


def _pad(rows: Sequence[np.ndarray], pad_id: int = 0) -> torch.Tensor:
    width = max(1, max((len(r) for r in rows), default=1))
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def collate_eval(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-pad the inputs of a batch (T5 pads with 0) and keep each row's example index."""
    input_ids = _pad([it["input_ids"] for it in items])
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != 0).long(),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }


@dataclass
class TaskEvaluator:
    """Everything needed to score one task: its first `max_examples` validation examples, tokenized once.

    `targets` are the postprocessed target strings (`task.postprocess(..., is_target=True)`), computed once; the
    predictions are postprocessed with the raw example so tasks such as SQuAD or ReCoRD can use its fields.
    """

    task: Any
    split: str = "validation"
    max_examples: int | None = None
    max_input_length: int = 512
    rank_classification: bool = False
    examples: list[dict[str, Any]] = field(init=False)
    inputs: list[np.ndarray] = field(init=False)
    targets: list[Any] = field(init=False)
    choice_ids: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        task = self.task
        stream = task.text_examples(self.split)
        self.examples = list(itertools.islice(stream, self.max_examples)) if self.max_examples else list(stream)
        if not self.examples:
            raise ValueError(f"Task {task.name!r} has no examples in split {self.split!r} to evaluate on.")
        vocab = task.vocabulary
        encoded = vocab.encode_batch([ex["inputs"] for ex in self.examples])
        limit = self.max_input_length - 1  # room for EOS
        self.inputs = [np.asarray(list(ids[:limit]) + [vocab.eos_id], dtype=np.int64) for ids in encoded]
        self.targets = [task.postprocess(ex["targets"], example=ex, is_target=True) for ex in self.examples]
        choices = getattr(task, "label_choices", None) if self.rank_classification else None
        if choices:
            ids = [list(c) + [vocab.eos_id] for c in vocab.encode_batch(list(choices))]
            self.choice_ids = _pad([np.asarray(c) for c in ids])
            self.choices = list(choices)

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def benchmark(self) -> str | None:
        return getattr(self.task, "benchmark", None)

    def dataset(self, rank: int = 0, world_size: int = 1) -> EvalDataset:
        return EvalDataset(self.inputs, rank, world_size)

    # ----------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: Any, batch: Mapping[str, torch.Tensor], *, max_new_tokens: int, num_beams: int = 1
                ) -> list[tuple[int, Any, Any]]:
        """(example index, postprocessed generated prediction, postprocessed rank-classification prediction)."""
        out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=max_new_tokens, num_beams=num_beams)
        vocab = self.task.vocabulary
        indices = batch["index"].tolist()
        texts = [vocab.decode(row) for row in out.tolist()]
        ranked = self.rank_classify(model, batch) if self.choice_ids is not None else [None] * len(indices)
        results = []
        for index, text, choice in zip(indices, texts, ranked):
            example = self.examples[index]
            pred = self.task.postprocess(text, example=example, is_target=False)
            rank_pred = None if choice is None else self.task.postprocess(choice, example=example, is_target=False)
            results.append((index, pred, rank_pred))
        return results

    @torch.no_grad()
    def rank_classify(self, model: Any, batch: Mapping[str, torch.Tensor]) -> list[str]:
        """Score each label string by its log-likelihood given the input and return the best one per example.

        One forward pass over B*C rows (every example paired with every choice); the score is the sum of the
        target-token log-probabilities, as in T5's rank classification.
        """
        assert self.choice_ids is not None
        device = batch["input_ids"].device
        choices = self.choice_ids.to(device)  # [C, Lc]
        n_choices = choices.shape[0]
        enc = batch["input_ids"].repeat_interleave(n_choices, dim=0)  # [B*C, Lin]
        tgt = choices.repeat(batch["input_ids"].shape[0], 1)  # [B*C, Lc]
        dec_in = torch.zeros_like(tgt)
        dec_in[:, 1:] = tgt[:, :-1]
        enc_seg = (enc != 0).int()
        dec_seg = (tgt != 0).int()
        dec_seg[:, 0] = 1
        enc_pos = torch.arange(enc.shape[1], device=device, dtype=torch.int32).expand_as(enc).contiguous()
        dec_pos = torch.arange(tgt.shape[1], device=device, dtype=torch.int32).expand_as(tgt).contiguous()
        logits = model(encoder_input_tokens=enc, decoder_input_tokens=dec_in, encoder_segment_ids=enc_seg,
                       decoder_segment_ids=dec_seg, encoder_positions=enc_pos, decoder_positions=dec_pos)
        logits = getattr(logits, "logits", logits).float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        scores = (logp * (tgt != 0)).sum(-1).view(-1, n_choices)
        return [self.choices[i] for i in scores.argmax(-1).tolist()]

    def compute(self, predictions: Mapping[int, tuple[Any, Any]]) -> dict[str, float]:
        """Task metrics over all examples (`predictions`: index -> (generated, rank-classified)).

        Rank-classification metrics are reported with a `rank_` prefix, next to the generation metrics.
        """
        missing = [i for i in range(len(self.examples)) if i not in predictions]
        if missing:
            raise RuntimeError(f"Evaluation of {self.name!r} is missing predictions for {len(missing)} examples "
                               f"(first: {missing[:5]}); were all ranks' predictions gathered?")
        order = range(len(self.examples))
        metrics = {k: float(v) for k, v in self.task.compute_metrics(self.targets, [predictions[i][0] for i in order]).items()}
        if self.choice_ids is not None:
            ranked = self.task.compute_metrics(self.targets, [predictions[i][1] for i in order])
            metrics.update({f"rank_{k}": float(v) for k, v in ranked.items()})
        return metrics


# ---------------------------------------------------------------------------------------------------------------
def task_score(metrics: Mapping[str, float], rank: bool = False) -> float:
    """T5's per-task score: the mean of the task's (generation, or `rank_`) metrics."""
    values = [v for k, v in metrics.items() if k.startswith("rank_") == rank and not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def benchmark_averages(metrics: Mapping[str, Mapping[str, float]], benchmarks: Mapping[str, str | None]
                       ) -> dict[str, float]:
    """{"glue": ..., "super_glue": ..., "overall": ...}: mean over tasks of each task's mean metric.

    A benchmark appears only when at least one of its tasks was evaluated; "overall" averages every task.
    """
    per_bench: dict[str, list[float]] = {}
    scores = []
    for task, values in metrics.items():
        score = task_score(values)
        if math.isnan(score):
            continue
        scores.append(score)
        bench = benchmarks.get(task)
        if bench:
            per_bench.setdefault(bench, []).append(score)
    out = {bench: float(np.mean(v)) for bench, v in sorted(per_bench.items())}
    out["overall"] = float(np.mean(scores)) if scores else float("nan")
    return out


def format_metrics_table(after: Mapping[str, Mapping[str, float]],
                         before: Mapping[str, Mapping[str, float]] | None = None,
                         averages: Mapping[str, float] | None = None,
                         averages_before: Mapping[str, float] | None = None) -> str:
    """A Markdown table: one row per (task, metric), with the step-0 value when `before` is given."""
    header = "| task | metric | before | after |\n|---|---|---:|---:|" if before is not None else \
        "| task | metric | value |\n|---|---|---:|"
    rows = [header]

    def fmt(v: float | None) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    for task in sorted(after):
        for metric in sorted(after[task]):
            if before is not None:
                rows.append(f"| {task} | {metric} | {fmt(before.get(task, {}).get(metric))} | {fmt(after[task][metric])} |")
            else:
                rows.append(f"| {task} | {metric} | {fmt(after[task][metric])} |")
    for name, value in (averages or {}).items():
        if before is not None:
            rows.append(f"| **average** | {name} | {fmt((averages_before or {}).get(name))} | {fmt(value)} |")
        else:
            rows.append(f"| **average** | {name} | {fmt(value)} |")
    return "\n".join(rows)


def gather_predictions(local: Mapping[str, list[tuple[int, Any, Any]]]) -> dict[str, dict[int, tuple[Any, Any]]]:
    """Merge every rank's (index, prediction, rank prediction) lists (all_gather_object under torch.distributed)."""
    parts: list[Mapping[str, list[tuple[int, Any, Any]]]] = [local]
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, dict(local))
        parts = gathered
    merged: dict[str, dict[int, tuple[Any, Any]]] = {}
    for part in parts:
        for task, rows in part.items():
            bucket = merged.setdefault(task, {})
            for index, pred, rank_pred in rows:
                bucket[int(index)] = (pred, rank_pred)
    return merged

