"""Catalog mixtures mirroring the t5 library's ``t5/data/mixtures.py``, plus a small ``default`` for CPU runs
(and ``default_with_corpus``, the same tasks with the English corpus).

Task names are resolved when a mixture is first used (never at import). Differences from T5, on purpose:

* GLUE/SuperGLUE are rated by their official training-set sizes (T5's weight mapping) under
  ``mixing.size_source=auto|official``; ``mixing.size_source=actual`` rates by the rows we really have.
  T5 passes those sizes as fixed rates, so K and T do not touch them there; here they are *sizes*, so
  ``mixing.max_examples``/``mixing.temperature`` apply to every task alike (identical to T5 whenever K is
  above 392,702, the MNLI size, e.g. the paper's K = 2^19 or 2^21).
* Tasks without data on this machine are left out of catalog mixtures: a task is included when its split has
  local rows (``task.num_rows(split)`` is known), or always when ``MIXTURES_INCLUDE_HUB_TASKS=1`` (with network
  access, to train on the full hub datasets). ``skipped(name)`` lists what was left out and why;
  ``python -m mixtures show`` prints it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

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
#: T5's ``rate_unsupervised`` default.
T5_UNSUPERVISED_RATE = 1e6

_SKIPPED: dict[str, dict[str, str]] = {}


def include_hub_tasks() -> bool:
    return os.environ.get("MIXTURES_INCLUDE_HUB_TASKS", "") not in ("", "0", "false", "False")


def skipped(mixture_name: str) -> dict[str, str]:
    """Tasks a catalog mixture left out (task -> reason), after it was first used."""
    return dict(_SKIPPED.get(mixture_name, {}))


def _available(names: list[str], mixture: str, split: str = "train") -> list[str]:
    from tasks import TaskRegistry

    known = set(TaskRegistry.names())
    out, skip = [], {}
    for n in names:
        if n not in known:
            skip[n] = "not registered"
            continue
        if include_hub_tasks():
            out.append(n)
            continue
        try:
            rows = TaskRegistry.get(n).num_rows(split)
        except Exception as e:  # a broken source must not break the listing of the others
            rows, reason = None, f"{type(e).__name__}: {e}"
        else:
            reason = "no local data (set MIXTURES_INCLUDE_HUB_TASKS=1 to load it from the hub)"
        if rows:
            out.append(n)
        else:
            skip[n] = reason
    _SKIPPED[mixture] = skip
    if skip:
        log.info("mixture %s: left out %s", mixture, ", ".join(f"{k} ({v})" for k, v in skip.items()))
    if not out:
        raise MixtureError(f"catalog mixture {mixture!r} has none of its tasks available here: "
                           + "; ".join(f"{k}: {v}" for k, v in skip.items()))
    return out


def _lazy(mixture: str, names: Callable[[], list[str]], rate: Callable[[str], object] = lambda n: None):
    return lambda: [(n, rate(n)) if rate(n) is not None else n for n in _available(names(), mixture)]


def _dedupe(name: str):
    """T5's ``_dedupe``: GLUE RTE duplicates SuperGLUE RTE, so it gets half the rate."""
    return Scaled(0.5) if name == "glue_rte" else None


def _add(name: str, names: Callable[[], list[str]], *, rate=lambda n: None, defaults=None, description="") -> None:
    MixtureRegistry.add(Mixture(name, _lazy(name, names, rate), defaults=defaults, sizes=OFFICIAL_SIZES,
                                description=description), replace=True)


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
    return Mixture(name, _lazy(name, pool, _dedupe), sizes=OFFICIAL_SIZES,
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
    _add("glue", lambda: list(GLUE_SIZES), description="GLUE, proportional to the official training-set sizes")
    _add("super_glue", lambda: list(SUPER_GLUE_SIZES),
         description="SuperGLUE, proportional to the official training-set sizes")
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
