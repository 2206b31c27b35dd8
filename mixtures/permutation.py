"""A keyed bijection of ``[0, n)``: each epoch's row order computed on demand, in O(1) memory.

Why: storing a permutation costs 8 bytes per example per process (and per dataloader worker); a corpus of 10^9
windows would need 8 GB each. A Feistel network over the smallest even number of bits covering ``n`` is a
bijection of ``[0, 2^bits)``; cycle-walking (re-encrypting until the value falls below ``n``) restricts it to a
bijection of ``[0, n)``. Since ``2^bits < 4n``, a value takes fewer than 4 walks on average. The round function is
SplitMix64 of the half-block xor a round key, so the order is a pseudo-random function of the key.
"""

from __future__ import annotations

import numpy as np

_M64 = (1 << 64) - 1
_ROUNDS = 4


def _mix(x: int) -> int:
    """SplitMix64 finaliser on a Python int (same arithmetic as :func:`_mix_np`)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix_np(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """``perm(i)`` for ``i`` in ``[0, n)``: a bijection of ``[0, n)`` keyed by a 64-bit ``key``.

    ``perm(np.arange(n))`` is a permutation; ``perm.at(i)`` is the scalar fast path (Python ints, same result).
    """

    def __init__(self, n: int, key: int) -> None:
        if n < 1:
            raise ValueError(f"FeistelPermutation needs n >= 1, got {n}.")
        self.n = int(n)
        bits = max(2, (self.n - 1).bit_length())
        bits += bits & 1
        self.half = bits // 2
        self.mask = (1 << self.half) - 1
        keys, k = [], key & _M64
        for _ in range(_ROUNDS):
            k = _mix(k)
            keys.append(k)
        self.keys = keys
        self._keys_np = [np.uint64(k) for k in keys]

    def _encrypt_np(self, x: np.ndarray) -> np.ndarray:
        half, mask = np.uint64(self.half), np.uint64(self.mask)
        left, right = x >> half, x & mask
        for k in self._keys_np:
            left, right = right, left ^ (_mix_np(right ^ k) & mask)
        return (left << half) | right

    def __call__(self, index: np.ndarray) -> np.ndarray:
        x = np.asarray(index, np.int64)
        if x.size and (x.min() < 0 or x.max() >= self.n):
            raise IndexError(f"index out of [0, {self.n})")
        y = self._encrypt_np(x.astype(np.uint64))
        out = y.astype(np.int64)
        todo = np.flatnonzero(out >= self.n)
        while todo.size:  # cycle-walking: only the values still outside [0, n)
            y = self._encrypt_np(out[todo].astype(np.uint64)).astype(np.int64)
            out[todo] = y
            todo = todo[y >= self.n]
        return out

    def at(self, i: int) -> int:
        """Scalar ``perm(i)`` with Python integers (a few microseconds; no numpy call overhead)."""
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of [0, {self.n})")
        half, mask, keys = self.half, self.mask, self.keys
        x = i
        while True:
            left, right = x >> half, x & mask
            for k in keys:
                left, right = right, left ^ (_mix(right ^ k) & mask)
            x = (left << half) | right
            if x < self.n:
                return x
