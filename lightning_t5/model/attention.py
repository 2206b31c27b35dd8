"""T5 attention: relative position buckets, packed/padded masks folded into one additive bias, SDPA.

The relative bias and the mask are combined once per stack into a float tensor [B or 1, H, Lq, Lk] in the
activation dtype and shared by every layer (T5 computes the bias only in layer 0). Keeping it in the activation
dtype, contiguous, with the key dimension padded to a multiple of 8 in storage lets CUDA pick the memory-efficient
SDPA kernel (flash attention cannot take an additive bias).

The bias of a training batch is a function of (key index - query index) only, as in T5X: `relative_bias` builds
it from the 2L - 1 distinct relative positions ([1, H, Lq, Lk], one embedding lookup of 2L - 1 rows), and the
segment mask removes every pair across packed examples. Within a packed example the index difference equals the
difference of seqio's per-segment positions, so this is the bias of every pair that is kept, without a
[B, Lq, Lk] bucket computation and its [B, H, Lq, Lk] embedding lookup (whose backward was a tenth of a tiny
training step on CPU). The mask itself is additive ([B, 1, Lq, Lk]: 0 or a large negative), so combining it with
the bias is one broadcast add whose backward is a sum over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import T5Config
from .fused import Linear, dropout, linear, matmul


def relative_position_bucket(relative_position: torch.Tensor, *, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """Mesh-TensorFlow's bucketing of (key position - query position): exact for small distances, log-spaced up to
    `max_distance`, one bucket beyond. The decoder (causal) uses all buckets for non-positive distances."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = (relative_position > 0).to(relative_position.dtype) * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp_min(0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    large = max_exact + (
        torch.log(distance.clamp_min(1).float() / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(relative_position.dtype)
    large = large.clamp_max(num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


def relative_bias(embedding: nn.Embedding, q_len: int, k_len: int, *, bidirectional: bool, cfg: T5Config,
                  device: torch.device) -> torch.Tensor:
    """Bias [1, H, q_len, k_len] of (key index - query index), query i and key j at indices i and j of their rows.

    The q_len + k_len - 1 distinct relative positions are bucketed and looked up once; the [q_len, k_len] matrix is
    a sliding window over that table (row i starts at relative position -i), so the backward pass sums the
    gradient into 2L - 1 rows instead of scattering B * L * L of them into the embedding."""
    rel = torch.arange(-(q_len - 1), k_len, device=device)
    buckets = relative_position_bucket(rel, bidirectional=bidirectional,
                                       num_buckets=cfg.relative_attention_num_buckets,
                                       max_distance=cfg.relative_attention_max_distance)
    table = embedding(buckets)  # [q_len + k_len - 1, H]
    # unfold: row r holds table[r : r + k_len] (relative positions r - q_len + 1 ...); query i needs r = q_len-1-i.
    # Made contiguous as [1, H, q_len, k_len] (H * q_len * k_len values, once per stack): the permuted view keeps the
    # heads innermost (strides (., 1, H * k_len, H)), and the mask built from it inherits that layout, so every
    # layer's softmax would read it with stride H along the keys - scalar, unvectorised code, compiled or eager.
    return table.unfold(0, k_len, 1).flip(0).permute(1, 0, 2)[None].contiguous()


def position_bias(embedding: nn.Embedding, q_pos: torch.Tensor, k_pos: torch.Tensor, *, bidirectional: bool,
                  cfg: T5Config) -> torch.Tensor:
    """Bias [B|1, H, Lq, Lk] from explicit positions [B|1, Lq] and [B|1, Lk] (generation: one query at step t)."""
    rel = k_pos[:, None, :].long() - q_pos[:, :, None].long()
    buckets = relative_position_bucket(rel, bidirectional=bidirectional,
                                       num_buckets=cfg.relative_attention_num_buckets,
                                       max_distance=cfg.relative_attention_max_distance)
    return embedding(buckets).permute(0, 3, 1, 2)


def mask_value(dtype: torch.dtype) -> float:
    """What masked scores get: half the dtype's minimum, so that adding a bias never overflows to -inf (fp16) and a
    query whose keys are all masked gets finite, near-uniform weights instead of NaN."""
    return torch.finfo(dtype).min / 2


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where `keep`, `mask_value` elsewhere, in `dtype` (one pass over the bool mask)."""
    return (~keep).view(torch.uint8).to(dtype).mul_(mask_value(dtype))  # uint8 -> float is the vectorised path


def combine_bias_and_mask(bias: torch.Tensor | None, keep: torch.Tensor | None,
                          dtype: torch.dtype) -> torch.Tensor | None:
    """Additive attention mask: `bias` where `keep`, `mask_value` (plus the bias) elsewhere.

    `keep` is a bool tensor broadcastable to [B, 1, Lq, Lk], `bias` one broadcastable to [1, H, Lq, Lk]. The result
    is materialised once (every layer of the stack reads it). On CUDA its key dimension is padded to a multiple of 8
    in storage (then sliced) so the memory-efficient kernel accepts it without a copy.
    """
    if bias is None and keep is None:
        return None
    if keep is None:
        return bias.to(dtype)
    masked = additive_mask(keep, dtype)
    if bias is not None:
        masked = bias.to(dtype) + masked
    lk = masked.shape[-1]
    if masked.is_cuda and lk % 8:
        padded = torch.empty((*masked.shape[:-1], lk + (-lk) % 8), dtype=dtype, device=masked.device)[..., :lk]
        masked = padded.copy_(masked)
    return masked


KVCache = tuple[torch.Tensor, torch.Tensor]


def to_autocast_dtype(x: torch.Tensor) -> torch.Tensor:
    """Cast an activation once to the autocast dtype when it feeds several matmuls (q/k/v, wi_0/wi_1, every
    cross-attention layer): autocast would otherwise cast the same fp32 tensor again for each of them."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        if x.dtype != dtype and x.is_floating_point():
            return x.to(dtype)
    return x


class T5Attention(nn.Module):
    """Multi-head attention without logit scaling; parameter names follow HF (`q`, `k`, `v`, `o`,
    `relative_attention_bias` in the first layer of each stack)."""

    def __init__(self, cfg: T5Config, has_relative_attention_bias: bool = False) -> None:
        super().__init__()
        self.n_heads = cfg.num_heads
        self.d_kv = cfg.d_kv
        self.dropout = cfg.dropout_rate
        self.eager = cfg.attention == "eager"
        inner = cfg.inner_dim
        self.q = Linear(cfg.d_model, inner)
        self.k = Linear(cfg.d_model, inner)
        self.v = Linear(cfg.d_model, inner)
        self.o = Linear(inner, cfg.d_model)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.n_heads, self.d_kv).transpose(1, 2)

    def _projections(self, hidden: torch.Tensor, source: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v heads. Self-attention runs q/k/v as ONE GEMM against the concatenated weights, cross-attention
        k/v as one: a wider GEMM is faster than three narrow ones (and its backward sums the input gradients inside
        the GEMM), while the parameters stay HF's separate `q`, `k`, `v` (the copy of the weights is tiny)."""
        inner = self.n_heads * self.d_kv
        if source is None:
            qkv = linear(hidden, torch.cat([self.q.weight, self.k.weight, self.v.weight]))
            q, k, v = qkv.split(inner, dim=-1)
        else:
            q = self.q(hidden)
            k, v = linear(source, torch.cat([self.k.weight, self.v.weight])).split(inner, dim=-1)
        return self._heads(q), self._heads(k), self._heads(v)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None, key_value_states: torch.Tensor | None = None,
                past: KVCache | None = None, static_past: bool = False) -> tuple[torch.Tensor, KVCache]:
        """`key_value_states`: encoder output for cross-attention. `past`: cached (K, V) - appended to for
        self-attention, reused as-is when `static_past` (cross-attention during generation)."""
        b, length, _ = hidden.shape
        hidden = to_autocast_dtype(hidden)
        if past is not None and static_past:
            q = self._heads(self.q(hidden))
            k, v = past
        else:
            q, k, v = self._projections(hidden, key_value_states)
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        p = self.dropout if self.training else 0.0
        if mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        # CPU training: SDPA's CPU kernel cannot return the bias gradient (its math fallback then also checks every
        # row for full masking) and draws dropout masks with bernoulli; the explicit path below is the same
        # arithmetic, ~25 % faster forward + backward at the tiny default shape, with `fused.dropout`'s mask.
        if self.eager or (q.device.type == "cpu" and (p > 0.0 or torch.is_grad_enabled())):
            scores = matmul(q, k.transpose(-1, -2))
            if mask is not None:
                scores = scores + mask
            weights = dropout(torch.softmax(scores.float(), dim=-1).to(q.dtype), p, self.training)
            out = matmul(weights, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=1.0)
        out = out.transpose(1, 2).reshape(b, length, self.n_heads * self.d_kv)
        return self.o(out), (k, v)
