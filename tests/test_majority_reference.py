"""The majority-class reference of a run (issue 24 item 7): the "≤ majority" flag of one run's results.md comes from
a paired test against the majority predictions, not from point estimates, and an eval-only task gets its majority
class from the evaluated split, with a note."""

from __future__ import annotations

import functools

import pytest

from lightning_t5.eval.evaluation import TaskEvaluator, evaluate_predictions, format_metrics_table
from lightning_t5.experiments import make_plan
from lightning_t5.experiments.results import build_results, render_markdown
from tasks import Task, TaskRegistry, metrics, postprocessors
from tasks.sources import FileSource

COLA_LABELS = ["unacceptable", "acceptable"]


def _predict(ev: TaskEvaluator, texts: list[str]) -> dict:
    return {ev.name: {i: (ev.task.postprocess(t, example=ex), ev.task.postprocess(t, example=ex), t)
                      for i, (ex, t) in enumerate(zip(ev.examples, texts))}}


def _line(md: str, task: str, metric: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {task} | {metric} |"))


def test_a_score_inside_the_noise_of_the_majority_class_is_flagged():
    """RTE on 100 examples, a model that predicts the majority label except on 3 examples it gets right: 3 points
    above the majority class, with an interval of about +-10 around it. Not above the majority class, so flagged
    (today the point estimates decide, and 53 > 50 is not flagged)."""
    ev = TaskEvaluator(TaskRegistry.get("glue_rte"), max_examples=100, rank_classification=True)
    label = ev.majority()["prediction"]
    fixed = [i for i, ex in enumerate(ev.examples) if ex["targets"] != label][:3]
    texts = [ex["targets"] if i in fixed else label for i, ex in enumerate(ev.examples)]
    result = evaluate_predictions([ev], _predict(ev, texts), step=1)
    acc, maj = result["metrics"]["glue_rte"]["accuracy"], result["majority"]["glue_rte"]["metrics"]["accuracy"]
    assert acc == pytest.approx(maj + 3)
    lo, hi = result["ci"]["glue_rte"]["accuracy"]
    assert lo < maj < acc < hi
    md = format_metrics_table(result["metrics"], averages=result["averages"], ci=result["ci"],
                              counts=result["num_examples"], majority=result["majority"])
    assert "**≤ majority**" in _line(md, "glue_rte", "accuracy")
    assert "paired permutation test" in md
    test = result["majority"]["glue_rte"]["tests"]["accuracy"]
    assert test["diff"] == pytest.approx(3) and test["p"] > 0.05 and test["above"] is False
    assert result["majority"]["glue_rte"]["source"] == "train"

    # a model that gets everything right is above it, by the same test
    good = evaluate_predictions([ev], _predict(ev, [ex["targets"] for ex in ev.examples]), step=1)
    assert good["majority"]["glue_rte"]["tests"]["accuracy"]["above"] is True
    md = format_metrics_table(good["metrics"], ci=good["ci"], majority=good["majority"])
    assert "≤ majority" not in _line(md, "glue_rte", "accuracy")


def test_without_a_recorded_test_the_interval_decides():
    """A metrics.json written before the test existed: the flag comes from the interval, not the point estimate."""
    metrics = {"glue_rte": {"accuracy": 53.0}}
    majority = {"glue_rte": {"prediction": "entailment", "metrics": {"accuracy": 50.0}}}
    wide = format_metrics_table(metrics, ci={"glue_rte": {"accuracy": [43.0, 62.0]}}, majority=majority)
    narrow = format_metrics_table(metrics, ci={"glue_rte": {"accuracy": [51.0, 55.0]}}, majority=majority)
    assert "≤ majority" in _line(wide, "glue_rte", "accuracy")
    assert "≤ majority" not in _line(narrow, "glue_rte", "accuracy")


@pytest.fixture
def eval_only_task():
    """Out-of-domain CoLA as a user's eval-only task: a validation split and no train split."""
    def acceptability(row):
        return {"inputs": "cola sentence: " + row["sentence"], "targets": COLA_LABELS[int(row["label"])]}

    task = Task("ood_cola_eval_only", FileSource({"validation": "data/cola/validation.jsonl"}), [acceptability],
                postprocess_fn=functools.partial(postprocessors.string_label_to_class_id, label_classes=COLA_LABELS),
                metric_fns=[metrics.matthews_corrcoef], label_choices=COLA_LABELS)
    TaskRegistry.add(task, replace=True)
    yield task
    TaskRegistry.remove(task.name)


def test_an_eval_only_task_gets_its_majority_class_from_the_eval_split_with_a_note(eval_only_task, tmp_path):
    ev = TaskEvaluator(eval_only_task, max_examples=60, rank_classification=True)
    assert "train" not in eval_only_task.splits
    maj = ev.majority()
    counts = {c: sum(ex["targets"] == c for ex in ev.examples) for c in COLA_LABELS}
    assert maj is not None and maj["source"] == "validation" and maj["prediction"] == max(counts, key=counts.get)
    assert maj["metrics"]["matthews_corrcoef"] == 0  # a constant prediction has no correlation
    result = evaluate_predictions([ev], _predict(ev, [ex["targets"] for ex in ev.examples]), step=1)
    md = format_metrics_table(result["metrics"], ci=result["ci"], majority=result["majority"])
    assert "| 0.00 |" in _line(md, eval_only_task.name, "matthews_corrcoef")  # the reference, not "—"
    assert "Majority class of ood_cola_eval_only: the most frequent target of its evaluated validation examples" in md

    # the experiment table says the same
    plan = make_plan({"experiment": "ood", "experiment_options": {
        "kind": "strategies", "tasks": [eval_only_task.name], "corpus_task": "corpus_x", "pretrain_steps": 2,
        "finetune_steps": 2, "strategies": ["multitask"]}})
    (stage,) = plan.stages
    table = build_results(plan, {stage.name: {"steps": 4, "tokens": 1, "wall_time_s": 1.0, "checkpoint": "x",
                                              "metrics": result["metrics"], "majority": result["majority"]}},
                          {eval_only_task.name: None})
    assert table["majority"]["sources"] == {eval_only_task.name: "validation"}
    assert "for ood_cola_eval_only (no train split) the most frequent target of the evaluated" in render_markdown(table)
