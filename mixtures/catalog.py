"""Catalog mixtures mirroring the t5 library's ``t5/data/mixtures.py``, plus a small ``default`` for CPU runs
(and ``default_with_corpus``, the same tasks with the English corpus), and shipped-data subsets (``glue_local``,
``super_glue_local``).

Task names are resolved when a mixture is first used (never at import). Differences from T5, on purpose:

* GLUE/SuperGLUE are rated by their official training-set sizes (T5's weight mapping) under
  ``mixing.size_source=auto|official``; ``mixing.size_source=actual`` rates by the rows we really have.
  T5 passes those sizes as fixed rates, so K and T do not touch them there; here they are *sizes*, so
  ``mixing.max_examples``/``mixing.temperature`` apply to every task alike (identical to T5 whenever K is
  above 392,702, the MNLI size, e.g. the paper's K = 2^19 or 2^21).
* A catalog mixture always means what the paper means: all its tasks, on every machine. A task whose data is not
  here (it would be read from the Hugging Face Hub, and ``LIGHTNING_T5_SOURCE=hub`` was not set) stops any use of
  the mixture when it is resolved, before a model is built, with an error naming every such task and both ways on:
  the hub (``LIGHTNING_T5_SOURCE=hub``, with network access) or a mixture of the shipped data (``glue_local``...).
  Inside :func:`describing` (``python -m mixtures show``) the mixture resolves anyway and is rated by the official
  sizes, so it can be inspected offline.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Callable, Iterator

from .errors import MixtureError
from .mixture import Mixture, MixtureRegistry
from .rates import MixingConfig, Scaled

log = logging.getLogger(__name__)

# Official training-set sizes (T5's glue_utils weight mappings); eval-only sets (weight 0) are not listed.
GLUE_SIZES = {
    "glue_cola": 8_551, "glue_sst2": 67_349, "glue_mrpc": 3_668, "glue_qqp": 363_849, "glue_stsb": 5_749,
    "glue_mnli": 392_702, "glue_qnli": 104_743, "glue_rte": 2_490,
}
SUPER_GLUE_SIZES = {
    "super_glue_boolq": 9_427, "super_glue_cb": 250, "super_glue_copa": 400, "super_glue_multirc": 27_243,
    "super_glue_record": 138_854, "super_glue_rte": 2_490, "super_glue_wic": 5_428, "super_glue_wsc": 259,
}
OFFICIAL_SIZES = {**GLUE_SIZES, **SUPER_GLUE_SIZES}
OTHER_SUPERVISED = ["cnn_dailymail", "squad", "wmt_ende", "wmt_enfr", "wmt_enro"]
SUPERVISED = list(GLUE_SIZES) + list(SUPER_GLUE_SIZES) + OTHER_SUPERVISED
CORPUS = "corpus_span_corruption"
LARGE_SUPERVISED = ["wmt_ende", "wmt_enfr", "cnn_dailymail"]
DEFAULT_TASKS = ["glue_sst2", "glue_cola", "glue_mrpc", "glue_stsb", "glue_rte", "super_glue_cb", "super_glue_copa"]
#: The GLUE / SuperGLUE tasks whose rows ship in data/ (a fixed list: what a mixture means never depends on the disk).
GLUE_LOCAL = ["glue_cola", "glue_sst2", "glue_mrpc", "glue_stsb", "glue_rte"]
SUPER_GLUE_LOCAL = ["super_glue_boolq", "super_glue_cb", "super_glue_copa", "super_glue_rte"]
#: T5's ``rate_unsupervised`` default.
T5_UNSUPERVISED_RATE = 1e6
SOURCE_ENV = "LIGHTNING_T5_SOURCE"

_DESCRIBING: contextvars.ContextVar[bool] = contextvars.ContextVar("catalog_describing", default=False)


@contextlib.contextmanager
def describing() -> Iterator[None]:
    """Resolve catalog mixtures whose tasks have no data here, to describe them (``python -m mixtures show``)."""
    token = _DESCRIBING.set(True)
    try:
        yield
    finally:
        _DESCRIBING.reset(token)


def hub_selected() -> bool:
    return os.environ.get(SOURCE_ENV, "").lower() == "hub"


def missing_data(mixture: Mixture) -> dict[str, str]:
    """Tasks of ``mixture`` (through sub-mixtures) that have no data on this machine: task -> where it would come
    from. A task's data is missing when loading it would go to the Hugging Face Hub and the hub was not chosen with
    ``LIGHTNING_T5_SOURCE=hub`` (offline, that load fails; online, a catalog mixture still never switches a task to
    the hub behind the user's back)."""
    if hub_selected():
        return {}
    with describing():
        tasks = mixture.tasks
    return {t.name: t.source.describe() for t in tasks
            if getattr(getattr(t, "source", None), "reads_hub", False)}


class CatalogMixture(Mixture):
    """A catalog mixture: all of its tasks or an error (see the module docstring). ``local`` names a mixture of the
    shipped data to suggest when some task's data is missing."""

    def __init__(self, name: str, members: Callable[[], list], *, local: str | None = None, **kwargs) -> None:
        super().__init__(name, members, **kwargs)
        self.local = local

    def members(self) -> list:
        out = super().members()
        if not _DESCRIBING.get():
            missing = missing_data(self)
            if missing:
                raise MixtureError(missing_data_message(self, missing))
        return out

    def sizes_for_rating(self, split="train", mixing=None, sequence_length=None) -> dict[str, float]:
        """As :meth:`Mixture.sizes_for_rating`; a task without data here can only be rated by its official size."""
        missing = missing_data(self)
        cfg = MixingConfig.from_dict(mixing).merged_over(self.defaults)
        unrated = [n for n in missing if cfg.size_source == "actual" or n not in self._all_sizes()]
        if unrated:
            raise MixtureError(missing_data_message(self, {n: missing[n] for n in unrated},
                                                    "rating them needs their rows (no official size, or "
                                                    "mixing.size_source=actual)"))
        return super().sizes_for_rating(split, mixing, sequence_length)


def missing_data_message(mixture: Mixture, missing: dict[str, str], why: str = "") -> str:
    """Names every task without data here and both ways on: the hub, or a mixture of the shipped data."""
    local = getattr(mixture, "local", None)
    with describing():
        total = len(mixture.tasks)
        subset = (f"`mixture={local}` ({', '.join(MixtureRegistry.get(local).task_names)})" if local
                  else "a mixture of the shipped tasks (`glue_local`, `super_glue_local`, `default`, "
                       "`default_with_corpus`; `python -m mixtures list`)")
    return (f"mixture {mixture.name!r} has {total} tasks and {len(missing)} of them have no data on this machine: "
            f"{', '.join(f'{n} ({src})' for n, src in missing.items())}{'; ' + why if why else ''}. "
            f"{'A catalog mixture always means all its tasks. ' if isinstance(mixture, CatalogMixture) else ''}"
            f"Either read the catalog tasks from the Hugging Face Hub (needs network access): "
            f"`{SOURCE_ENV}=hub python train.py mixture={mixture.name} ...`, or train on the data shipped in data/: "
            f"{subset}.")


def _lazy(names: Callable[[], list[str]], rate: Callable[[str], object] = lambda n: None):
    return lambda: [(n, rate(n)) if rate(n) is not None else n for n in names()]


def _dedupe(name: str):
    """T5's ``_dedupe``: GLUE RTE duplicates SuperGLUE RTE, so it gets half the rate."""
    return Scaled(0.5) if name == "glue_rte" else None


def _add(name: str, names: Callable[[], list[str]], *, rate=lambda n: None, defaults=None, description="",
         local: str | None = None) -> None:
    MixtureRegistry.add(CatalogMixture(name, _lazy(names, rate), defaults=defaults, sizes=OFFICIAL_SIZES,
                                       description=description, local=local), replace=True)


def _leave_one_out(name: str) -> Mixture | None:
    prefix = "leave_one_out_"
    if not name.startswith(prefix):
        return None
    left = name[len(prefix):]
    groups = {"glue": set(GLUE_SIZES), "super_glue": set(SUPER_GLUE_SIZES)}
    drop = groups.get(left, {left})
    if left not in groups:
        try:
            from tasks import TaskRegistry
            task = TaskRegistry.get(left)
        except Exception:
            return None
        if not getattr(task, "supervised", True):
            return None
    pool = lambda: [t for t in _all_supervised_names() if t not in drop] + [CORPUS]  # noqa: E731
    return CatalogMixture(name, _lazy(pool, _dedupe), sizes=OFFICIAL_SIZES,
                          description=f"all_proportional without {left} (T5 leave-one-out)")


def _all_supervised_names() -> list[str]:
    """T5's supervised list plus any other supervised task registered (user tasks join leave-one-out too)."""
    try:
        from tasks import TaskRegistry
        extra = [n for n in TaskRegistry.names() if n not in SUPERVISED and not n.startswith("corpus_")
                 and getattr(TaskRegistry.get(n), "supervised", True) and n not in _EVAL_ONLY]
    except Exception:
        extra = []
    return SUPERVISED + extra


_EVAL_ONLY = {"glue_ax", "glue_mnli_matched", "glue_mnli_mismatched", "glue_wnli", "super_glue_axb", "super_glue_axg"}


def _leave_one_out_names() -> list[str]:
    from tasks import TaskRegistry
    known = set(TaskRegistry.names())
    return ["leave_one_out_glue", "leave_one_out_super_glue"] + [
        f"leave_one_out_{n}" for n in _all_supervised_names() if n in known]


def register() -> None:
    _add("glue", lambda: list(GLUE_SIZES), description="GLUE, proportional to the official training-set sizes",
         local="glue_local")
    _add("super_glue", lambda: list(SUPER_GLUE_SIZES),
         description="SuperGLUE, proportional to the official training-set sizes", local="super_glue_local")
    _add("glue_local", lambda: list(GLUE_LOCAL),
         description="the 5 GLUE tasks shipped in data/ (no MNLI, QQP, QNLI), rated as in glue (official sizes)")
    _add("super_glue_local", lambda: list(SUPER_GLUE_LOCAL),
         description="the 4 SuperGLUE tasks shipped in data/ (BoolQ, CB, COPA, RTE), rated as in super_glue")
    _add("all_supervised", _all_supervised_names, description="every supervised task, examples-proportional")
    _add("all_equal", lambda: _all_supervised_names() + [CORPUS], defaults=MixingConfig(rate="equal"),
         description="every supervised task and the corpus, equal rates")
    _add("all_proportional", lambda: _all_supervised_names() + [CORPUS], rate=_dedupe,
         description="supervised + corpus, proportional (corpus windows capped at K; GLUE RTE halved)")
    _add("all_mix", lambda: _all_supervised_names() + [CORPUS], rate=_dedupe,
         defaults=MixingConfig(unsupervised_rate=T5_UNSUPERVISED_RATE),
         description="supervised proportional with K + corpus at a fixed rate (T5 rate_unsupervised=1e6)")
    _add("en_mix", lambda: list(GLUE_SIZES) + list(SUPER_GLUE_SIZES) + ["squad", CORPUS],
         defaults=MixingConfig(unsupervised_rate=T5_UNSUPERVISED_RATE),
         description="T5 en_mix: GLUE, SuperGLUE, SQuAD proportional + corpus at a fixed rate")
    _add("large_supervised_equal", lambda: list(LARGE_SUPERVISED), defaults=MixingConfig(rate="equal"),
         description="WMT en-de, en-fr and CNN/DM, equal rates")
    _add("large_supervised_proportional", lambda: list(LARGE_SUPERVISED),
         description="WMT en-de, en-fr and CNN/DM, examples-proportional")
    # `python train.py` trains on `default`. It has no corpus on purpose: in a few hundred steps from scratch the
    # corpus's 32-token span-corruption targets take most of the (token-averaged) loss and SST-2's one-token labels
    # are not learned (measured: 51.4 % = majority class with the corpus, 75.0 % without, 500 steps, full split).
    _add("default", lambda: list(DEFAULT_TASKS),
         defaults=MixingConfig(rate="proportional", max_examples=4096, size_source="actual"),
         description="small CPU default: GLUE/SuperGLUE subset, examples-proportional (actual sizes, K=4096)")
    _add("default_with_corpus", lambda: DEFAULT_TASKS + [CORPUS],
         defaults=MixingConfig(rate="proportional", max_examples=4096, unsupervised_rate=4096, size_source="actual"),
         description="the default subset + the English corpus at a fixed rate (T5's multi-task training)")
    MixtureRegistry.add_dynamic(_leave_one_out_names, _leave_one_out)


register()
