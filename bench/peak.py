"""This machine's dense matmul rate, measured now: the reference every model benchmark divides by.

    python bench/peak.py                                   # fp32 (and bf16 where the hardware has it) at 2048^2
    python bench/peak.py --config t5_1_1_small --batch 8 --enc-len 512 --dec-len 114   # + the model's own GEMMs

Two rates per dtype:

* `square`: one [n, n] @ [n, n] product, n = 2048 (CPU) or 2048 and 8192 (CUDA, where 2048 does not fill the GPU):
  what the BLAS library reaches on a large, well-shaped product. The issue's goals are stated against it.
* `model`: the products of one training step of the model at the benchmark's shape
  (`lightning_t5.model.flops.gemm_shapes`: every dense layer, the attention products, the output projection), each
  timed forward and as its two backward products, combined as total FLOPs / total time. This is the ceiling of a
  step that did nothing but its matmuls: small d_model or short sequences give narrow products that run below the
  square rate, so "model FLOP/s / model-GEMM rate" is the share lost to everything that is not a matmul.

bf16 is measured on CUDA, and on CPUs with bf16 arithmetic (AVX512-BF16 or AMX); elsewhere torch's bf16 GEMM is a slow
fallback that no run uses (`lightning_t5.model.fused` emulates it with fp32 GEMMs), so it is skipped and said so.
Each product is repeated and its best repetition counts (a shared machine's interruptions only ever make a
repetition slower); the step's products are timed in rounds over the whole list.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_t5.model.flops import gemm_shapes  # noqa: E402
from lightning_t5.model.fused import cpu_has_native_bf16  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Product:
    """`count` [m, k] @ [k, n] products (one batched product when count > 1), operands allocated once."""

    def __init__(self, count: int, m: int, k: int, n: int, dtype: torch.dtype, device: torch.device) -> None:
        g = torch.Generator(device="cpu").manual_seed(0)
        shape_a, shape_b = ((count, m, k), (count, k, n)) if count > 1 else ((m, k), (k, n))
        self.a = torch.randn(shape_a, generator=g).to(device=device, dtype=dtype)
        self.b = torch.randn(shape_b, generator=g).to(device=device, dtype=dtype)
        self.out = torch.empty((*shape_a[:-1], n), device=device, dtype=dtype)
        self.mul = torch.bmm if count > 1 else torch.mm
        self.device = device
        self.flops = 2 * count * m * k * n
        self.best = float("inf")
        self()  # warm-up (allocations, library dispatch)

    def __call__(self) -> float:
        """Run once; returns the seconds it took and keeps the best."""
        _sync(self.device)
        start = time.perf_counter()
        self.mul(self.a, self.b, out=self.out)
        _sync(self.device)
        elapsed = time.perf_counter() - start
        self.best = min(self.best, elapsed)
        return elapsed


def product_seconds(count: int, m: int, k: int, n: int, dtype: torch.dtype, device: torch.device,
                    min_seconds: float = 0.2, max_reps: int = 50) -> float:
    """Best time of `count` [m, k] @ [k, n] products, repeated until `min_seconds` have passed."""
    product = Product(count, m, k, n, dtype, device)
    spent, reps = 0.0, 0
    while (spent < min_seconds and reps < max_reps) or reps < 2:
        spent, reps = spent + product(), reps + 1
    return product.best


def square_rate(n: int, dtype: str, device: torch.device, min_seconds: float = 0.5) -> float:
    """FLOP/s of one [n, n] @ [n, n] product."""
    return 2 * n ** 3 / product_seconds(1, n, n, n, DTYPES[dtype], device, min_seconds)


def model_gemm_rate(cfg: Any, batch: int, t_enc: int, t_dec: int, dtype: str, device: torch.device,
                    rounds: int = 3) -> float:
    """FLOP/s of a training step's products (forward, input gradient, weight gradient of each), as total FLOPs over
    total time. Products that repeat per layer are timed once and counted per layer. All products are timed in
    `rounds` passes over the whole list and each keeps its best time, so a burst of load on a shared machine
    slows one pass, not one shape."""
    timed = []
    for _, times, products, m, k, n in gemm_shapes(cfg, batch, t_enc, t_dec):
        for shape in ((m, k, n), (m, n, k), (n, m, k)):  # forward, input gradient, weight gradient
            timed.append((times, Product(products, *shape, DTYPES[dtype], device)))
    for _ in range(rounds):
        for _, product in timed:
            product()
    return sum(times * p.flops for times, p in timed) / sum(times * p.best for times, p in timed)


def bf16_measurable(device: torch.device) -> bool:
    return device.type == "cuda" or cpu_has_native_bf16()


def measure(device: torch.device, dtypes: list[str], cfg: Any = None, shape: tuple[int, int, int] | None = None,
            squares: tuple[int, ...] | None = None) -> dict[str, dict[str, float]]:
    """{dtype: {"square_<n>": FLOP/s, ..., "model": FLOP/s}} for the dtypes this machine runs natively."""
    squares = squares or ((2048, 8192) if device.type == "cuda" else (2048,))
    rates: dict[str, dict[str, float]] = {}
    for dtype in dtypes:
        if dtype == "bf16" and not bf16_measurable(device):
            continue
        rates[dtype] = {f"square_{n}": square_rate(n, dtype, device) for n in squares}
        if cfg is not None and shape is not None:
            rates[dtype]["model"] = model_gemm_rate(cfg, *shape, dtype, device)
    return rates


def describe(rates: dict[str, dict[str, float]]) -> str:
    parts = []
    for dtype, values in rates.items():
        parts.append(f"{dtype}: " + ", ".join(
            f"{'model GEMMs' if key == 'model' else key.replace('square_', '') + '^2'} "
            f"{value / 1e9:,.1f} GFLOP/s" for key, value in values.items()))
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--config", default=None, help="also time this preset's GEMMs (e.g. t5_1_1_small)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--enc-len", type=int, default=512)
    parser.add_argument("--dec-len", type=int, default=114)
    args = parser.parse_args(argv)
    from lightning_t5.model.config import T5Config

    device = torch.device(args.device)
    cfg = T5Config.from_preset(args.config) if args.config else None
    dtypes = args.dtypes.split(",")
    rates = measure(device, dtypes, cfg, (args.batch, args.enc_len, args.dec_len))
    print(f"matmul rate on {args.device} ({torch.get_num_threads()} threads): {describe(rates)}")
    if "bf16" in dtypes and "bf16" not in rates:
        print("bf16: not measured (this CPU has no bf16 arithmetic; runs emulate bf16 with fp32 GEMMs)")


if __name__ == "__main__":
    main()
