"""The training loss of T5: one masked cross-entropy, with z-loss, on the kernel backend's fastest CE.

The loss of a batch is sum(w_i * (CE_i + z_loss * log(Z_i)^2)) / sum(w_i) over the target positions with
decoder_loss_weights w > 0, i.e. the mean over real target tokens, which makes a packed batch's loss independent of
how examples were packed. The z-loss (PaLM/T5X) keeps the softmax normaliser near 1 for bf16 stability.

`masked_cross_entropy` takes the decoder's hidden states at those positions and the output embedding rather than
logits, so that each backend can choose how to get from one to the other:

* torch / none / apex: logits [N, V] = hidden @ W^T (only the N weighted positions, never padding), then torch's
  cross-entropy in fp32, or Apex's fused softmax-cross-entropy (`apex.contrib.xentropy`) on CUDA when z_loss is 0.
* liger (CUDA): LigerFusedLinearCrossEntropy, which does the projection and the cross-entropy in chunks and never
  materialises the [N, V] logits.

It returns the *sum* and the token count, not a mean: data-parallel training divides the sum by the token count of
the global batch (`lightning_t5.train.module`), and `T5.loss` divides by the local count. It is called from inside
`T5.forward(return_loss=True)`, so the output embedding is used inside the wrapped module's forward, as DDP and FSDP
(which unshards parameters only for forward) require.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .fused import cpu_closed_form, cross_entropy_kernel, linear


@dataclass
class LossOutput:
    """`sum` = sum(w * (CE + z-term)), differentiable; `count` = sum(w); `per_token` [B, L] = detached CE per
    target position (0 where w = 0, z-term excluded), for per-task metrics; `z_sum` = detached sum(w * z-term)."""

    sum: torch.Tensor
    count: torch.Tensor
    per_token: torch.Tensor
    z_sum: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """Mean per-token loss (z-loss included) over this batch's weighted target tokens."""
        return self.sum / self.count.clamp_min(1e-8)

    @property
    def z_loss(self) -> torch.Tensor:
        """The z-loss part of `loss` (already weighted by z_loss), detached."""
        return self.z_sum / self.count.clamp_min(1e-8)

    @property
    def num_tokens(self) -> torch.Tensor:
        return self.count


def _torch_token_losses(logits: torch.Tensor, targets: torch.Tensor, z_loss: float
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    logits = logits.float()
    ce = F.cross_entropy(logits, targets, reduction="none")
    z = z_loss * torch.logsumexp(logits, dim=-1).square() if z_loss else None
    return ce, z


class CPULinearCrossEntropy(torch.autograd.Function):
    """`torch_loss_sums` for eager fp32 CPU training, with a backward of one pass over [N, V] before the products.

    Autograd's backward of log_softmax + nll zero-fills a [N, V] gradient, scatters into it and runs
    log_softmax_backward (reading two [N, V] tensors, writing a third), then multiplies every row by its loss
    weight. Here the backward turns the saved log-probabilities into softmax - one-hot (one exp pass) and
    applies the per-row scale s = w * upstream to the [N, d] sides of the two products instead of the [N, V] one:
    grad_hidden = s * (G @ W), grad_W = G^T @ (s * hidden). Same function, same gradients."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                z_loss: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = hidden @ weight.t()
        log_probs = torch.log_softmax(logits, dim=-1)
        ce = log_probs.gather(1, targets[:, None]).squeeze_(1).neg_()
        lse = torch.logsumexp(logits, dim=-1) if z_loss else None
        del logits
        loss_sum, ce, z_sum = _weighted_sums(ce, z_loss * lse.square() if lse is not None else None, weights)
        ctx.save_for_backward(hidden, weight, targets, weights, log_probs, lse)
        ctx.z_loss = z_loss
        ctx.mark_non_differentiable(ce, z_sum)
        return loss_sum, ce, z_sum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_sum: torch.Tensor, _grad_ce: Any, _grad_z: Any
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        hidden, weight, targets, weights, log_probs, lse = ctx.saved_tensors
        grad = log_probs.exp()  # softmax (a new buffer: the saved one must survive a retain_graph backward)
        if lse is not None:  # d(z * lse^2)/dlogits = 2 z lse softmax
            grad.mul_((1.0 + 2.0 * ctx.z_loss * lse)[:, None])
        grad.scatter_add_(1, targets[:, None], grad.new_full((len(targets), 1), -1.0))
        scale = (weights * grad_sum)[:, None]
        grad_hidden = (grad @ weight).mul_(scale) if ctx.needs_input_grad[0] else None
        grad_weight = grad.t() @ (hidden * scale) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None


def _apex_token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from apex.contrib.xentropy import SoftmaxCrossEntropyLoss  # type: ignore[import-not-found]

    # padding_idx -100: no target is ignored here (only weighted positions are passed in).
    return SoftmaxCrossEntropyLoss.apply(logits, targets, 0.0, -100, logits.dtype != torch.float32).float()


def _liger_token_losses(hidden: torch.Tensor, output_weight: torch.Tensor, targets: torch.Tensor, z_loss: float
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    from liger_kernel.ops import LigerFusedLinearCrossEntropyFunction  # optional: present when the backend resolved

    """Per-token (CE + z-term) with its gradient, and the detached z-term (None without z-loss).
    reduction="none" takes per-token upstream gradients, i.e. the loss weights."""
    total, z, *_ = LigerFusedLinearCrossEntropyFunction.apply(
        hidden, output_weight, targets, None, None, -100, float(z_loss), 0.0, "none", None, bool(z_loss))
    return total.float(), (z.float().detach() if z_loss else None)


def masked_cross_entropy(hidden: torch.Tensor, output_weight: torch.Tensor, targets: torch.Tensor,
                         weights: torch.Tensor, mask: torch.Tensor, *, z_loss: float = 0.0, backend: str = "torch",
                         project: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.linear,
                         compiled_sums: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
                         ) -> LossOutput:
    """THE training loss (see the module docstring).

    hidden [N, d]: decoder output at the N positions where `mask` [B, L] is True (row-major order), already scaled
    as the output layer expects; output_weight [V, d]; targets, weights [N]: those positions' target ids and loss
    weights. `project(hidden, weight)` computes logits where the backend needs them (`lightning_t5.model.fused.linear`
    in the model, for its CPU bf16 path). `compiled_sums`: `torch_loss_sums` compiled, used by the torch kernel
    (a compiled model's training forward). Returns sums (see `LossOutput`); `per_token` is scattered back to [B, L].
    """
    targets = targets.long()
    weights = weights.float()
    kernel = cross_entropy_kernel(backend, is_cuda=hidden.is_cuda, z_loss=z_loss)
    if (kernel == "torch.cross_entropy" and compiled_sums is None and project in (F.linear, linear)
            and _eager_cpu_fp32(hidden, output_weight)):
        loss_sum, ce, z_sum = CPULinearCrossEntropy.apply(hidden, output_weight, targets, weights, float(z_loss))
    elif kernel == "torch.cross_entropy":
        loss_sum, ce, z_sum = (compiled_sums or torch_loss_sums)(hidden, output_weight, targets, weights, z_loss,
                                                                   project)
    elif kernel == "liger.FusedLinearCrossEntropy":
        total, z = _liger_token_losses(hidden, output_weight, targets, z_loss)
        loss_sum, ce, z_sum = _weighted_sums(total - z if z is not None else total, z, weights)
    else:
        loss_sum, ce, z_sum = _weighted_sums(_apex_token_losses(project(hidden, output_weight), targets), None,
                                             weights)
    per_token = ce.new_zeros(mask.shape).masked_scatter(mask, ce)
    return LossOutput(sum=loss_sum, count=weights.sum().detach(), per_token=per_token, z_sum=z_sum)


def _eager_cpu_fp32(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Where `CPULinearCrossEntropy` runs (for a plain projection, not e.g. DoReMi's identity on logits): CPU, fp32
    operands, no autocast, not being traced by torch.compile."""
    return (cpu_closed_form(hidden.device, hidden.dtype, weight.dtype, compiled=torch.compiler.is_compiling())
            and not torch.is_autocast_enabled("cpu"))


def torch_loss_sums(hidden: torch.Tensor, output_weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                    z_loss: float, project: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.linear
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The torch kernel's part of `masked_cross_entropy` that depends only on the N weighted positions:
    (sum(w * (CE + z-term)), detached CE [N], detached sum(w * z-term)).

    A compiled model passes this function compiled with N dynamic (`T5.enable_compile`) as `compiled_sums`:
    inductor then fuses the log-softmax, the target gather, the z-loss and the weighting into two passes over the
    [N, V] logits forward and one backward, where eager torch writes log-probabilities, zero-fills a gradient of
    the same size and reads both again (about a third of the output layer's time at the tiny default shape)."""
    ce, z = _torch_token_losses(project(hidden, output_weight), targets, z_loss)
    return _weighted_sums(ce, z, weights)


def _weighted_sums(ce: torch.Tensor, z: torch.Tensor | None, weights: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum(w * (CE + z-term)), detached CE, detached sum(w * z-term)) of per-token CE [N] and z-terms (or None)."""
    total = ce + z if z is not None else ce
    loss_sum = (total * weights).sum()
    z_sum = (z.detach() * weights).sum() if z is not None else loss_sum.detach().new_zeros(())
    return loss_sum, ce.detach(), z_sum


def hf_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hugging Face's loss: mean cross-entropy over labels != -100 (computed in fp32). Used by the HF-style call."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(), ignore_index=-100)
