"""Training callbacks: per-step log and throughput, progress bar, exact-resume RNG state, step checkpoints.

- `TrainLog` counts effective (non-pad) tokens, measures tokens/s and appends one JSON line per optimizer step to
  `run_dir/train_log.jsonl` (step, loss, lr, tokens): the record the resume and DDP tests compare step for step.
  Its token count is part of the checkpoint, so a resumed run keeps counting.
- `TrainProgressBar` shows step/max_steps, loss, tokens/s and ETA (tqdm), on rank 0 only.
- `RngState` saves each rank's torch (and CUDA) generator state in the checkpoint and restores it just before the
  first resumed training step, so dropout masks after a resume equal those of an uninterrupted run. Evaluation during
  training leaves the generators as it found them, so it never shifts the training stream of random numbers.
- `InterruptCheckpoint` turns Ctrl-C during training into a resumable `last.ckpt` at the next step boundary and stops
  there at once; a second Ctrl-C stops at once, and the run resumes from its last checkpoint.
- `StepCheckpoint` is a `ModelCheckpoint` that keeps `last.ckpt` plus one file every N steps, and also saves at
  `max_steps` when that is not a multiple of N (so a finished run can always be resumed or exported).
- `MixingMonitor` feeds an adaptive mixing method each step's per-task losses (summed over ranks) and records each
  task's share per block (`mixing.adaptive_every` steps): planned by the rate stages, drawn by the sampler, logged to
  TensorBoard and CSV, kept in `run_dir/mixing.json` and plotted in `run_dir/mixing_shares.png`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, ProgressBar
from pytorch_lightning.trainer.states import TrainerFn

from lightning_t5.dist.checkpoint import find_last_checkpoint
from lightning_t5.errors import RunInterrupted
from mixtures.stages import write_run_file
from tasks.utils import write_text_atomic

__all__ = ["TrainLog", "TrainProgressBar", "RngState", "StepCheckpoint", "InterruptCheckpoint", "MixingMonitor",
           "count_tokens", "plot_shares"]

log = logging.getLogger(__name__)


def count_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """Effective tokens of a batch: non-pad encoder inputs plus real (weighted) decoder targets."""
    n = 0
    if "encoder_input_tokens" in batch:
        n += int((batch["encoder_input_tokens"] != 0).sum())
    if "decoder_loss_weights" in batch:
        n += int((batch["decoder_loss_weights"] > 0).sum())
    elif "decoder_target_tokens" in batch:
        n += int((batch["decoder_target_tokens"] != 0).sum())
    return n


class TrainLog(Callback):
    """Token counting, tokens/s and the per-step JSON-lines log (`path`; written by global rank 0)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else None
        self.tokens = 0  # effective tokens over all ranks since the start of the run (restored on resume)
        self.tokens_per_s = 0.0
        self.last_loss = float("nan")
        self._window_tokens = 0
        self._window_start = 0.0
        self._step_tokens = 0
        self._fh: Any = None

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": int(self.tokens)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tokens = int(state.get("tokens", 0))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._window_start = time.perf_counter()
        self._window_tokens = 0
        if self.path is not None and trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_replayed_steps(trainer.global_step)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run, closed at end

    def _drop_replayed_steps(self, resumed_step: int) -> None:
        """Remove the lines after the step a resume restarts from: the resumed run logs those steps again, and the
        file must read as one clean curve (a run killed at step 44 and resumed from its step-40 checkpoint would
        otherwise log 41-44 twice). A line that does not parse (the last line, cut by the crash that makes the user
        resume) is dropped with one log line. Rewritten durably (temp file, fsync, rename), so a crash here cannot
        lose the earlier lines."""
        if not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        kept: list[str] = []
        unreadable = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, TypeError, KeyError):
                unreadable += 1
                continue
            if step <= resumed_step:
                kept.append(line if line.endswith("\n") else line + "\n")
        if unreadable:
            log.warning("%s: skipped %d line(s) that do not parse (cut by a crash); the log is rewritten without "
                        "them", self.path, unreadable)
        if kept != lines:
            write_text_atomic(self.path, "".join(kept))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n = count_tokens(batch) * trainer.world_size  # ranks hold batches of the same shape; this is an estimate
        self._step_tokens += n
        # accumulation: log once per optimizer step
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return
        self.tokens += self._step_tokens
        self._window_tokens += self._step_tokens
        self._step_tokens = 0
        elapsed = time.perf_counter() - self._window_start
        if elapsed > 0:
            self.tokens_per_s = self._window_tokens / elapsed
        if elapsed > 30:  # a sliding-ish window keeps the figure current
            self._window_start, self._window_tokens = time.perf_counter(), 0
        loss = getattr(pl_module, "last_train_loss", None)
        self.last_loss = float(loss) if loss is not None else float("nan")
        step = trainer.global_step
        if step % max(1, trainer.log_every_n_steps) == 0:
            pl_module.log("train/tokens_per_s", self.tokens_per_s, on_step=True, on_epoch=False, batch_size=1,
                          rank_zero_only=True)
        if self._fh is not None:
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
            self._fh.write(json.dumps({"step": step, "loss": self.last_loss, "lr": float(lr), "tokens": self.tokens,
                                       "time": time.time()}) + "\n")
            self._fh.flush()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class TrainProgressBar(ProgressBar):
    """One tqdm bar over optimizer steps with loss, tokens/s and tqdm's ETA (rank 0; validation is not shown)."""

    def __init__(self, log: TrainLog) -> None:
        super().__init__()
        self.train_log = log
        self._enabled = True
        self._bar: Any = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from tqdm.auto import tqdm

        if self._enabled and trainer.is_global_zero:
            self._bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, desc="train", unit="step",
                             dynamic_ncols=True, smoothing=0.1)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._bar is None:
            return
        self._bar.update(trainer.global_step - self._bar.n)
        self._bar.set_postfix(loss=f"{self.train_log.last_loss:.3f}", tok_s=f"{self.train_log.tokens_per_s:,.0f}",
                              refresh=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()  # Ctrl-C ends training with an exception: the resume message goes on a line of its own

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class RngState(Callback):
    """Saves every rank's torch/CUDA RNG state; restores it right before the first training step after a resume.

    Restoring in `on_train_batch_start` rather than at load time matters: between loading and the first step
    Lightning creates the dataloader iterator, which draws from the global generator (its base seed).

    Evaluation during training (`eval.every_n_steps`, or Lightning's validation when training stops) draws from the
    same generator: every evaluation loader's iterator takes a base seed from it. Those draws would make the
    training steps after an evaluation depend on whether the evaluation ran, and a checkpoint written before it
    (step checkpoints, Ctrl-C) would hold a state the uninterrupted run never trains with. So the state at the end of
    each training batch is kept and put back when an evaluation inside `fit` ends: evaluation leaves training's
    random numbers untouched, and every checkpoint of a step holds the state the next step trains with.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._after_batch: dict[str, Any] | None = None

    @staticmethod
    def _local_state() -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    @staticmethod
    def _set_local_state(local: Mapping[str, Any]) -> None:
        torch.set_rng_state(local["torch"].cpu())
        if "cuda" in local and torch.cuda.is_available():
            torch.cuda.set_rng_state(local["cuda"].cpu())

    def state_dict(self) -> dict[str, Any]:
        local = self._local_state()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
            return {"ranks": gathered}
        return {"ranks": [local]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._pending = dict(state)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        if self._pending is None:
            return
        ranks = self._pending.get("ranks", [])
        self._pending = None
        if trainer.global_rank >= len(ranks):
            return  # resumed on more ranks than saved: keep the seeded state
        self._set_local_state(ranks[trainer.global_rank])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._after_batch = self._local_state()  # the last hook before Lightning starts an evaluation

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # runs before StepCheckpoint's own on_validation_end save (Lightning calls checkpoint callbacks last)
        if self._after_batch is not None and trainer.state.fn == TrainerFn.FITTING:
            self._set_local_state(self._after_batch)


class StepCheckpoint(ModelCheckpoint):
    """`last.ckpt` (overwritten) plus `step=NNNNNN.ckpt` every `every_n_steps` steps; keeps the newest `keep`
    step files (-1: all). Also writes the final step. Writes go through the Trainer's (atomic) CheckpointIO."""

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int, keep: int = -1) -> None:
        super().__init__(
            dirpath=dirpath, filename="step{step:06d}", auto_insert_metric_name=False,
            every_n_train_steps=every_n_steps, save_last=True, save_top_k=keep if keep >= 0 else -1,
            monitor="step" if keep >= 0 else None, mode="max", enable_version_counter=False,
            save_on_train_epoch_end=False,
        )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if (trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
                and self._last_global_step_saved != trainer.global_step
                and not self._should_skip_saving_checkpoint(trainer)):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


class _StopNow(BaseException):
    """The second Ctrl-C: leave `trainer.fit` at once. Not a KeyboardInterrupt, which Lightning turns into
    `sys.exit(1)` ("Detected KeyboardInterrupt, attempting graceful shutdown") and so loses the resume message."""


class InterruptCheckpoint(Callback):
    """Ctrl-C during training: finish the current optimizer step, write `dirpath/last.ckpt`, stop training at once.

    Why not Lightning's own KeyboardInterrupt handling: it abandons the step and exits without a checkpoint, so a run
    interrupted before its first step checkpoint loses everything. Here SIGINT only sets a flag; at the next optimizer
    step boundary every rank agrees to stop (`reduce_boolean_decision`), the checkpoint written is the one a
    `StepCheckpoint` would write at that step (through the Trainer's atomic CheckpointIO), and `RunInterrupted` is
    raised right after it. Raising rather than setting `trainer.should_stop` matters: at `should_stop` Lightning
    first runs a whole evaluation pass (minutes on full validation splits, with no output) and then saves `last.ckpt`
    again on `on_train_end`.

    A second Ctrl-C before that checkpoint is written stops at once (`_StopNow`); the run then resumes from its last
    checkpoint, which `stopped` names. A Ctrl-C while the checkpoint is being written, or after, is ignored: the
    write finishes and the run stops by itself. `saved` is the checkpoint path once written.
    """

    def __init__(self, dirpath: str | os.PathLike) -> None:
        self.dirpath = Path(dirpath)
        self.requested = False
        self.aborted = False
        self.saved: Path | None = None
        self._saving = False
        self._evaluating = False

    @contextlib.contextmanager
    def catching_sigint(self) -> Iterator[None]:
        """Route SIGINT to this callback while the block runs (main thread only; signals go nowhere else)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)
        owner = os.getpid()

        def on_sigint(signum: int, frame: Any) -> None:
            if os.getpid() != owner:
                return  # a forked batch-building worker (data.num_workers) got the terminal's Ctrl-C too
            if not self.requested:
                self.requested = True
                wait = "the evaluation in progress finishes, then " if self._evaluating else ""
                print(f"\nCtrl-C: {wait}the current step finishes and a resumable checkpoint is saved (Ctrl-C again "
                      "stops at once; the run then resumes from its last checkpoint) ...", file=sys.stderr, flush=True)
                return
            if self._saving or self.saved is not None or self.aborted:
                return  # the checkpoint is being written, or training is already stopping: let it finish
            self.aborted = True
            raise _StopNow

        signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluating = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluating = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return  # mid-accumulation: not a step boundary
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = self.dirpath / "last.ckpt"
        self._saving = True
        try:
            trainer.save_checkpoint(str(path), weights_only=False)  # the full state (explicit: no log line)
            self.saved = path
        finally:
            self._saving = False
        raise RunInterrupted(path, int(trainer.global_step), self.dirpath.parent)

    def stopped(self, error: BaseException, step: int) -> RunInterrupted | None:
        """What `trainer.fit` ending with `error` means: the `RunInterrupted` to report (after the checkpoint, or
        after a second Ctrl-C: then naming the run's last checkpoint), or None when it is a real failure."""
        if isinstance(error, RunInterrupted):
            return error
        if not self.aborted:
            return None
        return RunInterrupted(find_last_checkpoint(self.dirpath.parent), step, self.dirpath.parent, saved=False)


class MixingMonitor(Callback):
    """The mixing side of each training step: an adaptive method's input, and each task's share per block.

    After every step (`on_train_batch_end`, before any checkpoint callback writes the step): under `mixing.adaptive`
    the module's per-task loss sums and token counts (summed over ranks) go to the sampler's adaptive method
    (`MixtureDataset.observe`), whose proposal becomes the stage of the block after next; in a multi-process run the
    ranks check that they appended the same stage. At the end of every block of `every` sampler steps (and at the end
    of training) the block's planned shares (the stage at its first step) and drawn shares (examples and tokens the
    sampler built, summed over ranks) are logged to every logger (`mixing/planned/<task>`, `mixing/drawn/<task>`,
    `mixing/drawn_tokens/<task>`) and written, with the stage list, to `run_dir/mixing.json`. The per-block record
    is part of the checkpoint, so a resumed run's record and plot cover the whole run.
    """

    def __init__(self, run_dir: str | os.PathLike, every: int) -> None:
        self.run_dir = Path(run_dir)
        self.every = int(every)
        self.blocks: list[dict[str, Any]] = []
        self._totals: dict[str, list[int]] | None = None  # examples/tokens drawn over all ranks at the last block end
        self._end = 0  # sampler step of the last recorded block end

    @staticmethod
    def _dataset(trainer: pl.Trainer) -> Any:
        return getattr(getattr(trainer, "datamodule", None), "train_dataset", None)

    def state_dict(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "totals": self._totals, "end": self._end}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.blocks = list(state.get("blocks", []))
        self._totals = state.get("totals")
        self._end = int(state.get("end", 0))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ds = self._dataset(trainer)
        pl_module.collect_task_losses = ds is not None and getattr(ds, "adaptive", None) is not None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        ds = self._dataset(trainer)
        if ds is None:
            return
        if ds.adaptive is not None:
            if pl_module.last_task_losses is None:
                raise RuntimeError("adaptive mixing: the module computed no per-task losses for this step.")
            sums, counts = (t.detach().double().cpu().numpy() for t in pl_module.last_task_losses)
            stage = ds.observe(batch_idx, sums, counts)
            if stage is not None and trainer.world_size > 1:
                self._check_same_stage(trainer, stage)
        if (batch_idx + 1) % self.every == 0:
            self._record_block(trainer, ds, batch_idx + 1)

    def _check_same_stage(self, trainer: pl.Trainer, stage: Any) -> None:
        mine = [stage.start, stage.shares.tolist()]
        first = trainer.strategy.broadcast(mine, src=0)
        if first != mine:
            raise RuntimeError(f"adaptive mixing: rank {trainer.global_rank} proposed {mine} but rank 0 proposed "
                               f"{first}; every rank must use the same stages.")

    def _drawn_totals(self, trainer: pl.Trainer, ds: Any, device: Any) -> dict[str, list[int]]:
        """Examples and tokens built per task so far, summed over all ranks (collective)."""
        drawn = ds.drawn()
        names = ds.task_names
        local = torch.tensor([[drawn[n]["examples"] for n in names], [drawn[n]["tokens"] for n in names]],
                             dtype=torch.int64, device=device)
        total = trainer.strategy.reduce(local, reduce_op="sum") if trainer.world_size > 1 else local
        return {"examples": total[0].tolist(), "tokens": total[1].tolist()}

    def _record_block(self, trainer: pl.Trainer, ds: Any, end: int) -> None:
        totals = self._drawn_totals(trainer, ds, trainer.strategy.root_device)
        before = self._totals or {"examples": [0] * len(ds.task_names), "tokens": [0] * len(ds.task_names)}
        ex = np.asarray(totals["examples"]) - np.asarray(before["examples"])
        tok = np.asarray(totals["tokens"]) - np.asarray(before["tokens"])
        start = self._end
        planned = ds.stages.latest(start)
        names = ds.task_names
        row = {"start_step": start, "end_step": end,
               "planned": dict(zip(names, planned.tolist())),
               "drawn": dict(zip(names, (ex / max(ex.sum(), 1)).tolist())),
               "drawn_tokens": dict(zip(names, (tok / max(tok.sum(), 1)).tolist())),
               "examples": dict(zip(names, ex.tolist())), "tokens": dict(zip(names, tok.tolist()))}
        self.blocks.append(row)
        self._totals, self._end = totals, end
        if trainer.is_global_zero:
            metrics = {}
            for key in ("planned", "drawn", "drawn_tokens"):
                metrics.update({f"mixing/{key}/{n}": float(v) for n, v in row[key].items()})
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            self.write(ds)

    def write(self, ds: Any) -> None:
        """`run_dir/mixing.json`: the stage list, the adaptive method and every recorded block (rank 0)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_run_file(self.run_dir, {
            "task_names": list(ds.task_names), "every": self.every,
            "adaptive": ds.adaptive.name if ds.adaptive is not None else None,
            "stages": ds.stages.listing(), "blocks": self.blocks})

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ds = self._dataset(trainer)
        if ds is None:
            return
        done = int(trainer.global_step) * int(trainer.accumulate_grad_batches)
        if done > self._end:  # the last, partial block
            self._record_block(trainer, ds, done)
        if trainer.is_global_zero and self.blocks:
            self.write(ds)
            plot_shares(self.blocks, self.run_dir / "mixing_shares.png")


def plot_shares(blocks: list[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Each task's share over training, one point per block: planned (solid lines, the rate stages) and drawn
    (dots, the examples the sampler built)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(blocks[0]["planned"])
    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    x = [b["start_step"] for b in blocks] + [blocks[-1]["end_step"]]
    mid = [(b["start_step"] + b["end_step"]) / 2 for b in blocks]
    for i, name in enumerate(names):
        color = f"C{i % 10}"
        planned = [b["planned"][name] for b in blocks]
        ax.step(x, planned + planned[-1:], where="post", color=color, label=name)
        ax.plot(mid, [b["drawn"][name] for b in blocks], "o", color=color, markersize=3, alpha=0.7)
    ax.set_xlabel("sampler step")
    ax.set_ylabel("share of examples")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "task shares per block: planned (lines) and drawn (dots)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
