"""The run configuration before anything is built: resume configs, run names, and every data-free check.

`fit` calls `resolve_run_config` and then `RunSetup`; each mistake a user can make in a config (a misspelt mixture,
`model.fused=apex` without Apex, a vocabulary larger than the model's, an incompatible resume checkpoint) raises here,
in seconds, before a run directory or any data exists.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

import tasks
from lightning_t5.dist.checkpoint import check_compatible, find_last_checkpoint, load_checkpoint
from lightning_t5.errors import CheckpointError, ConfigError
from lightning_t5.model.fused import resolve_backend
from lightning_t5.train.schema import to_run_config, validate_config
from mixtures import MixingConfig, MixtureRegistry, with_objective
from mixtures.adaptive import check_adaptive
from tasks import TaskRegistry

__all__ = ["RunSetup", "load_resume_config", "plain", "prepare_config", "resolve_run_config"]


def plain(node: Any) -> Any:
    """A config node as plain Python containers (resolved); anything else unchanged."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


_RUN_IDENTITY_KEYS = ("resume", "run_dir", "run_name", "output_dir", "experiment")
_RESUMABLE_TOP_LEVEL = ("seed", "export_hf", "init_from")


def load_resume_config(run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """The config a run was started with (`run_dir/config.yaml`) plus command-line `key=value` overrides.

    `python train.py resume=runs/X` must continue run X with X's settings, not with today's defaults; only keys the
    user names again on the command line (e.g. `trainer.max_steps=2000`) change. Group selections (`model=small`)
    are ignored here: the architecture of a run cannot change on resume.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"resume={str(run_dir)!r}: the run directory does not exist. Pass a directory written "
                              f"by a previous run (runs/<run_name>), or resume=auto to resume when possible.")
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise CheckpointError(f"resume={str(run_dir)!r}: {saved_path} is missing; this is not a lightning_t5 run "
                              f"directory.")
    saved = OmegaConf.load(saved_path)
    dotlist = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" not in override or key.startswith("hydra.") or key in _RUN_IDENTITY_KEYS:
            continue
        if "." in key or key in _RESUMABLE_TOP_LEVEL:  # `model=small` (a group choice) is not applied
            dotlist.append(override.lstrip("+~"))
    merged = OmegaConf.merge(saved, OmegaConf.from_dotlist(dotlist)) if dotlist else saved
    merged.resume = str(run_dir)
    merged.run_dir = str(run_dir)
    return to_run_config(merged)


def prepare_config(cfg: Any) -> DictConfig:
    """Structured, validated copy of `cfg` with `run_name`/`run_dir` filled in (resume paths fix the run dir)."""
    cfg = validate_config(to_run_config(cfg))
    resume = cfg.resume
    if resume not in (None, "auto"):
        path = Path(resume)
        if path.suffix == ".ckpt":
            if not path.exists():  # a file, or a sharded run's checkpoint directory
                raise CheckpointError(f"resume={resume!r}: the checkpoint file does not exist.")
            path = path.parent.parent
        if not path.is_dir():
            raise CheckpointError(f"resume={resume!r}: the run directory does not exist. Pass a directory written by "
                                  f"a previous run (runs/<run_name>), or resume=auto.")
        cfg.run_dir = str(path)
        cfg.run_name = cfg.run_name or path.name
    if cfg.run_name is None:
        cfg.run_name = Path(cfg.run_dir).name if cfg.run_dir else _timestamp()
    if cfg.run_dir is None:
        cfg.run_dir = str(Path(cfg.output_dir) / cfg.run_name)
    return cfg


class RunSetup:
    """Everything resolved before building the Trainer (kept separate so errors come before slow work)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        tasks.import_modules(list(cfg.imports))
        self.mixture = MixtureRegistry.get(cfg.mixture)
        if cfg.get("objective"):
            self.mixture = with_objective(self.mixture, OmegaConf.to_container(cfg.objective, resolve=True))
        self.task_names = list(self.mixture.task_names)
        vocabularies = {t.vocabulary.fingerprint: t.vocabulary for t in self.mixture.tasks}
        if len(vocabularies) != 1:
            raise ConfigError(f"mixture={cfg.mixture!r} mixes {len(vocabularies)} vocabularies; one model needs one.")
        self.vocabulary = next(iter(vocabularies.values()))
        self.vocab_fingerprint = self.vocabulary.fingerprint
        if cfg.model.vocab_size < self.vocabulary.vocab_size:
            raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the vocabulary of mixture "
                              f"{cfg.mixture!r} ({self.vocabulary.vocab_size} ids incl. extra ids); token ids would "
                              f"overflow the embedding.")
        resolve_backend(cfg.model.fused, log=False)  # model.fused=apex without Apex: FusedBackendError, now
        self.model_config = dict(plain(cfg.model))
        self.mixing = self._check_mixing()
        self.eval_tasks = self._check_eval_tasks()
        self.checkpoint = self._resolve_checkpoint()

    def _check_mixing(self) -> Any:
        """`mixing.*` as the training data will use it (MixtureError on T <= 0, K < 0, unknown rate...)."""
        mixing = MixingConfig.from_dict({k: v for k, v in dict(plain(self.cfg.mixing)).items() if v is not None})
        check_adaptive(mixing)  # mixing.adaptive names a registered method, adaptive_options its options
        return mixing

    def _check_eval_tasks(self) -> list[str]:
        """`eval.tasks` names registered tasks (TaskError with suggestions otherwise)."""
        names = self.cfg.eval.tasks
        if names is None:
            return [t.name for t in self.mixture.tasks if getattr(t, "supervised", True)]
        return [TaskRegistry.get(str(name)).name for name in names]

    def _resolve_checkpoint(self) -> Path | None:
        cfg = self.cfg
        if cfg.resume is None:
            return None
        run_dir = Path(cfg.run_dir)
        if str(cfg.resume).endswith(".ckpt"):
            ckpt: Path | None = Path(cfg.resume)
        else:
            ckpt = find_last_checkpoint(run_dir)
        if ckpt is None:
            if cfg.resume == "auto":
                return None
            raise CheckpointError(f"resume={cfg.resume!r}: no checkpoint in {run_dir / 'checkpoints'} (the run "
                                  f"stopped before its first checkpoint; start it again without resume).")
        check_compatible(load_checkpoint(ckpt), self.model_config, self.vocab_fingerprint, path=str(ckpt))
        return ckpt


def resolve_run_config(cfg: Any, overrides: Sequence[str] | None = None) -> DictConfig:
    """The validated run config: a resumed run's saved config plus the command-line overrides, else `cfg` itself."""
    raw_resume = OmegaConf.select(cfg, "resume") if OmegaConf.is_config(cfg) else (cfg or {}).get("resume")
    if raw_resume not in (None, "auto") and overrides is not None and not str(raw_resume).endswith(".ckpt"):
        cfg = load_resume_config(raw_resume, overrides)
    return prepare_config(cfg)
