"""T5 model: packing equivalence, masks, call conventions, options, config presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lightning_t5 import T5, T5Config
from lightning_t5.model.attention import relative_position_bucket
from lightning_t5.model.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(name="test", vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
             num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)


def make_model(seed: int = 0, **overrides) -> T5:
    torch.manual_seed(seed)
    return T5(T5Config(**{**SMALL, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, **overrides}))


def random_examples(k: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        n_in, n_out = int(torch.randint(3, 9, (1,), generator=g)), int(torch.randint(2, 6, (1,), generator=g))
        out.append((torch.randint(2, 64, (n_in,), generator=g), torch.randint(2, 64, (n_out,), generator=g)))
    return out


def pack(examples, enc_len: int, dec_len: int) -> dict[str, torch.Tensor]:
    """One packed row per call, built like seqio's EncDecFeatureConverter (inputs shifted right per segment)."""
    batch = {k: torch.zeros(1, n, dtype=torch.long) for k, n in
             [("encoder_input_tokens", enc_len), ("encoder_segment_ids", enc_len), ("encoder_positions", enc_len),
              ("decoder_target_tokens", dec_len), ("decoder_input_tokens", dec_len),
              ("decoder_segment_ids", dec_len), ("decoder_positions", dec_len)]}
    batch["decoder_loss_weights"] = torch.zeros(1, dec_len)
    e = d = 0
    for seg, (inputs, targets) in enumerate(examples, start=1):
        ni, nt = len(inputs), len(targets)
        batch["encoder_input_tokens"][0, e:e + ni] = inputs
        batch["encoder_segment_ids"][0, e:e + ni] = seg
        batch["encoder_positions"][0, e:e + ni] = torch.arange(ni)
        batch["decoder_target_tokens"][0, d:d + nt] = targets
        batch["decoder_input_tokens"][0, d + 1:d + nt] = targets[:-1]
        batch["decoder_segment_ids"][0, d:d + nt] = seg
        batch["decoder_positions"][0, d:d + nt] = torch.arange(nt)
        batch["decoder_loss_weights"][0, d:d + nt] = 1.0
        e, d = e + ni, d + nt
    return batch


@pytest.mark.parametrize("variant", ["relu", "gated-gelu"])
def test_packed_batch_equals_each_example_alone(variant):
    model = make_model(feed_forward_proj=variant, tie_word_embeddings=variant == "relu").eval()
    examples = random_examples(4, seed=1)
    packed = pack(examples, enc_len=40, dec_len=24)  # trailing padding too
    with torch.no_grad():
        out = model.loss(packed)
        for seg, example in enumerate(examples, start=1):
            alone = pack([example], enc_len=len(example[0]), dec_len=len(example[1]))
            ref = model.loss(alone)
            per_token = out.per_token[packed["decoder_segment_ids"] == seg]
            torch.testing.assert_close(per_token, ref.per_token[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(per_token.mean(), ref.loss, atol=1e-5, rtol=1e-5)
    assert out.num_tokens == sum(len(t) for _, t in examples)


def test_packed_positions_are_accepted_and_not_needed():
    """The bias of a packed row is that of the index difference (T5X), which equals the difference of seqio's
    per-segment positions for every pair the segment mask keeps: omitting the positions changes nothing."""
    model = make_model().eval()
    packed = pack(random_examples(3, seed=2), 30, 20)
    with torch.no_grad():
        full = model(**packed)
        derived = model(**{k: v for k, v in packed.items() if not k.endswith("positions")})
    torch.testing.assert_close(full, derived)


def test_seqio_padded_batch_matches_hf_style_call():
    model = make_model(seed=3).eval()
    g = torch.Generator().manual_seed(0)
    enc = torch.randint(2, 64, (2, 10), generator=g)
    labels = torch.randint(2, 64, (2, 6), generator=g)
    mask = torch.ones_like(enc)
    mask[1, 6:] = 0
    enc = enc * mask
    dec_in = model.shift_right(labels)
    with torch.no_grad():
        hf_style = model(input_ids=enc, attention_mask=mask, labels=labels)
        seqio = model(encoder_input_tokens=enc, decoder_input_tokens=dec_in, encoder_segment_ids=mask,
                      decoder_segment_ids=torch.ones_like(labels))
    torch.testing.assert_close(seqio, hf_style.logits, atol=1e-5, rtol=1e-5)
    ref_loss = torch.nn.functional.cross_entropy(hf_style.logits.reshape(-1, 64), labels.reshape(-1))
    torch.testing.assert_close(hf_style.loss, ref_loss)


def test_hf_style_labels_ignore_index_and_shift():
    model = make_model(seed=4).eval()
    labels = torch.tensor([[5, 6, 7, 1], [8, 1, -100, -100]])
    assert model.shift_right(labels).tolist() == [[0, 5, 6, 7], [0, 8, 1, 0]]
    enc = torch.randint(2, 64, (2, 5))
    with torch.no_grad():
        out = model(input_ids=enc, labels=labels)
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(TypeError, match="decoder_input_ids or labels"):
        model(input_ids=enc)
    with pytest.raises(TypeError, match="unexpected argument"):
        model(input_ids=enc, labels=labels, bogus=1)


def test_sdpa_matches_eager_attention():
    sdpa, eager = make_model(seed=5), make_model(seed=5, attention="eager")
    packed = pack(random_examples(3, seed=3), 30, 18)
    with torch.no_grad():
        torch.testing.assert_close(sdpa.eval()(**packed), eager.eval()(**packed), atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_same_loss_and_grads():
    plain, ckpt = make_model(seed=6), make_model(seed=6, gradient_checkpointing=True)
    packed = pack(random_examples(3, seed=4), 30, 18)
    losses = []
    for model in (plain, ckpt):
        model.train()
        out = model.loss(packed)
        out.loss.backward()
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_autocast_option_runs_and_keeps_fp32_params():
    model = make_model(seed=7, autocast_dtype="bfloat16").train()
    packed = pack(random_examples(2, seed=5), 20, 12)
    out = model.loss(packed)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    fp32 = make_model(seed=7).train().loss(packed).loss.detach()
    assert abs(out.loss.item() - fp32.item()) < 0.1 * fp32.item()


def test_z_loss_adds_log_z_squared():
    model = make_model(seed=8).eval()
    packed = pack(random_examples(2, seed=6), 20, 12)
    with torch.no_grad():
        plain, with_z = model.loss(packed), model.loss(packed, z_loss=1e-2)
    assert float(with_z.z_loss) > 0
    torch.testing.assert_close(with_z.loss, plain.loss + with_z.z_loss)


def test_dropout_active_only_in_training():
    model = make_model(seed=9, dropout_rate=0.3)
    packed = pack(random_examples(2, seed=7), 20, 12)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**packed), model(**packed))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(**packed), model(**packed))


def test_generate_batched_equals_one_by_one_and_stops_at_eos():
    model = make_model(seed=10).eval()
    with torch.no_grad():  # make EOS likely so rows finish at different steps
        model.lm_head.weight[1] = model.lm_head.weight[1] * 0 + model.lm_head.weight.mean(0) * 4
    g = torch.Generator().manual_seed(1)
    enc = torch.randint(2, 64, (3, 7), generator=g)
    mask = torch.ones_like(enc)
    mask[2, 4:] = 0
    for beams in (1, 3):
        batched = model.generate(enc, attention_mask=mask, max_new_tokens=8, num_beams=beams)
        for i in range(3):
            single = model.generate(enc[i:i + 1, : int(mask[i].sum())], max_new_tokens=8, num_beams=beams)
            n = single.shape[1]
            assert batched[i, :n].tolist() == single[0].tolist()
            assert (batched[i, n:] == 0).all()
        assert batched.shape[1] <= 8
        eos_rows = (batched == 1).any(1)
        for row in batched[eos_rows]:  # nothing but padding after EOS
            first = int((row == 1).nonzero()[0])
            assert (row[first + 1:] == 0).all()


def test_relative_position_bucket_layout():
    rel = torch.arange(-200, 201)
    bi = relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    causal = relative_position_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128)
    assert bi.min() == 0 and bi.max() == 31 and causal.max() == 31
    assert int(bi[rel == 0]) == 0 and int(bi[rel == 1]) == 17 and int(bi[rel == -1]) == 1
    assert (causal[rel > 0] == 0).all()  # future keys share bucket 0 in the decoder (masked anyway)
    assert int(causal[rel == -500 + 300]) == 31 and int(bi[rel == 200]) == 31


def test_tied_original_t5_has_no_lm_head_and_scales_outputs():
    model = make_model(feed_forward_proj="relu", tie_word_embeddings=True)
    assert model.lm_head is None and model.config.scale_outputs
    assert "lm_head.weight" not in model.state_dict()
    h = torch.randn(1, 2, 32)
    torch.testing.assert_close(model.lm_logits(h), h @ model.shared.weight.T * 32 ** -0.5)


@pytest.mark.parametrize("name", list(PRESETS))
def test_yaml_presets_match_config_and_build(name):
    values = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())
    assert T5Config.from_dict(values) == T5Config.from_preset(name)


@pytest.mark.parametrize("name,millions", [("small", 60.5), ("base", 222.9), ("t5_1_1_small", 76.96),
                                            ("t5_1_1_base", 247.6), ("t5_1_1_large", 783.2)])
def test_preset_parameter_counts_match_the_paper(name, millions):
    with torch.device("meta"):
        model = T5.from_preset(name, fused="none")
    assert abs(model.num_parameters() / 1e6 - millions) / millions < 0.01


def test_tiny_preset_holds_the_default_vocabulary():
    cfg = T5Config.from_preset("tiny")
    assert cfg.vocab_size >= 8100 and cfg.num_layers == 2 and cfg.num_decoder_layers == 2


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"model\.feed_forward_proj"):
        T5Config(feed_forward_proj="gated-tanh")
    with pytest.raises(ValueError, match=r"model\.fused"):
        T5Config(fused="cuda")
    with pytest.raises(ValueError, match=r"model\.d_modle \(did you mean model\.d_model"):
        T5Config.from_dict({"d_modle": 3})
    with pytest.raises(ValueError, match="Available presets"):
        T5Config.from_preset("t5_1_1_tiny")


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_logits_only_at_weighted_positions_same_loss_and_grads(z_loss):
    """The training loss (`model(**batch, return_loss=True)`, which `T5.loss` and the Lightning training step call)
    computes logits only where decoder_loss_weights > 0; loss and gradients equal the full [B, L, V] computation
    (padding and zero-weight positions contribute nothing to either)."""
    model = make_model(seed=11).eval()
    rows = [pack(random_examples(3, seed=s), 30, 20) for s in (4, 5)]
    batch = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    batch["decoder_loss_weights"][0, 1] = 0.0  # a zero-weight real token is skipped too
    weights = batch["decoder_loss_weights"]

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return out

    full_logits = model(**{k: v for k, v in batch.items()})
    assert full_logits.shape[:2] == weights.shape
    flat = full_logits.float().reshape(-1, full_logits.shape[-1])
    ce = torch.nn.functional.cross_entropy(flat, batch["decoder_target_tokens"].reshape(-1).long(), reduction="none")
    z = z_loss * torch.logsumexp(flat, -1).square()
    full = ((ce + z) * weights.reshape(-1)).sum()
    full.backward()
    ref = grads()

    out = model(**batch, return_loss=True, z_loss=z_loss)
    out.sum.backward()
    torch.testing.assert_close(out.sum, full, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads(), ref):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
    assert out.per_token.shape == weights.shape and bool((out.per_token[weights == 0] == 0).all())
    torch.testing.assert_close(out.per_token[weights > 0], ce.detach().view(weights.shape)[weights > 0])
    assert float(out.count) == float(weights.sum())
    torch.testing.assert_close(model.loss(batch, z_loss=z_loss).loss, full.detach() / weights.sum())


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_bias_of_index_differences_equals_the_position_bias(bidirectional):
    """`relative_bias` (a window over the 2L - 1 distinct relative positions) equals the bias looked up per
    (query, key) pair from positions 0..L-1, for square and non-square shapes."""
    from lightning_t5.model.attention import position_bias, relative_bias

    cfg = T5Config(**{**SMALL, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 20})
    embedding = torch.nn.Embedding(32, cfg.num_heads)
    for q_len, k_len in ((7, 7), (5, 9), (40, 3)):
        fast = relative_bias(embedding, q_len, k_len, bidirectional=bidirectional, cfg=cfg, device="cpu")
        ref = position_bias(embedding, torch.arange(q_len)[None], torch.arange(k_len)[None],
                            bidirectional=bidirectional, cfg=cfg)
        assert fast.shape == ref.shape == (1, cfg.num_heads, q_len, k_len)
        torch.testing.assert_close(fast, ref, rtol=0, atol=0)


def test_the_masks_every_layer_reads_are_contiguous():
    """The additive masks (bias + padding/segment mask) are laid out [B, H, Lq, Lk] with the keys innermost. The
    bias used to come out of `relative_bias` as a permuted view with the heads innermost, and the masks inherited
    it: every layer's softmax then read its mask with stride H along the keys (scalar code under inductor, ~6x
    slower than the vectorised kernel; 7 % of an eager T5.1.1-small step)."""
    model = make_model(seed=12).train()
    batch = pack(random_examples(4, seed=9), 40, 24)
    encoder_mask = model.encoder_mask(40, torch.device("cpu"), batch["encoder_segment_ids"])
    self_mask, cross_mask = model.decoder_masks(24, torch.device("cpu"), batch["decoder_segment_ids"],
                                                batch["encoder_segment_ids"])
    padded = model.encoder_mask(40, torch.device("cpu"), attention_mask=batch["encoder_segment_ids"] > 0)
    for mask in (encoder_mask, self_mask, cross_mask, padded):
        assert mask.is_contiguous(), mask.stride()


def test_training_forward_looks_up_the_relative_bias_once_per_distinct_offset():
    """A packed batch's bias costs one embedding lookup of 2L - 1 rows per stack, not one per (row, query, key):
    that [B, L, L] lookup and its backward were ~10 % of the tiny default step on CPU."""
    model = make_model(seed=12).train()
    batch = {k: torch.cat([v, v, v]) for k, v in pack(random_examples(4, seed=9), 40, 24).items()}
    looked_up = []
    for stack in (model.encoder, model.decoder):
        stack.relative_attention_bias.register_forward_hook(lambda m, args, out: looked_up.append(args[0].numel()))
    model.loss(batch).loss.backward()
    assert looked_up == [2 * 40 - 1, 2 * 24 - 1]
