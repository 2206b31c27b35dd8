"""Token caches on disk in a memory-mappable layout, built offline in shards by N processes.

Why this layout: training processes (and each of their dataloader workers) read a task's tokens through
``np.memmap``, so a corpus of any size costs page cache, never anonymous memory, and nothing is copied.

One cache per (task, split, source rows, vocabulary, preprocessors, and sequence_length when a cacheable token
preprocessor uses it) = :meth:`tasks.Task.cache_fingerprint`, under
``$LIGHTNING_T5_CACHE/tokens/<task>/<split>-<fingerprint>/``::

    inputs.tokens   targets.tokens     flat token ids, uint16 when the vocabulary has < 65,536 ids, else uint32
    inputs.offsets  targets.offsets    int64, rows + 1 entries: row i is tokens[offsets[i]:offsets[i + 1]]
    stats.json                         rows, tokens, a length histogram, the build's parameters
    COMPLETE                           written last: a cache without it is unfinished and never read

Building (:func:`build_cache`, ``python -m tasks cache NAME``): the split's raw rows are cut into shards of
``shard_rows`` rows, read in order by the main process (random-access and streaming sources alike) and turned
into tokens by a pool of ``num_proc`` processes. Each shard is written to a temporary folder and renamed when
complete, so a killed job resumes at the first unfinished shard. ``max_tokens`` stops reading at the first shard
boundary at which the cache holds that many tokens (a C4 budget). At the end the shards are concatenated into the
flat files above and ``COMPLETE`` is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import TaskError
from tasks.utils import cache_root

log = logging.getLogger(__name__)

COLUMNS = ("inputs", "targets")
COMPLETE = "COMPLETE"
LAYOUT_VERSION = 1
DEFAULT_SHARD_ROWS = 20_000
_BATCH_ROWS = 1000  # rows per tokenizer call and per cacheable-preprocessor call (as Task.tokenized's map)
_HIST_BUCKETS = 33  # length histogram: bucket k counts rows with 2^(k-1) <= length < 2^k (bucket 0: empty rows)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocabulary < 65,536 ids), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def cache_dir(task: Any, split: str, sequence_length: Mapping[str, int] | None = None) -> Path:
    """Where ``task``'s token cache of ``split`` lives (keyed by its cache fingerprint)."""
    return cache_root() / "tokens" / task.name / f"{split}-{cache_key(task, split, sequence_length)}"


def cache_key(task: Any, split: str, sequence_length: Mapping[str, int] | None = None) -> str:
    return task.cache_fingerprint(split, _seq_for(task, sequence_length))


def _seq_for(task: Any, sequence_length: Mapping[str, int] | None) -> dict[str, int] | None:
    """The sequence length matters to the cache only when a cacheable token preprocessor uses it."""
    if sequence_length is None or not task._cacheable():
        return None
    return {"inputs": int(sequence_length["inputs"]), "targets": int(sequence_length["targets"])}


def cache_command(task: Any, split: str, sequence_length: Mapping[str, int] | None = None,
                  imports: list[str] | None = None) -> str:
    """The exact ``python -m tasks cache ...`` command that builds this cache."""
    parts = ["python -m tasks"]
    parts += [f"--imports {m}" for m in imports or []]
    parts += ["cache", task.name, "--splits", split]
    seq = _seq_for(task, sequence_length)
    if seq:
        parts += ["--inputs-length", str(seq["inputs"]), "--targets-length", str(seq["targets"])]
    if task.source.streaming:
        parts += ["--max-tokens", "1000000000"]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------- reading
class TokenCache:
    """Read-only, memory-mapped view of a complete cache: ``len()``, ``lengths(col, rows)``, ``get(col, row)``.

    Pickles as its path (dataloader workers map the files themselves).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not (self.path / COMPLETE).is_file():
            raise TaskError(f"token cache {self.path} is not complete (no {COMPLETE} marker).")
        self.stats = json.loads((self.path / "stats.json").read_text())
        self.rows = int(self.stats["rows"])
        # the cache key plus its extent: a cache rebuilt with another --max-tokens has the same key, other rows
        self.fingerprint = f"{self.stats['fingerprint']}:{self.rows}:{self.stats.get('total_tokens')}"
        self.dtype = np.dtype(self.stats["dtype"])
        self._maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.rows

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "stats": self.stats, "fingerprint": self.fingerprint, "rows": self.rows,
                "dtype": self.dtype, "_maps": {}}

    def column(self, col: str) -> tuple[np.ndarray, np.ndarray]:
        """(offsets int64 [rows + 1], tokens) of ``col``, memory-mapped."""
        maps = self._maps.get(col)
        if maps is None:
            offsets = np.memmap(self.path / f"{col}.offsets", dtype=np.int64, mode="r")
            tok_path = self.path / f"{col}.tokens"
            tokens = (np.memmap(tok_path, dtype=self.dtype, mode="r") if tok_path.stat().st_size
                      else np.zeros(0, self.dtype))
            for arr in (offsets, tokens):  # rows are read in random order: no read-ahead of 128 KB per 1 KB row
                mm = getattr(arr, "_mmap", None)
                if mm is not None and hasattr(mmap, "MADV_RANDOM"):
                    mm.madvise(mmap.MADV_RANDOM)
            maps = self._maps[col] = (offsets, tokens)
        return maps

    def get(self, col: str, row: int) -> np.ndarray:
        offsets, tokens = self.column(col)
        return tokens[offsets[row]:offsets[row + 1]].astype(np.int32)

    def lengths(self, col: str, rows: np.ndarray) -> np.ndarray:
        offsets, _ = self.column(col)
        rows = np.asarray(rows, np.int64)
        return offsets[rows + 1] - offsets[rows]


def open_cache(task: Any, split: str, sequence_length: Mapping[str, int] | None = None) -> TokenCache | None:
    """The complete cache of (task, split), or None."""
    path = cache_dir(task, split, sequence_length)
    return TokenCache(path) if (path / COMPLETE).is_file() else None


# ---------------------------------------------------------------------------------------------------- writing
def write_flat(path: Path, columns: Mapping[str, tuple[np.ndarray, np.ndarray]], dtype: np.dtype,
               stats: Mapping[str, Any]) -> None:
    """Write a cache directly from flat (offsets, tokens) arrays per column (bench, tests): data, stats, marker."""
    path.mkdir(parents=True, exist_ok=True)
    for col in COLUMNS:
        offsets, tokens = columns[col]
        np.asarray(offsets, np.int64).tofile(path / f"{col}.offsets")
        np.asarray(tokens, dtype).tofile(path / f"{col}.tokens")
    (path / "stats.json").write_text(json.dumps(dict(stats), indent=1))
    (path / COMPLETE).write_text("ok\n")


def _histogram(lengths: np.ndarray) -> np.ndarray:
    buckets = np.zeros(_HIST_BUCKETS, np.int64)
    if len(lengths):
        k = np.where(lengths > 0, np.floor(np.log2(np.maximum(lengths, 1))).astype(np.int64) + 1, 0)
        np.add.at(buckets, np.minimum(k, _HIST_BUCKETS - 1), 1)
    return buckets


def _ragged_to_flat(seqs: list[np.ndarray], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
    offsets = np.zeros(len(seqs) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(seqs).astype(dtype) if offsets[-1] else np.zeros(0, dtype)
    return offsets, flat


@dataclass
class _ShardJob:
    shard: int
    start_row: int
    rows: dict[str, list] | None  # None: a random-access source, sliced by the worker itself (no pickled text)


# state inherited by forked pool workers (set before the pool starts): no pickling of the task
_WORKER: dict[str, Any] = {}


def _shard_dir(root: Path, shard: int) -> Path:
    return root / "shards" / f"{shard:07d}"


def _build_shard(job: _ShardJob) -> dict[str, Any]:
    """Tokenize one shard (text preprocessors, vocabulary, cacheable token preprocessors) and write it atomically."""
    task, split, seq = _WORKER["task"], _WORKER["split"], _WORKER["sequence_length"]
    root, dtype, threads = _WORKER["root"], _WORKER["dtype"], _WORKER["threads"]
    rows = job.rows if job.rows is not None else _WORKER["raw"][job.start_row:job.start_row + _WORKER["shard_rows"]]
    n = len(next(iter(rows.values()))) if rows else 0
    out: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
    for a in range(0, n, _BATCH_ROWS):
        batch = {k: v[a:a + _BATCH_ROWS] for k, v in rows.items()}
        indices = list(range(job.start_row + a, job.start_row + a + len(next(iter(batch.values())))))
        tokens = task.tokenize_rows(batch, indices, split, sequence_length=seq, num_threads=threads)
        for c in COLUMNS:
            out[c].extend(tokens[c])
    final = _shard_dir(root, job.shard)
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta: dict[str, Any] = {"shard": job.shard, "raw_rows": n, "rows": len(out["targets"]), "tokens": {},
                            "histogram": {}}
    for c in COLUMNS:
        offsets, flat = _ragged_to_flat(out[c], dtype)
        flat.tofile(tmp / f"{c}.tokens")
        offsets.tofile(tmp / f"{c}.offsets")
        meta["tokens"][c] = int(offsets[-1])
        meta["histogram"][c] = _histogram(np.diff(offsets)).tolist()
    (tmp / "meta.json").write_text(json.dumps(meta))
    os.replace(tmp, final)
    return meta


def _read_shards(raw: Any, shard_rows: int) -> Iterator[tuple[int, int, dict[str, list] | None]]:
    """(shard, first row, rows as a dict of lists) in order. A random-access source yields None for the rows: the
    shard's worker slices them from the memory-mapped Arrow table itself. A stream is read here, in order."""
    import datasets

    if isinstance(raw, datasets.Dataset):
        for shard, start in enumerate(range(0, len(raw), shard_rows)):
            yield shard, start, None
        return
    it = iter(raw)
    shard = 0
    while True:
        rows = []
        for row in it:
            rows.append(row)
            if len(rows) >= shard_rows:
                break
        if not rows:
            return
        yield shard, shard * shard_rows, {k: [r.get(k) for r in rows] for k in rows[0]}
        if len(rows) < shard_rows:
            return
        shard += 1


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock per cache: concurrent builders (ranks, jobs) wait, then find the cache complete."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(root.name + ".lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_cache(task: Any, split: str, sequence_length: Mapping[str, int] | None = None, *, num_proc: int = 1,
                max_tokens: int | None = None, shard_rows: int = DEFAULT_SHARD_ROWS,
                progress: Callable[[str], None] | None = None) -> TokenCache:
    """Build (or finish, or just open) the token cache of (task, split); see the module docstring."""
    task._check_split(split)
    if num_proc < 1 or shard_rows < 1 or (max_tokens is not None and max_tokens < 1):
        raise TaskError(f"cache {task.name}/{split}: num_proc, shard_rows and max_tokens must be positive "
                        f"(got {num_proc}, {shard_rows}, {max_tokens}).")
    seq = _seq_for(task, sequence_length)
    root = cache_dir(task, split, seq)
    say = progress or log.info
    with _locked(root):
        params = {"layout": LAYOUT_VERSION, "fingerprint": cache_key(task, split, seq), "task": task.name,
                  "split": split, "sequence_length": seq, "max_tokens": max_tokens, "shard_rows": shard_rows}
        manifest = root / "build.json"
        if (root / COMPLETE).is_file():
            cache = TokenCache(root)
            if cache.stats.get("max_tokens") == max_tokens:
                return cache
            say(f"{task.name}/{split}: cached with max_tokens={cache.stats.get('max_tokens')}; rebuilding with "
                f"max_tokens={max_tokens}")
            shutil.rmtree(root)
        if manifest.is_file() and json.loads(manifest.read_text()) != params:
            say(f"{task.name}/{split}: unfinished cache with other parameters; starting over")
            shutil.rmtree(root)
        (root / "shards").mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(params))
        for tmp in (root / "shards").glob("*.tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
        metas = _run_shards(task, split, seq, root, num_proc, max_tokens, shard_rows, say)
        return _finish(task, split, root, metas, params, say)


def _load_meta(root: Path, shard: int) -> dict[str, Any] | None:
    path = _shard_dir(root, shard) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _run_shards(task: Any, split: str, seq: dict[str, int] | None, root: Path, num_proc: int,
                max_tokens: int | None, shard_rows: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Tokenize every unfinished shard (in a pool), in order; stop at the token budget."""
    raw = task._raw(split)
    vocab = task.vocabulary
    cores = os.cpu_count() or 1
    _WORKER.update(task=task, split=split, sequence_length=seq, root=root, dtype=token_dtype(vocab.vocab_size),
                   threads=-1 if num_proc == 1 else max(1, cores // num_proc), raw=raw, shard_rows=shard_rows)
    metas: dict[int, dict[str, Any]] = {}
    total, resumed, start = 0, 0, time.time()
    next_shard = 0  # shards are accounted for in order (the budget is a prefix of the stream)
    stop_after: int | None = None
    pool = multiprocessing.get_context("fork").Pool(num_proc) if num_proc > 1 else None
    pending: dict[int, Any] = {}

    def account(meta: dict[str, Any]) -> None:
        nonlocal total, next_shard, stop_after
        metas[meta["shard"]] = meta
        while next_shard in metas and stop_after is None:
            total += sum(metas[next_shard]["tokens"].values())
            if max_tokens is not None and total >= max_tokens:
                stop_after = next_shard
            next_shard += 1

    try:
        for shard, first, rows in _read_shards(raw, shard_rows):
            if stop_after is not None:
                break
            done = _load_meta(root, shard)
            if done is not None:
                resumed += 1
                account(done)
                continue
            job = _ShardJob(shard, first, rows)
            if pool is None:
                account(_build_shard(job))
            else:
                pending[shard] = pool.apply_async(_build_shard, (job,))
                while len(pending) >= 2 * num_proc:
                    oldest = min(pending)
                    account(pending.pop(oldest).get())
            if shard % 10 == 0 and shard:
                rate = total / max(time.time() - start, 1e-9)
                say(f"{task.name}/{split}: shard {shard}, {total:,} tokens ({rate:,.0f} tokens/s)")
        for shard in sorted(pending):
            account(pending.pop(shard).get())
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _WORKER.clear()
    if resumed:
        say(f"{task.name}/{split}: resumed; {resumed} shard(s) were already done")
    last = stop_after if stop_after is not None else next_shard - 1
    for extra in (root / "shards").iterdir():  # shards past the budget (built in flight) are not part of the cache
        if extra.is_dir() and extra.name.isdigit() and int(extra.name) > last:
            shutil.rmtree(extra)
    return [metas[s] for s in range(last + 1)]


def _finish(task: Any, split: str, root: Path, metas: list[dict[str, Any]], params: dict[str, Any],
            say: Callable[[str], None]) -> TokenCache:
    """Concatenate the shards into the flat files, write stats.json, then the COMPLETE marker."""
    dtype = token_dtype(task.vocabulary.vocab_size)
    rows = sum(m["rows"] for m in metas)
    if rows == 0:
        raise TaskError(f"Task '{task.name}', split '{split}': every row was dropped by the preprocessors; the "
                        "cache would be empty.")
    for col in COLUMNS:
        base = 0
        with open(root / f"{col}.tokens", "wb") as tok_out, open(root / f"{col}.offsets", "wb") as off_out:
            np.zeros(1, np.int64).tofile(off_out)
            for m in metas:
                d = _shard_dir(root, m["shard"])
                with open(d / f"{col}.tokens", "rb") as fh:
                    shutil.copyfileobj(fh, tok_out, 1 << 24)
                offsets = np.fromfile(d / f"{col}.offsets", np.int64)
                (offsets[1:] + base).tofile(off_out)
                base += int(offsets[-1])
    stats = {**params, "dtype": dtype.name, "rows": rows, "raw_rows": sum(m["raw_rows"] for m in metas),
             "shards": len(metas),
             "tokens": {c: sum(m["tokens"][c] for m in metas) for c in COLUMNS},
             "length_histogram": {c: np.sum([m["histogram"][c] for m in metas], axis=0).tolist() for c in COLUMNS},
             "histogram_buckets": "bucket k: rows with 2^(k-1) <= length < 2^k; bucket 0: empty rows"}
    stats["total_tokens"] = sum(stats["tokens"].values())
    (root / "stats.json").write_text(json.dumps(stats, indent=1))
    (root / COMPLETE).write_text("ok\n")
    shutil.rmtree(root / "shards", ignore_errors=True)
    say(f"{task.name}/{split}: cache complete: {rows:,} rows, {stats['total_tokens']:,} tokens in {root}")
    return TokenCache(root)
