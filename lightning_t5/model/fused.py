"""Kernel backends: NVIDIA Apex or Liger (Triton) when installed and CUDA is present, torch's fused ops otherwise.

`model.fused` selects the backend of RMSNorm, the gated feed-forward, the AdamW optimizer and the cross-entropy:

* `apex`  - `apex.normalization.FusedRMSNorm`, `apex.optimizers.FusedAdam` (for optim `adamw` and `fused_adam`) and
            `FusedLAMB`, `apex.contrib.xentropy` (when its extension is built and z_loss is 0); an error when Apex
            (with its CUDA extensions) or CUDA is missing.
* `liger` - `liger_kernel` (pip `lightning-t5[liger]`, CUDA only): LigerRMSNorm, Liger's GEGLU (tanh-GELU gated
            feed-forward, i.e. T5.1.1's `gated-gelu`), and LigerFusedLinearCrossEntropy, which computes the output
            projection and the cross-entropy in chunks and never materialises [tokens, vocab] logits; torch
            AdamW(fused=True). An error when liger_kernel, Triton or CUDA is missing.
* `torch` - `F.rms_norm` computed in fp32, `torch.optim.AdamW(fused=True)`, `torch.optim.Adafactor`, plain CE.
* `none`  - the plain reference implementation (HF `T5LayerNorm` arithmetic), unfused optimizers.
* `auto`  - `apex` when available, else `torch`; the choice is logged on `lightning_t5.model.fused`.

`describe_kernels` names the kernels a built model and optimizer actually run, and `log_kernels` logs that line
once, so a run's log says what ran rather than what was asked for.

The Apex probe never trusts `import apex` alone: PyPI's `apex` is an unrelated package, and a Python-only Apex build
imports fine but fails when a fused module is constructed, so the CUDA extension modules are imported too.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("lightning_t5.model.fused")

BACKENDS = ("auto", "apex", "liger", "torch", "none")  # the one list of valid `model.fused` values
PORTABLE_BACKEND = "torch"  # runs on any CPU: what loading for export/evaluation rebuilds a model on
OPTIMIZERS = ("adamw", "adafactor", "fused_adam", "fused_lamb")

APEX_INSTALL_HINT = (
    "Install NVIDIA Apex from source with its CUDA extensions: `git clone https://github.com/NVIDIA/apex && cd apex && "
    "APEX_CPP_EXT=1 APEX_CUDA_EXT=1 APEX_XENTROPY=1 pip install -v --no-build-isolation .` (the PyPI package named "
    "`apex` is unrelated), or set model.fused=torch (or auto) to use torch's fused kernels."
)

LIGER_INSTALL_HINT = (
    "Install it with `pip install 'lightning-t5[liger]'` (liger-kernel, which needs Triton and a CUDA GPU), or set "
    "model.fused=torch (or auto) to use torch's fused kernels."
)


class FusedBackendError(ValueError):
    """The requested `model.fused` backend cannot run here."""


@dataclass(frozen=True)
class BackendStatus:
    """What a backend probe found. Apex: `available` = real Apex, its norm/optimizer CUDA extensions, and CUDA;
    `xentropy` = its fused softmax-cross-entropy extension is built too."""

    available: bool
    reason: str
    xentropy: bool = False


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - any failure (ImportError, OSError from a broken .so) means "not usable"
        return False


@functools.lru_cache(maxsize=1)
def probe_apex() -> BackendStatus:
    """Detect a usable NVIDIA Apex (cached; tests clear it with `probe_apex.cache_clear()`)."""
    if importlib.util.find_spec("apex") is None:
        return BackendStatus(False, "the `apex` package is not installed")
    if not _importable("apex.normalization"):
        return BackendStatus(False, "`import apex.normalization` failed (is the installed `apex` the PyPI namesake?)")
    missing = [m for m in ("fused_layer_norm_cuda", "amp_C") if not _importable(m)]
    if missing:
        return BackendStatus(False, f"Apex was built without its CUDA extensions (missing {', '.join(missing)})")
    if not torch.cuda.is_available():
        return BackendStatus(False, "CUDA is not available")
    return BackendStatus(True, "NVIDIA Apex with CUDA extensions", xentropy=_importable("xentropy_cuda"))


@functools.lru_cache(maxsize=1)
def probe_liger() -> BackendStatus:
    """Detect a usable liger_kernel: the package, Triton, and CUDA (Liger's kernels are Triton GPU kernels)."""
    if importlib.util.find_spec("liger_kernel") is None:
        return BackendStatus(False, "the `liger_kernel` package is not installed")
    if importlib.util.find_spec("triton") is None:
        return BackendStatus(False, "Triton is not installed")
    if not _importable("liger_kernel.ops"):
        return BackendStatus(False, "`import liger_kernel.ops` failed")
    if not torch.cuda.is_available():
        return BackendStatus(False, "CUDA is not available")
    return BackendStatus(True, "liger_kernel with Triton on CUDA", xentropy=True)


def resolve_backend(requested: str = "auto", *, log: bool = True) -> str:
    """Map `model.fused` to the backend that runs: "apex", "liger", "torch" or "none"."""
    if requested not in BACKENDS:
        raise FusedBackendError(f"model.fused={requested!r} is not valid: expected one of {list(BACKENDS)}.")
    if requested in ("torch", "none"):
        return requested
    if requested == "liger":
        liger = probe_liger()
        if not liger.available:
            raise FusedBackendError(
                f"model.fused=liger was requested but Liger kernels cannot be used: {liger.reason}. "
                f"{LIGER_INSTALL_HINT}")
        return "liger"
    status = probe_apex()
    if requested == "apex":
        if not status.available:
            raise FusedBackendError(
                f"model.fused=apex was requested but NVIDIA Apex cannot be used: {status.reason}. {APEX_INSTALL_HINT}")
        return "apex"
    backend = "apex" if status.available else "torch"
    if log:
        logger.info("model.fused=auto -> %s backend (%s)", backend,
                    status.reason if status.available else f"Apex unavailable: {status.reason}")
    return backend


# ---------------------------------------------------------------------------------------------------------------
# RMSNorm
# ---------------------------------------------------------------------------------------------------------------
class T5RMSNorm(nn.Module):
    """Reference T5 layer norm: scale only, no mean subtraction, statistics in fp32 (HF `T5LayerNorm` arithmetic).

    The output is fp32 for fp32 weights even when the input is bf16 (autocast), exactly as HF, so residual streams
    stay in fp32 under mixed precision.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def cpu_closed_form(device: torch.device, *dtypes: torch.dtype, compiled: bool) -> bool:
    """Where this module's closed-form CPU backwards run (`CPURMSNorm`, `losses.CPULinearCrossEntropy`): eager (not
    compiled) fp32 on the CPU. The kernels dispatch on it and `describe_kernels` names them by it."""
    return device.type == "cpu" and all(dtype == torch.float32 for dtype in dtypes) and not compiled


class CPURMSNorm(torch.autograd.Function):
    """RMSNorm with weight, fp32, for eager CPU training: on CPU `F.rms_norm` is composite, and autograd runs
    ~15 elementwise ops through its graph for the backward (4 ms for a [4096, 128] forward + backward). Here the
    forward keeps x * rstd and rstd, and the backward is the closed form, dx = rstd * (g w - x_hat * mean(g w x_hat))
    and dw = sum(g * x_hat): 1.6x faster at [4096, 128], 1.9x at [4096, 512]."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        rstd = mean_square.add_(eps).rsqrt_()
        x_hat = x * rstd
        ctx.save_for_backward(x_hat, weight, rstd)
        return x_hat * weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x_hat, weight, rstd = ctx.saved_tensors
        grad_w = grad * weight
        mean_dot = torch.linalg.vecdot(grad_w, x_hat).unsqueeze_(-1).div_(x_hat.shape[-1])
        grad_x = torch.addcmul(grad_w, x_hat, mean_dot, value=-1.0).mul_(rstd)
        grad_weight = (grad * x_hat).reshape(-1, x_hat.shape[-1]).sum(0)
        return grad_x, grad_weight, None


class TorchRMSNorm(T5RMSNorm):
    """`F.rms_norm` (one fused kernel on CUDA) with the same fp32 semantics as `T5RMSNorm`; eager CPU training
    runs `CPURMSNorm` (the same function with a cheaper backward).

    torch's RMSNorm returns the input dtype under autocast; T5 keeps fp32, so the input is upcast first and the
    weight applied afterwards in the weight's dtype. `eps` is passed explicitly (torch's default is machine epsilon).
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight.dtype in (torch.float16, torch.bfloat16):
            normed = F.rms_norm(hidden_states.float(), (hidden_states.shape[-1],), eps=self.eps)
            return weight * normed.to(weight.dtype)
        if torch.is_grad_enabled() and cpu_closed_form(hidden_states.device, weight.dtype,
                                                       compiled=torch.compiler.is_compiling()):
            return CPURMSNorm.apply(hidden_states.float(), weight, self.eps)
        return F.rms_norm(hidden_states.float(), (hidden_states.shape[-1],), weight=weight.float(), eps=self.eps)


class LigerT5RMSNorm(T5RMSNorm):
    """Liger's Triton RMSNorm with T5's semantics: statistics in fp32 and, for fp32 weights, an fp32 output (the
    input is upcast first, so Liger's "llama" casting computes exactly T5LayerNorm). Only parameter: `weight`."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        from liger_kernel.ops import LigerRMSNormFunction  # optional dependency: present when the backend resolved

        if self.weight.dtype == torch.float32:
            hidden_states = hidden_states.float()
        return LigerRMSNormFunction.apply(hidden_states, self.weight, self.eps, 0.0, "llama", False, None)


#: 2 * sqrt(2 / pi) and 2 * sqrt(2 / pi) * 0.044715: gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u),
#: u = sqrt(2 / pi) (x + 0.044715 x^3)
_GELU_2U = (1.5957691216057308, 0.07135481627159199)


def gelu_tanh_mul(gate: torch.Tensor, up: torch.Tensor, backend: str) -> torch.Tensor:
    """gelu_tanh(gate) * up (T5.1.1's gated-gelu): one Liger Triton kernel on the liger backend; under torch.compile
    the same function as gate * sigmoid(2u) * up (an identity, not an approximation: inductor's vectorised exp is
    cheaper than its tanh, and the fused forward + backward of a tiny step's gated layers ran 1.5x faster; equal to
    the tanh form to fp32 rounding); eager: torch's gelu kernel (one op, where the sigmoid form would be five)."""
    if backend == "liger" and gate.is_cuda:
        from liger_kernel.ops import LigerGELUMulFunction

        return LigerGELUMulFunction.apply(gate, up)
    if torch.compiler.is_compiling():
        return gate * torch.sigmoid(gate * (_GELU_2U[0] + _GELU_2U[1] * gate * gate)) * up
    return F.gelu(gate, approximate="tanh") * up


def make_rms_norm(hidden_size: int, eps: float, backend: str) -> nn.Module:
    """An RMSNorm module whose only parameter is `weight` (so state dicts match HF for every backend)."""
    if backend == "apex":
        from apex.normalization import FusedRMSNorm  # type: ignore[import-not-found]

        return FusedRMSNorm(hidden_size, eps=eps)
    if backend == "liger":
        return LigerT5RMSNorm(hidden_size, eps)
    if backend == "torch":
        return TorchRMSNorm(hidden_size, eps)
    if backend == "none":
        return T5RMSNorm(hidden_size, eps)
    raise FusedBackendError(f"Resolve model.fused first; got backend {backend!r}.")


# ---------------------------------------------------------------------------------------------------------------
# bf16 matmuls on CPUs without bf16 arithmetic
# ---------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), so oneDNN's bf16 GEMM is fast."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except Exception:  # noqa: BLE001 - an older/other torch build: assume native support, change nothing
        return True


def _emulate_bf16(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and not cpu_has_native_bf16())


def _bf16_operand(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(torch.float32)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear` (no bias). Under CPU bf16 autocast on a CPU without bf16 arithmetic (AVX2-only x86, for one),
    torch's bf16 GEMM falls back to a kernel ~50x slower than fp32; there the product is computed as an fp32 GEMM
    of the bf16-rounded operands and rounded to bf16. That is bf16 autocast's arithmetic (bf16 inputs, exact
    products, fp32 accumulation, bf16 output), in the same dtypes, and autograd's backward does the same for the
    gradients. Everywhere else (GPU, AMX/AVX512-BF16 CPUs, fp32) this is exactly `F.linear`."""
    if _emulate_bf16(x):
        with torch.autocast("cpu", enabled=False):
            return F.linear(_bf16_operand(x), _bf16_operand(weight)).to(torch.bfloat16)
    return F.linear(x, weight)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`torch.matmul` with the same CPU bf16 treatment as `linear` (attention scores and values)."""
    if _emulate_bf16(a):
        with torch.autocast("cpu", enabled=False):
            return torch.matmul(_bf16_operand(a), _bf16_operand(b)).to(torch.bfloat16)
    return torch.matmul(a, b)


class Linear(nn.Linear):
    """`nn.Linear` without bias (same parameter name, so state dicts match HF) computed with `linear` above."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)


# ---------------------------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------------------------
_INT16_LEVELS = 1 << 16


def _keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A bool keep-mask with P(drop) = p quantised to 1/65536, and the 1/(1-p) scale that matches it exactly.

    Why not `torch.bernoulli`: on CPU it draws one Mersenne-Twister number per element, which made dropout ~20% of
    a T5 training step. Here every 64-bit draw (full range, all bits uniform) is split into four 16-bit lanes, so
    the generator runs a quarter as often. It draws from torch's default generator: `torch.manual_seed`, Lightning's
    `seed_everything` and the resume callback's RNG restore govern it exactly as they govern `F.dropout`.
    """
    numel = math.prod(shape)
    draws = torch.randint(-(1 << 63), (1 << 63) - 1, ((numel + 3) // 4,), dtype=torch.int64, device=device)
    lanes = draws.view(torch.int16)[:numel].view(shape)
    dropped = round(p * _INT16_LEVELS)
    return lanes >= dropped - (1 << 15), _INT16_LEVELS / (_INT16_LEVELS - dropped)


@torch.library.custom_op("lightning_t5::dropout_keep_mask", mutates_args=())
def dropout_keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """`_keep_mask` for the shape and device of `x`, as an operator that torch.compile calls as it is: inductor's
    own CPU random numbers (one Philox evaluation per element, scalar code) made a compiled tiny step ~1.6x slower
    than eager. Taking `x` (not only its shape) keeps two dropouts of the same shape from being merged."""
    return _keep_mask(x.shape, p, x.device)[0]


@dropout_keep_mask.register_fake
def _(x: torch.Tensor, p: float) -> torch.Tensor:
    return torch.empty(x.shape, dtype=torch.bool, device=x.device)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout` semantics (inverted dropout), ~3x faster on CPU; CUDA and other devices use `F.dropout` itself
    (its Philox kernel is already fused there)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not x.is_floating_point() or p >= 1.0:
        return F.dropout(x, p, training=True)
    keep, scale = dropout_keep_mask(x, p), _INT16_LEVELS / (_INT16_LEVELS - round(p * _INT16_LEVELS))
    # the scaled mask: the bool mask read as uint8, converted and scaled in place (2x faster on CPU than
    # torch.where(keep, scale, 0) or keep * scale, whose bool paths are not vectorised), then one multiply;
    # autograd keeps the mask for the backward's multiply
    if torch.compiler.is_compiling():
        mask = keep.to(x.dtype) * scale  # inductor vectorises this (the uint8 view makes its CPU code ~6x slower)
    else:
        mask = keep.view(torch.uint8).to(x.dtype).mul_(scale)
    return x * mask


class Dropout(nn.Dropout):
    """`nn.Dropout` (same name, repr and `p`) using `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


# ---------------------------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------------------------
def _torch_adamw(params: Any, fused: bool, **kwargs: Any) -> torch.optim.Optimizer:
    params = list(params)
    if fused:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, ValueError) as err:  # e.g. a device or dtype the fused kernel does not support
            logger.info("AdamW(fused=True) unavailable (%s); using foreach AdamW", err)
    return torch.optim.AdamW(params, foreach=fused or None, **kwargs)


def make_optimizer(name: str, params: Iterable[Any], lr: float, weight_decay: float = 0.0, *,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, backend: str = "auto",
                   **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer named by `optim.name` on the `model.fused` backend.

    * `adamw` and `fused_adam` (an alias kept for old configs): Apex FusedAdam (AdamW mode) on the apex backend,
      torch AdamW(fused=True) on torch/liger, unfused torch AdamW on `none`.
    * `fused_lamb`: Apex FusedLAMB; requires the apex backend (torch has no LAMB).
    * `adafactor`: torch.optim.Adafactor (Apex has no fused Adafactor); `eps` is Adafactor's own pair when passed
      through `kwargs["adafactor_eps"]`.
    Extra `kwargs` go to the optimizer constructor.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name={name!r} is not valid: expected one of {list(OPTIMIZERS)}.")
    resolved = resolve_backend(backend, log=False)
    if name == "adafactor":
        af_kwargs = dict(kwargs)
        if "adafactor_eps" in af_kwargs:
            af_kwargs["eps"] = af_kwargs.pop("adafactor_eps")
        return torch.optim.Adafactor(params, lr=lr, weight_decay=weight_decay, **af_kwargs)
    if name == "fused_lamb":
        if resolved != "apex":
            raise FusedBackendError(
                f"optim.name=fused_lamb needs NVIDIA Apex (model.fused resolved to {resolved!r}: "
                f"{probe_apex().reason}). {APEX_INSTALL_HINT} Or choose optim.name=adamw or adafactor.")
        from apex.optimizers import FusedLAMB  # type: ignore[import-not-found]

        return FusedLAMB(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kwargs)
    if name in ("adamw", "fused_adam") and resolved == "apex":
        from apex.optimizers import FusedAdam  # type: ignore[import-not-found]

        return FusedAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adam_w_mode=True, **kwargs)
    return _torch_adamw(params, fused=resolved != "none", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# What runs
# ---------------------------------------------------------------------------------------------------------------
def cross_entropy_kernel(backend: str, *, is_cuda: bool, z_loss: float) -> str:
    """Which cross-entropy implementation `lightning_t5.model.losses.masked_cross_entropy` runs for these arguments.

    Apex xentropy returns no log-partition, so with z_loss > 0 the apex backend computes the loss with torch."""
    if backend == "liger" and is_cuda:
        return "liger.FusedLinearCrossEntropy"
    if backend == "apex" and is_cuda and probe_apex().xentropy and not z_loss:
        return "apex.xentropy"
    return "torch.cross_entropy"


def _kernel_name(obj: Any) -> str:
    cls = type(obj)
    root = cls.__module__.split(".")[0]
    if isinstance(obj, LigerT5RMSNorm):
        return "liger.LigerRMSNorm"
    if isinstance(obj, TorchRMSNorm):
        return "torch.F.rms_norm"
    if isinstance(obj, T5RMSNorm):
        return "reference(T5LayerNorm)"
    if isinstance(obj, torch.optim.Optimizer):
        flags = [k for k in ("fused", "foreach") if obj.defaults.get(k)]
        suffix = "(fused=True)" if "fused" in flags else "(foreach)" if flags else ""
        return f"{root}.{cls.__name__}{suffix}"
    return f"{root}.{cls.__name__}"


def describe_kernels(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, autocast: bool = False) -> str:
    """One line naming the kernels a built T5 (and optimizer) actually run, read off the objects themselves;
    `autocast`: the trainer runs the model under autocast (a mixed precision)."""
    backend = getattr(model, "backend", "none")
    config = getattr(model, "config", None)
    weight = next(model.parameters())
    compiled = bool(getattr(model, "compile_mode", None) or getattr(model, "_compile_request", None))
    cpu_eager = cpu_closed_form(weight.device, weight.dtype, compiled=compiled)
    norm = next((m for m in model.modules() if m.__class__.__name__.endswith("RMSNorm")), None)
    norm_name = _kernel_name(norm) if norm is not None else "none"
    if isinstance(norm, TorchRMSNorm) and cpu_eager:
        norm_name = "lightning_t5.CPURMSNorm"
    parts = [f"backend={backend}", f"rms_norm={norm_name}"]
    if config is not None and config.is_gated:
        geglu = backend == "liger" and config.activation == "gelu_new" and weight.is_cuda
        parts.append(f"gated_ff={'liger.GELUMul' if geglu else 'inductor' if compiled else 'torch'}")
    ce = cross_entropy_kernel(backend, is_cuda=weight.is_cuda, z_loss=float(getattr(config, "z_loss", 0.0) or 0.0))
    if ce == "torch.cross_entropy" and compiled:
        ce = "inductor(torch.cross_entropy)"
    elif (ce == "torch.cross_entropy" and cpu_eager and not autocast
          and getattr(config, "autocast_dtype", None) is None):
        ce = "lightning_t5.CPULinearCrossEntropy"
    parts.append("cross_entropy=" + ce)
    if optimizer is not None:
        parts.append(f"optimizer={_kernel_name(optimizer)}")
    return "kernels: " + ", ".join(parts)


_LOGGED: set[str] = set()


def log_kernels(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, autocast: bool = False) -> str:
    """Log `describe_kernels` on `lightning_t5.model.fused` at INFO, once per distinct line in this process."""
    line = describe_kernels(model, optimizer, autocast)
    if line not in _LOGGED:
        _LOGGED.add(line)
        logger.info(line)
    return line
