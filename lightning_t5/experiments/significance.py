"""Intervals and significance for an experiment's results table (the statistics live in `lightning_t5.eval.stats`).

Why here: the results table compares rows, and a difference means something only when it is larger than what
re-drawing the evaluation examples would produce. For every finished row this adds, from the per-example
predictions each stage wrote (`<stage>/predictions/<task>.jsonl`):

* `ci`: a 95 % bootstrap interval of every metric, and `averages_ci` / `rank_averages_ci` of the benchmark
  averages (each task resampled on its own examples, the task scores averaged per resample);
* `vs_baseline`: a paired permutation test of the row's benchmark average against the baseline row
  (pretrain_finetune, the sweep's baseline, else the first row), seeds paired, Holm-adjusted over the rows;
* `task_tests`: the same per task (Holm over the rows within each task), and `vs_majority`: each task score
  against the constant majority-class prediction (Holm over rows within each task);
* `pairwise`: the tests between rows that the paper orders, so "Ordering vs. the paper" can count only the pairs
  the data separates.
"""

from __future__ import annotations

import logging
from itertools import combinations
from typing import Any, Mapping, Sequence

import numpy as np

from lightning_t5.eval.evaluation import read_predictions
from lightning_t5.eval.stats import (
    ALPHA,
    N_RESAMPLES,
    bootstrap,
    holm,
    paired_permutation,
    permutation_p_value,
    percentile_ci,
)

from .plan import ExperimentPlan

log = logging.getLogger(__name__)

__all__ = ["add_statistics", "baseline_key", "TEST_NAME"]

TEST_NAME = "paired permutation test over evaluation examples (seeds paired), Holm-adjusted"


def baseline_key(keys: Sequence[str]) -> str | None:
    """The row every other row is tested against: pre-train + fine-tune, the sweep's baseline, else the first."""
    for k in ("pretrain_finetune", "baseline"):
        if k in keys:
            return k
    return keys[0] if keys else None


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
                    self.data[(row.key, task)] = {
                        "targets": targets,
                        "gen": [[r["prediction"] for r in s] for s in seeds],
                        "rank": [[r["rank_prediction"] for r in s] for s in seeds] if "rank_prediction" in seeds[0][0]
                        else None,
                        "majority": [[r["majority_prediction"] for r in seeds[0]]] if "majority_prediction" in
                        seeds[0][0] else None,
                    }

    def get(self, key: str, task: str) -> dict[str, Any] | None:
        return self.data.get((key, task))


def _names(metrics: Mapping[str, float], rank: bool) -> list[str]:
    return [k[5:] if rank else k for k in metrics if k.startswith("rank_") == rank]


def _task_seed(task: str) -> int:
    """A fixed per-task seed so the resamples of different tasks are independent but reproducible."""
    return sum((i + 1) * ord(c) for i, c in enumerate(task)) % (2**31)


def add_statistics(out: dict[str, Any], plan: ExperimentPlan, stage_results: Mapping[str, Mapping[str, Any]],
                   metric_fns: Mapping[str, Sequence[Any]], field: str) -> None:
    """Add intervals and tests to the results dict `out` in place (see the module docstring)."""
    preds = _Predictions(plan, stage_results)
    if not preds.data:
        return
    rank = field == "rank_averages"
    bench_key = out.get("ranking_metric") or "overall"
    benchmarks = out["benchmarks"]
    rows = {r["key"]: r for r in out["rows"] if r["status"] == "done"}

    # Intervals of every metric and of the benchmark averages.
    for key, row in rows.items():
        row["ci"], reps = {}, {False: {}, True: {}}
        for task in plan.tasks:
            d, fns = preds.get(key, task), metric_fns.get(task)
            if d is None or not fns:
                continue
            gen_ci, reps[False][task] = bootstrap(fns, d["targets"], d["gen"], seed=_task_seed(task))
            row["ci"][task] = {k: v["ci"] for k, v in gen_ci.items()}
            if d["rank"] is not None:  # same seed: the same resamples as the generation scores
                rank_ci, reps[True][task] = bootstrap(fns, d["targets"], d["rank"], seed=_task_seed(task))
                row["ci"][task].update({f"rank_{k}": v["ci"] for k, v in rank_ci.items()})
        for use_rank, name in ((False, "averages_ci"), (True, "rank_averages_ci")):
            row[name] = _average_cis(reps[use_rank], plan.tasks, benchmarks)

    # Paired tests against the baseline (benchmark average and per task) and against the majority class.
    base = baseline_key(list(rows))
    out["baseline"] = base
    out["test"] = {"name": TEST_NAME, "alpha": ALPHA, "permutations": N_RESAMPLES, "metric": bench_key,
                   "scores": field}
    bench_tasks = [t for t in plan.tasks if bench_key == "overall" or benchmarks.get(t) == bench_key]
    raw_avg: dict[str, float | None] = {}
    raw_task: dict[str, dict[str, float | None]] = {t: {} for t in plan.tasks}
    raw_maj: dict[str, dict[str, float | None]] = {t: {} for t in plan.tasks}
    tests: dict[str, dict[str, Any]] = {}
    for key, row in rows.items():
        row.setdefault("task_tests", {})
        row.setdefault("vs_majority", {})
        diffs = {}
        for task in plan.tasks:
            d = preds.get(key, task)
            fns = metric_fns.get(task)
            if d is None or not fns:
                continue
            mine = d["rank"] if rank and d["rank"] is not None else d["gen"]
            names = _names(row["metrics"].get(task, {}), rank)
            if d["majority"] is not None:
                obs, null = paired_permutation(fns, d["targets"], mine, d["majority"] * len(mine),
                                               names=names, seed=_task_seed(task))
                p = permutation_p_value(obs, null)
                row["vs_majority"][task] = {"diff": obs, "p": p}
                raw_maj[task][key] = p
            if key == base:
                continue
            b = preds.get(base, task) if base else None
            if b is None or b["targets"] != d["targets"]:
                continue
            theirs = b["rank"] if rank and b["rank"] is not None else b["gen"]
            obs, null = paired_permutation(fns, d["targets"], mine, theirs, names=names, seed=_task_seed(task))
            diffs[task] = (obs, null)
            p = permutation_p_value(obs, null)
            row["task_tests"][task] = {"diff": obs, "p": p}
            raw_task[task][key] = p
        if key != base and bench_tasks and all(t in diffs for t in bench_tasks):
            obs = float(np.mean([diffs[t][0] for t in bench_tasks]))
            null = np.mean(np.stack([diffs[t][1] for t in bench_tasks]), axis=0)
            tests[key] = {"diff": obs, "p": permutation_p_value(obs, null), "metric": bench_key, "scores": field}
            raw_avg[key] = tests[key]["p"]
    for key, adj in holm(raw_avg).items():
        tests[key]["p_holm"] = adj
        tests[key]["significant"] = adj is not None and adj < ALPHA
        rows[key]["vs_baseline"] = tests[key]
    for task in plan.tasks:
        for key, adj in holm(raw_task[task]).items():
            t = rows[key]["task_tests"][task]
            t["p_holm"], t["significant"] = adj, adj is not None and adj < ALPHA
        for key, adj in holm(raw_maj[task]).items():
            t = rows[key]["vs_majority"][task]
            t["p_holm"], t["significant"] = adj, adj is not None and adj < ALPHA
    out["pairwise"] = _pairwise(preds, plan, rows, metric_fns, bench_tasks, rank)


def _average_cis(reps: Mapping[str, np.ndarray], tasks: Sequence[str], benchmarks: Mapping[str, str | None]
                 ) -> dict[str, list[float | None]]:
    out = {}
    for bench in ("glue", "super_glue", "overall"):
        members = [t for t in tasks if bench == "overall" or benchmarks.get(t) == bench]
        if members and all(t in reps for t in members):
            b = min(len(reps[t]) for t in members)
            lo, hi = percentile_ci(np.mean(np.stack([reps[t][:b] for t in members]), axis=0))
            out[bench] = [lo, hi]
    return out


def _pairwise(preds: _Predictions, plan: ExperimentPlan, rows: Mapping[str, Mapping[str, Any]],
              metric_fns: Mapping[str, Sequence[Any]], bench_tasks: Sequence[str], rank: bool) -> list[dict[str, Any]]:
    """Paired tests of the benchmark average between every two rows that have the paper's number (Holm over them)."""
    keys = [k for k, r in rows.items() if r.get("paper")]
    raw: dict[str, float | None] = {}
    result: dict[str, dict[str, Any]] = {}
    for a, b in combinations(keys, 2):
        obs_all, nulls = [], []
        for task in bench_tasks:
            da, db, fns = preds.get(a, task), preds.get(b, task), metric_fns.get(task)
            if da is None or db is None or not fns or da["targets"] != db["targets"]:
                break
            pa = da["rank"] if rank and da["rank"] is not None else da["gen"]
            pb = db["rank"] if rank and db["rank"] is not None else db["gen"]
            obs, null = paired_permutation(fns, da["targets"], pa, pb, names=_names(rows[a]["metrics"][task], rank),
                                           seed=_task_seed(task))
            obs_all.append(obs)
            nulls.append(null)
        else:
            if not obs_all:
                continue
            obs = float(np.mean(obs_all))
            name = f"{a}|{b}"
            raw[name] = permutation_p_value(obs, np.mean(np.stack(nulls), axis=0))
            result[name] = {"a": a, "b": b, "diff": obs, "p": raw[name]}
    for name, adj in holm(raw).items():
        result[name]["p_holm"], result[name]["separable"] = adj, adj is not None and adj < ALPHA
    return list(result.values())
