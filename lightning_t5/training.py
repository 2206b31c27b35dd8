"""`fit(cfg)`: one training run from a composed run config (docs/CONTRACTS.md "Run configuration").

Order of work, chosen so every configuration mistake surfaces before anything slow happens: validate the config
(schema + choices) -> import user modules -> resolve the mixture (suggestions on a typo) -> check the kernel backend
(model.fused=apex without Apex), the vocabulary size, `mixing.*` and `eval.tasks` -> resolve resume/init checkpoints
and check compatibility -> only then build data, model and Trainer and create the run directory. `fit` is that list
of steps, one function each. The run directory receives the resolved `config.yaml`, checkpoints, TensorBoard/CSV
logs, `train_log.jsonl`, `metrics.json` and `results.md`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from lightning_t5.checkpoint import CheckpointError, RunInterrupted, find_last_checkpoint
from lightning_t5.schema import ConfigError, to_run_config, validate_config
from lightning_t5.sharding import check_config as check_sharding_config
from lightning_t5.sharding import full_state_dict, make_strategy, sharding_options
from lightning_t5.truncation import report_for_run

if TYPE_CHECKING:
    from lightning_t5.callbacks import InterruptCheckpoint, TrainLog

__all__ = ["fit", "prepare_config", "resolve_run_config", "load_resume_config", "RunSetup"]

log = logging.getLogger(__name__)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


# ---------------------------------------------------------------------------------------------------------------
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
        import tasks
        from mixtures import MixtureRegistry

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
        from lightning_t5.fused import resolve_backend

        resolve_backend(cfg.model.fused, log=False)  # model.fused=apex without Apex: FusedBackendError, now
        self.model_config = dict(_plain(cfg.model))
        self.mixing = self._check_mixing()
        self.eval_tasks = self._check_eval_tasks()
        self.checkpoint = self._resolve_checkpoint()

    def _check_mixing(self) -> Any:
        """`mixing.*` as the training data will use it (MixtureError on T <= 0, K < 0, unknown rate...)."""
        from mixtures import MixingConfig

        mixing = {k: v for k, v in dict(_plain(self.cfg.mixing)).items() if v is not None}
        return MixingConfig.from_dict(mixing)

    def _check_eval_tasks(self) -> list[str]:
        """`eval.tasks` names registered tasks (TaskError with suggestions otherwise)."""
        from tasks import TaskRegistry

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
        from lightning_t5.checkpoint import check_compatible, load_checkpoint

        check_compatible(load_checkpoint(ckpt), self.model_config, self.vocab_fingerprint, path=str(ckpt))
        return ckpt


def _init_weights(model: Any, init_from: str, model_config: Mapping[str, Any], vocab_fingerprint: str) -> None:
    """Initialise `model` from a lightning_t5 checkpoint (.ckpt) or a Hugging Face T5 directory (weights only)."""
    from lightning_t5.checkpoint import check_compatible, load_checkpoint, model_state_dict
    from lightning_t5.sharded_checkpoint import is_checkpoint, is_complete, load_full_model_state

    path = Path(init_from)
    if path.is_dir() and is_checkpoint(path / "last.ckpt"):
        path = path / "last.ckpt"
    elif path.is_dir() and (path / "checkpoints").is_dir():
        found = find_last_checkpoint(path)
        path = found if found is not None else path
    if path.is_file() or is_complete(path):  # a .ckpt file, or a sharded run's checkpoint directory
        ckpt = load_checkpoint(path)
        check_compatible(ckpt, model_config, vocab_fingerprint, path=str(path))
        model.load_state_dict(model_state_dict({"state_dict": load_full_model_state(path)} if path.is_dir() else ckpt))
    elif path.is_dir():
        from lightning_t5 import T5

        source = T5.from_hf(str(path))
        try:
            model.load_state_dict(source.state_dict())
        except RuntimeError as err:
            raise CheckpointError(f"init_from={init_from!r}: the Hugging Face model does not match model config "
                                  f"({str(err).splitlines()[0]}).") from err
    else:
        raise CheckpointError(f"init_from={init_from!r} is neither a checkpoint file nor a directory.")


def _write_json(path: Path, payload: Any) -> None:
    from lightning_t5.evaluation import write_json

    write_json(path, payload)  # standard JSON: NaN -> null


class _DropAdverts(logging.Filter):
    """Lightning logs tips advertising its commercial products ("💡 Tip: ... litlogger / litmodels") on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith("💡")


def _quiet_known_warnings() -> None:
    """Silence third-party output that is expected for this setup and would bury the run's own: known warnings,
    Lightning's adverts, and the `datasets` progress bars (a dozen `Generating split` / `Map:` bars per run; the run
    prints one line per phase instead)."""
    import warnings

    import datasets

    for pattern in (".*set_vital.*", ".*LeafSpec.*", ".*IterableDataset. has .__len__. defined.*",
                    ".*Checkpoint directory .* exists and is not empty.*", ".*litlogger.*"):
        warnings.filterwarnings("ignore", message=pattern)
    rank_zero_logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in rank_zero_logger.filters):
        rank_zero_logger.addFilter(_DropAdverts())
    datasets.disable_progress_bars()


def _phase(trainer: Any, message: str) -> None:
    """One console line per phase (rank 0): what the run is doing while no progress bar is shown."""
    if trainer.is_global_zero:
        print(message, flush=True)


# ---------------------------------------------------------------------------------------------------------------
def fit(cfg: Any, callbacks: Sequence[Any] = (), overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Train (or resume) one run and evaluate it; returns the result dict also written to `metrics.json`.

    `callbacks` are extra Lightning callbacks (tests use them to interrupt a run); `overrides` are the command-line
    overrides when called from train.py (used to re-apply them on top of a resumed run's saved config).
    Each step below is one function; everything that can fail without data runs before the run directory exists.
    """
    start = time.time()
    _quiet_known_warnings()
    cfg = resolve_run_config(cfg, overrides)
    check_sharding_config(cfg)
    setup = RunSetup(cfg)  # every data-free check: a mistake stops here, before any directory or data work
    from lightning_t5.callbacks import InterruptCheckpoint, TrainLog  # imports Lightning: after the checks
    from lightning_t5.rank_agreement import RankAgreement

    datamodule = _build_datamodule(cfg, setup)
    # token caches (streaming corpora must be cached offline, else an error gives the command) and the repetition
    # guard, before the model is built or anything slow starts
    datamodule.prepare_training_data()
    truncation = report_for_run(setup.mixture, cfg)  # share of each task cut by data.sequence_length
    _seed_and_precision(cfg)
    module = _build_module(cfg, setup)
    train_log = TrainLog(Path(cfg.run_dir) / "train_log.jsonl")
    interrupt = InterruptCheckpoint(Path(cfg.run_dir) / "checkpoints")
    agreement = RankAgreement(int(cfg.seed), setup.vocab_fingerprint)  # ranks agree on seed, rates, data, batch
    trainer = _build_trainer(cfg, [train_log, interrupt, agreement, *callbacks], train_log,
                             evaluates=bool(setup.eval_tasks))
    created = _create_run_dir(trainer, cfg)
    try:
        before = _evaluate_before_training(trainer, module, datamodule, cfg, setup)
        _train(trainer, module, datamodule, setup, interrupt)
    except BaseException:
        _remove_failed_run_dir(trainer, cfg, created)
        raise
    after = _evaluate(trainer, module, datamodule)
    result = _result(cfg, trainer, train_log, before, after, start, truncation)
    export_state = full_state_dict(module.model) if cfg.export_hf else None  # collective under FSDP: every rank
    if trainer.is_global_zero:
        _write_outputs(cfg, module, result, before, after, setup.model_config, export_state)
    return result


def resolve_run_config(cfg: Any, overrides: Sequence[str] | None = None) -> DictConfig:
    """The validated run config: a resumed run's saved config plus the command-line overrides, else `cfg` itself."""
    raw_resume = OmegaConf.select(cfg, "resume") if OmegaConf.is_config(cfg) else (cfg or {}).get("resume")
    if raw_resume not in (None, "auto") and overrides is not None and not str(raw_resume).endswith(".ckpt"):
        cfg = load_resume_config(raw_resume, overrides)
    return prepare_config(cfg)


def _seed_and_precision(cfg: DictConfig) -> None:
    import pytorch_lightning as pl
    import torch

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.trainer.matmul_precision:
        torch.set_float32_matmul_precision(cfg.trainer.matmul_precision)


def _build_module(cfg: DictConfig, setup: RunSetup) -> Any:
    """The LightningModule, initialised from `init_from` when the run does not resume."""
    from lightning_t5.module import T5LightningModule

    tcfg = cfg.trainer
    module = T5LightningModule(
        model_config=setup.model_config, optim=_plain(cfg.optim), task_names=setup.task_names,
        total_steps=int(cfg.optim.total_steps or tcfg.max_steps), vocab_fingerprint=setup.vocab_fingerprint,
        log_every_n_steps=int(tcfg.log_every_n_steps),
        eval_options={"max_new_tokens": cfg.eval.max_new_tokens, "num_beams": int(cfg.eval.num_beams),
                      "max_target_length": int(cfg.data.sequence_length.targets)},
        sharding=sharding_options(cfg),
    )
    if cfg.init_from and setup.checkpoint is None:
        _init_weights(module.model, cfg.init_from, setup.model_config, setup.vocab_fingerprint)
    return module


def _on_gpu(cfg: DictConfig) -> bool:
    import torch

    accelerator = cfg.trainer.accelerator
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _build_datamodule(cfg: DictConfig, setup: RunSetup) -> Any:
    from lightning_t5.data import MixtureDataModule

    tcfg = cfg.trainer
    return MixtureDataModule(
        setup.mixture, data=_plain(cfg.data), mixing=_plain(cfg.mixing), eval=_plain(cfg.eval), seed=int(cfg.seed),
        total_batches=int(tcfg.max_steps) * int(tcfg.accumulate_grad_batches), pin_memory=_on_gpu(cfg),
        imports=list(cfg.imports or []),
    )


def _build_trainer(cfg: DictConfig, callbacks: list[Any], train_log: TrainLog, evaluates: bool = True) -> Any:
    """The Lightning Trainer: step checkpoints, TensorBoard + CSV logs, atomic checkpoint writes.

    `evaluates=False` (no evaluation tasks, e.g. an experiment's intermediate stage) turns Lightning's validation
    loop off instead of handing it an empty list of loaders (its "Total length of `list` across ranks is zero")."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from lightning_t5.callbacks import RngState, StepCheckpoint, TrainProgressBar
    from lightning_t5.checkpoint_io import AtomicCheckpointIO

    tcfg, run_dir = cfg.trainer, Path(cfg.run_dir)
    accumulate = int(tcfg.accumulate_grad_batches)
    all_callbacks = [*callbacks, RngState(),
                     StepCheckpoint(run_dir / "checkpoints", every_n_steps=int(tcfg.checkpoint_every_n_steps),
                                    keep=int(tcfg.keep_checkpoints))]
    if tcfg.enable_progress_bar:
        all_callbacks.append(TrainProgressBar(train_log))
    loggers = [TensorBoardLogger(str(run_dir), name="tensorboard", version="", default_hp_metric=False),
               CSVLogger(str(run_dir), name="csv")]  # csv/version_N per (resumed) session: never overwritten
    every = cfg.eval.every_n_steps
    return pl.Trainer(
        accelerator=tcfg.accelerator, devices=tcfg.devices, num_nodes=int(tcfg.num_nodes), strategy=make_strategy(tcfg),
        precision=tcfg.precision, max_steps=int(tcfg.max_steps), accumulate_grad_batches=accumulate,
        gradient_clip_val=tcfg.gradient_clip_val, log_every_n_steps=int(tcfg.log_every_n_steps),
        callbacks=all_callbacks, logger=loggers, plugins=[AtomicCheckpointIO()],
        enable_progress_bar=bool(tcfg.enable_progress_bar), enable_model_summary=False,
        use_distributed_sampler=False, num_sanity_val_steps=0, deterministic=bool(tcfg.deterministic),
        check_val_every_n_epoch=None, val_check_interval=int(every) * accumulate if every else 10**12,
        limit_val_batches=None if evaluates else 0, default_root_dir=str(run_dir),
    )


def _create_run_dir(trainer: Any, cfg: DictConfig) -> bool:
    """Write `config.yaml` into the run directory and say where the run lives; True when the directory is new."""
    run_dir = Path(cfg.run_dir)
    created = not run_dir.exists()
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        print(f"run directory: {run_dir}", flush=True)
    return created


def _remove_failed_run_dir(trainer: Any, cfg: DictConfig, created: bool) -> None:
    """A launch that fails before its first training step (bad data, a crash in the first batch) leaves no
    `runs/<name>/` behind; once a step has run, the directory stays for its logs and checkpoints."""
    run_dir = Path(cfg.run_dir)
    if created and trainer.is_global_zero and int(trainer.global_step) == 0 and not (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir, ignore_errors=True)


def _evaluate_before_training(trainer: Any, module: Any, datamodule: Any, cfg: DictConfig, setup: RunSetup
                              ) -> dict[str, Any] | None:
    """Scores of the untrained model (step 0), or those saved by the run being resumed."""
    before_path = Path(cfg.run_dir) / "eval_before.json"
    if setup.checkpoint is None and cfg.eval.before_training and setup.eval_tasks:
        _phase(trainer, f"preparing data and evaluating the untrained model on {len(setup.eval_tasks)} task(s) ...")
        before = _evaluate(trainer, module, datamodule, force=True)
        if trainer.is_global_zero and before is not None:
            _write_json(before_path, {k: v for k, v in before.items() if k != "records"})
        return before
    return json.loads(before_path.read_text()) if before_path.is_file() else None


def _train(trainer: Any, module: Any, datamodule: Any, setup: RunSetup, interrupt: InterruptCheckpoint) -> None:
    """`trainer.fit`, from the resume checkpoint when there is one; Ctrl-C ends it with a resumable checkpoint."""
    start = f"resuming from {setup.checkpoint}" if setup.checkpoint else "training"
    _phase(trainer, f"{start} (Ctrl-C saves a resumable checkpoint) ...")
    with interrupt.catching_sigint():
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(setup.checkpoint) if setup.checkpoint else None)
    if interrupt.saved is not None:
        raise RunInterrupted(interrupt.saved, int(trainer.global_step), Path(interrupt.dirpath).parent)
    if trainer.state.status.value != "finished":
        log.warning("training did not finish (%s); the last checkpoint is in %s", trainer.state.status,
                    interrupt.dirpath)


def _evaluate(trainer: Any, module: Any, datamodule: Any, force: bool = False) -> dict[str, Any] | None:
    """One evaluation pass over the configured tasks (None when there is nothing to evaluate)."""
    if not force and not datamodule.evaluators:
        return None
    if not force:
        _phase(trainer, f"evaluating on {len(datamodule.evaluators)} task(s) ...")
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return module.last_eval


def _result(cfg: DictConfig, trainer: Any, train_log: TrainLog, before: dict[str, Any] | None,
            after: dict[str, Any] | None, start: float, truncation: Any) -> dict[str, Any]:
    from lightning_t5.evaluation import eval_details

    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    return {
        "run_dir": str(cfg.run_dir),
        "checkpoint": str(last) if last.exists() else None,  # a file, or a sharded run's checkpoint directory
        "metrics": (after or {}).get("metrics", {}),
        "averages": (after or {}).get("averages", {}),
        "metrics_before": (before or {}).get("metrics", {}),
        "averages_before": (before or {}).get("averages", {}),
        "steps": int(trainer.global_step),
        "tokens": int(train_log.tokens),
        "wall_time_s": round(time.time() - start, 2),
        **eval_details(after),
        "truncation": truncation,
    }

def _write_outputs(cfg: DictConfig, module: Any, result: dict[str, Any], before: dict[str, Any] | None,
                   after: dict[str, Any] | None, model_config: Mapping[str, Any],
                   export_state: dict[str, Any] | None) -> None:
    """predictions/<task>.jsonl, metrics.json, results.md, the results on the console and the optional Hugging Face
    export (`export_state`: the full weights gathered by every rank, rebuilt on the CPU-safe backend)."""
    from lightning_t5.evaluation import render_run_results, write_predictions
    from lightning_t5.export import export_state_dict

    run_dir = Path(cfg.run_dir)
    write_predictions(run_dir, after)
    _write_json(run_dir / "metrics.json", result)
    text = render_run_results(cfg, result, with_before=before is not None)
    (run_dir / "results.md").write_text(text)
    print("\n" + text + "\n")
    print(f"run directory: {run_dir}")
    if cfg.export_hf:
        export_state_dict(dict(model_config), export_state, cfg.export_hf)
        print(f"exported Hugging Face model to {cfg.export_hf}")


def with_objective(mixture: Any, objective: dict[str, Any]) -> Any:
    """The mixture with each top-level corpus (unsupervised) task replaced by the configured objective's variant.

    ``objective`` is a ``configs/objective/*.yaml`` mapping (``task`` + hyper-parameters); the variant is
    registered under its own name (``corpus_span_corruption_msl10``...) so its cache and logs are distinct.
    """
    from mixtures import Mixture
    from tasks.catalog.corpus import objective_options, register_variant, task_for_objective

    base = task_for_objective(objective)
    options = objective_options(objective)
    variant = register_variant(base.name, **options) if options else base
    members, replaced = [], 0
    for member, rate in mixture.members():
        if getattr(member, "supervised", True) is False and not isinstance(member, Mixture):
            member, replaced = variant.name, replaced + 1
        members.append(member if rate is None else (member, rate))
    if not replaced:
        raise ConfigError(f"objective={objective!r} is set but mixture={mixture.name!r} has no corpus task to apply "
                          f"it to.")
    return Mixture(f"{mixture.name}+{variant.name}", members, defaults=mixture.defaults, sizes=mixture.sizes,
                   description=mixture.description, default_rate=mixture.default_rate)
