"""Tokenization throughput on the shipped data: uncached vs cached, batched vs per-example.

    python bench/tokenization.py [--tasks glue_sst2 squad ...] [--split train]

For each task (default: every supervised task with shipped rows) it measures, in a fresh cache:
  uncached   task.tokenized(split) the first time: text preprocessors + batched SentencePiece + Arrow write
  cached     task.tokenized(split) again: served from the Arrow cache file (no re-tokenization)
  iterate    reading every example of the cached split through task.get_dataset (what training does)
  naive      the same texts encoded one call per text (vocab.encode) vs one encode_batch call
and prints examples/s and tokens/s with the ratios cached/uncached and batched/naive.
The raw source files are loaded once before timing, so "uncached" measures our work, not JSON parsing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_TASKS = [
    "glue_cola", "glue_sst2", "glue_mrpc", "glue_stsb", "glue_rte", "super_glue_boolq", "super_glue_cb",
    "super_glue_copa", "squad", "cnn_dailymail", "wmt_ende",
]


def _time(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=DEFAULT_TASKS)
    parser.add_argument("--split", default="train")
    args = parser.parse_args()

    os.environ["LIGHTNING_T5_CACHE"] = tempfile.mkdtemp(prefix="lt5_bench_")
    import datasets

    datasets.disable_progress_bars()
    import tasks

    rows = []
    for name in args.tasks:
        task = tasks.TaskRegistry.get(name)
        task.source.load(args.split)  # build the raw Arrow cache outside the timed region
        ds, t_uncached = _time(lambda: task.tokenized(args.split))
        n = len(ds)
        tokens = int(sum(len(x) for x in ds["inputs"]) + sum(len(x) for x in ds["targets"]))
        _, t_cached = _time(lambda: task.tokenized(args.split))
        _, t_iter = _time(lambda: sum(1 for _ in task.get_dataset(args.split)))
        texts = [(e["inputs"], e["targets"]) for e in task.text_examples(args.split)]
        vocab = task.vocabulary
        _, t_naive = _time(lambda: [(vocab.encode(a), vocab.encode(b)) for a, b in texts])
        ins, tgts = [a for a, _ in texts], [b for _, b in texts]
        _, t_batch = _time(lambda: (vocab.encode_batch(ins), vocab.encode_batch(tgts)))
        rows.append((name, n, tokens, t_uncached, t_cached, t_iter, t_naive / t_batch))

    hdr = (f"{'task':<18}{'examples':>9}{'tokens':>10}{'uncached ex/s':>15}{'uncached tok/s':>16}"
           f"{'cached load s':>14}{'iterate ex/s':>14}{'cached/uncached':>17}{'encode batched/naive':>22}")
    print(hdr)
    tot = [0, 0, 0.0, 0.0, 0.0]
    for name, n, tok, tu, tc, ti, speedup in rows:
        print(f"{name:<18}{n:>9}{tok:>10}{n / tu:>15.0f}{tok / tu:>16.0f}{tc:>14.4f}{n / ti:>14.0f}"
              f"{tu / tc:>16.0f}x{speedup:>21.2f}x")
        for i, v in enumerate((n, tok, tu, tc, ti)):
            tot[i] += v
    n, tok, tu, tc, ti = tot
    print(f"{'ALL':<18}{n:>9}{tok:>10}{n / tu:>15.0f}{tok / tu:>16.0f}{tc:>14.4f}{n / ti:>14.0f}{tu / tc:>16.0f}x")
    print("ratios: cached/uncached = time of the first tokenized() / time of a cache hit; "
          "encode batched/naive = time of one vocab.encode call per text / "
          "time of vocab.encode_batch on the same texts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
