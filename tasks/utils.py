"""Small shared helpers: the cache directory, stable hashing and per-example seeds."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: Bump when the tokenized-cache layout, the tokenization code or a helper that preprocessors call changes (a
#: preprocessor's own source is hashed, the helpers it calls are not), so stale caches are ignored.
#: "2": pad_punctuation pads ASCII punctuation only (t5's RE2 [[:punct:]]), which changes SQuAD's text.
CACHE_VERSION = "2"

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


def cache_root() -> Path:
    """Root of every on-disk cache: ``$LIGHTNING_T5_CACHE`` or ``~/.cache/lightning_t5``."""
    root = os.environ.get("LIGHTNING_T5_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "lightning_t5"
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A hex digest of JSON-serialisable parts that is stable across processes and Python versions."""
    blob = json.dumps(parts, sort_keys=True, default=repr, ensure_ascii=False).encode("utf-8")
    return hashlib.blake2b(blob, digest_size=16).hexdigest()[:length]


def callable_fingerprint(fn: Any) -> str:
    """Fingerprint a preprocessor: its qualified name, its source code and bound arguments.

    Hashing the source means editing a preprocessor's body changes the cache key, which is what a
    user expects after fixing a bug in their text format. Objects may provide ``fingerprint()``.
    """
    if hasattr(fn, "fingerprint") and callable(fn.fingerprint):
        return str(fn.fingerprint())
    if isinstance(fn, functools.partial):
        return stable_hash(
            "partial", callable_fingerprint(fn.func), [repr(a) for a in fn.args],
            {k: _arg_repr(v) for k, v in sorted(fn.keywords.items())},
        )
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    module = getattr(fn, "__module__", "")
    try:
        source = inspect.getsource(fn if inspect.isroutine(fn) else type(fn))
    except (OSError, TypeError):
        source = ""
    return stable_hash(module, name, source)


def _arg_repr(value: Any) -> Any:
    if callable(value):
        return callable_fingerprint(value)
    return repr(value)


_CONTENT_HASHES: dict[tuple, str] = {}


def file_fingerprint(path: Path) -> str:
    """A hash of the file's bytes, so that putting back the byte-identical file (``cp``, ``rsync`` without ``-t``,
    a fresh checkout) keeps every cache key and lets a run resume, while any edit changes it.

    Hashing is memoised per (path, device, inode, size, mtime, ctime): in this process, and on disk under
    ``$LIGHTNING_T5_CACHE/sources/content/`` (one small file per memo key, written atomically), so a corpus is
    read once per change, not once per run. ``ctime`` cannot be set by tools, so an edit that restores size and
    mtime is still seen.
    """
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _CONTENT_HASHES.get(memo)
    if digest is not None:
        return digest
    memo_file = cache_root() / "sources" / "content" / stable_hash(*memo, length=32)
    try:
        digest = memo_file.read_text().strip()
    except OSError:
        digest = ""
    if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            while block := fh.read(1 << 23):
                h.update(block)
        digest = h.hexdigest()
        write_text_atomic(memo_file, digest + "\n")
    _CONTENT_HASHES[memo] = digest
    return digest


def fsync_file(path: Path) -> None:
    """Flush the data of the file at ``path`` (written by whatever wrote it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` durably with ``write(tmp)``, which writes the whole file at the path it is given: a temporary
    file in the same folder, fsync, rename, fsync of the folder; a killed writer leaves the old file or the new one,
    never half of one. The temporary name carries host and pid, so processes of several nodes writing the same file
    on a shared filesystem never share one. The durable writer of token caches' metadata, run files and
    single-file checkpoints (`lightning_t5/model/hf.py` keeps its own for exports: `model/` imports nothing of the
    project)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`write_atomic` of ``data``."""
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> None:
    """`write_bytes_atomic` of ``text`` in UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


# --------------------------------------------------------------------------------------------------
# Per-example seeds
# --------------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


@functools.lru_cache(maxsize=4096)
def _name_hash(name: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little"))


def example_seed(seed: int, task_name: str, epoch: int, index: np.ndarray | int) -> np.ndarray:
    """Stable 64-bit seed for each example, independent of process, worker, rank and batch.

    A chain of SplitMix64 steps over (seed, blake2b(task_name), epoch, index). Unlike Python's
    ``hash()``, it does not change between runs (``PYTHONHASHSEED``). Vectorised over ``index``.
    Returns a ``np.uint64`` array with the shape of ``index`` (0-d for a scalar index).
    """
    idx = np.asarray(index)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"example_seed: index must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.uint64)
    base = _splitmix64(np.asarray(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
    base = _splitmix64(base ^ _name_hash(task_name))
    base = _splitmix64(base ^ np.uint64(epoch & 0xFFFFFFFFFFFFFFFF))
    return _splitmix64(base ^ idx)


def count_lines(path: Path) -> int:
    """Number of lines in a text file (a JSONL row count), read in binary blocks without parsing."""
    count = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        count += 1
    return count
