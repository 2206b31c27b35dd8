"""Shared helpers for the training tests (no tests here): a small registered mixture and config composition.

The tests compose the real `configs/config.yaml` through Hydra's compose API (exactly what `python train.py` does),
shrink the model and the batches so a run takes seconds on 2 CPU cores, and train on a small mixture of shipped
tasks (two GLUE classification tasks plus the span-corruption corpus task).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
TEST_MIXTURE = "test_train_mix"

#: A model ~10x smaller than `tiny` (same vocabulary): keeps each step in the tens of milliseconds.
SMALL_MODEL = ["model.d_model=64", "model.d_ff=128", "model.num_heads=2", "model.d_kv=32", "model.num_layers=1",
               "model.num_decoder_layers=1"]
FAST = [f"mixture={TEST_MIXTURE}", "data.batch_size=4", "data.sequence_length.inputs=64",
        "data.sequence_length.targets=16", "eval.max_examples=8", "eval.batch_size=8", "eval.max_new_tokens=4",
        "eval.before_training=false", "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=3",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "optim=adamw", "optim.warmup_steps=2",
        *SMALL_MODEL]


def register_test_mixture() -> str:
    from mixtures import Mixture, MixtureRegistry

    if TEST_MIXTURE not in MixtureRegistry.names():
        MixtureRegistry.add(Mixture(TEST_MIXTURE, ["glue_sst2", "glue_rte", "corpus_span_corruption"]))
    return TEST_MIXTURE


def compose_config(tmp_path: Path, *overrides: str, fast: bool = True, run_name: str = "run") -> Any:
    """The composed DictConfig of `python train.py <overrides>` with runs written under `tmp_path`."""
    from hydra import compose, initialize_config_dir

    from lightning_t5.train.schema import register_schema

    register_schema()
    register_test_mixture()
    base = [*FAST] if fast else []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="config",
                       overrides=[*base, f"output_dir={tmp_path}", f"run_name={run_name}", *overrides])


def read_losses(run_dir: str | Path) -> dict[int, float]:
    """step -> loss from train_log.jsonl; a step logged twice (before a crash and after resume) keeps the last."""
    losses: dict[int, float] = {}
    for line in (Path(run_dir) / "train_log.jsonl").read_text().splitlines():
        row = json.loads(line)
        losses[int(row["step"])] = float(row["loss"])
    return losses


# Importable through the run config's `imports: [test_train_helpers]` (the DDP test's torchrun processes use it).
register_test_mixture()


def sigkill_after_logged_steps(cmd: list[str], cwd: Path, env: dict[str, str], run_dir: Path, steps: int,
                               timeout: float = 300) -> int:
    """Start `cmd` (a `python train.py ...` that may launch more ranks) in its own process group, SIGKILL the whole
    group once `run_dir/train_log.jsonl` has `steps` lines (as a pre-emption would), and return the last logged step."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = Path(run_dir) / "train_log.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= steps:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    return max(read_losses(run_dir))
