"""DoReMi's proxy training (Xie et al. 2023, `sangmichaelxie/doremi`): Group DRO against a reference model.

A run with `doremi.reference=<checkpoint>` trains this module instead of the plain one. Each step, on the batch the
(static) mixture drew:

    lambda_i = mean over task-i target tokens of clip(loss_proxy - loss_ref, 0)      (per-task excess loss)
    alpha    = softmax(log alpha + eta * lambda);  alpha = (1 - eps) * alpha + eps / K
    loss     = sum_i alpha_i * (mean loss of the proxy over task-i tokens)            (reweighted, not resampled)

and the result is the time average of alpha over the steps, written at the end of training as the run's
`weights.json` and `mixing/doremi.yaml` (lightning_t5.train.mixing_weights). The update uses this step's alpha, as
Algorithm 1 of the paper does (the proxy's per-token losses come from one forward pass: the model returns the logits
of the target positions and `lightning_t5.model.losses.masked_cross_entropy`, the one loss, is applied twice, once
without gradient for the excess and once with the per-task weights).

Choices where the paper and its code leave room, each the code's unless said:
* alpha starts uniform (the paper's Algorithm 1; the code starts from its reference weights) and the average is
  over alpha_1..alpha_T (the paper).
* A task with no tokens in a step keeps its last lambda (the code; ours starts at 0, no evidence of excess loss).
* The loss is the paper's sum of alpha-weighted per-task means; the code weights tokens by alpha_i / (sampling
  weight_i), which agrees in expectation (its issues #9, #25, #33 discuss the difference).
* With gradient accumulation, alpha is updated on every micro-batch and each micro-batch's loss uses the alpha of
  its own update (the code updates once per optimizer step, leaving k-1 micro-batches on stale weights).
* Defaults eta = 1, eps = 1e-4 (the code's). Its issue #5: weights near one-hot at small scale; a reference trained
  on size-proportional weights, larger batches and eta = 0.1 help.

Data parallel: the per-task excess sums and token counts are summed over ranks before the update, so every rank holds
the same alpha, and the loss is normalised by the global per-task token counts (times the world size, which DDP's
gradient averaging divides out). alpha, its running average and the last lambda travel in the checkpoint (key
"doremi"), so a resumed run continues the same sequence of weights. The reference model is a frozen copy on every
rank, not part of the module's parameters, state dict or optimizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from lightning_t5.dist.checkpoint import load_checkpoint, load_model, resolve_checkpoint
from lightning_t5.errors import CheckpointError
from lightning_t5.model.losses import masked_cross_entropy
from lightning_t5.model.t5 import SEQIO_INPUTS
from lightning_t5.train.mixing_weights import write_weights
from lightning_t5.train.module import LOSS_INPUTS, NonFiniteLossError, T5LightningModule

__all__ = ["GroupDRO", "DoReMiLightningModule", "load_reference"]


class GroupDRO:
    """The domain-weight state of DoReMi (plain torch, float64 on the CPU; identical on every rank)."""

    def __init__(self, num_tasks: int, eta: float = 1.0, eps: float = 1e-4) -> None:
        if num_tasks < 1:
            raise ValueError("GroupDRO needs at least one task")
        self.eta, self.eps, self.k = float(eta), float(eps), int(num_tasks)
        self.alpha = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        self.average = torch.zeros(num_tasks, dtype=torch.float64)
        self.excess = torch.zeros(num_tasks, dtype=torch.float64)  # last lambda per task
        self.updates = 0

    def update(self, excess_sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """One step from the (global) per-task sums of clipped excess loss and token counts; returns the new alpha."""
        excess_sums = excess_sums.detach().to("cpu", torch.float64)
        counts = counts.detach().to("cpu", torch.float64)
        seen = counts > 0
        self.excess = torch.where(seen, excess_sums / counts.clamp(min=1.0), self.excess)
        logits = torch.log(self.alpha) + self.eta * self.excess
        self.alpha = (1.0 - self.eps) * torch.softmax(logits, dim=0) + self.eps / self.k
        self.updates += 1
        self.average += (self.alpha - self.average) / self.updates
        return self.alpha

    def averaged(self) -> torch.Tensor:
        """The time-averaged alpha (DoReMi's result); alpha itself before the first update."""
        return self.average.clone() if self.updates else self.alpha.clone()

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha.clone(), "average": self.average.clone(), "excess": self.excess.clone(),
                "updates": self.updates, "eta": self.eta, "eps": self.eps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        alpha = torch.as_tensor(state["alpha"], dtype=torch.float64)
        if alpha.shape != (self.k,):
            raise CheckpointError(f"the checkpoint's DoReMi state has {alpha.numel()} task weights, this run "
                                  f"{self.k}: resume with the same mixture")
        self.alpha = alpha
        self.average = torch.as_tensor(state["average"], dtype=torch.float64)
        self.excess = torch.as_tensor(state["excess"], dtype=torch.float64)
        self.updates = int(state["updates"])


def load_reference(path: str, vocab_fingerprint: str | None) -> torch.nn.Module:
    """The frozen reference model of `doremi.reference` (a checkpoint file, checkpoint directory or run folder),
    with the vocabulary checked against this run's (token ids must mean the same)."""
    ckpt = resolve_checkpoint(path, "doremi.reference")
    saved = (load_checkpoint(ckpt).get("hyper_parameters") or {}).get("vocab_fingerprint")
    if saved and vocab_fingerprint and saved != vocab_fingerprint:
        raise CheckpointError(f"doremi.reference={path!r} was trained with a different vocabulary (fingerprint "
                              f"{saved} vs {vocab_fingerprint}): its token losses cannot be compared with this run's.")
    model = load_model(ckpt)
    model.requires_grad_(False)
    return model.eval()


def _identity(hidden: torch.Tensor, weight: Any) -> torch.Tensor:
    return hidden  # the model already returned logits: masked_cross_entropy applies no projection


class DoReMiLightningModule(T5LightningModule):
    """`T5LightningModule` whose training step is DoReMi's Group DRO against `doremi["reference"]` (see the module
    docstring). `doremi`: {"reference": checkpoint, "eta", "eps", "weights_dir": where weights.json goes}."""

    def __init__(self, *args: Any, doremi: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.doremi = dict(doremi)
        self.dro = GroupDRO(len(self.task_names), eta=float(doremi.get("eta", 1.0)),
                            eps=float(doremi.get("eps", 1e-4)))
        # A tuple keeps the reference out of the module's children: not in the state dict, the optimizer or DDP.
        self._reference = (load_reference(str(doremi["reference"]), kwargs.get("vocab_fingerprint")),)

    @property
    def reference(self) -> torch.nn.Module:
        return self._reference[0]

    def on_fit_start(self) -> None:
        self.reference.to(self.device)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        weights = batch["decoder_loss_weights"]
        mask = weights > 0
        ids = batch["decoder_task_ids"].long()
        k = len(self.task_names)
        with torch.no_grad():
            ref = self.reference(**{key: batch[key] for key in LOSS_INPUTS if key in batch}, return_loss=True,
                                 z_loss=0.0).per_token
        logits = self.model(**{key: batch[key] for key in SEQIO_INPUTS if key in batch}, logits_mask=mask)
        targets, tids = batch["decoder_target_tokens"][mask], ids[mask]
        with torch.no_grad():
            proxy = masked_cross_entropy(logits.detach(), None, targets, weights[mask], mask, z_loss=0.0,
                                         backend="torch", project=_identity).per_token
        valid = mask & (ids >= 0)
        excess = (proxy - ref).clamp(min=0.0)[valid].double()
        sums = torch.zeros(2 * k, dtype=torch.float64, device=logits.device)
        sums[:k].index_add_(0, ids[valid], excess)
        sums[k:].index_add_(0, ids[valid], weights[valid].double())
        sums = self._sum_over_ranks(sums)  # every rank: the global batch's sums
        alpha = self.dro.update(sums[:k], sums[k:]).to(logits.device)
        counts = sums[k:]
        world = self.trainer.world_size if self._trainer is not None else 1
        per_task = torch.where(counts > 0, alpha / counts.clamp(min=1e-12), torch.zeros_like(alpha))
        token_weights = (weights[mask].double() * per_task[tids.clamp(min=0)] * (tids >= 0)).float()
        out = masked_cross_entropy(logits, None, targets, token_weights, mask, z_loss=self.z_loss, backend="torch",
                                   project=_identity)
        loss = out.sum * world
        global_tokens = counts.sum().clamp(min=1.0)
        plain = self._sum_over_ranks((proxy * weights * valid).sum().detach().double()) / global_tokens
        if not torch.isfinite(plain) or not torch.isfinite(loss.detach()):
            raise NonFiniteLossError(self._nonfinite_message(float(plain), batch))
        self.last_train_loss = plain.float()
        if self._trainer is not None:  # logging needs a Trainer (a step can also be called by hand)
            self._log_train(plain.float(), proxy, batch)
            self._log_weights()
        return loss

    def _sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        if self._trainer is None or self.trainer.world_size == 1:
            return value
        return self.trainer.strategy.reduce(value.clone(), reduce_op="sum")

    def _log_weights(self) -> None:
        if self.trainer.global_step % int(self.hparams.get("log_every_n_steps", 10)) != 0:
            return
        for name, a, avg in zip(self.task_names, self.dro.alpha.tolist(), self.dro.averaged().tolist()):
            self.log(f"doremi_alpha/{name}", a, on_step=True, on_epoch=False, batch_size=1, rank_zero_only=True)
            self.log(f"doremi_average/{name}", avg, on_step=True, on_epoch=False, batch_size=1, rank_zero_only=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["doremi"] = self.dro.state_dict()

    def on_load_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        state = checkpoint.get("doremi")
        if state is None:
            raise CheckpointError("resuming a DoReMi proxy run from a checkpoint without DoReMi state (key 'doremi'); "
                                  "resume the proxy from its own run folder")
        self.dro.load_state_dict(state)

    def averaged_weights(self) -> dict[str, float]:
        """task -> time-averaged alpha (the DoReMi mixture)."""
        return dict(zip(self.task_names, self.dro.averaged().tolist()))

    def on_train_end(self) -> None:
        out = self.doremi.get("weights_dir")
        if not out or self._trainer is None:
            return  # every rank writes (the same alpha; atomic renames), so none reads it before it exists
        write_weights(Path(out), self.averaged_weights(), name="doremi",
                      source=f"DoReMi time-averaged domain weights over {self.dro.updates} updates (eta "
                             f"{self.dro.eta}, eps {self.dro.eps}, reference {self.doremi['reference']})",
                      extra={"steps": int(self.trainer.global_step), "updates": self.dro.updates,
                             "final_alpha": dict(zip(self.task_names, self.dro.alpha.tolist()))})
