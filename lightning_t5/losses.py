"""Token-level cross-entropy for T5 training: weighted by `decoder_loss_weights`, optional z-loss, Apex xentropy.

The loss of a batch is sum(w_i * CE_i) / sum(w_i) over target tokens (w = 0 on padding), i.e. the mean over real
target tokens, which makes a packed batch's loss independent of how examples were packed. The z-loss
(PaLM/T5X: z_loss * log(Z)^2) keeps the softmax normaliser near 1 for bf16 stability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .fused import probe_apex


@dataclass
class LossOutput:
    """`loss` includes the z-loss term; `z_loss` is reported separately (already weighted); `num_tokens` = sum(w)."""

    loss: torch.Tensor
    z_loss: torch.Tensor
    num_tokens: torch.Tensor
    per_token: torch.Tensor  # [B, L] unweighted cross-entropy (fp32), for per-task metrics


def _apex_token_losses(logits: torch.Tensor, targets: torch.Tensor, padding_idx: int) -> torch.Tensor:
    from apex.contrib.xentropy import SoftmaxCrossEntropyLoss  # type: ignore[import-not-found]

    return SoftmaxCrossEntropyLoss.apply(logits, targets, 0.0, padding_idx, logits.dtype != torch.float32)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None, *,
                        z_loss: float = 0.0, backend: str = "torch", pad_token_id: int = 0) -> LossOutput:
    """Weighted mean cross-entropy of `logits` [B, L, V] against `targets` [B, L].

    `weights` defaults to `targets != pad_token_id`. `backend="apex"` uses Apex's fused softmax-cross-entropy on
    CUDA when its `xentropy_cuda` extension is present (it ignores `pad_token_id` targets itself; the weights still
    apply); every other case uses torch in fp32.
    """
    if weights is None:
        weights = (targets != pad_token_id).float()
    weights = weights.float()
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    flat_targets = targets.reshape(-1).long()
    use_apex = backend == "apex" and flat_logits.is_cuda and probe_apex().xentropy and z_loss == 0.0
    if use_apex:
        per_token = _apex_token_losses(flat_logits, flat_targets, pad_token_id).float()
        z_term = flat_logits.new_zeros((), dtype=torch.float32)
    else:
        flat_logits = flat_logits.float()
        lse = torch.logsumexp(flat_logits, dim=-1)
        target_logit = flat_logits.gather(-1, flat_targets.clamp(0, vocab - 1).unsqueeze(-1)).squeeze(-1)
        per_token = lse - target_logit
        z_term = lse.square() * z_loss if z_loss else None
    flat_w = weights.reshape(-1)
    denom = flat_w.sum().clamp_min(1e-8)
    loss = (per_token * flat_w).sum() / denom
    if z_term is not None and z_term.dim() > 0:
        z_value = (z_term * flat_w).sum() / denom
    else:
        z_value = loss.new_zeros(())
    return LossOutput(loss=loss + z_value, z_loss=z_value.detach(), num_tokens=flat_w.sum().detach(),
                      per_token=per_token.view(targets.shape))


def hf_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hugging Face's loss: mean cross-entropy over labels != -100 (computed in fp32)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(), ignore_index=-100)
