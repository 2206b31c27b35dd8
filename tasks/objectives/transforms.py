"""Turn ``(tokens [B, L], noise_mask [B, L])`` into corrupted inputs or targets, for a whole batch at once.

These are the t5 library's ``inputs_fn``/``targets_fn`` building blocks (``noise_span_to_unique_sentinel``,
``nonnoise_span_to_unique_sentinel``, ``drop_noise_tokens``, ``drop_nonnoise_tokens``,
``noise_token_to_sentinel``, ``noise_token_to_random_token_or_sentinel``, ``permute_noise_tokens``),
written as boolean-mask arithmetic on 2-D arrays. Outputs whose length varies per row come back as a
:class:`Ragged` (flat values + row lengths) so no per-row Python work happens in the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.objectives import rng


@dataclass
class Ragged:
    """A batch of variable-length rows stored flat: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``."""

    values: np.ndarray
    lengths: np.ndarray

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> "Ragged":
        batch, width = dense.shape
        return cls(dense.reshape(-1), np.full(batch, width, dtype=np.int64))

    @classmethod
    def from_mask(cls, values2d: np.ndarray, keep: np.ndarray) -> "Ragged":
        """Rows of ``values2d`` restricted to ``keep`` (row-major order is preserved by boolean indexing)."""
        return cls(values2d[keep], keep.sum(axis=1, dtype=np.int64))

    def trim(self, max_length: int | None) -> "Ragged":
        """Cut every row to at most ``max_length`` tokens (seqio's trim; a no-op when all rows fit)."""
        if max_length is None or len(self.lengths) == 0 or int(self.lengths.max()) <= max_length:
            return self
        starts = np.cumsum(self.lengths) - self.lengths
        within = np.arange(len(self.values)) - np.repeat(starts, self.lengths)
        return Ragged(self.values[within < max_length], np.minimum(self.lengths, max_length))

    def rows(self) -> list[np.ndarray]:
        """The rows as a list of arrays (views into one buffer)."""
        batch = len(self.lengths)
        if batch == 0:
            return []
        first = int(self.lengths[0])
        if np.all(self.lengths == first):
            return list(self.values.reshape(batch, first))
        return np.split(self.values, np.cumsum(self.lengths)[:-1])


def _span_starts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, subsequent)``: noise tokens that start a run, and noise tokens that continue one."""
    prev = np.zeros_like(mask)
    prev[:, 1:] = mask[:, :-1]
    return mask & ~prev, mask & prev


def noise_span_to_unique_sentinel(
    tokens: np.ndarray, mask: np.ndarray, vocabulary_size: int, num_sentinels: int | None = None
) -> Ragged:
    """Replace each run of noise by one sentinel, counting down from ``<extra_id_0> = vocabulary_size - 1``."""
    first, subsequent = _span_starts(mask)
    spans_per_row = first.sum(axis=1, dtype=np.int64)
    if num_sentinels is not None and mask.size and int(spans_per_row.max()) > num_sentinels:
        worst = int(np.argmax(spans_per_row))
        raise ValueError(
            f"row {worst} of the batch has {int(spans_per_row[worst])} corrupted spans but the vocabulary has only "
            f"{num_sentinels} sentinel ids (<extra_id_0>..<extra_id_{num_sentinels - 1}>): use a vocabulary with more "
            f"extra_ids, shorter windows (sequence_length) or a lower noise_density / longer mean_noise_span_length."
        )
    # Boolean indexing walks the batch row-major, so the k-th run start of a row gets <extra_id_k>
    # (id vocabulary_size - 1 - k): a per-span counter instead of a cumsum over every token.
    total = int(spans_per_row.sum())
    if total:
        rank = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(spans_per_row) - spans_per_row, spans_per_row)
        with_sentinels = tokens.copy()
        with_sentinels[first] = (vocabulary_size - 1 - rank).astype(tokens.dtype, copy=False)
    else:
        with_sentinels = tokens
    return Ragged.from_mask(with_sentinels, ~subsequent)


def nonnoise_span_to_unique_sentinel(
    tokens: np.ndarray, mask: np.ndarray, vocabulary_size: int, num_sentinels: int | None = None
) -> Ragged:
    """Keep the noise and replace each run of non-noise by a sentinel (the targets of span corruption)."""
    return noise_span_to_unique_sentinel(tokens, ~mask, vocabulary_size, num_sentinels)


def drop_noise_tokens(tokens: np.ndarray, mask: np.ndarray) -> Ragged:
    """Keep only the non-noise tokens."""
    return Ragged.from_mask(tokens, ~mask)


def drop_nonnoise_tokens(tokens: np.ndarray, mask: np.ndarray) -> Ragged:
    """Keep only the noise tokens."""
    return Ragged.from_mask(tokens, mask)


def noise_token_to_sentinel(tokens: np.ndarray, mask: np.ndarray, vocabulary_size: int) -> np.ndarray:
    """Replace every noise token by the single mask sentinel ``<extra_id_0>`` (MASS-style / "mask tokens")."""
    return np.where(mask, np.asarray(vocabulary_size - 1, dtype=tokens.dtype), tokens)


def noise_token_to_random_token_or_sentinel(
    tokens: np.ndarray,
    mask: np.ndarray,
    seeds: np.ndarray,
    vocabulary_size: int,
    mask_prob: float = 0.8,
    random_prob: float = 0.1,
    random_low: int = 3,
    random_high: int | None = None,
) -> np.ndarray:
    """BERT's rule: a noise token becomes the mask sentinel (``mask_prob``), a random ordinary token
    (``random_prob``), or stays unchanged (the rest).

    BERT uses 0.8/0.1/0.1. The t5 library's ``noise_token_to_random_token_or_sentinel`` is 0.9/0.1/0.0
    (``mask_prob=0.9, random_prob=0.1``). Random tokens are drawn uniformly from ``[random_low,
    random_high)``; the default excludes the reserved ids (pad, eos, unk: T5's ``num_reserved_tokens=3``)
    and, unlike T5, the sentinel ids, so a random replacement is always an ordinary token.
    """
    if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1 + 1e-12:
        raise ValueError(
            "BERT rule needs mask_prob, random_prob >= 0 with mask_prob + random_prob <= 1; "
            f"got {mask_prob}, {random_prob}."
        )
    high = vocabulary_size if random_high is None else random_high
    batch, length = tokens.shape
    choice = rng.uniform(seeds, rng.STREAM_BERT_CHOICE, length)
    to_mask = mask & (choice < mask_prob)
    to_random = mask & (choice >= mask_prob) & (choice < mask_prob + random_prob)
    out = np.where(to_mask, np.asarray(vocabulary_size - 1, dtype=tokens.dtype), tokens)
    if random_prob > 0:
        random_tokens = rng.integers(seeds, rng.STREAM_BERT_TOKEN, length, random_low, high).astype(tokens.dtype)
        out = np.where(to_random, random_tokens, out)
    return out


def permute_noise_tokens(tokens: np.ndarray, mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Shuffle the noise tokens among the noise positions of each row (all positions: deshuffling)."""
    batch, length = tokens.shape
    keys = rng.random_bits(seeds, rng.STREAM_PERMUTE, length)
    if mask.all():
        order = np.argsort(keys, axis=1)
        return np.take_along_axis(tokens, order, axis=1)
    top = np.uint64(0xFFFFFFFFFFFFFFFF)
    source = np.argsort(np.where(mask, keys >> np.uint64(1), top), axis=1)  # noise positions, random order
    target = np.argsort(~mask, axis=1, kind="stable")  # noise positions, ascending
    valid = np.arange(length)[None, :] < mask.sum(axis=1, keepdims=True)
    rows = np.broadcast_to(np.arange(batch)[:, None], (batch, length))[valid]
    out = tokens.copy()
    out[rows, target[valid]] = tokens[rows, source[valid]]
    return out
