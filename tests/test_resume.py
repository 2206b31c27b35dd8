"""Exact resume: an interrupted-and-resumed run reproduces the uninterrupted run's losses step for step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl

from test_train_helpers import CONFIG_DIR, compose_config, read_losses


class StopAt(pl.Callback):
    """Stops training after `step` optimizer steps (as if the job had been interrupted there)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def logged_steps(run_dir: str | Path) -> list[int]:
    return [json.loads(line)["step"] for line in (Path(run_dir) / "train_log.jsonl").read_text().splitlines()]


def test_resume_reproduces_uninterrupted_losses(tmp_path: Path) -> None:
    from lightning_t5.train.fit import fit

    full = fit(compose_config(tmp_path, run_name="full"))
    reference = read_losses(full["run_dir"])
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]

    part = fit(compose_config(tmp_path, run_name="part"), callbacks=[StopAt(4)])  # last checkpoint: step 3
    assert part["steps"] == 4
    assert sorted(read_losses(part["run_dir"])) == [1, 2, 3, 4]
    resumed = fit(compose_config(tmp_path, "resume=" + str(tmp_path / "part"), run_name="part"))
    assert resumed["steps"] == 6
    losses = read_losses(resumed["run_dir"])
    assert logged_steps(resumed["run_dir"]) == [1, 2, 3, 4, 5, 6]  # step 4, replayed by the resume, logged once
    for step in range(1, 7):  # dropout is on (tiny's 0.1): equality needs the RNG state restored too
        assert losses[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6), (step, losses, reference)
    assert resumed["tokens"] == full["tokens"]


@pytest.mark.slow
def test_sigkill_loses_only_steps_since_last_checkpoint(tmp_path: Path) -> None:
    """A process SIGKILLed right after step 4 resumes from the step-3 checkpoint and matches the reference."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import pytorch_lightning as pl
        from test_train_helpers import compose_config
        from lightning_t5.train.fit import fit
        from pathlib import Path

        class Kill(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step == 4:
                    os.kill(os.getpid(), signal.SIGKILL)

        fit(compose_config(Path({str(tmp_path)!r}), run_name="killed"), callbacks=[Kill()])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(CONFIG_DIR).parent, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_dir = tmp_path / "killed"
    assert sorted(read_losses(run_dir)) == [1, 2, 3, 4]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not list((run_dir / "checkpoints").glob("*.tmp"))

    from lightning_t5.train.fit import fit

    reference = read_losses(fit(compose_config(tmp_path, run_name="reference"))["run_dir"])
    resumed = fit(compose_config(tmp_path, "resume=" + str(run_dir), run_name="killed"))
    assert resumed["steps"] == 6
    assert logged_steps(run_dir) == [1, 2, 3, 4, 5, 6]
    losses = read_losses(run_dir)
    for step in range(1, 7):
        assert losses[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6), (step, losses, reference)


@pytest.mark.slow
def test_ctrl_c_saves_a_resumable_checkpoint_and_says_how_to_resume(tmp_path: Path) -> None:
    """SIGINT to `python train.py` mid-training: exit 130, `last.ckpt` at the step reached, the resume command printed;
    running that command continues from there."""
    from lightning_t5.dist.checkpoint import load_checkpoint
    from test_train_helpers import FAST

    tests_dir = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests_dir), str(Path(CONFIG_DIR).parent)]))
    overrides = [*[o for o in FAST if not o.startswith("trainer.max_steps")], "trainer.max_steps=100000",
                 "trainer.checkpoint_every_n_steps=100000", "imports=[test_train_helpers]",
                 f"output_dir={tmp_path}", "run_name=interrupted"]
    run_dir = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "train.py", *overrides], cwd=Path(CONFIG_DIR).parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        log = run_dir / "train_log.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert f"run directory: {run_dir}" in out  # printed at the start of the run
    assert f"Resume with: python train.py resume={run_dir}" in err, err[-3000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    step = load_checkpoint(ckpt)["global_step"]
    assert step >= 2 and logged_steps(run_dir)[-1] == step
    assert not list((run_dir / "checkpoints").glob("*.tmp"))

    resumed = subprocess.run([sys.executable, "train.py", f"resume={run_dir}", f"trainer.max_steps={step + 2}"],
                             cwd=Path(CONFIG_DIR).parent, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert logged_steps(run_dir) == list(range(1, step + 3))
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == step + 2
