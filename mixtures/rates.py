"""Mixing rates: the T5 paper's definitions, validated configuration and schedules.

The formula of seqio's ``mixing_rate_num_examples`` is reproduced exactly (same order of operations):
``n = num_examples * scale``; ``n = min(n, maximum)`` when a maximum (K) is set; ``n = n ** (1 / T)``
when a temperature is set. Rates are *not* normalized here; :meth:`mixtures.Mixture.rates` normalizes.

A :class:`MixingConfig` is what ``mixing.*`` on the command line fills in. Fields left at ``None`` take
the mixture's own default (e.g. ``all_equal`` defaults to ``rate="equal"``), so a catalog mixture keeps
its T5 meaning unless the user overrides it.

UniMax (Chung et al. 2023, umT5) is :func:`unimax_allocation`: a closed-form split of the run's budget of examples.
Rates that change during training (linear schedules, explicit stage lists, adaptive methods) are stages of
:mod:`mixtures.stages`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import MixtureError, suggest

RATE_NAMES = ("proportional", "temperature", "equal", "explicit", "unimax")
SIZE_SOURCES = ("auto", "official", "actual")


def rate_num_examples(num_examples: float, *, scale: float = 1.0, maximum: float | None = None,
                      temperature: float = 1.0) -> float:
    """seqio's ``mixing_rate_num_examples``: scale, then cap at ``maximum`` (K), then the ``1/T`` power.

    T5 paper: examples-proportional mixing is ``min(e_m, K)``; temperature-scaled mixing raises that to
    ``1/T`` (T=1 is proportional; large T tends to equal).
    """
    n = float(num_examples) * float(scale)
    if maximum is not None:
        n = min(n, float(maximum))
    if temperature != 1.0:
        n = n ** (1.0 / float(temperature))
    return n


def unimax_allocation(sizes: Mapping[str, float], budget: float, max_epochs: float = 1.0) -> dict[str, float]:
    """UniMax: the examples each task gets from a budget of ``budget`` examples.

    Tasks are visited in ascending size (ties by name); each gets an equal share of what is left of the budget,
    capped at ``max_epochs`` passes over its own data (``max_epochs * size``); what a capped task leaves goes to the
    larger tasks after it. When every task is capped the allocations sum to less than the budget (normalising them
    then repeats every task more than ``max_epochs`` times; ``mixing.max_passes`` guards the run).
    """
    if not (budget > 0 and math.isfinite(budget)):
        raise MixtureError(f"UniMax needs a positive training budget (examples), got {budget!r}.")
    if not (max_epochs > 0 and math.isfinite(max_epochs)):
        raise MixtureError(f"mixing.unimax_max_epochs must be a positive number, got {max_epochs!r}.")
    order = sorted(sizes, key=lambda name: (float(sizes[name]), name))
    remaining, out = float(budget), {}
    for i, name in enumerate(order):
        fair = remaining / (len(order) - i)
        out[name] = min(fair, float(max_epochs) * float(sizes[name]))
        remaining -= out[name]
    return {name: out[name] for name in sizes}


@dataclasses.dataclass(frozen=True)
class Scaled:
    """A member rate meaning "the configured rate function on ``size * factor``".

    T5's ``all_proportional`` halves GLUE RTE this way (it duplicates SuperGLUE RTE).
    """

    factor: float

    def __post_init__(self) -> None:
        if not (self.factor > 0 and math.isfinite(self.factor)):
            raise MixtureError(f"Scaled(factor={self.factor!r}): the scale of a task's size must be a positive number.")


@dataclasses.dataclass(frozen=True)
class RateSchedule:
    """Rates that change over training (jiant's time-dependent sampler).

    The shares move linearly from those of the enclosing config (at ``start_step`` and before) to those of
    ``to`` (at ``end_step`` and after). Shares (normalized rates) are interpolated, so the result always
    sums to one.
    """

    to: MixingConfig
    start_step: int = 0
    end_step: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.to, MixingConfig):
            raise MixtureError("mixing.schedule.to must be a MixingConfig (or a mapping of mixing fields).")
        if self.to.schedule is not None:
            raise MixtureError("mixing.schedule.to may not itself contain a schedule.")
        if not (isinstance(self.start_step, int) and isinstance(self.end_step, int)) or self.start_step < 0:
            raise MixtureError(f"mixing.schedule start_step/end_step must be non-negative integers, got "
                               f"{self.start_step!r}/{self.end_step!r}.")
        if self.end_step <= self.start_step:
            raise MixtureError(f"mixing.schedule.end_step ({self.end_step}) must be greater than start_step "
                               f"({self.start_step}).")

    def fraction(self, step: int) -> float:
        """How far along the schedule ``step`` is, in [0, 1]."""
        f = (step - self.start_step) / (self.end_step - self.start_step)
        return min(1.0, max(0.0, f))


@dataclasses.dataclass(frozen=True)
class MixingConfig:
    """How to turn a mixture's task sizes into sampling rates (``mixing.*`` in the run config).

    rate: ``proportional`` (min(n, K)), ``temperature`` (min(n, K)^(1/T)), ``equal``, ``explicit``
        (``weights``), ``unimax`` (:func:`unimax_allocation` of ``unimax_budget``), or ``None`` for the mixture's
        default.
    max_examples: K, the artificial data-set size limit (``None``: no cap).
    temperature: T (only with ``rate="temperature"``; T=1 is proportional).
    weights: ``{task_name: weight}`` for ``rate="explicit"``.
    unsupervised_rate: a fixed rate for tasks with ``supervised=False`` (T5's ``rate_unsupervised``: a corpus
        has no meaningful size); ``None`` treats them like the others (window count, capped at K).
    size_source: ``official`` uses the fixed training-set sizes a mixture declares (T5 rates GLUE/SuperGLUE by the
        official sizes even though our shipped data is smaller; tasks without a declared size use their actual
        count), ``actual`` uses ``task.num_examples(split)``, ``auto`` (default) behaves like ``official``.
    schedule: optional :class:`RateSchedule` to another config.
    max_passes: the most passes over any task's data a run may plan (default 100; ``None`` disables the check):
        training stops before it starts when its steps would repeat a task more often (silent repetition of a small
        corpus). A run guard, not a rate property: never taken from a mixture's defaults.
    unimax_max_epochs: UniMax's cap N: at most this many passes over a task's own data (``None``: 1).
    unimax_budget: UniMax's budget, in examples the run draws (all ranks). ``None`` in a run config: the run fills
        it in from its steps (``mixtures.shares.resolve_mixing``: steps x examples per step, measured on the
        run's own batches), so the cap holds for the examples training really draws. UniMax sizes are the rows
        the run reads (``size_source`` does not apply: the cap is about repeating the data).
    stages: a fixed stage list, ``[{"start_step": s, "weights": {task: w}}, ...]``: from ``start_step`` on, the
        shares are the normalised ``weights`` (before the first stage, the rates above). How an experiment hands a
        run the weights it found (DoReMi, a search, another run's stages: ``mixtures.stages.read_run_stages``).
    adaptive: the name of an adaptive method (``odm``, or one registered with ``mixtures.AdaptiveRegistry``): it
        observes each step's per-task training losses and appends a stage per block, one block late.
    adaptive_every: the block length in sampler steps: an adaptive method proposes a stage every this many steps,
        and every run logs each task's share per block.
    adaptive_options: keyword options of the adaptive method (ODM: ``smoothing``, ``warmup_steps``,
        ``update_every``).
    """

    rate: str | None = None
    max_examples: float | None = None
    temperature: float | None = None
    weights: Mapping[str, float] | None = None
    unsupervised_rate: float | None = None
    size_source: str | None = None
    schedule: RateSchedule | None = None
    max_passes: float | None = 100.0
    unimax_max_epochs: float | None = None
    unimax_budget: float | None = None
    stages: Sequence[Mapping[str, Any]] | None = None
    adaptive: str | None = None
    adaptive_every: int = 100
    adaptive_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and self.rate not in RATE_NAMES:
            raise MixtureError(f"mixing.rate={self.rate!r} is not a rate; valid: {', '.join(RATE_NAMES)}."
                               + suggest(str(self.rate), RATE_NAMES))
        if self.size_source is not None and self.size_source not in SIZE_SOURCES:
            raise MixtureError(f"mixing.size_source={self.size_source!r} is not valid; "
                               f"valid: {', '.join(SIZE_SOURCES)}.")
        if self.max_examples is not None and not _positive(self.max_examples):
            raise MixtureError(f"mixing.max_examples (K) must be a positive number or null, got {self.max_examples!r}.")
        if self.temperature is not None and not _positive(self.temperature):
            raise MixtureError(f"mixing.temperature (T) must be a positive number, got {self.temperature!r}.")
        if self.unsupervised_rate is not None and not _non_negative(self.unsupervised_rate):
            raise MixtureError(f"mixing.unsupervised_rate must be a non-negative number or null, "
                               f"got {self.unsupervised_rate!r}.")
        if self.weights is not None:
            if not isinstance(self.weights, Mapping):
                raise MixtureError(f"mixing.weights must map task names to weights, got {type(self.weights).__name__}.")
            bad = {k: v for k, v in self.weights.items() if not _non_negative(v)}
            if bad:
                raise MixtureError(f"mixing.weights has negative or non-numeric weights: {bad}.")
            if self.weights and not any(float(v) > 0 for v in self.weights.values()):
                raise MixtureError("mixing.weights are all zero: at least one task needs a positive weight.")
            object.__setattr__(self, "weights", dict(self.weights))
        if self.max_passes is not None and not _positive(self.max_passes):
            raise MixtureError("mixing.max_passes must be a positive number or null (no check), "
                               f"got {self.max_passes!r}.")
        if self.rate == "explicit" and self.weights is None:
            pass  # the mixture's own member rates may supply them; checked at rates() time
        for key in ("unimax_max_epochs", "unimax_budget"):
            value = getattr(self, key)
            if value is not None and not _positive(value):
                raise MixtureError(f"mixing.{key} must be a positive number or null, got {value!r}.")
        if not (isinstance(self.adaptive_every, int) and not isinstance(self.adaptive_every, bool)
                and self.adaptive_every > 0):
            raise MixtureError("mixing.adaptive_every must be a positive integer (steps), got "
                               f"{self.adaptive_every!r}.")
        if self.adaptive is not None and not (isinstance(self.adaptive, str) and self.adaptive):
            raise MixtureError(f"mixing.adaptive must be a method name or null, got {self.adaptive!r}.")
        if self.adaptive_options is not None:
            if not isinstance(self.adaptive_options, Mapping):
                raise MixtureError("mixing.adaptive_options must map option names to values, got "
                                   f"{type(self.adaptive_options).__name__}.")
            object.__setattr__(self, "adaptive_options", dict(self.adaptive_options))
        if self.stages is not None:
            object.__setattr__(self, "stages", _check_stages(self.stages))
            if self.adaptive is not None or self.schedule is not None:
                raise MixtureError("mixing.stages is a fixed stage list: it cannot be combined with "
                                   f"mixing.{'adaptive' if self.adaptive is not None else 'schedule'}.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | MixingConfig | None) -> MixingConfig:
        """Build from a plain/OmegaConf mapping; unknown keys are an error listing the valid ones."""
        if d is None:
            return cls()
        if isinstance(d, MixingConfig):
            return d
        if hasattr(d, "items") and not isinstance(d, dict):  # OmegaConf DictConfig
            try:
                from omegaconf import OmegaConf
                d = OmegaConf.to_container(d, resolve=True)  # type: ignore[arg-type]
            except Exception:  # pragma: no cover - not an OmegaConf object
                d = dict(d.items())
        d = dict(d)
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in valid]
        if unknown:
            hints = "".join(suggest(k, valid) for k in unknown)
            raise MixtureError(f"unknown mixing key(s) {unknown}; valid keys: {', '.join(valid)}.{hints}")
        sched = d.get("schedule")
        if sched is not None and not isinstance(sched, RateSchedule):
            sched = dict(sched)
            extra = [k for k in sched if k not in ("to", "start_step", "end_step")]
            if extra:
                raise MixtureError(f"unknown mixing.schedule key(s) {extra}; valid: to, start_step, end_step.")
            d["schedule"] = RateSchedule(to=cls.from_dict(sched.get("to") or {}),
                                         start_step=int(sched.get("start_step", 0)),
                                         end_step=int(sched.get("end_step", 1)))
        return cls(**d)

    def merged_over(self, defaults: MixingConfig | None) -> MixingConfig:
        """Fields set here win; ``None`` fields come from ``defaults`` (the mixture's defaults)."""
        if defaults is None:
            return self
        kw = {f.name: getattr(self, f.name) if getattr(self, f.name) is not None or f.name in _RUN_FIELDS
              else getattr(defaults, f.name) for f in dataclasses.fields(self)}
        return MixingConfig(**kw)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "schedule"}
        if self.schedule is not None:
            out["schedule"] = {"to": self.schedule.to.to_dict(), "start_step": self.schedule.start_step,
                               "end_step": self.schedule.end_step}
        else:
            out["schedule"] = None
        return out


#: Fields that belong to the run, never taken from a mixture's defaults.
_RUN_FIELDS = ("max_passes", "adaptive_every")


def _check_stages(stages: Any) -> list[dict[str, Any]]:
    """``mixing.stages`` as a list of ``{"start_step": int, "weights": {task: float}}`` in ascending start order."""
    if isinstance(stages, (str, bytes, Mapping)) or not isinstance(stages, Sequence):
        raise MixtureError("mixing.stages must be a list of {start_step, weights} entries, got "
                           f"{type(stages).__name__}.")
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(stages):
        if not isinstance(entry, Mapping) or set(entry) - {"start_step", "weights"} or "weights" not in entry:
            raise MixtureError(f"mixing.stages[{i}] must be {{start_step: int, weights: {{task: weight}}}}, got "
                               f"{entry!r}.")
        start = entry.get("start_step", 0)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise MixtureError(f"mixing.stages[{i}].start_step must be a non-negative integer, got {start!r}.")
        if out and start <= out[-1]["start_step"]:
            raise MixtureError(f"mixing.stages[{i}].start_step={start} must be greater than the previous stage's "
                               f"({out[-1]['start_step']}).")
        weights = entry["weights"]
        if not isinstance(weights, Mapping) or not weights:
            raise MixtureError(f"mixing.stages[{i}].weights must map task names to weights, got {weights!r}.")
        bad = {k: v for k, v in weights.items() if not _non_negative(v)}
        if bad or not any(float(v) > 0 for v in weights.values()):
            raise MixtureError(f"mixing.stages[{i}].weights need non-negative numbers, at least one positive; "
                               f"got {dict(weights)}.")
        out.append({"start_step": int(start), "weights": {str(k): float(v) for k, v in weights.items()}})
    return out


RateSpec = float | int | Scaled | Callable[[Any], float] | None


def leaf_rate(task: Any, size: float, spec: RateSpec, cfg: MixingConfig) -> float:
    """The unnormalized rate of one task under ``cfg``.

    ``spec`` is the member's own rate in the mixture: a number (fixed; wins over the config), a callable of
    the task (a user rate function), :class:`Scaled` (config rate on a scaled size), or ``None`` (config).
    ``size`` is the task's size for rating (official or actual number of examples).
    """
    name = getattr(task, "name", str(task))
    if callable(spec) and not isinstance(spec, Scaled):
        value = spec(task)
        if not _non_negative(value):
            raise MixtureError(f"rate function {getattr(spec, '__name__', spec)!r} returned {value!r} for task "
                               f"{name!r}; a rate must be a non-negative finite number.")
        return float(value)
    if spec is not None and not isinstance(spec, Scaled):
        if not _non_negative(spec):
            raise MixtureError(f"task {name!r} has rate {spec!r} in its mixture; rates must be non-negative numbers.")
        return float(spec)
    scale = spec.factor if isinstance(spec, Scaled) else 1.0
    rate = cfg.rate or "proportional"
    if not getattr(task, "supervised", True) and cfg.unsupervised_rate is not None and rate != "explicit":
        return float(cfg.unsupervised_rate)
    if rate == "equal":
        return 1.0
    if rate == "explicit":
        weights = cfg.weights or {}
        if name not in weights:
            raise MixtureError(f"mixing.rate=explicit but mixing.weights has no weight for task {name!r}; "
                               f"weights given for: {sorted(weights)}." + suggest(name, weights))
        return float(weights[name])
    temperature = (cfg.temperature or 1.0) if rate == "temperature" else 1.0
    return rate_num_examples(size, scale=scale, maximum=cfg.max_examples, temperature=temperature)


def _positive(x: Any) -> bool:
    try:
        return float(x) > 0 and math.isfinite(float(x)) and not isinstance(x, bool)
    except (TypeError, ValueError):
        return False


def _non_negative(x: Any) -> bool:
    try:
        return float(x) >= 0 and math.isfinite(float(x)) and not isinstance(x, bool)
    except (TypeError, ValueError):
        return False
