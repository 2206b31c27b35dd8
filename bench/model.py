"""Training-step throughput of lightning_t5.T5 vs transformers' T5ForConditionalGeneration.

Both models get the same config, the same weights and the same unpacked, padded batch (input_ids + attention_mask +
labels with -100 on padding) through the same HF-style call, and take full training steps (forward, backward,
AdamW step). Ours uses its configured kernels (`model.fused`, fused AdamW); HF uses its defaults (SDPA attention,
foreach AdamW). Timing: both models live in one process and run in alternating rounds; the best round of each
counts (robust on a shared, noisy machine). Peak memory: each implementation alone in a fresh process, over a
training step taken after the optimizer state exists. CPU peak = max RSS minus the RSS before the model was built;
CUDA peak = torch.cuda.max_memory_allocated.

On CUDA the bench also reports MFU = model FLOPs/s / the GPU's peak, FLOPs from REFERENCE.md's T5 formula:
6*[N_enc*T_enc + (N_dec - N_xKV)*T_dec + N_xKV*T_enc + V*d*T_dec] + 12*h*d_kv*(L_enc*T_enc^2 + L_dec*(T_dec^2 +
T_dec*T_enc)) per sequence (N_* without embeddings; N_xKV = cross-attention K/V weights).

    python bench/model.py                          # CPU: tiny + t5_1_1_small, fp32 and bf16 autocast
    python bench/model.py --configs t5_1_1_base --batch 64 --enc-len 512 --dec-len 114 --dtypes bf16 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Dense peak FLOP/s (no sparsity). bf16 and tf32 tensor-core peaks; "fp32" uses TF32 matmuls when enabled.
PEAK_FLOPS = {
    "H100 PCIe": {"bf16": 756e12, "fp32": 378e12},
    "H100": {"bf16": 989.4e12, "fp32": 494.7e12},
    "H200": {"bf16": 989.4e12, "fp32": 494.7e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
    "L4": {"bf16": 121e12, "fp32": 60e12},
}


def peak_flops(device_name: str, dtype: str) -> float | None:
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in device_name:
            return PEAK_FLOPS[key][dtype]
    return None


def training_flops_per_sequence(cfg, t_enc: int, t_dec: int) -> float:
    """REFERENCE.md's T5 training FLOPs for one (t_enc, t_dec) sequence pair."""
    d, h, dkv, ff = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
    inner = h * dkv
    ffn = (3 if cfg.is_gated else 2) * d * ff
    n_enc = cfg.num_layers * (4 * d * inner + ffn + d) + d
    cross = 4 * d * inner + d
    n_dec = cfg.num_decoder_layers * (4 * d * inner + cross + ffn + d) + d
    n_xkv = cfg.num_decoder_layers * 2 * d * inner
    dense = n_enc * t_enc + (n_dec - n_xkv) * t_dec + n_xkv * t_enc + cfg.vocab_size * d * t_dec
    attention = 12 * h * dkv * (cfg.num_layers * t_enc ** 2 + cfg.num_decoder_layers * (t_dec ** 2 + t_dec * t_enc))
    return 6 * dense + attention


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_batch(cfg, batch: int, enc_len: int, dec_len: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, cfg.vocab_size, (batch, enc_len), generator=g)
    labels = torch.randint(2, cfg.vocab_size, (batch, dec_len), generator=g)
    # unpacked rows of varying length: the last quarter of the rows are padded to half length
    attention_mask = torch.ones_like(input_ids)
    attention_mask[3 * batch // 4:, enc_len // 2:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    labels[3 * batch // 4:, dec_len // 2:] = -100
    return {k: v.to(device) for k, v in
            dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels).items()}


def build(impl: str, args: argparse.Namespace, device):
    """(model, optimizer, T5Config) for `impl` ("ours" | "hf"), same seed-0 weights for both."""
    import torch

    from lightning_t5 import T5, T5Config
    from lightning_t5.fused import make_optimizer

    torch.manual_seed(0)
    cfg = T5Config.from_preset(args.config, dropout_rate=args.dropout, fused=args.fused,
                               compile=args.compile and impl == "ours")
    ours = T5(cfg)
    if impl == "ours":
        model = ours.to(device).train()
        return model, make_optimizer("adamw", model.parameters(), lr=1e-4, backend=cfg.fused), cfg
    import transformers

    hf_cfg = transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff, num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads, dropout_rate=cfg.dropout_rate,
        feed_forward_proj=cfg.feed_forward_proj, tie_word_embeddings=cfg.tie_word_embeddings,
        decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(hf_cfg)
    state = dict(ours.state_dict())
    if ours.lm_head is None:
        state["lm_head.weight"] = state["shared.weight"]
    else:  # transformers v5 ties lm_head unless the weights differ: give it its own parameter
        model.lm_head.weight = torch.nn.Parameter(state["lm_head.weight"].clone())
    model.load_state_dict(state, strict=False)
    model = model.to(device).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4), cfg


def make_step(model, optimizer, batch, args, device):
    import torch

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def setup_numerics(args: argparse.Namespace) -> None:
    """CPU: flush denormals to zero (for both implementations alike). HF's T5 init (embeddings and lm_head with std 1)
    makes the first softmaxes extremely peaky; their denormal gradients slow CPU matmuls ~25x, which would make the
    benchmark measure denormal arithmetic instead of the models. TPUs and GPU tensor cores flush them anyway."""
    import torch

    if args.device == "cpu" and args.flush_denormal:
        torch.set_flush_denormal(True)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def worker_time(args: argparse.Namespace) -> dict:
    """Both models in one process, timed in alternating rounds (fair under a noisy, shared machine)."""
    import torch

    device = torch.device(args.device)
    setup_numerics(args)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    steps, times, first_loss, cfg = {}, {}, {}, None
    for impl in ("ours", "hf"):
        model, optimizer, cfg = build(impl, args, device)
        batch = make_batch(cfg, args.batch, args.enc_len, args.dec_len, device)
        steps[impl] = make_step(model, optimizer, batch, args, device)
        first_loss[impl] = float(steps[impl]())
        for _ in range(args.warmup - 1):
            steps[impl]()
        times[impl] = []
    for _ in range(args.rounds):
        for impl in ("ours", "hf"):
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[impl]()
            sync(device)
            times[impl].append((time.perf_counter() - start) / args.steps)
    tokens = args.batch * (args.enc_len + args.dec_len)
    result = {"config": args.config, "dtype": args.dtype, "device": str(device), "first_loss": first_loss}
    for impl, values in times.items():
        best = min(values)
        result[impl] = {"step_s_min": best, "step_s_median": sorted(values)[len(values) // 2],
                        "tokens_per_s": tokens / best}
        if device.type == "cuda":
            name = torch.cuda.get_device_name()
            peak = peak_flops(name, args.dtype)
            flops = training_flops_per_sequence(cfg, args.enc_len, args.dec_len) * args.batch
            result["device_name"] = name
            result[impl].update(model_tflops=flops / best / 1e12, mfu=(flops / best / peak) if peak else None)
    return result


def worker_memory(args: argparse.Namespace) -> dict:
    """Peak memory of two training steps of one implementation (fresh process)."""
    import torch

    device = torch.device(args.device)
    setup_numerics(args)
    base_rss = rss_bytes()
    model, optimizer, cfg = build(args.impl, args, device)
    batch = make_batch(cfg, args.batch, args.enc_len, args.dec_len, device)
    step = make_step(model, optimizer, batch, args, device)
    step()  # optimizer state exists after the first step
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        return {"peak_mem_mb": torch.cuda.max_memory_allocated() / 2 ** 20}
    step()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_mem_mb": max(peak_rss - base_rss, 0) / 2 ** 20}


def run_child(args: argparse.Namespace, mode: str, config: str, dtype: str, impl: str = "ours") -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--impl", impl, "--config", config, "--dtype", dtype,
           "--batch", str(args.batch), "--enc-len", str(args.enc_len), "--dec-len", str(args.dec_len),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--rounds", str(args.rounds),
           "--device", args.device, "--fused", args.fused, "--dropout", str(args.dropout)]
    cmd += ["--compile"] if args.compile else []
    cmd += [] if args.flush_denormal else ["--no-flush-denormal"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"benchmark worker failed ({mode} {impl} {config} {dtype}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,t5_1_1_small")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--enc-len", type=int, default=128)
    parser.add_argument("--dec-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating ours/HF rounds; the best round counts")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--fused", default="auto")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--compile", action="store_true", help="torch.compile our blocks (model.compile=true)")
    parser.add_argument("--no-flush-denormal", dest="flush_denormal", action="store_false",
                        help="CPU: keep denormal arithmetic (see setup_numerics)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", choices=["time", "memory"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        print(json.dumps(worker_time(args) if args.worker == "time" else worker_memory(args)))
        return
    print(f"device={args.device} batch={args.batch} enc_len={args.enc_len} dec_len={args.dec_len} "
          f"rounds={args.rounds}x{args.steps} steps (+{args.warmup} warm-up, best round) fused={args.fused} "
          f"compile={args.compile} dropout={args.dropout} flush_denormal={args.flush_denormal and args.device == 'cpu'}")
    header = (f"{'config':<14}{'dtype':<6}{'ours tok/s':>12}{'HF tok/s':>12}{'ratio':>8}"
              f"{'ours MB':>10}{'HF MB':>10}{'ours MFU':>10}{'HF MFU':>9}")
    print(header)
    results: list[dict] = []
    for config in args.configs.split(","):
        for dtype in args.dtypes.split(","):
            timing = run_child(args, "time", config, dtype)
            memory = {impl: run_child(args, "memory", config, dtype, impl)["peak_mem_mb"] for impl in ("ours", "hf")}
            ours, hf = timing["ours"], timing["hf"]
            timing["peak_mem_mb"] = memory
            results.append(timing)
            mfu = lambda r: f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"  # noqa: E731
            print(f"{config:<14}{dtype:<6}{ours['tokens_per_s']:>12.0f}{hf['tokens_per_s']:>12.0f}"
                  f"{ours['tokens_per_s'] / hf['tokens_per_s']:>7.2f}x{memory['ours']:>10.0f}"
                  f"{memory['hf']:>10.0f}{mfu(ours):>10}{mfu(hf):>9}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
