"""Noise masks over a ``[B, L]`` batch of equal-length windows, and T5's length arithmetic.

Each mask function returns a boolean ``[B, L]`` array (True = noise / corrupted) and reproduces the
distribution of the t5 library's function of the same name (``t5/data/preprocessors.py``); the random
numbers come from :mod:`tasks.objectives.rng`, so row ``i`` depends only on ``seeds[i]``.
"""

from __future__ import annotations

import numpy as np

from tasks.objectives import rng


def _round_f32(x: float) -> int:
    """``tf.round`` on a float32 value: round half to even, in float32 like the t5 library."""
    return int(np.round(np.float32(x)))


def random_spans_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """``(num_noise_tokens, num_noise_spans)`` for one window of ``length`` raw tokens, as T5 computes them.

    ``num_noise = round(L * density)`` clipped to ``[1, L - 1]``; ``num_spans = max(1, round(num_noise /
    mean_span))``. One guard that T5 lacks: the span count is also capped at the number of non-noise
    tokens, so densities above 0.5 with short spans cannot ask for more non-noise spans than tokens.
    """
    length = max(int(length), 2)
    num_noise = _round_f32(np.float32(length) * np.float32(noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(1, _round_f32(np.float32(num_noise) / np.float32(mean_noise_span_length)))
    return num_noise, min(num_spans, length - num_noise)


_INDEX_MASK = 0xFFFFF  # low key bits that hold the slot index (windows up to ~1M tokens)


def random_segmentation(num_items: int, num_segments: int, seeds: np.ndarray, stream: int) -> np.ndarray:
    """Split ``num_items`` items into ``num_segments`` non-empty segments, uniformly: ``[B, num_segments]`` lengths.

    T5 shuffles a vector with ``num_segments - 1`` ones among ``num_items - 1`` slots and reads the
    segment starts off it; that is a uniformly random ``(num_segments - 1)``-subset of the slots. We draw
    it for the whole batch at once: random keys per slot (made unique by putting the slot index in the
    low bits), the ``k`` smallest keys per row via ``np.partition``, and their slots read off the low bits.
    """
    batch = len(seeds)
    if num_segments <= 1 or num_items <= 1:
        return np.full((batch, 1), num_items, dtype=np.int64)
    slots = num_items - 1
    k = num_segments - 1
    if slots > _INDEX_MASK:
        raise ValueError(
            f"random_segmentation: windows longer than {_INDEX_MASK} tokens are not supported, got {num_items}."
        )
    keys = rng.random_bits(seeds, stream, slots)
    keys &= np.uint64(~_INDEX_MASK & 0xFFFFFFFFFFFFFFFF)
    keys |= np.arange(slots, dtype=np.uint64)[None, :]
    smallest = np.partition(keys, k - 1, axis=1)[:, :k]  # the k smallest keys, unordered
    chosen = (smallest & np.uint64(_INDEX_MASK)).astype(np.int64)  # their slot indices (the low bits)
    chosen.sort(axis=1)
    starts = np.empty((batch, num_segments + 1), dtype=np.int64)
    starts[:, 0] = 0
    starts[:, 1:-1] = chosen + 1
    starts[:, -1] = num_items
    return np.diff(starts, axis=1)


def random_spans_noise_mask(
    length: int, noise_density: float, seeds: np.ndarray, mean_noise_span_length: float = 3.0
) -> np.ndarray:
    """T5's ``random_spans_noise_mask`` for a batch: ``[B, length]`` booleans.

    Noise and non-noise span lengths are two independent random segmentations with ``num_spans``
    segments each; spans alternate non-noise, noise, non-noise, ... so a window always starts with
    non-noise and ends with noise (which makes the corrupted lengths deterministic).
    """
    seeds = rng.as_seeds(seeds)
    batch = len(seeds)
    if noise_density <= 0.0:
        return np.zeros((batch, length), dtype=bool)
    full = max(int(length), 2)
    num_noise, num_spans = random_spans_counts(full, noise_density, mean_noise_span_length)
    noise_lengths = random_segmentation(num_noise, num_spans, seeds, rng.STREAM_NOISE_SPANS)
    nonnoise_lengths = random_segmentation(full - num_noise, num_spans, seeds, rng.STREAM_NONNOISE_SPANS)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=2).reshape(-1)
    # Alternating runs (non-noise, noise, ...) expanded by their lengths: every row sums to ``full``.
    parity = np.tile(np.array([False, True]), batch * num_spans)
    is_noise = np.repeat(parity, interleaved).reshape(batch, full)
    return is_noise[:, :length]


def iid_noise_mask(length: int, noise_density: float, seeds: np.ndarray) -> np.ndarray:
    """T5's ``iid_noise_mask``: each token is noise independently with probability ``noise_density``."""
    seeds = rng.as_seeds(seeds)
    return rng.bernoulli(seeds, rng.STREAM_IID, int(length), noise_density)


def random_prefix_noise_mask(length: int, noise_density: float, seeds: np.ndarray) -> np.ndarray:
    """T5's ``random_prefix_noise_mask``: noise is a suffix; the prefix length is uniform.

    The prefix (inputs) length is uniform on ``[min_in, L - 1]`` with ``min_in = max(1, round((1 - 2 *
    density) * (L - 1)))``; at the default density 0.5 that is the prefix LM's uniform split point in
    ``[1, L - 1]``.
    """
    if noise_density > 0.5:
        raise ValueError(
            f"random_prefix_noise_mask: noise_density={noise_density} > 0.5 is not supported (as in T5): the "
            f"split point is uniform on an interval that ends at L - 1, so its mean noise is at most 0.5."
        )
    seeds = rng.as_seeds(seeds)
    batch = len(seeds)
    if length < 2:
        return np.zeros((batch, length), dtype=bool)
    max_in = length - 1
    min_in = min(max_in, max(1, _round_f32(np.float32(1 - 2 * noise_density) * np.float32(max_in))))
    num_in = rng.integers(seeds, rng.STREAM_PREFIX, 1, min_in, max_in + 1)
    return np.arange(length)[None, :] >= num_in


def all_noise_mask(length: int, noise_density: float, seeds: np.ndarray) -> np.ndarray:
    """Every token is noise (used by deshuffling, which permutes the whole window)."""
    return np.ones((len(rng.as_seeds(seeds)), length), dtype=bool)


def random_spans_helper(
    inputs_length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """T5's ``random_spans_helper``: ``(raw_tokens_length, targets_length)`` so that span corruption of
    ``raw_tokens_length`` raw tokens gives exactly ``inputs_length`` input tokens (EOS included).

    ``random_spans_helper(512) == (568, 114)``; ``(1024) == (1137, 229)``; ``(128) == (141, 29)``. Both
    returned lengths count the EOS token like the requested ``inputs_length`` does.
    """
    if inputs_length < 2:
        raise ValueError(
            f"random_spans_helper: inputs_length must be >= 2 (room for one token and EOS), got {inputs_length}."
        )

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise = int(round(tokens_length * noise_density))
        num_nonnoise = tokens_length - num_noise
        num_spans = int(round(num_noise / mean_noise_span_length))
        return (
            num_nonnoise + num_spans * extra_tokens_per_span_inputs + 1,
            num_noise + num_spans * extra_tokens_per_span_targets + 1,
        )

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = lengths(tokens_length)
    # T5's tweak: at density 0.5 make targets no longer than the (usually round) inputs length.
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def cap_noise_spans(mask: np.ndarray, max_spans: int) -> np.ndarray:
    """Limit each row to ``max_spans`` runs of noise by making everything from its ``max_spans``-th run on noise.

    Unique-sentinel objectives need one sentinel per noise run, and the vocabulary has only ``extra_ids``
    of them. With an i.i.d. mask the run count is random (about ``L * d * (1 - d)``: 96 +- 9 for 511
    tokens at 25 %), so a rare row can exceed 100. T5 would then silently hand out ordinary token ids as
    "sentinels"; we instead merge that row's tail into its last span, which keeps the example well formed
    (inputs and targets still interleave back to the original) at a slightly higher noise rate for that row.
    """
    prev = np.zeros_like(mask)
    prev[:, 1:] = mask[:, :-1]
    starts = mask & ~prev
    over = np.flatnonzero(starts.sum(axis=1) > max_spans)
    if len(over) == 0:
        return mask
    if max_spans < 1:
        raise ValueError("cap_noise_spans: max_spans must be >= 1 (the vocabulary has no sentinel ids).")
    last_start = np.argmax(np.cumsum(starts[over], axis=1) >= max_spans, axis=1)
    capped = mask.copy()
    capped[over] |= np.arange(mask.shape[1])[None, :] >= last_start[:, None]
    return capped


#: Names accepted by :func:`noise_mask` (and the ``noise_mask`` field of the token preprocessors).
NOISE_MASKS = ("random_spans", "iid", "prefix", "all")


def noise_mask(kind: str, length: int, noise_density: float, seeds: np.ndarray,
               mean_noise_span_length: float) -> np.ndarray:
    """Dispatch on a mask name (one of :data:`NOISE_MASKS`)."""
    if kind == "random_spans":
        return random_spans_noise_mask(length, noise_density, seeds, mean_noise_span_length)
    if kind == "iid":
        return iid_noise_mask(length, noise_density, seeds)
    if kind == "prefix":
        return random_prefix_noise_mask(length, noise_density, seeds)
    if kind == "all":
        return all_noise_mask(length, noise_density, seeds)
    raise ValueError(f"unknown noise mask {kind!r}; choose one of {sorted(NOISE_MASKS)}.")
