"""SentencePiece vocabulary with T5's sentinel convention.

T5 appends ``extra_ids`` (100) ids after the SentencePiece pieces; ``<extra_id_0>`` is the highest id
(``vocab_size - 1``) and ``<extra_id_i>`` is ``vocab_size - 1 - i``. pad=0, eos=1, unk=2 and no BOS,
exactly what the official T5 ``spiece.model`` has, so that file loads as is.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from tasks.errors import TaskError
from tasks.utils import DATA_DIR

DEFAULT_VOCAB_PATH = DATA_DIR / "vocab" / "spiece.model"
DEFAULT_EXTRA_IDS = 100
_SENTINEL_RE = re.compile(r"<extra_id_(\d+)>")


class SentencePieceVocabulary:
    """A SentencePiece model plus ``extra_ids`` sentinel ids at the top of the id space.

    Picklable (only the path and ``extra_ids`` are pickled), so it can cross DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike, extra_ids: int = DEFAULT_EXTRA_IDS):
        self.path = Path(path)
        self.extra_ids = int(extra_ids)
        if self.extra_ids < 0:
            raise TaskError(f"SentencePieceVocabulary: extra_ids must be >= 0, got {extra_ids}.")
        if not self.path.is_file():
            raise TaskError(
                f"SentencePiece model '{self.path}' does not exist. Pass the path of a spiece.model "
                f"(the default is {DEFAULT_VOCAB_PATH}); train one with "
                "`python -m tasks vocab --tasks TASK [TASK ...] --size 8000 --out PATH`."
            )
        self._load()

    def _load(self) -> None:
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as err:
            raise TaskError(f"Could not load SentencePiece model '{self.path}': {err}") from err
        ids = {"pad": self._sp.pad_id(), "eos": self._sp.eos_id(), "unk": self._sp.unk_id()}
        if ids != {"pad": 0, "eos": 1, "unk": 2}:
            raise TaskError(
                f"SentencePiece model '{self.path}' has special ids {ids}, but T5 needs pad=0, eos=1, "
                "unk=2 (and no bos). Retrain it with `python -m tasks vocab ...`, which sets "
                "pad_id=0 eos_id=1 unk_id=2 bos_id=-1."
            )
        # A model that already contains <extra_id_N> pieces would clash with our appended sentinels.
        for piece in ("<extra_id_0>", f"<extra_id_{max(self.extra_ids - 1, 0)}>"):
            if self._sp.piece_to_id(piece) != self._sp.unk_id():
                raise TaskError(
                    f"SentencePiece model '{self.path}' already defines the piece {piece}; load it with "
                    "extra_ids=0 or retrain it without user-defined sentinel pieces."
                )
        self._base_size = self._sp.get_piece_size()

    def __getstate__(self) -> dict:
        return {"path": str(self.path), "extra_ids": self.extra_ids}

    def __setstate__(self, state: dict) -> None:
        self.path = Path(state["path"])
        self.extra_ids = state["extra_ids"]
        self._load()

    def __repr__(self) -> str:
        return f"SentencePieceVocabulary('{self.path}', extra_ids={self.extra_ids}, vocab_size={self.vocab_size})"

    # ----------------------------------------------------------------------------------- ids
    pad_id = 0
    eos_id = 1
    unk_id = 2

    @property
    def base_vocab_size(self) -> int:
        """Number of SentencePiece pieces (ids below this are ordinary tokens)."""
        return self._base_size

    @property
    def vocab_size(self) -> int:
        """Pieces plus sentinels: the model's embedding size (before any padding to a multiple)."""
        return self._base_size + self.extra_ids

    def sentinel_id(self, i: int) -> int:
        """Id of ``<extra_id_i>``: ``vocab_size - 1 - i``."""
        if not 0 <= i < self.extra_ids:
            raise TaskError(
                f"Sentinel <extra_id_{i}> does not exist: the vocabulary '{self.path}' has "
                f"extra_ids={self.extra_ids}. Span-corruption objectives need extra_ids > 0 "
                "(T5 uses 100)."
            )
        return self.vocab_size - 1 - i

    @functools.cached_property
    def fingerprint(self) -> str:
        """Stable hash of the model file's bytes and ``extra_ids`` (independent of the path)."""
        digest = hashlib.blake2b(self.path.read_bytes(), digest_size=16)
        digest.update(f"extra_ids={self.extra_ids}".encode())
        return digest.hexdigest()[:16]

    # ----------------------------------------------------------------------------------- coding
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no EOS)."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Token ids of many texts in one call into SentencePiece's C++ (multi-threaded); no EOS."""
        if not texts:
            return []
        return self._sp.encode(list(texts), out_type=int, num_threads=num_threads)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Text of ``ids``: stops at the first EOS, drops padding, renders sentinels as ``<extra_id_i>``."""
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).ravel()
        eos = np.flatnonzero(arr == self.eos_id)
        if eos.size:
            arr = arr[: eos[0]]
        arr = arr[arr != self.pad_id]
        is_sentinel = arr >= self._base_size
        if not is_sentinel.any():
            return self._sp.decode(arr.tolist())
        # Decode runs of ordinary ids, keeping the word boundary SentencePiece marks with "▁".
        out: list[str] = []
        boundaries = np.flatnonzero(np.diff(is_sentinel.astype(np.int8))) + 1
        for run in np.split(arr, boundaries):
            if run[0] >= self._base_size:
                out.extend(f"<extra_id_{self.vocab_size - 1 - int(t)}>" for t in run)
                continue
            text = self._sp.decode(run.tolist())
            if out and self._sp.id_to_piece(int(run[0])).startswith("▁"):
                text = " " + text
            out.append(text)
        return "".join(out)

    def encode_with_sentinels(self, text: str) -> list[int]:
        """Like :meth:`encode` but maps literal ``<extra_id_i>`` markers to sentinel ids."""
        ids: list[int] = []
        pos = 0
        for match in _SENTINEL_RE.finditer(text):
            if match.start() > pos:
                ids.extend(self.encode(text[pos : match.start()]))
            ids.append(self.sentinel_id(int(match.group(1))))
            pos = match.end()
        if pos < len(text):
            ids.extend(self.encode(text[pos:]))
        return ids


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, extra_ids: int) -> SentencePieceVocabulary:
    return SentencePieceVocabulary(path, extra_ids)


def get_default_vocabulary() -> SentencePieceVocabulary:
    """The shipped ``data/vocab/spiece.model`` (8000 pieces + 100 sentinels = 8100 ids).

    ``$LIGHTNING_T5_VOCAB`` points it at another model (e.g. the official T5 ``spiece.model``).
    """
    path = os.environ.get("LIGHTNING_T5_VOCAB") or str(DEFAULT_VOCAB_PATH)
    return _load_cached(path, DEFAULT_EXTRA_IDS)


def train_vocabulary(
    texts: Iterable[str],
    out: str | os.PathLike,
    *,
    size: int = 8000,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
    input_sentence_size: int = 400_000,
    max_sentence_length: int = 20_000,
) -> SentencePieceVocabulary:
    """Train a T5-convention SentencePiece model (pad=0, eos=1, unk=2, no bos) on ``texts``.

    The texts are written to a temporary file, one per line (newlines inside a text become spaces),
    so memory stays flat for large corpora.
    """
    out = Path(out)
    if out.suffix == ".model":
        prefix = out.with_suffix("")
    else:
        prefix = out
        out = out.with_suffix(".model")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as fh:
        n = 0
        for text in texts:
            line = " ".join(text.split())
            if line:
                fh.write(line + "\n")
                n += 1
        corpus = fh.name
    try:
        if n == 0:
            raise TaskError("train_vocabulary: no text to train on (every text was empty).")
        spm.SentencePieceTrainer.train(
            input=corpus,
            model_prefix=str(prefix),
            vocab_size=size,
            model_type=model_type,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=character_coverage,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=max_sentence_length,
            minloglevel=2,
        )
    except RuntimeError as err:
        raise TaskError(f"SentencePiece training failed for '{out}': {err}") from err
    finally:
        os.unlink(corpus)
    return SentencePieceVocabulary(out)
