"""Results table (Markdown, CSV, JSON) and plot from fake stage results."""

from __future__ import annotations

import csv
import json

import pytest

from lightning_t5.eval.scoring import task_score
from lightning_t5.experiments import TABLE_12, make_plan
from lightning_t5.experiments.results import build_results, compare_ordering, render_markdown, write_results

BENCH = {"glue_mrpc": "glue", "glue_rte": "glue", "super_glue_cb": "super_glue"}


def plan_for(strategies):
    return make_plan({"experiment": "fake", "experiment_options": {
        "kind": "strategies", "tasks": list(BENCH), "corpus_task": "corpus_x", "pretrain_steps": 10,
        "finetune_steps": 6, "strategies": strategies}})


def fake_results(plan, scores):
    """scores: row key -> (mrpc f1, mrpc acc, rte acc, cb acc)."""
    out = {}
    for row in plan.rows:
        f1, acc, rte, cb = scores[row.key]
        per_task = {"glue_mrpc": {"f1": f1, "accuracy": acc, "loss": 3.0}, "glue_rte": {"accuracy": rte},
                    "super_glue_cb": {"accuracy": cb}}
        for s in row.stages:
            stage = plan.stage(s)
            out.setdefault(s, {"steps": stage.steps, "tokens": stage.steps * 100, "wall_time_s": 2.0,
                               "checkpoint": "x", "metrics": {}})
            for t in stage.eval_tasks:
                out[s]["metrics"][t] = per_task[t]
    return out


def test_scores_averages_and_compute():
    plan = plan_for(["pretrain_finetune", "multitask"])
    res = build_results(plan, fake_results(plan, {"pretrain_finetune": (80, 70, 60, 90),
                                                  "multitask": (50, 40, 30, 20)}), BENCH)
    base, mt = res["rows"]
    assert task_score({"f1": 80, "accuracy": 70, "loss": 3.0}) == 75  # loss is not a score
    # constant predictions: an undefined correlation counts as 0 (chance), it does not drop out of the average
    assert task_score({"pearson_corrcoef": None, "spearman_corrcoef": float("nan")}) == 0
    assert task_score({"pearson_corrcoef": 40.0, "spearman_corrcoef": None}) == 20
    assert task_score({"accuracy": None}) is None  # an accuracy is never undefined: no value, no score
    assert base["task_scores"] == {"glue_mrpc": 75, "glue_rte": 60, "super_glue_cb": 90}
    assert base["averages"]["glue"] == pytest.approx(67.5) and base["averages"]["super_glue"] == 90
    assert base["averages"]["overall"] == pytest.approx(75)
    assert base["average_task_counts"] == {"glue": 2, "super_glue": 1, "overall": 3}
    # baseline: pretrain 10 + three fine-tunes of 6; multi-task: one stage of 16
    assert base["compute"]["steps"] == 28 and mt["compute"]["steps"] == 16 and mt["compute"]["tokens"] == 1600
    assert base["budget_steps_per_task"] == {t: 16 for t in BENCH} == mt["budget_steps_per_task"]
    assert base["paper"]["glue"] == 83.28 and mt["paper"]["glue"] == 81.42 and mt["paper"]["super_glue"] == 67.30
    assert [c for c in res["metric_columns"]] == [["glue_mrpc", "f1"], ["glue_mrpc", "accuracy"],
                                                  ["glue_rte", "accuracy"], ["super_glue_cb", "accuracy"]]


def test_ordering_against_the_paper():
    plan = plan_for(["pretrain_finetune", "multitask", "supervised_pretrain_finetune"])
    same = build_results(plan, fake_results(plan, {"pretrain_finetune": (80, 80, 80, 1),
                                                   "multitask": (70, 70, 70, 1),
                                                   "supervised_pretrain_finetune": (60, 60, 60, 1)}), BENCH)
    assert same["ordering"]["matches"] is True and same["ordering"]["pairs_agreeing"] == "3/3"
    assert same["ordering"]["paper"] == ["pretrain_finetune", "multitask", "supervised_pretrain_finetune"]
    flipped = build_results(plan, fake_results(plan, {"pretrain_finetune": (60, 60, 60, 1),
                                                      "multitask": (70, 70, 70, 1),
                                                      "supervised_pretrain_finetune": (80, 80, 80, 1)}), BENCH)
    o = compare_ordering(flipped)
    assert o["matches"] is False and o["pairs_agreeing"] == "0/3" and "differs" in o["note"]
    assert "covers 2 task(s)" in o["note"]  # our GLUE average is over a subset of GLUE


def test_markdown_csv_json_png(tmp_path):
    plan = plan_for(["pretrain_finetune", "multitask", "mtdnn"])
    res = build_results(plan, fake_results(plan, {"pretrain_finetune": (80, 70, 60, 90), "multitask": (50, 40, 30, 20),
                                                  "mtdnn": (81, 71, 61, 91)}), BENCH)
    paths = write_results(res, tmp_path)
    md = paths["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| row"))  # the main table: one line per row
    assert "GLUE avg" in header and "SGLUE avg" in header and "paper GLUE" in header and "steps" in header
    details = next(line for line in md.splitlines() if line.startswith("| row") and "glue_mrpc f1" in line)
    assert "glue_rte accuracy" in details and "super_glue_cb accuracy" in details
    base_line = next(line for line in md.splitlines() if line.startswith("| Unsupervised pre-training"))
    assert "| 67.50 |" in base_line and "| 83.28 |" in base_line and "| 90.00 |" in base_line
    assert "MT-DNN" in md and "Raffel et al." in md and "Ordering vs. the paper" in md
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == ["pretrain_finetune", "multitask", "mtdnn"]
    assert float(rows[0]["GLUE avg"]) == 67.5 and rows[2]["paper GLUE"] == "" and rows[0]["steps"] == "28"
    data = json.loads(paths["json"].read_text())
    assert data["rows"][1]["averages"]["overall"] == pytest.approx((45 + 30 + 20) / 3)
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_missing_stage_results_show_as_not_run(tmp_path):
    plan = plan_for(["pretrain_finetune", "multitask"])
    partial = {k: v
               for k, v in fake_results(plan, {"pretrain_finetune": (1, 1, 1, 1), "multitask": (2, 2, 2, 2)}).items()
               if k == "multitask"}
    res = build_results(plan, partial, BENCH)
    assert [r["status"] for r in res["rows"]] == ["not run", "done"]
    assert res["rows"][0]["averages"]["glue"] is None
    md = render_markdown(res)
    assert "(not run)" in md
    write_results(res, tmp_path)  # rendering copes with missing values


def test_paper_numbers_are_the_recorded_ones():
    assert {k: v["glue"] for k, v in TABLE_12.items()} == {
        "pretrain_finetune": 83.28, "multitask": 81.42, "multitask_pretrain_finetune": 83.11,
        "leave_one_out": 81.98, "supervised_pretrain_finetune": 79.93}


def test_rank_classification_scores_decide_when_generation_cannot():
    """Tiny models often generate no valid label (all generation scores 0): rank classification orders the rows."""
    plan = plan_for(["pretrain_finetune", "multitask"])
    res_in = fake_results(plan, {"pretrain_finetune": (0, 0, 0, 0), "multitask": (0, 0, 0, 0)})
    for name, r in res_in.items():
        for t, m in r["metrics"].items():
            m["rank_accuracy"] = 40.0 if name == "multitask" else 60.0
    res = build_results(plan, res_in, BENCH)
    base = res["rows"][0]
    assert base["averages"]["glue"] == 0 and base["rank_averages"]["glue"] == 60.0
    assert res["ordering"]["scores"] == "rank_averages" and res["ordering"]["matches"] is True
    assert "rank-classification" in res["ordering"]["note"]
    assert "GLUE avg (rank)" in render_markdown(res)


def test_mixing_rates_table():
    plan = plan_for(["multitask"])
    res = build_results(plan, fake_results(plan, {"multitask": (1, 1, 1, 1)}), BENCH)
    res["rows"][0]["mixing_rates"] = {"glue_mrpc": 0.5, "glue_rte": 0.25, "super_glue_cb": 0.25}
    md = render_markdown(res)
    assert "| Multi-task training | 50.0% | 25.0% | 25.0% |" in md


def test_ties_do_not_count_as_matching_and_totals_count_shared_stages_once():
    plan = plan_for(["pretrain_finetune", "multitask", "mtdnn"])
    res = build_results(plan, fake_results(plan, {"pretrain_finetune": (70, 70, 70, 1), "multitask": (70, 70, 70, 1),
                                                  "mtdnn": (1, 1, 1, 1)}), BENCH)
    assert res["ordering"]["matches"] is False and res["ordering"]["pairs_tied"] == 1
    assert "1 tied" in res["ordering"]["note"]
    # pretrain (10) shared by the baseline and MT-DNN counts once: 10 + 3*6 + 16 + 3 + 3*3
    assert res["totals"]["steps"] == 10 + 18 + 16 + 3 + 9 and res["totals"]["stages"] == 9
    assert "Total compute: 9/9 stages, 56 steps" in render_markdown(res)


def _write_predictions(run_dir, task, targets, predictions, majority):
    folder = run_dir / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{task}.jsonl", "w") as f:
        for i, (t, p) in enumerate(zip(targets, predictions)):
            f.write(json.dumps({"index": i, "inputs": "x", "targets": str(t), "target": t, "prediction": p,
                                "majority_prediction": majority}) + "\n")


def test_intervals_paired_tests_holm_and_majority_from_predictions(tmp_path):
    """Per-example predictions with a planted difference: identical rows are not separated, a worse row is, Holm
    is applied, seeds give mean ± std, and the tables show intervals, counts, marks and the majority class."""
    import numpy as np

    from tasks import TaskRegistry

    plan = make_plan({"experiment": "fake", "experiment_options": {
        "kind": "strategies", "tasks": list(BENCH), "corpus_task": "corpus_x", "pretrain_steps": 10,
        "finetune_steps": 6, "strategies": ["pretrain_finetune", "multitask", "no_pretraining"], "seeds": [1, 2]}})
    fns = {t: TaskRegistry.get(t).metric_fns for t in BENCH}
    rng = np.random.default_rng(0)
    n = {"glue_mrpc": 200, "glue_rte": 200, "super_glue_cb": 120}
    k = {"glue_mrpc": 2, "glue_rte": 2, "super_glue_cb": 3}
    targets = {t: rng.integers(0, k[t], n[t]).tolist() for t in BENCH}
    good = {(t, s): [y if rng.random() < 0.85 else (y + 1) % k[t] for y in targets[t]] for t in BENCH for s in (1, 2)}
    results = {}
    for row in plan.rows:
        for seed, mapping in row.eval_stages():
            for task, stage_name in mapping.items():
                if row.key == "no_pretraining":
                    preds = [y if rng.random() < 0.55 else (y + 1) % k[task] for y in targets[task]]
                else:  # multi-task training predicts exactly what the baseline predicts
                    preds = good[(task, seed)]
                run_dir = tmp_path / stage_name
                _write_predictions(run_dir, task, targets[task], preds, 0)
                metrics = TaskRegistry.get(task).compute_metrics(targets[task], preds)
                majority = TaskRegistry.get(task).compute_metrics(targets[task], [0] * n[task])
                entry = results.setdefault(stage_name, {"steps": 6, "tokens": 600, "wall_time_s": 1.0,
                                                        "checkpoint": "x", "run_dir": str(run_dir), "metrics": {},
                                                        "num_examples": {}, "majority": {}})
                entry["metrics"][task] = metrics
                entry["num_examples"][task] = n[task]
                entry["majority"][task] = {"prediction": "0", "metrics": majority}
        for s in row.stages:
            results.setdefault(s, {"steps": plan.stage(s).steps, "tokens": 1, "wall_time_s": 1.0, "checkpoint": "x",
                                   "metrics": {}})
    res = build_results(plan, results, BENCH, metric_fns=fns)
    base, mt, scratch = res["rows"]
    assert res["baseline"] == "pretrain_finetune" and res["seeds"] == [1, 2]
    assert mt["vs_baseline"]["diff"] == 0 and mt["vs_baseline"]["p"] == 1.0 and not mt["vs_baseline"]["significant"]
    assert scratch["vs_baseline"]["diff"] < -20 and scratch["vs_baseline"]["significant"]
    assert scratch["vs_baseline"]["p_holm"] == pytest.approx(min(1.0, 2 * scratch["vs_baseline"]["p"]))  # Holm, m=2
    assert all(scratch["task_tests"][t]["significant"] for t in BENCH)
    assert all(base["vs_majority"][t]["significant"] for t in BENCH)
    for row in res["rows"]:
        for t, metrics in row["metrics"].items():
            for m, v in metrics.items():
                lo, hi = row["ci"][t][m]
                assert lo <= v <= hi and hi - lo < 30
        assert row["averages_std"]["glue"] is not None
        lo, hi = row["averages_ci"]["glue"]
        assert lo <= row["averages"]["glue"] <= hi
    assert scratch["averages_std"]["glue"] > 0  # its two seeds predict differently
    # ordering vs the paper: baseline vs multi-task cannot be separated; both beat no pre-training as in the paper
    o = res["ordering"]
    assert (o["pairs_separable"], o["pairs_separable_agreeing"], o["pairs_not_separable"]) == (2, 2, 1)
    assert "1 pair(s) cannot be separated" in o["note"]
    paths = write_results(res, tmp_path / "out")
    md = paths["md"].read_text()
    main_line = next(line for line in md.splitlines() if line.startswith("| No pre-training"))
    assert "* (p=" in main_line and "±" in main_line and "[" in main_line and "| 66.22 |" in main_line
    assert "(n=200)" in md and "(n=120)" in md and "Majority class (reference)" in md
    with open(paths["csv"]) as f:
        rows = {r["key"]: r for r in csv.DictReader(f)}
    assert rows["no_pretraining"]["vs baseline significant"] == "True" and "majority_class" in rows
    assert float(rows["pretrain_finetune"]["GLUE avg ci_lo"]) <= float(rows["pretrain_finetune"]["GLUE avg"])
    json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
