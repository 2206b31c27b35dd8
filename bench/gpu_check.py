"""One-shot GPU check (under 8 minutes on one H100/H200): parity, backend equivalence, throughput and MFU.

    python bench/gpu_check.py [--json]          # what to run when a GPU is lent
    python bench/gpu_check.py --device cpu --config tiny --enc-len 64 --dec-len 16 --batch 4   # dry run of the logic

1. HF parity on CUDA: lightning_t5.T5 and transformers.T5ForConditionalGeneration with the same weights
   (T5.1.1-small shape, random init) on the same padded batch, fp32 (TF32 off) and bf16 autocast: logits, loss and
   gradient norm.
2. Backend equivalence: every installed backend (`torch`, and `apex`, `liger` where they resolve) against the
   plain `none` path: training loss and gradients on one batch, fp32 and bf16, plus the kernels each one ran.
3. Training-step throughput of t5_1_1_base at 512/114 (full rows, bf16 autocast, fused AdamW for both): tokens/s
   and MFU (`lightning_t5.model.flops`, the T5 formula; peak from its table) for ours on each installed backend, with
   and without torch.compile, against transformers on the same GPU. Goal: >= 45 % MFU and >= 1.5x HF.

Prints a summary and, with --json, one final line `GPU_CHECK_JSON {...}`. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_t5 import T5, T5Config  # noqa: E402
from lightning_t5.model.flops import mfu, peak_flops  # noqa: E402
from lightning_t5.model.hf import seqio_features  # noqa: E402
from lightning_t5.model.fused import BACKENDS, FusedBackendError, describe_kernels, make_optimizer, resolve_backend  # noqa: E402

PARITY_TOL = {"fp32": 2e-4, "bf16": 5e-2}  # max |logit diff| relative to the logits' max magnitude


def hf_model(cfg: T5Config, ours: T5) -> torch.nn.Module:
    """transformers' T5 with our weights (v5 ties lm_head unless given its own parameter)."""
    import transformers

    hf_cfg = transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff, num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads, dropout_rate=0.0,
        feed_forward_proj=cfg.feed_forward_proj, tie_word_embeddings=cfg.tie_word_embeddings,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1, scale_decoder_outputs=cfg.scale_outputs)
    model = transformers.T5ForConditionalGeneration(hf_cfg)
    state = {k: v.detach().cpu() for k, v in ours.state_dict().items()}
    if ours.lm_head is not None:
        model.lm_head.weight = torch.nn.Parameter(state["lm_head.weight"].clone())
    model.load_state_dict(state, strict=False)
    return model


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
    hf = hf_model(cfg, ours).to(device)
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
def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def throughput(args: argparse.Namespace, device: torch.device, backends: list[str]) -> list[dict[str, Any]]:
    cfg0 = T5Config.from_preset(args.config, dropout_rate=0.0, fused="none")
    torch.manual_seed(0)
    state = T5(cfg0).state_dict()
    batch = padded_batch(cfg0, args.batch, args.enc_len, args.dec_len, device, pad_rows=False)
    seqio = seqio_features(batch)
    peak = peak_flops(torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "bf16")
    tokens = args.batch * (args.enc_len + args.dec_len)
    runs: list[tuple[str, str, bool]] = [("hf", "torch", False)]
    runs += [("ours", b, False) for b in backends if b != "none"]
    if args.compile:
        runs += [("ours", b, True) for b in backends if b != "none"]
    rows = []
    for impl, backend, compiled in runs:
        cfg = cfg0.replace(fused=backend, compile=compiled)
        ours = T5(cfg)
        ours.load_state_dict(state, strict=False)
        model = (hf_model(cfg, ours) if impl == "hf" else ours).to(device).train()
        opt = make_optimizer("adamw", model.parameters(), lr=1e-4, backend=backend)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(device, "bf16"):
                loss = model(**batch).loss if impl == "hf" else model(**seqio, return_loss=True).loss
            loss.backward()
            opt.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = time_steps(step, device, args.warmup + (3 if compiled else 0), args.steps)
        row = {"impl": impl, "backend": backend if impl == "ours" else "-", "compile": compiled, "step_s": seconds,
               "tokens_per_s": tokens / seconds,
               "mfu": mfu(cfg, args.enc_len, args.dec_len, args.batch / seconds, peak),
               "kernels": describe_kernels(model, opt) if impl == "ours" else "transformers",
               "peak_mem_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None}
        rows.append(row)
        mfu_text = f"{100 * row['mfu']:.1f}%" if row["mfu"] else "n/a"
        print(f"  {impl:<5}{row['backend']:<7}compile={str(compiled):<6}{row['tokens_per_s']:>10,.0f} tok/s  "
              f"MFU {mfu_text}  [{row['kernels']}]", flush=True)
        step = model = ours = opt = None  # type: ignore[assignment]  # free the GPU before the next model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    hf_tps = rows[0]["tokens_per_s"]
    for row in rows:
        row["vs_hf"] = row["tokens_per_s"] / hf_tps
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only to dry-run the logic")
    parser.add_argument("--config", default="t5_1_1_base")
    parser.add_argument("--parity-config", default="t5_1_1_small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--enc-len", type=int, default=512)
    parser.add_argument("--dec-len", type=int, default=114)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--json", action="store_true", help="print a final `GPU_CHECK_JSON {...}` line")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine; nothing was checked. Run it on a CUDA GPU "
              "(python bench/gpu_check.py --json).")
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
    print(f"Training step, {args.config} {args.batch} x ({args.enc_len}+{args.dec_len}) bf16, fused AdamW for all:")
    speed = throughput(args, device, backends)
    best = max((r for r in speed if r["impl"] == "ours"), key=lambda r: r["tokens_per_s"])
    summary = {"device": name, "cuda": device.type == "cuda", "parity_ok": all(r["ok"] for r in parity),
               "backends_ok": all(r["ok"] for r in equivalence), "best_ours": best, "hf": speed[0],
               "best_mfu": best["mfu"], "best_vs_hf": best["vs_hf"], "seconds": time.perf_counter() - started}
    mfu_text = f"{100 * best['mfu']:.1f}%" if best["mfu"] else "n/a"
    print(f"SUMMARY: parity {'OK' if summary['parity_ok'] else 'FAILED'}, backends "
          f"{'OK' if summary['backends_ok'] else 'FAILED'}, best ours = {best['backend']} compile={best['compile']}: "
          f"{best['tokens_per_s']:,.0f} tok/s, MFU {mfu_text} (goal >= 45%), {best['vs_hf']:.2f}x HF (goal >= 1.5x); "
          f"{summary['seconds']:.0f} s")
    if args.json:
        print("GPU_CHECK_JSON " + json.dumps({**summary, "parity": parity, "equivalence": equivalence,
                                              "throughput": speed}, default=str))
    return 0 if summary["parity_ok"] and summary["backends_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
