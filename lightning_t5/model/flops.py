"""Model FLOPs and MFU of T5 training, by the formula in the project's reference notes (not 6*N*T).

Per (T_enc, T_dec) sequence pair, forward + backward:

    6 * [N_enc*T_enc + (N_dec - N_xKV)*T_dec + N_xKV*T_enc + V*d*T_dec]
      + 12 * h * d_kv * (L_enc*T_enc^2 + L_dec*(T_dec^2 + T_dec*T_enc))

N_enc / N_dec: encoder / decoder weights without embeddings (norm scales included); N_xKV: the decoder's
cross-attention K/V projections, which run over the T_enc encoder positions, not T_dec; V*d*T_dec: the output
projection. 6*N*(T_enc+T_dec) would count every decoder weight at every encoder position and roughly double the
MFU of a 512/114 run. Pure arithmetic: used by bench/model.py and bench/gpu_check.py, tested on CPU.
"""

from __future__ import annotations

from typing import Any

#: Dense peak FLOP/s (no sparsity) by GPU name substring: bf16 tensor cores, and "fp32" = TF32 tensor cores.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756e12, "fp32": 378e12},
    "H100": {"bf16": 989.4e12, "fp32": 494.7e12},
    "H200": {"bf16": 989.4e12, "fp32": 494.7e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
    "L4": {"bf16": 121e12, "fp32": 60e12},
}


def peak_flops(device_name: str, dtype: str) -> float | None:
    """The table's peak for a `torch.cuda.get_device_name()` string, or None for an unlisted GPU."""
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in device_name:
            return PEAK_FLOPS[key][dtype]
    return None


def training_flops_per_sequence(cfg: Any, t_enc: int, t_dec: int) -> float:
    """Training FLOPs of one (t_enc, t_dec) sequence pair for a `T5Config`-like `cfg` (see the module docstring)."""
    d, h, dkv, ff = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
    inner = h * dkv
    ffn = (3 if cfg.is_gated else 2) * d * ff
    # per layer: attention q/k/v/o, feed-forward, and one RMSNorm scale per sub-layer (2 encoder, 3 decoder)
    n_enc = cfg.num_layers * (4 * d * inner + ffn + 2 * d) + d
    cross = 4 * d * inner + d
    n_dec = cfg.num_decoder_layers * (4 * d * inner + cross + ffn + 2 * d) + d
    n_xkv = cfg.num_decoder_layers * 2 * d * inner
    dense = n_enc * t_enc + (n_dec - n_xkv) * t_dec + n_xkv * t_enc + cfg.vocab_size * d * t_dec
    attention = 12 * h * dkv * (cfg.num_layers * t_enc ** 2 + cfg.num_decoder_layers * (t_dec ** 2 + t_dec * t_enc))
    return float(6 * dense + attention)


def mfu(cfg: Any, t_enc: int, t_dec: int, sequences_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (None when the peak is unknown)."""
    if not peak:
        return None
    return training_flops_per_sequence(cfg, t_enc, t_dec) * sequences_per_s / peak
