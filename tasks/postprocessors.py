"""Postprocessors: decoded text -> the value a metric compares (the t5 library's behaviour).

Signature: ``fn(text, example=None, is_target=False)``; ``example`` is the text example
(:meth:`tasks.Task.text_examples`), used where the target lives outside the text (SQuAD's list of
answers, MultiRC's question group, WSC's label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def identity(text: str, example: Mapping[str, Any] | None = None, is_target: bool = False) -> str:
    return text


def string_to_float(text: str, example: Mapping[str, Any] | None = None, is_target: bool = False,
                    default: float = -1.0) -> float:
    """STS-B: the number, or ``default`` (-1) when the model wrote something else."""
    try:
        return float(text)
    except ValueError:
        return default


def string_label_to_class_id(text: str, example: Mapping[str, Any] | None = None, is_target: bool = False, *,
                             label_classes: Sequence[str], default: int = -1) -> int:
    """Index of ``text`` in ``label_classes`` or ``default`` (-1, counted wrong by the metrics)."""
    try:
        return list(label_classes).index(text)
    except ValueError:
        return default


def multirc(text: str, example: Mapping[str, Any] | None = None, is_target: bool = False) -> dict[str, Any]:
    """``{"value": class id, "group": question id (targets only)}`` for MultiRC's grouped metrics."""
    res: dict[str, Any] = {"value": string_label_to_class_id(text, label_classes=("False", "True"))}
    if is_target:
        if example is None:
            raise ValueError("multirc postprocessing of a target needs its example (for 'idx/question')")
        res["group"] = example["idx/question"]
    return res


def record(text: str, example: Mapping[str, Any] | None = None, is_target: bool = False) -> dict[str, Any]:
    """ReCoRD: targets are every acceptable answer plus the (passage, query) group."""
    if is_target:
        if example is None:
            raise ValueError("record postprocessing of a target needs its example (for 'answers')")
        return {"value": list(example["answers"]), "group": (example["idx/passage"], example["idx/query"])}
    return {"value": text}


def qa(text: str, example: Mapping[str, Any] | None = None, is_target: bool = False) -> Any:
    """SQuAD: targets are every reference answer (punctuation-padded like the inputs)."""
    if is_target:
        if example is None:
            raise ValueError("qa postprocessing of a target needs its example (for 'answers')")
        return list(example["answers"])
    return text


_DETERMINERS = frozenset({
    "a", "an", "few", "her", "his", "each", "every", "many", "much", "my", "our", "some", "that", "the",
    "their", "these", "this", "those", "which", "whose", "your",
})


def _wsc_clean(text: str) -> str:
    return " ".join(w for w in text.strip().lower().split(" ") if w not in _DETERMINERS)


def wsc_simple(text: str, example: Mapping[str, Any] | None = None, is_target: bool = False) -> int:
    """1 if the prediction names the example's candidate referent (ignoring case and determiners).

    For targets, the example's label (is the candidate the right referent?); so accuracy scores
    whether the model's answer matches the candidate exactly when the candidate is correct.
    """
    if example is None:
        raise ValueError("wsc_simple postprocessing needs the example (its 'targets' and 'label')")
    if is_target:
        return int(example["label"])
    referent = _wsc_clean(example["targets"])
    prediction = _wsc_clean(text)
    if ("'" in prediction) != ("'" in referent):
        return 0  # "Bob" vs "Bob's hat"
    pred_words, ref_words = set(prediction.split(" ")), set(referent.split(" "))
    return int(pred_words <= ref_words or ref_words <= pred_words)
