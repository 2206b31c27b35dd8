"""lightning-t5's task registry: every dataset as text-to-text examples, tokenized and cached.

Seqio-shaped API::

    import tasks
    task = tasks.TaskRegistry.get("glue_sst2")
    next(task.text_examples("validation"))   # {"inputs": "sst2 sentence: ...", "targets": "positive", ...}
    ds = task.tokenized("train")              # datasets.Dataset of int32 ids (EOS appended), cached on disk
    for ex in task.get_dataset("train", shuffle=True, seed=0):
        ...                                   # {"inputs": np.int32 array, "targets": np.int32 array}

Registering your own task (in your own module, e.g. ``my_tasks.py``; then put ``imports: [my_tasks]``
in the run config, or call ``tasks.import_modules(["my_tasks"])``)::

    import functools
    from tasks import Task, TaskRegistry, FileSource, metrics, postprocessors

    def sentiment(row):
        return {"inputs": "review: " + row["text"], "targets": ["bad", "good"][row["label"]]}

    TaskRegistry.add(Task(
        "my_reviews",
        source=FileSource({"train": "reviews/train.jsonl", "validation": "reviews/dev.jsonl"}),
        preprocessors=[sentiment],
        postprocess_fn=functools.partial(postprocessors.string_label_to_class_id, label_classes=["bad", "good"]),
        metric_fns=[metrics.accuracy],
        label_choices=["bad", "good"],
    ))

The caches live under ``$LIGHTNING_T5_CACHE`` (default ``~/.cache/lightning_t5``).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Sequence

from tasks import metrics, postprocessors, preprocessors
from tasks.errors import RowError, TaskError
from tasks.sources import DataSource, FileSource, HubSource, InMemorySource, LocalOrHubSource, shipped_or_hub
from tasks.task import Task, TaskRegistry, TokenPreprocessor, list_column_to_numpy, take_rows
from tasks.utils import cache_root, example_seed
from tasks.vocabulary import SentencePieceVocabulary, get_default_vocabulary, train_vocabulary


def _working_directory_on_path() -> None:
    """Put the directory the command runs from first on ``sys.path``, as ``python -m`` does.

    Why: ``python -m tasks`` and ``python -m mixtures`` see a ``my_tasks.py`` in the working directory because ``-m``
    puts it there, but ``python /path/to/train.py`` puts only the script's directory there. Doing it here, the one
    place every entry point imports user modules through, gives all of them the same rule: the directory you run from
    (first), then the script's directory and ``PYTHONPATH``. It stays on the path so that spawned data-loader workers,
    which receive the parent's ``sys.path``, can unpickle the user's preprocessors.
    """
    cwd = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        sys.path.insert(0, cwd)


def import_modules(names: Iterable[str] | None) -> list[object]:
    """Import user modules that register tasks/mixtures (config key ``imports``).

    Modules are found in the directory the command runs from, then on the usual Python path (the script's directory,
    ``PYTHONPATH``). A missing module is a :class:`TaskError` that names it and says where it was looked for; an error
    *inside* the module propagates unchanged, so its traceback points at the user's bug.
    """
    names = list(names or ())
    if names:
        _working_directory_on_path()
    modules = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise TaskError(f"imports: each entry must be a module name string, got {name!r}.")
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as err:
            if err.name and (name == err.name or name.startswith(err.name + ".")):
                raise TaskError(
                    f"imports: cannot import module '{name}' (config key `imports`). It is looked for in the "
                    f"directory you run from ({os.getcwd()}), then on the Python path (the script's directory, "
                    "PYTHONPATH); spell it as a module name (my_pkg.my_tasks, not a file path)."
                ) from err
            raise
    return modules


def pop_imports(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the user-module arguments off a command line: `(modules, remaining argv)`.

    Every entry point (`train.py`, `python -m tasks`, `python -m mixtures`) accepts the same two spellings anywhere
    on the line, before or after a sub-command: `imports=[my_tasks,other]` (the config key, as in the README) and
    `--imports my_tasks` / `--imports=my_tasks,other` (repeatable). Running this before argparse/Hydra keeps the
    rule in one place.
    """
    modules: list[str] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--imports":
            if i + 1 >= len(args) or args[i + 1].startswith("-"):
                raise TaskError("--imports needs a module name, e.g. --imports my_tasks.")
            value, i = args[i + 1], i + 2
        elif arg.startswith("--imports="):
            value, i = arg.split("=", 1)[1], i + 1
        elif arg.lstrip("+").startswith("imports="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            rest.append(arg)
            i += 1
            continue
        modules.extend(m.strip().strip("'\"") for m in value.strip().strip("[]").split(",") if m.strip())
    return modules, rest


__all__ = [
    "DataSource", "FileSource", "HubSource", "InMemorySource", "LocalOrHubSource", "RowError",
    "SentencePieceVocabulary", "Task", "TaskError", "TaskRegistry", "TokenPreprocessor", "cache_root",
    "example_seed", "get_default_vocabulary", "import_modules", "pop_imports", "list_column_to_numpy", "metrics",
    "postprocessors", "preprocessors", "shipped_or_hub", "take_rows", "train_vocabulary",
]

# Register the built-in catalog last (it imports Task and TaskRegistry from above).
from tasks import catalog  # noqa: E402,F401
