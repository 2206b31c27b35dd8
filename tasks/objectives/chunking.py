"""Corpus chunking: T5's ``select_random_chunk`` + ``reduce_concat_tokens`` + ``split_tokens``, deterministic.

Documents are tokenized once; this step turns them into raw-token windows of exactly the length the
objective needs (e.g. 568 for span corruption into 512 inputs), so no document is wastefully truncated
and no window is padded, except the last, shorter window of each concatenated group (T5 keeps those).
It is deterministic (the random chunk of a very long document is drawn from a hash of its tokens), so
``Task.tokenized`` can cache its output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def select_random_chunk(doc: np.ndarray, max_length: int) -> np.ndarray:
    """One aligned chunk of at most ``max_length`` tokens, chosen from a hash of the document's tokens.

    As in T5, a document of ``n`` tokens is cut into ``ceil(n / max_length)`` aligned chunks and one is
    kept; the choice is a pure function of the document, so the step stays cacheable.
    """
    n = len(doc)
    if n <= max_length:
        return doc
    num_chunks = -(-n // max_length)
    digest = hashlib.blake2b(np.ascontiguousarray(doc).tobytes(), digest_size=8).digest()
    start = (int.from_bytes(digest, "little") % num_chunks) * max_length
    return doc[start : start + max_length]


def concat_and_split(
    docs: Sequence[np.ndarray],
    window_length: int,
    *,
    max_chunk_length: int = 65536,
    concat_documents: int = 128,
    dtype: np.dtype = np.int32,
) -> list[np.ndarray]:
    """Raw-token windows: chunk each document, concatenate groups of ``concat_documents``, split.

    Every window has ``window_length`` tokens except possibly the last one of each group. Empty
    documents are skipped (T5 filters them out too).
    """
    if window_length < 1:
        raise ValueError(f"window_length must be >= 1, got {window_length}.")
    if concat_documents < 1:
        raise ValueError(f"concat_documents must be >= 1, got {concat_documents}.")
    chunks = [select_random_chunk(np.asarray(d), max_chunk_length) for d in docs if len(d)]
    windows: list[np.ndarray] = []
    for start in range(0, len(chunks), concat_documents):
        stream = np.concatenate(chunks[start : start + concat_documents]).astype(dtype, copy=False)
        full = len(stream) // window_length
        if full:
            windows.extend(stream[: full * window_length].reshape(full, window_length))
        if len(stream) > full * window_length:
            windows.append(stream[full * window_length :])
    return windows
