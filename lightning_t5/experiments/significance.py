"""Intervals and significance for an experiment's results table (the statistics live in `lightning_t5.eval.stats`).

Why here: the results table compares rows, and a difference means something only when it is larger than what
re-drawing the evaluation examples would produce. For every finished row this adds, from the per-example
predictions each stage wrote (`<stage>/predictions/<task>.jsonl`):

* `ci`: a 95 % bootstrap interval of every metric, and `averages_ci` / `rank_averages_ci` of every benchmark average
  and the overall average (each task resampled on its own examples, the task scores averaged per resample);
* `vs_baseline_averages`: a paired permutation test of each of the row's averages (every benchmark and "overall")
  against the baseline row (pretrain_finetune, the sweep's baseline, else the first row), seeds paired,
  Holm-adjusted over the rows within each average; `vs_baseline` is the one of the ranking average;
* `task_tests`: the same per task (Holm over the rows within each task), and `vs_majority`: each task score and each
  metric against the constant majority-class prediction (Holm over the rows within each task / metric);
* `pairwise`: the tests between every two finished rows (each average, Holm over the pairs within each), so a sweep's
  rows can be compared with each other and "Ordering vs. the paper" can count only the pairs the data separates.

Every score, replicate and difference is a `lightning_t5.eval.scoring` task score (an undefined correlation counts
as 0). The tests hold the trained models fixed: they ask whether another draw of evaluation examples could explain a
difference, not whether another training run would (see docs/experiments.md).
"""

from __future__ import annotations

import logging
from itertools import combinations
from typing import Any, Mapping, Sequence

import numpy as np

from lightning_t5.eval.evaluation import read_predictions
from lightning_t5.eval.scoring import OVERALL, average_replicates
from lightning_t5.eval.stats import (
    ALPHA,
    N_RESAMPLES,
    bootstrap,
    holm,
    paired_test,
    permutation_p_value,
    percentile_ci,
)

from .plan import ExperimentPlan

log = logging.getLogger(__name__)

__all__ = ["add_statistics", "average_names", "baseline_key", "TEST_NAME"]

TEST_NAME = "paired permutation test over evaluation examples (seeds paired), Holm-adjusted"
_BENCH_ORDER = ("glue", "super_glue")


def baseline_key(keys: Sequence[str]) -> str | None:
    """The row every other row is tested against: pre-train + fine-tune, the sweep's baseline, else the first."""
    for k in ("pretrain_finetune", "baseline"):
        if k in keys:
            return k
    return keys[0] if keys else None


def average_names(tasks: Sequence[str], benchmarks: Mapping[str, str | None]) -> list[str]:
    """The averages a table shows: GLUE, SuperGLUE, any other benchmark of the tasks, then "overall"."""
    present = list(dict.fromkeys(b for t in tasks if (b := benchmarks.get(t))))
    return [b for b in _BENCH_ORDER if b in present] + [b for b in present if b not in _BENCH_ORDER] + [OVERALL]


def _members(avg: str, tasks: Sequence[str], benchmarks: Mapping[str, str | None]) -> list[str]:
    return [t for t in tasks if avg == OVERALL or benchmarks.get(t) == avg]


class _Predictions:
    """Per (row, task): targets and [seeds][examples] generated / rank / majority predictions, read once."""

    def __init__(self, plan: ExperimentPlan, stage_results: Mapping[str, Mapping[str, Any]]) -> None:
        self.data: dict[tuple[str, str], dict[str, Any]] = {}
        for row in plan.rows:
            for task in plan.tasks:
                seeds = []
                for _, mapping in row.eval_stages():
                    res = stage_results.get(mapping.get(task, "")) or {}
                    recs = read_predictions(res["run_dir"], task) if res.get("run_dir") else None
                    if not recs:
                        break
                    seeds.append(recs)
                else:
                    targets = [r["target"] for r in seeds[0]]
                    if any([r["target"] for r in s] != targets for s in seeds):
                        log.warning("row %s task %s: seeds evaluated different examples; no intervals", row.key, task)
                        continue
                    gen = [[r["prediction"] for r in s] for s in seeds]
                    rank = ([[r["rank_prediction"] for r in s] for s in seeds] if "rank_prediction" in seeds[0][0]
                            else None)
                    self.data[(row.key, task)] = {
                        "targets": targets,
                        "gen": gen,
                        "rank": rank,
                        "majority": [[r["majority_prediction"] for r in seeds[0]]] if "majority_prediction" in
                        seeds[0][0] else None,
                    }

    def get(self, key: str, task: str) -> dict[str, Any] | None:
        return self.data.get((key, task))

    @staticmethod
    def scored(d: Mapping[str, Any], rank: bool) -> list[list[Any]]:
        """The predictions behind a task score: rank-classified with `rank`, generated for a task that has none
        (the rule of `scoring.score_metric_names`)."""
        return d["rank"] if rank and d["rank"] is not None else d["gen"]


def _task_seed(task: str) -> int:
    """A fixed per-task seed so the resamples of different tasks are independent but reproducible."""
    return sum((i + 1) * ord(c) for i, c in enumerate(task)) % (2**31)


def _test(diff: float, null: np.ndarray) -> dict[str, Any]:
    return {"diff": diff, "p": permutation_p_value(diff, null), "permutations": int(np.isfinite(null).sum())}


def _combine(per_task: Mapping[str, tuple[float, np.ndarray]], averages: Sequence[str], tasks: Sequence[str],
             benchmarks: Mapping[str, str | None]) -> dict[str, dict[str, Any]]:
    """Per-task (difference, null) -> a test of each average whose tasks all have one (the per-task differences and
    permutation replicates averaged by `scoring.average_replicates`, the rule of the averages themselves)."""
    observed = average_replicates({t: v[0] for t, v in per_task.items()}, benchmarks)
    nulls = average_replicates({t: v[1] for t, v in per_task.items()}, benchmarks)
    return {avg: _test(float(observed[avg][0]), nulls[avg]) for avg in averages
            if (members := _members(avg, tasks, benchmarks)) and all(t in per_task for t in members)}


def _adjust(tests: Mapping[str, dict[str, Any]], flag: str = "significant") -> None:
    """Holm over the tests of one family (in place): `p_holm` and the flag (p_holm < ALPHA)."""
    for key, adj in holm({k: t["p"] for k, t in tests.items()}).items():
        tests[key]["p_holm"], tests[key][flag] = adj, adj is not None and adj < ALPHA


def add_statistics(out: dict[str, Any], plan: ExperimentPlan, stage_results: Mapping[str, Mapping[str, Any]],
                   metric_fns: Mapping[str, Sequence[Any]], field: str) -> None:
    """Add intervals and tests to the results dict `out` in place (see the module docstring)."""
    preds = _Predictions(plan, stage_results)
    if not preds.data:
        return
    rank = field == "rank_averages"
    bench_key = out.get("ranking_metric") or OVERALL
    benchmarks = out["benchmarks"]
    tasks = list(plan.tasks)
    averages = average_names(tasks, benchmarks)
    rows = {r["key"]: r for r in out["rows"] if r["status"] == "done"}

    # Intervals of every metric and of every average.
    for key, row in rows.items():
        row["ci"], reps = {}, {False: {}, True: {}}
        for task in tasks:
            d, fns = preds.get(key, task), metric_fns.get(task)
            if d is None or not fns:
                continue
            gen_ci, reps[False][task] = bootstrap(fns, d["targets"], d["gen"], seed=_task_seed(task))
            row["ci"][task] = {k: v["ci"] for k, v in gen_ci.items()}
            reps[True][task] = reps[False][task]  # a task without label choices: its rank score is the generated one
            if d["rank"] is not None:  # same seed: the same resamples as the generation scores
                rank_ci, reps[True][task] = bootstrap(fns, d["targets"], d["rank"], seed=_task_seed(task))
                row["ci"][task].update({f"rank_{k}": v["ci"] for k, v in rank_ci.items()})
        for use_rank, name in ((False, "averages_ci"), (True, "rank_averages_ci")):
            row[name] = _average_cis(reps[use_rank], averages, tasks, benchmarks)

    # Paired tests against the baseline (every average and per task) and against the majority class.
    base = baseline_key(list(rows))
    out["baseline"] = base
    out["test"] = {"name": TEST_NAME, "alpha": ALPHA, "permutations": N_RESAMPLES, "metric": bench_key,
                   "scores": field, "averages": averages}
    avg_tests: dict[str, dict[str, dict[str, Any]]] = {avg: {} for avg in averages}
    task_tests: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in tasks}
    maj_tests: dict[tuple[str, str | None], dict[str, dict[str, Any]]] = {}
    for key, row in rows.items():
        row["task_tests"], row["vs_majority"] = {}, {}
        diffs: dict[str, tuple[float, np.ndarray]] = {}
        for task in tasks:
            d, fns = preds.get(key, task), metric_fns.get(task)
            if d is None or not fns:
                continue
            mine = _Predictions.scored(d, rank)
            if d["majority"] is not None:
                row["vs_majority"][task] = _vs_majority(fns, d, mine, rank, task)
                maj_tests.setdefault((task, None), {})[key] = row["vs_majority"][task]
                for metric, test in row["vs_majority"][task]["metrics"].items():
                    maj_tests.setdefault((task, metric), {})[key] = test
            b = preds.get(base, task) if base and key != base else None
            if b is None or b["targets"] != d["targets"]:
                continue
            test = paired_test(fns, d["targets"], mine, _Predictions.scored(b, rank), seed=_task_seed(task))
            diffs[task] = (test.diff, test.null)
            row["task_tests"][task] = task_tests[task][key] = _test(test.diff, test.null)
        if key != base:
            row["vs_baseline_averages"] = {}
            for avg, t in _combine(diffs, averages, tasks, benchmarks).items():
                row["vs_baseline_averages"][avg] = avg_tests[avg][key] = {**t, "metric": avg, "scores": field}
    for family in (*avg_tests.values(), *task_tests.values(), *maj_tests.values()):
        _adjust(family)
    for key, row in rows.items():
        if bench_key in (row.get("vs_baseline_averages") or {}):
            row["vs_baseline"] = row["vs_baseline_averages"][bench_key]
    out["pairwise"] = _pairwise(preds, tasks, rows, metric_fns, averages, benchmarks, bench_key, rank)


def _vs_majority(fns: Sequence[Any], d: Mapping[str, Any], mine: list[list[Any]], rank: bool, task: str
                 ) -> dict[str, Any]:
    """The row's task score and each metric (generated and `rank_`) against the majority-class predictions."""
    majority = d["majority"]
    test = paired_test(fns, d["targets"], mine, majority * len(mine), seed=_task_seed(task))
    out = {**_test(test.diff, test.null), "metrics": {}}
    arms = [("", d["gen"])] + ([("rank_", d["rank"])] if d["rank"] is not None else [])
    for prefix, preds in arms:
        per_metric = test.metrics if preds is mine else paired_test(fns, d["targets"], preds, majority * len(preds),
                                                                    seed=_task_seed(task)).metrics
        out["metrics"].update({prefix + m: _test(diff, null) for m, (diff, null) in per_metric.items()})
    return out


def _average_cis(reps: Mapping[str, np.ndarray], averages: Sequence[str], tasks: Sequence[str],
                 benchmarks: Mapping[str, str | None]) -> dict[str, list[float | None]]:
    """Interval of each average whose tasks all have replicates (`scoring.average_replicates` per resample)."""
    combined = average_replicates(dict(reps), benchmarks)
    return {avg: list(percentile_ci(combined[avg])) for avg in averages
            if (members := _members(avg, tasks, benchmarks)) and all(t in reps for t in members)}


def _pairwise(preds: _Predictions, tasks: Sequence[str], rows: Mapping[str, Mapping[str, Any]],
              metric_fns: Mapping[str, Sequence[Any]], averages: Sequence[str], benchmarks: Mapping[str, str | None],
              bench_key: str, rank: bool) -> list[dict[str, Any]]:
    """Paired tests of every average between every two finished rows (Holm over the pairs within each average).

    Each entry: {"a", "b", "averages": {avg: {"diff" (a - b), "p", "p_holm", "separable"}}} and, at its top level,
    the fields of the ranking average (`bench_key`)."""
    result: dict[str, dict[str, Any]] = {}
    families: dict[str, dict[str, dict[str, Any]]] = {avg: {} for avg in averages}
    for a, b in combinations(list(rows), 2):
        per_task: dict[str, tuple[float, np.ndarray]] = {}
        for task in tasks:
            da, db, fns = preds.get(a, task), preds.get(b, task), metric_fns.get(task)
            if da is None or db is None or not fns or da["targets"] != db["targets"]:
                continue
            test = paired_test(fns, da["targets"], _Predictions.scored(da, rank), _Predictions.scored(db, rank),
                               seed=_task_seed(task))
            per_task[task] = (test.diff, test.null)
        tests = _combine(per_task, averages, tasks, benchmarks)
        if not tests:
            continue
        name = f"{a}|{b}"
        result[name] = {"a": a, "b": b, "averages": tests}
        for avg, t in tests.items():
            families[avg][name] = t
    for family in families.values():
        _adjust(family, "separable")
    for entry in result.values():
        entry.update(entry["averages"].get(bench_key) or {})
    return list(result.values())
