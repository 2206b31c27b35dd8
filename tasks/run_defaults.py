"""The run's defaults for the command-line tools: ``configs/config.yaml`` plus ``key=value`` overrides.

Why here: ``python train.py``, ``python -m tasks cache`` and ``python -m mixtures show`` must agree on the sequence
lengths, batch size and steps (a corpus task's windows depend on the lengths; a cache built at other lengths is never
used by training). ``configs/config.yaml`` is the one place those defaults live; ``train.py`` composes it with Hydra
(and validates it against ``lightning_t5/train/schema.py``), and the tools read the same files here, without importing
``lightning_t5`` (dependencies point one way: lightning_t5 -> mixtures -> tasks).

The composition follows Hydra's rules for what the tools need: the config groups selected by the defaults list
(``trainer: cpu`` reads ``configs/trainer/cpu.yaml`` into ``trainer``; a ``# @package _global_`` file merges at the
top), ``config.yaml``'s own keys last (``_self_``), then the command line, parsed by Hydra's override grammar:
``group=name`` selects another file (``trainer=ddp``), ``a.b=value`` sets a key (``data.sequence_length.inputs=512``,
``mixing.stages=[{start_step:0,weights:{a:1}}]``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import TaskError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: Keys whose sub-keys are free-form here (validated by the code that reads them: MixingConfig, T5Config, ...).
_OPEN = ("mixing", "model", "objective", "experiment_options")


def _groups() -> list[str]:
    return sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir()) if CONFIG_DIR.is_dir() else []


def _group_file(group: str, name: str) -> tuple[DictConfig, bool]:
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        raise TaskError(f"{group}={name!r}: no {path}; choose one of: {', '.join(options)}.")
    text = path.read_text()
    node = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    return node, any("@package _global_" in line for line in text.splitlines()[:3])


def load_run_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed defaults of ``python train.py <overrides>`` (the keys the tools use; no schema validation)."""
    main = CONFIG_DIR / "config.yaml"
    if not main.is_file():
        raise TaskError(f"{main} is missing: the run defaults live there (run the tools from a checkout).")
    base = OmegaConf.load(main)
    groups = set(_groups())
    selected: dict[str, str | None] = {}
    for entry in base.get("defaults", []):
        if isinstance(entry, str) or entry is None:
            continue
        for key, value in entry.items():
            if not str(key).startswith("override") and key in groups:
                selected[str(key)] = None if value is None else str(value)
    settings: list[tuple[str, Any]] = []
    for key, value in _parse(overrides):
        if key in groups:
            selected[key] = None if value is None else str(value)
        elif key != "imports":  # imports: taken by tasks.pop_imports before this
            settings.append((key, value))
    cfg = OmegaConf.create({})
    for group, name in selected.items():
        if name is None:
            continue
        node, is_global = _group_file(group, name)
        cfg = OmegaConf.merge(cfg, node if is_global else {group: node})
    own = OmegaConf.masked_copy(base, [k for k in base if k not in ("defaults", "hydra")])
    cfg = OmegaConf.merge(cfg, own)
    for key, value in settings:
        _check_key(cfg, key)
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    assert isinstance(cfg, DictConfig)
    return cfg


def _parse(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``(key, value)`` of each override, parsed by Hydra's own override grammar (the syntax of train.py)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    out = []
    for override in overrides:
        if "=" not in override:
            raise TaskError(f"override {override!r} must look like key=value (e.g. data.sequence_length.inputs=512).")
        try:
            parsed = OverridesParser.create().parse_overrides([override])[0]
        except HydraException as err:
            raise TaskError(f"cannot parse override {override!r}: {str(err).splitlines()[0]}") from None
        out.append((parsed.key_or_group, parsed.value()))
    return out


def _check_key(cfg: DictConfig, key: str) -> None:
    """An unknown key stops with the valid keys of its node (free-form sections are checked by their readers)."""
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        if depth == 0 and part in _OPEN:
            return
        if not isinstance(node, DictConfig) or part not in node:
            valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
            close = difflib.get_close_matches(part, [str(v) for v in valid], n=3, cutoff=0.6)
            where = ".".join(parts[:depth]) or "<top level>"
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise TaskError(f"unknown config key {key!r}.{hint} Valid keys under {where}: "
                            f"{', '.join(map(str, valid))}.")
        node = node[part]


def run_sequence_length(cfg: DictConfig) -> dict[str, int]:
    """``data.sequence_length`` of a composed config as ``{"inputs": int, "targets": int}``."""
    seq = cfg.data.sequence_length
    return {"inputs": int(seq.inputs), "targets": int(seq.targets)}


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(key=value overrides, the rest)`` of a command line (options and their values stay in the rest)."""
    overrides, rest = [], []
    for arg in argv:
        (overrides if "=" in arg and not arg.startswith("-") else rest).append(arg)
    return overrides, rest
