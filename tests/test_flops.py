"""The FLOPs/MFU arithmetic of bench/model.py and bench/gpu_check.py,
checked against parameter counts of real models."""

from __future__ import annotations

import pytest
import torch

from lightning_t5 import T5, T5Config
from lightning_t5.model.flops import mfu, peak_flops, training_flops_per_sequence


def _counted(cfg: T5Config, t_enc: int, t_dec: int) -> float:
    """The formula with N_enc, N_dec, N_xKV counted from the model's own parameters (meta tensors: no memory)."""
    with torch.device("meta"):
        model = T5(cfg.replace(fused="none"))
    n = {"encoder": 0, "decoder": 0}
    for name, p in model.named_parameters():
        stack = name.split(".")[0]
        if stack in n and "relative_attention_bias" not in name:
            n[stack] += p.numel()
    n_xkv = sum(p.numel() for name, p in model.named_parameters() if "EncDecAttention.k" in name or
                "EncDecAttention.v" in name)
    dense = (n["encoder"] * t_enc + (n["decoder"] - n_xkv) * t_dec + n_xkv * t_enc
             + cfg.vocab_size * cfg.d_model * t_dec)
    attention = 12 * cfg.num_heads * cfg.d_kv * (cfg.num_layers * t_enc ** 2
                                                 + cfg.num_decoder_layers * (t_dec ** 2 + t_dec * t_enc))
    return 6 * dense + attention


@pytest.mark.parametrize("preset", ["t5_1_1_base", "small", "tiny"])
def test_training_flops_match_the_counted_parameters(preset):
    cfg = T5Config.from_preset(preset)
    assert training_flops_per_sequence(cfg, 512, 114) == pytest.approx(_counted(cfg, 512, 114), rel=1e-12)


def test_t5_1_1_base_flops_and_mfu_numbers():
    cfg = T5Config.from_preset("t5_1_1_base")
    flops = training_flops_per_sequence(cfg, 512, 114)
    assert flops == pytest.approx(4.2602e11, rel=1e-4)  # ~0.43 TFLOP per 512/114 sequence pair
    # REFERENCE.md: nanoT5's 143k tokens/s on an A100 (bf16) is ~31 % MFU by this formula
    assert mfu(cfg, 512, 114, 143e3 / (512 + 114), peak_flops("NVIDIA A100-SXM4-80GB", "bf16")) == pytest.approx(
        0.31, abs=0.005)
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.4e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("NVIDIA H200", "fp32") == 494.7e12
    assert peak_flops("Quadro P1000", "bf16") is None
    # 400 sequences/s on an H100 SXM: 400 * flops / 989.4e12
    assert mfu(cfg, 512, 114, 400.0, 989.4e12) == pytest.approx(400 * flops / 989.4e12)
    assert mfu(cfg, 512, 114, 400.0, None) is None
