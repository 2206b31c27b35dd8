"""The :class:`Task` (a data source + text preprocessors + vocabulary + metrics) and its registry.

Data flow of one task (seqio-shaped)::

    source rows --normalize--> HF layout --text preprocessors--> {"inputs": str, "targets": str}
      --vocabulary (batched SentencePiece)--> int32 ids (+EOS for supervised tasks)
      --cacheable token preprocessors (corpus chunking)--> Arrow cache on disk   = task.tokenized(split)
      --random token preprocessors (span corruption...) + EOS, per-example seeds  = task.finalize(...)

``tokenized`` is computed once per (task, split, source rows, vocabulary, preprocessor code and
arguments, and ``sequence_length`` when a cacheable token preprocessor uses it) and then served from
``datasets``' Arrow cache file under ``$LIGHTNING_T5_CACHE/tokenized/<task>/``.

Training reads the same rows from :meth:`Task.token_cache` instead: the memory-mapped layout of
:mod:`tasks.cache` under the same key, built in shards by ``python -m tasks cache`` (required for streaming
sources) or on first use for local ones.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import itertools
import json
import os
import re
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import datasets
import numpy as np
import pyarrow as pa

from tasks.cache import TokenCache, build_cache, cache_command, open_cache
from tasks.errors import RowError, TaskError
from tasks.sources import DataSource
from tasks.utils import CACHE_VERSION, _splitmix64, cache_root, callable_fingerprint, example_seed, stable_hash
from tasks.vocabulary import SentencePieceVocabulary, get_default_vocabulary

Row = dict[str, Any]
MetricFn = Callable[[list, list], Mapping[str, float]]
SequenceLength = Mapping[str, int]

TOKEN_FEATURES = datasets.Features(
    {"inputs": datasets.List(datasets.Value("int32")), "targets": datasets.List(datasets.Value("int32"))}
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_MAP_BATCH = 1000
LABEL_CHECK_EXAMPLES = 100  # examples whose targets Task.check_label_choices compares with label_choices


@runtime_checkable
class TokenPreprocessor(Protocol):
    """See docs/CONTRACTS.md. Cacheable ones run before caching; random ones in :meth:`Task.finalize`."""

    name: str
    cacheable: bool

    def fingerprint(self) -> str: ...

    def __call__(self, batch: dict[str, list[np.ndarray]], **kwargs: Any) -> dict[str, list[np.ndarray]]: ...


def _accepts_split(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "split" in params


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit] + "…"


def _row_location(source: DataSource, split: str, index: int) -> str:
    """Where row ``index`` of ``split`` comes from, for error messages: ``file F, line N`` for local JSON Lines and text
    files (counted again here, on the error path only: JSON Lines skip blank lines as ``datasets`` does), the file(s)
    for other formats, else the source's one-line description."""
    source = getattr(source, "active", source)  # LocalOrHubSource: the source actually read
    files = getattr(source, "files", {}).get(split) if isinstance(getattr(source, "files", None), Mapping) else None
    if not files:
        return f"source: {source.describe()}"
    fmt = getattr(source, "format", "")
    if fmt in ("json", "jsonl", "text", "txt"):
        remaining = index
        try:
            for path in files:
                with open(path, encoding="utf-8", errors="replace") as fh:  # universal newlines, as datasets reads
                    for lineno, line in enumerate(fh, start=1):
                        if fmt in ("json", "jsonl") and not line.strip():
                            continue
                        if remaining == 0:
                            return f"file {path}, line {lineno}"
                        remaining -= 1
        except OSError:
            pass
    if len(files) == 1:
        return f"file {files[0]}"
    return f"one of the files {[str(p) for p in files]}"


def _raised_at(err: BaseException, fn: Callable[..., Any]) -> str:
    """``file:line`` of the user's code that raised ``err``: the deepest frame in ``fn``'s own file, else the deepest
    frame (the exception may come from a library the preprocessor called)."""
    frames = traceback.extract_tb(err.__traceback__)[1:]  # [0] is Task.preprocess_row
    if not frames:
        return ""
    target = getattr(fn, "func", fn)  # functools.partial
    code = getattr(target, "__code__", None) or getattr(getattr(target, "__call__", None), "__code__", None)
    filename = code.co_filename if code is not None else None
    frame = ([f for f in frames if f.filename == filename] or frames)[-1]
    where = frame.filename
    if os.path.isabs(where) and where.startswith(os.getcwd() + os.sep):
        where = os.path.relpath(where)
    return f", at {where}:{frame.lineno}"


def _to_list_array(seqs: Sequence[Sequence[int]], append: int | None = None) -> pa.Array:
    """Ragged int sequences -> Arrow list<int32> via one flat numpy buffer (no per-token Python)."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    if len(seqs) and isinstance(seqs[0], np.ndarray):
        flat = np.concatenate(seqs).astype(np.int32, copy=False) if lengths.sum() else np.zeros(0, np.int32)
    else:
        flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32, count=int(lengths.sum()))
    if append is not None:
        ends = np.cumsum(lengths)
        flat = np.insert(flat, ends, np.int32(append))
        lengths = lengths + 1
    offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.int32()))


def list_column_to_numpy(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """An Arrow list<int32> column as a list of int32 numpy arrays (views into one buffer)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    offsets = offsets - offsets[0]
    return np.split(values, offsets[1:-1]) if len(column) else []


def take_rows(dataset: datasets.Dataset, indices: np.ndarray | Sequence[int]) -> dict[str, list[np.ndarray]]:
    """Rows ``indices`` of a tokenized dataset as ``{"inputs": [int32 arrays], "targets": [...]}``."""
    table = dataset.with_format("arrow")[np.asarray(indices, dtype=np.int64).tolist()]
    return {name: list_column_to_numpy(table.column(name)) for name in ("inputs", "targets")}


class Task:
    """A named dataset in text-to-text form, with its vocabulary, postprocessor and metrics.

    Args:
        name: registry name (letters, digits, ``_ . -``).
        source: a :class:`tasks.sources.DataSource`.
        preprocessors: text preprocessors (see :mod:`tasks.preprocessors`), applied in order.
        token_preprocessors: objectives on token ids (see :class:`TokenPreprocessor`); a task with
            any is unsupervised: its cached ``targets`` hold raw tokens and :meth:`finalize` builds
            the example and appends EOS.
        postprocess_fn: ``fn(text, example=None, is_target=False)`` -> the value metrics compare.
        metric_fns: ``fn(targets, predictions) -> {name: score}`` on T5's 0–100 scale.
        vocabulary: defaults to :func:`tasks.get_default_vocabulary`.
        label_choices: target strings of a classification task (for rank classification).
        benchmark: ``"glue"``, ``"super_glue"`` or None, for benchmark averages.
        supervised: defaults to ``not token_preprocessors``. ``supervised=True`` with token preprocessors is refused:
            a supervised task is trained on its cached rows as they are and scored against its text targets, so
            an objective on it would either never run or train on examples evaluation never sees.
    """

    #: (split, source, label_choices) already compared by :meth:`check_label_choices`; keyed by the source object, so
    #: a copy made by ``with_source`` checks its own rows.
    _label_checks: frozenset[tuple[Any, ...]] = frozenset()

    def __init__(
        self,
        name: str,
        source: DataSource,
        preprocessors: Sequence[Callable[..., Any]] = (),
        *,
        token_preprocessors: Sequence[TokenPreprocessor] = (),
        postprocess_fn: Callable[..., Any] | None = None,
        metric_fns: Sequence[MetricFn] = (),
        vocabulary: SentencePieceVocabulary | None = None,
        label_choices: Sequence[str] | None = None,
        benchmark: str | None = None,
        supervised: bool | None = None,
        description: str = "",
    ):
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise TaskError(f"Task name {name!r} is invalid: use letters, digits, '_', '.' or '-'.")
        if not isinstance(source, DataSource):
            raise TaskError(f"Task '{name}': source must be a tasks.sources.DataSource, got {type(source).__name__}.")
        for fn in preprocessors:
            if not callable(fn):
                raise TaskError(f"Task '{name}': preprocessor {fn!r} is not callable.")
        for tp in token_preprocessors:
            if not all(hasattr(tp, a) for a in ("name", "cacheable", "fingerprint")) or not callable(tp):
                raise TaskError(
                    f"Task '{name}': token preprocessor {tp!r} does not follow the TokenPreprocessor protocol "
                    "(name, cacheable, fingerprint(), __call__)."
                )
        if supervised and token_preprocessors:
            raise TaskError(
                f"Task '{name}': supervised=True with token preprocessors "
                f"({', '.join(getattr(tp, 'name', repr(tp)) for tp in token_preprocessors)}). A supervised task is "
                "trained on its rows as they are (inputs, targets + EOS) and scored against its text targets, so "
                "the token preprocessors would never run. Leave supervised unset for an objective task (trained "
                "with its objective, rated by mixing.unsupervised_rate, not evaluated), or do the transformation "
                "in a text preprocessor."
            )
        if benchmark not in (None, "glue", "super_glue"):
            raise TaskError(f"Task '{name}': benchmark must be 'glue', 'super_glue' or None, got {benchmark!r}.")
        self.name = name
        self.source = source
        self.preprocessors = list(preprocessors)
        self.token_preprocessors = list(token_preprocessors)
        self.postprocess_fn = postprocess_fn
        self.metric_fns = list(metric_fns)
        self._vocabulary = vocabulary
        self.label_choices = list(label_choices) if label_choices is not None else None
        self.benchmark = benchmark
        self.supervised = (not self.token_preprocessors) if supervised is None else bool(supervised)
        self.description = description
        self._wants_split = [_accepts_split(fn) for fn in self.preprocessors]
        if vocabulary is not None:
            self._check_vocabulary(vocabulary)

    # ------------------------------------------------------------------------------ properties
    def __repr__(self) -> str:
        return f"Task({self.name!r}, source={self.source.describe()!r}, splits={self.splits})"

    @property
    def vocabulary(self) -> SentencePieceVocabulary:
        if self._vocabulary is None:
            self._vocabulary = get_default_vocabulary()
            self._check_vocabulary(self._vocabulary)
        return self._vocabulary

    def _check_vocabulary(self, vocab: SentencePieceVocabulary) -> None:
        if self.token_preprocessors and vocab.extra_ids < 1:
            raise TaskError(
                f"Task '{self.name}' uses token preprocessors "
                f"({', '.join(tp.name for tp in self.token_preprocessors)}) that need sentinel ids, but its "
                f"vocabulary '{vocab.path}' has extra_ids={vocab.extra_ids}. Use "
                "SentencePieceVocabulary(path, extra_ids=100) (T5's convention)."
            )

    @property
    def splits(self) -> list[str]:
        return list(self.source.splits)

    @property
    def metrics(self) -> list[MetricFn]:
        """Alias of ``metric_fns`` (DESIGN.md's name)."""
        return self.metric_fns

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            close = difflib.get_close_matches(split, self.splits, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise TaskError(
                f"Task '{self.name}' has no split '{split}'; its splits are {self.splits} "
                f"(source: {self.source.describe()}).{hint}"
            )

    # ------------------------------------------------------------------------------ text
    def _raw(self, split: str):
        self._check_split(split)
        try:
            raw = self.source.load(split)
        except TaskError as err:  # a source knows its files, not the task reading them
            raise TaskError(f"Task '{self.name}': {err}") from err
        if isinstance(raw, datasets.Dataset) and len(raw) == 0:
            raise TaskError(
                f"Task '{self.name}', split '{split}' is empty (source: {self.source.describe()}). "
                "Check the data file, or drop the split from the task."
            )
        return raw

    def _row_context(self, split: str, index: int) -> str:
        """``Task 'x', split 's', row i (file F, line N)``: the start of every error about one source row."""
        return f"Task '{self.name}', split '{split}', row {index} ({_row_location(self.source, split, index)})"

    def preprocess_row(self, row: Row, split: str, index: int) -> list[Row]:
        """All text-to-text examples one raw row produces (0, 1 or more), validated.

        Any exception from a preprocessor (the user's own code included: an ``IndexError`` for a label outside its
        names, a ``TypeError`` from a field that came back null) becomes a :class:`TaskError` naming the task, the
        split, the file and line, and the row; the original exception is its cause. Nothing is added per row: the
        message is built only once something has failed.
        """
        examples: list[Row] = [row]
        for fn, wants_split in zip(self.preprocessors, self._wants_split):
            produced: list[Row] = []
            for ex in examples:
                try:
                    out = fn(ex, split=split) if wants_split else fn(ex)
                except RowError as err:
                    field = f", field '{err.field}'" if err.field else ""
                    raise TaskError(
                        f"{self._row_context(split, index)}{field}: {err}. Raw row: {_short(row)}"
                    ) from None
                except KeyError as err:
                    raise TaskError(
                        f"{self._row_context(split, index)}: preprocessor {getattr(fn, '__name__', fn)!r} needs "
                        f"field {err.args[0]!r}, which the row lacks (fields: {sorted(ex)}). Raw row: {_short(row)}"
                    ) from None
                except TaskError:
                    raise
                except Exception as err:
                    raise TaskError(self._user_error(split, index, row, ex, fn, err)) from err
                if out is None:
                    continue
                produced.extend([out] if isinstance(out, Mapping) else out)
            examples = produced
        if self.preprocessors:
            for ex in examples:
                for key in ("inputs", "targets"):
                    if not isinstance(ex.get(key), str):
                        hint = (" (null: a field the preprocessor read is probably missing from this row;"
                                f" fields present: {sorted(k for k, v in row.items() if v is not None)})"
                                if ex.get(key) is None else "")
                        raise TaskError(
                            f"{self._row_context(split, index)}: after preprocessing, field "
                            f"'{key}' must be a string, got {_short(ex.get(key), 80)}{hint}. The last text "
                            "preprocessor must return {'inputs': str, 'targets': str, ...}."
                        )
        return examples

    def _user_error(self, split: str, index: int, row: Row, ex: Row, fn: Callable[..., Any],
                    err: Exception) -> str:
        """The message for an exception a preprocessor raised (not a RowError): where, what, and the likely why."""
        name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", None) or repr(fn)
        nulls = sorted(k for k, v in ex.items() if v is None)
        hint = (f" Fields that are null in this row (absent from the file?): {nulls}." if nulls else "")
        return (f"{self._row_context(split, index)}: preprocessor {name!r} raised {type(err).__name__}: {err}"
                f"{_raised_at(err, fn)}.{hint} Raw row: {_short(row)}")

    def text_examples(self, split: str) -> Iterator[Row]:
        """``{"inputs": str, "targets": str, **raw fields}`` for each example of ``split``, in order.

        The i-th example here is the i-th row of :meth:`tokenized` (same order, same filtering), so
        evaluation can zip predictions with these for postprocessing.
        """
        raw = self._raw(split)
        self.check_label_choices(split, raw)
        for index, row in enumerate(raw):
            for ex in self.preprocess_row(row, split, index):
                out = dict(row)
                out.update(ex)
                yield out

    def check_label_choices(self, split: str, raw: Any = None) -> None:
        """Stop when the first examples' targets are not among ``label_choices`` (a :class:`TaskError`).

        Why: rank classification can only predict one of ``label_choices``; targets spelt otherwise ("yes"/"no"
        against "False"/"True") are never matched, and accuracy reads 0.00 with no error. The first
        ``LABEL_CHECK_EXAMPLES`` examples are compared once per split and source in a process; evaluation
        (:meth:`text_examples`) and training (:meth:`token_cache`, :meth:`tokenized`) call this. Unlabelled rows
        (Hugging Face's ``label == -1`` in test splits) are skipped, and T5's ``<unk>`` target is allowed.
        """
        if not self.label_choices:
            return
        key = (split, id(self.source), tuple(self.label_choices))
        if key in self._label_checks:
            return
        raw = self._raw(split) if raw is None else raw
        choices = set(self.label_choices) | {"<unk>"}
        bad: dict[str, int] = {}
        seen = 0
        for index, row in enumerate(raw):
            label = row.get("label")
            if isinstance(label, (int, float)) and label == -1:  # Hugging Face's unlabelled (test) row
                continue
            for ex in self.preprocess_row(row, split, index):
                seen += 1
                if ex["targets"] not in choices:
                    bad.setdefault(ex["targets"], index)
            if seen >= LABEL_CHECK_EXAMPLES:
                break
        if bad:
            first = min(bad.values())
            raise TaskError(
                f"Task '{self.name}', split '{split}': targets {_short(sorted(bad), 200)} of the first {seen} "
                f"examples are not among label_choices {self.label_choices} (first at row {first}, "
                f"{_row_location(self.source, split, first)}). Rank classification can only predict a label "
                "choice, so these examples would always be scored wrong. Make the preprocessor's targets exactly "
                "the label_choices strings, or correct label_choices."
            )
        self._label_checks = self._label_checks | {key}

    # ------------------------------------------------------------------------------ tokens
    def _cacheable(self) -> list[TokenPreprocessor]:
        return [tp for tp in self.token_preprocessors if tp.cacheable]

    def _random(self) -> list[TokenPreprocessor]:
        return [tp for tp in self.token_preprocessors if not tp.cacheable]

    def _text_fingerprint(self, split: str) -> str:
        """Key of the text+tokenize stage: independent of sequence_length and token preprocessors."""
        return stable_hash(
            CACHE_VERSION, self.name, split, self.source.fingerprint(split), self.vocabulary.fingerprint,
            [callable_fingerprint(fn) for fn in self.preprocessors], bool(self.token_preprocessors),
        )

    def _stage_fingerprints(self, split: str, sequence_length: SequenceLength | None) -> list[str]:
        """Cache keys of each stage: tokenization, then one per cacheable token preprocessor (chained)."""
        fps = [self._text_fingerprint(split)]
        for tp in self._cacheable():
            fps.append(stable_hash(fps[-1], tp.fingerprint(), dict(sequence_length) if sequence_length else None))
        return fps

    def cache_fingerprint(self, split: str, sequence_length: SequenceLength | None = None) -> str:
        """The key of ``tokenized(split)``'s final cache file (see the module docstring)."""
        return self._stage_fingerprints(split, sequence_length)[-1]

    def _texts(self, batch: dict[str, list], indices: list[int], split: str) -> tuple[list[str], list[str]]:
        keys = list(batch)
        inputs: list[str] = []
        targets: list[str] = []
        for j, index in enumerate(indices):
            row = {k: batch[k][j] for k in keys}
            for ex in self.preprocess_row(row, split, index):
                inputs.append(ex["inputs"])
                targets.append(ex["targets"])
        return inputs, targets

    def _tokenize_batch(self, batch: dict[str, list], indices: list[int], split: str) -> pa.Table:
        inputs, targets = self._texts(batch, indices, split)
        vocab = self.vocabulary
        eos = None if self.token_preprocessors else vocab.eos_id
        return pa.table({
            "inputs": _to_list_array(vocab.encode_batch(inputs), eos),
            "targets": _to_list_array(vocab.encode_batch(targets), eos),
        })

    def tokenize_rows(self, batch: dict[str, list], indices: list[int], split: str,
                      sequence_length: SequenceLength | None = None, num_threads: int = -1
                      ) -> dict[str, list[np.ndarray]]:
        """Raw rows (a dict of lists; ``indices`` their row numbers, for error messages) -> the cached form:
        text preprocessors, vocabulary (+EOS for supervised tasks), then the cacheable token preprocessors.
        Used by the token cache builder (:mod:`tasks.cache`)."""
        inputs, targets = self._texts(batch, indices, split)
        vocab = self.vocabulary
        eos = np.array([vocab.eos_id] if not self.token_preprocessors else [], np.int32)
        out = {}
        for key, texts in (("inputs", inputs), ("targets", targets)):
            ids = vocab.encode_batch(texts, num_threads=num_threads)
            lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
            flat = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths.sum()))
            if len(eos):
                flat = np.insert(flat, np.cumsum(lengths), eos[0])
                lengths = lengths + 1
            out[key] = np.split(flat, np.cumsum(lengths)[:-1]) if len(ids) else []
        for tp in self._cacheable():
            out = tp(out, sequence_length=sequence_length, vocabulary=vocab)
            out = {k: [np.asarray(x, np.int32) for x in out[k]] for k in ("inputs", "targets")}
        return out

    def tokenized(self, split: str, sequence_length: SequenceLength | None = None) -> datasets.Dataset:
        """The split tokenized (int32 ``inputs``/``targets``), cached on disk; numpy-formatted.

        Supervised tasks: EOS appended. Unsupervised tasks: ``targets`` holds raw token windows
        (after the cacheable token preprocessors), no EOS; see :meth:`finalize`.
        """
        raw = self._raw(split)
        self.check_label_choices(split, raw)
        if not isinstance(raw, datasets.Dataset):
            raise TaskError(
                f"Task '{self.name}', split '{split}': the source is streaming, so it has no random-access "
                "tokenized cache. Use task.get_dataset(split) to stream, or a non-streaming source."
            )
        text_fp, *stage_fps = self._stage_fingerprints(split, sequence_length)
        folder = cache_root() / "tokenized" / self.name
        folder.mkdir(parents=True, exist_ok=True)
        ds = raw.map(
            self._tokenize_batch,
            batched=True,
            batch_size=_MAP_BATCH,
            with_indices=True,
            fn_kwargs={"split": split},
            remove_columns=raw.column_names,
            features=TOKEN_FEATURES,
            new_fingerprint=text_fp,
            cache_file_name=str(folder / f"{split}-{text_fp}.arrow"),
            load_from_cache_file=True,
            desc=f"Tokenizing {self.name}/{split}",
        )
        vocab = self.vocabulary
        for tp, stage_fp in zip(self._cacheable(), stage_fps):

            def apply(batch: dict[str, list], _tp: TokenPreprocessor = tp) -> pa.Table:
                arrays = {k: [np.asarray(x, dtype=np.int32) for x in batch[k]] for k in ("inputs", "targets")}
                out = _tp(arrays, sequence_length=sequence_length, vocabulary=vocab)
                return pa.table(
                    {k: _to_list_array([np.asarray(x, dtype=np.int32) for x in out[k]]) for k in ("inputs", "targets")}
                )

            ds = ds.map(
                apply, batched=True, batch_size=_MAP_BATCH, features=TOKEN_FEATURES,
                new_fingerprint=stage_fp, cache_file_name=str(folder / f"{split}-{stage_fp}.arrow"),
                load_from_cache_file=True, desc=f"{tp.name} {self.name}/{split}",
            )
        if len(ds) == 0:
            raise TaskError(
                f"Task '{self.name}', split '{split}': every row was dropped by the preprocessors "
                f"({[getattr(p, '__name__', repr(p)) for p in self.preprocessors + self.token_preprocessors]})."
            )
        return ds.with_format("numpy", dtype=np.int32)

    def token_cache(self, split: str, sequence_length: SequenceLength | None = None, *, build: bool = True
                    ) -> TokenCache:
        """The memory-mapped token cache training reads (:mod:`tasks.cache`).

        A local random-access source is cached on first use (``build``; one process builds, others wait on the
        cache's lock). A streaming source (C4 from the hub, streamed files) must be cached offline first with
        ``python -m tasks cache``: without its cache this raises, naming the exact command.
        """
        self._check_split(split)
        if not self.source.streaming:  # a streamed hub corpus is read only offline, by `python -m tasks cache`
            self.check_label_choices(split)
        cache = open_cache(self, split, sequence_length)
        if cache is not None:
            return cache
        if self.source.streaming or not build:
            why = "its source streams" if self.source.streaming else "building on first use is off here"
            raise TaskError(
                f"Task '{self.name}', split '{split}' has no token cache ({why}; source: {self.source.describe()}). "
                f"Build it first with:\n    {cache_command(self, split, sequence_length)}\n"
                "(--max-tokens caps a corpus; --num-proc N tokenizes in N processes; add --imports MODULE for a "
                "task registered in your own module)."
            )
        return build_cache(self, split, sequence_length)

    def num_examples(self, split: str, sequence_length: SequenceLength | None = None) -> int:
        """Rows of the split's token cache (= rows of ``tokenized(split)``); cached on first use.

        A streaming source needs its offline cache (see :meth:`token_cache`).
        """
        return len(self.token_cache(split, sequence_length))

    def num_rows(self, split: str) -> int | None:
        """Raw source rows, counted cheaply (e.g. lines of a JSONL file); None if unknown."""
        return self.source.num_rows(split)

    def finalize(
        self, batch: dict[str, list[np.ndarray]], seeds: np.ndarray, sequence_length: SequenceLength | None = None
    ) -> dict[str, list[np.ndarray]]:
        """Apply the random token preprocessors and append EOS; identity for supervised tasks.

        Row i of the output depends only on row i of ``batch`` and ``seeds[i]``.
        """
        if not self.token_preprocessors:
            return batch
        seeds = np.asarray(seeds, dtype=np.uint64)
        vocab = self.vocabulary
        for k, tp in enumerate(self._random()):
            tp_seeds = seeds if k == 0 else _splitmix64(seeds + np.uint64(k))
            batch = tp(batch, seeds=tp_seeds, sequence_length=sequence_length, vocabulary=vocab)
        eos = np.array([vocab.eos_id], dtype=np.int32)
        return {
            key: [np.concatenate([np.asarray(x, dtype=np.int32), eos]) for x in batch[key]]
            for key in ("inputs", "targets")
        }

    def example_lengths(self, raw_inputs: np.ndarray, raw_targets: np.ndarray,
                        sequence_length: SequenceLength | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Final lengths (EOS included, before truncation) of the examples :meth:`finalize` makes from cached rows
        of these lengths, by length arithmetic alone: exact for supervised tasks and span corruption, an upper
        bound for objectives with random output lengths. A random token preprocessor without ``output_lengths``
        gives the full ``sequence_length`` (always an upper bound after truncation)."""
        raw_inputs, raw_targets = np.asarray(raw_inputs, np.int64), np.asarray(raw_targets, np.int64)
        if not self.token_preprocessors:
            return raw_inputs, raw_targets
        lin, ltg = raw_inputs, raw_targets
        for tp in self._random():
            fn = getattr(tp, "output_lengths", None)
            if fn is None or sequence_length is None:
                full = sequence_length or {"inputs": 1 << 30, "targets": 1 << 30}
                return (np.full(len(raw_inputs), int(full["inputs"]), np.int64),
                        np.full(len(raw_targets), int(full["targets"]), np.int64))
            lin, ltg = fn(lin, ltg, sequence_length)
        return np.asarray(lin, np.int64) + 1, np.asarray(ltg, np.int64) + 1

    def get_dataset(
        self,
        split: str,
        shuffle: bool = False,
        seed: int = 0,
        sequence_length: SequenceLength | None = None,
        epoch: int = 0,
        batch_size: int = 256,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Final examples ``{"inputs": int32 array, "targets": int32 array}`` (EOS appended).

        With ``shuffle``, the order is a permutation drawn from (seed, task name, epoch). Each
        example's random objective uses ``example_seed(seed, name, epoch, index)``.
        """
        if self.source.streaming:
            yield from self._stream(split, shuffle, seed, sequence_length, epoch, batch_size)
            return
        ds = self.tokenized(split, sequence_length)
        n = len(ds)
        if shuffle:
            rng = np.random.default_rng(example_seed(seed, self.name, epoch, np.uint64(0)).item() ^ 0x5F3759DF)
            order = rng.permutation(n)
        else:
            order = np.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = take_rows(ds, idx)
            batch = self.finalize(batch, example_seed(seed, self.name, epoch, idx), sequence_length)
            for i in range(len(idx)):
                yield {"inputs": batch["inputs"][i], "targets": batch["targets"][i]}

    def _stream(self, split: str, shuffle: bool, seed: int, sequence_length: SequenceLength | None, epoch: int,
                batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """get_dataset for streaming sources: tokenize on the fly in batches (no cache, no random access).

        Shuffling uses ``datasets``' buffer shuffle (10,000 rows) seeded from (seed, name, epoch).
        """
        raw = self._raw(split)
        if shuffle:
            raw = raw.shuffle(seed=int(example_seed(seed, self.name, epoch, 0)) % (2**32), buffer_size=10_000)
        position = 0
        rows = iter(raw)
        for chunk_start in itertools.count(step=batch_size):
            chunk = list(itertools.islice(rows, batch_size))
            if not chunk:
                return
            batch = {k: [r[k] for r in chunk] for k in chunk[0]}
            table = self._tokenize_batch(batch, list(range(chunk_start, chunk_start + len(chunk))), split)
            tokens = {name: list_column_to_numpy(table.column(name)) for name in ("inputs", "targets")}
            if self._cacheable():
                vocab = self.vocabulary
                for tp in self._cacheable():
                    tokens = tp(tokens, sequence_length=sequence_length, vocabulary=vocab)
            idx = np.arange(position, position + len(tokens["targets"]))
            position += len(idx)
            tokens = self.finalize(tokens, example_seed(seed, self.name, epoch, idx), sequence_length)
            for i in range(len(idx)):
                yield {"inputs": np.asarray(tokens["inputs"][i], np.int32),
                       "targets": np.asarray(tokens["targets"][i], np.int32)}

    # ------------------------------------------------------------------------------ evaluation
    def postprocess(self, text: str, example: Mapping[str, Any] | None = None, is_target: bool = False) -> Any:
        """Turn a decoded prediction (or target) into the value the metrics compare."""
        if self.postprocess_fn is None:
            return text
        return self.postprocess_fn(text, example=example, is_target=is_target)

    def compute_metrics(self, targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
        """All metric_fns on postprocessed targets and predictions, merged into one dict (0–100)."""
        if len(targets) != len(predictions):
            raise TaskError(
                f"Task '{self.name}': {len(targets)} targets but {len(predictions)} predictions."
            )
        scores: dict[str, float] = {}
        for fn in self.metric_fns:
            scores.update({k: float(v) for k, v in fn(list(targets), list(predictions)).items()})
        return scores

    # ------------------------------------------------------------------------------ variants
    def with_source(self, source: DataSource, name: str | None = None) -> Task:
        """A copy reading ``source`` (same preprocessors and metrics), e.g. a catalog format on your rows."""
        if not isinstance(source, DataSource):
            raise TaskError(f"Task '{self.name}': with_source needs a DataSource, got {type(source).__name__}.")
        clone = copy.copy(self)
        clone.source = source
        if name is not None:
            if not _NAME_RE.match(name):
                raise TaskError(f"Task name {name!r} is invalid: use letters, digits, '_', '.' or '-'.")
            clone.name = name
        return clone

    def with_options(self, **objective_kwargs: Any) -> Task:
        """A copy whose token preprocessors have new hyper-parameters (``dataclasses.replace``).

        Every keyword must be a field of at least one token preprocessor.
        """
        unused = set(objective_kwargs)
        new_tps = []
        for tp in self.token_preprocessors:
            if dataclasses.is_dataclass(tp):
                names = {f.name for f in dataclasses.fields(tp)}
                mine = {k: v for k, v in objective_kwargs.items() if k in names}
                unused -= set(mine)
                tp = dataclasses.replace(tp, **mine) if mine else tp
            new_tps.append(tp)
        if unused:
            known = sorted(
                {f.name for tp in self.token_preprocessors if dataclasses.is_dataclass(tp)
                 for f in dataclasses.fields(tp)}
            )
            raise TaskError(
                f"Task '{self.name}': with_options got {sorted(unused)}, which no token preprocessor has; "
                f"known options: {known or 'none (the task has no token preprocessors)'}."
            )
        clone = copy.copy(self)
        clone.token_preprocessors = new_tps
        return clone


class TaskRegistry:
    """Process-wide registry of tasks by name (class-level, like seqio's)."""

    _tasks: dict[str, Task] = {}

    @classmethod
    def add(cls, task: Task | str, *args: Any, replace: bool = False, **kwargs: Any) -> Task:
        """Register ``task`` (or build one: ``add("name", source=..., preprocessors=[...])``)."""
        if isinstance(task, str):
            task = Task(task, *args, **kwargs)
        elif args or kwargs:
            raise TaskError("TaskRegistry.add: pass either a Task or a name plus Task arguments, not both.")
        if not isinstance(task, Task):
            raise TaskError(f"TaskRegistry.add expects a tasks.Task, got {type(task).__name__}.")
        if task.name in cls._tasks and not replace:
            raise TaskError(
                f"Task '{task.name}' is already registered. Pick another name, call "
                f"TaskRegistry.remove('{task.name}') first, or pass replace=True."
            )
        cls._tasks[task.name] = task
        return task

    @classmethod
    def get(cls, name: str) -> Task:
        try:
            return cls._tasks[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(cls._tasks), n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise TaskError(
                f"Unknown task '{name}'.{hint} Run `python -m tasks list` to see all {len(cls._tasks)} "
                "tasks; a task from your own module must be imported first (config `imports: [my_tasks]`)."
            ) from None

    @classmethod
    def names(cls) -> list[str]:
        return sorted(cls._tasks)

    @classmethod
    def remove(cls, name: str) -> None:
        if name not in cls._tasks:
            cls.get(name)  # raises with suggestions
        del cls._tasks[name]
