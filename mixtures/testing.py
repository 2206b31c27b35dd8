"""Small synthetic tasks implementing the subset of the Task contract the sampler uses.

Used by the fast property tests and by ``bench/mixing.py`` (1,000 tasks without tokenizing text). They follow
docs/CONTRACTS.md: ``tokenized(split)`` is a ``datasets.Dataset`` with int32 ``inputs``/``targets``; supervised
targets end with EOS; a corpus task (``supervised=False``) stores raw windows and ``finalize`` applies a random
objective whose row ``i`` depends only on row ``i`` and ``seeds[i]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import datasets
import numpy as np

_FEATURES = datasets.Features({"inputs": datasets.Sequence(datasets.Value("int32")),
                               "targets": datasets.Sequence(datasets.Value("int32"))})


class SyntheticVocabulary:
    """Stand-in vocabulary: pad 0, eos 1; ``fingerprint`` identifies it."""

    pad_id, eos_id, unk_id, extra_ids = 0, 1, 2, 0

    def __init__(self, vocab_size: int = 1000, tag: str = "synthetic") -> None:
        self.vocab_size = vocab_size
        self.fingerprint = hashlib.sha1(f"{tag}/{vocab_size}".encode()).hexdigest()


class SyntheticTask:
    """A task whose rows are random token sequences (deterministic from ``seed``).

    Each token of row ``i`` encodes the task index and the row (``token = 3 + (task_index * 100003 + i) % (V - 3)``
    for its first token) so tests can recover which example a packed segment came from.
    """

    def __init__(self, name: str, num_examples: int | Mapping[str, int] = 100, *, supervised: bool = True,
                 vocabulary: SyntheticVocabulary | None = None, inputs_length: tuple[int, int] = (1, 20),
                 targets_length: tuple[int, int] = (1, 6), seed: int = 0, benchmark: str | None = None) -> None:
        self.name = name
        self.supervised = supervised
        self.vocabulary = vocabulary or SyntheticVocabulary()
        self.benchmark = benchmark
        self._n = dict(num_examples) if isinstance(num_examples, Mapping) else {"train": int(num_examples),
                                                                                   "validation": 10}
        self.splits = list(self._n)
        self._ranges = (inputs_length, targets_length)
        self._seed = seed
        self._cache: dict[str, datasets.Dataset] = {}

    def num_examples(self, split: str) -> int:
        return self._n[split]

    def rows(self, split: str) -> dict[str, list[np.ndarray]]:
        n = self._n[split]
        key = int.from_bytes(hashlib.blake2b(f"{self.name}/{split}/{self._seed}".encode(), digest_size=8).digest(),
                             "little")
        rng = np.random.default_rng(key)
        V = self.vocabulary.vocab_size
        (a, b), (c, d) = self._ranges
        li = rng.integers(a, b + 1, n)
        lt = rng.integers(c, d + 1, n)
        if not self.supervised:
            li = np.zeros(n, np.int64)  # corpus task: raw window in "targets", objective applied by finalize
            lt = rng.integers(max(c, 2), d + 1, n)
        toks = rng.integers(3, V, int(li.sum() + lt.sum())).astype(np.int32)
        # first input token identifies the row (tests recover example identity from it)
        ins, tgs, o = [], [], 0
        for i in range(n):
            x = toks[o:o + li[i]].copy()
            o += li[i]
            y = toks[o:o + lt[i]].copy()
            o += lt[i]
            if self.supervised:
                if len(x):
                    x[0] = 3 + (i % (V - 3))
                y[-1] = self.vocabulary.eos_id
            ins.append(x)
            tgs.append(y)
        return {"inputs": ins, "targets": tgs}

    def tokenized(self, split: str, sequence_length: Mapping[str, int] | None = None) -> datasets.Dataset:
        if split not in self._cache:
            r = self.rows(split)
            self._cache[split] = datasets.Dataset.from_dict(
                {"inputs": [x.tolist() for x in r["inputs"]], "targets": [y.tolist() for y in r["targets"]]},
                features=_FEATURES)
        return self._cache[split]

    def example_lengths(self, raw_inputs: np.ndarray, raw_targets: np.ndarray,
                        sequence_length: Mapping[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Upper bounds of finalize's lengths: the split at k in [1, n-1] gives k + 1 <= n and n - k + 1 <= n."""
        if self.supervised:
            return np.asarray(raw_inputs), np.asarray(raw_targets)
        n = np.maximum(np.asarray(raw_targets, np.int64), 2)
        return n, n.copy()

    def finalize(self, batch: Mapping[str, list[np.ndarray]], seeds: np.ndarray,
                 sequence_length: Mapping[str, int] | None = None) -> dict[str, list[np.ndarray]]:
        if self.supervised:
            return {"inputs": list(batch["inputs"]), "targets": list(batch["targets"])}
        ins, tgs = [], []
        eos = np.array([self.vocabulary.eos_id], np.int32)
        for raw, s in zip(batch["targets"], seeds):  # prefix-LM-like split at a seed-determined point
            k = 1 + int(np.uint64(s) % np.uint64(max(len(raw) - 1, 1)))
            ins.append(np.concatenate([raw[:k], eos]))
            tgs.append(np.concatenate([raw[k:], eos]))
        return {"inputs": ins, "targets": tgs}

    def __repr__(self) -> str:
        return f"SyntheticTask({self.name!r})"
