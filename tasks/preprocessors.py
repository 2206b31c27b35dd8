"""Text preprocessors: one source row in, text-to-text example(s) out.

A text preprocessor is any callable ``fn(row: dict) -> dict | list[dict] | None``: a dict is one
example, a list is zero or more (ReCoRD makes one per answer), ``None`` drops the row. A task applies
its preprocessors in order, each to every example the previous one produced. A preprocessor that
declares a keyword-only parameter ``split`` receives the split name (seqio passes
``sequence_length`` the same way); WSC uses it to keep only correct referents for training.

The formats reproduce the t5 library's (``t5.data.preprocessors``: ``glue``, ``stsb``, ``wsc_simple``,
``record``, ``squad``, ``summarize``, ``translate``) character for character, including
TensorFlow/RE2 regex semantics: RE2's ``\\W`` and ``\\s`` are ASCII-only (``\\s`` = ``[\\t\\n\\f\\r ]``),
so we spell those classes out instead of relying on Python's Unicode-aware ones.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tasks.errors import RowError

Row = dict[str, Any]
TextPreprocessor = Callable[..., "Row | list[Row] | None"]

_RE2_SPACE = r"[\t\n\f\r ]"
# RE2's [[:punct:]] is the 32 ASCII punctuation characters, exactly Python's string.punctuation.
_RE2_PUNCT = re.compile("([" + re.escape(string.punctuation) + "])")
_RE2_SPACES = re.compile(_RE2_SPACE + "+")


def _field(row: Row, key: str) -> Any:
    """``row[key]``; a missing key or a null value (how Arrow fills a field absent from some rows) is a RowError."""
    value = row.get(key)
    if value is None:
        present = sorted(k for k, v in row.items() if v is not None)
        raise RowError(f"the row has no field '{key}' (or it is null); fields present: {present}", field=key)
    return value


def _label_name(row: Row, label_names: Sequence[str], key: str = "label") -> str:
    """T5's rule: label -1 (unlabelled test rows) becomes '<unk>', else ``label_names[label]``."""
    label = _field(row, key)
    if isinstance(label, (bool, np.bool_)):
        label = int(label)
    if not isinstance(label, (int, np.integer)):
        raise RowError(
            f"field '{key}' must be an integer class id in [-1, {len(label_names) - 1}], got {label!r}", field=key
        )
    if label == -1:
        return "<unk>"
    if not 0 <= label < len(label_names):
        raise RowError(
            f"label {label} is out of range: this task has {len(label_names)} classes {list(label_names)} "
            "(and -1 for unlabelled rows)",
            field=key,
        )
    return label_names[int(label)]


# --------------------------------------------------------------------------------------------------
# GLUE / SuperGLUE
# --------------------------------------------------------------------------------------------------


def glue(
    row: Row,
    *,
    benchmark_name: str,
    label_names: Sequence[str],
    feature_names: Sequence[str] | None = None,
    id_key: str | None = "idx",
) -> Row:
    """``"<benchmark> <key1>: <text1> <key2>: <text2>"`` → label name (t5 ``preprocessors.glue``).

    Without ``feature_names`` every field except ``label`` and ``idx`` is used, sorted by name (hence
    MNLI's ``hypothesis:`` before ``premise:``). MultiRC additionally loses ``<br>`` and ``<b>`` markup
    and keeps its three-part index for grouped metrics.
    """
    keys = list(feature_names) if feature_names else sorted(set(row) - {"label", "idx"})
    parts = [benchmark_name]
    for key in keys:
        value = _field(row, key)
        if not isinstance(value, str):
            raise RowError(f"field '{key}' must be a string, got {type(value).__name__}", field=key)
        parts += [f"{key}:", value]
    joined = " ".join(parts)
    out: Row = {}
    if benchmark_name == "multirc":
        joined = joined.replace("<br>", " ")
        joined = re.sub(r"<(/)?b>", "", joined)
        idx = _field(row, "idx")
        out["idx/paragraph"], out["idx/question"], out["idx/answer"] = idx["paragraph"], idx["question"], idx["answer"]
    elif id_key:
        out["idx"] = _field(row, id_key)
    out["inputs"] = joined
    out["targets"] = _label_name(row, label_names)
    return out


def _as_float32(value: Any) -> np.float32:
    return np.float32(value)


def stsb(row: Row) -> Row:
    """STS-B: the score rounded to the nearest 0.2 and printed with one decimal ("3.4").

    TensorFlow computes ``round(label * 5) / 5`` in float32 with round-half-to-even and prints with
    ``%.1f``; we do the same arithmetic in float32 so ties and representation match.
    """
    label = _field(row, "label")
    if isinstance(label, bool) or not isinstance(label, (int, float, np.floating, np.integer)):
        raise RowError(f"field 'label' must be a number in [0, 5], got {label!r}", field="label")
    # HF test rows carry -1 (t5 prints it as "-1.0"); anything else outside [0, 5] is a data error.
    if label != -1 and not 0.0 <= float(label) <= 5.0:
        raise RowError(f"STS-B score {label} is out of range [0, 5] (or -1 for unlabelled rows)", field="label")
    f5 = np.float32(5.0)
    rounded = np.round(_as_float32(label) * f5) / f5
    target = "%.1f" % float(np.float32(rounded))
    inputs = " ".join(["stsb sentence1:", _field(row, "sentence1"), "sentence2:", _field(row, "sentence2")])
    return {"inputs": inputs, "targets": target, "idx": row.get("idx")}


def _wsc_inputs(row: Row) -> str:
    """The WSC text with the pronoun (``span2_index``-th space-separated word) replaced by ``X``."""
    text = _field(row, "text")
    # Two texts whose indices are wrong upstream; t5 special-cases them identically.
    if text == (
        'The boy continued to whip the pony , and eventually the pony threw him over. '
        'John laughed out quite loud. "Good for him," he said. '
    ):
        return (
            'The boy continued to whip the pony , and eventually the pony threw him over. '
            'John laughed out quite loud. "Good for X ," he said.'
        )
    if text == (
        "When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic pebble "
        "in an iron safe . Some day they might want to use it , but really for now, what more could they wish for?"
    ):
        return (
            "When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic pebble "
            "in an iron safe . Some day they might want to use X , but really for now, what more could they wish for?"
        )
    words = text.split(" ")
    index = int(_field(row, "span2_index"))
    if not 0 < index < len(words):
        raise RowError(f"span2_index {index} is outside the text's {len(words)} words", field="span2_index")
    if words[index] != _field(row, "span2_text"):
        raise RowError(
            f"word {index} of the text is {words[index]!r}, not span2_text {row['span2_text']!r}", field="span2_text"
        )
    return " ".join([" ".join(words[:index]), "X", " ".join(words[index + 1 :])])


def wsc_simple(row: Row, *, split: str, label: str = "wsc:", train_splits: Sequence[str] = ("train",)) -> Row | None:
    """SuperGLUE WSC as T5's "simple" format: ``wsc: ... *pronoun* ...`` → the referent's text.

    On training splits only rows whose candidate referent is correct (label 1) are kept (T5's
    ``super_glue_wsc_v102_simple_train``); evaluation splits keep every row and the postprocessor
    compares the prediction with the candidate (``super_glue_wsc_v102_simple_eval``).
    """
    if split in train_splits and not int(row.get("label", 0) or 0):
        return None
    pronoun = _field(row, "span2_text")
    inputs = f"{label} " + _wsc_inputs(row).replace(" X ", f" *{pronoun}* ")
    return {
        "inputs": inputs,
        "targets": _field(row, "span1_text"),
        "label": row.get("label", 0),
        "idx": row.get("idx"),
    }


_HIGHLIGHT_AFTER_PUNCT = re.compile(r"(\.|\?|\!|\"|')\n@highlight\n")


def record(row: Row) -> list[Row]:
    """ReCoRD: one example per answer (``<unk>`` when there is none), t5 ``preprocessors.record``."""
    passage = _field(row, "passage")
    passage = _HIGHLIGHT_AFTER_PUNCT.sub(r"\1 ", passage)
    passage = passage.replace("\n@highlight\n", ". ")
    entities = list(_field(row, "entities"))
    inputs = " ".join(["record query:", _field(row, "query"), "entities:", ", ".join(entities), "passage:", passage])
    answers = list(_field(row, "answers"))
    idx = _field(row, "idx")
    return [
        {"inputs": inputs, "targets": target, "answers": answers,
         "idx/passage": idx["passage"], "idx/query": idx["query"]}
        for target in (answers or ["<unk>"])
    ]


# --------------------------------------------------------------------------------------------------
# SQuAD, summarisation, translation
# --------------------------------------------------------------------------------------------------


def pad_punctuation(text: str) -> str:
    """t5's ``_pad_punctuation``: ``regex_replace(text, r'([[:punct:]])', r' \\1 ')`` then runs of whitespace
    (RE2 ``\\s``) become one space. RE2's ``[[:punct:]]`` is ASCII punctuation only, so ``24–10``, ``x’s``, ``5°C``,
    ``€5`` and accented letters stay as they are. No stripping: a trailing "?" leaves a trailing space, as in T5's
    data."""
    return _RE2_SPACES.sub(" ", _RE2_PUNCT.sub(r" \1 ", text))


def _string_join(parts: Sequence[str]) -> str:
    return _RE2_SPACES.sub(" ", " ".join(parts))


def squad(row: Row, include_context: bool = True) -> Row:
    """``question: <q> context: <c>`` → the first answer, punctuation padded (t5 ``preprocessors.squad``)."""
    answers_field = _field(row, "answers")
    texts = answers_field.get("text") if isinstance(answers_field, dict) else None
    if texts is None:
        raise RowError("field 'answers' must be {'text': [...], 'answer_start': [...]}", field="answers")
    answers = [pad_punctuation(a) for a in texts]
    q = pad_punctuation(_field(row, "question"))
    c = pad_punctuation(_field(row, "context"))
    if include_context:
        inputs = _string_join(["question:", q, "context:", c])
    else:
        inputs = _string_join(["squad trivia question:", q])
    return {
        "inputs": inputs,
        "targets": answers[0] if answers else "",
        "id": row.get("id"),
        "context": c,
        "question": q,
        "answers": answers,
    }


def summarize(row: Row, *, article_key: str = "article", summary_key: str = "highlights") -> Row:
    """``summarize: <article>`` → summary (t5 ``preprocessors.summarize``)."""
    return {"inputs": " ".join(["summarize:", _field(row, article_key)]), "targets": _field(row, summary_key)}


_LANGUAGE_NAMES = {
    "en": "English", "de": "German", "fr": "French", "ro": "Romanian", "cs": "Czech", "ru": "Russian",
    "fi": "Finnish", "tr": "Turkish", "et": "Estonian", "lv": "Latvian", "zh": "Chinese", "ja": "Japanese",
    "es": "Spanish", "it": "Italian", "hi": "Hindi", "gu": "Gujarati", "kk": "Kazakh", "lt": "Lithuanian",
}


def translate(row: Row, *, source_language: str, target_language: str, field: str = "translation") -> Row:
    """``translate English to German: <en>`` → ``<de>`` (t5 ``preprocessors.translate``).

    Rows may be HF's ``{"translation": {"en": ..., "de": ...}}`` or flat ``{"en": ..., "de": ...}``.
    Language names are the English names babel gives the t5 library.
    """
    pair = row.get(field, row)
    src, tgt = source_language[:2], target_language[:2]
    for lang in (source_language, target_language):
        if lang not in pair:
            raise RowError(f"the translation pair has no '{lang}' text (keys: {sorted(pair)})", field=f"{field}.{lang}")
    prefix = f"translate {_LANGUAGE_NAMES[src]} to {_LANGUAGE_NAMES[tgt]}: "
    return {"inputs": prefix + pair[source_language], "targets": pair[target_language]}


# --------------------------------------------------------------------------------------------------
# Generic helpers
# --------------------------------------------------------------------------------------------------


def rekey(row: Row, *, key_map: dict[str, str]) -> Row:
    """New row with ``new_key: row[old_key]`` for each item of ``key_map`` (seqio ``rekey``)."""
    return {new: _field(row, old) for new, old in key_map.items()}


def lm_text(row: Row, *, text_key: str = "text") -> Row:
    """Raw text as the target with empty inputs: the starting point of unsupervised objectives."""
    return {"inputs": "", "targets": _field(row, text_key)}
