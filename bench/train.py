"""End-to-end training throughput on the `default` mixture, in effective (non-pad) tokens per second.

    .venv/bin/python bench/train.py [--examples 768] [--batch-size 32] [--rounds 2]

Both systems train on exactly the same examples, in the same order, for one pass:
- ours: the examples packed into fixed (128, 32)-token rows (mixtures.FeatureConverter, T5 packing with segment ids)
  and trained with lightning_t5.T5 + the training module's loss (`weighted_loss_sum`: logits only at target
  positions with loss weight) + Adafactor;
- baseline: transformers.T5ForConditionalGeneration of the same size (tiny: d_model 128, 2+2 layers, gated-GELU,
  untied) with a padding collator (pad each batch of `batch_size` examples to its longest input/target, labels
  -100 on padding: what DataCollatorForSeq2Seq does) and the same optimizer.
Effective tokens = real input tokens + real target tokens (identical for both). The examples come from the
`default` mixture's sampler in padding mode (so task rates are the mixture's). Each system is timed `--rounds`
times on fresh copies of the model and the best round is reported (the machine may be shared).
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
    """The first `n` examples the default mixture's sampler yields (unpacked rows, padding stripped)."""
    from mixtures import MixtureDataset, MixtureRegistry

    ds = MixtureDataset(MixtureRegistry.get("default"), sequence_length=sequence_length, batch_size=64, pack=False,
                        seed=seed)
    out: list[dict[str, np.ndarray]] = []
    for batch in ds:
        enc, tgt = batch["encoder_input_tokens"].numpy(), batch["decoder_target_tokens"].numpy()
        for x, y in zip(enc, tgt):
            if (y != 0).any():
                out.append({"inputs": x[x != 0], "targets": y[y != 0]})
        if len(out) >= n:
            return out[:n]
    return out


def padded_batches(examples: list[dict[str, np.ndarray]], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The padding collator: each batch padded to its longest input and target; labels -100 on padding."""
    batches = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        li, lt = max(len(e["inputs"]) for e in chunk), max(len(e["targets"]) for e in chunk)
        ids = np.zeros((len(chunk), li), np.int64)
        labels = np.full((len(chunk), lt), -100, np.int64)
        for r, e in enumerate(chunk):
            ids[r, :len(e["inputs"])] = e["inputs"]
            labels[r, :len(e["targets"])] = e["targets"]
        ids_t = torch.from_numpy(ids)
        batches.append({"input_ids": ids_t, "attention_mask": (ids_t != 0).long(), "labels": torch.from_numpy(labels)})
    return batches


def time_ours(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    from lightning_t5.module import weighted_loss_sum

    opt = torch.optim.Adafactor(model.parameters(), lr=0.01)
    model.train()
    start = time.perf_counter()
    for b in batches:
        loss_sum, _ = weighted_loss_sum(model, b)
        loss = loss_sum / b["decoder_loss_weights"].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def time_hf(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    opt = torch.optim.Adafactor(model.parameters(), lr=0.01)
    model.train()
    start = time.perf_counter()
    for b in batches:
        loss = model(**b).loss
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
    from mixtures import FeatureConverter

    from lightning_t5 import T5, T5Config

    torch.manual_seed(args.seed)
    seq = {"inputs": 128, "targets": 32}
    examples = draw_examples(args.examples, seq, args.seed)
    effective = int(sum(len(e["inputs"]) + len(e["targets"]) for e in examples))
    packed = FeatureConverter(seq, pack=True)(examples, batch_size=args.batch_size)
    padded = padded_batches(examples, args.batch_size)

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
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in baseline.parameters())

    # warm-up (allocator, kernels) on two batches each, then timed full passes on fresh model copies
    time_ours(copy.deepcopy(ours), packed[:2])
    time_hf(copy.deepcopy(baseline), padded[:2])
    t_ours, t_hf = [], []
    for _ in range(args.rounds):
        t_ours.append(time_ours(copy.deepcopy(ours), packed))
        t_hf.append(time_hf(copy.deepcopy(baseline), padded))
    best_ours, best_hf = min(t_ours), min(t_hf)

    slots_ours = sum(b["encoder_input_tokens"].numel() + b["decoder_target_tokens"].numel() for b in packed)
    slots_hf = sum(b["input_ids"].numel() + b["labels"].numel() for b in padded)
    print(f"default mixture, {len(examples)} examples, {effective:,} effective tokens, torch threads "
          f"{torch.get_num_threads()}, CPU count {os.cpu_count()}")
    print(f"params: ours {n_ours:,}, transformers {n_hf:,}")
    print(f"ours     (packed {len(packed)} batches x {args.batch_size} rows, {effective / slots_ours:.0%} non-pad): "
          f"{best_ours:.2f} s -> {effective / best_ours:,.0f} effective tokens/s  (rounds: "
          f"{', '.join(f'{t:.2f}' for t in t_ours)})")
    print(f"baseline (padded {len(padded)} batches x {args.batch_size} examples, {effective / slots_hf:.0%} non-pad): "
          f"{best_hf:.2f} s -> {effective / best_hf:,.0f} effective tokens/s  (rounds: "
          f"{', '.join(f'{t:.2f}' for t in t_hf)})")
    print(f"ratio ours / transformers+padding: {best_hf / best_ours:.2f}x (target >= 2.5x on CPU)")


if __name__ == "__main__":
    main()
