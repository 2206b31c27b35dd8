"""Exact resume: an interrupted-and-resumed run reproduces the uninterrupted run's losses step for step."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
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


def test_resume_reproduces_uninterrupted_losses(tmp_path: Path) -> None:
    from lightning_t5.training import fit

    full = fit(compose_config(tmp_path, run_name="full"))
    reference = read_losses(full["run_dir"])
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]

    part = fit(compose_config(tmp_path, run_name="part"), callbacks=[StopAt(3)])
    assert part["steps"] == 3
    assert sorted(read_losses(part["run_dir"])) == [1, 2, 3]
    resumed = fit(compose_config(tmp_path, "resume=" + str(tmp_path / "part"), run_name="part"))
    assert resumed["steps"] == 6
    losses = read_losses(resumed["run_dir"])
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
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
        from lightning_t5.training import fit
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

    from lightning_t5.training import fit

    reference = read_losses(fit(compose_config(tmp_path, run_name="reference"))["run_dir"])
    resumed = fit(compose_config(tmp_path, "resume=" + str(run_dir), run_name="killed"))
    assert resumed["steps"] == 6
    losses = read_losses(run_dir)
    for step in range(1, 7):
        assert losses[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6), (step, losses, reference)
