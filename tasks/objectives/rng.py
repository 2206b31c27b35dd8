"""Counter-based random numbers for batch-vectorized, batch-independent objectives.

Every random objective must give row ``i`` a result that depends only on row ``i`` and ``seeds[i]``,
whatever the batch, the dataloader worker or the rank it is processed in. A stateful generator
(``np.random``) cannot do that cheaply for a whole batch at once, so we use a *counter-based* generator:
the ``j``-th random word of stream ``s`` for a row with seed ``k`` is ``splitmix64``'s output for state
``mix(k ^ mix(s)) + (j + 1) * golden``. It is a pure function of ``(k, s, j)``, so a ``[B, n]`` matrix of
words is a handful of vectorised uint64 operations and rows never interact.

splitmix64 (Steele, Lea and Flood 2014, the seeding generator of xoshiro) passes BigCrush as a sequence
generator; that is ample for choosing noise masks.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)

#: Stream identifiers, one per independent random decision of an objective (never reuse one for two).
STREAM_NOISE_SPANS = 1
STREAM_NONNOISE_SPANS = 2
STREAM_IID = 3
STREAM_PREFIX = 4
STREAM_PERMUTE = 5
STREAM_BERT_CHOICE = 6
STREAM_BERT_TOKEN = 7
STREAM_CHUNK = 8


def _mix_inplace(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, applied in place to a uint64 array (wrapping arithmetic)."""
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def as_seeds(seeds: np.ndarray | int | list[int], n: int | None = None) -> np.ndarray:
    """Validate and convert per-example seeds to a 1-D uint64 array (of length ``n`` when given)."""
    arr = np.asarray(seeds)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.dtype.kind not in "iu"):
        raise ValueError(
            f"seeds must be a 1-D integer array with one uint64 seed per example; got dtype {arr.dtype} "
            f"and shape {arr.shape}."
        )
    arr = arr.astype(np.uint64, copy=False)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"got {arr.shape[0]} seeds for {n} examples: pass exactly one seed per example.")
    return arr


def row_states(seeds: np.ndarray, stream: int) -> np.ndarray:
    """One 64-bit generator state per row for ``stream`` (different streams are independent)."""
    s = np.full(1, stream, dtype=np.uint64) * _GOLDEN
    _mix_inplace(s)
    z = seeds.astype(np.uint64, copy=True)
    z ^= s
    return _mix_inplace(z)


def random_bits(seeds: np.ndarray, stream: int, n: int) -> np.ndarray:
    """A ``[len(seeds), n]`` uint64 matrix of random words; row ``i`` depends only on ``seeds[i]``."""
    base = row_states(seeds, stream)
    counters = np.arange(1, n + 1, dtype=np.uint64)
    counters *= _GOLDEN
    z = base[:, None] + counters[None, :]
    return _mix_inplace(z)


def uniform(seeds: np.ndarray, stream: int, n: int) -> np.ndarray:
    """``[B, n]`` float64 uniforms in [0, 1) with 53 random bits each."""
    bits = random_bits(seeds, stream, n)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def bernoulli(seeds: np.ndarray, stream: int, n: int, p: float) -> np.ndarray:
    """``[B, n]`` booleans, True with probability ``p``; equivalent to ``uniform(...) < p`` without floats."""
    if p <= 0.0:
        return np.zeros((len(seeds), n), dtype=bool)
    if p >= 1.0:
        return np.ones((len(seeds), n), dtype=bool)
    threshold = np.uint64(int(p * 2.0**53))
    return (random_bits(seeds, stream, n) >> np.uint64(11)) < threshold


def integers(seeds: np.ndarray, stream: int, n: int, low: np.ndarray | int, high: np.ndarray | int) -> np.ndarray:
    """``[B, n]`` int64 uniform on ``[low, high)`` (per-row bounds allowed, as ``[B]`` arrays).

    Uses Lemire's multiply-shift on the top 32 bits: the bias is below ``(high - low) / 2**32``, far under
    anything measurable for vocabulary-sized ranges.
    """
    low = np.asarray(low, dtype=np.int64)
    span = (np.asarray(high, dtype=np.int64) - low).astype(np.uint64)
    if np.any(np.asarray(high) <= np.asarray(low)):
        raise ValueError(f"integers(): empty range [{low}, {high}).")
    top = random_bits(seeds, stream, n) >> np.uint64(32)
    if span.ndim == 1:
        span = span[:, None]
        low = low[:, None]
    return ((top * span) >> np.uint64(32)).astype(np.int64) + low
