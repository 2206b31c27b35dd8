"""Training-step throughput of lightning_t5.T5 and transformers' T5ForConditionalGeneration, eager and compiled,
against this machine's matmul rate measured in the same run.

    python bench/model.py                  # CPU: tiny 32 x (128 + 32) and T5.1.1-small 8 x (512 + 114), fp32
    python bench/model.py --runs t5_1_1_small@8x512x114 --compile-modes model,block   # which compilation wins
    python bench/model.py --runs t5_1_1_base@64x512x114 --dtypes bf16                 # a GPU
    python bench/model.py --dry-run        # the wiring in seconds (tiny shapes, one step; tests use it)

Each run (preset @ batch x encoder length x decoder length) is one worker process that
1. measures the matmul rate (`bench/peak.py`: one 2048^2 product, and the step's own products; bf16 only where the
   hardware has bf16 arithmetic) before and after the timing, and the 2048^2 rate after every round too, keeping
   the highest of each (a burst of load on a shared machine that lasts through one measurement then cannot make
   the reference low and the shares high);
2. builds the four configurations from the same seed-0 weights: ours eager (`model.compile=false`), ours compiled
   (`model.compile=true`: `BEST_COMPILE_MODE` for the device, or each of `--compile-modes`), transformers eager,
   transformers compiled (`torch.compile(model)`, what its Trainer does with `torch_compile=True`);
3. takes the first steps of each (compilation happens there; its time is reported) and then times them in
   alternating rounds, the best round of each counting (robust on a shared machine).

Same work for all: the same padded batch (the last quarter of the rows padded to half length), full training steps
(forward, backward, `make_optimizer("adamw")`: torch AdamW(fused=True) on CPU, Apex FusedAdam under fused=apex), the
same dtype (fp32, or bf16 autocast for both), dropout `--dropout` (0 by default: no random-number differences),
denormals flushed for both (`setup_numerics`). What differs: transformers gets input_ids + attention_mask + labels
(-100 on padding) and computes logits at every decoder position; ours gets the same tokens as seqio features
(segment ids = attention_mask, loss weights = labels != -100) through its training path,
`model(**batch, return_loss=True)`, which computes logits only at the weighted target positions (same loss and
gradients: tests/test_model.py). Model FLOPs are the T5 formula (`lightning_t5.model.flops`) at the full padded
shape for both, so skipping padding counts as speed, not as fewer FLOPs.

Columns: step time, tokens/s, achieved model GFLOP/s, that as a share of the 2048^2 matmul rate ("of 2048^2") and of
the step's own products ("of GEMMs": the ceiling of a step that did nothing but matmuls); on CUDA also MFU against
the datasheet peak in `lightning_t5.model.flops.PEAK_FLOPS`.
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
sys.path.insert(0, str(ROOT / "bench"))

from hf_baseline import hf_from_ours  # noqa: E402
from lightning_t5.model.flops import peak_flops, training_flops_per_sequence  # noqa: E402

DEFAULT_RUNS = "tiny@32x128x32,t5_1_1_small@8x512x114"
DRY_RUN = "tiny@2x32x8"


def parse_run(text: str) -> tuple[str, int, int, int]:
    """"t5_1_1_small@8x512x114" -> ("t5_1_1_small", 8, 512, 114)."""
    try:
        config, shape = text.split("@")
        batch, enc_len, dec_len = (int(x) for x in shape.split("x"))
    except ValueError:
        raise SystemExit(f"--runs entry {text!r}: expected PRESET@BATCHxENCxDEC, e.g. t5_1_1_small@8x512x114")
    return config, batch, enc_len, dec_len


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


def build(impl: str, compile_mode: str | None, args: argparse.Namespace, device):
    """(model, optimizer, T5Config) for impl "ours" | "hf", compiled with `compile_mode` (None: eager; for ours
    "best", "model" or "block"; for transformers "model" = torch.compile of the whole model)."""
    import torch

    from lightning_t5 import T5, T5Config
    from lightning_t5.model.fused import make_optimizer

    torch.manual_seed(0)
    cfg = T5Config.from_preset(args.config, dropout_rate=args.dropout, fused=args.fused, compile=False)
    ours = T5(cfg)
    backend = ours.backend
    if impl == "ours":
        model = ours.to(device).train()
        if compile_mode:
            model.enable_compile(None if compile_mode == "best" else compile_mode)
    else:
        model = hf_from_ours(ours).to(device).train()
        if compile_mode:
            model = torch.compile(model)
    return model, make_optimizer("adamw", model.parameters(), lr=1e-4, backend=backend), cfg


def make_step(impl, model, optimizer, batch, args, device):
    import torch

    from lightning_t5.model.hf import seqio_features

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
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
    """CPU: flush denormals to zero (one process-wide switch: all configurations alike). Peaky first softmaxes
    make denormal gradients, which slow CPU matmuls ~25x: the benchmark would measure denormal arithmetic instead
    of the models. TPUs and GPU tensor cores flush them anyway. And the host allocator `train.py` sets for CPU
    runs (`lightning_t5.train.host_memory`: freed activations keep their pages), for every configuration alike."""
    import torch

    from lightning_t5.train.host_memory import keep_freed_memory

    if args.device == "cpu" and args.flush_denormal:
        torch.set_flush_denormal(True)
    if args.device == "cpu":
        keep_freed_memory()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def configurations(args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    """(label, impl, compile mode) of each configuration to time."""
    rows = [("ours eager", "ours", None)]
    if args.compile:
        modes = args.compile_modes.split(",") if args.compile_modes else ["best"]
        rows += [(f"ours compiled ({m})" if m != "best" else "ours compiled", "ours", m) for m in modes]
    rows.append(("HF eager", "hf", None))
    if args.compile:
        rows.append(("HF compiled", "hf", "model"))
    return rows


def square_rates(args: argparse.Namespace, device) -> dict[str, dict[str, float]]:
    """The square-product rates only (a second or so): measured between the timed rounds."""
    import peak

    return peak.measure(device, [args.dtype], squares=(256,) if args.dry_run else None)


def measured_rates(args: argparse.Namespace, cfg, device) -> dict[str, dict[str, float]]:
    import peak

    squares = (256,) if args.dry_run else None
    return peak.measure(device, [args.dtype], cfg, (args.batch, args.enc_len, args.dec_len), squares=squares)


def worker_time(args: argparse.Namespace) -> dict:
    """All configurations in one process, timed in alternating rounds (fair under a noisy, shared machine)."""
    import torch

    from lightning_t5.model.t5 import best_compile_mode

    device = torch.device(args.device)
    setup_numerics(args)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from lightning_t5 import T5Config

    rate_cfg = T5Config.from_preset(args.config)
    rates_before = measured_rates(args, rate_cfg, device)
    steps, times, first_loss, warmup_s, compiles, models = {}, {}, {}, {}, {}, {}
    cfg = None
    for label, impl, mode in configurations(args):
        model, optimizer, cfg = build(impl, mode, args, device)
        batch = make_batch(cfg, args.batch, args.enc_len, args.dec_len, device)
        steps[label] = make_step(impl, model, optimizer, batch, args, device)
        start = time.perf_counter()
        first_loss[label] = float(steps[label]())
        for _ in range(args.warmup - 1):
            steps[label]()
        sync(device)
        warmup_s[label] = time.perf_counter() - start
        if impl == "ours" and mode:
            compiles[label] = {"mode": model.compile_mode, "graphs": model.compile_count}
            models[label] = model
        times[label] = []
    measurements = [rates_before]
    for _ in range(args.rounds):
        for label in steps:
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[label]()
            sync(device)
            times[label].append((time.perf_counter() - start) / args.steps)
        measurements.append(square_rates(args, device))  # the 2048^2 rate after every round as well
    for label, info in compiles.items():  # a recompilation during the timed rounds shows here
        info["recompiled_while_timed"] = models[label].compile_count - info["graphs"]
    measurements.append(measured_rates(args, rate_cfg, device))
    rates = {dtype: {key: max(m[dtype][key] for m in measurements if key in m.get(dtype, {}))
                     for key in values} for dtype, values in rates_before.items()}
    tokens = args.batch * (args.enc_len + args.dec_len)
    flops = training_flops_per_sequence(cfg, args.enc_len, args.dec_len) * args.batch
    result = {"config": args.config, "batch": args.batch, "enc_len": args.enc_len, "dec_len": args.dec_len,
              "dtype": args.dtype, "device": str(device), "dropout": args.dropout, "threads": torch.get_num_threads(),
              "model_gflop_per_step": flops / 1e9, "rates": rates, "first_loss": first_loss, "compiles": compiles,
              "best_compile_mode": best_compile_mode(device.type), "configs": {}}
    rate = rates.get(args.dtype, {})
    square = next((v for k, v in rate.items() if k.startswith("square")), None)
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name()
        square = max((v for k, v in rate.items() if k.startswith("square")), default=None)
    peak = peak_flops(result.get("device_name", ""), args.dtype) if device.type == "cuda" else None
    for label, values in times.items():
        best = min(values)
        achieved = flops / best
        result["configs"][label] = {
            "step_s": best, "step_s_median": sorted(values)[len(values) // 2], "tokens_per_s": tokens / best,
            "model_gflops": achieved / 1e9, "of_square": achieved / square if square else None,
            "of_model_gemms": achieved / rate["model"] if "model" in rate else None,
            "mfu_datasheet": achieved / peak if peak else None, "warmup_s": warmup_s[label]}
    return result


def worker_memory(args: argparse.Namespace) -> dict:
    """Peak memory of two eager training steps of one implementation (fresh process)."""
    import torch

    device = torch.device(args.device)
    setup_numerics(args)
    base_rss = rss_bytes()
    model, optimizer, cfg = build(args.impl, None, args, device)
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


def run_child(args: argparse.Namespace, mode: str, run: str, impl: str = "ours") -> dict:
    config, batch, enc_len, dec_len = parse_run(run)
    cmd = [sys.executable, __file__, "--worker", mode, "--impl", impl, "--config", config, "--dtype", args.dtype,
           "--batch", str(batch), "--enc-len", str(enc_len), "--dec-len", str(dec_len),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--rounds", str(args.rounds),
           "--device", args.device, "--fused", args.fused, "--dropout", str(args.dropout)]
    cmd += [] if args.compile else ["--no-compile"]
    cmd += ["--compile-modes", args.compile_modes] if args.compile_modes else []
    cmd += [] if args.flush_denormal else ["--no-flush-denormal"]
    cmd += ["--dry-run"] if args.dry_run else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"benchmark worker failed ({mode} {impl} {run} {args.dtype}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pct(value: float | None) -> str:
    return f"{100 * value:.0f}%" if value is not None else "-"


def report(result: dict, memory: dict | None) -> list[str]:
    """The printed lines of one run."""
    from peak import describe

    lines = [f"{result['config']} {result['batch']} x ({result['enc_len']} + {result['dec_len']}) {result['dtype']}, "
             f"dropout {result['dropout']}, {result['model_gflop_per_step']:.1f} model GFLOP/step; matmul rate "
             f"measured in this run: {describe(result['rates']) or 'not measured for ' + result['dtype']}"]
    square = next((k.replace("square_", "") for k in result["rates"].get(result["dtype"], {}) if "square" in k),
                  "2048")
    lines.append(f"  {'configuration':<26}{'step s':>8}{'tok/s':>9}{'GFLOP/s':>9}{'of ' + square + '^2':>10}"
                 f"{'of GEMMs':>9}"
                 f"{'MFU':>7}{'1st steps s':>12}{'peak MB':>9}")
    for label, r in result["configs"].items():
        mem = (memory or {}).get(label)
        lines.append(f"  {label:<26}{r['step_s']:>8.3f}{r['tokens_per_s']:>9.0f}{r['model_gflops']:>9.1f}"
                     f"{_pct(r['of_square']):>10}{_pct(r['of_model_gemms']):>9}{_pct(r['mfu_datasheet']):>7}"
                     f"{r['warmup_s']:>12.1f}{mem if mem is not None else '-':>9}")
    configs = result["configs"]

    def ratio(a: str, b: str) -> str:
        return f"{configs[b]['step_s'] / configs[a]['step_s']:.2f}x" if a in configs and b in configs else "-"

    lines.append(f"  ours compiled / HF compiled {ratio('ours compiled', 'HF compiled')}, ours eager / HF eager "
                 f"{ratio('ours eager', 'HF eager')}, ours compiled / ours eager {ratio('ours compiled', 'ours eager')}"
                 f", HF compiled / HF eager {ratio('HF compiled', 'HF eager')}  (step-time ratios: > 1 = faster)")
    modes = {label: r["step_s"] for label, r in configs.items() if label.startswith("ours compiled (")}
    if len(modes) > 1:
        fastest = min(modes, key=modes.get)
        mode = fastest.split("(")[1].rstrip(")")
        agrees = mode == result["best_compile_mode"]
        lines.append(f"  fastest compilation here: {mode} ({', '.join(f'{k}: {v:.3f} s' for k, v in modes.items())}); "
                     f"BEST_COMPILE_MODE[{result['device'].split(':')[0]}] = {result['best_compile_mode']}"
                     f"{'' if agrees else '  <- DISAGREES: update lightning_t5/model/t5.py'}")
    for label, info in result["compiles"].items():
        lines.append(f"  {label}: mode {info['mode']}, {info['graphs']} graph(s) compiled in the first steps, "
                     f"{info['recompiled_while_timed']} while timed")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma list of PRESET@BATCHxENCxDEC")
    parser.add_argument("--dtypes", default="fp32", help="fp32 and/or bf16 (bf16 autocast for every configuration)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds; the best round counts")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (compilation happens there)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--fused", default="auto")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager configurations only")
    parser.add_argument("--compile-modes", default=None,
                        help="time ours compiled with each of these modes (model,block) instead of model.compile=true")
    parser.add_argument("--no-flush-denormal", dest="flush_denormal", action="store_false",
                        help="CPU: keep denormal arithmetic (see setup_numerics)")
    parser.add_argument("--memory", action="store_true", help="also measure eager peak memory (fresh processes)")
    parser.add_argument("--dry-run", action="store_true", help=f"{DRY_RUN}, one step, small matmul probe")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", choices=["time", "memory"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--enc-len", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--dec-len", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        print(json.dumps(worker_time(args) if args.worker == "time" else worker_memory(args)))
        return
    if args.dry_run:
        args.runs, args.steps, args.rounds, args.warmup = DRY_RUN, 1, 1, 1
    print(f"device={args.device} rounds={args.rounds}x{args.steps} steps (+{args.warmup} first steps, best round), "
          f"fused={args.fused}, flush_denormal={args.flush_denormal and args.device == 'cpu'}, "
          f"{'host allocator as train.py sets it on CPU, ' if args.device == 'cpu' else ''}"
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    results: list[dict] = []
    for run in args.runs.split(","):
        for args.dtype in args.dtypes.split(","):
            result = run_child(args, "time", run)
            memory = None
            if args.memory:
                memory = {label: run_child(args, "memory", run, impl)["peak_mem_mb"]
                          for label, impl in (("ours eager", "ours"), ("HF eager", "hf"))}
                memory = {k: round(v) for k, v in memory.items()}
            result["peak_mem_mb"] = memory
            results.append(result)
            print("\n".join(report(result, memory)), flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
