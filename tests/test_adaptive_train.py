"""Adaptive mixing in real training runs: SIGKILL + `resume=` under `mixing.adaptive=odm` gives the uninterrupted
losses and stages step for step (1 process, 2-process DDP, 2-process FSDP), and a user's own method from the README
runs end to end from the user's module."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from test_train_helpers import CONFIG_DIR, FAST, compose_config, read_losses, sigkill_after_logged_steps

REPO = Path(CONFIG_DIR).parent
# ODM from the first step, a stage every 2 steps (the one-block lag: stages at 4, 6, 8, 10), checkpoints every 3 steps
ODM = ["mixing.adaptive=odm", "mixing.adaptive_every=2", "mixing.adaptive_options.warmup_steps=0",
       "trainer.max_steps=8"]
PADDED = ["data.pack=false", "model.dropout_rate=0.0", "eval.max_examples=6"]

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stages(run_dir: Path) -> list[tuple[int, list[float]]]:
    record = json.loads((run_dir / "mixing.json").read_text())
    return [(s["start_step"], [s["shares"][n] for n in record["task_names"]]) for s in record["stages"]]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_sigkill_and_resume_under_odm_on_one_process(tmp_path: Path) -> None:
    """Killed after step 5 (checkpoint at step 3, in the middle of a block), resumed: every loss, every stage and every
    per-block share equals the uninterrupted run's (dropout on: the RNG state is restored too)."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import pytorch_lightning as pl
        from pathlib import Path
        from test_train_helpers import compose_config
        from lightning_t5.train.fit import fit

        class Kill(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step == 5:
                    os.kill(os.getpid(), signal.SIGKILL)

        fit(compose_config(Path({str(tmp_path)!r}), *{ODM!r}, run_name="killed"), callbacks=[Kill()])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    from lightning_t5.train.fit import fit

    reference = fit(compose_config(tmp_path, *ODM, run_name="reference"))
    resumed = fit(compose_config(tmp_path, *ODM, "resume=" + str(tmp_path / "killed"), run_name="killed"))
    assert resumed["steps"] == 8
    expected, losses = read_losses(reference["run_dir"]), read_losses(resumed["run_dir"])
    assert sorted(losses) == list(range(1, 9))
    for step in range(1, 9):
        assert losses[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-6), (step, losses, expected)
    ref_dir, run_dir = Path(reference["run_dir"]), Path(resumed["run_dir"])
    assert _stages(run_dir) == _stages(ref_dir)
    assert [s for s, _ in _stages(ref_dir)] == [0, 4, 6, 8, 10]
    assert json.loads((run_dir / "mixing.json").read_text())["blocks"] == \
        json.loads((ref_dir / "mixing.json").read_text())["blocks"]
    assert resumed["shares"]["drawn"] == reference["shares"]["drawn"]
    assert (run_dir / "mixing_shares.png").read_bytes()[:4] == b"\x89PNG"
    metrics = (run_dir / "csv").glob("version_*/metrics.csv")
    assert any("mixing/planned/glue_rte" in p.read_text().splitlines()[0] for p in metrics)
    # `python -m mixtures show --stages` reads the same stages from the run directory and from a checkpoint file
    from mixtures.stages import read_run_file

    from_ckpt = read_run_file(run_dir / "checkpoints" / "last.ckpt")
    assert [(s["start_step"], s["shares"]) for s in from_ckpt["stages"]] == \
        [(s["start_step"], s["shares"]) for s in json.loads((run_dir / "mixing.json").read_text())["stages"]]
    assert from_ckpt["adaptive"] == "odm"


@pytest.fixture(scope="module")
def single_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted 1-process run with the global batch (4) of the 2-process runs below."""
    out = tmp_path_factory.mktemp("odm_ref")
    _run([sys.executable, "train.py", *FAST, *PADDED, *ODM, "imports=[test_train_helpers]", f"output_dir={out}",
          "run_name=single", "data.batch_size=4"])
    return out / "single"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sigkill_and_resume_under_odm_on_two_processes(strategy: str, single_reference: Path, tmp_path: Path) -> None:
    """Both ranks killed after step 4, resumed from the step-3 checkpoint: every rank reduced the per-task losses
    before ODM's update, so both hold the same stages, and the losses and stages equal the 1-process run's."""
    layout = (["trainer.strategy=ddp", "trainer.devices=2"] if strategy == "ddp" else
              ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"])
    overrides = [*FAST, *PADDED, *ODM, *layout, "data.batch_size=2", "imports=[test_train_helpers]",
                 f"output_dir={tmp_path}", "run_name=killed"]
    cmd = [sys.executable, "train.py", *overrides]
    if strategy == "ddp":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "train.py", *overrides]
    run_dir = tmp_path / "killed"
    killed_at = sigkill_after_logged_steps(cmd, REPO, _env(), run_dir, 4)
    assert 4 <= killed_at < 8, "the run finished before it could be killed"
    _run([*cmd, f"resume={run_dir}"])
    expected, losses = read_losses(single_reference), read_losses(run_dir)
    assert sorted(losses) == list(range(1, 9))
    np.testing.assert_allclose([losses[s] for s in range(1, 9)], [expected[s] for s in range(1, 9)], rtol=2e-5)
    ours, ref = _stages(run_dir), _stages(single_reference)
    assert [s for s, _ in ours] == [s for s, _ in ref] == [0, 4, 6, 8, 10]
    np.testing.assert_allclose([v for _, v in ours], [v for _, v in ref], rtol=1e-5)
    drawn = json.loads((run_dir / "metrics.json").read_text())["shares"]["drawn"]["counts"]
    assert drawn == json.loads((single_reference / "metrics.json").read_text())["shares"]["drawn"]["counts"]


def test_a_users_method_from_the_readme_runs_end_to_end(tmp_path: Path) -> None:
    """The README's `my_mixing.py`, imported with imports=[my_mixing] by `python train.py`, steers the run."""
    from test_readme import readme_block, readme_command

    (tmp_path / "my_mixing.py").write_text(readme_block("# my_mixing.py"))
    command = readme_command("python train.py imports=[my_mixing]")
    keep = [a for a in command[2:] if a.startswith(("imports=", "mixing.", "+mixing."))]
    assert "mixing.adaptive=hardest_first" in keep
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), str(REPO / "tests")])}
    overrides = [*FAST, "imports=[test_train_helpers,my_mixing]", *[a for a in keep if not a.startswith("imports=")],
                 "mixing.adaptive_every=2", "trainer.max_steps=8", f"output_dir={tmp_path}", "run_name=mine"]
    proc = subprocess.run([sys.executable, "train.py", *overrides], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((tmp_path / "mine" / "mixing.json").read_text())
    assert record["adaptive"] == "hardest_first"
    added = [s for s in record["stages"] if s["source"] == "hardest_first"]
    assert [s["start_step"] for s in added] == [4, 6, 8, 10]
    for stage in added:
        assert sum(stage["shares"].values()) == pytest.approx(1.0)
    assert len(set(round(v, 9) for s in added for v in s["shares"].values())) > 1  # the shares moved
    import torch

    from mixtures.stages import _find_sampler_state

    power = float(re.search(r"power=([0-9.]+)", " ".join(keep)).group(1))
    state = _find_sampler_state(torch.load(tmp_path / "mine" / "checkpoints" / "last.ckpt", weights_only=True))
    assert state["adaptive"]["options"] == {"power": power} and state["adaptive"]["method"] == "hardest_first"
