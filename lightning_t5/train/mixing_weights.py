"""Mixing weights that a run or an experiment stage found (DoReMi's averaged weights, a search's chosen mixture),
written in the two forms people use them in.

* `weights.json` in the run or stage folder: `{"weights": {task: w}, "source": ..., "steps": ...}`, or several sets
  `{"sets": {key: {task: w}}}` (a search's sampled proxy mixtures). The experiment runner reads it to set a later
  stage's `mixing.weights` (`Stage.weights_from`); `read_weights` checks what it reads.
* `mixing/<name>.yaml`, a Hydra config of the `mixing` node (`# @package mixing`, `rate: explicit`, the weights), so
  a new run composes it like any config file:

      python train.py mixture=<mixture with these tasks> \\
          hydra.searchpath=[file://<folder holding mixing/>] +mixing=<name>

  (`+mixing=` appends the file after `configs/config.yaml`, so its rate and weights win over the defaults; other
  `mixing.*` flags on the same command line still apply on top.)

Both are written durably (temporary file, fsync, rename) so a killed writer never leaves half a file under the name.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from lightning_t5.errors import ConfigError
from tasks.utils import write_text_atomic

__all__ = ["WEIGHTS_FILE", "write_weights", "read_weights", "normalised"]

WEIGHTS_FILE = "weights.json"


def normalised(weights: Mapping[str, float]) -> dict[str, float]:
    """`weights` scaled to sum to 1 (what the sampler does with explicit rates; stored so files compare)."""
    total = sum(float(v) for v in weights.values())
    if not weights or not math.isfinite(total) or total <= 0 or any(float(v) < 0 for v in weights.values()):
        raise ConfigError(f"mixing weights must be non-negative with a positive sum, got {dict(weights)}")
    return {str(k): float(v) / total for k, v in weights.items()}


def _yaml(weights: Mapping[str, float], comment: str) -> str:
    lines = ["# @package mixing"] + [f"# {line}" for line in comment.splitlines() if line.strip()]
    lines += ["rate: explicit", "weights:"] + [f"  {k}: {float(v)!r}" for k, v in weights.items()]
    return "\n".join(lines) + "\n"


def write_weights(directory: str | os.PathLike, weights: Mapping[str, float] | None = None, *, name: str,
                  source: str, sets: Mapping[str, Mapping[str, float]] | None = None,
                  extra: Mapping[str, Any] | None = None) -> Path:
    """Write `weights.json` (and, for a single set, `mixing/<name>.yaml`) into `directory`; returns the JSON path.

    `weights` is one mixture (normalised here); `sets` several, by key (no YAML). `source` says where they come
    from (shown in both files); `extra` adds fields to the JSON (steps, the proxies' scores, ...)."""
    if (weights is None) == (sets is None):
        raise ValueError("write_weights takes either `weights` or `sets`")
    directory = Path(directory)
    payload: dict[str, Any] = {"source": source, **dict(extra or {})}
    if weights is not None:
        payload["weights"] = normalised(weights)
    else:
        payload["sets"] = {str(k): normalised(v) for k, v in (sets or {}).items()}
    path = directory / WEIGHTS_FILE
    write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    if weights is not None:
        usage = (f"use: python train.py mixture=<a mixture of these tasks> hydra.searchpath=[file://{directory}] "
                 f"+mixing={name}")
        write_text_atomic(directory / "mixing" / f"{name}.yaml", _yaml(payload["weights"], f"{source}\n{usage}"))
    return path


def read_weights(path: str | os.PathLike, key: str | None = None) -> dict[str, float]:
    """The weights in a `weights.json` (or the folder holding one): the single set, or the set `key`.

    Raises ConfigError naming the file when it is missing, unreadable, or lacks the set asked for."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read mixing weights from {path}: {err}") from None
    if key is None:
        weights = payload.get("weights") if isinstance(payload, dict) else None
    else:
        weights = ((payload.get("sets") or {}) if isinstance(payload, dict) else {}).get(key)
    if not isinstance(weights, dict) or not weights:
        what = "a 'weights' mapping" if key is None else f"the weight set {key!r} under 'sets'"
        raise ConfigError(f"{path} holds no {what}")
    return normalised(weights)
