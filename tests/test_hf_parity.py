"""Parity with transformers' T5ForConditionalGeneration (both variants): load, save, logits, generation."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lightning_t5 import T5  # noqa: E402
from lightning_t5.model.config import PRESETS  # noqa: E402
from lightning_t5.model.hf import HFCheckpointError  # noqa: E402

VARIANTS = {
    "t5": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "t5_1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
SMALL = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4,
             relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0)


def make_hf(variant: str, seed: int = 0, untie_values: bool = False, **overrides):
    torch.manual_seed(seed)
    config = transformers.T5Config(**{**SMALL, **overrides}, **VARIANTS[variant], decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    if untie_values:  # a real T5.1.1 checkpoint: lm_head distinct from shared
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.05)
    return model


def padded_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, SMALL["vocab_size"], (3, 25), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 17:] = 0
    attention_mask[2, 5:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    labels = torch.randint(2, SMALL["vocab_size"], (3, 9), generator=g)
    labels[1, 6:] = -100
    return input_ids, attention_mask, labels


def hf_outputs(hf, input_ids, attention_mask, labels):
    with torch.no_grad():
        return hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


# t5: tied + scaled; t5_1_1 as transformers v5 builds it from a config (tied lm_head, unscaled); t5_1_1 as the
# released checkpoints (distinct lm_head.weight, unscaled).
@pytest.mark.parametrize("variant,untie_values", [("t5", False), ("t5_1_1", False), ("t5_1_1", True)])
def test_from_hf_logits_match(tmp_path, variant, untie_values):
    hf = make_hf(variant, untie_values=untie_values)
    hf.save_pretrained(tmp_path)
    ours = T5.from_hf(str(tmp_path)).eval()
    assert ours.config.scale_outputs == (variant == "t5")
    assert (ours.lm_head is None) == (not untie_values)
    input_ids, attention_mask, labels = padded_batch()
    ref = hf_outputs(hf, input_ids, attention_mask, labels)
    with torch.no_grad():
        out = ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_hf_loads_in_transformers(tmp_path, variant):
    hf = make_hf(variant, seed=3, untie_values=variant == "t5_1_1")
    hf.save_pretrained(tmp_path / "hf")
    ours = T5.from_hf(str(tmp_path / "hf")).eval()
    ours.save_hf(str(tmp_path / "ours"))
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["scale_decoder_outputs"] is (variant == "t5")
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    assert reloaded.config.scale_decoder_outputs is (variant == "t5")
    input_ids, attention_mask, labels = padded_batch(seed=5)
    ref = hf_outputs(reloaded, input_ids, attention_mask, labels)
    with torch.no_grad():
        out = ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    # and our own round trip keeps the exact weights
    again = T5.from_hf(str(tmp_path / "ours"))
    for (k, a), (k2, b) in zip(sorted(ours.state_dict().items()), sorted(again.state_dict().items())):
        assert k == k2 and torch.equal(a, b), k


def test_scratch_t5_1_1_saves_untied_lm_head(tmp_path):
    from lightning_t5 import T5Config

    cfg = T5Config(name="t", **{**SMALL, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False})
    ours = T5(cfg).eval()
    ours.save_hf(str(tmp_path))
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert torch.equal(hf.lm_head.weight, ours.lm_head.weight)
    input_ids, attention_mask, labels = padded_batch(seed=7)
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits,
                                   hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits,
                                   atol=1e-5, rtol=1e-5)


def generation_pair(tmp_path, variant: str, eos_like: int | None):
    """HF model + our copy. `eos_like`: make EOS score 1% above that token, so some rows stop early."""
    # transformers' generation cache assumes num_decoder_layers == num_layers
    hf = make_hf(variant, seed=11, untie_values=variant == "t5_1_1", num_decoder_layers=SMALL["num_layers"])
    if eos_like is not None:
        with torch.no_grad():
            hf.lm_head.weight[1] = hf.lm_head.weight[eos_like] * 1.01
    hf.save_pretrained(tmp_path)
    return hf, T5.from_hf(str(tmp_path)).eval()


def hf_generate(hf, input_ids, attention_mask, **kwargs):
    with torch.no_grad():
        out = hf.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, min_length=0,
                          eos_token_id=1, pad_token_id=0, decoder_start_token_id=0, **kwargs)
    return out[:, 1:]  # HF output starts with the decoder start token; ours does not


def after_eos_to_pad(tokens: torch.Tensor) -> torch.Tensor:
    """HF pads finished beams with EOS, we pad with 0: compare up to and including the first EOS."""
    is_eos = (tokens == 1).long()
    return tokens.masked_fill(is_eos.cumsum(-1) - is_eos > 0, 0)


# (variant, token whose logit EOS copies): with an EOS-like token, rows stop at different steps.
GEN_CASES = [("t5", None), ("t5", 27), ("t5_1_1", None), ("t5_1_1", 66), ("t5_1_1", 61)]


@pytest.mark.parametrize("variant,eos_like", GEN_CASES)
def test_greedy_generation_matches_hf(tmp_path, variant, eos_like):
    hf, ours = generation_pair(tmp_path, variant, eos_like)
    input_ids, attention_mask, _ = padded_batch(seed=2)
    ref = hf_generate(hf, input_ids, attention_mask, max_new_tokens=12, num_beams=1)
    got = ours.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12)
    assert got.shape == ref.shape
    assert torch.equal(got, ref)
    if eos_like is not None:
        assert (got == 1).any(), "the EOS-like case must exercise early stopping"


@pytest.mark.parametrize("variant,eos_like", GEN_CASES)
def test_beam_search_matches_hf_best_sequence(tmp_path, variant, eos_like):
    hf, ours = generation_pair(tmp_path, variant, eos_like)
    input_ids, attention_mask, _ = padded_batch(seed=2)
    ref = after_eos_to_pad(hf_generate(hf, input_ids, attention_mask, max_new_tokens=12, num_beams=4,
                                       length_penalty=1.0, early_stopping=False))
    got = ours.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12, num_beams=4)
    width = max(got.shape[1], ref.shape[1])
    got, ref = (torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in (got, ref))
    assert torch.equal(got, ref)


def test_from_hf_errors_are_clear(tmp_path):
    with pytest.raises(HFCheckpointError, match="no config.json"):
        T5.from_hf(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", **SMALL}))
    with pytest.raises(HFCheckpointError, match="No weights"):
        T5.from_hf(str(tmp_path))


def test_from_hf_reads_pytorch_bin_with_weights_only(tmp_path):
    hf = make_hf("t5", seed=17)
    hf.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = T5.from_hf(str(tmp_path)).eval()
    input_ids, attention_mask, labels = padded_batch()
    torch.testing.assert_close(ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits,
                               hf_outputs(hf, input_ids, attention_mask, labels).logits, atol=1e-5, rtol=1e-5)


@contextmanager
def loader_messages() -> Iterator[list[str]]:
    """Python warnings raise; transformers' log records at warning level and above are collected in the list."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield messages
    finally:
        logging.getLogger("transformers").removeHandler(handler)


# transformers 5.23 ties every T5's lm_head to shared and says so when a checkpoint's lm_head differs (model/hf.py)
UNTIED_HEAD_WARNING = ("The tied weights mapping and config for this model specifies to tie shared.weight to "
                       "lm_head.weight, but both are present in the checkpoints with different values")
FULL_SIZE = ("tiny",)  # the others: one layer each way and narrow (what decides the warnings is the config)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_presets_export_loads_in_transformers_without_warnings(tmp_path, preset):
    """Issue 21 A.14: `save_hf` of every preset loads with `T5ForConditionalGeneration.from_pretrained` with no
    Python warning and nothing logged at warning level, and computes our logits. The untied presets (tiny,
    t5_1_1_*) get transformers' tied-weights warning, which no config.json can avoid in 5.23: they xfail with that
    one message, and fail on any other."""
    shrink = {} if preset in FULL_SIZE else dict(num_layers=1, num_decoder_layers=1, d_model=64, d_ff=128,
                                                   num_heads=2)
    torch.manual_seed(0)
    ours = T5.from_preset(preset, fused="torch", dropout_rate=0.0, **shrink).eval()
    ours.save_hf(str(tmp_path))
    with loader_messages() as messages:
        hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    input_ids, attention_mask, labels = padded_batch(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits,
                                   ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits,
                                   atol=1e-4, rtol=1e-4)
    if ours.lm_head is not None and len(messages) == 1 and messages[0].startswith(UNTIED_HEAD_WARNING):
        pytest.xfail("transformers 5.23: T5Config.__post_init__ sets tie_word_embeddings=True for every T5, so an "
                     "untied lm_head always logs the tied-weights warning (no config key avoids it)")
    assert messages == []
