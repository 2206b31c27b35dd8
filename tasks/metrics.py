"""Metrics as the t5 library reports them: ``fn(targets, predictions) -> {name: score}``, 0–100.

Library code does the arithmetic (scikit-learn, scipy, sacrebleu, rouge-score); we own only
SQuAD's answer normalisation and the small grouping helpers for MultiRC and ReCoRD.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

MetricFn = Callable[[list, list], dict[str, float]]


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score

    return {"accuracy": 100.0 * float(accuracy_score(targets, predictions))}


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    from sklearn.metrics import matthews_corrcoef as mcc

    return {"matthews_corrcoef": 100.0 * float(mcc(targets, predictions))}


def f1_score_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Binary F1 where an invalid prediction (not 0/1) counts as the wrong class (t5)."""
    from sklearn.metrics import f1_score

    t = np.asarray(targets)
    p = np.array(predictions, copy=True)
    invalid = (p != 0) & (p != 1)
    p[invalid] = 1 - t[invalid]
    return {"f1": 100.0 * float(f1_score(t, p))}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
    """Macro F1 over ``num_classes`` classes, named ``mean_<n>class_f1`` (CB uses 3)."""

    def fn(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
        from sklearn.metrics import fbeta_score

        score = fbeta_score(targets, predictions, beta=1, labels=list(range(num_classes)), average="macro")
        return {f"mean_{num_classes}class_f1": 100.0 * float(score)}

    fn.__name__ = f"mean_{num_classes}class_f1"
    return fn


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    from scipy.stats import pearsonr

    return {"pearson_corrcoef": 100.0 * float(pearsonr(targets, predictions)[0])}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    from scipy.stats import spearmanr

    return {"spearman_corrcoef": 100.0 * float(spearmanr(targets, predictions)[0])}


# ----------------------------------------------------------------------------------------- SQuAD
def normalize_squad(answer: str) -> str:
    """Lower-case, drop ASCII punctuation, drop a/an/the, collapse whitespace (SQuAD's evaluator)."""
    text = answer.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCT = frozenset(string.punctuation)


def _token_f1(target: str, prediction: str) -> float:
    pred, ref = prediction.split(), target.split()
    same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """Exact match and token F1, each the max over a question's reference answers, mean × 100."""
    refs = [[normalize_squad(t) for t in answers] for answers in targets]
    preds = [normalize_squad(p) for p in predictions]
    em = [max(float(r == p) for r in rs) if rs else 0.0 for rs, p in zip(refs, preds)]
    f1 = [max(_token_f1(r, p) for r in rs) if rs else 0.0 for rs, p in zip(refs, preds)]
    return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


# ----------------------------------------------------------------------------------------- grouped
def multirc_f1_over_all_answers(targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> dict[str, float]:
    return f1_score_with_invalid([t["value"] for t in targets], [p["value"] for p in predictions])


def all_match(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    return {"exact_match": 100.0 * float(np.array_equal(targets, predictions))}


def mean_group_metric(metric_fn: MetricFn, group_key: str = "group", value_key: str = "value") -> MetricFn:
    """``metric_fn`` per group of targets (e.g. per MultiRC question), averaged over groups."""

    def fn(targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> dict[str, float]:
        groups: dict[Any, tuple[list, list]] = collections.defaultdict(lambda: ([], []))
        for t, p in zip(targets, predictions):
            groups[t[group_key]][0].append(t[value_key])
            groups[t[group_key]][1].append(p[value_key])
        scores: dict[str, list[float]] = collections.defaultdict(list)
        for ts, ps in groups.values():
            for name, value in metric_fn(ts, ps).items():
                scores[name].append(value)
        return {name: float(np.mean(values)) for name, values in scores.items()}

    fn.__name__ = f"mean_group_{getattr(metric_fn, '__name__', 'metric')}"
    return fn


def deduplicate_metric(metric_fn: MetricFn, group_key: str = "group", value_key: str = "value") -> MetricFn:
    """Keep the first (target, prediction) of each group, then ``metric_fn`` (ReCoRD has one example
    per answer but is scored once per query)."""

    def fn(targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> dict[str, float]:
        first: dict[Any, tuple[Any, Any]] = {}
        for t, p in zip(targets, predictions):
            first.setdefault(t[group_key], (t[value_key], p[value_key]))
        ts, ps = zip(*first.values()) if first else ((), ())
        return metric_fn(list(ts), list(ps))

    fn.__name__ = f"dedup_{getattr(metric_fn, '__name__', 'metric')}"
    return fn


# ----------------------------------------------------------------------------------------- generation
def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU with sacrebleu, T5's settings (intl tokenizer, exp smoothing, no lower-casing)."""
    import sacrebleu

    score = sacrebleu.corpus_bleu(
        list(predictions), [list(targets)], smooth_method="exp", smooth_value=0.0, force=False,
        lowercase=False, tokenize="intl", use_effective_order=False,
    )
    return {"bleu": float(score.score)}


def rouge(targets: Sequence[str], predictions: Sequence[str],
          score_keys: Sequence[str] = ("rouge1", "rouge2", "rougeLsum")) -> dict[str, float]:
    """ROUGE F-measures × 100 with rouge-score (Porter stemming), averaged over examples.

    As in t5, ``rougeLsum`` sees one sentence per line (" . " becomes " .\\n"). We average exactly
    rather than bootstrap-resampling, so the score is deterministic (the bootstrap's mid is the mean).
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(score_keys), use_stemmer=True)

    def prep(text: str) -> str:
        return text.replace(" . ", " .\n") if "rougeLsum" in score_keys else text

    totals = collections.defaultdict(float)
    for t, p in zip(targets, predictions):
        for key, value in scorer.score(prep(t), prep(p)).items():
            totals[key] += value.fmeasure
    n = max(len(targets), 1)
    return {key: 100.0 * totals[key] / n for key in score_keys}
