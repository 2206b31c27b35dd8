"""The run configuration before anything is built: resume configs, run names, and every data-free check.

`fit` calls `resolve_run_config` and then `RunSetup`; each mistake a user can make in a config (a misspelt mixture,
`model.fused=apex` without Apex, a vocabulary larger than the model's, an incompatible resume checkpoint) raises here,
in seconds, before a run directory or any data exists.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

import tasks
from lightning_t5.dist.checkpoint import check_compatible, find_last_checkpoint, load_checkpoint
from lightning_t5.errors import CheckpointError, ConfigError
from lightning_t5.model.fused import resolve_backend
from lightning_t5.train.schedules import lr_lambda
from lightning_t5.train.schema import to_run_config, validate_config
from mixtures import MixingConfig, MixtureRegistry, with_objective
from mixtures.adaptive import check_adaptive
from tasks import TaskRegistry

__all__ = ["RESUME_ACCEPTS", "RunSetup", "load_resume_config", "plain", "prepare_config", "resolve_run_config",
           "resume_changes", "saved_stream_state"]

log = logging.getLogger(__name__)


def plain(node: Any) -> Any:
    """A config node as plain Python containers (resolved); anything else unchanged."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


_RUN_IDENTITY_KEYS = ("resume", "run_dir", "run_name", "output_dir", "experiment")

#: What a resume accepts when an override changes a saved value: nothing here changes how the saved steps continue
#: (a key matches itself and everything below it). `docs/CONTRACTS.md` and the README list the same.
RESUME_ACCEPTS: tuple[str, ...] = (
    "trainer.max_steps",  # where training stops (logged: the learning-rate schedule may span the new budget)
    "trainer.checkpoint_every_n_steps", "trainer.keep_checkpoints", "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",  # bookkeeping and the console
    "eval",  # evaluation only: it leaves training's random numbers untouched (train.callbacks.RngState)
    "export_hf",  # where the final model is exported
    "data.num_workers",  # which processes build the batches; the batches are the same
    "imports",  # which modules register tasks; a change of their data is refused by the data check in fit
)

#: Why every other override is refused (the longest matching key wins).
_RESUME_REFUSES: dict[str, str] = {
    "model": "the model is the checkpoint's",
    "optim": "the optimizer, its state and the learning-rate schedule continue from the checkpoint",
    "mixture": "the training data stream continues where the checkpoint left it",
    "mixing": "the training data stream continues where the checkpoint left it",
    "objective": "the training data stream continues where the checkpoint left it",
    "data": "the training data stream continues where the checkpoint left it",
    "seed": "the training data stream and the random numbers continue where the checkpoint left them",
    "trainer": "it changes how every step is computed",
    "trainer.devices": "the checkpoint holds one data-loader position per process",
    "trainer.num_nodes": "the checkpoint holds one data-loader position per process",
    "trainer.strategy": "the checkpoint's format and per-process data positions belong to its strategy",
    "init_from": "a resumed run starts from its own checkpoint (init_from only initialises a new run)",
}

_MISSING = object()


def _matching(key: str, table: Mapping[str, str] | Sequence[str]) -> str | None:
    """The entry of `table` for dotted `key`: the longest table key equal to it or above it (its value for a
    mapping, the key itself for a sequence)."""
    hits = [k for k in table if key == k or key.startswith(k + ".")]
    if not hits:
        return None
    best = max(hits, key=len)
    return table[best] if isinstance(table, Mapping) else best


def _as_plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _leaf_changes(key: str, saved: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved, new) for every value under `key` that differs (sections are compared leaf by leaf)."""
    if isinstance(saved, Mapping) and isinstance(new, Mapping):
        return [change for k in sorted(set(saved) | set(new), key=str)
                for change in _leaf_changes(f"{key}.{k}", saved.get(k, _MISSING), new.get(k, _MISSING))]
    return [] if saved == new else [(key, saved, new)]


def _shown(value: Any) -> str:
    return "(unset)" if value is _MISSING else "null" if value is None else repr(value)


def resume_changes(saved: DictConfig, overrides: Sequence[str], composed: Any = None) -> dict[str, Any]:
    """The values that the command-line `overrides` change in a resumed run's `saved` config: {dotted key: value}.

    A resume continues a run exactly, so only the keys of `RESUME_ACCEPTS` may change; an override that repeats the
    saved value is fine (the same command line plus `resume=`). Any other change raises one CheckpointError that
    names each refused override, its saved and new values and the reason. The new values are read from `composed`
    (the config Hydra composed from the same command line, so `model=small` is compared section by section), or
    parsed from the overrides when it is None (then a config-group choice cannot be checked and is refused).
    """
    accepted: dict[str, Any] = {}
    refused: list[str] = []
    for override in overrides:
        if "=" not in override:
            continue
        key = override.split("=", 1)[0].lstrip("+~")
        if key.split(".")[0] in ("hydra", *_RUN_IDENTITY_KEYS):
            continue
        saved_value = _as_plain(OmegaConf.select(saved, key, default=_MISSING))
        if composed is not None:
            new_value = _as_plain(OmegaConf.select(composed, key, default=None))
        elif "." in key or not isinstance(saved_value, Mapping):
            new_value = _as_plain(OmegaConf.select(OmegaConf.from_dotlist([override.lstrip("+~")]), key))
        else:
            refused.append(f"{override} (it selects another config group for a section the run has saved)")
            continue
        changes = _leaf_changes(key, saved_value, new_value)
        bad = [(k, a, b) for k, a, b in changes if _matching(k, RESUME_ACCEPTS) is None]
        if bad:
            reasons = sorted({_matching(k, _RESUME_REFUSES) or "a resume continues the run as it was configured"
                              for k, _, _ in bad})
            values = ", ".join(f"{k} {_shown(a)} -> {_shown(b)}" for k, a, b in bad[:4])
            more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
            refused.append(f"{override} ({values}{more}: {'; '.join(reasons)})")
            continue
        accepted.update({k: b for k, _, b in changes})
    if refused:
        raise CheckpointError(
            "cannot resume with " + "; ".join(refused) + ". A resume continues the run exactly as it was configured "
            "and accepts changes of " + ", ".join(RESUME_ACCEPTS) + " only: drop the other overrides, or start a new "
            "run (init_from=<run>/checkpoints/last.ckpt reuses the weights).")
    return accepted


def load_resume_config(resume: str | os.PathLike, overrides: Sequence[str] = (), composed: Any = None) -> DictConfig:
    """The config a run was started with (`run_dir/config.yaml`) plus the command-line changes a resume accepts.

    `python train.py resume=runs/X` must continue run X with X's settings, not with today's defaults. `resume` is
    the run directory or one of its checkpoints (`runs/X/checkpoints/stepNNNNNN.ckpt`). The overrides are checked by
    `resume_changes` (`composed`: the config composed from the same command line): a change the resume cannot honour
    (`mixture=other`, `model=small`, `optim.lr=...`) is refused with the reason instead of being ignored.
    `trainer.max_steps` is accepted, with one log line when it moves the end of the learning-rate schedule.
    """
    path = Path(resume)
    run_dir = path.parent.parent if path.suffix == ".ckpt" else path
    if path.suffix == ".ckpt" and not path.exists():  # a file, or a sharded run's checkpoint directory
        raise CheckpointError(f"resume={str(resume)!r}: the checkpoint file does not exist.")
    if not run_dir.is_dir():
        raise CheckpointError(f"resume={str(run_dir)!r}: the run directory does not exist. Pass a directory written "
                              f"by a previous run (runs/<run_name>), or resume=auto to resume when possible.")
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise CheckpointError(f"resume={str(run_dir)!r}: {saved_path} is missing; this is not a lightning_t5 run "
                              f"directory.")
    saved = OmegaConf.load(saved_path)
    changes = resume_changes(saved, overrides, composed)
    merged = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    for key, value in changes.items():
        OmegaConf.update(merged, key, value, merge=False)
    _log_budget_change(saved, merged)
    merged.resume = str(resume)
    merged.run_dir = str(run_dir)
    return to_run_config(merged)


def _log_budget_change(saved: DictConfig, merged: DictConfig) -> None:
    """One line when `trainer.max_steps` changes on resume: where training now stops, and whether the learning-rate
    schedule (which spans `optim.total_steps`, else `trainer.max_steps`) changes with it."""
    before, after = int(saved.trainer.max_steps), int(merged.trainer.max_steps)
    if before == after or not _is_rank_zero():
        return
    optim = merged.optim
    if optim.total_steps:
        lr = f"the learning-rate schedule keeps optim.total_steps={optim.total_steps}"
    else:
        old, new = (lr_lambda(optim.schedule, warmup_steps=optim.warmup_steps, total_steps=total,
                              min_lr_ratio=optim.min_lr_ratio or 0.0) for total in (before, after))
        longest = max(before, after)
        if any(old(step) != new(step) for step in range(0, longest + 1, max(1, longest // 1000))):
            lr = (f"the learning-rate schedule (optim.schedule={optim.schedule}) now spans {after} steps instead of "
                  f"{before}, so the learning rate from here on differs from the original plan")
        else:
            lr = f"the learning-rate schedule (optim.schedule={optim.schedule}) does not depend on it"
    log.warning("resume: trainer.max_steps %d -> %d: training continues to step %d; %s.", before, after, after, lr)


def _is_rank_zero() -> bool:
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


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
        self.resume_stream: list[Mapping[str, Any]] | None = None  # the checkpoint's data positions, per process
        self.saved_max_steps: int | None = None  # trainer.max_steps of the run being resumed
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
        checkpoint = load_checkpoint(ckpt)
        check_compatible(checkpoint, self.model_config, self.vocab_fingerprint, path=str(ckpt))
        self.resume_stream = saved_stream_state(checkpoint)
        saved_config = run_dir / "config.yaml"
        if saved_config.is_file():
            self.saved_max_steps = OmegaConf.select(OmegaConf.load(saved_config), "trainer.max_steps")
        return ckpt


def saved_stream_state(checkpoint: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """Each process's training-stream position in a Lightning checkpoint (rank order), or None when it holds none.

    Lightning keeps the training loader's `state_dict` under the fit loop's `combined_loader`; torchdata's
    StatefulDataLoader keeps the dataset's under `dataset_state`; `train.data.SizedStream` gathers one per process
    (`{"ranks": [...]}`) in multi-process runs."""
    loop = ((checkpoint.get("loops") or {}).get("fit_loop") or {}).get("state_dict") or {}
    loaders = loop.get("combined_loader") or []
    state = loaders[0].get("dataset_state") if loaders and isinstance(loaders[0], Mapping) else None
    if not isinstance(state, Mapping):
        return None
    return list(state["ranks"]) if "ranks" in state else [state]


def resolve_run_config(cfg: Any, overrides: Sequence[str] | None = None) -> DictConfig:
    """The validated run config: a resumed run's saved config plus the command-line changes it accepts (`overrides`:
    the command line `cfg` was composed from), else `cfg` itself."""
    raw_resume = OmegaConf.select(cfg, "resume") if OmegaConf.is_config(cfg) else (cfg or {}).get("resume")
    if raw_resume not in (None, "auto") and overrides is not None:
        cfg = load_resume_config(raw_resume, overrides, composed=cfg)
    return prepare_config(cfg)
