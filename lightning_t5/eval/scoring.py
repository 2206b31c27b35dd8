"""How a task's metrics become one score, and task scores a benchmark average (T5's rule): the one place.

Every number that ranks or compares runs goes through here: a run's `metrics.json` and `results.md`,
`python -m lightning_t5.evaluate`, the experiment tables, and every bootstrap and permutation replicate
(`lightning_t5.eval.stats` calls the array forms below on its replicates, so a point estimate and its interval
follow the same rule).

* A task's score is the mean of its metrics (MRPC: accuracy and F1 count once together). `rank=True` takes the
  rank-classification metrics (`rank_*`), or the generation metrics of a task that has no label choices to rank
  (ReCoRD, SQuAD, translation), so both kinds of average are taken over the same tasks.
* An undefined correlation counts as 0: Pearson, Spearman or MCC of a constant prediction (or a constant resample)
  has no correlation, and scipy says NaN. Scoring it 0 keeps the task in its average instead of comparing averages
  over different tasks, and gives a constant-predicting row (the majority class) a finite score, interval and test.
* Any other undefined metric (NaN, None) is left out of its task's mean; a task with no defined metric is left out
  of the averages.
* A benchmark average (GLUE, SuperGLUE, or any `task.benchmark`) is the mean of its tasks' scores; "overall"
  averages every task.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "OVERALL",
    "is_score",
    "metric_score",
    "metric_scores",
    "score_metric_names",
    "task_score",
    "task_score_replicates",
    "average_replicates",
    "benchmark_averages",
]

OVERALL = "overall"
_NOT_SCORES = ("loss", "num_examples", "examples", "n")
_UNDEFINED_IS_ZERO = "corrcoef"  # metric names ending so: pearson_, spearman_, matthews_corrcoef


def is_score(metric: str) -> bool:
    """Whether a metrics-dict key is a score that enters the task's mean (a loss or a count is not)."""
    return not (metric in _NOT_SCORES or metric.endswith("_loss") or metric.startswith("num_"))


def metric_scores(metric: str, values: Any) -> np.ndarray:
    """`values` (a scalar or an array of replicates) as scores: an undefined correlation becomes 0, any other
    undefined value stays NaN (float64 array, same shape)."""
    out = np.array(values, dtype=np.float64)  # None -> NaN
    if metric.endswith(_UNDEFINED_IS_ZERO):
        out = np.where(np.isfinite(out), out, 0.0)
    return out


def metric_score(metric: str, value: Any) -> float | None:
    """One metric value as a score (see `metric_scores`); None when undefined."""
    try:
        v = float(metric_scores(metric, value if value is not None else math.nan))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def score_metric_names(metrics: Mapping[str, Any], rank: bool = False) -> list[str]:
    """The keys of `metrics` that make the task's score: generation metrics, or with `rank` the `rank_*` ones (the
    generation ones for a task without rank-classification metrics)."""
    names = [k for k in metrics if is_score(k) and k.startswith("rank_") == rank]
    if rank and not names:
        names = [k for k in metrics if is_score(k) and not k.startswith("rank_")]
    return names


def _stack(arrays: Sequence[Any]) -> np.ndarray:
    """[k, B] of k replicate arrays. Their lengths may differ (a metric scored by its own function in a loop gets
    fewer resamples than a vectorised one); each keeps its first B = the shortest length. Replicate b of every array
    is an independent draw, so the first B of each are a valid set of B joint draws."""
    arrays = [np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in arrays]
    b = min(len(a) for a in arrays)
    return np.stack([a[:b] for a in arrays])


def _mean_defined(arrays: Sequence[Any]) -> np.ndarray:
    """Mean over the arrays of their defined (finite) values, per replicate; NaN where none is defined."""
    if not arrays:
        return np.full(1, np.nan)
    stacked = _stack(arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": NaN is the answer
        return np.nanmean(np.where(np.isfinite(stacked), stacked, np.nan), axis=0)


def task_score_replicates(metrics: Mapping[str, Any]) -> np.ndarray:
    """[B] task scores from {metric: value or [B] replicates}: the mean of the score metrics, each by the undefined
    rule of `metric_scores`. The one computation behind `task_score`, every interval and every test."""
    return _mean_defined([metric_scores(k, v) for k, v in metrics.items() if is_score(k)])


def task_score(metrics: Mapping[str, Any], rank: bool = False) -> float | None:
    """T5's per-task score (0-100): the mean of the task's generation metrics, or of its `rank_` metrics with
    `rank` (see `score_metric_names`); None when no metric is defined."""
    names = score_metric_names(metrics, rank)
    if not names:
        return None
    values = {k: math.nan if metrics[k] is None else metrics[k] for k in names}
    v = float(task_score_replicates(values)[0])
    return v if math.isfinite(v) else None


def average_replicates(scores: Mapping[str, Any], benchmarks: Mapping[str, str | None]) -> dict[str, np.ndarray]:
    """{benchmark: [B], ..., "overall": [B]} from task -> task score (a value or [B] replicates): each benchmark
    with at least one task in `scores` averages its tasks' defined scores; "overall" averages every task."""
    groups: dict[str, list[Any]] = {}
    for task, value in scores.items():
        bench = benchmarks.get(task)
        if bench:
            groups.setdefault(bench, []).append(value)
    out = {bench: _mean_defined(values) for bench, values in sorted(groups.items())}
    out[OVERALL] = _mean_defined(list(scores.values()))
    return out


def benchmark_averages(metrics: Mapping[str, Mapping[str, Any]], benchmarks: Mapping[str, str | None],
                       rank: bool = False) -> dict[str, float]:
    """{"glue": ..., "super_glue": ..., "overall": ...} (NaN where no task of it has a score): the mean over each
    benchmark's tasks of their `task_score`."""
    scores = {task: math.nan if (s := task_score(values, rank)) is None else s for task, values in metrics.items()}
    return {bench: float(v[0]) for bench, v in average_replicates(scores, benchmarks).items()}
