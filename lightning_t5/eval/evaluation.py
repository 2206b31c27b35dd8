"""Per-task evaluation: generation -> task postprocessor -> task metrics, rank classification, benchmark averages.

The evaluation follows seqio/T5: every task is scored on its own validation split with its own metric functions on
the *postprocessed* prediction and target strings; a benchmark score (GLUE, SuperGLUE) averages each task's metrics
first and then the tasks, so a task with two metrics (MRPC: accuracy and F1) counts once.

Examples are sharded by rank (example i goes to rank i % world_size) and the predictions are gathered by example
index before scoring, so DDP evaluation scores the same examples, in the same order, as one process.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from lightning_t5.eval.scoring import benchmark_averages, metric_scores
from lightning_t5.eval.stats import (
    ALPHA,
    LEVEL,
    N_RESAMPLES,
    bootstrap_ci,
    json_safe,
    paired_test,
    permutation_p_value,
)
from tasks.utils import write_text_atomic

log = logging.getLogger(__name__)

__all__ = [
    "TaskEvaluator",
    "EvalDataset",
    "collate_eval",
    "format_metrics_table",
    "gather_predictions",
    "evaluate_predictions",
    "majority_prediction",
    "write_predictions",
    "eval_details",
    "render_run_results",
    "write_json",
    "scored_metrics",
    "MAJORITY_TRAIN_EXAMPLES",
]

# Training examples read to find a task's majority class (label distribution of the train split).
MAJORITY_TRAIN_EXAMPLES = 100_000


def scored_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A task's metrics as reported everywhere: floats, an undefined correlation (constant predictions) as 0 (the
    rule of `lightning_t5.eval.scoring`), any other undefined value as NaN (null in JSON)."""
    return {k: float(metric_scores(k, v)) for k, v in metrics.items()}


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
        # target lengths in tokens incl. EOS: what generation must be allowed to produce (eval.max_new_tokens)
        self.target_lengths = np.array([len(ids) + 1 for ids in vocab.encode_batch([ex["targets"] for ex in
                                                                                    self.examples])])
        self.max_new_tokens: int | None = None  # the generation length used (set by `generation_length`)
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
    def generation_length(self, max_new_tokens: int | None, target_cap: int | None = None) -> int:
        """Tokens to generate: `max_new_tokens`, or when None the longest target of the evaluation examples
        (capped by `target_cap`, the training target length). An explicit value shorter than some targets is
        allowed but warned about once, with the share of targets it cuts."""
        if self.max_new_tokens is None:
            longest = int(self.target_lengths.max())
            if max_new_tokens is None:
                self.max_new_tokens = min(longest, int(target_cap)) if target_cap else longest
            else:
                self.max_new_tokens = int(max_new_tokens)
                cut = float((self.target_lengths > self.max_new_tokens).mean())
                if cut > 0:
                    log.warning("%s/%s: eval.max_new_tokens=%d is shorter than %.1f%% of the targets (longest %d "
                                "tokens incl. EOS): those predictions are cut; set eval.max_new_tokens=null to derive "
                                "it from the targets", self.name, self.split, self.max_new_tokens, 100 * cut, longest)
        return self.max_new_tokens

    @torch.no_grad()
    def predict(self, model: Any, batch: Mapping[str, torch.Tensor], *, max_new_tokens: int | None = None,
                num_beams: int = 1, target_cap: int | None = None) -> list[tuple[int, Any, Any, str]]:
        """(example index, postprocessed generated prediction, postprocessed rank-classification prediction,
        generated text before postprocessing)."""
        out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=self.generation_length(max_new_tokens, target_cap), num_beams=num_beams)
        vocab = self.task.vocabulary
        indices = batch["index"].tolist()
        texts = [vocab.decode(row) for row in out.tolist()]
        ranked = self.rank_classify(model, batch) if self.choice_ids is not None else [None] * len(indices)
        results = []
        for index, text, choice in zip(indices, texts, ranked):
            example = self.examples[index]
            pred = self.task.postprocess(text, example=example, is_target=False)
            rank_pred = None if choice is None else self.task.postprocess(choice, example=example, is_target=False)
            results.append((index, pred, rank_pred, text))
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

    def compute(self, predictions: Mapping[int, tuple[Any, ...]]) -> dict[str, float]:
        """Task metrics over all examples (`predictions`: index -> (generated, rank-classified[, text])).

        Rank-classification metrics are reported with a `rank_` prefix, next to the generation metrics.
        """
        missing = [i for i in range(len(self.examples)) if i not in predictions]
        if missing:
            raise RuntimeError(f"Evaluation of {self.name!r} is missing predictions for {len(missing)} examples "
                               f"(first: {missing[:5]}); were all ranks' predictions gathered?")
        order = range(len(self.examples))
        with warnings.catch_warnings():  # scipy's ConstantInputWarning: an undefined correlation, scored as 0
            warnings.simplefilter("ignore")
            metrics = scored_metrics(self.task.compute_metrics(self.targets, [predictions[i][0] for i in order]))
            if self.choice_ids is not None:
                ranked = scored_metrics(self.task.compute_metrics(self.targets, [predictions[i][1] for i in order]))
                metrics.update({f"rank_{k}": v for k, v in ranked.items()})
        return metrics

    def confidence_intervals(self, predictions: Mapping[int, tuple[Any, ...]]) -> dict[str, list[float | None]]:
        """{metric: [lo, hi]}: 95 % percentile-bootstrap interval of each metric over the evaluation examples."""
        order = range(len(self.examples))
        fns = self.task.metric_fns
        out = {k: v["ci"] for k, v in bootstrap_ci(fns, self.targets, [[predictions[i][0] for i in order]]).items()}
        if self.choice_ids is not None:
            ranked = bootstrap_ci(fns, self.targets, [[predictions[i][1] for i in order]])
            out.update({f"rank_{k}": v["ci"] for k, v in ranked.items()})
        return out

    def majority(self) -> dict[str, Any] | None:
        """The constant-prediction reference, predicted for every example and scored with the task's own metrics
        ({"prediction", "metrics", "source"}): the train split's most frequent target, or, for a task without a
        train split (an eval-only task), the most frequent target of the evaluated examples themselves (source =
        the eval split: an optimistic reference, as it knows the evaluation labels). Cached."""
        if not hasattr(self, "_majority"):
            self._majority = None
            source = "train"
            label = majority_prediction(self.task, source)
            if label is None and source not in getattr(self.task, "splits", []):
                source = self.split
                counts = collections.Counter(ex["targets"] for ex in self.examples)
                label = counts.most_common(1)[0][0] if counts else None
            if label is not None:
                preds = [self.task.postprocess(label, example=ex, is_target=False) for ex in self.examples]
                self._majority_predictions = preds
                with warnings.catch_warnings():  # a constant prediction has no correlation: scored as 0
                    warnings.simplefilter("ignore")
                    metrics = scored_metrics(self.task.compute_metrics(self.targets, preds))
                if self.choice_ids is not None:
                    metrics.update({f"rank_{k}": v for k, v in list(metrics.items())})
                self._majority = {"prediction": label, "metrics": metrics, "source": source}
        return self._majority

    def majority_tests(self, predictions: Mapping[int, tuple[Any, ...]]) -> dict[str, dict[str, Any]]:
        """{metric: {"diff", "p", "above"}}: a paired permutation test of each metric (generated and `rank_`)
        against the majority-class predictions on the same examples; `above` = significantly higher (p < 0.05).
        This, not a comparison of point estimates, decides the "≤ majority" flag."""
        if self.majority() is None:
            return {}
        order = range(len(self.examples))
        arms = [("", [predictions[i][0] for i in order])]
        if self.choice_ids is not None:
            arms.append(("rank_", [predictions[i][1] for i in order]))
        out = {}
        for prefix, preds in arms:
            tests = paired_test(self.task.metric_fns, self.targets, [preds], [self._majority_predictions])
            for name, (diff, null) in tests.metrics.items():
                p = permutation_p_value(diff, null)
                out[prefix + name] = {"diff": diff, "p": p, "above": p is not None and diff > 0 and p < ALPHA}
        return out

    def records(self, predictions: Mapping[int, tuple[Any, ...]]) -> list[dict[str, Any]]:
        """One JSON-able row per example: inputs, raw target, postprocessed target and predictions."""
        rows = []
        for i, ex in enumerate(self.examples):
            pred = predictions[i]
            row = {"index": i, "inputs": ex["inputs"], "targets": ex["targets"], "target": self.targets[i],
                   "prediction": pred[0]}
            if len(pred) > 2:
                row["generated"] = pred[2]
            if self.choice_ids is not None:
                row["rank_prediction"] = pred[1]
            if getattr(self, "_majority_predictions", None) is not None:
                row["majority_prediction"] = self._majority_predictions[i]
            rows.append(row)
        return rows


# ---------------------------------------------------------------------------------------------------------------
def format_metrics_table(after: Mapping[str, Mapping[str, float]],
                         before: Mapping[str, Mapping[str, float]] | None = None,
                         averages: Mapping[str, float] | None = None,
                         averages_before: Mapping[str, float] | None = None,
                         ci: Mapping[str, Mapping[str, Sequence[float | None]]] | None = None,
                         counts: Mapping[str, int] | None = None,
                         majority: Mapping[str, Mapping[str, Any] | None] | None = None) -> str:
    """A Markdown table: one row per (task, metric), with the step-0 value when `before` is given, the evaluation
    example count `n`, the 95 % bootstrap interval, and the majority-class score with a flag when the score is not
    significantly above it (a model that learned nothing scores exactly that). The flag comes from the paired test
    against the majority predictions (`majority[task]["tests"]`, see `TaskEvaluator.majority_tests`), else from the
    interval (flagged when its lower end does not clear the majority score), never from the point estimates."""
    head = [("task", "---"), ("metric", "---")]
    head += [("n", "---:")] if counts is not None else []
    head += [("before", "---:")] if before is not None else []
    head += [("after" if before is not None else "value", "---:")]
    head += [("95% CI", "---:")] if ci is not None else []
    head += [("majority class", "---:"), ("", "---")] if majority is not None else []
    rows = ["| " + " | ".join(h for h, _ in head) + " |", "|" + "|".join(a for _, a in head) + "|"]

    def fmt(v: float | None) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    for task in sorted(after):
        maj = ((majority or {}).get(task) or {}).get("metrics", {})
        for metric in sorted(after[task]):
            value = after[task][metric]
            cells = [task, metric]
            if counts is not None:
                cells.append(str(counts.get(task, "—")))
            if before is not None:
                cells.append(fmt(before.get(task, {}).get(metric)))
            cells.append(fmt(value))
            if ci is not None:
                lo, hi = (list((ci.get(task) or {}).get(metric) or [None, None]) + [None, None])[:2]
                cells.append(f"[{fmt(lo)}, {fmt(hi)}]" if lo is not None else "—")
            if majority is not None:
                m = maj.get(metric)
                m = None if m is None or (isinstance(m, float) and math.isnan(m)) else m
                cells.append(fmt(m))
                cells.append("**≤ majority**" if _not_above_majority(majority.get(task), metric, m, ci, task)
                             else "")
            rows.append("| " + " | ".join(cells) + " |")
    pad = (1 if counts is not None else 0)
    for name, value in (averages or {}).items():
        cells = ["**average**", name] + [""] * pad
        if before is not None:
            cells.append(fmt((averages_before or {}).get(name)))
        cells.append(fmt(value))
        cells += [""] * (len(head) - len(cells))
        rows.append("| " + " | ".join(cells) + " |")
    notes = []
    refs = [m for m in (majority or {}).values() if m]
    if any(m.get("tests") for m in refs):
        notes.append("\"≤ majority\": not significantly above the majority class (paired permutation test against "
                     f"its predictions on the same examples, p ≥ {ALPHA}).")
    elif refs and ci:
        notes.append("\"≤ majority\": the interval's lower end does not clear the majority class.")
    for task in sorted(majority or {}):
        m = (majority or {}).get(task) or {}
        if m.get("source") not in (None, "train"):
            notes.append(f"Majority class of {task}: the most frequent target of its evaluated {m['source']} "
                         "examples (the task has no train split), an optimistic reference.")
    return "\n".join(rows) + ("\n\n" + "\n".join(notes) if notes else "")


def _not_above_majority(majority: Mapping[str, Any] | None, metric: str, reference: float | None,
                        ci: Mapping[str, Mapping[str, Sequence[float | None]]] | None, task: str) -> bool:
    """Whether a score is not shown to be above the majority class: by the paired test when the run recorded it,
    else by the interval (its lower end not above the majority score)."""
    if not majority or reference is None:
        return False
    test = (majority.get("tests") or {}).get(metric)
    if test is not None:
        return not test.get("above")
    lo = ((ci or {}).get(task) or {}).get(metric)
    return bool(lo) and lo[0] is not None and lo[0] <= reference + 1e-9


def majority_prediction(task: Any, split: str = "train", limit: int = MAJORITY_TRAIN_EXAMPLES) -> str | None:
    """The most frequent target string of `task`'s `split` (first `limit` examples); None without that split.

    This is the constant prediction a model that learned only the label distribution makes; scoring it with the
    task's metrics gives the chance level that every trained score must beat."""
    if split not in getattr(task, "splits", []):
        return None
    key = (task.name, id(task), split, limit)  # an experiment evaluates the same task in many stages of one process
    if key not in _MAJORITY_CACHE:
        counts = collections.Counter(ex["targets"] for ex in itertools.islice(task.text_examples(split), limit))
        _MAJORITY_CACHE[key] = counts.most_common(1)[0][0] if counts else None
    return _MAJORITY_CACHE[key]


_MAJORITY_CACHE: dict[tuple[Any, ...], str | None] = {}


def evaluate_predictions(evaluators: Sequence[TaskEvaluator], merged: Mapping[str, Mapping[int, tuple[Any, ...]]],
                         step: int) -> dict[str, Any]:
    """Metrics, benchmark averages, bootstrap intervals, example counts, majority-class scores and per-example
    records of one evaluation (what `T5LightningModule.last_eval` holds)."""
    metrics = {ev.name: ev.compute(merged.get(ev.name, {})) for ev in evaluators}
    averages = benchmark_averages(metrics, {ev.name: ev.benchmark for ev in evaluators})
    majority: dict[str, Any] = {}
    for ev in evaluators:
        try:
            ref = ev.majority()
            majority[ev.name] = None if ref is None else {**ref, "tests": ev.majority_tests(merged.get(ev.name, {}))}
        except Exception as err:  # a reference value must never fail an evaluation
            log.warning("majority class of %s not computed: %s", ev.name, err)
            majority[ev.name] = None
    return {
        "step": step, "metrics": metrics, "averages": averages,
        "ci": {ev.name: ev.confidence_intervals(merged.get(ev.name, {})) for ev in evaluators},
        "num_examples": {ev.name: len(ev.examples) for ev in evaluators},
        "max_new_tokens": {ev.name: ev.max_new_tokens for ev in evaluators},
        "split": evaluators[0].split if evaluators else None,
        "majority": majority,
        "records": {ev.name: ev.records(merged.get(ev.name, {})) for ev in evaluators},
    }


def eval_details(after: Mapping[str, Any] | None) -> dict[str, Any]:
    """The result-dict fields of an evaluation besides the metrics (written into metrics.json)."""
    after = after or {}
    return {"ci": after.get("ci", {}), "ci_level": LEVEL, "ci_resamples": N_RESAMPLES,
            "num_examples": after.get("num_examples", {}), "eval_split": after.get("split"),
            "max_new_tokens": after.get("max_new_tokens", {}),
            "majority": after.get("majority", {})}


def write_predictions(run_dir: str | Path, evaluation: Mapping[str, Any] | None) -> list[Path]:
    """`<run_dir>/predictions/<task>.jsonl`: inputs, targets and predictions of every evaluated example."""
    paths = []
    for task, rows in ((evaluation or {}).get("records") or {}).items():
        path = Path(run_dir) / "predictions" / f"{task}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(json_safe(row), allow_nan=False, default=str) + "\n")
        paths.append(path)
    return paths


def read_predictions(run_dir: str | Path, task: str) -> list[dict[str, Any]] | None:
    """The rows `write_predictions` wrote for `task`, or None when the run has none.

    JSON writes a tuple as a list: a grouped target's "group" (ReCoRD: (passage, query)) is made a tuple again, so
    the task's grouped metrics (`tasks.metrics.deduplicate_metric`) can use it as a key, as they did in the run."""
    path = Path(run_dir) / "predictions" / f"{task}.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        target = row.get("target")
        if isinstance(target, dict) and isinstance(target.get("group"), list):
            target["group"] = _as_tuple(target["group"])
    return rows


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def write_json(path: str | Path, payload: Any) -> None:
    """Standard JSON (NaN/inf written as null, `allow_nan=False`), written durably (`tasks.utils.write_text_atomic`:
    temp file, fsync, rename, fsync of the folder; an experiment's resume reads a stage's metrics.json as done)."""
    write_text_atomic(Path(path), json.dumps(json_safe(payload), indent=2, sort_keys=True, allow_nan=False,
                                             default=str))


def render_run_results(cfg: Any, result: Mapping[str, Any], with_before: bool) -> str:
    """results.md of one run: header with the real evaluation counts, the metrics table, truncation report."""
    counts = result.get("num_examples") or {}
    count_text = ", ".join(f"{t} {n}" for t, n in sorted(counts.items()))
    what = (f"Metrics on the {result.get('eval_split') or cfg.eval.split} split ({count_text} examples), with "
            f"95 % bootstrap intervals over the examples ({N_RESAMPLES} resamples; they hold this model fixed, "
            "see docs/experiments.md); \"majority class\" is the score of always predicting the train split's "
            "most frequent target (before = the untrained model at step 0; `rank_*` = rank classification)."
            if counts else "No task was evaluated (eval.tasks is empty, or the mixture has no supervised task).")
    header = (f"# Run {cfg.run_name}\n\nmixture `{cfg.mixture}`, model `{cfg.model.name}`, "
              f"{result['steps']} steps, {result['tokens']:,} effective tokens, {result['wall_time_s']:.0f} s. "
              f"{what}\n\n")
    table = format_metrics_table(result["metrics"], result["metrics_before"] if with_before else None,
                                 result["averages"], result["averages_before"] if with_before else None,
                                 ci=result.get("ci") or {}, counts=counts, majority=result.get("majority") or {}
                                 ) if result["metrics"] else ""
    gen = result.get("max_new_tokens") or {}
    gen_text = ("\nGenerated up to " + ", ".join(f"{t} {n}" for t, n in sorted(gen.items())) + " tokens per task "
                f"(eval.max_new_tokens={cfg.eval.max_new_tokens}; null = each task's longest target).\n") if gen else ""
    text = header + table + "\n" + gen_text
    trunc = result.get("truncation")
    if trunc:
        from lightning_t5.eval.truncation import render_truncation

        text += "\n" + render_truncation(trunc) + "\n"
    return text


def gather_predictions(local: Mapping[str, list[tuple[Any, ...]]]) -> dict[str, dict[int, tuple[Any, ...]]]:
    """Merge every rank's (index, prediction, rank prediction[, text]) lists (all_gather_object under
    torch.distributed)."""
    parts: list[Mapping[str, list[tuple[Any, ...]]]] = [local]
    if (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1):
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, dict(local))
        parts = gathered
    merged: dict[str, dict[int, tuple[Any, ...]]] = {}
    for part in parts:
        for task, rows in part.items():
            bucket = merged.setdefault(task, {})
            for index, *rest in rows:
                bucket[int(index)] = tuple(rest)
    return merged

