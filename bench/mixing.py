"""Benchmark: mixing sampler + packing throughput, and packing efficiency on the `glue` mixture.

1. Throughput (examples/s, non-pad tokens/s) of MixtureDataset with 10, 100 and 1,000 synthetic tasks, packed and
   padded, in steady state (after every task's data was loaded once). The cost per example should stay roughly flat
   as the number of tasks grows; the ratio to the 10-task figure is printed.
2. Packing efficiency (non-pad share of tokens) on the shipped GLUE sets (`glue_local`) versus padding each example
   to its own task's maximum length (bucketing by task), and versus padding to the fixed sequence length.

Run: ``.venv/bin/python bench/mixing.py [--seconds 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixtures import Mixture, MixtureDataset, MixtureRegistry  # noqa: E402
from mixtures.testing import SyntheticTask  # noqa: E402


def throughput(num_tasks: int, pack: bool, seconds: float, seq: dict[str, int], batch_size: int) -> dict[str, float]:
    tasks = [SyntheticTask(f"syn{i:04d}", 200, inputs_length=(4, 80), targets_length=(1, 12), seed=i)
             for i in range(num_tasks)]
    mix = Mixture(f"bench_{num_tasks}", tasks)
    ds = MixtureDataset(mix, sequence_length=seq, batch_size=batch_size, pack=pack, seed=0)
    for t in range(num_tasks):  # steady state: load every task's arrays once (a one-off cost)
        ds._source(t)
    it = iter(ds)
    for _ in range(3):
        next(it)
    n_batches = n_examples = n_tokens = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        b = next(it)
        n_batches += 1
        seg = b["decoder_segment_ids"].numpy()
        n_examples += int(seg.max(axis=1).sum()) if pack else int((seg[:, 0] > 0).sum())
        n_tokens += int((b["encoder_segment_ids"] > 0).sum() + (seg > 0).sum())
    dt = time.perf_counter() - start
    return {"examples_per_s": n_examples / dt, "tokens_per_s": n_tokens / dt, "us_per_example": 1e6 * dt / n_examples,
            "batches": n_batches}


def glue_efficiency(seq: dict[str, int], batch_size: int, num_batches: int) -> dict[str, float]:
    mix = MixtureRegistry.get("glue_local")  # the shipped GLUE sets (`glue` needs all eight, from the hub)
    ds = MixtureDataset(mix, sequence_length=seq, batch_size=batch_size, pack=True, seed=0, num_batches=num_batches)
    # each task's maximum lengths (capped at the sequence lengths, as a padding collator would truncate)
    max_in, max_t = [], []
    for t in range(len(mix.tasks)):
        src = ds._source(t)
        max_in.append(min(int(np.diff(src._col("inputs")[0]).max()), seq["inputs"]))  # from the cache's offsets
        max_t.append(min(int(np.diff(src._col("targets")[0]).max()), seq["targets"]))
    max_in, max_t = np.array(max_in), np.array(max_t)
    real = packed_slots = bucket_slots = fixed_slots = examples = 0
    for b in ds:
        eseg, dseg = b["encoder_segment_ids"].numpy(), b["decoder_segment_ids"].numpy()
        tids = b["decoder_task_ids"].numpy()
        real += int((eseg > 0).sum() + (dseg > 0).sum())
        packed_slots += eseg.size + dseg.size
        starts = (b["decoder_positions"].numpy() == 0) & (dseg > 0)
        ex_tasks = tids[starts]
        examples += len(ex_tasks)
        bucket_slots += int((max_in[ex_tasks] + max_t[ex_tasks]).sum())
        fixed_slots += len(ex_tasks) * (seq["inputs"] + seq["targets"])
    return {"packed": real / packed_slots, "per_task_max_padding": real / bucket_slots,
            "fixed_length_padding": real / fixed_slots, "examples": examples,
            "examples_per_row": examples / (num_batches * batch_size), "truncated": ds.counters()["truncated"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--quick", action="store_true", help="1 s per measurement, fewer glue batches")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from datasets.utils.logging import disable_progress_bar
    disable_progress_bar()
    secs = 1.0 if args.quick else args.seconds
    seq, B = {"inputs": 256, "targets": 32}, 32
    print(f"## Sampler + packing throughput (synthetic tasks, inputs {seq['inputs']} / targets {seq['targets']}, "
          f"batch {B} rows, 1 process)")
    print(f"{'mode':7s} {'tasks':>6s} {'examples/s':>11s} {'tokens/s':>11s} {'us/example':>11s} {'vs 10 tasks':>12s}")
    for pack in (True, False):
        base = None
        for n in (10, 100, 1000):
            r = throughput(n, pack, secs, seq, B)
            base = base or r["us_per_example"]
            print(f"{'packed' if pack else 'padded':7s} {n:6d} {r['examples_per_s']:11.0f} {r['tokens_per_s']:11.0f} "
                  f"{r['us_per_example']:11.1f} {r['us_per_example'] / base:11.2f}x")
    print()
    print("## Packing efficiency on the `glue_local` mixture (non-pad share of encoder+decoder tokens)")
    for seq in ({"inputs": 512, "targets": 114}, {"inputs": 512, "targets": 16}, {"inputs": 128, "targets": 8}):
        e = glue_efficiency(seq, 16, 20 if args.quick else 60)
        print(f"inputs {seq['inputs']:4d} / targets {seq['targets']:3d}: packed {e['packed']:.3f}  "
              f"per-task-max padding {e['per_task_max_padding']:.3f}  fixed-length padding "
              f"{e['fixed_length_padding']:.3f}  -> packed/per-task {e['packed'] / e['per_task_max_padding']:.2f}x  "
              f"({e['examples_per_row']:.1f} examples per row, {e['examples']} examples, {e['truncated']} truncated)")


if __name__ == "__main__":
    main()
