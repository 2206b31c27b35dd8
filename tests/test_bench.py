"""The benchmarks compare the same work and divide by the right reference: bench/train.py's runs see the same
examples per optimizer step, the GEMM shapes bench/peak.py times add up to the FLOP formula, bench/model.py prints
every configuration with its share of the measured matmul rate, and bench/gpu_check.py exits cleanly without CUDA
(its logic dry-runs on CPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_t5.model.hf import seqio_features

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    """bench/<name>.py as a module. The scripts put bench/ first on sys.path (for `import peak`); it goes to the end
    here, so that a later `import train` in the same test process still finds the repository's train.py, not
    bench/train.py."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bench_dir = str(ROOT / "bench")
    while bench_dir in sys.path:
        sys.path.remove(bench_dir)
    sys.path.append(bench_dir)
    return module


def test_train_bench_runs_see_the_same_examples_per_step():
    bench = _load("train")
    rng = np.random.default_rng(0)
    examples = [{"inputs": rng.integers(2, 50, rng.integers(3, 120)),
                 "targets": rng.integers(2, 50, rng.integers(1, 30))}
                for _ in range(200)]
    groups = bench.step_groups(examples, 16, seed=0)
    assert sorted(i for g in groups for i in g) == list(range(200)) and all(len(g) == 16 for g in groups[:-1])
    # length-grouped like Trainer(group_by_length=True): padded batches are much tighter than random ones
    by_step = [[examples[i] for i in g] for g in groups]
    packed_rows = 0
    for chunk in by_step:
        hf = bench.hf_batch(chunk)
        ours = seqio_features(hf)
        packed = bench.packed_batch(chunk, {"inputs": 128, "targets": 32})

        def tokens(ids: torch.Tensor) -> list[int]:
            return sorted(ids[ids > 0].tolist())

        expected_in = sorted(int(t) for e in chunk for t in e["inputs"])
        expected_tg = sorted(int(t) for e in chunk for t in e["targets"])
        assert tokens(hf["input_ids"]) == tokens(ours["encoder_input_tokens"]) == tokens(
            packed["encoder_input_tokens"]) == expected_in
        labels = hf["labels"].clamp_min(0)
        assert tokens(labels) == tokens(ours["decoder_target_tokens"]) == expected_tg
        assert tokens(packed["decoder_target_tokens"] * (packed["decoder_loss_weights"] > 0)) == expected_tg
        assert len(packed["encoder_input_tokens"]) <= len(chunk)
        packed_rows += len(packed["encoder_input_tokens"])
    assert packed_rows < 0.8 * len(examples)  # packing needs fewer rows for the same examples


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_gpu_check_without_cuda_says_so_and_exits_cleanly():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--json"], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CUDA is not available" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1].removeprefix("GPU_CHECK_JSON ")) == {"cuda": False}


@pytest.mark.slow
def test_gpu_check_logic_dry_run_on_cpu(capsys):
    gpu_check = _load("gpu_check")
    rc = gpu_check.main(["--dry-run", "--no-compile", "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    summary = json.loads(out.strip().splitlines()[-1].removeprefix("GPU_CHECK_JSON "))
    assert summary["parity_ok"] and summary["backends_ok"]
    assert {r["backend"] for r in summary["equivalence"]} == {"torch"}
    assert summary["hf"]["impl"] == "hf" and summary["best_ours"]["tokens_per_s"] > 0
    assert {"square_256", "model"} <= set(summary["rates"]) and 0 < summary["best_of_measured_peak"] < 2
    for line in ("Matmul rate (fp32, measured now): 256^2", "ours torch eager", "HF eager", "of measured peak",
                 "goal >= 1.0x compiled", "goal < 480 s"):
        assert line in out, line


@pytest.mark.parametrize("preset,shape", [("tiny", (32, 128, 32)), ("t5_1_1_small", (8, 512, 114)),
                                          ("t5_1_1_base", (64, 512, 114)), ("small", (8, 512, 114))])
def test_gemm_shapes_add_up_to_the_flop_formula(preset, shape):
    """bench/peak.py times exactly the products the FLOP formula counts (all but the norm scales)."""
    from lightning_t5 import T5Config
    from lightning_t5.model.flops import gemm_flops, gemm_shapes, training_flops_per_sequence

    cfg = T5Config.from_preset(preset)
    batch, t_enc, t_dec = shape
    formula = training_flops_per_sequence(cfg, t_enc, t_dec) * batch
    assert gemm_flops(gemm_shapes(cfg, *shape)) == pytest.approx(formula, rel=1e-3)
    assert gemm_flops(gemm_shapes(cfg, *shape)) < formula  # the norm scales are the only difference


def test_peak_rates_are_measured_per_dtype_the_hardware_has():
    peak = _load("peak")
    from lightning_t5 import T5Config
    from lightning_t5.model.fused import cpu_has_native_bf16

    cfg = T5Config.from_preset("tiny", vocab_size=256)
    rates = peak.measure(torch.device("cpu"), ["fp32", "bf16"], cfg, (2, 16, 8), squares=(128,))
    assert set(rates["fp32"]) == {"square_128", "model"} and all(v > 1e6 for v in rates["fp32"].values())
    assert ("bf16" in rates) == cpu_has_native_bf16()
    assert "fp32: 128^2" in peak.describe(rates)


def test_model_bench_dry_run_prints_each_configuration_and_its_share_of_the_rate(capsys):
    bench = _load("model")
    bench.main(["--dry-run", "--no-compile"])
    out = capsys.readouterr().out
    assert "matmul rate measured in this run: fp32: 256^2" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("  ours eager", "  HF eager"))]
    assert len(rows) == 2
    for row in rows:
        assert row[-4].endswith("%") and row[-5].endswith("%")  # of 256^2 (the dry run's square), of GEMMs


@pytest.mark.slow
def test_model_bench_dry_run_with_compilation_prints_all_four(capsys):
    bench = _load("model")
    bench.main(["--dry-run"])
    out = capsys.readouterr().out
    for label in ("ours eager", "ours compiled", "HF eager", "HF compiled"):
        assert f"  {label} " in out, out
    assert "graph(s) compiled in the first steps, 0 while timed" in out


def test_model_bench_says_which_compilation_is_faster_and_whether_the_code_agrees():
    """`--compile-modes model,block` prints the faster mode and flags a BEST_COMPILE_MODE that no longer names it
    (the code's choice is a measured constant, re-checked by the benchmark, not a start-up measurement)."""
    bench = _load("model")

    def result(model_s: float, block_s: float) -> dict:
        row = {"tokens_per_s": 1.0, "model_gflops": 1.0, "of_square": 0.5, "of_model_gemms": 0.6,
               "mfu_datasheet": None, "warmup_s": 1.0}
        configs = {"ours eager": {**row, "step_s": 6.0}, "ours compiled (model)": {**row, "step_s": model_s},
                   "ours compiled (block)": {**row, "step_s": block_s}, "HF eager": {**row, "step_s": 7.0}}
        return {"config": "t5_1_1_small", "batch": 8, "enc_len": 512, "dec_len": 114, "dtype": "fp32",
                "dropout": 0.0, "model_gflop_per_step": 850.0, "configs": configs, "compiles": {},
                "rates": {"fp32": {"square_2048": 2e11, "model": 1.7e11}}, "best_compile_mode": "model",
                "device": "cpu"}

    agree = "\n".join(bench.report(result(4.9, 5.2), None))
    assert "fastest compilation here: model" in agree and "DISAGREES" not in agree
    disagree = "\n".join(bench.report(result(5.3, 5.2), None))
    assert "fastest compilation here: block" in disagree and "DISAGREES" in disagree
    assert "2048^2 200.0 GFLOP/s, model GEMMs 170.0 GFLOP/s" in agree
