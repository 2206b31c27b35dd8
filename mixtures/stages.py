"""Rate stages: the sampler's shares over training as a list of stages, each a share vector from a step on.

Why stages (Levanter's block-deterministic mixture is the model): the batches of step ``s`` are drawn from a
generator keyed by ``(seed, pass, s)`` with the shares of the stage that holds ``s``, so the stream is a pure
function of ``(seed, stages, step)``. Rates that change during training then keep everything a static mixture
promises: the same batches on every rank, exact resume (the stage list is part of the sampler's state), and
batches built ahead of the training step.

    static rates              one stage at step 0
    linear schedule           a stage per step from mixing.schedule.start_step to end_step (computed on demand)
    mixing.stages             the listed stages (an experiment's fixed weights: DoReMi, a search, another run)
    mixing.adaptive           the rates above until an adaptive method appends a stage at each block boundary

An adaptive method sees each step's per-task training losses (reduced over ranks) through
:meth:`AdaptiveController.observe`. At the end of block ``k`` (steps ``[k E, (k+1) E)``, ``E`` =
``mixing.adaptive_every``) it proposes the shares of block ``k + 2``: one block of lag, so the sampler may plan up to
``E`` steps ahead of training without waiting for the losses of the step before. Every "step" here is a step of the
sampler: one loader batch (an optimizer step times ``trainer.accumulate_grad_batches``).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.utils import write_text_atomic

from .errors import MixtureError

#: Where a stage came from (``source``): the config's rates, ``mixing.stages``, or an adaptive method's name.
BASE, FIXED = "rates", "mixing.stages"
_STATE_VERSION = 1
#: The file a training run keeps its stages and per-block shares in (written by the Lightning callback).
RUN_FILE = "mixing.json"


@dataclass(frozen=True)
class Stage:
    """Shares (in task order, summing to 1) used from ``start`` on, and what produced them."""

    start: int
    shares: np.ndarray
    source: str

    def to_dict(self, task_names: Sequence[str]) -> dict[str, Any]:
        return {"start_step": int(self.start), "source": self.source,
                "shares": {n: float(v) for n, v in zip(task_names, self.shares.tolist())}}


def normalise(weights: Any, task_names: Sequence[str], what: str) -> np.ndarray:
    """A share vector in task order from a vector or a ``{task: weight}`` mapping (missing tasks weigh 0)."""
    if isinstance(weights, Mapping):
        unknown = [k for k in weights if k not in task_names]
        if unknown:
            raise MixtureError(f"{what} names task(s) {unknown} that are not in the mixture "
                               f"(its tasks: {', '.join(task_names)}).")
        vec = np.array([float(weights.get(n, 0.0)) for n in task_names], dtype=np.float64)
    else:
        vec = np.asarray(weights, dtype=np.float64).reshape(-1)
        if vec.shape != (len(task_names),):
            raise MixtureError(f"{what} has {vec.size} shares for a mixture of {len(task_names)} tasks.")
    if not np.all(np.isfinite(vec)) or np.any(vec < 0) or not vec.sum() > 0:
        raise MixtureError(f"{what} must be non-negative finite weights with a positive sum, got {vec.tolist()}.")
    return vec / vec.sum()


class Stages:
    """``step -> shares`` as a stage list (see the module docstring); the sampler's hot path calls it per step.

    ``base`` is the config's own ``step -> shares`` (one stage, or a linear schedule's stage per step); stages added
    with :meth:`append` (``mixing.stages`` and adaptive proposals) override it from their start on. With no added
    stage, ``stages(step)`` *is* ``base(step)``: static rates and schedules draw exactly what they always drew.
    """

    def __init__(self, task_names: Sequence[str], base: Callable[[int], np.ndarray], *, schedule: Any = None,
                 decided_until: int | None = None) -> None:
        self.task_names = list(task_names)
        self.base = base
        self.schedule = schedule  # the RateSchedule behind `base`, for listings
        self._starts: list[int] = []
        self._stages: list[Stage] = []
        #: steps < decided_until have known shares (adaptive runs); None: every step's shares are known
        self.decided_until = decided_until

    def __call__(self, step: int) -> np.ndarray:
        if self.decided_until is not None and step >= self.decided_until:
            raise MixtureError(f"the shares of step {step} are not decided yet (the adaptive method has decided the "
                               f"steps before {self.decided_until}); the sampler was asked to plan further ahead than "
                               "one block: raise mixing.adaptive_every above the loader's look-ahead "
                               "(2 x data.num_workers).")
        return self.latest(step)

    def latest(self, step: int) -> np.ndarray:
        """The shares of ``step`` as far as they are known now (reports; the sampler itself calls the object)."""
        i = bisect.bisect_right(self._starts, step) - 1
        return self._stages[i].shares if i >= 0 else self.base(step)

    @property
    def added(self) -> list[Stage]:
        """The stages added to the base rates (``mixing.stages`` and an adaptive method's proposals), in order."""
        return list(self._stages)

    def append(self, start: int, shares: Any, source: str) -> Stage:
        """Add a stage from ``start`` on; starts must increase."""
        if self._starts and start <= self._starts[-1]:
            raise MixtureError(f"a stage must start after the last one (step {self._starts[-1]}), got {start}.")
        stage = Stage(int(start), normalise(shares, self.task_names, f"the stage at step {start} ({source})"),
                      str(source))
        self._starts.append(stage.start)
        self._stages.append(stage)
        return stage

    def listing(self) -> list[dict[str, Any]]:
        """Every stage as ``{"start_step", "source", "shares"}`` (a schedule's ramp as one entry with ``"to"``)."""
        out = [{"start_step": 0, "source": BASE,
                "shares": {n: float(v) for n, v in zip(self.task_names, self.base(0).tolist())}}]
        sched = self.schedule
        if sched is not None:
            end = self.base(sched.end_step)
            out[0]["linear_until"] = int(sched.end_step)  # a stage per step from start_step to end_step
            out[0]["linear_from"] = int(sched.start_step)
            out[0]["to"] = {n: float(v) for n, v in zip(self.task_names, end.tolist())}
        if self._starts and self._starts[0] == 0:
            out = []
        return out + [s.to_dict(self.task_names) for s in self._stages]

    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "decided_until": self.decided_until,
                "stages": [[s.start, s.shares.tolist(), s.source] for s in self._stages]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the added stages with saved ones (the config's own ``mixing.stages`` must be among them)."""
        if state.get("version") != _STATE_VERSION:
            raise MixtureError(f"cannot load rate stages of version {state.get('version')} "
                               f"(expected {_STATE_VERSION}).")
        fixed = [(s.start, s.shares) for s in self._stages if s.source == FIXED]
        saved = [(int(a), np.asarray(b, np.float64), str(c)) for a, b, c in state["stages"]]
        saved_fixed = [(a, b) for a, b, c in saved if c == FIXED]
        if len(fixed) != len(saved_fixed) or any(a != c or not np.array_equal(b, d)
                                                 for (a, b), (c, d) in zip(fixed, saved_fixed)):
            raise MixtureError("cannot resume: mixing.stages differs from the stage list the checkpoint was trained "
                               "with; resume with the original mixing.stages, or start a new run.")
        self._starts = [a for a, _, _ in saved]
        self._stages = [Stage(a, b, c) for a, b, c in saved]
        self.decided_until = state.get("decided_until")


class AdaptiveController:
    """Feeds an adaptive method each step's per-task losses and turns its proposals into stages, one block late.

    ``every`` is the block length in sampler steps. Blocks 0 and 1 use the config's rates; at the end of block ``k``
    the method's proposal becomes the stage of block ``k + 2`` (``None`` keeps the current shares).
    """

    def __init__(self, method: Any, name: str, stages: Stages, every: int, options: Mapping[str, Any]) -> None:
        self.method, self.name, self.stages, self.every = method, name, stages, int(every)
        self.options = dict(options)
        self.next_step = 0
        stages.decided_until = 2 * self.every

    def observe(self, step: int, loss_sums: np.ndarray, token_counts: np.ndarray) -> Stage | None:
        """One training step's per-task loss sums and target-token counts (summed over every rank); returns the
        stage appended at a block boundary, if any. Steps must come in order (``step`` is 0-based)."""
        if step != self.next_step:
            raise MixtureError(f"adaptive mixing observed step {step} but expected step {self.next_step}: the "
                               "observations must follow the training steps one by one (resume restores the count).")
        sums = np.asarray(loss_sums, dtype=np.float64).reshape(-1)
        counts = np.asarray(token_counts, dtype=np.float64).reshape(-1)
        k = len(self.stages.task_names)
        if sums.shape != (k,) or counts.shape != (k,):
            raise MixtureError(f"adaptive mixing needs one loss sum and one token count per task ({k}), got "
                               f"{sums.shape} and {counts.shape}.")
        self.method.observe(step, sums, counts)
        self.next_step = step + 1
        if self.next_step % self.every:
            return None
        block = self.next_step // self.every - 1
        proposal = self.method.propose(step)
        stage = None
        if proposal is not None:
            stage = self.stages.append((block + 2) * self.every, proposal, self.name)
        self.stages.decided_until = (block + 3) * self.every
        return stage

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.name, "every": self.every, "options": self.options, "next_step": self.next_step,
                "state": self.method.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, now in (("method", self.name), ("every", self.every), ("options", self.options)):
            if state.get(key) != now:
                raise MixtureError(f"cannot resume: the checkpoint's adaptive mixing has {key}={state.get(key)!r}, "
                                   f"this run has {now!r} (mixing.adaptive, mixing.adaptive_every, "
                                   "mixing.adaptive_options must stay as they were).")
        self.next_step = int(state["next_step"])
        self.method.load_state_dict(state["state"])


def fixed_stages(stages: Stages, entries: Sequence[Mapping[str, Any]] | None) -> None:
    """Append ``mixing.stages`` entries (validated by ``MixingConfig``) to ``stages``."""
    for entry in entries or []:
        stages.append(int(entry["start_step"]), dict(entry["weights"]), FIXED)


# ---------------------------------------------------------------------------------------------- run files
def write_run_file(run_dir: str | Path, payload: Mapping[str, Any]) -> Path:
    """``run_dir/mixing.json`` (stages and per-block shares), written durably (`tasks.utils.write_text_atomic`: temp
    file, fsync, rename, fsync of the folder)."""
    path = Path(run_dir) / RUN_FILE
    write_text_atomic(path, json.dumps(payload, indent=1, allow_nan=False))
    return path


def read_run_file(run: str | Path) -> dict[str, Any]:
    """The stages of a training run: ``mixing.json`` of a run directory, or the sampler state in a ``.ckpt`` file."""
    path = Path(run)
    if path.is_dir() and (path / RUN_FILE).is_file():
        data = json.loads((path / RUN_FILE).read_text())
        if not isinstance(data, dict) or "stages" not in data or "task_names" not in data:
            raise MixtureError(f"{path / RUN_FILE} is not a mixing record (no stages / task_names).")
        return data
    if path.is_file() and path.suffix == ".ckpt":
        import torch

        state = _find_sampler_state(torch.load(path, map_location="cpu", weights_only=True))
        if state is None:
            raise MixtureError(f"{path}: no sampler state with rate stages in this checkpoint.")
        names = list(state["fingerprints"])
        rates = state.get("rates") or {}
        base = {"start_step": 0, "source": BASE, "shares": {n: float(rates[n][0]) for n in names if n in rates}}
        added = [Stage(int(a), np.asarray(b, np.float64), str(c)).to_dict(names)
                 for a, b, c in state["stages"]["stages"]]
        stages = ([] if added and added[0]["start_step"] == 0 else [base]) + added
        return {"task_names": names, "stages": stages, "adaptive": (state.get("adaptive") or {}).get("method"),
                "blocks": []}
    raise MixtureError(f"{path}: not a run directory with {RUN_FILE} nor a .ckpt file (sharded checkpoints: pass "
                       "the run directory).")


def read_run_stages(run: str | Path) -> list[dict[str, Any]]:
    """A run's stages as a ``mixing.stages`` list (``[{"start_step", "weights"}]``): replay them in another run with
    ``MixingConfig(stages=read_run_stages(run_dir))``."""
    return [{"start_step": int(s["start_step"]), "weights": dict(s["shares"])}
            for s in read_run_file(run)["stages"] if "linear_until" not in s]


def _find_sampler_state(node: Any, depth: int = 0) -> dict[str, Any] | None:
    if depth > 12:
        return None
    if isinstance(node, Mapping):
        if "stages" in node and "fingerprints" in node and isinstance(node.get("stages"), Mapping):
            return dict(node)
        if "ranks" in node and isinstance(node["ranks"], list) and node["ranks"]:
            return _find_sampler_state(node["ranks"][0], depth + 1)
        for value in node.values():
            found = _find_sampler_state(value, depth + 1)
            if found is not None:
                return found
    elif isinstance(node, (list, tuple)):
        for value in node:
            found = _find_sampler_state(value, depth + 1)
            if found is not None:
                return found
    return None


def format_stages(record: Mapping[str, Any], digits: int = 4) -> str:
    """A run's (or a config's) stages as a text table: one line per stage, one column per task."""
    names = list(record["task_names"])
    width = max([10, *(min(len(n), 24) for n in names)])
    lines = [f"{'from step':>10s} {'source':>14s} " + " ".join(f"{n[:24]:>{width}s}" for n in names)]
    for s in record["stages"]:
        cells = " ".join(f"{s['shares'].get(n, 0.0):>{width}.{digits}f}" for n in names)
        lines.append(f"{s['start_step']:>10d} {s['source']:>14s} {cells}")
        if "linear_until" in s:
            to = " ".join(f"{s['to'].get(n, 0.0):>{width}.{digits}f}" for n in names)
            lines.append(f"{s['linear_until']:>10d} {'(linear)':>14s} {to}")
            lines.append(f"{'':>10s} (a stage per step from step {s['linear_from']} to {s['linear_until']}: shares "
                         "move linearly)")
    if record.get("adaptive"):
        every = record.get("every")
        lines.append(f"(adaptive method {record['adaptive']!r}: a stage per block"
                     + (f" of {every} steps" if every else "") + ", proposed one block ahead)")
    return "\n".join(lines)

