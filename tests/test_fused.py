"""Kernel backends: selection logic (Apex probe mocked), torch vs reference equivalence, optimizers, losses."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from lightning_t5 import T5, T5Config
from lightning_t5 import fused
from lightning_t5.fused import ApexStatus, FusedBackendError, T5RMSNorm, TorchRMSNorm, make_optimizer
from lightning_t5.losses import token_cross_entropy

SMALL = dict(name="test", vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
             relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
             tie_word_embeddings=False)


@pytest.fixture
def fresh_probe():
    fused.probe_apex.cache_clear()
    yield
    fused.probe_apex.cache_clear()


def test_explicit_backends_pass_through():
    assert fused.resolve_backend("torch") == "torch"
    assert fused.resolve_backend("none") == "none"
    with pytest.raises(FusedBackendError, match=r"model\.fused='cuda'"):
        fused.resolve_backend("cuda")


def test_auto_without_apex_logs_torch(monkeypatch, caplog):
    monkeypatch.setattr(fused, "probe_apex", lambda: ApexStatus(False, "the `apex` package is not installed"))
    with caplog.at_level(logging.INFO, logger="lightning_t5.fused"):
        assert fused.resolve_backend("auto") == "torch"
    assert "torch backend" in caplog.text and "not installed" in caplog.text


def test_auto_with_apex_logs_apex(monkeypatch, caplog):
    monkeypatch.setattr(fused, "probe_apex", lambda: ApexStatus(True, "NVIDIA Apex with CUDA extensions", True))
    with caplog.at_level(logging.INFO, logger="lightning_t5.fused"):
        assert fused.resolve_backend("auto") == "apex"
    assert "apex backend" in caplog.text


def test_apex_requested_but_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(fused, "probe_apex", lambda: ApexStatus(False, "CUDA is not available"))
    with pytest.raises(FusedBackendError) as err:
        T5(T5Config(**SMALL, fused="apex"))
    message = str(err.value)
    assert "model.fused=apex" in message and "CUDA is not available" in message
    assert "APEX_CUDA_EXT=1" in message and "model.fused=torch" in message


def _fake_package(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("files,reason", [
    ({"apex/__init__.py": "raise ImportError('pyramid apex')"}, "import apex.normalization"),
    ({"apex/__init__.py": "", "apex/normalization/__init__.py": ""}, "without its CUDA extensions"),
])
def test_probe_rejects_impostor_and_python_only_apex(tmp_path, monkeypatch, fresh_probe, files, reason):
    _fake_package(tmp_path, files)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "apex" or m.startswith("apex.")]:
        monkeypatch.delitem(sys.modules, name)
    status = fused.probe_apex()
    assert not status.available and reason in status.reason
    for name in [m for m in sys.modules if m == "apex" or m.startswith("apex.")]:
        monkeypatch.delitem(sys.modules, name)


def test_probe_on_this_machine_is_consistent(fresh_probe):
    status = fused.probe_apex()
    assert status.available == (fused.resolve_backend("auto", log=False) == "apex")


@pytest.mark.parametrize("shape", [(3, 5, 16), (2, 16)])
def test_torch_rmsnorm_matches_reference(shape):
    torch.manual_seed(0)
    ref, fast = T5RMSNorm(16, 1e-6), TorchRMSNorm(16, 1e-6)
    with torch.no_grad():
        ref.weight.normal_()
        fast.weight.copy_(ref.weight)
    x = torch.randn(shape)
    torch.testing.assert_close(fast(x), ref(x), atol=1e-6, rtol=1e-5)
    # bf16 activations (autocast) stay fp32 after the norm, like HF's T5LayerNorm
    xb = x.bfloat16()
    assert ref(xb).dtype == fast(xb).dtype == torch.float32
    torch.testing.assert_close(fast(xb), ref(xb), atol=1e-6, rtol=1e-5)
    # bf16 weights: output in the weight dtype
    ref.bfloat16(), fast.bfloat16()
    assert fast(x).dtype == ref(x).dtype == torch.bfloat16
    torch.testing.assert_close(fast(x), ref(x), atol=1e-2, rtol=1e-2)


def test_model_torch_and_none_backends_agree():
    torch.manual_seed(1)
    a = T5(T5Config(**SMALL, fused="torch"))
    b = T5(T5Config(**SMALL, fused="none"))
    b.load_state_dict(a.state_dict())
    assert isinstance(a.encoder.final_layer_norm, TorchRMSNorm)
    assert type(b.encoder.final_layer_norm) is T5RMSNorm
    enc, labels = torch.randint(2, 64, (2, 9)), torch.randint(2, 64, (2, 5))
    outs = []
    for model in (a, b):
        out = model(input_ids=enc, labels=labels)
        out.loss.backward()
        outs.append(out)
    torch.testing.assert_close(outs[0].logits, outs[1].logits, atol=1e-5, rtol=1e-5)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def _step(optimizer_name: str, backend: str) -> torch.Tensor:
    torch.manual_seed(2)
    layer = torch.nn.Linear(8, 4)
    opt = make_optimizer(optimizer_name, layer.parameters(), lr=1e-2, weight_decay=0.1, backend=backend)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(5, 8)).square().mean().backward()
        opt.step()
    return layer.weight.detach()


def test_optimizers():
    fused_w, plain_w = _step("adamw", "torch"), _step("adamw", "none")
    torch.testing.assert_close(fused_w, plain_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(_step("fused_adam", "torch"), plain_w, atol=1e-6, rtol=1e-5)
    opt = make_optimizer("adamw", [torch.nn.Parameter(torch.ones(2))], lr=1e-3, backend="torch")
    assert opt.defaults["fused"] is True
    assert isinstance(make_optimizer("adafactor", [torch.nn.Parameter(torch.ones(2, 2))], lr=1e-2),
                      torch.optim.Adafactor)
    assert not torch.equal(_step("adafactor", "torch"), fused_w)
    with pytest.raises(FusedBackendError, match="optim.name=fused_lamb needs NVIDIA Apex"):
        make_optimizer("fused_lamb", [torch.nn.Parameter(torch.ones(2))], lr=1e-3, backend="torch")
    with pytest.raises(ValueError, match="optim.name='sgd'"):
        make_optimizer("sgd", [], lr=1.0)


def test_token_cross_entropy_matches_weighted_torch_loss():
    torch.manual_seed(3)
    logits, targets = torch.randn(2, 6, 11), torch.randint(1, 11, (2, 6))
    targets[1, 4:] = 0
    weights = (targets != 0).float()
    out = token_cross_entropy(logits, targets, weights)
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), reduction="none")
    torch.testing.assert_close(out.loss, (per_token * weights.reshape(-1)).sum() / weights.sum())
    torch.testing.assert_close(out.per_token.reshape(-1), per_token)
    assert out.num_tokens == 10
    torch.testing.assert_close(token_cross_entropy(logits, targets).loss, out.loss)  # weights default to non-pad


# -- dropout ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5, 0.01])
def test_fast_dropout_rate_scale_and_gradient(p):
    """fused.dropout drops a share p of the elements (quantised to 1/65536), keeps E[out] = x, and its gradient is
    the same mask times the same scale."""
    torch.manual_seed(0)
    x = (torch.rand(400, 1000, dtype=torch.float64) + 0.5).requires_grad_()
    out = fused.dropout(x, p, training=True)
    dropped = (out == 0).double().mean().item()
    n = x.numel()
    assert abs(dropped - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1 / 65536
    kept = out != 0
    ratios = out[kept] / x[kept]
    scale = ratios[0].item()
    assert torch.allclose(ratios, torch.full_like(ratios, scale), rtol=1e-12) and abs(scale - 1 / (1 - p)) < 1e-4
    assert abs(out.mean().item() / x.mean().item() - 1) < 0.01
    out.sum().backward()
    assert torch.equal(x.grad != 0, kept) and torch.allclose(x.grad[kept], torch.full_like(ratios, scale))


def test_fast_dropout_seeded_and_lanes_independent():
    """Same seed, same mask; different seed, different mask; eval mode and p=0 are the identity. Odd sizes work
    (the 64-bit draws are split into four 16-bit lanes and trimmed)."""
    x = torch.ones(3, 7, 13)
    torch.manual_seed(1)
    a = fused.dropout(x, 0.3)
    torch.manual_seed(1)
    b = fused.dropout(x, 0.3)
    torch.manual_seed(2)
    c = fused.dropout(x, 0.3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert fused.dropout(x, 0.3, training=False) is x and fused.dropout(x, 0.0) is x
    module = fused.Dropout(0.3).eval()
    assert module(x) is x
    # neighbouring lanes of one 64-bit draw are uncorrelated
    torch.manual_seed(3)
    keep = (fused.dropout(torch.ones(200_000), 0.5) != 0).double().view(-1, 4)
    corr = torch.corrcoef(keep.T)
    assert (corr - torch.eye(4)).abs().max() < 0.02


def test_cpu_attention_dropout_path_matches_sdpa_without_dropout():
    """With dropout off the explicit CPU path and SDPA agree; with dropout on, training runs the explicit path and
    a seeded forward is reproducible."""
    torch.manual_seed(0)
    model = T5(T5Config.from_preset("tiny", vocab_size=64, dropout_rate=0.1))
    ids = torch.randint(2, 64, (2, 9))
    labels = torch.randint(2, 64, (2, 5))
    torch.manual_seed(5)
    first = model.train()(input_ids=ids, labels=labels).loss
    torch.manual_seed(5)
    again = model(input_ids=ids, labels=labels).loss
    assert torch.equal(first, again)
    model.eval()
    sdpa = model(input_ids=ids, labels=labels).logits
    for module in model.modules():
        if hasattr(module, "eager"):
            module.eager = True
    eager = model(input_ids=ids, labels=labels).logits
    assert torch.allclose(sdpa, eager, atol=1e-5)


# -- bf16 matmuls on CPUs without bf16 arithmetic ----------------------------------------------------------------
def test_emulated_bf16_linear_is_bf16_autocast_arithmetic(monkeypatch):
    """The fp32 GEMM of bf16-rounded operands, rounded to bf16, equals torch's own bf16 GEMM up to the last bit of
    a few elements (accumulation order), in forward and backward; fp32 and non-autocast calls are untouched."""
    torch.manual_seed(0)
    x = torch.randn(64, 96, requires_grad=True)
    w = torch.randn(80, 96, requires_grad=True)
    monkeypatch.setattr(fused, "cpu_has_native_bf16", lambda: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emulated = fused.linear(x, w)
        emulated_mm = fused.matmul(x, w.t())
    (emulated.float() ** 2).sum().backward()
    gx_emulated, gw_emulated = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    monkeypatch.setattr(fused, "cpu_has_native_bf16", lambda: True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        native = fused.linear(x, w)
    (native.float() ** 2).sum().backward()
    assert emulated.dtype == native.dtype == emulated_mm.dtype == torch.bfloat16
    assert (emulated != native).float().mean() < 0.01 and torch.allclose(emulated.float(), native.float(), rtol=1e-2)
    assert torch.equal(emulated, emulated_mm)
    for ours, theirs in ((gx_emulated, x.grad), (gw_emulated, w.grad)):
        assert ((ours - theirs).norm() / theirs.norm()) < 1e-2
    monkeypatch.setattr(fused, "cpu_has_native_bf16", lambda: False)
    assert torch.equal(fused.linear(x, w), torch.nn.functional.linear(x, w))  # no autocast: plain F.linear
