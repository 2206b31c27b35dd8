"""One task score and one rule for undefined metrics, everywhere (issue 21 A.1): a run's metrics.json and results.md,
the experiment table and every bootstrap / permutation replicate score the same predictions the same way."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prediction_records import stage_results, synthetic_predictions

from lightning_t5.eval import scoring
from lightning_t5.eval.evaluation import TaskEvaluator, evaluate_predictions, format_metrics_table
from lightning_t5.experiments import make_plan
from lightning_t5.experiments.results import build_results
from tasks import TaskRegistry

BENCH = {"glue_sst2": "glue", "glue_stsb": "glue"}


def test_the_rule_for_undefined_metrics():
    # an undefined correlation (constant predictions) counts as 0: no correlation
    assert scoring.task_score({"pearson_corrcoef": math.nan, "spearman_corrcoef": None}) == 0
    assert scoring.task_score({"pearson_corrcoef": 40.0, "spearman_corrcoef": math.nan}) == 20
    # another undefined metric is left out of its task's mean; a task with none has no score
    assert scoring.task_score({"accuracy": 80.0, "my_metric": math.nan}) == 80
    assert scoring.task_score({"accuracy": None}) is None
    assert scoring.task_score({"f1": 80, "accuracy": 70, "loss": 3.0}) == 75  # a loss is not a score
    # rank scores: the rank_ metrics, or the generated ones of a task without label choices (ReCoRD)
    assert scoring.task_score({"accuracy": 10.0, "rank_accuracy": 60.0}, rank=True) == 60
    assert scoring.task_score({"em": 30.0, "f1": 50.0}, rank=True) == 40
    # the same function on replicates: the rule holds in every replicate
    reps = scoring.task_score_replicates({"pearson_corrcoef": np.array([50.0, np.nan, 30.0]),
                                          "spearman_corrcoef": np.array([np.nan, np.nan, 10.0])})
    np.testing.assert_allclose(reps, [25.0, 0.0, 20.0])
    # averages over replicate arrays of different lengths (vectorised 1000 vs loop 200) use the common prefix
    avg = scoring.average_replicates({"a": np.zeros(1000), "b": np.ones(200)}, {"a": "glue", "b": "glue"})
    assert avg["glue"].shape == (200,) and np.all(avg["glue"] == 0.5) and avg["overall"].shape == (200,)


def _evaluator_run(sst2_correct: int, n: int = 20) -> dict:
    """`evaluate_predictions` (what a run's metrics.json holds) for SST-2 with `sst2_correct` of n right and STS-B
    predicted as the constant 2.6."""
    evaluators = [TaskEvaluator(TaskRegistry.get(t), max_examples=n, rank_classification=True) for t in BENCH]
    merged = {}
    for ev in evaluators:
        rows = {}
        for i, ex in enumerate(ev.examples):
            if ev.name == "glue_sst2":
                wrong = next(c for c in ev.task.label_choices if c != ex["targets"])
                text = ex["targets"] if i < sst2_correct else wrong
            else:
                text = "2.6"
            pred = ev.task.postprocess(text, example=ex)
            rows[i] = (pred, pred, text)
        merged[ev.name] = rows
    return evaluate_predictions(evaluators, merged, step=0)


def test_metrics_json_and_the_experiment_table_give_the_same_benchmark_averages():
    """SST-2 90 + a constant STS-B: 45 in the run's metrics.json and in the experiment table (today: 90 and 45)."""
    evaluation = _evaluator_run(sst2_correct=18)
    assert evaluation["metrics"]["glue_sst2"]["accuracy"] == 90
    assert evaluation["averages"]["glue"] == pytest.approx(45)
    assert evaluation["metrics"]["glue_stsb"]["pearson_corrcoef"] == 0  # reported by the rule too
    plan = make_plan({"experiment": "same", "experiment_options": {
        "kind": "strategies", "tasks": list(BENCH), "corpus_task": "corpus_x", "pretrain_steps": 2,
        "finetune_steps": 2, "strategies": ["multitask"]}})
    (stage,) = plan.stages
    table = build_results(plan, {stage.name: {"steps": 4, "tokens": 1, "wall_time_s": 1.0, "checkpoint": "x",
                                              "metrics": evaluation["metrics"]}}, BENCH)
    row = table["rows"][0]
    assert row["averages"]["glue"] == pytest.approx(evaluation["averages"]["glue"])
    assert row["averages"]["overall"] == pytest.approx(evaluation["averages"]["overall"])
    # results.md of the run prints the same average
    md = format_metrics_table(evaluation["metrics"], averages=evaluation["averages"])
    assert "| **average** | glue | 45.00 |" in md


def test_a_constant_predicting_row_gets_a_finite_difference_p_and_intervals(tmp_path):
    """A row that predicts one value on STS-B: its correlations count as 0 in every bootstrap and permutation
    replicate, so its averages get intervals and its test against the baseline a finite difference and p (today:
    diff NaN, p None, no interval)."""
    plan = make_plan({"experiment": "const", "experiment_options": {
        "kind": "strategies", "tasks": list(BENCH), "corpus_task": "corpus_x", "pretrain_steps": 10,
        "finetune_steps": 6, "strategies": ["pretrain_finetune", "multitask"]}})

    def predict(row_key, task, examples, seed):
        if row_key == "multitask" and task == "glue_stsb":
            return synthetic_predictions(task, examples, 0.0, constant="2.6"), None
        return synthetic_predictions(task, examples, 0.8, seed=1), None

    res = build_results(plan, stage_results(plan, tmp_path, predict, n=80), BENCH,
                        metric_fns={t: TaskRegistry.get(t).metric_fns for t in BENCH})
    const = res["rows"][1]
    test = const["vs_baseline"]
    assert math.isfinite(test["diff"]) and test["diff"] < 0 and test["p"] is not None and test["significant"]
    lo, hi = const["averages_ci"]["glue"]
    assert lo is not None and lo <= const["averages"]["glue"] <= hi
    assert const["task_tests"]["glue_stsb"]["p"] is not None
    assert test["diff"] == pytest.approx(const["averages"]["glue"] - res["rows"][0]["averages"]["glue"])
    assert const["metrics"]["glue_stsb"]["pearson_corrcoef"] == 0
    assert const["ci"]["glue_stsb"]["pearson_corrcoef"] == [0.0, 0.0]
