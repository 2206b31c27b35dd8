"""End-to-end training throughput on the `default_with_corpus` mixture (the CPU subset + the corpus), in effective
(non-pad) tokens per second.

    .venv/bin/python bench/train.py [--examples 768] [--batch-size 32] [--rounds 2]

All three runs do the same training: the same examples, `--batch-size` of them per optimizer step, in the same order,
with the same optimizer (Adafactor, lr 0.01, clip 1.0), the same tiny model and weights, denormals flushed for all.
The step groups are length-grouped exactly as transformers' Trainer does with `group_by_length=True`
(`transformers.trainer_pt_utils.get_length_grouped_indices`), which is the strongest padding baseline.

- HF padded: transformers.T5ForConditionalGeneration; each step's examples padded to their longest input/target
  (DataCollatorForSeq2Seq), labels -100 on padding.
- ours padded: lightning_t5.T5 on the IDENTICAL padded batches, as seqio features, through the training path
  `model(**batch, return_loss=True)` (logits only at target positions).
- ours packed: the same step's examples packed into as few (128, 32)-token rows as they fit (T5 packing with
  segment ids, mixtures.FeatureConverter), same training path.

Three ratios, separately: packing gain = ours packed / ours padded; kernel gain = ours padded / HF padded (same
batches, so this is the implementation); total = ours packed / HF padded (= the product). Effective tokens = real
input + real target tokens (identical for all three). Each system is timed `--rounds` times on fresh copies of
the model, alternating, and the best round counts (the machine may be shared).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def draw_examples(n: int, sequence_length: dict[str, int], seed: int) -> list[dict[str, np.ndarray]]:
    """The first `n` examples the `default_with_corpus` mixture's sampler yields (unpacked rows, padding stripped)."""
    from mixtures import MixtureDataset, MixtureRegistry

    ds = MixtureDataset(MixtureRegistry.get("default_with_corpus"), sequence_length=sequence_length, batch_size=64,
                        pack=False, seed=seed)
    out: list[dict[str, np.ndarray]] = []
    for batch in ds:
        enc, tgt = batch["encoder_input_tokens"].numpy(), batch["decoder_target_tokens"].numpy()
        for x, y in zip(enc, tgt):
            if (y != 0).any():
                out.append({"inputs": x[x != 0], "targets": y[y != 0]})
        if len(out) >= n:
            return out[:n]
    return out


def step_groups(examples: list[dict[str, np.ndarray]], batch_size: int, seed: int) -> list[list[int]]:
    """Example indices of each optimizer step: Trainer's group_by_length order, cut into `batch_size` groups."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = [len(e["inputs"]) for e in examples]
    order = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def hf_batch(chunk: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """The padding collator: padded to the longest input and target; labels -100 on padding."""
    li, lt = max(len(e["inputs"]) for e in chunk), max(len(e["targets"]) for e in chunk)
    ids = np.zeros((len(chunk), li), np.int64)
    labels = np.full((len(chunk), lt), -100, np.int64)
    for r, e in enumerate(chunk):
        ids[r, :len(e["inputs"])] = e["inputs"]
        labels[r, :len(e["targets"])] = e["targets"]
    ids_t = torch.from_numpy(ids)
    return {"input_ids": ids_t, "attention_mask": (ids_t != 0).long(), "labels": torch.from_numpy(labels)}


def packed_batch(chunk: list[dict[str, np.ndarray]], seq: dict[str, int]) -> dict[str, torch.Tensor]:
    """The step's examples packed into as few fixed-length rows as they fit (empty rows dropped)."""
    from mixtures import FeatureConverter

    (batch,) = FeatureConverter(seq, pack=True)(chunk, batch_size=len(chunk))
    rows = (batch["encoder_segment_ids"] > 0).any(1) | (batch["decoder_segment_ids"] > 0).any(1)
    return {k: v[rows] for k, v in batch.items()}


def train(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], hf: bool) -> float:
    """One pass, one optimizer step per batch; seconds."""
    opt = torch.optim.Adafactor(model.parameters(), lr=0.01)
    model.train()
    start = time.perf_counter()
    for b in batches:
        loss = model(**b).loss if hf else model(**b, return_loss=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import transformers

    from lightning_t5 import T5, T5Config
    from lightning_t5.model.hf import seqio_features

    torch.set_flush_denormal(True)  # process-wide: all three runs alike
    torch.manual_seed(args.seed)
    seq = {"inputs": 128, "targets": 32}
    examples = draw_examples(args.examples, seq, args.seed)
    effective = int(sum(len(e["inputs"]) + len(e["targets"]) for e in examples))
    groups = [[examples[i] for i in g] for g in step_groups(examples, args.batch_size, args.seed)]
    padded_hf = [hf_batch(g) for g in groups]
    padded = [seqio_features(b) for b in padded_hf]
    packed = [packed_batch(g, seq) for g in groups]

    cfg = T5Config.from_preset("tiny")
    ours = T5(cfg)
    hf_cfg = transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff, num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads, feed_forward_proj=cfg.feed_forward_proj,
        tie_word_embeddings=cfg.tie_word_embeddings, dropout_rate=cfg.dropout_rate,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1, scale_decoder_outputs=cfg.scale_outputs)
    baseline = transformers.T5ForConditionalGeneration(hf_cfg)
    if not cfg.tie_word_embeddings and baseline.lm_head.weight is baseline.shared.weight:
        # transformers v5 ties lm_head to the input embedding whatever the config says; untie it so both models
        # have the same parameters (T5.1.1-style separate output projection) and the optimizer does the same work
        baseline.lm_head.weight = torch.nn.Parameter(baseline.shared.weight.detach().clone())
    missing, _ = baseline.load_state_dict(ours.state_dict(), strict=False)  # the same weights for both
    assert all("embed_tokens" in k or k == "lm_head.weight" for k in missing), missing
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in baseline.parameters())

    runs = {"ours packed": (ours, packed, False), "ours padded": (ours, padded, False),
            "HF padded": (baseline, padded_hf, True)}
    for model, batches, hf in runs.values():  # warm-up (allocator, kernels) on two batches each
        train(copy.deepcopy(model), batches[:2], hf)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, batches, hf) in runs.items():
            times[name].append(train(copy.deepcopy(model), batches, hf))
    best = {name: min(t) for name, t in times.items()}

    def non_pad(batches: list[dict[str, torch.Tensor]]) -> float:
        slots = sum(b["encoder_input_tokens"].numel() + b["decoder_target_tokens"].numel() for b in batches)
        return effective / slots

    print(f"default_with_corpus, {len(examples)} examples in {len(groups)} optimizer steps of {args.batch_size} "
          f"(length-grouped as Trainer(group_by_length=True)), {effective:,} effective tokens, Adafactor for all, "
          f"flush_denormal for all, torch threads {torch.get_num_threads()}, CPU count {os.cpu_count()}")
    print(f"params: ours {n_ours:,}, transformers {n_hf:,}")
    shapes = {"ours packed": f"{sum(len(b['encoder_input_tokens']) for b in packed)} packed rows, "
                             f"{non_pad(packed):.0%} non-pad",
              "ours padded": f"{sum(len(b['encoder_input_tokens']) for b in padded)} padded rows, "
                             f"{non_pad(padded):.0%} non-pad",
              "HF padded": "the same padded batches"}
    for name in runs:
        print(f"{name:<12} ({shapes[name]}): {best[name]:.2f} s -> {effective / best[name]:,.0f} effective tokens/s "
              f"(rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
    packing = best["ours padded"] / best["ours packed"]
    kernel = best["HF padded"] / best["ours padded"]
    total = best["HF padded"] / best["ours packed"]
    print(f"packing gain (ours packed / ours padded): {packing:.2f}x")
    print(f"kernel gain  (ours / HF, identical padded batches): {kernel:.2f}x")
    print(f"total        (ours packed / HF padded): {total:.2f}x (target >= 2.5x)")


if __name__ == "__main__":
    main()
