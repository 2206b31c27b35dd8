"""Kernel backends: selection logic (tests named `*_mocked_*` replace the Apex probe), torch vs reference
equivalence, the loss, the kernel log line, and CUDA-only equivalence of the Apex and Liger backends to torch."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lightning_t5 import T5, T5Config
from lightning_t5.model import fused
from lightning_t5.model.fused import BackendStatus, FusedBackendError, T5RMSNorm, TorchRMSNorm, make_optimizer
from lightning_t5.model.losses import masked_cross_entropy

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


def test_liger_requested_where_it_cannot_run_is_a_clear_error():
    """No mock: on this machine either liger_kernel is missing or CUDA is (the CUDA tests below cover the rest)."""
    if fused.probe_liger().available:
        pytest.skip("Liger kernels run here")
    with pytest.raises(FusedBackendError) as err:
        T5(T5Config(**SMALL, fused="liger"))
    message = str(err.value)
    assert "model.fused=liger" in message and fused.probe_liger().reason in message
    assert "lightning-t5[liger]" in message and "model.fused=torch" in message


def test_selection_logic_mocked_apex_absent_auto_picks_torch(monkeypatch, caplog):
    monkeypatch.setattr(fused, "probe_apex", lambda: BackendStatus(False, "the `apex` package is not installed"))
    with caplog.at_level(logging.INFO, logger="lightning_t5.model.fused"):
        assert fused.resolve_backend("auto") == "torch"
    assert "torch backend" in caplog.text and "not installed" in caplog.text


def test_selection_logic_mocked_apex_present_auto_picks_apex(monkeypatch, caplog):
    monkeypatch.setattr(fused, "probe_apex", lambda: BackendStatus(True, "NVIDIA Apex with CUDA extensions", True))
    with caplog.at_level(logging.INFO, logger="lightning_t5.model.fused"):
        assert fused.resolve_backend("auto") == "apex"
    assert "apex backend" in caplog.text


def test_selection_logic_mocked_apex_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(fused, "probe_apex", lambda: BackendStatus(False, "CUDA is not available"))
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


@pytest.mark.parametrize("shape", [(3, 5, 16), (2, 16)])
def test_torch_rmsnorm_cpu_backward_is_the_reference_gradient(shape):
    """Eager CPU training runs `CPURMSNorm` (closed-form backward): its gradients are the reference module's
    (autograd through T5's formula), and its backward passes gradcheck in float64."""
    torch.manual_seed(0)
    ref, fast = T5RMSNorm(16, 1e-6), TorchRMSNorm(16, 1e-6)
    with torch.no_grad():
        ref.weight.normal_()
        fast.weight.copy_(ref.weight)
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    out = fast(x)
    assert type(out.grad_fn).__name__ == "CPURMSNormBackward"
    expected = torch.autograd.grad(ref(x), (x, ref.weight), grad)
    for got, want in zip(torch.autograd.grad(out, (x, fast.weight), grad), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    x64 = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fused.CPURMSNorm.apply(a, b, 1e-6), (x64, w64))
    with torch.no_grad():  # evaluation: torch's kernel
        assert fast(x).grad_fn is None


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


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_masked_cross_entropy_sums_weighted_token_losses(z_loss, compiled):
    """Eager, and with `torch_loss_sums` compiled as a compiled T5 passes it (N dynamic)."""
    from lightning_t5.model.losses import torch_loss_sums

    compiled_sums = torch.compile(torch_loss_sums, dynamic=True) if compiled else None
    torch.manual_seed(3)
    hidden, weight = torch.randn(2, 6, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(1, 11, (2, 6))
    weights = torch.ones(2, 6)
    weights[1, 4:] = 0.0
    weights[0, 0] = 0.5
    mask = weights > 0
    out = masked_cross_entropy(hidden[mask], weight, targets[mask], weights[mask], mask, z_loss=z_loss,
                               compiled_sums=compiled_sums)
    logits = (hidden @ weight.T).reshape(-1, 11)
    ce = torch.nn.functional.cross_entropy(logits, targets.reshape(-1), reduction="none")
    z = z_loss * torch.logsumexp(logits, -1).square()
    expected = ((ce + z) * weights.reshape(-1)).sum()
    torch.testing.assert_close(out.sum, expected)
    torch.testing.assert_close(out.count, torch.tensor(9.5))
    torch.testing.assert_close(out.loss, expected / 9.5)
    torch.testing.assert_close(out.z_loss, (z * weights.reshape(-1)).sum() / 9.5)
    torch.testing.assert_close(out.per_token.reshape(-1), ce.detach() * mask.reshape(-1))
    for g_out, g_ref in zip(torch.autograd.grad(out.sum, (hidden, weight)), torch.autograd.grad(expected,
                                                                                              (hidden, weight))):
        torch.testing.assert_close(g_out, g_ref)


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_eager_cpu_cross_entropy_is_torch_loss_sums(z_loss):
    """The eager fp32 CPU path (`CPULinearCrossEntropy`, gradient formed in place) and autograd through
    `torch_loss_sums`: the same sums, per-token CE and gradients; float64 gradcheck of the hand-written backward."""
    from lightning_t5.model.losses import CPULinearCrossEntropy, torch_loss_sums

    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(53, 16, generator=g, requires_grad=True)
    targets, weights = torch.randint(0, 53, (37,), generator=g), torch.rand(37, generator=g) + 0.1
    fast = CPULinearCrossEntropy.apply(hidden, weight, targets, weights, z_loss)
    ref = torch_loss_sums(hidden, weight, targets, weights, z_loss)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b)
    upstream = torch.tensor(0.7)
    for a, b in zip(torch.autograd.grad(fast[0], (hidden, weight), upstream),
                    torch.autograd.grad(ref[0], (hidden, weight), upstream)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda h, w: CPULinearCrossEntropy.apply(h, w, targets, weights.double(), z_loss)[0], (h64, w64))


def test_kernel_line_names_what_runs_and_is_logged_once(caplog):
    model = T5(T5Config(**SMALL, fused="torch"))
    opt = make_optimizer("adamw", model.parameters(), lr=1e-3, backend=model.backend)
    line = fused.describe_kernels(model, opt)
    assert line == ("kernels: backend=torch, rms_norm=lightning_t5.CPURMSNorm, gated_ff=torch, "
                    "cross_entropy=lightning_t5.CPULinearCrossEntropy, optimizer=torch.AdamW(fused=True)")
    compiled = T5(T5Config(**SMALL, fused="torch"))
    compiled.enable_compile("model")  # compiled training runs inductor's code for the norm, the gate and the loss
    assert fused.describe_kernels(compiled).startswith("kernels: backend=torch, rms_norm=torch.F.rms_norm, "
                                                    "gated_ff=inductor, cross_entropy=inductor(torch.cross_entropy)")
    reference = T5(T5Config(**SMALL, fused="none"))
    assert "rms_norm=reference(T5LayerNorm)" in fused.describe_kernels(reference)
    assert "optimizer=torch.AdamW" in fused.describe_kernels(
        reference, make_optimizer("adamw", reference.parameters(), lr=1e-3, backend="none"))
    fused._LOGGED.discard(line)
    with caplog.at_level(logging.INFO, logger="lightning_t5.model.fused"):
        fused.log_kernels(model, opt)
        fused.log_kernels(model, opt)
    assert caplog.text.count("kernels: backend=torch") == 1


# -- the Apex and Liger backends against torch, where they exist ----------------------------------------------------
def _backend_run(backend: str, dtype: str | None, seed: int = 4) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and gradients of one packed-style batch on CUDA (T5.1.1 layout: gated tanh-GELU, untied head)."""
    torch.manual_seed(seed)
    model = T5(T5Config(**{**SMALL, "vocab_size": 256, "d_model": 64, "d_ff": 128}, fused=backend,
                        autocast_dtype=dtype, z_loss=1e-3 if backend != "apex" else 0.0)).cuda()
    enc, dec = torch.randint(2, 256, (4, 24), device="cuda"), torch.randint(2, 256, (4, 12), device="cuda")
    weights = torch.ones(4, 12, device="cuda")
    weights[:, 9:] = 0
    batch = dict(encoder_input_tokens=enc, decoder_input_tokens=dec, decoder_target_tokens=dec.roll(-1, 1),
                 decoder_loss_weights=weights)
    out = model.loss(batch)
    out.sum.backward()
    return out.loss.detach(), {n: p.grad.detach().float() for n, p in model.named_parameters()}


def _assert_backend_matches_torch(backend: str, dtype: str | None, atol: float, rtol: float) -> None:
    for seed in (4,):
        loss, grads = _backend_run(backend, dtype, seed)
        ref_loss, ref_grads = _backend_run("torch", dtype, seed)
        torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=rtol)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], atol=atol, rtol=rtol, msg=name)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(None, 2e-4), ("bfloat16", 3e-2)])
def test_apex_backend_matches_torch_on_cuda(dtype, tol):
    if not fused.probe_apex().available:
        pytest.skip(f"NVIDIA Apex unusable: {fused.probe_apex().reason}")
    _assert_backend_matches_torch("apex", dtype, tol, tol)
    model = T5(T5Config(**SMALL, fused="apex")).cuda()
    opt = make_optimizer("adamw", model.parameters(), lr=1e-3, backend="apex")
    assert type(opt).__name__ == "FusedAdam"
    line = fused.describe_kernels(model, opt)
    assert "rms_norm=apex.FusedRMSNorm" in line and "optimizer=apex.FusedAdam" in line
    _step_matches = [_step("adamw", "apex"), _step("adamw", "torch")]
    torch.testing.assert_close(*_step_matches, atol=1e-5, rtol=1e-4)


@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(None, 2e-4), ("bfloat16", 3e-2)])
def test_liger_backend_matches_torch_on_cuda(dtype, tol):
    if not fused.probe_liger().available:
        pytest.skip(f"Liger unusable: {fused.probe_liger().reason}")
    _assert_backend_matches_torch("liger", dtype, tol, tol)
    model = T5(T5Config(**SMALL, fused="liger")).cuda()
    line = fused.describe_kernels(model)
    assert "rms_norm=liger.LigerRMSNorm" in line and "gated_ff=liger.GELUMul" in line
    assert "cross_entropy=liger.FusedLinearCrossEntropy" in line


_INTERPRET_SCRIPT = textwrap.dedent("""
    import torch
    from lightning_t5.model.losses import _liger_token_losses
    torch.manual_seed(0)
    hidden, weight = torch.randn(10, 16, requires_grad=True), torch.randn(40, 16, requires_grad=True)
    targets, w = torch.randint(0, 40, (10,)), torch.rand(10)
    total, z = _liger_token_losses(hidden, weight, targets, 1e-2)
    (total * w).sum().backward()
    got = (total.detach(), z, hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    logits = hidden @ weight.T
    ref_z = 1e-2 * torch.logsumexp(logits, -1).square()
    ref = torch.nn.functional.cross_entropy(logits, targets, reduction="none") + ref_z
    (ref * w).sum().backward()
    for a, b in zip(got, (ref.detach(), ref_z.detach(), hidden.grad, weight.grad)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    print("OK")
""")


def test_liger_fused_linear_cross_entropy_under_triton_interpreter_on_cpu():
    """Liger's fused linear CE (the loss path of fused=liger) against torch, run by Triton's CPU interpreter.
    (Liger's RMSNorm and GEGLU kernels do not run under the interpreter in liger-kernel 0.8.5; they are covered by
    the CUDA test above.)"""
    pytest.importorskip("liger_kernel")
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.getcwd()}
    result = subprocess.run([sys.executable, "-c", _INTERPRET_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


# -- dropout ------------------------------------------------------------------------------------------------------
def test_gelu_tanh_mul_compiled_form_is_the_same_function(monkeypatch):
    """Under torch.compile, gelu_tanh(g) * u is computed as g * sigmoid(2u(g)) * u (exp instead of tanh): the same
    values and gradients to fp32 rounding, over the range where tanh saturates too."""
    g = torch.linspace(-12, 12, 4001, dtype=torch.float64).float().requires_grad_()
    u = torch.randn(4001, generator=torch.Generator().manual_seed(0)).requires_grad_()
    expected = torch.nn.functional.gelu(g, approximate="tanh") * u
    expected_grads = torch.autograd.grad(expected.sum(), (g, u))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    got = fused.gelu_tanh_mul(g, u, "torch")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(got.sum(), (g, u)), expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


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
    """With dropout off the explicit CPU path (what CPU training runs) and SDPA (CPU inference) agree; with dropout
    on, training runs the explicit path and a seeded forward is reproducible."""
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
    with torch.no_grad():  # CPU inference takes SDPA; CPU training (grad enabled) the explicit path
        sdpa = model(input_ids=ids, labels=labels).logits
    explicit = model(input_ids=ids, labels=labels).logits
    for module in model.modules():
        if hasattr(module, "eager"):
            module.eager = True
    with torch.no_grad():
        eager = model(input_ids=ids, labels=labels).logits
    assert torch.allclose(sdpa, eager, atol=1e-5) and torch.allclose(sdpa, explicit, atol=1e-5)


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
