"""Unsupervised ``corpus_*`` tasks: the T5 paper's objectives on the shipped English corpus.

Source: ``data/english_corpus/{train,validation}.jsonl`` (field ``text``, public-domain books and speeches,
see data/README.md); without it, the real C4 (``allenai/c4``, config ``en``) streamed from the hub.
Each task is ``text -> tokens -> ChunkCorpus (cached raw windows) -> objective (per example, seeded)``:

=========================  ===================================================================
corpus_span_corruption     T5 default: random spans 15 %, mean length 3, unique sentinels
corpus_replace_spans       i.i.d. 15 %, each corrupted span -> a unique sentinel (paper's "replace spans")
corpus_iid_drop            i.i.d. 15 % dropped from the inputs; targets the dropped tokens
corpus_mask_tokens         i.i.d. 15 %, every corrupted token -> <extra_id_0>; targets the original
corpus_mass                T5's MASS-style (same recipe as mask tokens, the paper's name)
corpus_bert_mlm            BERT 80/10/10 (mask / random token / unchanged); targets the original
corpus_prefix_lm           uniform split point; prefix in, rest out
corpus_deshuffle           shuffled tokens in, original out
=========================  ===================================================================

Hyper-parameters are dataclass fields of the token preprocessors, so a sweep is
``TaskRegistry.get("corpus_span_corruption").with_options(noise_density=0.5, mean_noise_span_length=10)``,
or from a config: :func:`task_for_objective` with a ``configs/objective/*.yaml`` mapping; named variants
(:func:`register_variant`, e.g. ``corpus_span_corruption_msl10``, ``corpus_replace_spans_nd0.25``) cover the
paper's corruption-rate and span-length sweeps for configs that refer to tasks by name.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

from tasks import preprocessors
from tasks.errors import TaskError
from tasks.objectives.preprocessors import OBJECTIVES, objective_preprocessors
from tasks.sources import FileSource, HubSource, LocalOrHubSource
from tasks.task import Task, TaskRegistry
from tasks.utils import DATA_DIR

#: Catalog task name -> objective name (tasks.objectives.preprocessors.OBJECTIVES).
CORPUS_TASKS: dict[str, str] = {
    "corpus_span_corruption": "span_corruption",
    "corpus_replace_spans": "iid_replace_spans",
    "corpus_iid_drop": "iid_drop",
    "corpus_mask_tokens": "mask_tokens",
    "corpus_mass": "mass",
    "corpus_bert_mlm": "bert_mlm",
    "corpus_prefix_lm": "prefix_lm",
    "corpus_deshuffle": "deshuffle",
}


def corpus_source() -> LocalOrHubSource:
    """The shipped corpus, or C4 (``allenai/c4``/``en``, streamed) when it is not there."""
    local = FileSource({s: DATA_DIR / "english_corpus" / f"{s}.jsonl" for s in ("train", "validation")}, format="json")
    hub = HubSource("allenai/c4", "en", splits=("train", "validation"), streaming=True)
    return LocalOrHubSource(local, hub)


def corpus_task(objective: str, name: str | None = None, **options: Any) -> Task:
    """A corpus task (not registered) for ``objective`` with the given hyper-parameter overrides."""
    if objective not in OBJECTIVES:
        raise TaskError(f"unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)}.")
    return Task(
        name or f"corpus_{objective}",
        corpus_source(),
        [functools.partial(preprocessors.lm_text, text_key="text")],
        token_preprocessors=objective_preprocessors(objective, **options),
        supervised=False,
        benchmark=None,
        description=f"{OBJECTIVES[objective].__doc__.splitlines()[0]} (English corpus; C4 from the hub as fallback)",
    )


def objective_options(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The hyper-parameters of a ``configs/objective/*.yaml`` mapping (``null`` values left out)."""
    if not config:
        return {}
    allowed = {f.name for f in dataclasses.fields(OBJECTIVES["span_corruption"])} - {"name"}
    options = {k: v for k, v in dict(config).items() if k not in ("objective", "task") and v is not None}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TaskError(f"objective config: unknown key(s) {unknown}; "
                        f"valid keys are objective, task, {sorted(allowed)}.")
    return options


def task_for_objective(config: Mapping[str, Any]) -> Task:
    """The corpus task a ``configs/objective/*.yaml`` mapping describes, with its options applied.

    ``{"task": "corpus_span_corruption", "noise_density": 0.5, "mean_noise_span_length": 10}``; the key
    ``objective`` (an objective name) may replace ``task``.
    """
    if config.get("task"):
        task = TaskRegistry.get(str(config["task"]))
    elif config.get("objective"):
        names = {v: k for k, v in CORPUS_TASKS.items()}
        if config["objective"] not in names:
            raise TaskError(f"objective config: objective {config['objective']!r} is not one of {sorted(names)}.")
        task = TaskRegistry.get(names[config["objective"]])
    else:
        raise TaskError("objective config: give `task` (a corpus_* task) or `objective` (an objective name).")
    options = objective_options(config)
    return task.with_options(**options) if options else task


_ABBREVIATIONS = {"noise_density": "nd", "mean_noise_span_length": "msl", "mask_prob": "mp", "random_prob": "rp"}


def variant_name(base: str, **options: Any) -> str:
    """Registry name of a hyper-parameter variant: ``corpus_span_corruption_nd0.5_msl10``."""
    parts = [f"{_ABBREVIATIONS.get(k, k)}{v:g}" if isinstance(v, (int, float)) else f"{_ABBREVIATIONS.get(k, k)}{v}"
             for k, v in sorted(options.items())]
    return "_".join([base, *parts])


def register_variant(base: str, *, replace: bool = False, **options: Any) -> Task:
    """Register ``TaskRegistry.get(base).with_options(**options)`` under :func:`variant_name` and return it.

    Lets configs that name tasks (mixtures, ``experiment_options.corpus_task``) use any hyper-parameter
    setting; registering the same variant again returns the registered task unless ``replace``.
    """
    name = variant_name(base, **options)
    if name in TaskRegistry.names() and not replace:
        return TaskRegistry.get(name)
    task = TaskRegistry.get(base).with_options(**options)
    task.name = name
    return TaskRegistry.add(task, replace=True)


for _task_name, _objective in CORPUS_TASKS.items():
    TaskRegistry.add(corpus_task(_objective, name=_task_name), replace=True)

#: The T5 paper's sweeps (Tables 6 and 7) as named tasks, next to the defaults (15 %, mean span 3).
PAPER_VARIANTS = [
    *(("corpus_replace_spans", {"noise_density": d}) for d in (0.1, 0.25, 0.5)),
    *(("corpus_span_corruption", {"mean_noise_span_length": m}) for m in (2.0, 5.0, 10.0)),
]
for _base, _options in PAPER_VARIANTS:
    register_variant(_base, replace=True, **_options)
