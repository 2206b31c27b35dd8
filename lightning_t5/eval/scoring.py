"""How a task's metrics become one score, and task scores a benchmark average (T5's rule): the one place.

A task's score is the mean of its metrics (MRPC: accuracy and F1 count once together); a benchmark average (GLUE,
SuperGLUE) is the mean of its tasks' scores; "overall" averages every task.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

__all__ = ["benchmark_averages", "task_score"]


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
