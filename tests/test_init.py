"""T5's own initialisation (mesh-tf / t5x variance scaling) for every model preset.

Two checks:
* the initial loss of the real preset on random tokens is ln V +- 1 (unit-scale initial logits give about
  ln V + 1/2); run for the presets that fit this machine at full depth;
* every parameter is drawn with the std of the formula below, written out here independently of the model code;
  presets too big for CPU memory are built with one encoder and one decoder layer (the stds depend on the widths
  only, never on the depth).

Why not the loss of a one-layer big preset: with tied embeddings (original T5) a shallow decoder's residual stream
is dominated by its input token's embedding, whose dot product with itself is sqrt(d_model) after the output
scaling, so one-layer `large`/`3B`/`11B` start at a loss of ~23 while the real 24-layer models do not. The loss
depends on depth there, so only the full-depth presets get the loss check.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_t5 import T5
from lightning_t5.model.config import PRESETS, T5Config

FULL_DEPTH = ["tiny", "small", "t5_1_1_small", pytest.param("base", marks=pytest.mark.slow),
              pytest.param("t5_1_1_base", marks=pytest.mark.slow)]
ONE_LAYER = ["large", "3B", "t5_1_1_large", pytest.param("t5_1_1_xl", marks=pytest.mark.slow),
             pytest.param("11B", marks=pytest.mark.slow),
             pytest.param("t5_1_1_xxl", marks=pytest.mark.slow)]


def expected_std(name: str, cfg: T5Config) -> float:
    """The T5 recipe: std per parameter type (`initializer_factor` 1)."""
    leaf = name.rsplit(".", 2)[-2]  # e.g. "q" in "...SelfAttention.q.weight"
    if name == "shared.weight":
        return 1.0
    if name == "lm_head.weight":  # untied output projection: unit-scale logits, as mesh-tf/t5x (not HF's 1.0)
        return cfg.d_model ** -0.5
    if "layer_norm" in name:
        return 0.0  # all ones
    table = {"q": (cfg.d_model * cfg.d_kv) ** -0.5, "k": cfg.d_model ** -0.5, "v": cfg.d_model ** -0.5,
             "o": (cfg.num_heads * cfg.d_kv) ** -0.5, "wi": cfg.d_model ** -0.5, "wi_0": cfg.d_model ** -0.5,
             "wi_1": cfg.d_model ** -0.5, "wo": cfg.d_ff ** -0.5, "relative_attention_bias": cfg.d_model ** -0.5}
    return table[leaf]


def random_batch(vocab_size: int, batch: int = 8, enc_len: int = 32, dec_len: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(2, vocab_size, (batch, dec_len), generator=g)
    return {"encoder_input_tokens": torch.randint(2, vocab_size, (batch, enc_len), generator=g),
            "decoder_target_tokens": targets,
            "decoder_input_tokens": torch.cat([torch.zeros(batch, 1, dtype=torch.long), targets[:, :-1]], dim=1)}


@pytest.mark.parametrize("preset", FULL_DEPTH)
def test_initial_loss_of_each_preset_is_ln_vocab(preset):
    torch.manual_seed(0)
    model = T5.from_preset(preset, dropout_rate=0.0).eval()
    with torch.no_grad():
        loss = model.loss(random_batch(model.config.vocab_size)).loss.item()
    ln_v = math.log(model.config.vocab_size)
    assert abs(loss - ln_v) < 1.0, f"{preset}: initial loss {loss:.2f}, ln V = {ln_v:.2f}"


@pytest.mark.parametrize("preset", [p for p in FULL_DEPTH if isinstance(p, str)] + ONE_LAYER)
def test_init_std_of_every_parameter_follows_t5(preset):
    depth = {} if preset in ("tiny", "small", "t5_1_1_small") else dict(num_layers=1, num_decoder_layers=1)
    torch.manual_seed(0)
    model = T5.from_preset(preset, **depth)
    cfg = model.config
    assert (model.lm_head is None) == cfg.tie_word_embeddings
    for name, param in model.named_parameters():
        want = expected_std(name, cfg)
        if want == 0.0:
            assert torch.equal(param, torch.ones_like(param)), name
            continue
        got = param.float().std().item()
        tolerance = 6.0 / math.sqrt(2 * param.numel())  # six standard errors of a sample std
        assert abs(got / want - 1.0) < tolerance, f"{preset}: {name} std {got:.5f}, expected {want:.5f}"
        assert abs(param.float().mean().item()) < 6.0 * want / math.sqrt(param.numel()), name


def test_untied_head_behind_output_scaling_keeps_unit_logits():
    """An untied head with `scale_decoder_outputs=True` (HF v5 configs can say so) is already scaled by
    d_model^-1/2 in the forward pass, so it is drawn with std 1: the initial logits stay unit-scale."""
    torch.manual_seed(0)
    model = T5.from_preset("tiny", scale_decoder_outputs=True, dropout_rate=0.0).eval()
    assert model.lm_head is not None and abs(model.lm_head.weight.std().item() - 1.0) < 0.01
    with torch.no_grad():
        loss = model.loss(random_batch(model.config.vocab_size)).loss.item()
    assert abs(loss - math.log(model.config.vocab_size)) < 1.0


def test_presets_list_is_covered():
    covered = {p if isinstance(p, str) else p.values[0] for p in FULL_DEPTH + ONE_LAYER}
    assert covered == set(PRESETS)
