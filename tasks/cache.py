"""Token caches on disk in a memory-mappable layout: built offline in shards by N processes, published durably,
checked when opened, and versioned so that a rebuild never pulls a cache from under a running job.

Why this layout: training processes (and each of their dataloader workers) read a task's tokens through
``np.memmap``, so a corpus of any size costs page cache, never anonymous memory, and nothing is copied.

One cache key per (task, split, source contents, vocabulary, preprocessors, and sequence_length when a cacheable
token preprocessor uses it) = :meth:`tasks.Task.cache_fingerprint`; one folder per key, one sub-folder per build::

    $LIGHTNING_T5_CACHE/tokens/<task>/<split>-<key>/
        CURRENT                            names the version training opens (replaced atomically, last)
        v000001/                           one complete build, never modified once published:
            inputs.tokens   targets.tokens     flat token ids, uint16 when the vocabulary has < 65,536 ids, else uint32
            inputs.offsets  targets.offsets    int64, rows + 1 entries: row i is tokens[offsets[i]:offsets[i + 1]]
            stats.json                         rows, tokens, a length histogram, the build's parameters and the
                                               content hash of the four files (rank agreement, resume checks)
            COMPLETE                           written last; every process that has the cache open holds a shared
                                               lock on it, which is how a cleanup knows the version is in use
        build/                             an unfinished build: build.json (its parameters) and shards/
    $LIGHTNING_T5_CACHE/tokens/<task>/<split>-<key>.lock   the builders' lock

Building (:func:`build_cache`, ``python -m tasks cache NAME``): the split's raw rows are cut into shards of
``shard_rows`` rows, read in order by the main process (random-access and streaming sources alike) and turned
into tokens by a pool of ``num_proc`` processes. Each shard is written to a temporary folder, fsynced and renamed
when complete, so a killed job resumes at the first unfinished shard. ``max_tokens`` stops reading at the first
shard boundary at which the cache holds that many tokens (a C4 budget). At the end the shards are concatenated into
a new version folder under a temporary name (every file and the folder fsynced, the content hash recorded in
``stats.json``, ``COMPLETE`` last), renamed, checked, and ``CURRENT`` is switched to it.

A rebuild (another ``--max-tokens``, or a damaged version) publishes a new version. The versions it supersedes are
removed at once when no process has them open, and otherwise stay until ``python -m tasks cache --prune``;
``python -m tasks cache --list`` shows every cache folder with its size and whether anything uses it.

Opening (:class:`TokenCache`) checks ``stats.json``, every file's size against the offsets and the dtype, that the
offsets start at 0, never decrease and end at the recorded token count, and otherwise stops naming the file and
the command that rebuilds it: a cut file is never served as short or empty rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import mmap
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import TaskError
from tasks.sources import LocalOrHubSource
from tasks.utils import cache_root, fsync_dir, write_text_atomic

log = logging.getLogger(__name__)

COLUMNS = ("inputs", "targets")
COMPLETE = "COMPLETE"
CURRENT = "CURRENT"
BUILD = "build"
LAYOUT_VERSION = 2
DEFAULT_SHARD_ROWS = 20_000
_BATCH_ROWS = 1000  # rows per tokenizer call and per cacheable-preprocessor call (as Task.tokenized's map)
_HIST_BUCKETS = 33  # length histogram: bucket k counts rows with 2^(k-1) <= length < 2^k (bucket 0: empty rows)
_VERSION_RE = re.compile(r"^v\d{6}$")
_CHECK_CHUNK = 1 << 22  # offsets per step of the monotonicity check (bounded memory on corpus-sized caches)
_COPY_BLOCK = 1 << 24


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocabulary < 65,536 ids), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def cache_dir(task: Any, split: str, sequence_length: Mapping[str, int] | None = None) -> Path:
    """The folder of ``task``'s token caches of ``split`` (keyed by its cache fingerprint): versions, CURRENT, build."""
    return cache_root() / "tokens" / task.name / f"{split}-{cache_key(task, split, sequence_length)}"


def cache_key(task: Any, split: str, sequence_length: Mapping[str, int] | None = None) -> str:
    return task.cache_fingerprint(split, _seq_for(task, sequence_length))


def _seq_for(task: Any, sequence_length: Mapping[str, int] | None) -> dict[str, int] | None:
    """The sequence length matters to the cache only when a cacheable token preprocessor uses it."""
    if sequence_length is None or not task._cacheable():
        return None
    return {"inputs": int(sequence_length["inputs"]), "targets": int(sequence_length["targets"])}


def _command(name: str, split: str, seq: Mapping[str, int] | None, max_tokens: int | None,
             imports: Iterable[str] = ()) -> str:
    parts = ["python -m tasks"]
    parts += [f"--imports {m}" for m in imports]
    parts += ["cache", name, "--splits", split]
    if seq:
        parts += ["--inputs-length", str(seq["inputs"]), "--targets-length", str(seq["targets"])]
    if max_tokens is not None:
        parts += ["--max-tokens", str(int(max_tokens))]
    return " ".join(parts)


def cache_command(task: Any, split: str, sequence_length: Mapping[str, int] | None = None,
                  imports: list[str] | None = None, max_tokens: int | None = None) -> str:
    """The exact ``python -m tasks cache ...`` command that builds this cache (a streaming source gets a budget of
    10^9 tokens unless ``max_tokens`` says otherwise)."""
    if max_tokens is None and task.source.streaming:
        max_tokens = 1_000_000_000
    return _command(task.name, split, _seq_for(task, sequence_length), max_tokens, imports or [])


def _rebuild_command(path: Path, stats: Mapping[str, Any] | None) -> str:
    """The command that rebuilds the cache whose version folder is ``path``, from its stats (or its folder names)."""
    stats = stats or {}
    name = str(stats.get("task") or path.parent.parent.name)
    split = str(stats.get("split") or path.parent.name.rsplit("-", 1)[0])
    return (_command(name, split, stats.get("sequence_length"), stats.get("max_tokens"))
            + "   (add --imports MODULE when the task is registered in your own module)")


# ---------------------------------------------------------------------------------------------------- reading
class _Gone(TaskError):
    """The version's COMPLETE marker is missing (never finished, or removed by a cleanup since it was looked up)."""


_CHECKED: set[tuple] = set()  # offsets files whose monotonicity this process has checked (path, inode, size, mtime)


class TokenCache:
    """Read-only, memory-mapped view of one complete cache version: ``len()``, ``lengths(col, rows)``,
    ``get(col, row)``. Opening it checks the files (see the module docstring) and holds a shared lock on its
    ``COMPLETE`` marker until :meth:`close` (or garbage collection), so no cleanup removes it meanwhile.

    Pickles as its path and stats (dataloader workers map the files themselves; the parent holds the lock).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._hold = _hold_shared(self.path)
        try:
            self.stats = _read_stats(self.path)
            self.rows = int(self.stats["rows"])
            self.dtype = np.dtype(self.stats["dtype"])
            self.content_hash = str(self.stats["content_hash"])
            # the cache key, its extent and its contents: a cache rebuilt with another --max-tokens, or built on
            # another node from a source that changed under the same name, has the same key and other contents
            self.fingerprint = (f"{self.stats['fingerprint']}:{self.rows}:{self.stats['total_tokens']}:"
                                f"{self.content_hash}")
            self._maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            _check_files(self)
        except BaseException:
            self.close()
            raise

    def close(self, _close: Callable[[int], None] = os.close) -> None:  # bound early: also runs at interpreter exit
        """Release this process's hold on the version (its memory maps stay valid until they are dropped)."""
        fd, self._hold = getattr(self, "_hold", -1), -1
        if fd >= 0:
            _close(fd)

    def __del__(self) -> None:
        self.close()

    def __len__(self) -> int:
        return self.rows

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "stats": self.stats, "fingerprint": self.fingerprint, "rows": self.rows,
                "dtype": self.dtype, "content_hash": self.content_hash, "_maps": {}, "_hold": -1}

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

    def lengths(self, col: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Token lengths of ``rows`` (every row when None) of ``col``, from the offsets alone."""
        offsets, _ = self.column(col)
        if rows is None:
            return np.diff(offsets)
        rows = np.asarray(rows, np.int64)
        return offsets[rows + 1] - offsets[rows]


def _hold_shared(path: Path) -> int:
    """Open ``path/COMPLETE`` and take a shared lock on it: the version counts as in use while the fd is open."""
    try:
        fd = os.open(path / COMPLETE, os.O_RDONLY)
    except FileNotFoundError:
        raise _Gone(f"token cache {path} is not complete (no {COMPLETE} marker).") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_nlink == 0:  # a cleanup removed it between our open and our lock
            raise _Gone(f"token cache {path} was removed while it was being opened.")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _damaged(path: Path, stats: Mapping[str, Any] | None, what: str) -> TaskError:
    return TaskError(f"token cache {path}: {what}. The cache is damaged (a cut copy, a full disk, or a file "
                     f"changed after the build); nothing was read from it. Rebuild it with:\n    "
                     f"{_rebuild_command(path, stats)}\n(the rebuild publishes a new version; this one is removed "
                     "once no job has it open.)")


def _read_stats(path: Path) -> dict[str, Any]:
    try:
        stats = json.loads((path / "stats.json").read_text())
    except (OSError, ValueError) as err:
        raise _damaged(path, None, f"stats.json cannot be read ({type(err).__name__}: {err})") from None
    need = ("rows", "dtype", "tokens", "total_tokens", "fingerprint", "content_hash")
    missing = [k for k in need if k not in stats] if isinstance(stats, dict) else list(need)
    if missing:
        raise _damaged(path, stats if isinstance(stats, dict) else None,
                       f"stats.json lacks {missing} (written by an older version of this code, or cut)")
    return stats


def _check_files(cache: TokenCache) -> None:
    """Every file's size against the offsets and the dtype; offsets from 0, never decreasing, ending at the
    recorded token count (the full pass over the offsets runs once per process and file)."""
    path, stats, itemsize = cache.path, cache.stats, cache.dtype.itemsize
    total = 0
    for col in COLUMNS:
        off_path, tok_path = path / f"{col}.offsets", path / f"{col}.tokens"
        try:
            off_st, tok_st = off_path.stat(), tok_path.stat()
        except FileNotFoundError as err:
            raise _damaged(path, stats, f"{Path(err.filename).name} is missing") from None
        want = (cache.rows + 1) * 8
        if off_st.st_size != want:
            raise _damaged(path, stats, f"{off_path.name} has {off_st.st_size:,} bytes; {cache.rows:,} rows need "
                                        f"{want:,} (rows + 1 int64 offsets)")
        offsets = np.memmap(off_path, dtype=np.int64, mode="r")
        first, end = int(offsets[0]), int(offsets[-1])
        if first != 0 or end != int(stats["tokens"][col]):
            raise _damaged(path, stats, f"{off_path.name} runs from {first:,} to {end:,}; stats.json says 0 to "
                                        f"{int(stats['tokens'][col]):,} tokens")
        if tok_st.st_size != end * itemsize:
            raise _damaged(path, stats, f"{tok_path.name} has {tok_st.st_size:,} bytes; its offsets need "
                                        f"{end * itemsize:,} ({end:,} {cache.dtype.name} tokens)")
        memo = (str(off_path), off_st.st_ino, off_st.st_size, off_st.st_mtime_ns)
        if memo not in _CHECKED:
            for a in range(0, cache.rows, _CHECK_CHUNK):
                step = np.diff(offsets[a:a + _CHECK_CHUNK + 1])
                if (step < 0).any():
                    row = a + int(np.argmax(step < 0))
                    raise _damaged(path, stats, f"{off_path.name} decreases at row {row:,}")
            _CHECKED.add(memo)
        total += end
    if total != int(stats["total_tokens"]):
        raise _damaged(path, stats, f"the columns hold {total:,} tokens; stats.json says {stats['total_tokens']:,}")


def _current_name(root: Path) -> str | None:
    try:
        name = (root / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    if not _VERSION_RE.match(name):
        raise TaskError(f"token cache {root}: {CURRENT} names {name!r}, not a version folder. Remove {root} "
                        "(or run `python -m tasks cache --prune`) and build the cache again.")
    return name


def open_cache(task: Any, split: str, sequence_length: Mapping[str, int] | None = None) -> TokenCache | None:
    """The current complete cache of (task, split), or None when there is none; a damaged one raises TaskError."""
    root = cache_dir(task, split, sequence_length)
    for _ in range(8):
        name = _current_name(root)
        if name is None:
            return None
        try:
            return TokenCache(root / name)
        except _Gone:
            if _current_name(root) != name:
                continue  # a rebuild switched CURRENT and cleaned up the version we looked up: read it again
            if not (root / name).exists():
                return None  # the version folder was deleted by hand: no cache
            raise _damaged(root / name, None, f"{COMPLETE} is missing from the published version") from None
    raise TaskError(f"token cache {root}: {CURRENT} kept changing while it was being opened; try again.")


# ---------------------------------------------------------------------------------------------------- writing
def _fsync_write(path: Path, chunks: Iterable[Any], dtype: np.dtype | None = None) -> tuple[bytes, int, int]:
    """Write ``chunks`` (arrays, cast to ``dtype``, or bytes) to ``path`` and fsync it.

    Returns (blake2b digest of the bytes, elements written, the last element or 0)."""
    h = hashlib.blake2b(digest_size=16)
    count, last = 0, 0
    with open(path, "wb") as fh:
        for chunk in chunks:
            if isinstance(chunk, (bytes, bytearray, memoryview)):
                data = memoryview(chunk)
                count += data.nbytes // (dtype.itemsize if dtype is not None else 1)
            else:
                arr = np.ascontiguousarray(chunk, dtype=dtype)
                if arr.size:
                    last = int(arr[-1])
                count += arr.size
                data = memoryview(arr).cast("B")
            h.update(data)
            fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return h.digest(), count, last


def _chunks(value: Any) -> Iterable[Any]:
    return [value] if isinstance(value, np.ndarray) or not isinstance(value, Iterable) else value


def _publish(root: Path, columns: Mapping[str, tuple[Any, Any]], dtype: np.dtype, stats: Mapping[str, Any],
             say: Callable[[str], None]) -> TokenCache:
    """Write a new version of the cache under ``root`` (caller holds the builders' lock) and make it current.

    ``columns[col]`` = (offsets, tokens), each an array or an iterable of arrays / bytes (bounded memory)."""
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[1:]) for p in root.iterdir() if _VERSION_RE.match(p.name)]
    name = f"v{max(numbers, default=0) + 1:06d}"
    tmp = root / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    digests: dict[str, bytes] = {}
    rows: dict[str, int] = {}
    tokens: dict[str, int] = {}
    for col in COLUMNS:
        offsets, toks = columns[col]
        digests[f"{col}.offsets"], n_off, tokens[col] = _fsync_write(tmp / f"{col}.offsets", _chunks(offsets),
                                                                     np.dtype(np.int64))
        digests[f"{col}.tokens"], _, _ = _fsync_write(tmp / f"{col}.tokens", _chunks(toks), dtype)
        rows[col] = n_off - 1
    if rows["inputs"] != rows["targets"]:
        raise TaskError(f"token cache {root}: the columns have {rows['inputs']} and {rows['targets']} rows.")
    content = hashlib.blake2b(dtype.name.encode(), digest_size=16)
    for fname in sorted(digests):
        content.update(fname.encode() + digests[fname])
    full = {**stats, "layout": LAYOUT_VERSION, "dtype": dtype.name, "rows": rows["targets"], "tokens": tokens,
            "total_tokens": sum(tokens.values()), "content_hash": content.hexdigest(), "created": time.time()}
    with open(tmp / "stats.json", "w") as fh:
        json.dump(full, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    with open(tmp / COMPLETE, "w") as fh:
        fh.write("ok\n")
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(tmp)
    os.rename(tmp, root / name)
    fsync_dir(root)
    cache = TokenCache(root / name)  # the checks a reader makes, before anything reads it
    write_text_atomic(root / CURRENT, name + "\n")
    for old in sorted(p for p in root.iterdir() if _VERSION_RE.match(p.name) and p.name != name):
        if not _remove_version(old):
            say(f"{root.parent.name}/{root.name}: kept the superseded version {old.name}: a running job has it "
                "open (`python -m tasks cache --prune` removes it once unused)")
    return cache


def _remove_version(path: Path) -> bool:
    """Remove a version folder unless a process has it open (shared locks on COMPLETE). True when removed."""
    try:
        fd = os.open(path / COMPLETE, os.O_RDONLY)
    except FileNotFoundError:
        fd = -1  # never completed: no reader can have opened it
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            os.unlink(path / COMPLETE)  # readers that opened it before see st_nlink == 0 and look again
        trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
        os.rename(path, trash)
    finally:
        if fd >= 0:
            os.close(fd)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def write_flat(path: Path, columns: Mapping[str, tuple[Any, Any]], dtype: np.dtype,
               stats: Mapping[str, Any]) -> TokenCache:
    """Publish a cache version under the cache folder ``path`` (:func:`cache_dir`) directly from flat
    (offsets, tokens) per column, arrays or iterables of arrays (bench, tests); rows and tokens are counted here."""
    with _locked(path):
        return _publish(Path(path), columns, np.dtype(dtype), stats, log.info)


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


def _shard_dir(build: Path, shard: int) -> Path:
    return build / "shards" / f"{shard:07d}"


def _build_shard(job: _ShardJob) -> dict[str, Any]:
    """Tokenize one shard (text preprocessors, vocabulary, cacheable token preprocessors) and write it durably:
    files fsynced in a temporary folder, renamed when complete."""
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
        _fsync_write(tmp / f"{c}.tokens", [flat], dtype)
        _fsync_write(tmp / f"{c}.offsets", [offsets], np.dtype(np.int64))
        meta["tokens"][c] = int(offsets[-1])
        meta["histogram"][c] = _histogram(np.diff(offsets)).tolist()
    _fsync_write(tmp / "meta.json", [json.dumps(meta).encode()])
    fsync_dir(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)
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
    """An exclusive lock per cache folder: concurrent builders (ranks, jobs) wait, then find the cache complete."""
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
    """Build (or finish, or just open) the token cache of (task, split); see the module docstring.

    A current version built with the same ``max_tokens`` is returned as it is. One built with another budget, or
    a damaged one, is superseded by a new version (removed once no job has it open)."""
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
        try:
            current = open_cache(task, split, seq)
        except TaskError as err:
            say(f"{task.name}/{split}: building a new version; the current one is damaged: {str(err).splitlines()[0]}")
            current = None
        if current is not None:
            if current.stats.get("max_tokens") == max_tokens:
                return current
            say(f"{task.name}/{split}: cached with max_tokens={current.stats.get('max_tokens')}; building a new "
                f"version with max_tokens={max_tokens} (the current one stays readable until it is replaced)")
            current.close()
        build = root / BUILD
        manifest = build / "build.json"
        if manifest.is_file():
            try:
                same = json.loads(manifest.read_text()) == params
            except ValueError:
                same = False
            if not same:
                say(f"{task.name}/{split}: unfinished build with other parameters; starting over")
                shutil.rmtree(build)
        (build / "shards").mkdir(parents=True, exist_ok=True)
        write_text_atomic(manifest, json.dumps(params))
        for tmp in (build / "shards").glob("*.tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
        metas = _run_shards(task, split, seq, build, num_proc, max_tokens, shard_rows, say)
        return _finish(task, split, root, build, metas, params, say)


def _load_meta(build: Path, shard: int, dtype: np.dtype) -> dict[str, Any] | None:
    """A finished shard's meta, or None when it is missing or its files do not match it (then it is rebuilt)."""
    d = _shard_dir(build, shard)
    try:
        meta = json.loads((d / "meta.json").read_text())
        ok = all((d / f"{c}.offsets").stat().st_size == (meta["rows"] + 1) * 8
                 and (d / f"{c}.tokens").stat().st_size == meta["tokens"][c] * dtype.itemsize for c in COLUMNS)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if ok:
        return meta
    shutil.rmtree(d, ignore_errors=True)
    return None


def _run_shards(task: Any, split: str, seq: dict[str, int] | None, build: Path, num_proc: int,
                max_tokens: int | None, shard_rows: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Tokenize every unfinished shard (in a pool), in order; stop at the token budget."""
    raw = task._raw(split)
    vocab = task.vocabulary
    cores = os.cpu_count() or 1
    dtype = token_dtype(vocab.vocab_size)
    _WORKER.update(task=task, split=split, sequence_length=seq, root=build, dtype=dtype,
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
            done = _load_meta(build, shard, dtype)
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
    for extra in (build / "shards").iterdir():  # shards past the budget (built in flight) are not part of the cache
        if extra.is_dir() and extra.name.isdigit() and int(extra.name) > last:
            shutil.rmtree(extra)
    return [metas[s] for s in range(last + 1)]


def _shard_columns(build: Path, metas: list[dict[str, Any]], col: str) -> tuple[Iterator[Any], Iterator[Any]]:
    """The shards of one column as one flat stream: offsets shifted by the tokens before each shard, tokens copied
    in blocks (bounded memory)."""

    def offsets() -> Iterator[np.ndarray]:
        base = 0
        yield np.zeros(1, np.int64)
        for m in metas:
            off = np.fromfile(_shard_dir(build, m["shard"]) / f"{col}.offsets", np.int64)
            yield off[1:] + base
            base += int(off[-1])

    def tokens() -> Iterator[bytes]:
        for m in metas:
            with open(_shard_dir(build, m["shard"]) / f"{col}.tokens", "rb") as fh:
                while block := fh.read(_COPY_BLOCK):
                    yield block

    return offsets(), tokens()


def _finish(task: Any, split: str, root: Path, build: Path, metas: list[dict[str, Any]], params: dict[str, Any],
            say: Callable[[str], None]) -> TokenCache:
    """Concatenate the shards into a new published version, then remove the build folder."""
    dtype = token_dtype(task.vocabulary.vocab_size)
    rows = sum(m["rows"] for m in metas)
    if rows == 0:
        raise TaskError(f"Task '{task.name}', split '{split}': every row was dropped by the preprocessors; the "
                        "cache would be empty.")
    stats = {**params, "raw_rows": sum(m["raw_rows"] for m in metas), "shards": len(metas),
             "length_histogram": {c: np.sum([m["histogram"][c] for m in metas], axis=0).tolist() for c in COLUMNS},
             "histogram_buckets": "bucket k: rows with 2^(k-1) <= length < 2^k; bucket 0: empty rows"}
    cache = _publish(root, {c: _shard_columns(build, metas, c) for c in COLUMNS}, dtype, stats, say)
    shutil.rmtree(build, ignore_errors=True)
    say(f"{task.name}/{split}: cache complete: {rows:,} rows, {cache.stats['total_tokens']:,} tokens in {cache.path}")
    return cache


# ---------------------------------------------------------------------------------------------- repetition hint
def corpus_hint(task: Any, split: str, sequence_length: Mapping[str, int] | None, factor: float,
                imports: Iterable[str] = ()) -> str:
    """What would give a corpus task ``factor`` times the tokens it has now (the repetition guard's advice).

    A cache that stopped at its ``--max-tokens`` budget grows with a larger budget. One that holds the whole source
    does not: the task needs more text (for the catalog corpus, C4 from the hub)."""
    cache = open_cache(task, split, sequence_length)
    if cache is None:
        return ""
    have = int(cache.stats["total_tokens"])
    budget = cache.stats.get("max_tokens")
    want = int(math.ceil(have * max(factor, 1.0) * 1.1 / 1e6)) * 10**6  # 10 % margin, whole millions
    seq = _seq_for(task, sequence_length)
    if budget is not None and have >= int(budget):
        cmd = _command(task.name, split, seq, want, imports)
        return (f"Task {task.name!r}: its cache stopped at --max-tokens {int(budget):,} ({have:,} tokens); rebuild "
                f"it with a budget of about {want:,} tokens: `{cmd} --num-proc 8` (a new version of the cache: the "
                "next run reads it).")
    hint = (f"Task {task.name!r}: its cache already holds its whole source ({have:,} tokens), so a larger "
            f"--max-tokens adds nothing; it needs about {want:,} tokens of text.")
    source = task.source
    if isinstance(source, LocalOrHubSource) and not source.reads_hub:
        cmd = _command(task.name, split, seq, want, imports)
        hint += (f" Its hub source ({source.hub.describe()}) has more: `LIGHTNING_T5_SOURCE=hub {cmd} --num-proc 8` "
                 "and train with LIGHTNING_T5_SOURCE=hub (README \"Pre-training on C4\").")
    else:
        hint += " Point the task at more files (or use a larger corpus task)."
    return hint


# ------------------------------------------------------------------------------------------------ list and prune
@dataclass
class CacheEntry:
    """One folder under ``$LIGHTNING_T5_CACHE/tokens``: a version, an unfinished build, or an older layout."""

    path: Path
    task: str
    split: str
    kind: str  # "version", "build", "old layout", "leftover"
    status: str  # "current", "superseded", "stale", "unregistered", "unfinished", "old layout", "leftover"
    size: int
    in_use: bool
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def removable(self) -> bool:
        """Unused and nothing current would read it: superseded, stale, an old layout or a leftover."""
        return not self.in_use and self.status in ("superseded", "stale", "old layout", "leftover")


def _folder_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def _locked_by_other(path: Path, lock_file: bool = False) -> bool:
    """Whether another process holds a lock: a reader on a version's COMPLETE, or a builder on ``<key>.lock``."""
    target = path if lock_file else path / COMPLETE
    try:
        fd = os.open(target, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def list_caches(tasks: Mapping[str, Any], names: Iterable[str] | None = None) -> list[CacheEntry]:
    """Every token-cache folder (of ``names``' tasks, or all), with its size, whether a process has it open, and
    its status against ``tasks`` (the registered tasks): ``current`` (what a run with these tasks opens),
    ``superseded`` (an older version of a current cache), ``stale`` (the task's data, vocabulary or preprocessors
    changed since), ``unregistered`` (its task is not registered here: kept), ``unfinished`` (a resumable build)."""
    base = cache_root() / "tokens"
    wanted = set(names) if names else None
    out: list[CacheEntry] = []
    for task_dir in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        if wanted is not None and task_dir.name not in wanted:
            continue
        for root in sorted(p for p in task_dir.iterdir() if p.is_dir()):
            out += _entries(root, task_dir.name, tasks)
    return out


def _entries(root: Path, task_name: str, tasks: Mapping[str, Any]) -> list[CacheEntry]:
    split = root.name.rsplit("-", 1)[0]
    key = root.name.rsplit("-", 1)[-1]
    if any((root / f).is_file() for f in (COMPLETE, "stats.json", "build.json")):  # layout 1: files in the key folder
        return [CacheEntry(root, task_name, split, "old layout", "old layout", _folder_size(root), False,
                           _json(root / "stats.json"))]
    versions = sorted(p for p in root.iterdir() if _VERSION_RE.match(p.name))
    params = next((s for s in (_json(v / "stats.json") for v in reversed(versions)) if s), None) \
        or _json(root / BUILD / "build.json")
    fresh: bool | None = None  # None: cannot tell (task not registered here)
    task = tasks.get(task_name)
    if task is not None and params:
        fresh = key in _keys_today(task, str(params.get("split", split)), params.get("sequence_length"))
    try:
        current = _current_name(root)
    except TaskError:
        current = None
    out = []
    for v in versions:
        if fresh is None:
            status = "unregistered"
        elif not fresh:
            status = "stale"
        else:
            status = "current" if v.name == current else "superseded"
        out.append(CacheEntry(v, task_name, split, "version", status, _folder_size(v), _locked_by_other(v),
                              _json(v / "stats.json")))
    if (root / BUILD).is_dir():
        status = "unregistered" if fresh is None else ("stale" if not fresh else "unfinished")
        out.append(CacheEntry(root / BUILD, task_name, split, "build", status, _folder_size(root / BUILD),
                              _locked_by_other(root.with_name(root.name + ".lock"), lock_file=True),
                              _json(root / BUILD / "build.json")))
    for p in root.iterdir():  # a killed publish or cleanup
        if p.name.startswith((".v", ".trash-")):
            out.append(CacheEntry(p, task_name, split, "leftover", "leftover", _folder_size(p),
                                  _locked_by_other(root.with_name(root.name + ".lock"), lock_file=True)))
    return out


def _keys_today(task: Any, split: str, sequence_length: Mapping[str, int] | None) -> set[str]:
    """The cache keys a run in this environment would open for (task, split) at these lengths: a catalog task's
    shipped files and its hub dataset both count (``LIGHTNING_T5_SOURCE=hub`` switches between them)."""
    variants = [task]
    source = task.source
    if isinstance(source, LocalOrHubSource) and hasattr(task, "with_source"):
        variants = [task.with_source(source.local), task.with_source(source.hub)]
    keys = set()
    for variant in variants:
        with contextlib.suppress(Exception):  # files gone, or a source that cannot be read: not a key of today
            keys.add(cache_key(variant, split, sequence_length))
    return keys


def prune_caches(entries: Iterable[CacheEntry]) -> list[tuple[CacheEntry, bool]]:
    """Remove every removable entry (re-checking under the locks that no process has it open); then the cache
    folders left empty. Returns (entry, removed) for each removable entry."""
    done = []
    roots = set()
    for e in entries:
        if not e.removable:
            continue
        root = e.path.parent if e.kind in ("version", "build", "leftover") else e.path
        if e.kind == "version":
            removed = _remove_version(e.path)
        else:
            with _try_locked(root) as got:
                if got:
                    shutil.rmtree(e.path, ignore_errors=True)
                removed = got
        done.append((e, removed))
        roots.add(root)
    for root in roots:  # cache folders left with nothing to read: gone, with their builders' lock file
        with _try_locked(root) as got:
            if got and not (root.is_dir() and any(p.name != CURRENT for p in root.iterdir())):
                shutil.rmtree(root, ignore_errors=True)
                with contextlib.suppress(OSError):
                    root.with_name(root.name + ".lock").unlink()
    return done


@contextlib.contextmanager
def _try_locked(root: Path) -> Iterator[bool]:
    """The builders' lock of a cache folder without waiting: yields False when a build holds it."""
    lock = root.with_name(root.name + ".lock")
    try:
        fh = open(lock, "a+")
    except OSError:
        yield False
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
