"""The benchmarks compare the same work: bench/train.py's three runs see the same examples per optimizer step, and
bench/gpu_check.py exits cleanly without CUDA (its logic dry-runs on CPU)."""

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
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
    rc = gpu_check.main(["--device", "cpu", "--config", "tiny", "--parity-config", "tiny", "--enc-len", "32",
                         "--dec-len", "8", "--batch", "2", "--steps", "1", "--warmup", "1", "--no-compile", "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    summary = json.loads(out.strip().splitlines()[-1].removeprefix("GPU_CHECK_JSON "))
    assert summary["parity_ok"] and summary["backends_ok"]
    assert {r["backend"] for r in summary["equivalence"]} == {"torch"}
    assert summary["hf"]["impl"] == "hf" and summary["best_ours"]["tokens_per_s"] > 0
