"""Postprocessors and metrics, on T5's 0-100 scale, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest

from tasks import TaskRegistry, metrics, postprocessors


def test_classification_postprocess_and_accuracy():
    task = TaskRegistry.get("glue_sst2")
    assert task.postprocess("positive") == 1 and task.postprocess("negative") == 0
    assert task.postprocess("great!") == -1  # invalid text is a wrong class, not an exception
    preds = [task.postprocess(p) for p in ["positive", "negative", "positive", "banana"]]
    assert task.compute_metrics([1, 0, 0, 1], preds) == {"accuracy": 50.0}


def test_mrpc_f1_with_invalid_counts_invalid_as_wrong():
    task = TaskRegistry.get("glue_mrpc")
    preds = [task.postprocess(p) for p in ["equivalent", "junk", "not_equivalent", "equivalent"]]
    scores = task.compute_metrics([1, 1, 0, 0], preds)
    # invalid -> 0 (wrong) : TP=1, FP=1, FN=1 -> F1 = 0.5; accuracy 2/4 (invalid never matches)
    assert scores == {"f1": pytest.approx(50.0), "accuracy": pytest.approx(50.0)}


def test_cola_matthews():
    scores = TaskRegistry.get("glue_cola").compute_metrics([1, 1, 0, 0], [1, 0, 0, 0])
    expected = (1 * 2 - 0 * 1) / math.sqrt((1 + 0) * (1 + 1) * (2 + 0) * (2 + 1))
    assert scores["matthews_corrcoef"] == pytest.approx(100 * expected)


def test_stsb_pearson_spearman():
    task = TaskRegistry.get("glue_stsb")
    assert task.postprocess("3.4") == 3.4 and task.postprocess("n/a") == -1.0
    scores = task.compute_metrics([1.0, 2.0, 3.0, 4.0], [1.2, 2.4, 2.8, 4.0])
    assert scores["spearman_corrcoef"] == pytest.approx(100.0)
    assert 95 < scores["pearson_corrcoef"] < 100


def test_cb_mean_3class_f1():
    scores = TaskRegistry.get("super_glue_cb").compute_metrics([0, 1, 2, 2], [0, 1, 2, 1])
    # per-class F1: c0 = 1, c1 = 2/3, c2 = 2/3 -> mean 7/9
    assert scores["mean_3class_f1"] == pytest.approx(100 * 7 / 9)
    assert scores["accuracy"] == pytest.approx(75.0)


def test_squad_em_f1_with_normalisation_and_multiple_answers():
    task = TaskRegistry.get("squad")
    example = {"answers": ["Denver Broncos", "the Broncos"]}
    assert task.postprocess("x", example=example, is_target=True) == ["Denver Broncos", "the Broncos"]
    targets = [["Denver Broncos", "the Broncos"], ["Saint Bernadette Soubirous"]]
    scores = task.compute_metrics(targets, ["broncos.", "Bernadette"])
    # q1: "broncos" == normalize("the Broncos") -> EM 1, F1 1; q2: EM 0, F1 = 2*(1*1/3)/(1+1/3) = 0.5
    assert scores["em"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(75.0)
    assert metrics.normalize_squad("The  Denver, Broncos!") == "denver broncos"


def test_multirc_grouped_metrics():
    task = TaskRegistry.get("super_glue_multirc")
    exs = [{"idx/question": 0}, {"idx/question": 0}, {"idx/question": 1}]
    targets = [task.postprocess(t, example=e, is_target=True) for t, e in zip(["True", "False", "True"], exs)]
    preds = [task.postprocess(p) for p in ["True", "False", "False"]]
    scores = task.compute_metrics(targets, preds)
    assert scores["exact_match"] == pytest.approx(50.0)  # question 0 all right, question 1 wrong
    assert scores["f1"] == pytest.approx(100 * 2 / 3)  # TP=1, FN=1, FP=0


def test_record_deduplicated_squad():
    task = TaskRegistry.get("super_glue_record")
    ex = {"answers": ["Leeds", "Leeds United"], "idx/passage": 0, "idx/query": 0}
    targets = [task.postprocess(t, example=ex, is_target=True) for t in ["Leeds", "Leeds United"]]
    preds = [task.postprocess(p) for p in ["Leeds United", "York"]]
    assert task.compute_metrics(targets, preds) == {"em": 100.0, "f1": 100.0}  # scored once per query


def test_wsc_simple_postprocessor():
    ex = {"targets": "the city councilmen", "label": 1}
    assert postprocessors.wsc_simple("The councilmen", example=ex) == 1
    assert postprocessors.wsc_simple("the demonstrators", example=ex) == 0
    assert postprocessors.wsc_simple("councilmen's permit", example=ex) == 0
    assert postprocessors.wsc_simple("x", example=ex, is_target=True) == 1


def test_bleu_and_rouge():
    assert (TaskRegistry.get("wmt_ende").compute_metrics(["Das ist gut ."], ["Das ist gut ."])
            == {"bleu": pytest.approx(100.0)})
    low = metrics.bleu(["Das ist ein sehr gutes Haus ."], ["Ein Haus ."])["bleu"]
    assert 0 <= low < 30
    scores = TaskRegistry.get("cnn_dailymail").compute_metrics(["the cat sat on the mat ."], ["the cat sat ."])
    assert set(scores) == {"rouge1", "rouge2", "rougeLsum"}
    # rouge-score drops punctuation: overlap the, cat, sat = 3; P = 3/3, R = 3/6 -> F = 2/3
    assert scores["rouge1"] == pytest.approx(100 * 2 / 3)


def test_metric_length_mismatch_is_an_error():
    from tasks import TaskError

    with pytest.raises(TaskError, match="2 targets but 1 predictions"):
        TaskRegistry.get("glue_sst2").compute_metrics([0, 1], [0])
