"""`build_results` on every benchmark of the catalog (GLUE, SuperGLUE, SQuAD, CNN/DM, WMT), from synthetic
per-example predictions written in evaluation's record format: every row gets intervals, tests of every average and
pairwise tests, and the tables render (issue 21 A.2, issue 24 item 7)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from prediction_records import stage_results, synthetic_predictions

from lightning_t5.eval import stats
from lightning_t5.experiments import make_plan
from lightning_t5.experiments.results import build_results, render_markdown, write_results
from tasks import TaskRegistry

GLUE = ["glue_cola", "glue_sst2", "glue_mrpc", "glue_qqp", "glue_stsb", "glue_mnli_matched", "glue_qnli", "glue_rte",
        "glue_wnli"]
SUPER_GLUE = ["super_glue_boolq", "super_glue_cb", "super_glue_copa", "super_glue_multirc", "super_glue_record",
              "super_glue_rte", "super_glue_wic", "super_glue_wsc"]
BENCHMARKS = {
    "glue": GLUE,
    "super_glue": SUPER_GLUE,
    "squad": ["squad"],
    "cnn_dailymail": ["cnn_dailymail"],
    "wmt": ["wmt_ende", "wmt_enfr", "wmt_enro"],
}
QUALITY = {"pretrain_finetune": 0.85, "multitask": 0.6, "no_pretraining": 0.5}


def _plan(tasks: list[str], strategies: list[str]):
    return make_plan({"experiment": "catalog", "experiment_options": {
        "kind": "strategies", "tasks": tasks, "corpus_task": "corpus_x", "pretrain_steps": 10, "finetune_steps": 6,
        "strategies": strategies}})


def _build(tmp_path, tasks, predict, strategies=("pretrain_finetune", "multitask", "no_pretraining"), n=48):
    plan = _plan(list(tasks), list(strategies))
    results = stage_results(plan, tmp_path, predict, n=n)
    benchmarks = {t: TaskRegistry.get(t).benchmark for t in tasks}
    fns = {t: TaskRegistry.get(t).metric_fns for t in tasks}
    return build_results(plan, results, benchmarks, metric_fns=fns)


def _by_quality(row_key, task, examples, seed):
    q = QUALITY[row_key]
    return synthetic_predictions(task, examples, q, seed=hash((row_key, task)) % 1000), None


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


@pytest.mark.parametrize("bench", list(BENCHMARKS))
def test_build_results_runs_for_every_catalog_benchmark(bench, tmp_path):
    tasks = BENCHMARKS[bench]
    start = time.perf_counter()
    res = _build(tmp_path, tasks, _by_quality)
    elapsed = time.perf_counter() - start
    averages = res["test"]["averages"]
    assert averages[-1] == "overall" and (bench not in ("glue", "super_glue") or averages[0] == bench)
    rows = res["rows"]
    for row in rows:
        assert row["status"] == "done"
        for task in tasks:
            for metric, value in row["metrics"][task].items():
                lo, hi = row["ci"][task][metric]
                assert lo - 1e-9 <= value <= hi + 1e-9, (row["key"], task, metric)
        for avg in averages:
            for field in ("averages_ci", "rank_averages_ci"):
                assert all(_finite(v) for v in row[field][avg]), (row["key"], field, avg)
        if row["key"] != res["baseline"]:
            assert set(row["vs_baseline_averages"]) == set(averages)
            for test in row["vs_baseline_averages"].values():
                assert _finite(test["diff"]) and 0 < test["p"] <= 1 and _finite(test["p_holm"])
            assert row["vs_baseline"] == row["vs_baseline_averages"][res["ranking_metric"]]
    # the best row is separated from the worst on the overall average, every pair is tested
    assert len(res["pairwise"]) == 3
    assert {frozenset((p["a"], p["b"])) for p in res["pairwise"]} == {
        frozenset(p) for p in (("pretrain_finetune", "multitask"), ("pretrain_finetune", "no_pretraining"),
                               ("multitask", "no_pretraining"))}
    worst = next(p for p in res["pairwise"] if {p["a"], p["b"]} == {"pretrain_finetune", "no_pretraining"})
    assert worst["averages"]["overall"]["diff"] > 0
    paths = write_results(res, tmp_path / "out")
    md = paths["md"].read_text()
    assert "Pairwise tests between rows" in md and "vs pretrain_finetune (overall" in md
    json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert elapsed < 60, f"build_results on {bench} took {elapsed:.1f} s"


def _f1_in_a_loop(targets, predictions):
    """F1 over all answers under a name no fast route knows: scored by the loop (200 replicates); plain numpy, so the
    loop stays cheap."""
    t = np.array([x["value"] for x in targets])
    p = np.array([x["value"] for x in predictions])
    tp, fp, fn = np.sum((t == 1) & (p == 1)), np.sum((t != 1) & (p == 1)), np.sum((t == 1) & (p != 1))
    return {"f1_loop": 100.0 * 2 * tp / max(1, 2 * tp + fp + fn)}


@pytest.mark.parametrize("loop", [False, True])
def test_cb_and_multirc_combine_replicates_of_every_route(loop, tmp_path):
    """CB (vectorised kernels, 1000 replicates) and MultiRC in one SuperGLUE average, also when one of MultiRC's
    metrics must be scored in a loop (200 replicates): the replicates combine on their common 200 (today: `np.stack`
    raised 'all input arrays must have the same shape')."""
    tasks = ["super_glue_cb", "super_glue_multirc"]
    plan = _plan(tasks, ["pretrain_finetune", "no_pretraining"])
    results = stage_results(plan, tmp_path, _by_quality, n=48)
    fns = {t: list(TaskRegistry.get(t).metric_fns) for t in tasks}
    if loop:
        fns["super_glue_multirc"][0] = _f1_in_a_loop
    res = build_results(plan, results, {t: "super_glue" for t in tasks}, metric_fns=fns)
    scratch = res["rows"][1]
    test = scratch["vs_baseline_averages"]["super_glue"]
    assert test["diff"] < 0 and 0 < test["p"] <= 1
    assert test["permutations"] == (stats.LOOP_RESAMPLES if loop else stats.N_RESAMPLES)
    assert all(_finite(v) for v in scratch["averages_ci"]["super_glue"])


def test_rank_scores_with_a_task_without_label_choices(tmp_path):
    """When generation does not separate the rows, the table ranks by rank-classification scores; ReCoRD has no
    label choices, so its generated score stands in (today: an empty metric list made the paired test raise)."""
    def predict(row_key, task, examples, seed):
        gen = synthetic_predictions(task, examples, 0.5, seed=3)  # every row generates the same
        ranked = synthetic_predictions(task, examples, QUALITY[row_key], seed=4) if TaskRegistry.get(
            task).label_choices else None
        return gen, ranked

    res = _build(tmp_path, ["super_glue_boolq", "super_glue_record"], predict,
                 strategies=("pretrain_finetune", "no_pretraining"))
    assert res["test"]["scores"] == "rank_averages"
    base, scratch = res["rows"]
    assert base["rank_averages"]["super_glue"] == pytest.approx(
        (base["metrics"]["super_glue_boolq"]["rank_accuracy"]
         + (base["metrics"]["super_glue_record"]["em"] + base["metrics"]["super_glue_record"]["f1"]) / 2) / 2)
    assert scratch["task_tests"]["super_glue_record"]["diff"] == 0
    assert scratch["vs_baseline"]["diff"] < 0 and _finite(scratch["vs_baseline"]["p"])
    assert all(_finite(v) for v in scratch["rank_averages_ci"]["super_glue"])


def test_a_sweep_of_user_tasks_gets_tests_of_every_average_and_between_rows(tmp_path):
    """A user's task with no benchmark counts only in "overall": it gets its own test against the baseline, and
    sweep rows (no paper numbers) are compared pairwise (today: only the ranking average was tested, and only rows
    with the paper's number were paired)."""
    tasks = ["glue_rte", "super_glue_boolq"]
    plan = make_plan({"experiment": "sweep", "experiment_options": {
        "kind": "mixing_sweep", "tasks": tasks, "corpus_task": "corpus_x", "pretrain_steps": 10, "finetune_steps": 6,
        "equal": True, "proportional_k": [256], "temperatures": [2], "temperature_k": 256}})
    quality = {"equal": 0.85, "proportional_k256": 0.6, "temperature_t2": 0.5}

    def predict(row_key, task, examples, seed):
        return synthetic_predictions(task, examples, quality[row_key], seed=len(row_key)), None

    results = stage_results(plan, tmp_path, predict, n=120)
    user_bench = {"glue_rte": "glue", "super_glue_boolq": None}  # a user's BoolQ: no benchmark
    res = build_results(plan, results, user_bench, include_paper=False,
                        metric_fns={t: TaskRegistry.get(t).metric_fns for t in tasks})
    keys = [r["key"] for r in res["rows"]]
    assert keys == list(quality) and res["baseline"] == "equal" and res["test"]["averages"] == ["glue", "overall"]
    for row in res["rows"][1:]:
        assert set(row["vs_baseline_averages"]) == {"glue", "overall"}
    assert len(res["pairwise"]) == len(keys) * (len(keys) - 1) // 2
    assert all({"glue", "overall"} <= set(p["averages"]) for p in res["pairwise"])
    md = render_markdown(res)
    assert "vs " + res["baseline"] + " (overall)" in md and "Pairwise tests between rows" in md
