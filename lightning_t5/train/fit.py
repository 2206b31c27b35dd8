"""`fit(cfg)`: one training run from a composed run config (docs/CONTRACTS.md "Run configuration").

Order of work, chosen so every configuration mistake surfaces before anything slow happens: validate the config
(schema + choices; on resume, the overrides a resume accepts) -> import user modules -> resolve the mixture
(suggestions on a typo) -> check the kernel backend (model.fused=apex without Apex), the vocabulary size, `mixing.*`
and `eval.tasks` -> resolve resume/init checkpoints and check compatibility -> build the data and check that a
resumed data stream can continue -> only then build model and Trainer and create the run directory (its first
write). `fit` is that list of steps, one function each. The run directory receives the resolved `config.yaml`,
checkpoints, TensorBoard/CSV logs, `train_log.jsonl`, `metrics.json` and `results.md`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from lightning_t5.dist.checkpoint import load_weights
from lightning_t5.dist.sharding import check_config as check_sharding_config
from lightning_t5.dist.sharding import full_state_dict, sharding_options
from lightning_t5.errors import CheckpointError
from lightning_t5.eval.evaluation import eval_details, render_run_results, write_json, write_predictions
from lightning_t5.eval.truncation import report_for_run
from lightning_t5.model.t5 import T5
from lightning_t5.train.host_memory import keep_freed_memory
from lightning_t5.train.setup import RunSetup, plain, resolve_run_config
from mixtures import MixtureError
from mixtures.shares import render_shares_markdown
from tasks.utils import write_text_atomic

if TYPE_CHECKING:
    from lightning_t5.train.callbacks import InterruptCheckpoint, TrainLog

# Modules that import Lightning (callbacks, module, data, strategy) are imported inside the steps that build the
# Trainer: importing Lightning takes seconds, and every configuration check runs before that.

__all__ = ["fit"]

log = logging.getLogger(__name__)


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

    # "Length of IterableDataset ... was reported to be N ... but M samples have been fetched": torchdata restores
    # its count of len() calls from the checkpoint, so a resume with a larger trainer.max_steps reports the old length
    for pattern in (".*set_vital.*", ".*LeafSpec.*", ".*IterableDataset. has .__len__. defined.*",
                    ".*Checkpoint directory .* exists and is not empty.*", ".*litlogger.*",
                    ".*Length of IterableDataset .* was reported to be.*"):
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
    from lightning_t5.train.callbacks import InterruptCheckpoint, MixingMonitor, TrainLog  # Lightning: after checks
    from lightning_t5.dist.rank_agreement import RankAgreement

    datamodule = _build_datamodule(cfg, setup)
    # token caches (streaming corpora must be cached offline, else an error gives the command) and the repetition
    # guard, before the model is built or anything slow starts
    datamodule.prepare_training_data()
    _check_resume_data(cfg, setup, datamodule)  # a refused resume stops here: nothing in the run directory changed
    truncation = report_for_run(setup.mixture, cfg)  # share of each task cut by data.sequence_length
    host_memory = _process_settings(cfg)
    module = _build_module(cfg, setup)
    train_log = TrainLog(Path(cfg.run_dir) / "train_log.jsonl")
    interrupt = InterruptCheckpoint(Path(cfg.run_dir) / "checkpoints")
    agreement = RankAgreement(int(cfg.seed), setup.vocab_fingerprint)  # ranks agree on seed, rates, data, batch
    mixing = MixingMonitor(Path(cfg.run_dir), every=int(cfg.mixing.adaptive_every))  # before any checkpoint is written
    trainer = _build_trainer(cfg, [mixing, train_log, interrupt, agreement, *callbacks], train_log,
                             evaluates=bool(setup.eval_tasks))
    created = _create_run_dir(trainer, cfg)
    if host_memory:
        _phase(trainer, host_memory)
    try:
        before = _evaluate_before_training(trainer, module, datamodule, cfg, setup)
        _train(trainer, module, datamodule, setup, interrupt)
    except BaseException:
        _remove_failed_run_dir(trainer, cfg, created)
        raise
    after = _evaluate(trainer, module, datamodule)
    result = _result(cfg, trainer, train_log, before, after, start, truncation)
    result["shares"] = datamodule.shares_record()  # planned and drawn, per task (collective: every rank)
    export_state = full_state_dict(module.model) if cfg.export_hf else None  # collective under FSDP: every rank
    if trainer.is_global_zero:
        _write_outputs(cfg, module, result, before, after, setup.model_config, export_state, setup.vocabulary)
    return result


def _check_resume_data(cfg: DictConfig, setup: RunSetup, datamodule: Any) -> None:
    """Before anything is written into the run directory: the checkpoint's data stream continues with this config's
    data. The sampler's own resume check (same tasks, same data, same rates; `MixtureDataset.load_state_dict`) runs
    on a probe of the first process's stream, so a refusal is a CheckpointError here instead of an error inside
    Lightning's checkpoint restore (where its teardown buries it under "Please call `iter(combined_loader)` first")."""
    if setup.resume_stream is None:
        return
    probe = datamodule.make_train_dataset(0, len(setup.resume_stream))
    try:
        probe.load_state_dict(setup.resume_stream[0])
    except MixtureError as err:
        before, after = setup.saved_max_steps, int(cfg.trainer.max_steps)
        budget = (f" The mixing depends on the step budget, and trainer.max_steps changed from {before} to {after}: "
                  f"resume with trainer.max_steps={before}, or start a new run." if before not in (None, after) else "")
        raise CheckpointError(f"resume={cfg.resume}: {err}{budget}") from None


def _process_settings(cfg: DictConfig) -> str | None:
    """Seeds, matmul precision and, training on CPU, the host allocator (`lightning_t5.train.host_memory`; its
    line is returned for the console)."""
    import pytorch_lightning as pl
    import torch

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.trainer.matmul_precision:
        torch.set_float32_matmul_precision(cfg.trainer.matmul_precision)
    if _on_gpu(cfg):
        return None
    line = keep_freed_memory()
    log.info(line)
    return line


def _build_module(cfg: DictConfig, setup: RunSetup) -> Any:
    """The LightningModule, initialised from `init_from` when the run does not resume."""
    from lightning_t5.train.module import T5LightningModule

    tcfg = cfg.trainer
    cls, extra = T5LightningModule, {}
    if cfg.doremi.reference:  # a DoReMi proxy: Group DRO against the reference (lightning_t5/train/doremi.py)
        from lightning_t5.train.doremi import DoReMiLightningModule as cls  # noqa: N813

        extra = {"doremi": {**plain(cfg.doremi), "weights_dir": str(cfg.run_dir)}}
    module = cls(
        model_config=setup.model_config, optim=plain(cfg.optim), task_names=setup.task_names,
        total_steps=int(cfg.optim.total_steps or tcfg.max_steps), vocab_fingerprint=setup.vocab_fingerprint,
        log_every_n_steps=int(tcfg.log_every_n_steps),
        eval_options={"max_new_tokens": cfg.eval.max_new_tokens, "num_beams": int(cfg.eval.num_beams),
                      "max_target_length": int(cfg.data.sequence_length.targets)},
        sharding=sharding_options(cfg), **extra,
    )
    if cfg.init_from and setup.checkpoint is None:
        load_weights(module.model, cfg.init_from, setup.model_config, setup.vocab_fingerprint)
    return module


def _on_gpu(cfg: DictConfig) -> bool:
    import torch

    accelerator = cfg.trainer.accelerator
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _build_datamodule(cfg: DictConfig, setup: RunSetup) -> Any:
    from lightning_t5.train.data import MixtureDataModule

    tcfg = cfg.trainer
    return MixtureDataModule(
        setup.mixture, data=plain(cfg.data), mixing=plain(cfg.mixing), eval=plain(cfg.eval), seed=int(cfg.seed),
        total_batches=int(tcfg.max_steps) * int(tcfg.accumulate_grad_batches), pin_memory=_on_gpu(cfg),
        imports=list(cfg.imports or []),
    )


def _build_trainer(cfg: DictConfig, callbacks: list[Any], train_log: TrainLog, evaluates: bool = True) -> Any:
    """The Lightning Trainer: step checkpoints, TensorBoard + CSV logs, atomic checkpoint writes.

    `evaluates=False` (no evaluation tasks, e.g. an experiment's intermediate stage) turns Lightning's validation
    loop off instead of handing it an empty list of loaders (its "Total length of `list` across ranks is zero")."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from lightning_t5.dist.strategy import AtomicCheckpointIO, make_strategy
    from lightning_t5.train.callbacks import RngState, StepCheckpoint, TrainProgressBar

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
    """Write `config.yaml` into the run directory and say where the run lives; True when the directory is new.

    The first write into the run directory: every check of a resume has passed by now. Written durably (a resume
    reads it back, so a crash mid-write must not leave half a file)."""
    run_dir = Path(cfg.run_dir)
    created = not run_dir.exists()
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
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
            write_json(before_path, {k: v for k, v in before.items() if k != "records"})
        return before
    return json.loads(before_path.read_text()) if before_path.is_file() else None


def _train(trainer: Any, module: Any, datamodule: Any, setup: RunSetup, interrupt: InterruptCheckpoint) -> None:
    """`trainer.fit`, from the resume checkpoint when there is one; Ctrl-C ends it with `RunInterrupted` (a resumable
    checkpoint, or after a second Ctrl-C the run's last one), whatever Lightning raised while stopping."""
    start = f"resuming from {setup.checkpoint}" if setup.checkpoint else "training"
    _phase(trainer, f"{start} (Ctrl-C saves a resumable checkpoint) ...")
    with interrupt.catching_sigint():
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(setup.checkpoint) if setup.checkpoint else None)
        except BaseException as err:
            stop = interrupt.stopped(err, int(trainer.global_step))
            if stop is None:
                raise
            raise stop from None
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
                   export_state: dict[str, Any] | None, vocabulary: Any) -> None:
    """predictions/<task>.jsonl, metrics.json, results.md, the results on the console and the optional Hugging Face
    export (`export_state`: the full weights gathered by every rank, rebuilt on the CPU-safe backend; `vocabulary`:
    the run's, written as the export's tokenizer)."""
    run_dir = Path(cfg.run_dir)
    write_predictions(run_dir, after)
    write_json(run_dir / "metrics.json", result)
    text = render_run_results(cfg, result, with_before=before is not None)
    text += "\n" + render_shares_markdown(result.get("shares") or {})
    (run_dir / "results.md").write_text(text)
    print("\n" + text + "\n")
    print(f"run directory: {run_dir}")
    if cfg.export_hf:
        vocabulary.save_hf_tokenizer(cfg.export_hf)
        T5.from_state_dict(model_config, export_state).save_hf(cfg.export_hf)
        print(f"exported Hugging Face model and tokenizer to {cfg.export_hf}")
