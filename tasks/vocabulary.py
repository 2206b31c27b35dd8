"""SentencePiece vocabulary with T5's sentinel convention.

T5 appends ``extra_ids`` (100) ids after the SentencePiece pieces; ``<extra_id_0>`` is the highest id
(``vocab_size - 1``) and ``<extra_id_i>`` is ``vocab_size - 1 - i``. pad=0, eos=1, unk=2 and no BOS,
exactly what the official T5 ``spiece.model`` has, so that file loads as is.

``save_hf_tokenizer`` writes the same vocabulary as Hugging Face tokenizer files (``spiece.model``,
``tokenizer.json``, ``tokenizer_config.json``), so an exported model loads with ``AutoTokenizer`` and gets this
module's token ids. They are plain files built from the model's own protobuf: transformers is not needed to write
them, and not sentencepiece/protobuf to read them (``tokenizer.json`` is what transformers reads first).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from tasks.errors import TaskError
from tasks.utils import DATA_DIR, write_bytes_atomic

DEFAULT_VOCAB_PATH = DATA_DIR / "vocab" / "spiece.model"
DEFAULT_EXTRA_IDS = 100
_SENTINEL_RE = re.compile(r"<extra_id_(\d+)>")
#: What `SentencePieceVocabulary.save_hf_tokenizer` writes (the last one last: a directory that has it is complete).
HF_TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json")


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

    # ----------------------------------------------------------------------------------- Hugging Face
    def save_hf_tokenizer(self, directory: str | os.PathLike) -> list[Path]:
        """Write this vocabulary as the tokenizer of a Hugging Face T5 directory; returns the paths written.

        ``AutoTokenizer.from_pretrained(directory)`` then loads a ``T5Tokenizer`` with these ids: the same pieces
        (pad 0, eos 1, unk 2), ``<extra_id_i>`` = ``vocab_size - 1 - i``, EOS appended to each text. Written:
        ``spiece.model`` (a copy of the model file, for sentencepiece users), ``tokenizer.json`` (the Unigram
        pieces and scores, the model's normalization table, T5's whitespace splitting and EOS template) and
        ``tokenizer_config.json`` (class, extra ids, special tokens), each durably (temp file, fsync, rename).
        Measured: the same ids as ``encode`` + EOS on all 12,964 shipped validation texts. Where two segmentations
        score exactly alike, SentencePiece and `tokenizers` may break the tie differently (1 of 3,000 random letter
        strings here: "bbb" as b+bb or bb+b); the official T5 tokenizer shares this.

        Raises TaskError, before writing anything, for a SentencePiece model whose encoding transformers' T5
        tokenizer cannot reproduce (BPE, byte fallback, no dummy prefix, ...): such a tokenizer would load
        without complaint and give other ids.
        """
        spec = _read_model_proto(self.path.read_bytes())
        problems = _hf_incompatibilities(spec)
        if problems:
            raise TaskError(
                f"Cannot write a Hugging Face tokenizer for SentencePiece model '{self.path}': {'; '.join(problems)}. "
                "transformers' T5Tokenizer encodes with a Unigram model, a dummy prefix and whitespace splitting, "
                "so it would give other token ids. Train the vocabulary with `python -m tasks vocab` defaults "
                "(unigram)."
            )
        if len(spec["pieces"]) != self._base_size:
            raise TaskError(f"SentencePiece model '{self.path}': {len(spec['pieces'])} pieces in the file, "
                            f"{self._base_size} loaded; the file changed while in use.")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        contents = {
            "spiece.model": self.path.read_bytes(),
            "tokenizer.json": _json_bytes(self._hf_tokenizer_json(spec)),
            "tokenizer_config.json": _json_bytes(self._hf_tokenizer_config()),
        }
        written = []
        for name in HF_TOKENIZER_FILES:
            write_bytes_atomic(directory / name, contents[name])
            written.append(directory / name)
        return written

    def _hf_tokenizer_json(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The `tokenizers` serialization of T5's tokenizer for these pieces (what transformers' T5 converter
        builds from a spiece.model): sentinels appended in reverse, so <extra_id_0> is the last id."""
        vocab = [[piece, score] for piece, score, _ in spec["pieces"]]
        vocab += [[f"<extra_id_{i}>", 0.0] for i in range(self.extra_ids - 1, -1, -1)]
        added = [(i, piece, kind != _USER_DEFINED) for i, (piece, _, kind) in enumerate(spec["pieces"])
                 if kind in (_CONTROL, _UNKNOWN, _USER_DEFINED)]
        added += [(self.sentinel_id(i), f"<extra_id_{i}>", True) for i in range(self.extra_ids - 1, -1, -1)]
        metaspace = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
        eos = self._sp.id_to_piece(self.eos_id)
        charsmap = spec["precompiled_charsmap"]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [{"id": i, "content": piece, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": special} for i, piece, special in added],
            "normalizer": ({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(charsmap).decode()}
                           if charsmap else None),
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace]},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
                "special_tokens": {eos: {"id": eos, "ids": [self.eos_id], "tokens": [eos]}},
            },
            "decoder": metaspace,
            "model": {"type": "Unigram", "unk_id": self.unk_id, "vocab": vocab, "byte_fallback": False},
        }

    def _hf_tokenizer_config(self) -> dict[str, Any]:
        """tokenizer_config.json: the class AutoTokenizer builds and its special tokens. Decoding keeps spaces as
        the pieces have them (`clean_up_tokenization_spaces` false), as `decode` here does."""
        piece = self._sp.id_to_piece
        return {
            "tokenizer_class": "T5Tokenizer",
            "extra_ids": self.extra_ids,
            "pad_token": piece(self.pad_id),
            "eos_token": piece(self.eos_id),
            "unk_token": piece(self.unk_id),
            "clean_up_tokenization_spaces": False,
        }


# ------------------------------------------------------------------------------ SentencePiece's protobuf
# Field numbers of sentencepiece_model.proto (ModelProto, its SentencePiece pieces, TrainerSpec, NormalizerSpec).
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of one serialized protobuf message: varints as int, other wire types as bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise TaskError(f"SentencePiece model: unsupported protobuf wire type {wire}.")
        yield key >> 3, value


def _read_model_proto(buf: bytes) -> dict[str, Any]:
    """What the Hugging Face files need from a SentencePiece ModelProto: the pieces as (piece, score, type), the
    normalization table and the settings that decide how text is split (proto defaults where a field is absent)."""
    spec: dict[str, Any] = {"pieces": [], "precompiled_charsmap": b"", "model_type": "unigram",
                            "byte_fallback": False, "split_by_whitespace": True, "treat_whitespace_as_suffix": False,
                            "add_dummy_prefix": True, "remove_extra_whitespaces": True, "escape_whitespaces": True}
    trainer_fields = {3: "model_type", 22: "split_by_whitespace", 24: "treat_whitespace_as_suffix",
                      35: "byte_fallback"}
    normalizer_fields = {2: "precompiled_charsmap", 3: "add_dummy_prefix", 4: "remove_extra_whitespaces",
                         5: "escape_whitespaces"}
    for field, value in _proto_fields(buf):
        if field == 1:  # one SentencePiece: piece, score, type
            piece = dict(_proto_fields(value))
            spec["pieces"].append((piece.get(1, b"").decode("utf-8"),
                                   struct.unpack("<f", piece[2])[0] if 2 in piece else 0.0,
                                   piece.get(3, _NORMAL)))
        elif field in (2, 3):
            names = trainer_fields if field == 2 else normalizer_fields
            for number, item in _proto_fields(value):
                if number in names:
                    key = names[number]
                    spec[key] = _MODEL_TYPES.get(item, item) if key == "model_type" else (
                        item if isinstance(item, bytes) else bool(item))
    return spec


def _hf_incompatibilities(spec: dict[str, Any]) -> list[str]:
    """The model settings under which transformers' T5Tokenizer would split text differently."""
    expected = {"model_type": "unigram", "byte_fallback": False, "split_by_whitespace": True,
                "treat_whitespace_as_suffix": False, "add_dummy_prefix": True, "remove_extra_whitespaces": True,
                "escape_whitespaces": True}
    return [f"{key}={spec[key]!r} (needs {value!r})" for key, value in expected.items() if spec[key] != value]


def _json_bytes(payload: Any) -> bytes:
    return (json.dumps(payload, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


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
