"""One-shot GPU check (under 8 minutes on one H100/H200): parity, backend equivalence, the measured matmul rate,
and our best training configuration against compiled transformers, with MFU against two peaks.

    python bench/gpu_check.py [--json]          # what to run when a GPU is lent
    python bench/gpu_check.py --dry-run         # the same logic on CPU at tiny shapes (tests/test_bench.py)

What each part prints and means:
1. "HF parity": lightning_t5.T5 and transformers.T5ForConditionalGeneration with the same weights (T5.1.1-small
   shape, random init) on the same padded batch, fp32 (TF32 off) and bf16 autocast: the largest logit difference
   relative to the largest logit, both losses and both gradient norms. OK = within PARITY_TOL.
2. "Backend equivalence": every installed kernel backend (`torch`, and `apex`, `liger` where they resolve) against
   the plain `none` path: training loss and relative gradient difference on one batch, fp32 and bf16, and the
   kernels each one actually ran.
3. "Matmul rate": bf16 [n, n] @ [n, n] for n = 2048 and 8192, and the products of one T5.1.1-base training step at
   the benchmark's shape (bench/peak.py), measured now on this GPU: the "measured peak" below is the largest.
4. "Training step": T5.1.1-base 64 x (512 + 114) full rows, bf16 autocast, fused AdamW for all. One line per
   configuration: ours eager on each installed backend (the fastest backend is "our best"), ours compiled
   (`model.compile=true`: whole stacks or per block as `BEST_COMPILE_MODE["cuda"]` says; `--compile-modes model,block`
   times both), transformers eager and compiled (`torch.compile(model)`). Columns: tokens/s, model TFLOP/s by the T5
   formula (`lightning_t5.model.flops`), MFU against the datasheet peak (`PEAK_FLOPS`), the share of the measured
   peak and of the step's own products' rate, and the time of the first steps (compilation).
5. "SUMMARY": parity and backends OK, our best configuration, its ratio to compiled transformers against issue 23's
   goal (>= 1.0x compiled transformers; its 90 %-of-the-matmul-rate goal is stated for the CPU, the GPU's shares are
   printed next to it), and the total time (goal < 8 minutes).

Prints one final line `GPU_CHECK_JSON {...}` with --json. Without CUDA (and without --dry-run) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_baseline import hf_from_ours  # noqa: E402
from lightning_t5 import T5, T5Config  # noqa: E402
from lightning_t5.model.flops import peak_flops, training_flops_per_sequence  # noqa: E402
from lightning_t5.model.hf import seqio_features  # noqa: E402
from lightning_t5.model.fused import BACKENDS, FusedBackendError, describe_kernels, make_optimizer, resolve_backend  # noqa: E402

PARITY_TOL = {"fp32": 2e-4, "bf16": 5e-2}  # max |logit diff| relative to the logits' max magnitude


def padded_batch(cfg: T5Config, batch: int, enc_len: int, dec_len: int, device: torch.device,
                 pad_rows: bool = True) -> dict[str, torch.Tensor]:
    """HF-style batch; with `pad_rows`, the last quarter of the rows is padded to half length."""
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, cfg.vocab_size, (batch, enc_len), generator=g)
    labels = torch.randint(2, cfg.vocab_size, (batch, dec_len), generator=g)
    attention_mask = torch.ones_like(input_ids)
    if pad_rows:
        attention_mask[3 * batch // 4:, enc_len // 2:] = 0
        labels[3 * batch // 4:, dec_len // 2:] = -100
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    return {k: v.to(device) for k, v in dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels).items()}


def autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def grad_norm(model: torch.nn.Module) -> float:
    return float(torch.sqrt(sum(p.grad.float().square().sum() for p in model.parameters() if p.grad is not None)))


# ---------------------------------------------------------------------------------------------------------------
def check_parity(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    cfg = T5Config.from_preset(args.parity_config, dropout_rate=0.0, fused="none")
    ours = T5(cfg)
    hf = hf_from_ours(ours).to(device)
    ours = ours.to(device)
    batch = padded_batch(cfg, 4, 128, 32, device)
    rows = []
    for dtype in ("fp32", "bf16"):
        out = {}
        for name, model in (("ours", ours), ("hf", hf)):
            model.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                result = model(**batch)
            result.loss.backward()
            out[name] = (result.logits.float().detach(), float(result.loss.detach()), grad_norm(model))
        scale = float(out["hf"][0].abs().max())
        logit_err = float((out["ours"][0] - out["hf"][0]).abs().max()) / scale
        ok = logit_err <= PARITY_TOL[dtype] and abs(out["ours"][1] - out["hf"][1]) <= PARITY_TOL[dtype] * 10
        rows.append({"dtype": dtype, "max_rel_logit_diff": logit_err, "loss_ours": out["ours"][1],
                     "loss_hf": out["hf"][1], "grad_norm_ours": out["ours"][2], "grad_norm_hf": out["hf"][2],
                     "ok": bool(ok)})
    return rows


def installed_backends() -> list[str]:
    found = []
    for name in BACKENDS:
        if name == "auto":
            continue
        try:
            resolve_backend(name, log=False)
            found.append(name)
        except FusedBackendError:
            pass
    return found


def check_backends(args: argparse.Namespace, device: torch.device, backends: list[str]) -> list[dict[str, Any]]:
    """Each backend's training loss and gradients against the plain `none` path (same weights, same batch)."""
    base = T5Config.from_preset(args.parity_config, dropout_rate=0.0, z_loss=1e-4)
    torch.manual_seed(0)
    state = T5(base.replace(fused="none")).state_dict()
    batch = seqio_features(padded_batch(base, 4, 128, 32, device))
    rows = []
    for dtype in ("fp32", "bf16"):
        results = {}
        for backend in ["none", *[b for b in backends if b != "none"]]:
            model = T5(base.replace(fused=backend)).to(device)
            model.load_state_dict(state)
            with autocast(device, dtype):
                out = model(**batch, return_loss=True)
            out.loss.backward()
            grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
            results[backend] = (float(out.loss), grads, describe_kernels(model))
        ref_loss, ref_grads, _ = results["none"]
        for backend, (loss, grads, kernels) in results.items():
            if backend == "none":
                continue
            grad_err = float((grads - ref_grads).norm() / ref_grads.norm())
            tol = 1e-4 if dtype == "fp32" else 3e-2
            rows.append({"backend": backend, "dtype": dtype, "loss": loss, "loss_none": ref_loss,
                         "rel_grad_diff": grad_err, "kernels": kernels,
                         "ok": bool(abs(loss - ref_loss) <= tol * max(1.0, abs(ref_loss)) and grad_err <= tol)})
    return rows


# ---------------------------------------------------------------------------------------------------------------
def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds per timed step, seconds of the warm-up steps, compilation included)."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps, first


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_rates(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """bench/peak.py: bf16 (fp32 on a CPU dry run) square products and the step's own products, measured now."""
    import peak

    squares = (256,) if args.dry_run else (2048, 8192)
    cfg = T5Config.from_preset(args.config)
    return peak.measure(device, [args.dtype], cfg, (args.batch, args.enc_len, args.dec_len), squares=squares)[
        args.dtype]


def throughput(args: argparse.Namespace, device: torch.device, backends: list[str],
               rates: dict[str, float]) -> list[dict[str, Any]]:
    """Ours eager on each backend, ours compiled on the fastest, transformers eager and compiled: one line each."""
    cfg0 = T5Config.from_preset(args.config, dropout_rate=0.0, fused="none", compile=False)
    torch.manual_seed(0)
    state = T5(cfg0).state_dict()
    batch = padded_batch(cfg0, args.batch, args.enc_len, args.dec_len, device, pad_rows=False)
    seqio = seqio_features(batch)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    datasheet = peak_flops(name, args.dtype)
    measured = max(v for k, v in rates.items() if k.startswith("square"))
    flops = training_flops_per_sequence(cfg0, args.enc_len, args.dec_len) * args.batch
    tokens = args.batch * (args.enc_len + args.dec_len)
    rows: list[dict[str, Any]] = []

    def run(impl: str, backend: str, compile_mode: str | None) -> dict[str, Any]:
        gc.collect()  # the previous configuration's model, optimizer state and compiled graphs
        if device.type == "cuda":
            torch.cuda.empty_cache()
        cfg = cfg0.replace(fused=backend)
        ours = T5(cfg)
        ours.load_state_dict(state, strict=False)
        model: torch.nn.Module = (hf_from_ours(ours) if impl == "hf" else ours).to(device).train()
        opt = make_optimizer("adamw", model.parameters(), lr=1e-4, backend=backend)
        forward = model
        if compile_mode and impl == "hf":
            forward = torch.compile(model)
        elif compile_mode:
            model.enable_compile(None if compile_mode == "best" else compile_mode)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(device, args.dtype):
                loss = forward(**batch).loss if impl == "hf" else forward(**seqio, return_loss=True).loss
            loss.backward()
            opt.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds, first = time_steps(step, device, args.warmup + (2 if compile_mode else 0), args.steps)
        achieved = flops / seconds
        row = {"impl": impl, "backend": backend if impl == "ours" else "-",
               "compile": (model.compile_mode if impl == "ours" else "model") if compile_mode else None,
               "step_s": seconds, "first_steps_s": first, "tokens_per_s": tokens / seconds,
               "model_tflops": achieved / 1e12, "mfu_datasheet": achieved / datasheet if datasheet else None,
               "of_measured_peak": achieved / measured, "of_model_gemms": achieved / rates["model"],
               "kernels": describe_kernels(model, opt) if impl == "ours" else "transformers",
               "peak_mem_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None}
        pct = lambda v: f"{100 * v:5.1f}%" if v is not None else "  n/a"  # noqa: E731
        label = f"{'ours' if impl == 'ours' else 'HF'} {row['backend'] if impl == 'ours' else ''}".strip()
        label += f" compiled ({row['compile']})" if compile_mode else " eager"
        print(f"  {label:<28}{row['tokens_per_s']:>10,.0f} tok/s {row['model_tflops']:>7.1f} TFLOP/s  MFU "
              f"{pct(row['mfu_datasheet'])} of datasheet, {pct(row['of_measured_peak'])} of measured peak, "
              f"{pct(row['of_model_gemms'])} of its GEMMs; first steps {first:.1f} s  [{row['kernels']}]",
              flush=True)
        return row

    eager = [run("ours", b, None) for b in backends if b != "none"]
    rows += eager
    best_backend = max(eager, key=lambda r: r["tokens_per_s"])["backend"]
    if args.compile:
        modes = args.compile_modes.split(",") if args.compile_modes else ["best"]
        rows += [run("ours", best_backend, mode) for mode in modes]
    rows.append(run("hf", "torch", None))
    if args.compile:
        rows.append(run("hf", "torch", "model"))
    hf_best = rows[-1]
    for row in rows:
        row["vs_hf_compiled" if args.compile else "vs_hf"] = row["tokens_per_s"] / hf_best["tokens_per_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only to dry-run the logic")
    parser.add_argument("--config", default="t5_1_1_base")
    parser.add_argument("--parity-config", default="t5_1_1_small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--enc-len", type=int, default=512)
    parser.add_argument("--dec-len", type=int, default=114)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-modes", default=None, help="time ours compiled in each mode (model,block)")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny shapes, fp32, one step: checks the logic where there is no GPU")
    parser.add_argument("--json", action="store_true", help="print a final `GPU_CHECK_JSON {...}` line")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.config, args.parity_config, args.dtype = "cpu", "tiny", "tiny", "fp32"
        args.batch, args.enc_len, args.dec_len, args.steps, args.warmup = 2, 32, 8, 1, 1
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine; nothing was checked. Run it on a CUDA GPU "
              "(python bench/gpu_check.py --json), or `--dry-run` to check its logic on CPU.")
        if args.json:
            print("GPU_CHECK_JSON " + json.dumps({"cuda": False}))
        return 0
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # parity in true fp32
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    started = time.perf_counter()
    backends = installed_backends()
    print(f"gpu_check on {name}, torch {torch.__version__}, backends here: {', '.join(backends)}")

    parity = check_parity(args, device)
    print("HF parity (%s, same weights, padded batch):" % args.parity_config)
    for r in parity:
        print(f"  {r['dtype']}: max |logit diff| / max |logit| {r['max_rel_logit_diff']:.2e}, loss ours "
              f"{r['loss_ours']:.5f} HF {r['loss_hf']:.5f}, grad norm ours {r['grad_norm_ours']:.4f} HF "
              f"{r['grad_norm_hf']:.4f} -> {'OK' if r['ok'] else 'MISMATCH'}")
    equivalence = check_backends(args, device, backends)
    print("Backend equivalence vs the plain path (fused=none):")
    for r in equivalence:
        print(f"  {r['backend']:<6}{r['dtype']}: loss {r['loss']:.5f} vs {r['loss_none']:.5f}, rel grad diff "
              f"{r['rel_grad_diff']:.2e} -> {'OK' if r['ok'] else 'MISMATCH'}   [{r['kernels']}]")
    torch.backends.cuda.matmul.allow_tf32 = True
    rates = measure_rates(args, device)
    print(f"Matmul rate ({args.dtype}, measured now): " + ", ".join(
        f"{'step GEMMs' if k == 'model' else k.replace('square_', '') + '^2'} {v / 1e12:,.1f} TFLOP/s"
        for k, v in rates.items()) + f"; datasheet peak {peak_flops(name, args.dtype) or 0:.3g}")
    print(f"Training step, {args.config} {args.batch} x ({args.enc_len}+{args.dec_len}) {args.dtype}, "
          "fused AdamW for all:")
    speed = throughput(args, device, backends, rates)
    ours = [r for r in speed if r["impl"] == "ours"]
    best = max(ours, key=lambda r: r["tokens_per_s"])
    hf = speed[-1]
    ratio = best["tokens_per_s"] / hf["tokens_per_s"]
    summary = {"device": name, "cuda": device.type == "cuda", "parity_ok": all(r["ok"] for r in parity),
               "backends_ok": all(r["ok"] for r in equivalence), "rates": rates, "best_ours": best, "hf": hf,
               "best_mfu": best["mfu_datasheet"], "best_of_measured_peak": best["of_measured_peak"],
               "best_vs_hf": ratio, "hf_compiled": bool(hf["compile"]), "seconds": time.perf_counter() - started}
    mfu_text = f"{100 * best['mfu_datasheet']:.1f}%" if best["mfu_datasheet"] else "n/a"
    print(f"SUMMARY: parity {'OK' if summary['parity_ok'] else 'FAILED'}, backends "
          f"{'OK' if summary['backends_ok'] else 'FAILED'}; our best = {best['backend']} "
          f"{'compiled (' + best['compile'] + ')' if best['compile'] else 'eager'}: {best['tokens_per_s']:,.0f} tok/s, "
          f"MFU {mfu_text} of the datasheet peak, {100 * best['of_measured_peak']:.1f}% of the measured peak; "
          f"{ratio:.2f}x transformers {'compiled' if hf['compile'] else 'eager'} (goal >= 1.0x compiled); "
          f"{summary['seconds']:.0f} s (goal < 480 s)")
    if args.json:
        print("GPU_CHECK_JSON " + json.dumps({**summary, "parity": parity, "equivalence": equivalence,
                                              "throughput": speed}, default=str))
    return 0 if summary["parity_ok"] and summary["backends_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
