"""Hugging Face adapters: the mixture stream as a ``datasets.IterableDataset`` for transformers' ``Trainer``.

``names="hf"`` renames to what HF seq2seq models take: ``input_ids``, ``attention_mask``, ``labels`` (``-100`` on
padding, HF's ignore index), ``decoder_input_ids`` and ``decoder_attention_mask``. HF T5 cannot attend within packed
segments, so ``names="hf"`` needs ``pack=False``. ``names="t5"`` keeps the contract's feature names (packing allowed).
With ``unbatch=True`` (default) rows are yielded one by one so ``Trainer``'s own batching and ``default_data_collator``
work (all rows have the same fixed length); the row order is the sampler's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import MixtureError


def to_hf_names(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Contract batch (tensors or arrays) -> HF seq2seq names (numpy)."""
    if int(np.asarray(batch["decoder_segment_ids"]).max(initial=0)) > 1:
        raise MixtureError("HF names need unpacked batches (pack=False): transformers' T5 cannot keep attention "
                           "inside packed segments.")
    enc_seg = np.asarray(batch["encoder_segment_ids"])
    dec_seg = np.asarray(batch["decoder_segment_ids"])
    labels = np.asarray(batch["decoder_target_tokens"]).astype(np.int64).copy()
    labels[dec_seg == 0] = -100
    return {
        "input_ids": np.asarray(batch["encoder_input_tokens"]).astype(np.int64),
        "attention_mask": (enc_seg > 0).astype(np.int64),
        "labels": labels,
        "decoder_input_ids": np.asarray(batch["decoder_input_tokens"]).astype(np.int64),
        "decoder_attention_mask": (dec_seg > 0).astype(np.int64),
    }


def _generate(dataset: Any, names: str, unbatch: bool) -> Iterator[dict[str, Any]]:
    for batch in dataset:
        arrays = to_hf_names(batch) if names == "hf" else {k: v.numpy() for k, v in batch.items()}
        if not unbatch:
            yield arrays
            continue
        for i in range(len(next(iter(arrays.values())))):
            yield {k: v[i] for k, v in arrays.items()}


def as_hf_iterable_dataset(dataset: Any, names: str = "hf", unbatch: bool = True):
    """Wrap a :class:`mixtures.MixtureDataset` as a ``datasets.IterableDataset`` (``torch`` format)."""
    import datasets

    if names not in ("hf", "t5"):
        raise MixtureError(f"names={names!r}; valid: hf (input_ids/attention_mask/labels), t5 (contract names).")
    if names == "hf" and dataset.pack:
        raise MixtureError("as_hf_iterable_dataset(names='hf') needs MixtureDataset(pack=False): transformers' T5 "
                           "cannot keep attention inside packed segments. Use names='t5' for packed batches.")
    ds = datasets.IterableDataset.from_generator(_generate, gen_kwargs={"dataset": dataset, "names": names,
                                                                        "unbatch": unbatch})
    return ds.with_format("torch")
