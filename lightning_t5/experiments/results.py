"""Results of an experiment: one row per strategy (or mixing rate), a column per task metric and per benchmark
average, the compute each row used, and the T5 paper's numbers beside ours where the benchmark matches.

Scoring follows the paper (Section 2.7 / 3.1.4) through the one scoring function (`lightning_t5.eval.scoring`, also
behind each run's metrics.json): a task's score is the mean of its metrics (e.g. MRPC's F1 and accuracy, STS-B's
Pearson and Spearman; an undefined correlation counts as 0), a benchmark average (GLUE, SGLUE) is the mean of its
tasks' scores. Our averages are over the tasks the experiment ran, so they match the paper's benchmark only when
every task of the benchmark is in the experiment; the table says over how many tasks each average is taken.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from lightning_t5.eval.scoring import average_replicates, is_score, metric_score, task_score
from lightning_t5.eval.stats import json_safe

from .paper import BASELINE_STD, PAPER_CITATION, PAPER_COLUMNS, TABLE_11, TABLE_12, paper_row
from .plan import ExperimentPlan, Row
from .significance import add_statistics, average_names

# Full benchmark sizes (tasks that enter the paper's average) to say whether our average covers the benchmark.
BENCHMARK_TASK_COUNTS = {"glue": 8, "super_glue": 8}
BENCHMARK_NAMES = {"glue": "GLUE", "super_glue": "SGLUE", "overall": "overall"}
_KIND_TITLES = {"strategies": "Training strategies (T5 Table 12)", "mixing_sweep": "Mixing strategies (T5 Table 11)",
                "doremi": "Mixing weights from DoReMi", "mixing_search": "Mixing weights from a search",
                "mixing_methods": "Mixing methods: static, UniMax, ODM, DoReMi, search"}


def _bench_name(bench: str) -> str:
    return BENCHMARK_NAMES.get(bench, bench)


def _averages(tasks: list[str], scores: Mapping[str, float | None], benchmarks: Mapping[str, str | None]
              ) -> tuple[dict[str, float | None], dict[str, int]]:
    """Every average of the table (`average_names`) over the tasks that have a score (None when none has one),
    computed by `scoring.average_replicates`, and the number of tasks each one is meant to cover."""
    names = average_names(tasks, benchmarks)
    values = average_replicates({t: scores[t] if scores.get(t) is not None else math.nan for t in tasks
                                 if t in scores}, benchmarks)
    averages = {b: _finite(float(values[b][0])) if b in values else None for b in names}
    counts = {b: sum(1 for t in tasks if b == "overall" or benchmarks.get(t) == b) for b in names}
    return averages, counts


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else None


def _seed_metrics(row: Row, stage_results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """task -> one metrics dict per seed that finished (in the plan's seed order)."""
    out: dict[str, list[dict[str, float]]] = {}
    for _, mapping in row.eval_stages():
        for task, stage_name in mapping.items():
            m = ((stage_results.get(stage_name) or {}).get("metrics") or {}).get(task)
            if m:
                out.setdefault(task, []).append({k: float(v) if v is not None else math.nan
                                                 for k, v in m.items() if isinstance(v, (int, float)) or v is None})
    return out


def build_results(plan: ExperimentPlan, stage_results: Mapping[str, Mapping[str, Any]],
                  benchmarks: Mapping[str, str | None], include_paper: bool = True,
                  metric_fns: Mapping[str, Sequence[Any]] | None = None) -> dict[str, Any]:
    """Assemble the results dict (what results.json holds) from each stage's `fit` result.

    With `metric_fns` (task -> the task's metric functions) and the per-example predictions each stage wrote
    (`<run_dir>/predictions/<task>.jsonl`), every score gets a bootstrap interval and every row a paired test
    against the baseline (`lightning_t5.experiments.significance`)."""
    tasks = list(plan.tasks)
    metric_names: dict[str, list[str]] = {t: [] for t in tasks}
    rows = []
    n_seeds = max(1, len(plan.seeds))
    for row in plan.rows:
        per_seed = _seed_metrics(row, stage_results)
        metrics: dict[str, dict[str, float]] = {}
        metrics_std: dict[str, dict[str, float | None]] = {}
        for task, runs in per_seed.items():
            if len(runs) < n_seeds:
                continue
            names = [k for k in runs[0] if all(k in r for r in runs)]
            metrics[task] = {k: float(np.mean([r[k] for r in runs])) for k in names}
            metrics_std[task] = {k: (float(np.std([r[k] for r in runs], ddof=1)) if len(runs) > 1 else None)
                                 for k in names}
            for k in names:
                if is_score(k) and k not in metric_names[task]:
                    metric_names[task].append(k)
        scores = {t: task_score(m) for t, m in metrics.items()}
        rank_scores = {t: task_score(m, rank=True) for t, m in metrics.items()}
        averages, counts = _averages(tasks, scores, benchmarks)
        rank_averages, _ = _averages(tasks, rank_scores, benchmarks)
        seed_averages = []
        for i in range(n_seeds):
            seed_scores = {t: task_score(per_seed[t][i]) for t in metrics}
            seed_averages.append(_averages(tasks, seed_scores, benchmarks)[0])
        averages_std = {b: (float(np.std([a[b] for a in seed_averages], ddof=1))
                            if n_seeds > 1 and all(a.get(b) is not None for a in seed_averages) else None)
                        for b in averages}
        done = [s for s in row.stages if s in stage_results]
        compute = {
            "steps": sum(int(stage_results[s].get("steps") or 0) for s in done),
            "tokens": sum(int(stage_results[s].get("tokens") or 0) for s in done),
            "wall_time_s": round(sum(float(stage_results[s].get("wall_time_s") or 0.0) for s in done), 3),
            "stages": len(row.stages),
            "stages_finished": len(done),
        }
        num_examples: dict[str, int] = {}
        for _, mapping in row.eval_stages():
            for task, stage_name in mapping.items():
                n = ((stage_results.get(stage_name) or {}).get("num_examples") or {}).get(task)
                if n is not None:
                    num_examples[task] = int(n)
        rows.append({
            "key": row.key,
            "label": row.label,
            "status": ("done" if len(metrics) == len(row.eval_stage) else "incomplete" if done else "not run"),
            "seeds": list(plan.seeds) or None,
            "metrics": metrics,
            "metrics_std": metrics_std if n_seeds > 1 else {},
            "task_scores": scores,
            "averages": averages,
            "averages_std": averages_std if n_seeds > 1 else {},
            "rank_averages": rank_averages if any(v is not None for v in rank_averages.values()) else {},
            "average_task_counts": counts,
            "num_examples": num_examples,
            "compute": compute,
            "budget_steps_per_task": {t: plan.path_steps(s) for t, s in row.eval_stage.items()},
            "paper": dict(paper_row(plan.kind, row.key)) if include_paper else {},
        })
    out = {
        "experiment": plan.name,
        "kind": plan.kind,
        "description": plan.description,
        "tasks": tasks,
        "corpus_task": plan.corpus_task,
        "benchmarks": {t: benchmarks.get(t) for t in tasks},
        "pretrain_steps": plan.pretrain_steps,
        "finetune_steps": plan.finetune_steps,
        "seeds": list(plan.seeds) or None,
        "metric_columns": [[t, m] for t in tasks for m in metric_names[t]],
        "rows": rows,
        "paper_citation": PAPER_CITATION if include_paper else None,
        "paper_baseline_std": dict(BASELINE_STD) if include_paper else None,
    }
    finished = [s for s in plan.stages if s.name in stage_results]
    out["totals"] = {  # distinct stages: what the experiment really cost (shared stages counted once)
        "stages": len(plan.stages),
        "stages_finished": len(finished),
        "steps": sum(int(stage_results[s.name].get("steps") or 0) for s in finished),
        "tokens": sum(int(stage_results[s.name].get("tokens") or 0) for s in finished),
        "wall_time_s": round(sum(float(stage_results[s.name].get("wall_time_s") or 0.0) for s in finished), 3),
    }
    out["majority"] = majority_row(plan, stage_results, benchmarks)
    out["ranking_metric"] = _ranking_key(out)
    field = _score_field(out)
    if metric_fns:
        add_statistics(out, plan, stage_results, metric_fns, field)
    out["ordering"] = compare_ordering(out) if include_paper else None
    return out


def majority_row(plan: ExperimentPlan, stage_results: Mapping[str, Mapping[str, Any]],
                 benchmarks: Mapping[str, str | None]) -> dict[str, Any] | None:
    """The constant-prediction reference (train split's most frequent target, or the evaluated examples' for a task
    without a train split: `sources`), as evaluation recorded it."""
    metrics: dict[str, dict[str, float]] = {}
    sources: dict[str, str] = {}
    for res in stage_results.values():
        for task, maj in (res.get("majority") or {}).items():
            if task in plan.tasks and maj and task not in metrics:
                sources[task] = maj.get("source") or "train"
                metrics[task] = {k: value for k, v in (maj.get("metrics") or {}).items()
                                 if (value := metric_score(k, v)) is not None}
    if not metrics:
        return None
    scores = {t: task_score(m) for t, m in metrics.items()}
    averages, _ = _averages(list(plan.tasks), scores, benchmarks)
    rank_averages, _ = _averages(list(plan.tasks), {t: task_score(m, rank=True) for t, m in metrics.items()},
                                 benchmarks)
    return {"key": "majority_class", "label": "Majority class (reference)", "metrics": metrics, "task_scores": scores,
            "averages": averages, "rank_averages": rank_averages, "sources": sources}


def _ranking_key(results: Mapping[str, Any]) -> str:
    """Which average ranks rows against the paper: GLUE when our tasks include GLUE ones, else SGLUE/overall."""
    for bench in ("glue", "super_glue"):
        if any(b == bench for b in results["benchmarks"].values()):
            return bench
    return "overall"


def _score_field(results: Mapping[str, Any]) -> str:
    """"averages" (generated text, as the paper scores), or "rank_averages" when generation does not separate the
    rows (tiny models that generate no valid label yet) and rank-classification scores exist."""
    key = _ranking_key(results)
    gen = {r["averages"].get(key) for r in results["rows"] if r["averages"].get(key) is not None}
    if len(gen) <= 1 and any(r.get("rank_averages", {}).get(key) is not None for r in results["rows"]):
        return "rank_averages"
    return "averages"


def compare_ordering(results: Mapping[str, Any]) -> dict[str, Any]:
    """Does our ranking of the rows agree with the paper's? Compared on the rows that both have a number for.

    Returns {"metric", "ours": [keys best first], "paper": [...], "matches": bool | None, "pairs_agreeing":
    "a/b", "note"}; `matches` is None when fewer than two rows can be compared.
    """
    ours_key = _ranking_key(results)
    paper_key = ours_key if ours_key != "overall" else "glue"
    field = _score_field(results)
    both = [r for r in results["rows"]
            if r[field].get(ours_key) is not None and r["paper"].get(paper_key) is not None]
    ours = [r["key"] for r in sorted(both, key=lambda r: -r[field][ours_key])]
    paper = [r["key"] for r in sorted(both, key=lambda r: -r["paper"][paper_key])]
    if len(both) < 2:
        return {"metric": ours_key, "scores": field, "ours": ours, "paper": paper, "matches": None,
                "pairs_agreeing": None,
                "note": "fewer than two rows have both our score and the paper's: ordering not compared."}
    score = {r["key"]: r[field][ours_key] for r in both}
    pairs = [(a, b) for i, a in enumerate(paper) for b in paper[i + 1:]]  # a ranks above b in the paper
    agree = sum(score[a] - score[b] > 1e-9 for a, b in pairs)
    tied = sum(abs(score[a] - score[b]) <= 1e-9 for a, b in pairs)
    label = {r["key"]: r["label"] for r in results["rows"]}
    matches = agree == len(pairs)
    subset = ""
    n = sum(1 for b in results["benchmarks"].values() if b == ours_key)
    full = BENCHMARK_TASK_COUNTS.get(ours_key)
    if ours_key == "overall" or (full and n < full):
        subset = (f" Our {_bench_name(ours_key)} average covers "
                  f"{n if ours_key != 'overall' else len(results['tasks'])}"
                  f" task(s), not the paper's full benchmark, so this is a rough check.")
    note = (("Our ordering matches the paper's" if matches else "Our ordering differs from the paper's")
            + f" ({agree}/{len(pairs)} pairs in the paper's order" + (f", {tied} tied" if tied else "")
            + f", by {_bench_name(ours_key)} average"
            + (" of rank-classification scores, as generation scores do not separate the rows" if field != "averages"
               else "") + "). Paper: "
            + " > ".join(label[k] for k in paper) + ". Ours: " + " > ".join(label[k] for k in ours) + "." + subset)
    out = {"metric": ours_key, "scores": field, "ours": ours, "paper": paper, "matches": matches,
           "pairs_agreeing": f"{agree}/{len(pairs)}", "pairs_tied": tied, "note": note}
    tested = {frozenset((p["a"], p["b"])): p for p in results.get("pairwise") or []}
    if tested:
        sep = [(a, b) for a, b in pairs if (tested.get(frozenset((a, b))) or {}).get("separable")]
        sep_agree = sum(score[a] > score[b] for a, b in sep)
        out.update({"pairs_separable": len(sep), "pairs_separable_agreeing": sep_agree,
                    "pairs_not_separable": len(pairs) - len(sep)})
        out["note"] += (f" Counting only the pairs the data can separate (paired permutation test, Holm over "
                        f"{len(tested)} pairs, p < 0.05): {len(sep)} of {len(pairs)} pairs are separable, "
                        f"{sep_agree} of them in the paper's order, {len(sep) - sep_agree} against it; "
                        f"{len(pairs) - len(sep)} pair(s) cannot be separated by these data.")
    return out


# ---------------------------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _fmt_int(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _columns(results: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(header, kind, key) of every table column after the row label."""
    cols: list[tuple[str, str, Any]] = [(f"{t} {m}", "metric", (t, m)) for t, m in results["metric_columns"]]
    benches = [b for b in ("glue", "super_glue") if any(v == b for v in results["benchmarks"].values())]
    for b in benches + ["overall"]:
        cols.append((f"{_bench_name(b)} avg", "average", b))
    if any(r.get("rank_averages") for r in results["rows"]):
        for b in benches + ["overall"]:
            cols.append((f"{_bench_name(b)} avg (rank)", "rank_average", b))
    if results.get("paper_citation"):
        matching = paper_columns_for(results["tasks"], results["benchmarks"])
        present = [k for k in PAPER_COLUMNS if k in matching and any(k in r["paper"] for r in results["rows"])]
        for k in present:
            cols.append((f"paper {PAPER_COLUMNS[k]}", "paper", k))
    cols += [("steps", "compute", "steps"), ("tokens", "compute", "tokens"),
             ("wall time (s)", "compute", "wall_time_s")]
    return cols


def paper_columns_for(tasks: list[str], benchmarks: Mapping[str, str | None]) -> set[str]:
    """The paper's columns that our tasks speak to (GLUE if we ran a GLUE task, SQuAD if we ran SQuAD, ...)."""
    cols = {b for b in benchmarks.values() if b in PAPER_COLUMNS}
    for t in tasks:
        name = t.lower()
        if "squad" in name:
            cols.add("squad")
        if "cnn" in name or "dailymail" in name:
            cols.add("cnndm")
        for pair in ("ende", "enfr", "enro"):
            if f"en_{pair[2:]}" in name or pair in name.replace("_", ""):
                cols.add(pair)
    return cols


def _cell(row: Mapping[str, Any], kind: str, key: Any, human: bool) -> Any:
    if kind == "metric":
        return (row["metrics"].get(key[0]) or {}).get(key[1])
    if kind == "average":
        return row["averages"].get(key)
    if kind == "rank_average":
        return (row.get("rank_averages") or {}).get(key)
    if kind == "paper":
        return row["paper"].get(key)
    v = row["compute"].get(key)
    if human and key == "tokens" and v:
        return _fmt_int(int(v))
    if human and key == "wall_time_s" and v is not None:
        return f"{v:.0f}"
    return v


def render_markdown(results: Mapping[str, Any]) -> str:
    """The results table in Markdown, with the budget, the paper comparison note and the citation."""
    kind = _KIND_TITLES.get(results["kind"], "Mixing strategies (T5 Table 11)")
    lines = [f"# {results['experiment']}: {kind}", ""]
    if results.get("description"):
        lines += [results["description"], ""]
    n, m = results["pretrain_steps"], results["finetune_steps"]
    corpus = f"; corpus task: {results['corpus_task']}" if results.get("corpus_task") else ""
    lines += [f"Tasks: {', '.join(results['tasks'])}{corpus}.", ""]
    if results["kind"] == "strategies":
        budget = (f"Budget: N = {n} pre-training steps + M = {m} fine-tuning steps per task (every row trains "
                  f"N + M = {n + m} steps from scratch to each evaluated model).")
    else:
        budget = (f"Budget: each rate trains one multi-task model for N + M = {n} + {m} = {n + m} steps "
                  "(the baseline row, when present: N pre-training + M fine-tuning steps per task).")
    lines += [budget + " Scores are on the validation splits, 0-100; a benchmark average is the mean of its "
              "tasks' scores (a task's score: mean of its metrics).", ""]
    lines += _main_table(results)
    lines += _per_task_table(results)
    lines += _pairwise_table(results)
    rated = [r for r in results["rows"] if r.get("mixing_rates")]
    if rated:
        mix_tasks = list(dict.fromkeys(t for r in rated for t in r["mixing_rates"]))
        lines += ["Share of training examples per task (planned by the rates each multi-task model was trained "
                  "with, at its own sequence lengths; each stage's metrics.json `shares` also has the shares it "
                  "drew):", "",
                  "| row | " + " | ".join(mix_tasks) + " |", "|---|" + "---:|" * len(mix_tasks)]
        for r in rated:
            lines.append(f"| {r['label']} | " + " | ".join(f"{100 * r['mixing_rates'].get(t, 0.0):.1f}%"
                                                           for t in mix_tasks) + " |")
        lines.append("")
    over_time = results.get("weights_over_training") or {}
    if over_time:
        lines += [f"Shares over training: `{SHARES_PLOT}` next to this file plots every row's planned and drawn shares "
                  "per block (from each stage's `mixing.json`; `weights_over_training` in results.json lists the rate "
                  "stages): " + "; ".join(f"{v['label']}: {len(v['stages'])} stage(s)" for v in over_time.values())
                  + ".", ""]
    counts = results["rows"][0]["average_task_counts"] if results["rows"] else {}
    parts = [f"{_bench_name(b)} avg over {c} task(s)" for b, c in counts.items()]
    if parts:
        lines += ["Averages: " + "; ".join(parts) + ". `rank_*` metrics and the \"(rank)\" averages score each "
                  "label string by likelihood (rank classification); the plain averages use generated text, as "
                  "the paper does.", ""]
    ordering = results.get("ordering")
    if ordering:
        lines += [f"Ordering vs. the paper: {ordering['note']}", ""]
    if results.get("paper_citation"):
        std = results.get("paper_baseline_std") or {}
        noise = (" The paper's baseline varies by " + ", ".join(f"{PAPER_COLUMNS[k]} {v}" for k, v in std.items())
                 + " (standard deviation over 10 runs, its Table 1), the noise level it assumes for every row.") \
            if std else ""
        lines += [f"Paper numbers: {results['paper_citation']} (T5-Base, 2^19 + 2^18 steps of 128 x 512 tokens; "
                  "'No pre-training' is Table 1's row, 2^18 fine-tuning steps from scratch). Only numbers checked "
                  f"against the paper are shown; '–' means not recorded.{noise}", ""]
    tot = results.get("totals")
    if tot:
        lines.append(f"Total compute: {tot['stages_finished']}/{tot['stages']} stages, {tot['steps']} steps, "
                     f"{_fmt_int(tot['tokens'])} tokens, {tot['wall_time_s']:.0f} s of training runs (each stage "
                     "counted once).")
    lines.append("Compute per row counts every stage the row depends on (a shared stage counts in each row using it; "
                 "it was trained once).")
    return "\n".join(lines) + "\n"


def _with_ci(value: Any, ci: Sequence[Any] | None, std: Any = None) -> str:
    """"67.50 ± 1.20 [60.10, 74.20]": value, ± standard deviation over seeds, [95 % bootstrap interval]."""
    text = _fmt(value)
    if value is None:
        return text
    if std is not None:
        text += f" ± {std:.2f}"
    if ci and ci[0] is not None:
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text


def _test_cell(test: Mapping[str, Any] | None, flag: str = "significant") -> str:
    if not test or test.get("p") is None:
        return "–"
    mark = "*" if test.get(flag) else ""
    return f"{test['diff']:+.2f}{mark} (p={test.get('p_holm', test['p']):.3f})"


def _main_table(results: Mapping[str, Any]) -> list[str]:
    """One line per row: benchmark averages ± std [CI], the test against the baseline, seeds and compute."""
    benches = [b for b in ("glue", "super_glue") if any(v == b for v in results["benchmarks"].values())] + ["overall"]
    fields = [("averages", "")] + ([("rank_averages", " (rank)")] if any(r.get("rank_averages") for r in
                                                                           results["rows"]) else [])
    paper = []
    if results.get("paper_citation"):
        matching = paper_columns_for(results["tasks"], results["benchmarks"])
        paper = [k for k in PAPER_COLUMNS if k in matching and any(k in r["paper"] for r in results["rows"])]
    test = results.get("test")
    tested = [b for b in test.get("averages", [test["metric"]]) if b in benches] if test else []
    test_head = []
    if test:
        rank_note = " rank" if test["scores"] == "rank_averages" else ""
        test_head = [f"vs {results['baseline']} ({_bench_name(b)}{rank_note})" for b in tested]
    head = (["row"] + [f"{_bench_name(b)} avg{suffix}" for f, suffix in fields for b in benches] + test_head
            + ["seeds", "steps", "tokens", "wall time (s)"] + [f"paper {PAPER_COLUMNS[k]}" for k in paper])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in results["rows"]:
        label = row["label"] + ("" if row["status"] == "done" else f" ({row['status']})")
        cells = [label]
        for f, _ in fields:
            for b in benches:
                std = (row.get("averages_std") or {}).get(b) if f == "averages" else None
                cells.append(_with_ci((row.get(f) or {}).get(b), (row.get(f"{f}_ci") or {}).get(b), std))
        for b in tested:
            cells.append("baseline" if row["key"] == results.get("baseline")
                         else _test_cell((row.get("vs_baseline_averages") or {}).get(b)))
        cells.append(str(len(row["seeds"])) if row.get("seeds") else "1")
        cells += [_fmt(_cell(row, "compute", k, True)) for k in ("steps", "tokens", "wall_time_s")]
        cells += [_fmt(row["paper"].get(k)) for k in paper]
        lines.append("| " + " | ".join(cells) + " |")
    maj = results.get("majority")
    if maj:
        cells = [maj["label"]] + [_fmt((maj.get(f) or {}).get(b)) for f, _ in fields for b in benches]
        cells += ["–"] * len(tested) + ["–"] * 4 + ["–"] * len(paper)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    notes = []
    if any(r.get("averages_ci") for r in results["rows"]):
        notes.append("[a, b]: 95 % bootstrap interval over the evaluation examples")
    if results.get("seeds"):
        notes.append(f"± : standard deviation over the seeds {results['seeds']} (the value is their mean)")
    if test:
        notes.append(f"vs {results['baseline']}: difference of each average to the {results['baseline']} row, "
                     f"Holm-adjusted (over the rows, per average) p of a {test['name'].split(',')[0]} "
                     f"(up to {test['permutations']} permutations); * = significant at p < {test['alpha']}")
    if maj:
        from_eval = sorted(t for t, src in (maj.get("sources") or {}).items() if src != "train")
        notes.append("Majority class: always predicting the train split's most frequent target, scored by each "
                     "task's own metrics (the chance level every row must beat)"
                     + (f"; for {', '.join(from_eval)} (no train split) the most frequent target of the evaluated "
                        "examples themselves, an optimistic reference" if from_eval else ""))
    return lines + ([("; ".join(notes)) + ".", ""] if notes else [])


def _per_task_table(results: Mapping[str, Any]) -> list[str]:
    """Per-task details: every metric of every task with its interval, the evaluation count in the header, a mark
    for significance against the baseline (*) and a flag when a score does not beat the majority class."""
    cols = results["metric_columns"]
    if not cols:
        return []
    counts: dict[str, int] = {}
    for r in results["rows"]:
        for t, n in (r.get("num_examples") or {}).items():
            counts.setdefault(t, n)
    maj = (results.get("majority") or {}).get("metrics") or {}
    head = ["row"] + [f"{t} {m}" + (f" (n={counts[t]})" if t in counts else "") for t, m in cols]
    lines = ["Per-task scores" + (" (value [95 % CI]; * = task score differs from the baseline's, Holm-adjusted "
                                  "paired test; ≤maj = not significantly above the majority class, Holm-adjusted "
                                  "paired test of the metric against its predictions)" if results.get("test") else "")
             + "; a correlation of constant predictions (the majority class) is undefined and counts as 0:", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
    rows = list(results["rows"])
    for row in rows:
        cells = [row["label"]]
        for t, m in cols:
            v = (row["metrics"].get(t) or {}).get(m)
            std = ((row.get("metrics_std") or {}).get(t) or {}).get(m)
            text = _with_ci(v, ((row.get("ci") or {}).get(t) or {}).get(m), std)
            if v is not None:
                task_test = (row.get("task_tests") or {}).get(t) or {}
                if task_test.get("significant"):
                    text += " *"
                if _not_above_majority(row, t, m, (maj.get(t) or {}).get(m)):
                    text += " ≤maj"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    if maj:
        lines.append("| Majority class (reference) | " + " | ".join(_fmt((maj.get(t) or {}).get(m)) for t, m in cols)
                     + " |")
    return lines + [""]


def _not_above_majority(row: Mapping[str, Any], task: str, metric: str, reference: float | None) -> bool:
    """Whether a row's metric is not shown to be above the majority class: by the paired test of the metric against
    the majority predictions (Holm over the rows) when the row has one, else by its interval (lower end not above
    the majority score); never by the point estimates."""
    if reference is None:
        return False
    test = (((row.get("vs_majority") or {}).get(task) or {}).get("metrics") or {}).get(metric)
    if test is not None and test.get("p") is not None:
        return not (test.get("significant") and test["diff"] > 0)
    ci = ((row.get("ci") or {}).get(task) or {}).get(metric)
    return bool(ci) and ci[0] is not None and ci[0] <= reference + 1e-9


def _pairwise_table(results: Mapping[str, Any]) -> list[str]:
    """Every two finished rows compared on every average (difference a - b, Holm over the pairs per average)."""
    pairs = results.get("pairwise") or []
    if not pairs:
        return []
    benches = [b for b in average_names(results["tasks"], results["benchmarks"])
               if any(b in p.get("averages", {}) for p in pairs)]
    label = {r["key"]: r["label"] for r in results["rows"]}
    lines = ["Pairwise tests between rows (difference row a - row b of each average, Holm-adjusted p over the pairs "
             "within each average; * = separable at p < 0.05):", "",
             "| row a | row b | " + " | ".join(f"{_bench_name(b)} avg" for b in benches) + " |",
             "|---|---|" + "---:|" * len(benches)]
    for p in pairs:
        cells = [label.get(p["a"], p["a"]), label.get(p["b"], p["b"])]
        cells += [_test_cell(p.get("averages", {}).get(b), "separable") for b in benches]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def write_csv(results: Mapping[str, Any], path: Path) -> None:
    cols = _columns(results)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        extra = [c for c in cols if c[1] in ("metric", "average", "rank_average")]
        w.writerow(["key", "row", "status"] + [c[0] for c in cols]
                   + [f"{c[0]} {part}" for c in extra for part in ("ci_lo", "ci_hi", "std")]
                   + ["vs baseline diff", "vs baseline p_holm", "vs baseline significant"])

        def num(v: Any) -> Any:
            return "" if v is None else (round(v, 4) if isinstance(v, float) else v)

        for row in results["rows"]:
            vals = [_cell(row, k, key, False) for _, k, key in cols]
            stats = []
            for _, kind, key in extra:
                if kind == "metric":
                    ci = ((row.get("ci") or {}).get(key[0]) or {}).get(key[1])
                    std = ((row.get("metrics_std") or {}).get(key[0]) or {}).get(key[1])
                else:
                    f = "averages" if kind == "average" else "rank_averages"
                    ci = (row.get(f"{f}_ci") or {}).get(key)
                    std = (row.get("averages_std") or {}).get(key) if kind == "average" else None
                stats += [num((ci or [None, None])[0]), num((ci or [None, None])[1]), num(std)]
            test = row.get("vs_baseline") or {}
            w.writerow([row["key"], row["label"], row["status"]] + [num(v) for v in vals] + stats
                       + [num(test.get("diff")), num(test.get("p_holm")), test.get("significant", "")])
        maj = results.get("majority")
        if maj:
            vals = [_cell({**maj, "paper": {}, "compute": {}}, k, key, False) for _, k, key in cols]
            w.writerow([maj["key"], maj["label"], "reference"] + [num(v) for v in vals])


def plot_results(results: Mapping[str, Any], path: Path) -> None:
    """Grouped bars: per row, our benchmark averages, with the paper's number as a marker where recorded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    field = (results.get("ordering") or {}).get("scores") or "averages"
    kind_label = " (rank classification)" if field == "rank_averages" else ""
    benches = [b for b in ("glue", "super_glue") if any(v == b for v in results["benchmarks"].values())] + ["overall"]
    width = 0.8 / len(benches)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(rows) + 4), 4.8))
    xs = list(range(len(rows)))
    labelled = False
    for j, b in enumerate(benches):
        offs = [x - 0.4 + width * (j + 0.5) for x in xs]
        vals = [(r.get(field) or {}).get(b) for r in rows]
        cis = [(r.get(f"{field}_ci") or {}).get(b) for r in rows]
        err = [[max(0.0, v - ci[0]) if v is not None and ci and ci[0] is not None else 0.0 for v, ci in zip(vals, cis)],
               [max(0.0, ci[1] - v) if v is not None and ci and ci[1] is not None else 0.0 for v, ci in zip(vals, cis)]]
        bars = ax.bar(offs, [v if v is not None else 0.0 for v in vals], width, yerr=err, capsize=3,
                      label=f"ours: {_bench_name(b)} avg{kind_label}" + (" (95% CI)" if any(cis) else ""))
        maj = ((results.get("majority") or {}).get(field) or {}).get(b)
        if maj is not None:
            ax.axhline(maj, color=bars.patches[0].get_facecolor(), linestyle=":", linewidth=1.2,
                       label=f"majority class: {_bench_name(b)}")
        pv = [r["paper"].get(b) for r in rows]
        pts = [(o, v) for o, v in zip(offs, pv) if v is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="_", s=500, linewidths=2.0,
                       color="black", zorder=3, label=None if labelled else "T5 paper (marker on the bar it matches)")
            labelled = True
    ax.set_xticks(xs)
    ax.set_xticklabels([r["label"] for r in rows], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("score (0-100)")
    title = _KIND_TITLES.get(results["kind"], "mixing rates (T5 Table 11)")
    ax.set_title(f"{results['experiment']}: {title}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.md, results.csv, results.json and results.png into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"results.{k}" for k in ("md", "csv", "json", "png")}
    paths["md"].write_text(render_markdown(results))
    write_csv(results, paths["csv"])
    paths["json"].write_text(json.dumps(json_safe({k: v for k, v in results.items() if k != "files"}), indent=2,
                                        default=str, allow_nan=False))
    plot_results(results, paths["png"])
    return paths


# ----------------------------------------------------------------------------------- the weights over training
SHARES_PLOT = "mixing_shares.png"


def row_shares(plan: ExperimentPlan, stage_results: Mapping[str, Mapping[str, Any]],
               experiment_dir: Path) -> dict[str, dict[str, Any]]:
    """The weights over training of every row evaluated by one multi-task model (its first seed's): the stage list
    and the per-block planned and drawn shares that its training run kept in `mixing.json` (what the run's own
    `mixing_shares.png` plots). Rows fine-tuned per task, and stages not finished or without the file, are left
    out. Static rates have one stage (flat lines), an adaptive method a stage per block, weights read from a file
    (DoReMi, a search) one stage of those weights."""
    from mixtures.errors import MixtureError  # lazily: the mixtures package loads torch
    from mixtures.stages import read_run_file

    out: dict[str, dict[str, Any]] = {}
    for r in plan.rows:
        names = set(r.eval_stage.values())
        if len(names) != 1:
            continue
        stage = plan.stage(names.pop())
        if stage.name not in stage_results or len(stage.tasks) < 2:
            continue
        try:
            record = read_run_file(Path(experiment_dir) / stage.run_dir)
        except (MixtureError, OSError, ValueError):
            continue
        if not record.get("blocks"):
            continue
        out[r.key] = {"label": r.label, "stage": stage.name, "adaptive": record.get("adaptive"),
                      "every": record.get("every"), "task_names": list(record["task_names"]),
                      "stages": list(record["stages"]), "blocks": list(record["blocks"])}
    return out


def plot_row_shares(shares: Mapping[str, Mapping[str, Any]], path: Path, title: str = "") -> Path | None:
    """One panel per row (`row_shares`): each task's planned share per block (lines: the rate stages the sampler
    drew by) and the share it drew (dots), over the training steps, the same colour for a task in every panel.
    Returns the path, or None when no row has a record."""
    if not shares:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for rec in shares.values() for t in rec["task_names"]))
    colour = {t: f"C{i % 10}" for i, t in enumerate(tasks)}
    cols = 2 if len(shares) > 1 else 1
    nrows = -(-len(shares) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.0 * cols, 2.6 * nrows + 0.8), sharey=True, squeeze=False)
    top = max(max(b["planned"].get(t, 0.0) for b in rec["blocks"] for t in rec["task_names"])
              for rec in shares.values())
    for ax, (key, rec) in zip(axes.flat, shares.items()):
        blocks = rec["blocks"]
        x = [b["start_step"] for b in blocks] + [blocks[-1]["end_step"]]
        mid = [(b["start_step"] + b["end_step"]) / 2 for b in blocks]
        for t in rec["task_names"]:
            planned = [b["planned"][t] for b in blocks]
            ax.step(x, planned + planned[-1:], where="post", color=colour[t], linewidth=1.4)
            ax.plot(mid, [b["drawn"][t] for b in blocks], "o", color=colour[t], markersize=2.5, alpha=0.6)
        changes = sum(1 for s in rec["stages"] if s["start_step"] < blocks[-1]["end_step"]) - 1
        note = f" ({rec['adaptive']}: {changes} stage changes)" if rec.get("adaptive") else ""
        ax.set_title(f"{rec['label']}{note}", fontsize=8)
        ax.set_ylim(0, min(1.0, top * 1.15 + 0.02))
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(shares):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("training step", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("share of examples", fontsize=8)
    handles = [plt.Line2D([], [], color=colour[t], label=t) for t in tasks]
    handles += [plt.Line2D([], [], color="grey", label="planned (rate stages)"),
                plt.Line2D([], [], color="grey", marker="o", linestyle="", markersize=3, label="drawn, per block")]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=min(len(handles), 4), frameon=False)
    fig.suptitle(title or "task shares over training, per row", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * (len(handles) > 4), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


__all__ = ["build_results", "compare_ordering", "render_markdown", "write_csv", "plot_results", "write_results",
           "row_shares", "plot_row_shares", "SHARES_PLOT", "TABLE_11", "TABLE_12"]
