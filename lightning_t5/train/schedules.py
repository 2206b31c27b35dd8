"""Learning-rate schedules: the multiplier of the base learning rate at each optimizer step.

`SCHEDULES` (the valid `optim.schedule` values) is derived from the table of implementations below, so the config
schema, the error messages and the code that runs can never disagree about which schedules exist.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

__all__ = ["SCHEDULES", "lr_lambda"]


def _warmup(step: int, warmup: int) -> float:
    return (step + 1) / warmup


def _constant(step: int, warmup: int, total: int, min_lr_ratio: float) -> float:
    """Linear warm-up over `warmup` steps (if any), then 1."""
    return min(1.0, _warmup(step, warmup)) if warmup else 1.0


def _inverse_sqrt(step: int, warmup: int, total: int, min_lr_ratio: float) -> float:
    """T5: constant during warm-up, then sqrt(warmup / step) (lr 0.01 and warm-up 1e4 give 1/sqrt(max(step, 1e4)))."""
    return math.sqrt(max(warmup, 1) / max(step + 1, warmup, 1))


def _cosine(step: int, warmup: int, total: int, min_lr_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio` at `total` steps."""
    if warmup and step < warmup:
        return _warmup(step, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _linear(step: int, warmup: int, total: int, min_lr_ratio: float) -> float:
    """Linear warm-up, then linear decay to 0 at `total` steps."""
    if warmup and step < warmup:
        return _warmup(step, warmup)
    return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))


_IMPLEMENTATIONS: dict[str, Callable[..., float]] = {
    "constant": _constant, "inverse_sqrt": _inverse_sqrt, "cosine": _cosine, "linear": _linear,
}
SCHEDULES: tuple[str, ...] = tuple(_IMPLEMENTATIONS)


def lr_lambda(schedule: str, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
              ) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step `step` (0-based, as LambdaLR counts)."""
    if schedule not in _IMPLEMENTATIONS:
        raise ValueError(f"optim.schedule={schedule!r} is not valid; choose one of: {', '.join(SCHEDULES)}.")
    return functools.partial(_IMPLEMENTATIONS[schedule], warmup=max(int(warmup_steps), 0),
                             total=max(int(total_steps), 1), min_lr_ratio=float(min_lr_ratio))
