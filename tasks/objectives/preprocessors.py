"""The objectives as :class:`tasks.Task` token preprocessors (the TokenPreprocessor protocol of
docs/CONTRACTS.md): frozen dataclasses whose fields are the hyper-parameters, so
``Task.with_options(noise_density=0.5)`` is a ``dataclasses.replace`` on each preprocessor that has the field.

A corpus task uses two of them: a cacheable :class:`ChunkCorpus` (documents -> raw windows whose length
the objective needs for the requested ``sequence_length``) and one random :class:`Denoise` objective
applied per example at ``Task.finalize`` time. :func:`objective_preprocessors` builds the matching pair.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from tasks.errors import TaskError
from tasks.objectives import chunking, functional, masks

#: Used when ``Task.tokenized(split)`` is called without a sequence length.
DEFAULT_SEQUENCE_LENGTH = {"inputs": 512, "targets": 512}

#: Fields that determine the raw window length (shared by Denoise and ChunkCorpus, so that
#: ``with_options`` updates both consistently).
_WINDOW_FIELDS = ("noise_mask", "inputs", "targets", "noise_density", "mean_noise_span_length")


def _fingerprint(obj: Any) -> str:
    fields = ",".join(f"{f.name}={getattr(obj, f.name)!r}" for f in dataclasses.fields(obj))
    return f"{type(obj).__name__}({fields})@v1"


def _vocab_sizes(vocabulary: Any, who: str) -> tuple[int, int]:
    try:
        size = int(vocabulary.vocab_size)
    except AttributeError as err:
        raise TaskError(f"{who}: the task's vocabulary {vocabulary!r} has no vocab_size.") from err
    return size, int(getattr(vocabulary, "extra_ids", functional.DEFAULT_NUM_SENTINELS))


def _validate_objective(obj: Any) -> None:
    who = f"objective {obj.name!r}"
    if obj.noise_mask not in masks.NOISE_MASKS:
        raise TaskError(f"{who}: noise_mask={obj.noise_mask!r} is not one of {sorted(masks.NOISE_MASKS)}.")
    if obj.inputs not in functional.INPUTS_FNS:
        raise TaskError(f"{who}: inputs={obj.inputs!r} is not one of {list(functional.INPUTS_FNS)}.")
    if obj.targets not in functional.TARGETS_FNS:
        raise TaskError(f"{who}: targets={obj.targets!r} is not one of {list(functional.TARGETS_FNS)}.")
    if not 0.0 < float(obj.noise_density) <= 1.0:
        raise TaskError(f"{who}: noise_density must be in (0, 1], got {obj.noise_density}.")
    if obj.noise_mask == "prefix" and obj.noise_density > 0.5:
        raise TaskError(
            f"{who}: a prefix noise mask supports noise_density <= 0.5 (0.5 = uniform split point), "
            f"got {obj.noise_density}."
        )
    if float(obj.mean_noise_span_length) < 1.0:
        raise TaskError(f"{who}: mean_noise_span_length must be >= 1, got {obj.mean_noise_span_length}.")


@dataclass(frozen=True)
class Denoise:
    """One random objective, T5's ``denoise`` (see :mod:`tasks.objectives.functional` for the table).

    Reads the raw window from ``batch["targets"]`` (corpus tasks store it there) and writes corrupted
    ``inputs`` and ``targets`` without EOS, trimmed to ``sequence_length - 1``.
    """

    name: str = "span_corruption"
    noise_mask: str = "random_spans"
    inputs: str = "unique_sentinels"
    targets: str = "unique_sentinels"
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    mask_prob: float = 0.8
    random_prob: float = 0.1

    cacheable: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _validate_objective(self)
        probs_ok = 0 <= self.mask_prob and 0 <= self.random_prob and self.mask_prob + self.random_prob <= 1
        if self.inputs == "bert" and not probs_ok:
            raise TaskError(f"objective {self.name!r}: need mask_prob, random_prob >= 0 "
                            "and mask_prob + random_prob <= 1, "
                            f"got {self.mask_prob}, {self.random_prob}.")

    def fingerprint(self) -> str:
        return _fingerprint(self)

    def raw_length(self, sequence_length: Mapping[str, int] | None) -> int:
        """Raw tokens per window for ``sequence_length`` (see :func:`functional.raw_window_length`)."""
        return functional.raw_window_length(
            sequence_length or DEFAULT_SEQUENCE_LENGTH, **{k: getattr(self, k) for k in _WINDOW_FIELDS}
        )

    def output_lengths(self, raw_inputs: np.ndarray, raw_targets: np.ndarray,
                       sequence_length: Mapping[str, int] | None) -> tuple[np.ndarray, np.ndarray]:
        """Lengths of this objective's outputs (no EOS, trimmed like :meth:`__call__`) for raw windows of
        ``raw_targets`` tokens, by length arithmetic alone (the sampler plans packing with them).

        Exact for random spans with sentinel/drop inputs and targets (T5's span corruption: a window of 568 gives
        511 and 113) and for objectives that keep the window's length; an upper bound when the length is random
        (i.i.d. noise, prefix LM).
        """
        L = np.asarray(raw_targets, np.int64)
        out_in = L.copy()
        out_tg = L + 1 if self.targets == "unique_sentinels" else L.copy()
        exact = (self.noise_mask == "random_spans" and self.noise_density > 0
                 and self.inputs in ("unique_sentinels", "drop") and self.targets in ("unique_sentinels", "noise"))
        if exact:
            for length in np.unique(L[L >= 2]).tolist():
                noise, spans = masks.random_spans_counts(length, self.noise_density, self.mean_noise_span_length)
                sel = L == length
                out_in[sel] = length - noise + spans * (self.inputs == "unique_sentinels")
                out_tg[sel] = noise + spans * (self.targets == "unique_sentinels")
        if sequence_length is not None:
            out_in = np.minimum(out_in, int(sequence_length["inputs"]) - 1)
            out_tg = np.minimum(out_tg, int(sequence_length["targets"]) - 1)
        return out_in, out_tg

    def __call__(
        self,
        batch: dict[str, list[np.ndarray]],
        *,
        seeds: np.ndarray,
        sequence_length: Mapping[str, int] | None,
        vocabulary: Any,
    ) -> dict[str, list[np.ndarray]]:
        if "targets" not in batch:
            raise TaskError(f"objective {self.name!r}: the batch has no 'targets' column (the raw-token windows); "
                            f"columns are {sorted(batch)}.")
        vocab_size, extra_ids = _vocab_sizes(vocabulary, f"objective {self.name!r}")
        try:
            out = functional.denoise(
                batch["targets"], seeds, vocabulary_size=vocab_size,
                noise_mask=self.noise_mask, inputs=self.inputs, targets=self.targets,
                noise_density=self.noise_density, mean_noise_span_length=self.mean_noise_span_length,
                mask_prob=self.mask_prob, random_prob=self.random_prob, num_sentinels=extra_ids,
                sequence_length=sequence_length,
            )
        except ValueError as err:
            if isinstance(err, TaskError):
                raise
            raise TaskError(f"objective {self.name!r} ({self.fingerprint()}): {err}") from err
        return {**{k: v for k, v in batch.items() if k not in ("inputs", "targets")}, **out}


# Named objectives: the same recipe with the T5 paper's settings as defaults.
@dataclass(frozen=True)
class SpanCorruption(Denoise):
    """T5's final objective: random spans, 15 %, mean span 3, unique sentinels in inputs and targets."""


@dataclass(frozen=True)
class IidReplaceSpans(Denoise):
    """"Replace corrupted spans": i.i.d. noise; each run of noise -> one sentinel; targets the runs."""

    name: str = "iid_replace_spans"
    noise_mask: str = "iid"


@dataclass(frozen=True)
class IidDrop(Denoise):
    """"Drop corrupted tokens": i.i.d. noise dropped from the inputs; the targets are those tokens."""

    name: str = "iid_drop"
    noise_mask: str = "iid"
    inputs: str = "drop"
    targets: str = "noise"


@dataclass(frozen=True)
class MaskTokens(Denoise):
    """BERT-style without the 80/10/10 rule: every corrupted token -> ``<extra_id_0>``; targets the original."""

    name: str = "mask_tokens"
    noise_mask: str = "iid"
    inputs: str = "mask"
    targets: str = "original"


@dataclass(frozen=True)
class Mass(MaskTokens):
    """MASS-style as the T5 paper ran it: i.i.d. 15 % tokens -> mask sentinel, targets the full original
    (identical to :class:`MaskTokens` in the t5 library; a separate name for the paper's table)."""

    name: str = "mass"


@dataclass(frozen=True)
class BertMLM(Denoise):
    """BERT-style MLM: corrupted tokens -> mask (80 %) / random ordinary token (10 %) / unchanged (10 %);
    targets the original. ``mask_prob=0.9, random_prob=0.1`` reproduces the t5 library's variant."""

    name: str = "bert_mlm"
    noise_mask: str = "iid"
    inputs: str = "bert"
    targets: str = "original"


@dataclass(frozen=True)
class PrefixLM(Denoise):
    """Prefix LM: a uniform split point in ``[1, L - 1]``; inputs the prefix, targets the rest."""

    name: str = "prefix_lm"
    noise_mask: str = "prefix"
    inputs: str = "drop"
    targets: str = "noise"
    noise_density: float = 0.5


@dataclass(frozen=True)
class Deshuffle(Denoise):
    """Deshuffling: the window's tokens shuffled in, the original order out."""

    name: str = "deshuffle"
    noise_mask: str = "all"
    inputs: str = "permute"
    targets: str = "original"
    noise_density: float = 1.0


OBJECTIVES: dict[str, type[Denoise]] = {
    cls().name: cls
    for cls in (SpanCorruption, IidReplaceSpans, IidDrop, MaskTokens, Mass, BertMLM, PrefixLM, Deshuffle)
}


@dataclass(frozen=True)
class ChunkCorpus:
    """Cacheable corpus chunking: tokenized documents (``batch["targets"]``) -> raw-token windows.

    The window length is the objective's :meth:`Denoise.raw_length` for the requested sequence length,
    so its raw-length fields mirror the objective's (build it with :meth:`for_objective`). Row count
    changes; the output has only ``inputs`` (empty) and ``targets`` (one window each).
    """

    name: str = "chunk_corpus"
    noise_mask: str = "random_spans"
    inputs: str = "unique_sentinels"
    targets: str = "unique_sentinels"
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    max_chunk_length: int = 65536
    concat_documents: int = 128

    cacheable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _validate_objective(self)
        if self.max_chunk_length < 1 or self.concat_documents < 1:
            raise TaskError(f"chunk_corpus: max_chunk_length and concat_documents must be >= 1, got "
                            f"{self.max_chunk_length}, {self.concat_documents}.")

    @classmethod
    def for_objective(cls, objective: Denoise, **kwargs: Any) -> "ChunkCorpus":
        return cls(**{k: getattr(objective, k) for k in _WINDOW_FIELDS}, **kwargs)

    def fingerprint(self) -> str:
        return _fingerprint(self)

    def window_length(self, sequence_length: Mapping[str, int] | None) -> int:
        return functional.raw_window_length(
            sequence_length or DEFAULT_SEQUENCE_LENGTH, **{k: getattr(self, k) for k in _WINDOW_FIELDS}
        )

    def __call__(
        self, batch: dict[str, list[np.ndarray]], *, sequence_length: Mapping[str, int] | None, vocabulary: Any
    ) -> dict[str, list[np.ndarray]]:
        if "targets" not in batch:
            raise TaskError(
                f"chunk_corpus: the batch has no 'targets' column (tokenized documents); columns are {sorted(batch)}."
            )
        try:
            length = self.window_length(sequence_length)
        except ValueError as err:
            raise TaskError(f"chunk_corpus ({self.fingerprint()}): sequence_length {sequence_length!r}: {err}") from err
        if self.noise_mask == "random_spans" and "unique_sentinels" in (self.inputs, self.targets):
            _, extra_ids = _vocab_sizes(vocabulary, "chunk_corpus") if vocabulary is not None else (0, None)
            _, spans = masks.random_spans_counts(length, self.noise_density, self.mean_noise_span_length)
            if extra_ids is not None and spans > extra_ids:
                raise TaskError(
                    f"chunk_corpus: windows of {length} raw tokens "
                    f"(sequence_length {dict(sequence_length or DEFAULT_SEQUENCE_LENGTH)}) "
                    f"get {spans} corrupted spans at noise_density={self.noise_density}, mean_noise_span_length="
                    f"{self.mean_noise_span_length}, but the vocabulary has only {extra_ids} sentinel ids: use a "
                    f"vocabulary with more extra_ids, a shorter sequence_length or longer spans."
                )
        windows = chunking.concat_and_split(
            batch["targets"], length, max_chunk_length=self.max_chunk_length, concat_documents=self.concat_documents
        )
        empty = np.zeros(0, dtype=np.int32)
        return {"inputs": [empty] * len(windows), "targets": windows}


def objective_preprocessors(objective: Denoise | str, **options: Any) -> list[Any]:
    """``[ChunkCorpus, objective]`` for a corpus task; ``options`` override the objective's fields.

    ``objective_preprocessors("span_corruption", noise_density=0.5, mean_noise_span_length=10)``
    """
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise TaskError(f"unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)}.")
        objective = OBJECTIVES[objective]()
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(objective)})
    if unknown:
        raise TaskError(f"objective {objective.name!r} has no option(s) {unknown}; its options are "
                        f"{[f.name for f in dataclasses.fields(objective) if f.name != 'name']}.")
    objective = dataclasses.replace(objective, **options)
    return [ChunkCorpus.for_objective(objective), objective]
