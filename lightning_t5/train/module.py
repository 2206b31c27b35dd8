"""The LightningModule that trains one T5 on a task mixture and evaluates it per task.

Loss normalisation (why it is not a plain mean): packed batches hold different numbers of target tokens on each
rank, and DDP *averages* gradients over ranks. Dividing each rank's summed token loss by the all-reduced global token
count and multiplying by the world size makes the averaged gradient equal to the gradient of
sum(loss over every token of the global batch) / (global token count), i.e. exactly what one process computes on the
whole global batch. That is what makes the 2-process == 1-process test hold.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch

from lightning_t5.eval.evaluation import evaluate_predictions, gather_predictions
from lightning_t5.model.flops import compile_pays
from lightning_t5.model.fused import log_kernels, make_optimizer
from lightning_t5.model.t5 import SEQIO_INPUTS
from lightning_t5.train.schedules import lr_lambda
from lightning_t5.dist.sharding import build_model, gather_root, reshard_root, shard_model

__all__ = ["T5LightningModule", "lr_lambda", "build_optimizer", "NonFiniteLossError"]

LOSS_INPUTS = (*SEQIO_INPUTS, "decoder_target_tokens", "decoder_loss_weights")



class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; the message names the step and the tasks in the offending batch."""




def build_optimizer(model: torch.nn.Module, optim: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Adafactor (T5's: factored second moments, parameter-scale relative steps), AdamW or the Apex fused ones,
    built by `lightning_t5.model.fused.make_optimizer` on the model's kernel backend.

    torch.optim.Adafactor's step size is min(lr, 1/sqrt(step)) * RMS(param); with lr 0.01 that is T5's
    1/sqrt(max(step, 1e4)), so the `inverse_sqrt` LambdaLR on top of it agrees with it rather than decaying twice.
    Weight decay applies to matrices only (norm scales are excluded), the usual AdamW practice.
    """
    name = str(optim["name"])
    weight_decay = float(optim.get("weight_decay", 0.0) or 0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    groups: Any = params
    if name != "adafactor" and weight_decay:
        groups = [g for g in ({"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}) if g["params"]]
    kwargs: dict[str, Any] = {}
    if name != "adafactor":
        kwargs = {"betas": tuple(float(b) for b in optim.get("betas", (0.9, 0.999))),
                  "eps": float(optim.get("eps", 1e-8))}
    return make_optimizer(name, groups, lr=float(optim["lr"]), weight_decay=weight_decay,
                          backend=getattr(model, "backend", "auto"), **kwargs)


class T5LightningModule(pl.LightningModule):
    """Trains `lightning_t5.T5` on mixture batches (seqio feature names) and evaluates it per task.

    Constructor arguments are plain dicts/lists (saved as hyper-parameters, so checkpoints stay weights_only-loadable):
    `model_config` (T5Config fields), `optim` (optim section), `task_names` (the mixture's task order, indexing
    `decoder_task_ids`), `total_steps` (schedule length), `vocab_fingerprint` (checked on resume),
    `eval_options` (max_new_tokens, num_beams).
    """

    def __init__(self, model_config: Mapping[str, Any], optim: Mapping[str, Any], task_names: Sequence[str],
                 total_steps: int, vocab_fingerprint: str | None = None, log_every_n_steps: int = 10,
                 eval_options: Mapping[str, Any] | None = None, model: torch.nn.Module | None = None,
                 sharding: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model if model is not None else build_model(model_config, sharding)
        self.task_names = list(task_names)
        self.z_loss = float(model_config.get("z_loss", 0.0) or 0.0)
        self.eval_options = dict(eval_options or {})
        self._val_predictions: dict[str, list[tuple[int, Any, Any]]] = {}
        self.last_eval: dict[str, Any] | None = None
        self.last_train_loss: torch.Tensor | None = None
        #: set by `callbacks.MixingMonitor` under an adaptive mixing method: compute every step's per-task loss sums
        #: and target-token counts, summed over all ranks, into `last_task_losses` (the method's input)
        self.collect_task_losses = False
        self.last_task_losses: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(**{k: batch[k] for k in SEQIO_INPUTS if k in batch})
        return getattr(out, "logits", out)

    def _reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.trainer is None or self.trainer.world_size == 1:
            return value
        return self.trainer.strategy.reduce(value.clone(), reduce_op="sum")

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # The model's forward computes the loss (lightning_t5.model.losses.masked_cross_entropy): under DDP/FSDP only
        # the wrapped module's forward may run the model, and Liger's fused CE needs the output embedding in there.
        out = self.model(**{k: batch[k] for k in LOSS_INPUTS if k in batch}, return_loss=True, z_loss=self.z_loss)
        local_sum, losses = out.sum, out.per_token
        world = self.trainer.world_size if self._trainer is not None else 1
        global_tokens = self._reduce_sum(out.count).clamp(min=1.0)
        loss = local_sum * world / global_tokens
        mean_loss = self._reduce_sum(local_sum.detach()) / global_tokens  # the global batch's per-token loss

        if not torch.isfinite(mean_loss):
            raise NonFiniteLossError(self._nonfinite_message(float(mean_loss), batch))
        self.last_train_loss = mean_loss
        self._log_train(mean_loss, losses.detach(), batch)
        return loss

    def _nonfinite_message(self, value: float, batch: Mapping[str, torch.Tensor]) -> str:
        ids = batch.get("decoder_task_ids")
        names: list[str] = []
        if ids is not None:
            names = [self.task_names[i] if 0 <= i < len(self.task_names) else f"#{i}"
                     for i in torch.unique(ids[ids >= 0]).tolist()]
        step = self.trainer.global_step + 1 if self._trainer is not None else "?"
        return (f"Training loss is {value} at step {step} (batch tasks: {', '.join(names) or 'unknown'}). "
                f"Stopping: lower optim.lr, enable trainer.gradient_clip_val, use trainer.precision=32-true, or "
                f"inspect these tasks' data (python -m tasks show NAME). The last good checkpoint is in the run's "
                f"checkpoints/ directory.")

    def _log_train(self, mean_loss: torch.Tensor, losses: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> None:
        self.log("train/loss", mean_loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=1)
        step = self.trainer.global_step if self._trainer is not None else 0
        every = int(self.hparams.get("log_every_n_steps", 10))
        ids = batch.get("decoder_task_ids")
        log_now = step % every == 0
        if ids is None or not (log_now or self.collect_task_losses) or not self.task_names:
            return
        sums, counts = self.task_loss_sums(losses, ids)
        if self.collect_task_losses:
            self.last_task_losses = (sums, counts)
        if not log_now:
            return
        for i in torch.nonzero(counts).flatten().tolist():
            self.log(f"train_loss/{self.task_names[i]}", sums[i] / counts[i], on_step=True, on_epoch=False,
                     batch_size=1, rank_zero_only=True)

    def task_loss_sums(self, losses: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per task: the sum of the per-token loss over its target tokens and their count, summed over every rank
        (fp32; the same numbers on every rank, so an adaptive method proposes the same stage everywhere)."""
        ids = ids.long()
        valid = ids >= 0
        n_tasks = len(self.task_names)
        both = torch.zeros(2, n_tasks, device=losses.device)
        both[0].index_add_(0, ids[valid], losses[valid].float())
        both[1] = torch.bincount(ids[valid], minlength=n_tasks).to(both.dtype)
        both = self._reduce_sum(both)  # one collective for both
        return both[0], both[1]

    # ------------------------------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """`model.compile`, decided once, at the first training batch (its shape and device are the run's):
        `true` compiles, `auto` compiles when `compile_pays` (compile time < 5 % of the run's estimated time),
        sharded runs compile per block (FSDP2 wraps each block). The number of compiled graphs is printed whenever
        it grows and logged as `compile/graphs`."""
        config = getattr(self.model, "config", None)
        if getattr(self, "_compile_decided", False) or config is None:
            return
        self._compile_decided = True
        setting, tokens = config.compile, batch["encoder_input_tokens"]
        if setting == "auto":
            steps = (int(self.hparams["total_steps"]) - self.trainer.global_step) * self.trainer.accumulate_grad_batches
            device_name = torch.cuda.get_device_name(tokens.device) if tokens.is_cuda else ""
            dtype = "bf16" if "bf16" in str(self.trainer.precision) else "fp32"
            setting, why = compile_pays(config, steps, tokens.shape[0], tokens.shape[1],
                                        batch["decoder_input_tokens"].shape[1], tokens.device.type, device_name,
                                        torch.get_num_threads(), dtype)
            self._say(why)
        if setting is True:
            self.model.enable_compile("block" if self.hparams.get("sharding") else None)

    def on_train_batch_end(self, outputs: Any, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        count = getattr(self.model, "compile_count", 0)
        if count:
            self.log("compile/graphs", float(count), on_step=True, on_epoch=False, batch_size=1, rank_zero_only=True)
        if count != getattr(self, "_printed_compile_count", 0):
            self._printed_compile_count = count
            self._say(f"torch.compile ({self.model.compile_mode}): {count} graph(s) compiled so far "
                      f"(step {self.trainer.global_step})")

    def _say(self, line: str) -> None:
        if self.trainer.is_global_zero:
            print(line, flush=True)

    def configure_model(self) -> None:
        """FSDP2 sharding under `trainer=fsdp` (lightning_t5.dist.sharding); nothing otherwise."""
        if self.hparams.get("sharding"):
            shard_model(self.model, self.device_mesh, self.hparams["sharding"])

    def configure_optimizers(self) -> Any:
        optim = dict(self.hparams["optim"])
        optimizer = build_optimizer(self.model, optim)
        mixed = self._trainer is not None and "mixed" in str(self._trainer.precision)
        line = log_kernels(self.model, optimizer, autocast=mixed)  # logged, and printed on rank 0 of a Trainer
        if self._trainer is not None:
            self._say(line)
        schedule = lr_lambda(optim.get("schedule", "constant"), warmup_steps=int(optim.get("warmup_steps", 0)),
                             total_steps=int(self.hparams["total_steps"]),
                             min_lr_ratio=float(optim.get("min_lr_ratio", 0.0) or 0.0))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------------------------------------------------
    def _evaluators(self) -> list[Any]:
        dm = getattr(self.trainer, "datamodule", None)
        return list(getattr(dm, "evaluators", []) or [])

    def on_validation_epoch_start(self) -> None:
        self._val_predictions = {}
        gather_root(self.model)  # sharded runs: generation bypasses the root's forward hook

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        evaluator = self._evaluators()[dataloader_idx]
        rows = evaluator.predict(self.model, batch, max_new_tokens=self.eval_options.get("max_new_tokens"),
                                 num_beams=int(self.eval_options.get("num_beams", 1)),
                                 target_cap=self.eval_options.get("max_target_length"))
        self._val_predictions.setdefault(evaluator.name, []).extend(rows)

    def on_validation_epoch_end(self) -> None:
        reshard_root(self.model)
        evaluators = self._evaluators()
        if not evaluators:
            return
        local = {ev.name: self._val_predictions.get(ev.name, []) for ev in evaluators}
        merged = gather_predictions(local)
        self.last_eval = evaluate_predictions(evaluators, merged, int(self.trainer.global_step))
        metrics, averages = self.last_eval["metrics"], self.last_eval["averages"]
        for task, values in metrics.items():
            for key, value in values.items():
                self.log(f"{task}/{key}", float(value), batch_size=1, rank_zero_only=True)
        for key, value in averages.items():
            if not math.isnan(value):
                self.log(f"average/{key}", float(value), batch_size=1, rank_zero_only=True)
        self._val_predictions = {}
