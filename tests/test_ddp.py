"""Data parallelism: 2-process DDP (CPU, gloo) trains exactly like one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_train_helpers import CONFIG_DIR, FAST, TEST_MIXTURE, read_losses, sigkill_after_logged_steps

REPO = Path(CONFIG_DIR).parent


def _rows(batch: dict, key: str) -> list[tuple[int, ...]]:
    return [tuple(int(t) for t in row[row != 0]) for row in batch[key]]


def test_ranks_split_the_global_batch_without_duplicates() -> None:
    """Padding mode: rank r's rows at step s, concatenated in rank order, are the 1-process batch of size 2B."""
    from lightning_t5.train.data import MixtureDataModule

    data = {"sequence_length": {"inputs": 64, "targets": 16}, "batch_size": 4, "pack": False}
    single = MixtureDataModule(TEST_MIXTURE, data=data, mixing={}, seed=7).make_train_dataset(0, 1)
    half = {**data, "batch_size": 2}
    ranks = [MixtureDataModule(TEST_MIXTURE, data=half, mixing={}, seed=7).make_train_dataset(r, 2) for r in (0, 1)]
    iters = [iter(single), *(iter(d) for d in ranks)]
    seen: list[tuple[int, ...]] = []
    for _ in range(5):
        full, r0, r1 = (next(it) for it in iters)
        for key in ("encoder_input_tokens", "decoder_target_tokens"):
            assert _rows(r0, key) + _rows(r1, key) == _rows(full, key)
        torch.testing.assert_close(torch.cat([r0["decoder_task_ids"], r1["decoder_task_ids"]]),
                                   full["decoder_task_ids"])
        seen += _rows(r0, "encoder_input_tokens") + _rows(r1, "encoder_input_tokens")
    assert len(seen) == 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(tmp_path: Path, name: str, nproc: int, extra: list[str], env_extra: dict | None = None) -> Path:
    overrides = [*FAST, "imports=[test_train_helpers]", f"output_dir={tmp_path}", f"run_name={name}",
                 "data.pack=false", "model.dropout_rate=0.0", "trainer.max_steps=4", "eval.max_examples=6", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if nproc == 1:
        cmd = [sys.executable, "train.py", *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", "train.py", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (tmp_path / f"{name}.stderr").write_text(proc.stderr)
    return tmp_path / name


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    one = _train(tmp_path, "one", 1, ["data.batch_size=4"])
    fresh = tmp_path / "fresh_cache"  # no token cache yet: local rank 0 builds each one, rank 1 waits for it
    two = _train(tmp_path, "two", 2, ["data.batch_size=2", "trainer.strategy=ddp", "trainer.devices=2"],
                 {"LIGHTNING_T5_CACHE": str(fresh)})
    built = [ln for ln in (tmp_path / "two.stderr").read_text().splitlines() if "built token cache" in ln]
    assert sorted(ln.split("built token cache ")[1].split(":")[0] for ln in built) == \
        ["corpus_span_corruption/train", "glue_rte/train", "glue_sst2/train"], built  # once each, not per rank
    assert all(ln.startswith("[local rank 0]") for ln in built)
    a, b = read_losses(one), read_losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=2e-5)
    # evaluation is sharded over ranks and gathered: the same examples are scored
    import json

    ma = json.loads((one / "metrics.json").read_text())["metrics"]
    mb = json.loads((two / "metrics.json").read_text())["metrics"]
    assert set(ma) == set(mb)
    for task in ma:
        for key, value in ma[task].items():
            assert mb[task][key] == pytest.approx(value, abs=1e-6), (task, key)


@pytest.mark.slow
def test_two_process_ddp_resumes_after_sigkill_with_the_same_losses(tmp_path: Path) -> None:
    """SIGKILL both ranks of `python train.py trainer.strategy=ddp trainer.devices=2 ...` after step 4, then resume:
    every rank must get back its own data-loader position (a single-file checkpoint is written by rank 0), so the
    steps after the last checkpoint (step 3) are redone on the same examples and every loss matches the reference."""
    ddp = ["data.batch_size=2", "trainer.strategy=ddp", "trainer.devices=2", "trainer.max_steps=8"]
    reference = _train(tmp_path, "reference", 1, ["data.batch_size=4", "trainer.max_steps=8"])
    overrides = [*FAST, "imports=[test_train_helpers]", f"output_dir={tmp_path}", "run_name=killed",
                 "data.pack=false", "model.dropout_rate=0.0", "eval.max_examples=6", *ddp]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "killed"
    killed_at = sigkill_after_logged_steps([sys.executable, "train.py", *overrides], REPO, env, run_dir, 4)
    assert 4 <= killed_at < 8, "the run finished before it could be killed"
    resumed = subprocess.run([sys.executable, "train.py", *overrides, f"resume={run_dir}"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    expected, losses = read_losses(reference), read_losses(run_dir)
    assert sorted(losses) == list(range(1, 9))
    np.testing.assert_allclose([losses[s] for s in range(1, 9)], [expected[s] for s in range(1, 9)], rtol=2e-5)
