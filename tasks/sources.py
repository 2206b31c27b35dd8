"""Where a task's raw rows come from, all through Hugging Face ``datasets``.

* :class:`HubSource` — a hub dataset name + config (``datasets.load_dataset``), optionally streaming.
* :class:`FileSource` — local JSONL / CSV / TSV / Parquet / text files, one (or more) per split,
  read by ``datasets``' own builders (Arrow-cached under the lightning_t5 cache), optionally streaming.
* :class:`InMemorySource` — a dict of lists or a list of dicts per split (tests, small user data).
* :class:`LocalOrHubSource` — the catalog's choice: the shipped rows in ``data/`` when they exist,
  otherwise the hub dataset. ``$LIGHTNING_T5_SOURCE=hub`` forces the hub.

A source may carry a ``normalize(row, index) -> row`` function. The catalog uses it to turn the
shipped files' layouts into exactly the Hugging Face layout the T5 preprocessors expect (e.g. GLUE
RTE's string label becomes HF's int class id, CoLA's extra columns are dropped, ``idx`` is added).
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from tasks.errors import TaskError
from tasks.utils import cache_root, callable_fingerprint, count_lines, file_fingerprint, stable_hash

Row = dict[str, Any]
Normalizer = Callable[[Row, int], Row]

_FORMATS = {"json": "json", "jsonl": "json", "csv": "csv", "tsv": "csv", "parquet": "parquet", "text": "text",
            "txt": "text"}


class DataSource(abc.ABC):
    """Base class: a set of named splits, each loadable as a ``datasets.Dataset``."""

    normalize: Normalizer | None = None
    streaming: bool = False

    @property
    @abc.abstractmethod
    def splits(self) -> list[str]:
        """Names of the splits this source provides."""

    @abc.abstractmethod
    def _load_raw(self, split: str) -> datasets.Dataset | datasets.IterableDataset:
        """The split's rows before normalisation."""

    @abc.abstractmethod
    def _raw_fingerprint(self, split: str) -> str:
        """Changes whenever the split's raw rows may have changed."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One short line for ``python -m tasks list``."""

    def num_rows(self, split: str) -> int | None:
        """Row count without tokenizing (cheap); None when unknown without loading."""
        return None

    @property
    def reads_hub(self) -> bool:
        """Whether loading goes to the Hugging Face Hub (network access, or datasets' copy of an earlier download)
        rather than to files or memory on this machine."""
        return False

    def fingerprint(self, split: str) -> str:
        norm = callable_fingerprint(self.normalize) if self.normalize else ""
        return stable_hash(type(self).__name__, self._raw_fingerprint(split), norm)

    def check_split(self, split: str, task: str | None = None) -> None:
        if split not in self.splits:
            who = f"Task '{task}'" if task else "This source"
            raise TaskError(
                f"{who} has no split '{split}'; its splits are {self.splits} (source: {self.describe()})."
            )

    def load(self, split: str) -> datasets.Dataset | datasets.IterableDataset:
        """The split's rows in the Hugging Face layout (normalised), Arrow-backed unless streaming."""
        self.check_split(split)
        ds = self._load_raw(split)
        if self.normalize is None:
            return ds
        norm = self.normalize
        if isinstance(ds, datasets.IterableDataset):
            return ds.map(lambda row, i: norm(dict(row), i), with_indices=True)
        fp = stable_hash("normalized", self.fingerprint(split), datasets.__version__)
        cache = cache_root() / "sources" / "normalized" / f"{fp}.arrow"
        cache.parent.mkdir(parents=True, exist_ok=True)
        return ds.map(
            lambda row, i: norm(dict(row), i),
            with_indices=True,
            remove_columns=ds.column_names,
            new_fingerprint=fp,
            cache_file_name=str(cache),
            load_from_cache_file=True,
            desc=None,
        )


class HubSource(DataSource):
    """A dataset on the Hugging Face hub: ``datasets.load_dataset(path, name, split=...)``.

    ``split_map`` renames splits (e.g. ``{"validation": "validation_matched"}`` for MNLI-matched).
    Needs network access the first time; afterwards ``datasets``' cache serves it.
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        *,
        splits: Sequence[str] = ("train", "validation", "test"),
        split_map: Mapping[str, str] | None = None,
        revision: str | None = None,
        streaming: bool = False,
        normalize: Normalizer | None = None,
    ):
        self.path, self.name, self.revision = path, name, revision
        self._splits = list(splits)
        self.split_map = dict(split_map or {})
        self.streaming = streaming
        self.normalize = normalize

    @property
    def splits(self) -> list[str]:
        return self._splits

    def _load_raw(self, split: str):
        hub_split = self.split_map.get(split, split)
        try:
            return datasets.load_dataset(
                self.path, self.name, split=hub_split, revision=self.revision,
                streaming=self.streaming, cache_dir=str(cache_root() / "hub"),
            )
        except Exception as err:  # network, auth, unknown config: all end up here
            raise TaskError(
                f"Could not load hub dataset '{self.path}'"
                + (f" config '{self.name}'" if self.name else "")
                + f" split '{hub_split}': {type(err).__name__}: {err}. Without network access, use the "
                "shipped data in data/ (the catalog does when it exists) or a FileSource."
            ) from err

    def _raw_fingerprint(self, split: str) -> str:
        return stable_hash(self.path, self.name, self.revision, self.split_map.get(split, split))

    @property
    def reads_hub(self) -> bool:
        return True

    def describe(self) -> str:
        return f"hub:{self.path}" + (f"/{self.name}" if self.name else "")


class FileSource(DataSource):
    """Local files per split, read by ``datasets``' builders (json, csv, parquet, text).

    ``files`` maps a split to a path or list of paths. The format is guessed from the extension
    (``.jsonl``/``.json``, ``.csv``, ``.tsv``, ``.parquet``, ``.txt``) unless ``format`` is given.
    A file that does not exist, or a line that is not valid UTF-8 / JSON, is a :class:`TaskError`
    naming the file (and the line).
    """

    def __init__(
        self,
        files: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]],
        *,
        format: str | None = None,
        streaming: bool = False,
        normalize: Normalizer | None = None,
        csv_kwargs: Mapping[str, Any] | None = None,
    ):
        self.files = {
            split: [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
            for split, paths in files.items()
        }
        if format is None:
            exts = {p.suffix.lstrip(".").lower() for ps in self.files.values() for p in ps}
            if len(exts) != 1 or next(iter(exts)) not in _FORMATS:
                raise TaskError(
                    f"FileSource: cannot infer one format from extensions {sorted(exts)}; pass "
                    f"format= one of {sorted(set(_FORMATS))}."
                )
            format = next(iter(exts))
        if format.lower() not in _FORMATS:
            raise TaskError(f"FileSource: unknown format '{format}'; use one of {sorted(set(_FORMATS))}.")
        self.format = format.lower()
        self.streaming = streaming
        self.normalize = normalize
        self.csv_kwargs = dict(csv_kwargs or {})
        if self.format == "tsv":
            self.csv_kwargs.setdefault("sep", "\t")

    @property
    def splits(self) -> list[str]:
        return list(self.files)

    def exists(self, split: str) -> bool:
        return all(p.is_file() for p in self.files.get(split, [Path("/nonexistent")]))

    def _check_files(self, split: str) -> list[Path]:
        paths = self.files[split]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise TaskError(
                f"Data file(s) for split '{split}' not found: {', '.join(missing)}. Check the path in the "
                "task's FileSource (relative paths are relative to the current directory)."
            )
        return paths

    def _load_raw(self, split: str):
        paths = self._check_files(split)
        builder = _FORMATS[self.format]
        kwargs = dict(self.csv_kwargs) if builder == "csv" else {}
        if builder != "parquet":
            for path in paths:  # Arrow's readers accept invalid UTF-8 and fail much later, far from the file
                _check_utf8(path)
        try:
            return datasets.load_dataset(
                builder, data_files={split: [str(p) for p in paths]}, split=split,
                streaming=self.streaming, cache_dir=str(cache_root() / "sources"), **kwargs,
            )
        except Exception as err:
            # Find the offending line ourselves: datasets' message rarely names it.
            for path in paths:
                _diagnose_text_file(path, json_lines=builder == "json")
            empty = [str(p) for p in paths
                     if not (p.stat().st_size if builder == "parquet" else p.read_bytes().strip())]
            if empty:
                raise TaskError(
                    f"Data file(s) for split '{split}' are empty: {', '.join(empty)}. Put the rows in the file, or "
                    "drop the split from the task's FileSource."
                ) from err
            raise TaskError(
                f"Could not read data files {[str(p) for p in paths]} (split '{split}'): {_reason(err)}"
            ) from err

    def _raw_fingerprint(self, split: str) -> str:
        paths = self._check_files(split)
        return stable_hash(self.format, self.csv_kwargs, [file_fingerprint(p) for p in paths])

    def num_rows(self, split: str) -> int | None:
        if not self.exists(split):
            return None
        if self.format in ("json", "jsonl", "text", "txt"):
            return sum(count_lines(p) for p in self.files[split])
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return sum(pq.ParquetFile(p).metadata.num_rows for p in self.files[split])
        return None

    def describe(self) -> str:
        first = next(iter(self.files.values()))[0]
        try:
            where = first.parent.relative_to(Path.cwd())
        except ValueError:
            where = first.parent
        return f"files:{where}/*.{self.format}"


def _check_utf8(path: Path) -> None:
    """Decode the whole file once (C speed); on failure, name the line of the first bad byte."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        raise TaskError(
            f"{path}, line {lineno}: not valid UTF-8 ({err.reason} at byte {err.start}). Re-encode the file as UTF-8."
        ) from None


def _reason(err: BaseException) -> str:
    """An exception and its causes as one line (``datasets`` often raises with an empty message or a generic one
    whose cause holds the reason)."""
    parts: list[str] = []
    seen: set[int] = set()
    while err is not None and id(err) not in seen and len(parts) < 4:
        seen.add(id(err))
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        parts.append(f"{type(err).__name__}: {text}" if text else type(err).__name__)
        err = err.__cause__ or err.__context__
    return " <- ".join(parts)


def _diagnose_text_file(path: Path, json_lines: bool) -> None:
    """Raise a TaskError naming the first line that is not UTF-8 (or not JSON, for JSON Lines)."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise TaskError(
                    f"{path}, line {lineno}: not valid UTF-8 ({err.reason} at byte {err.start}). "
                    "Re-encode the file as UTF-8."
                ) from None
            if json_lines and line.strip():
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    raise TaskError(
                        f"{path}, line {lineno}: not valid JSON ({err.msg} at column {err.colno}). "
                        "Each line of a .jsonl file must be one JSON object."
                    ) from None
                if not isinstance(value, dict):
                    raise TaskError(
                        f"{path}, line {lineno}: a JSON {type(value).__name__}, not an object. Each line "
                        "of a .jsonl file must be one JSON object."
                    )


class InMemorySource(DataSource):
    """Rows held in memory: per split, a list of dicts or a dict of equal-length lists."""

    def __init__(self, data: Mapping[str, Sequence[Row] | Mapping[str, Sequence[Any]]],
                 normalize: Normalizer | None = None):
        self.data = dict(data)
        self.normalize = normalize

    @property
    def splits(self) -> list[str]:
        return list(self.data)

    def _load_raw(self, split: str) -> datasets.Dataset:
        rows = self.data[split]
        if isinstance(rows, Mapping):
            return datasets.Dataset.from_dict(dict(rows))
        return datasets.Dataset.from_list(list(rows))

    def _raw_fingerprint(self, split: str) -> str:
        return stable_hash(self.data[split])

    def num_rows(self, split: str) -> int | None:
        rows = self.data.get(split)
        if rows is None:
            return None
        if isinstance(rows, Mapping):
            return len(next(iter(rows.values()), []))
        return len(rows)

    def describe(self) -> str:
        return "memory"


class LocalOrHubSource(DataSource):
    """Prefer the shipped local files; fall back to the hub dataset.

    The choice is made once per source, not per split, so a task never mixes provenances: when
    every local file of ``local`` exists (and ``$LIGHTNING_T5_SOURCE`` is not ``hub``), the task reads
    the local files and has exactly the local splits; otherwise it reads the hub dataset.
    """

    def __init__(self, local: FileSource, hub: HubSource):
        self.local, self.hub = local, hub

    @property
    def active(self) -> DataSource:
        if os.environ.get("LIGHTNING_T5_SOURCE", "").lower() == "hub":
            return self.hub
        if all(self.local.exists(s) for s in self.local.splits):
            return self.local
        return self.hub

    @property
    def splits(self) -> list[str]:
        return self.active.splits

    @property
    def streaming(self) -> bool:  # type: ignore[override]
        return self.active.streaming

    @property
    def reads_hub(self) -> bool:
        return self.active.reads_hub

    def load(self, split: str):
        self.check_split(split)
        return self.active.load(split)

    def _load_raw(self, split: str):  # pragma: no cover - load() delegates
        return self.active._load_raw(split)

    def fingerprint(self, split: str) -> str:
        return self.active.fingerprint(split)

    def _raw_fingerprint(self, split: str) -> str:  # pragma: no cover - fingerprint() delegates
        return self.active._raw_fingerprint(split)

    def num_rows(self, split: str) -> int | None:
        return self.active.num_rows(split)

    def describe(self) -> str:
        return self.active.describe()


def shipped_or_hub(
    local_dir: str,
    hub_path: str,
    hub_name: str | None = None,
    *,
    local_splits: Sequence[str] = ("train", "validation"),
    hub_splits: Sequence[str] = ("train", "validation", "test"),
    split_map: Mapping[str, str] | None = None,
    normalize_local: Normalizer | None = None,
    normalize_hub: Normalizer | None = None,
) -> DataSource:
    """The catalog's source: ``data/<local_dir>/<split>.jsonl`` when shipped, else the hub dataset.

    ``normalize_local`` maps the shipped layout onto the hub's (documented in data/README.md).
    """
    from tasks.utils import DATA_DIR

    hub = HubSource(hub_path, hub_name, splits=hub_splits, split_map=split_map, normalize=normalize_hub)
    if not local_dir:
        return hub
    local = FileSource(
        {s: DATA_DIR / local_dir / f"{s}.jsonl" for s in local_splits}, format="json", normalize=normalize_local
    )
    return LocalOrHubSource(local, hub)
