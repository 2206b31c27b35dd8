"""`Mixture` and `MixtureRegistry`: seqio-shaped, with sub-mixtures and lazily resolved task names.

A mixture is a list of members, each a task (by name or object) or a sub-mixture, optionally with a rate:
``Mixture("m", ["glue_sst2", ("glue_rte", Scaled(0.5)), (other_mixture, 2.0)])``. Task names are resolved
through ``tasks.TaskRegistry`` only when the mixture is used (``tasks``/``rates``/``validate``), so importing
the catalog never fails because a task is missing; an unknown name then raises a :class:`MixtureError`
naming the mixture and close matches.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import MixtureError, suggest
from .rates import MixingConfig, RateSpec, leaf_rate, unimax_allocation

log = logging.getLogger(__name__)

Member = Any  # str | Task | Mixture | tuple[str | Task | Mixture, RateSpec]


def _resolve_task(name: str, mixture: str) -> Any:
    try:
        from tasks import TaskRegistry
    except ImportError as e:  # pragma: no cover - tasks package broken
        raise MixtureError(f"mixture {mixture!r} names task {name!r} but the tasks package cannot be imported: {e}")
    try:
        return TaskRegistry.get(name)
    except Exception as e:  # TaskError (a ValueError) or KeyError, with its own suggestions
        try:
            known = TaskRegistry.names()
        except Exception:
            known = []
        raise MixtureError(f"mixture {mixture!r} uses unknown task {name!r}." + suggest(name, known)
                           + f" ({type(e).__name__}: {e})") from e


def _num_examples(task: Any, split: str, sequence_length: Mapping[str, int] | None) -> int:
    """Rows of ``task.tokenized(split, sequence_length)`` (corpus window counts depend on the lengths)."""
    if sequence_length is not None:
        try:
            params = inspect.signature(task.num_examples).parameters.values()
        except (TypeError, ValueError):
            params = []
        # the contract's minimum is num_examples(split); tasks.Task also takes the sequence length
        if len(params) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params):
            return int(task.num_examples(split, sequence_length))
    return int(task.num_examples(split))



class Mixture:
    """A weighted list of tasks and sub-mixtures.

    Args:
        name: registry name.
        members: list of members (see module doc), or a zero-argument callable returning that list (evaluated on
            first use; the catalog uses this to select tasks from the task registry lazily).
        defaults: the mixture's own mixing defaults (``MixingConfig`` or mapping); user ``mixing.*`` fields that are
            set override them.
        sizes: fixed training-set sizes used for rating under ``size_source`` ``official``/``auto`` (T5 rates GLUE and
            SuperGLUE by the official sizes).
        description: one line for ``python -m mixtures list``.
        default_rate: seqio's ``default_rate``: the rate (number, callable of the task, :class:`Scaled`) of members
            given without one; ``None`` lets ``mixing.*`` decide.
    """

    def __init__(self, name: str, members: Sequence[Member] | Callable[[], Sequence[Member]], *,
                 defaults: MixingConfig | Mapping[str, Any] | None = None,
                 sizes: Mapping[str, int] | None = None, description: str = "",
                 default_rate: RateSpec = None) -> None:
        if not isinstance(name, str) or not name:
            raise MixtureError(f"a mixture needs a non-empty string name, got {name!r}.")
        self.name = name
        self._members_src = members
        self._members: list[tuple[Any, RateSpec]] | None = None
        self.defaults = MixingConfig.from_dict(defaults)
        self.sizes = dict(sizes or {})
        self.description = description
        self.default_rate = default_rate
        self._lock = threading.Lock()
        if not callable(members):
            self._check_members(members)

    # ----------------------------------------------------------------------------------------- members
    def _check_members(self, members: Sequence[Member]) -> None:
        if isinstance(members, (str, bytes)) or not isinstance(members, Iterable):
            raise MixtureError(f"mixture {self.name!r}: members must be a list of tasks/sub-mixtures, got {members!r}.")
        if len(list(members)) == 0:
            raise MixtureError(f"mixture {self.name!r} has no tasks.")

    def members(self) -> list[tuple[Any, RateSpec]]:
        """Resolved members: ``(Task | Mixture, rate spec)`` pairs (task names looked up in the registry)."""
        with self._lock:
            if self._members is None:
                src = self._members_src() if callable(self._members_src) else self._members_src
                self._check_members(src)
                out: list[tuple[Any, RateSpec]] = []
                for m in src:
                    spec: RateSpec = self.default_rate
                    if isinstance(m, tuple):
                        if len(m) != 2:
                            raise MixtureError(f"mixture {self.name!r}: member {m!r} must be (task_or_mixture, rate).")
                        m, spec = m
                    if isinstance(m, str):
                        m = MixtureRegistry._get_or_none(m) or _resolve_task(m, self.name)
                    if not isinstance(m, Mixture) and not hasattr(m, "tokenized"):
                        raise MixtureError(f"mixture {self.name!r}: member {m!r} is neither a task nor a mixture.")
                    if isinstance(m, Mixture) and (m is self or self.name in m._ancestors_names()):
                        raise MixtureError(f"mixture {self.name!r} contains itself.")
                    out.append((m, spec))
                self._members = out
            return self._members

    def _ancestors_names(self) -> set[str]:
        names: set[str] = set()
        for m, _ in self.members():
            if isinstance(m, Mixture):
                names.add(m.name)
                names |= m._ancestors_names()
        return names

    @property
    def tasks(self) -> list[Any]:
        """Leaf tasks, flattened through sub-mixtures, in first-seen order, without duplicates."""
        seen: dict[str, Any] = {}
        for m, _ in self.members():
            for t in (m.tasks if isinstance(m, Mixture) else [m]):
                seen.setdefault(t.name, t)
        return list(seen.values())

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def _all_sizes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m, _ in self.members():
            if isinstance(m, Mixture):
                out.update(m._all_sizes())
        out.update(self.sizes)
        return out

    # ------------------------------------------------------------------------------------------- rates
    def sizes_for_rating(self, split: str = "train", mixing: MixingConfig | Mapping | None = None,
                         sequence_length: Mapping[str, int] | None = None) -> dict[str, float]:
        """The size each task is rated by: the official size (``size_source`` auto/official) or the actual count
        (a corpus task's windows at ``sequence_length``, the length training uses, when given)."""
        cfg = MixingConfig.from_dict(mixing).merged_over(self.defaults)
        official = self._all_sizes()
        source = "actual" if cfg.rate == "unimax" else cfg.size_source or "auto"
        out = {}
        for t in self.tasks:
            if source != "actual" and t.name in official:
                out[t.name] = float(official[t.name])
            else:
                out[t.name] = float(_num_examples(t, split, sequence_length))
        return out

    def _raw(self, split: str, cfg: MixingConfig, sizes: Mapping[str, float]) -> dict[str, float]:
        """Unnormalized leaf weights: a sub-mixture's rate times each task's share inside it (UniMax: each task's
        allocation of the budget, in examples, over the flattened leaf tasks)."""
        if cfg.rate == "unimax":
            if cfg.unimax_budget is None:
                raise MixtureError(f"mixture {self.name!r}: mixing.rate=unimax needs the training budget in examples "
                                   "(mixing.unimax_budget); a run fills it in from trainer.max_steps, and "
                                   "`python -m mixtures show` from the same config (trainer.max_steps=N).")
            return unimax_allocation(sizes, float(cfg.unimax_budget), float(cfg.unimax_max_epochs or 1.0))
        out: dict[str, float] = {}
        for m, spec in self.members():
            if isinstance(m, Mixture):
                inner = m._raw(split, cfg.merged_over(m.defaults) if cfg is not None else m.defaults, sizes)
                total = sum(inner.values())
                sub_size = sum(sizes[n] for n in inner)
                sub_rate = leaf_rate(_SubMixtureAsTask(m), sub_size, spec, cfg)
                for n, r in inner.items():
                    out[n] = out.get(n, 0.0) + (sub_rate * r / total if total > 0 else 0.0)
            else:
                out[m.name] = out.get(m.name, 0.0) + leaf_rate(m, sizes[m.name], spec, cfg)
        return out

    def raw_rates(self, split: str = "train", mixing: MixingConfig | Mapping | None = None,
                  sequence_length: Mapping[str, int] | None = None) -> dict[str, float]:
        """Unnormalized rates (seqio's rate values) at step 0, before normalization."""
        cfg = MixingConfig.from_dict(mixing).merged_over(self.defaults)
        return self._raw(split, cfg, self.sizes_for_rating(split, cfg, sequence_length))

    def _shares(self, split: str, cfg: MixingConfig, sequence_length: Mapping[str, int] | None = None
                ) -> dict[str, float]:
        if cfg.weights:
            names = self.task_names
            unknown = [k for k in cfg.weights if k not in names]
            if unknown:
                hints = "".join(suggest(k, names) for k in unknown)
                raise MixtureError(f"mixing.weights names task(s) {unknown} that are not in mixture {self.name!r} "
                                   f"(its tasks: {', '.join(names)}).{hints}")
        sizes = self.sizes_for_rating(split, cfg, sequence_length)
        raw = self._raw(split, cfg, sizes)
        bad = {n: r for n, r in raw.items() if not (r >= 0 and math.isfinite(r))}
        if bad:
            raise MixtureError(f"mixture {self.name!r}: invalid rates {bad} (must be non-negative and finite).")
        total = math.fsum(raw.values())
        if total <= 0:
            raise MixtureError(f"mixture {self.name!r}: all rates are zero for split {split!r} under mixing "
                               f"{cfg.to_dict()}; at least one task needs a positive rate.")
        return {n: r / total for n, r in raw.items()}

    def rates(self, split: str = "train", mixing: MixingConfig | Mapping | None = None, step: int = 0,
              sequence_length: Mapping[str, int] | None = None) -> dict[str, float]:
        """Normalized sampling shares ``{task_name: share}`` (sum 1) at training ``step``.

        With ``mixing.schedule``, shares are interpolated linearly between this config's and ``schedule.to``'s.
        """
        cfg = MixingConfig.from_dict(mixing).merged_over(self.defaults)
        start = self._shares(split, cfg, sequence_length)
        if cfg.schedule is None:
            return start
        end = self._shares(split, cfg.schedule.to.merged_over(cfg), sequence_length)
        a = cfg.schedule.fraction(step)
        return {n: (1 - a) * start[n] + a * end[n] for n in start}

    def rate_schedule(self, split: str = "train", mixing: MixingConfig | Mapping | None = None,
                      sequence_length: Mapping[str, int] | None = None) -> Callable[[int], np.ndarray]:
        """A fast ``step -> probability vector`` (in ``task_names`` order) for the sampler's hot path."""
        cfg = MixingConfig.from_dict(mixing).merged_over(self.defaults)
        names = self.task_names
        start_sh = self._shares(split, cfg, sequence_length)
        start = np.array([start_sh[n] for n in names])
        if cfg.schedule is None:
            return _Shares(start)
        end_sh = self._shares(split, cfg.schedule.to.merged_over(cfg), sequence_length)
        return _Shares(start, np.array([end_sh[n] for n in names]), cfg.schedule)

    # --------------------------------------------------------------------------------------- validation
    def validate(self, split: str = "train", mixing: MixingConfig | Mapping | None = None,
                 sequence_length: Mapping[str, int] | None = None) -> None:
        """Check everything that would otherwise fail mid-training; raise :class:`MixtureError`.

        Unknown tasks, non-positive/all-zero rates, invalid K/T, tasks without examples in ``split``, and tasks
        with different vocabularies (compared by ``vocabulary.fingerprint``).
        """
        tasks = self.tasks
        if not tasks:
            raise MixtureError(f"mixture {self.name!r} has no tasks.")
        fps: dict[str, list[str]] = {}
        for t in tasks:
            fp = _fingerprint(t.vocabulary)
            fps.setdefault(fp, []).append(t.name)
        if len(fps) > 1:
            groups = "; ".join(f"{fp[:12]}: {', '.join(n)}" for fp, n in fps.items())
            raise MixtureError(f"mixture {self.name!r} mixes tasks with different vocabularies ({groups}); all tasks "
                               "of a mixture must share one vocabulary (compare vocabulary.fingerprint).")
        shares = self.rates(split, mixing, sequence_length=sequence_length)
        for t in tasks:
            n = _num_examples(t, split, sequence_length)
            if n <= 0 and shares[t.name] > 0:
                raise MixtureError(f"task {t.name!r} in mixture {self.name!r} has no examples in split {split!r}; "
                                   "give it rate 0 or remove it.")

    def __repr__(self) -> str:
        return f"Mixture({self.name!r})"

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for spawned dataloader workers: the lock is recreated and, once members are resolved, the
        (possibly lambda) member source is no longer needed."""
        state = dict(self.__dict__)
        state.pop("_lock", None)
        if state.get("_members") is not None:
            state["_members_src"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class _Shares:
    """``step -> probability vector``; a class (not a closure) so that datasets pickle for spawned workers."""

    def __init__(self, start: np.ndarray, end: np.ndarray | None = None, schedule: Any = None) -> None:
        self.start, self.end, self.schedule = start, end, schedule

    def __call__(self, step: int) -> np.ndarray:
        if self.schedule is None:
            return self.start
        a = self.schedule.fraction(step)
        return (1 - a) * self.start + a * self.end


class _SubMixtureAsTask:
    """Lets a rate spec callable receive a sub-mixture; sub-mixtures count as supervised."""

    supervised = True

    def __init__(self, mixture: Mixture) -> None:
        self.mixture = mixture
        self.name = mixture.name


def _fingerprint(vocab: Any) -> str:
    fp = getattr(vocab, "fingerprint", None)
    if fp is None:
        return f"id:{id(vocab)}"
    return fp() if callable(fp) else str(fp)


class MixtureRegistry:
    """Global name -> :class:`Mixture` registry (seqio-shaped).

    Besides registered mixtures, ``leave_one_out_<task>`` resolves for every supervised task of the task registry
    (generated on demand, so tasks registered later get one too).
    """

    _registry: dict[str, Mixture] = {}
    _dynamic: list[tuple[Callable[[], list[str]], Callable[[str], Mixture | None]]] = []

    @classmethod
    def add(cls, mixture_or_name: Mixture | str, members: Any = None, *, replace: bool = False,
            **kwargs: Any) -> Mixture:
        """``add(Mixture(...))`` or seqio-style ``add(name, members, **kwargs)``."""
        mix = mixture_or_name if isinstance(mixture_or_name, Mixture) else Mixture(mixture_or_name, members, **kwargs)
        if mix.name in cls._registry and not replace:
            raise MixtureError(f"mixture {mix.name!r} is already registered; pass replace=True or remove it first.")
        cls._registry[mix.name] = mix
        return mix

    @classmethod
    def add_dynamic(cls, names: Callable[[], list[str]], factory: Callable[[str], Mixture | None]) -> None:
        """Register a family of generated mixtures: ``names()`` lists them, ``factory(name)`` builds one or None."""
        cls._dynamic.append((names, factory))

    @classmethod
    def remove(cls, name: str) -> None:
        cls._registry.pop(name, None)

    @classmethod
    def _get_or_none(cls, name: str) -> Mixture | None:
        if name in cls._registry:
            return cls._registry[name]
        for _, factory in cls._dynamic:
            mix = factory(name)
            if mix is not None:
                cls._registry[name] = mix
                return mix
        return None

    @classmethod
    def get(cls, name: str) -> Mixture:
        mix = cls._get_or_none(name)
        if mix is None:
            raise MixtureError(f"unknown mixture {name!r}." + suggest(name, cls.names())
                               + " Run `python -m mixtures list` for all names.")
        return mix

    @classmethod
    def names(cls) -> list[str]:
        out = set(cls._registry)
        for names, _ in cls._dynamic:
            try:
                out.update(names())
            except Exception as e:  # the task registry may be unavailable; listing must not fail
                log.debug("dynamic mixture names unavailable: %s", e)
        return sorted(out)
