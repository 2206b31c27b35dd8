"""Inspect tasks and build vocabularies.

    python -m tasks list                                   # name, source, splits, row counts
    python -m tasks show NAME [--split S] [-n N] [--json]  # raw row, text pair, token ids
    python -m tasks vocab --tasks T [T ...] --size 8000 --out data/vocab/spiece.model
    python -m tasks reference > docs/reference.md          # every preprocessor, postprocessor, metric, objective
    python -m tasks cache NAME [NAME ...] [--splits S ...] [--num-proc N] [--max-tokens T] [key=value ...]
    python -m tasks cache --list [NAME ...]                # every cache folder: size, status, in use by a job
    python -m tasks cache --prune [NAME ...]               # remove the folders nothing uses (never one a job has open)

Tasks of your own module: add `imports=[my_tasks]` or `--imports my_tasks` anywhere on the line. `cache` and `show`
take the run's defaults from configs/config.yaml and train.py's overrides (`data.sequence_length.inputs=512`), so
the cache they build is the one `python train.py` with the same overrides reads (tasks/run_defaults.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any

import numpy as np


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def cmd_list(args: argparse.Namespace) -> int:
    from tasks import TaskRegistry

    rows = []
    for name in TaskRegistry.names():
        task = TaskRegistry.get(name)
        sizes = []
        for split in task.splits:
            n = task.num_rows(split)
            sizes.append(f"{split}={n if n is not None else '?'}")
        kind = "supervised" if task.supervised else "unsupervised"
        rows.append((name, task.source.describe(), kind, " ".join(sizes)))
    if args.json:
        for name, source, kind, sizes in rows:
            print(json.dumps({"name": name, "source": source, "kind": kind, "rows": sizes}))
        return 0
    widths = [max(len(r[i]) for r in rows + [("task", "source", "kind", "")]) for i in range(3)]
    print(f"{'task':<{widths[0]}}  {'source':<{widths[1]}}  {'kind':<{widths[2]}}  "
          "rows per split ('?' = unknown without downloading/parsing, e.g. hub)")
    for name, source, kind, sizes in rows:
        print(f"{name:<{widths[0]}}  {source:<{widths[1]}}  {kind:<{widths[2]}}  {sizes}")
    print(f"{len(rows)} tasks")
    return 0


def _supervised_examples(task, split: str, n: int):
    vocab = task.vocabulary
    raw = task._raw(split)
    shown = 0
    for index, row in enumerate(raw):
        for ex in task.preprocess_row(row, split, index):
            yield {
                "raw": _jsonable(dict(row)),
                "inputs": ex["inputs"],
                "targets": ex["targets"],
                "inputs_ids": vocab.encode(ex["inputs"]) + [vocab.eos_id],
                "targets_ids": vocab.encode(ex["targets"]) + [vocab.eos_id],
            }
            shown += 1
            if shown >= n:
                return


def _unsupervised_examples(task, split: str, n: int, sequence_length: dict[str, int]):
    vocab = task.vocabulary
    for index, ex in enumerate(itertools.islice(task.get_dataset(split, sequence_length=sequence_length), n)):
        yield {
            "raw": {"window": index},
            "inputs": vocab.decode(ex["inputs"]),
            "targets": vocab.decode(ex["targets"]),
            "inputs_ids": ex["inputs"].tolist(),
            "targets_ids": ex["targets"].tolist(),
        }


def _sequence_length(args: argparse.Namespace) -> dict[str, int]:
    """The run's sequence lengths (configs/config.yaml + key=value overrides); the length flags override them."""
    from tasks.run_defaults import load_run_config, run_sequence_length

    seq = run_sequence_length(load_run_config(args.overrides))
    return {"inputs": args.inputs_length or seq["inputs"], "targets": args.targets_length or seq["targets"]}


def cmd_show(args: argparse.Namespace) -> int:
    from tasks import TaskRegistry

    task = TaskRegistry.get(args.name)
    split = args.split or ("validation" if "validation" in task.splits else task.splits[0])
    if task.supervised:
        examples = _supervised_examples(task, split, args.n)
    else:
        examples = _unsupervised_examples(task, split, args.n, _sequence_length(args))
    for i, ex in enumerate(examples):
        if args.json:
            print(json.dumps(ex, ensure_ascii=False))
            continue
        print(f"=== {task.name} [{split}] example {i}")
        print(f"raw:         {json.dumps(ex['raw'], ensure_ascii=False)[:2000]}")
        print(f"inputs:      {ex['inputs']!r}")
        print(f"targets:     {ex['targets']!r}")
        print(f"inputs_ids:  {ex['inputs_ids']}")
        print(f"targets_ids: {ex['targets_ids']}")
    return 0


def cmd_vocab(args: argparse.Namespace) -> int:
    from tasks import TaskRegistry, train_vocabulary

    selected = [TaskRegistry.get(name) for name in args.tasks]

    def texts():
        for task in selected:
            for ex in task.text_examples(args.split):
                for key in ("inputs", "targets"):
                    if ex[key]:
                        yield ex[key]

    vocab = train_vocabulary(
        texts(), args.out, size=args.size, model_type=args.model_type,
        character_coverage=args.character_coverage, input_sentence_size=args.input_sentence_size,
    )
    print(f"wrote {vocab.path}: {vocab.base_vocab_size} pieces + {vocab.extra_ids} sentinels = {vocab.vocab_size} ids")
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    from tasks.reference import reference_markdown

    print(reference_markdown())
    return 0


_STATUS = {
    "current": "current",
    "superseded": "superseded by a newer version",
    "stale": "stale: the task's data, vocabulary or preprocessors changed",
    "unregistered": "task not registered here (kept; add --imports MODULE)",
    "unfinished": "unfinished build (resumable)",
    "old layout": "older cache layout",
    "leftover": "leftover of a killed build or cleanup",
}


def _cache_folders(args: argparse.Namespace) -> int:
    """``--list`` and ``--prune``: every token-cache folder against the registered tasks (tasks/cache.py)."""
    from tasks import TaskRegistry
    from tasks.cache import list_caches, prune_caches
    from tasks.utils import cache_root

    entries = list_caches({n: TaskRegistry.get(n) for n in TaskRegistry.names()}, args.names or None)
    base = cache_root() / "tokens"
    mb = lambda n: f"{n / 2**20:,.1f} MB"  # noqa: E731
    if args.prune:
        removed = prune_caches(entries)
        for e, ok in removed:
            print(f"{'removed' if ok else 'kept (opened meanwhile)'}  {e.path.relative_to(base)}  {mb(e.size)}  "
                  f"({_STATUS[e.status]})")
        freed = sum(e.size for e, ok in removed if ok)
        kept = [e for e in entries if not e.removable]
        print(f"removed {sum(ok for _, ok in removed)} folder(s), {mb(freed)}; kept {len(kept)} "
              f"({', '.join(f'{n} {s}' for s, n in _counts(kept).items()) or 'none'})")
        return 0
    if not entries:
        print(f"no token caches under {base}")
        return 0
    print(f"token caches under {base}:")
    print(f"{'folder':<60} {'rows':>11} {'tokens':>14} {'size':>12}  in use  status")
    for e in entries:
        rows = f"{e.stats['rows']:,}" if "rows" in e.stats else "-"
        tokens = f"{e.stats['total_tokens']:,}" if "total_tokens" in e.stats else "-"
        budget = f", max_tokens={e.stats['max_tokens']:,}" if e.stats.get("max_tokens") else ""
        print(f"{str(e.path.relative_to(base)):<60} {rows:>11} {tokens:>14} {mb(e.size):>12}  "
              f"{'yes' if e.in_use else 'no':>6}  {_STATUS[e.status]}{budget}")
    removable = [e for e in entries if e.removable]
    print(f"{len(entries)} folder(s), {mb(sum(e.size for e in entries))}; removable (unused, nothing current reads "
          f"them): {len(removable)}, {mb(sum(e.size for e in removable))} -> python -m tasks cache --prune")
    return 0


def _counts(entries: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries:
        label = "in use" if e.in_use else e.status
        out[label] = out.get(label, 0) + 1
    return out


def cmd_cache(args: argparse.Namespace) -> int:
    """Build the memory-mapped token caches training reads (tasks/cache.py); resumes an interrupted build."""
    import time

    from tasks import TaskError, TaskRegistry
    from tasks.cache import build_cache

    if args.list or args.prune:
        return _cache_folders(args)
    if not args.names:
        raise TaskError("python -m tasks cache: name the task(s) to cache, or pass --list / --prune.")
    length = _sequence_length(args)
    for name in args.names:
        task = TaskRegistry.get(name)
        for split in args.splits or ["train"]:
            start = time.time()
            cache = build_cache(task, split, length, num_proc=args.num_proc, max_tokens=args.max_tokens,
                                shard_rows=args.shard_rows, progress=lambda m: print(m, file=sys.stderr, flush=True))
            took = time.time() - start
            tokens = cache.stats["total_tokens"]
            print(f"{name}/{split}: {len(cache):,} rows, {tokens:,} tokens ({cache.dtype.name}) in {cache.path} "
                  f"[{took:.1f} s, {tokens / max(took, 1e-9):,.0f} tokens/s]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__.splitlines()[0],
                                     epilog="User modules: imports=[my_tasks] or --imports my_tasks, anywhere.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list every registered task")
    p.add_argument("--json", action="store_true", help="one JSON object per task")
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("show", help="raw rows, text-to-text pairs and token ids of a task")
    p.add_argument("name")
    p.add_argument("--split", default=None, help="default: validation if present, else the first split")
    p.add_argument("-n", type=int, default=3, help="number of examples (default 3)")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per example: {"raw", "inputs", "targets", "inputs_ids", "targets_ids"}')
    p.add_argument("--inputs-length", type=int, default=None,
                   help="unsupervised tasks: encoder length (default: data.sequence_length.inputs)")
    p.add_argument("--targets-length", type=int, default=None,
                   help="unsupervised tasks: decoder length (default: data.sequence_length.targets)")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("vocab", help="train a SentencePiece vocabulary (T5 ids) on tasks' text")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--size", type=int, default=8000)
    p.add_argument("--out", required=True, help="output .model path")
    p.add_argument("--split", default="train")
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--input-sentence-size", type=int, default=400_000)
    p.set_defaults(fn=cmd_vocab)

    p = sub.add_parser("reference",
                       help="print docs/reference.md: every preprocessor, postprocessor, metric, objective")
    p.set_defaults(fn=cmd_reference)
    p = sub.add_parser("cache", help="build tasks' token caches offline (sharded, resumable; streams corpora)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--list", action="store_true",
                   help="list every token-cache folder (of the NAMEs, or all): size, rows, whether a running job has "
                        "it open, and whether anything current reads it")
    p.add_argument("--prune", action="store_true",
                   help="remove the folders nothing uses: superseded versions, stale keys (the task's data, vocabulary "
                        "or preprocessors changed), older layouts, leftovers; never one a running job has open, nor "
                        "one of a task not registered here")
    p.add_argument("--splits", nargs="+", default=None, help="default: train")
    p.add_argument("--num-proc", type=int, default=1, help="tokenizing processes (default 1)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="stop at the first shard boundary with this many tokens (a corpus budget, e.g. C4)")
    p.add_argument("--shard-rows", type=int, default=20_000, help="raw rows per shard (the unit of resumption)")
    p.add_argument("--inputs-length", type=int, default=None,
                   help="corpus tasks: encoder length of the windows (default: data.sequence_length.inputs)")
    p.add_argument("--targets-length", type=int, default=None,
                   help="corpus tasks: decoder length of the windows (default: data.sequence_length.targets)")
    p.set_defaults(fn=cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    import datasets

    from tasks import TaskError, import_modules, pop_imports

    try:
        modules, argv = pop_imports(sys.argv[1:] if argv is None else argv)
    except TaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from tasks.run_defaults import split_overrides

    overrides, argv = split_overrides(argv)  # key=value: the run's config (train.py's syntax)
    args = build_parser().parse_args(argv)
    args.overrides = overrides
    datasets.disable_progress_bars()
    try:
        import_modules(modules)
        return args.fn(args)
    except TaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `python -m tasks show ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
