"""The CPU training process keeps freed activation memory (lightning_t5.train.host_memory)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_t5.train.host_memory import user_allocator_setting

ROOT = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# with transparent huge pages always on, a fault maps 2 MB instead of 4 KB: counts of faults say little there
HUGE_PAGES_ALWAYS = THP.is_file() and "[always]" in THP.read_text()

# Minor page faults per training step of the tiny default model (32 x (128 + 32), Adafactor), as `fit` runs it.
STEP_FAULTS = """
import resource, sys, torch
from lightning_t5 import T5, T5Config
from lightning_t5.train.host_memory import keep_freed_memory

if sys.argv[1] == "keep":
    print(keep_freed_memory())
torch.manual_seed(0)
model = T5(T5Config.from_preset("tiny", dropout_rate=0.0, compile=False))
optimizer = torch.optim.Adafactor(model.parameters(), lr=0.01)
g = torch.Generator().manual_seed(0)
batch = {"encoder_input_tokens": torch.randint(2, 8192, (32, 128), generator=g),
         "decoder_input_tokens": torch.randint(2, 8192, (32, 32), generator=g),
         "decoder_target_tokens": torch.randint(2, 8192, (32, 32), generator=g)}

def step():
    optimizer.zero_grad(set_to_none=True)
    model(**batch, return_loss=True).loss.backward()
    optimizer.step()

for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def _run(script: str, mode: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    proc = subprocess.run([sys.executable, "-c", script, mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**clean, "PYTHONPATH": str(ROOT), **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
@pytest.mark.skipif(HUGE_PAGES_ALWAYS, reason="transparent huge pages always on: faults are counted per 2 MB page")
def test_a_cpu_training_step_does_not_page_fault_its_activations_in_again() -> None:
    """glibc's defaults: 21,000-34,000 faults per step seen (the [1024, 8192] logits alone are 8,192 pages);
    kept: 0-1,500."""
    default = float(_run(STEP_FAULTS, "default")[-1])
    line, kept = _run(STEP_FAULTS, "keep")
    assert line.startswith("host memory: glibc malloc keeps freed memory"), line
    assert default > 8192 and float(kept) < 0.25 * default, (default, kept)


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_the_users_allocator_settings_are_kept() -> None:
    script = "from lightning_t5.train.host_memory import keep_freed_memory; print(keep_freed_memory())"
    assert _run(script, "keep", MALLOC_TRIM_THRESHOLD_="0") == [
        "host memory: the allocator is configured by the user (MALLOC_TRIM_THRESHOLD_=0); left as it is"]


def test_user_allocator_settings_are_recognised() -> None:
    assert user_allocator_setting({}) is None
    assert user_allocator_setting({"PATH": "/usr/bin", "GLIBC_TUNABLES": "glibc.rtld.nns=2"}) is None
    assert user_allocator_setting({"MALLOC_MMAP_THRESHOLD_": "65536"}) == "MALLOC_MMAP_THRESHOLD_=65536"
    assert user_allocator_setting({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) == (
        "GLIBC_TUNABLES=glibc.malloc.trim_threshold=0")
    assert user_allocator_setting({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == (
        "LD_PRELOAD=/usr/lib/libjemalloc.so.2")
