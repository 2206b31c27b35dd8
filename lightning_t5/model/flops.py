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


def gemm_shapes(cfg: Any, batch: int, t_enc: int, t_dec: int) -> list[tuple[str, int, int, int, int, int]]:
    """The matrix products of one training step's forward pass, as (name, times, products, m, k, n): `times` per
    step (once per layer), each a batch of `products` [m, k] @ [k, n]. Dense layers are one product over all tokens
    of the batch (m = batch * length); attention scores and values are `batch * heads` products. The backward pass
    runs two products of the same size for each (input and weight gradients), so `gemm_flops` of this list is the
    formula's FLOPs without the norm scales (`training_flops_per_sequence` * batch, to 0.1 %).
    `bench/peak.py` times each shape: the machine's matmul rate at the model's own shapes."""
    d, dkv, ff, inner = cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_heads * cfg.d_kv
    me, md, bh = batch * t_enc, batch * t_dec, batch * cfg.num_heads
    wi = (2 if cfg.is_gated else 1) * ff  # gated: wi_0 and wi_1 as one product
    le, ld = cfg.num_layers, cfg.num_decoder_layers
    return [
        ("encoder q/k/v", le, 1, me, d, 3 * inner), ("encoder attention scores", le, bh, t_enc, dkv, t_enc),
        ("encoder attention values", le, bh, t_enc, t_enc, dkv), ("encoder o", le, 1, me, inner, d),
        ("encoder wi", le, 1, me, d, wi), ("encoder wo", le, 1, me, ff, d),
        ("decoder q/k/v", ld, 1, md, d, 3 * inner), ("decoder attention scores", ld, bh, t_dec, dkv, t_dec),
        ("decoder attention values", ld, bh, t_dec, t_dec, dkv), ("decoder o", ld, 1, md, inner, d),
        ("cross q", ld, 1, md, d, inner), ("cross k/v", ld, 1, me, d, 2 * inner),
        ("cross attention scores", ld, bh, t_dec, dkv, t_enc), ("cross attention values", ld, bh, t_dec, t_enc, dkv),
        ("cross o", ld, 1, md, inner, d), ("decoder wi", ld, 1, md, d, wi), ("decoder wo", ld, 1, md, ff, d),
        ("output projection", 1, 1, md, d, cfg.vocab_size),
    ]


def gemm_flops(shapes: list[tuple[str, int, int, int, int, int]]) -> float:
    """Training FLOPs (forward + both backward products) of `gemm_shapes`."""
    return float(sum(6 * times * products * m * k * n for _, times, products, m, k, n in shapes))


# ---------------------------------------------------------------------------------------------------------------
# When compiling pays (model.compile=auto)
# ---------------------------------------------------------------------------------------------------------------
#: Share of the run's estimated time below which `model.compile=auto` compiles.
COMPILE_BUDGET = 0.05
#: Estimated compile seconds of a training step: fixed + per transformer block (forward and backward graphs,
#: inductor, a cold cache). Measured with `model.compile=true` (whole-stack mode) on a quiet 2-core AMD EPYC,
#: torch 2.13, empty TORCHINDUCTOR_CACHE_DIR: tiny (4 blocks) 48 s, T5.1.1-small (16 blocks) 62 s, i.e. ~44 s + ~1.2 s
#: per block (with a warm inductor cache 4 s and 6 s: not counted on, a run cannot know its cache will hit); per-block
#: mode (FSDP) compiles one graph per block kind: 38 s and 37 s, below the estimate as well. An older
#: calibration on a loaded machine (load ~4) read 160 s and 325 s; the step estimate below is not load-adjusted
#: either, so the quiet figures are the ones that compare. Rounded up, so that `auto` compiles only where it clearly
#: pays. A GPU host compiles on more cores but adds Triton kernels: the same figures are used.
COMPILE_SECONDS = {"fixed": 60.0, "per_block": 2.0}
#: Model FLOP/s assumed for the eager step when estimating a run's time: CPU, per thread (the tiny default run
#: reaches ~50 GFLOP/s per thread on AVX-512); CUDA: a share of the table's peak (nanoT5's eager bf16 step).
ASSUMED_CPU_FLOPS_PER_THREAD = 50e9
ASSUMED_GPU_PEAK_SHARE = 0.25


def estimate_compile_seconds(cfg: Any) -> float:
    """Estimated time to compile one training step of `cfg` (see COMPILE_SECONDS)."""
    return COMPILE_SECONDS["fixed"] + COMPILE_SECONDS["per_block"] * (cfg.num_layers + cfg.num_decoder_layers)


def estimate_step_seconds(cfg: Any, batch: int, t_enc: int, t_dec: int, device_type: str,
                          device_name: str = "", threads: int = 1, dtype: str = "fp32") -> float:
    """Estimated eager time of one training step from its model FLOPs and an assumed rate (see above)."""
    flops = training_flops_per_sequence(cfg, t_enc, t_dec) * batch
    if device_type == "cuda":
        peak = peak_flops(device_name, dtype) or 100e12
        return flops / (peak * ASSUMED_GPU_PEAK_SHARE)
    return flops / (ASSUMED_CPU_FLOPS_PER_THREAD * max(threads, 1))


def compile_pays(cfg: Any, steps: int, batch: int, t_enc: int, t_dec: int, device_type: str,
                 device_name: str = "", threads: int = 1, dtype: str = "fp32") -> tuple[bool, str]:
    """`model.compile=auto`: compile when the estimated compile time is below COMPILE_BUDGET of the run's
    estimated time (steps * the estimated eager step). Returns the decision and a sentence with the figures."""
    compile_s = estimate_compile_seconds(cfg)
    run_s = steps * estimate_step_seconds(cfg, batch, t_enc, t_dec, device_type, device_name, threads, dtype)
    pays = compile_s < COMPILE_BUDGET * run_s
    return pays, (f"model.compile=auto: estimated compile time {compile_s:.0f} s is "
                  f"{100 * compile_s / max(run_s, 1e-9):.1f} % of the run's estimated {run_s:.0f} s "
                  f"({steps} steps of {batch} x ({t_enc} + {t_dec})); "
                  f"{'compiling' if pays else 'not compiling'} (threshold {100 * COMPILE_BUDGET:.0f} %)")
