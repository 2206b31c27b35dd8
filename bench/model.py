"""Training-step throughput of lightning_t5.T5 vs transformers' T5ForConditionalGeneration.

Both models get the same config, the same weights and the same unpacked, padded batch, and take full training steps
(forward, backward, the same optimizer: `lightning_t5.model.fused.make_optimizer("adamw")`, i.e. torch AdamW(fused=True)
on CPU, Apex FusedAdam under fused=apex). HF gets input_ids + attention_mask + labels (-100 on padding) through its
own forward and loss; ours gets the same tokens as seqio features (encoder_segment_ids = attention_mask,
decoder_loss_weights = labels != -100) through its training path, `model(**batch, return_loss=True)`: the same
loss and gradients (a test checks them against the full computation), with logits only at target positions.
Denormals are flushed for both (`setup_numerics`). CPU bf16 is compared against HF in fp32, HF's best CPU dtype
(torch's bf16 GEMMs are a slow fallback on CPUs without bf16 arithmetic, which no HF user would choose); on CUDA both
use the same dtype. Timing: both models live in one process and run in alternating rounds; the best round of each
counts (robust on a shared, noisy machine). Peak memory: each implementation alone in a fresh process, over a
training step taken after the optimizer state exists. CPU peak = max RSS minus the RSS before the model was built;
CUDA peak = torch.cuda.max_memory_allocated.

On CUDA the bench also reports MFU = model FLOPs/s / the GPU's peak (`lightning_t5.model.flops`, the T5 formula, not
6*N*T).

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

from lightning_t5.model.flops import peak_flops, training_flops_per_sequence  # noqa: E402


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


def impl_dtype(impl: str, args: argparse.Namespace) -> str:
    """HF on CPU always runs fp32, its best CPU dtype; every other case runs the requested dtype."""
    return "fp32" if impl == "hf" and args.device == "cpu" else args.dtype


def build(impl: str, args: argparse.Namespace, device):
    """(model, optimizer, T5Config) for `impl` ("ours" | "hf"), same seed-0 weights for both."""
    import torch

    from lightning_t5 import T5, T5Config
    from lightning_t5.model.fused import make_optimizer

    torch.manual_seed(0)
    cfg = T5Config.from_preset(args.config, dropout_rate=args.dropout, fused=args.fused,
                               compile=args.compile and impl == "ours")
    ours = T5(cfg)
    backend = ours.backend
    if impl == "ours":
        model = ours.to(device).train()
        return model, make_optimizer("adamw", model.parameters(), lr=1e-4, backend=backend), cfg
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
    return model, make_optimizer("adamw", model.parameters(), lr=1e-4, backend=backend), cfg


def make_step(impl, model, optimizer, batch, args, device):
    import torch

    from lightning_t5.model.hf import seqio_features

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=impl_dtype(impl, args) == "bf16")
    seqio = seqio_features(batch) if impl == "ours" else None

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(**seqio, return_loss=True).loss if seqio is not None else model(**batch).loss
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def setup_numerics(args: argparse.Namespace) -> None:
    """CPU: flush denormals to zero (one process-wide switch: both implementations alike). HF's T5 init
    (embeddings and lm_head with std 1) makes the first softmaxes extremely peaky; their denormal gradients slow
    CPU matmuls ~25x, which would make the benchmark measure denormal arithmetic instead of the models. TPUs and
    GPU tensor cores flush them anyway."""
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
        steps[impl] = make_step(impl, model, optimizer, batch, args, device)
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
    result = {"config": args.config, "dtype": args.dtype, "hf_dtype": impl_dtype("hf", args), "device": str(device),
              "dropout": args.dropout, "first_loss": first_loss}
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
    step = make_step(args.impl, model, optimizer, batch, args, device)
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
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout rate (workers; see --dropouts)")
    parser.add_argument("--dropouts", default=None, help="comma list of dropout rates to run (default: --dropout)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our blocks (model.compile=true)")
    parser.add_argument("--no-flush-denormal", dest="flush_denormal", action="store_false",
                        help="CPU: keep denormal arithmetic (see setup_numerics)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory workers")
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
          f"compile={args.compile} flush_denormal={args.flush_denormal and args.device == 'cpu'}")
    header = (f"{'config':<14}{'dtype':<11}{'drop':>5}{'ours tok/s':>12}{'HF tok/s':>12}{'ratio':>8}"
              f"{'ours MB':>10}{'HF MB':>10}{'ours MFU':>10}{'HF MFU':>9}")
    print(header)
    results: list[dict] = []
    runs = [(c, t, float(p)) for c in args.configs.split(",") for t in args.dtypes.split(",")
            for p in (args.dropouts or str(args.dropout)).split(",")]
    for config, dtype, args.dropout in runs:
        timing = run_child(args, "time", config, dtype)
        memory = {impl: (run_child(args, "memory", config, dtype, impl)["peak_mem_mb"] if args.memory else float("nan"))
                  for impl in ("ours", "hf")}
        ours, hf = timing["ours"], timing["hf"]
        timing["peak_mem_mb"] = memory
        results.append(timing)
        mfu = lambda r: f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"  # noqa: E731
        dtypes = dtype if timing["hf_dtype"] == dtype else f"{dtype}/{timing['hf_dtype']}"
        print(f"{config:<14}{dtypes:<11}{args.dropout:>5}{ours['tokens_per_s']:>12.0f}{hf['tokens_per_s']:>12.0f}"
              f"{ours['tokens_per_s'] / hf['tokens_per_s']:>7.2f}x{memory['ours']:>10.0f}"
              f"{memory['hf']:>10.0f}{mfu(ours):>10}{mfu(hf):>9}", flush=True)
    print("ratio = ours / HF on identical padded batches (the kernel gain); dtype a/b = ours in a, HF in b")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
