"""Benchmark: span corruption throughput (raw tokens/s), ours vs Hugging Face's DataCollatorForT5MLM algorithm.

Both run in this process on the same token stream: the shipped corpus (data/english_corpus) tokenized
with data/vocab/spiece.model through sentencepiece, concatenated and cut into windows of 568 raw tokens
(T5's random_spans_helper for 512 inputs / 114 targets at 15 % noise, mean span 3).

The reference is a re-implementation of the algorithm of ``DataCollatorForT5MLM`` in transformers'
examples/flax/language-modeling/run_t5_mlm_flax.py: one ``random_spans_noise_mask`` per example in a
Python loop (``np.random.shuffle`` segmentations), then batch-vectorised sentinel ids, filtering and EOS.
Its decoder-input shift is left out (our pipeline does that in the feature converter), which only makes
the reference faster. Ours is ``tasks.objectives.span_corruption`` over the ``[B, 568]`` batch, one
uint64 seed per row, returning the contract's per-row inputs/targets lists (EOS is appended later by
``Task.finalize``, a negligible concatenate).

Run: ``.venv/bin/python bench/objectives.py [--batch-size 256] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks import objectives  # noqa: E402
from tasks.objectives import OBJECTIVES, random_spans_helper, span_corruption  # noqa: E402

VOCAB_MODEL = REPO / "data" / "vocab" / "spiece.model"
CORPUS = [REPO / "data" / "english_corpus" / "train.jsonl", REPO / "data" / "english_corpus" / "validation.jsonl"]
EXTRA_IDS = 100
EOS = 1


class HFT5MLMReference:
    """The algorithm of HF's DataCollatorForT5MLM (run_t5_mlm_flax.py), re-implemented for the comparison."""

    def __init__(self, vocab_size: int, noise_density: float, mean_noise_span_length: float, eos_id: int = EOS):
        self.vocab_size, self.noise_density, self.mean = vocab_size, noise_density, mean_noise_span_length
        self.eos_id = eos_id

    def __call__(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        batch_size, length = input_ids.shape
        mask_indices = np.asarray([self.random_spans_noise_mask(length) for _ in range(batch_size)])
        labels_mask = ~mask_indices
        input_sentinel = self.create_sentinel_ids(mask_indices.astype(np.int8))
        labels_sentinel = self.create_sentinel_ids(labels_mask.astype(np.int8))
        return {"input_ids": self.filter_input_ids(input_ids, input_sentinel),
                "labels": self.filter_input_ids(input_ids, labels_sentinel)}

    def create_sentinel_ids(self, mask_indices: np.ndarray) -> np.ndarray:
        start = mask_indices - np.roll(mask_indices, 1, axis=-1) * mask_indices
        start[:, 0] = mask_indices[:, 0]
        sentinel = np.where(start != 0, np.cumsum(start, axis=-1), start)
        sentinel = np.where(sentinel != 0, self.vocab_size - sentinel, 0)
        sentinel -= mask_indices - start
        return sentinel

    def filter_input_ids(self, input_ids: np.ndarray, sentinel_ids: np.ndarray) -> np.ndarray:
        batch_size = input_ids.shape[0]
        full = np.where(sentinel_ids != 0, sentinel_ids, input_ids)
        kept = full[full >= 0].reshape((batch_size, -1))
        return np.concatenate([kept, np.full((batch_size, 1), self.eos_id, dtype=np.int32)], axis=-1)

    def random_spans_noise_mask(self, length: int) -> np.ndarray:
        num_noise = int(np.round(length * self.noise_density))
        num_nonnoise = length - num_noise
        num_noise = min(max(num_noise, 1), length - 1)
        num_spans = max(int(np.round(min(num_noise, num_nonnoise) / self.mean)), 1)

        def segmentation(num_items: int, num_segments: int) -> np.ndarray:
            first = np.arange(num_items - 1) < (num_segments - 1)
            np.random.shuffle(first)
            first = np.pad(first, [[1, 0]])
            _, lengths = np.unique(np.cumsum(first), return_counts=True)
            return lengths

        noise = segmentation(num_noise, num_spans)
        nonnoise = segmentation(num_nonnoise, num_spans)
        interleaved = np.reshape(np.stack([nonnoise, noise], axis=1), [num_spans * 2])
        starts = np.cumsum(interleaved)[:-1]
        indicator = np.zeros((length,), dtype=np.int8)
        indicator[starts] = True
        return np.equal(np.cumsum(indicator) % 2, 1)


def load_windows(raw_length: int) -> tuple[np.ndarray, float]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(VOCAB_MODEL))
    texts = [json.loads(line)["text"] for path in CORPUS for line in path.read_text(encoding="utf-8").splitlines()]
    t0 = time.perf_counter()
    ids = sp.encode(texts)
    seconds = time.perf_counter() - t0
    stream = np.concatenate([np.asarray(x, dtype=np.int32) for x in ids])
    n = len(stream) // raw_length
    return stream[: n * raw_length].reshape(n, raw_length), seconds


def time_batches(fn, windows: np.ndarray, batch_size: int, repeats: int) -> float:
    """Best-of-``repeats`` seconds for one pass over all windows in batches."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for start in range(0, len(windows), batch_size):
            fn(windows[start : start + batch_size], start)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs-length", type=int, default=512)
    parser.add_argument("--noise-density", type=float, default=0.15)
    parser.add_argument("--mean-noise-span-length", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    raw, targets_length = random_spans_helper(args.inputs_length, args.noise_density, args.mean_noise_span_length)
    windows, tok_s = load_windows(raw)
    import sentencepiece as spm

    vocab_size = spm.SentencePieceProcessor(model_file=str(VOCAB_MODEL)).get_piece_size() + EXTRA_IDS
    total = windows.size
    print(f"corpus: {len(windows)} windows x {raw} raw tokens = {total:,} tokens (sentencepiece encode {tok_s:.1f}s); "
          f"inputs/targets {args.inputs_length}/{targets_length}; batch size {args.batch_size}")

    hf = HFT5MLMReference(vocab_size, args.noise_density, args.mean_noise_span_length)
    np.random.seed(0)
    check = hf(windows[:4])
    assert check["input_ids"].shape[1] == args.inputs_length and check["labels"].shape[1] == targets_length
    ours_check = span_corruption(windows[:4], np.arange(4, dtype=np.uint64), vocabulary_size=vocab_size)
    assert (len(ours_check["inputs"][0]) + 1 == args.inputs_length
            and len(ours_check["targets"][0]) + 1 == targets_length)

    seeds = np.arange(len(windows), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)

    def ours(batch: np.ndarray, start: int) -> None:
        span_corruption(batch, seeds[start : start + len(batch)], vocabulary_size=vocab_size,
                        noise_density=args.noise_density, mean_noise_span_length=args.mean_noise_span_length)

    def reference(batch: np.ndarray, start: int) -> None:
        hf(batch)

    t_hf = time_batches(reference, windows, args.batch_size, max(1, args.repeats - 1))
    rate_hf = total / t_hf
    print(f"HF DataCollatorForT5MLM algorithm (batch {args.batch_size:4d}) : {rate_hf / 1e6:7.2f} M raw tokens/s")
    results = {"hf_tokens_per_s": rate_hf, "batch_size": args.batch_size, "raw_length": raw}
    for batch_size in sorted({args.batch_size, 64, 1024}):
        rate = total / time_batches(ours, windows, batch_size, args.repeats)
        print(f"ours span_corruption             (batch {batch_size:4d}) : {rate / 1e6:7.2f} M raw tokens/s"
              f"   {rate / rate_hf:5.1f}x HF")
        results[f"ours_tokens_per_s_batch_{batch_size}"] = rate
    results["ratio"] = results[f"ours_tokens_per_s_batch_{args.batch_size}"] / rate_hf
    # The other objectives, for reference (windows of the same stream, cut to each objective's raw length).
    stream = windows.reshape(-1)
    for name in ("iid_replace_spans", "iid_drop", "mask_tokens", "bert_mlm", "prefix_lm", "deshuffle"):
        length = OBJECTIVES[name]().raw_length({"inputs": args.inputs_length, "targets": args.inputs_length})
        other = stream[: len(stream) // length * length].reshape(-1, length)
        fn = getattr(objectives, name)
        other_seeds = np.arange(len(other), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        rate = other.size / time_batches(
            lambda b, start, fn=fn, sd=other_seeds: fn(b, sd[start : start + len(b)], vocabulary_size=vocab_size),
            other, args.batch_size, args.repeats,
        )
        print(f"ours {name:<28s}(batch {args.batch_size:4d}) : {rate / 1e6:7.2f} M raw tokens/s  (windows of {length})")
        results[f"{name}_tokens_per_s"] = rate
    print(json.dumps(results))

if __name__ == "__main__":
    main()
