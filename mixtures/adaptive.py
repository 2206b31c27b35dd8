"""Adaptive mixing methods: rates that follow the training losses, as stages of the sampler (mixtures/stages.py).

A method is a small class registered by name, like a task (``AdaptiveRegistry.add("name", Class)`` in your module,
named with ``imports=[my_module]``, selected with ``mixing.adaptive=name``)::

    class AdaptiveMethod:
        def __init__(self, task_names, initial, **options)   # initial: the config's shares at step 0
        def observe(self, step, loss_sums, token_counts)     # every training step, summed over all ranks
        def propose(self, step)                               # at a block's end: shares of the block after next
        def state_dict(self) / load_state_dict(self, state)   # part of the checkpoint (exact resume)

``loss_sums[i]`` is the sum of the per-token training loss over task ``i``'s target tokens in the step and
``token_counts[i]`` the number of those tokens (0 when the step drew nothing from task ``i``). ``propose`` returns
shares in task order (or a ``{task: weight}`` mapping, normalised), or ``None`` to keep the current ones. Methods run
identically on every rank (their input is reduced across ranks), so they must be deterministic: no global random
state, no wall clock.

Built in: ``odm``, Online Data Mixing (Albalak et al. 2023), an EXP3 bandit whose reward is each task's smoothed
training loss.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import MixtureError, suggest
from .stages import AdaptiveController, Stages


class AdaptiveMethod:
    """Base class of an adaptive mixing method (see the module docstring). Keyword-only ``__init__`` parameters are
    its options (``mixing.adaptive_options.<name>=value``)."""

    def __init__(self, task_names: Sequence[str], initial: np.ndarray) -> None:
        self.task_names = list(task_names)
        self.initial = np.asarray(initial, dtype=np.float64)

    def observe(self, step: int, loss_sums: np.ndarray, token_counts: np.ndarray) -> None:
        raise NotImplementedError

    def propose(self, step: int) -> np.ndarray | Mapping[str, float] | None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class OnlineDataMixing(AdaptiveMethod):
    """ODM (Albalak et al. 2023, ``alon-albalak/online-data-mixing``, ``SmoothedMeanWeightUpdater``): EXP3 over
    tasks, rewarded by each task's smoothed training loss.

    At update ``t`` (the 1-based step; updates happen after ``warmup_steps`` steps, every ``update_every`` steps),
    for each task ``i`` the step drew from, with ``L_i`` its mean per-token loss in the step (over all ranks):

        R_i   <- smoothing * R_i + (1 - smoothing) * exp(L_i)           (R starts at 0)
        eps_t  = min(1/K, sqrt(ln K / (K t)))                            (eps_0 = 1/K)
        p_i    = (1 - K eps_t) * softmax(eps_{t-1} * R)_i + eps_t

    Until the first update the shares stay the config's (the paper's warm-up samples by the original weights). The
    softmax subtracts its maximum first (the paper's code exponentiates directly and overflows for a loss above
    ~6 at the first update with eps = 1/K); the result is the same. Defaults are those of the paper's training
    scripts: smoothing 0.5, 2,000 warm-up steps, an update every step. The sampler takes the current ``p`` once per
    block (``mixing.adaptive_every``).
    """

    def __init__(self, task_names: Sequence[str], initial: np.ndarray, *, smoothing: float = 0.5,
                 warmup_steps: int = 2000, update_every: int = 1) -> None:
        super().__init__(task_names, initial)
        if not (0.0 <= float(smoothing) < 1.0):
            raise MixtureError(f"mixing.adaptive_options.smoothing must be in [0, 1), got {smoothing!r}.")
        if int(warmup_steps) < 0 or int(update_every) < 1:
            raise MixtureError(f"mixing.adaptive_options: warmup_steps must be >= 0 and update_every >= 1, got "
                               f"{warmup_steps!r} and {update_every!r}.")
        self.smoothing, self.warmup_steps, self.update_every = float(smoothing), int(warmup_steps), int(update_every)
        k = len(self.task_names)
        self.reward = np.zeros(k)
        self.eps = 1.0 / k
        self.probs = self.initial / self.initial.sum()
        self.updates = 0

    def observe(self, step: int, loss_sums: np.ndarray, token_counts: np.ndarray) -> None:
        t = step + 1
        if t <= self.warmup_steps or t % self.update_every:
            return
        k = len(self.task_names)
        seen = token_counts > 0
        mean = np.divide(loss_sums, token_counts, out=np.zeros(k), where=seen)
        self.reward[seen] = self.smoothing * self.reward[seen] + (1.0 - self.smoothing) * np.exp(mean[seen])
        prev, self.eps = self.eps, min(1.0 / k, math.sqrt(math.log(k) / (k * t)))
        logits = prev * self.reward
        w = np.exp(logits - logits.max())
        self.probs = (1.0 - k * self.eps) * (w / w.sum()) + self.eps
        self.updates += 1

    def propose(self, step: int) -> np.ndarray | None:
        return self.probs.copy() if self.updates else None

    def state_dict(self) -> dict[str, Any]:
        return {"reward": self.reward.tolist(), "eps": self.eps, "probs": self.probs.tolist(),
                "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reward = np.asarray(state["reward"], dtype=np.float64)
        self.eps = float(state["eps"])
        self.probs = np.asarray(state["probs"], dtype=np.float64)
        self.updates = int(state["updates"])


class AdaptiveRegistry:
    """Global name -> adaptive method class (``mixing.adaptive=<name>``)."""

    _registry: dict[str, type] = {"odm": OnlineDataMixing}

    @classmethod
    def add(cls, name: str, method: type, *, replace: bool = False) -> type:
        if not isinstance(name, str) or not name:
            raise MixtureError(f"an adaptive method needs a non-empty string name, got {name!r}.")
        if not (inspect.isclass(method) and all(callable(getattr(method, m, None))
                                                for m in ("observe", "propose", "state_dict", "load_state_dict"))):
            raise MixtureError(f"adaptive method {name!r} must be a class with observe, propose, state_dict and "
                               "load_state_dict (subclass mixtures.AdaptiveMethod).")
        if name in cls._registry and cls._registry[name] is not method and not replace:
            raise MixtureError(f"adaptive method {name!r} is already registered; pass replace=True.")
        cls._registry[name] = method
        return method

    @classmethod
    def get(cls, name: str) -> type:
        if name not in cls._registry:
            raise MixtureError(f"mixing.adaptive={name!r} is not a registered adaptive method; registered: "
                               f"{', '.join(sorted(cls._registry))}.{suggest(name, cls._registry)} Register your own "
                               "with mixtures.AdaptiveRegistry.add in a module named by imports=[...].")
        return cls._registry[name]

    @classmethod
    def names(cls) -> list[str]:
        return sorted(cls._registry)


def method_options(method: type) -> dict[str, Any]:
    """The options of a method class: its keyword-only ``__init__`` parameters and their defaults."""
    params = inspect.signature(method.__init__).parameters.values()
    return {p.name: (None if p.default is p.empty else p.default) for p in params if p.kind is p.KEYWORD_ONLY}


def method_settings(mixing: Any) -> dict[str, Any]:
    """``mixing.adaptive_options`` without its null entries (null: the method's default; configs/config.yaml lists
    ODM's options as nulls so that ``mixing.adaptive_options.warmup_steps=100`` works on the command line)."""
    return {k: v for k, v in dict(getattr(mixing, "adaptive_options", None) or {}).items() if v is not None}


def check_adaptive(mixing: Any) -> None:
    """Stop before training on an unknown method or option (``mixing.adaptive``, ``mixing.adaptive_options``)."""
    name = getattr(mixing, "adaptive", None)
    options = method_settings(mixing)
    if name is None:
        if options:
            raise MixtureError("mixing.adaptive_options is set but mixing.adaptive is null (no method to use them).")
        return
    valid = method_options(AdaptiveRegistry.get(name))
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise MixtureError(f"mixing.adaptive_options {unknown} are not options of method {name!r}; its options: "
                           f"{', '.join(f'{k}={v!r}' for k, v in valid.items()) or 'none'}."
                           + "".join(suggest(k, valid) for k in unknown))


def build_controller(mixing: Any, stages: Stages) -> AdaptiveController | None:
    """The controller of ``mixing.adaptive`` over ``stages`` (None without a method)."""
    check_adaptive(mixing)
    if mixing.adaptive is None:
        return None
    options = method_settings(mixing)
    method = AdaptiveRegistry.get(mixing.adaptive)(stages.task_names, stages.base(0), **options)
    return AdaptiveController(method, mixing.adaptive, stages, int(mixing.adaptive_every), options)
