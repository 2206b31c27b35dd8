"""Exact resume: an interrupted-and-resumed run reproduces the uninterrupted run's losses step for step."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl

from lightning_t5.errors import RunInterrupted
from test_train_helpers import CONFIG_DIR, FAST, compose_config, read_losses


class StopAt(pl.Callback):
    """Stops training after `step` optimizer steps (as if the job had been interrupted there)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def logged_steps(run_dir: str | Path) -> list[int]:
    return [json.loads(line)["step"] for line in (Path(run_dir) / "train_log.jsonl").read_text().splitlines()]


class SigintAt(pl.Callback):
    """Delivers SIGINT to this process (as Ctrl-C does) from `hook`, the first time it runs at `global_step == step`.
    Two of them make a second Ctrl-C at a later moment."""

    def __init__(self, hook: str, step: int) -> None:
        self.step, self.fired = step, False
        setattr(self, hook, self._fire)

    def _fire(self, trainer, *args, **kwargs) -> None:
        if trainer.global_step == self.step and not self.fired:
            self.fired = True
            os.kill(os.getpid(), signal.SIGINT)


def assert_same_losses(run_dir: str | Path, reference: dict[int, float]) -> None:
    losses = read_losses(run_dir)
    assert logged_steps(run_dir) == sorted(reference)
    for step in sorted(reference):
        assert losses[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6), (step, losses, reference)


#: The default run's conditions that matter for exact resume: evaluation tasks configured (the test mixture's
#: SST-2 and RTE), dropout 0.1, an evaluation during training every 2 steps, and no step checkpoint before the first
#: Ctrl-C of a session (every 4 steps), on the small test model so that each run takes seconds.
WITH_EVAL = ("eval.every_n_steps=2", "trainer.checkpoint_every_n_steps=4")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Losses of the uninterrupted 6-step run with evaluation during training."""
    from lightning_t5.train.fit import fit

    run = fit(compose_config(tmp_path_factory.mktemp("reference"), *WITH_EVAL, run_name="reference"))
    losses = read_losses(run["run_dir"])
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    return losses


def interrupted(tmp_path: Path, *callbacks: pl.Callback, resume: str | None = None) -> RunInterrupted:
    """Runs (or resumes) the WITH_EVAL run `tmp_path/run` with `callbacks`; returns the RunInterrupted it ends with."""
    from lightning_t5.train.fit import fit

    extra = [f"resume={resume}"] if resume else []
    with pytest.raises(RunInterrupted) as stop:
        fit(compose_config(tmp_path, *WITH_EVAL, *extra, run_name="run"), callbacks=list(callbacks))
    return stop.value


def test_resume_reproduces_uninterrupted_losses(tmp_path: Path) -> None:
    from lightning_t5.train.fit import fit

    full = fit(compose_config(tmp_path, run_name="full"))
    reference = read_losses(full["run_dir"])
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]

    part = fit(compose_config(tmp_path, run_name="part"), callbacks=[StopAt(4)])  # last checkpoint: step 3
    assert part["steps"] == 4
    assert sorted(read_losses(part["run_dir"])) == [1, 2, 3, 4]
    with open(Path(part["run_dir"]) / "train_log.jsonl", "a") as fh:
        fh.write('{"step": 5, "loss": 9.4')  # the line a crash cut short (issue 21 A.9)
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


def test_train_log_skips_a_cut_last_line_and_rewrites_the_log_durably(tmp_path: Path, caplog) -> None:
    """The crash that makes a user resume can cut the last line of train_log.jsonl: resuming skips it with one log
    line and rewrites the file (no temporary file left), instead of failing with JSONDecodeError."""
    from lightning_t5.train.callbacks import TrainLog

    path = tmp_path / "train_log.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3, 4)]
    path.write_text("".join(rows) + '{"step": 5, "lo')
    with caplog.at_level(logging.WARNING):
        TrainLog(path)._drop_replayed_steps(3)
    assert path.read_text() == "".join(rows[:3])
    assert [r.getMessage() for r in caplog.records if "do not parse" in r.getMessage()] == [
        f"{path}: skipped 1 line(s) that do not parse (cut by a crash); the log is rewritten without them"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_log.jsonl"]
    path.write_text("".join(rows[:2]) + rows[2].rstrip("\n"))  # a complete last line without its newline
    TrainLog(path)._drop_replayed_steps(3)
    assert path.read_text() == "".join(rows[:3])  # lines appended next cannot run into it


def test_ctrl_c_resume_is_exact_with_evaluation_tasks(tmp_path: Path, reference: dict[int, float]) -> None:
    """Issue 24 item 2: Ctrl-C, then `resume=`, reproduces the uninterrupted losses with dropout on and evaluation
    tasks configured. Before the fix, Lightning ran an evaluation pass after the Ctrl-C checkpoint (at
    `trainer.should_stop`), which drew from the global generator, and then wrote `last.ckpt` again on
    `on_train_end` with that advanced random state: the resumed step 4 differed (measured: 9.5298 against 9.4233)."""
    stop = interrupted(tmp_path, SigintAt("on_train_batch_start", step=2))  # Ctrl-C during step 3
    assert stop.step == 3 and stop.checkpoint == tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert str(stop).endswith(f"Resume with: python train.py resume={tmp_path / 'run'}")
    assert logged_steps(tmp_path / "run") == [1, 2, 3]

    from lightning_t5.train.fit import fit

    fit(compose_config(tmp_path, *WITH_EVAL, f"resume={tmp_path / 'run'}", run_name="run"))
    assert_same_losses(tmp_path / "run", reference)
    assert stop.saved


def test_ctrl_c_at_other_moments_of_a_step_resumes_exactly(tmp_path: Path, reference: dict[int, float]) -> None:
    """Ctrl-C in the middle of a step (before the optimizer step), during an evaluation inside training, and a
    second Ctrl-C while the checkpoint is being written (ignored: the write finishes); then a resume from a step
    checkpoint written just before an evaluation. One run, interrupted three times, matches the reference."""
    run = tmp_path / "run"
    stop = interrupted(tmp_path, SigintAt("on_before_optimizer_step", step=2))  # during step 3
    assert stop.step == 3
    stop = interrupted(tmp_path, SigintAt("on_validation_start", step=4), SigintAt("on_save_checkpoint", step=5),
                       resume=str(run))  # Ctrl-C in the evaluation after step 4, again while step 5 is saved
    assert stop.step == 5 and stop.checkpoint == run / "checkpoints" / "last.ckpt"
    assert logged_steps(run) == [1, 2, 3, 4, 5]

    from lightning_t5.train.fit import fit

    # step000004.ckpt was written before the evaluation at step 4, which the reference ran before its step 5
    fit(compose_config(tmp_path, *WITH_EVAL, f"resume={run / 'checkpoints' / 'step000004.ckpt'}", run_name="run"))
    assert_same_losses(run, reference)


def test_second_ctrl_c_stops_at_once_and_the_run_resumes_from_its_last_checkpoint(
        tmp_path: Path, reference: dict[int, float]) -> None:
    """Issue 24 item 9: a second Ctrl-C before the step ends stops at once, without Lightning's "Detected
    KeyboardInterrupt" exit(1): fit raises RunInterrupted naming the run's last checkpoint (here the step-4 one)
    and how to resume, and resuming from it is exact."""
    run = tmp_path / "run"
    stop = interrupted(tmp_path, SigintAt("on_train_batch_start", step=4),  # Ctrl-C during step 5 ...
                       SigintAt("on_before_optimizer_step", step=4))  # ... and again before it ends
    assert not stop.saved and stop.step == 4 and stop.checkpoint == run / "checkpoints" / "last.ckpt"
    assert "second Ctrl-C" in str(stop) and str(stop).endswith(f"Resume with: python train.py resume={run}")
    assert logged_steps(run) == [1, 2, 3, 4]

    from lightning_t5.dist.checkpoint import load_checkpoint
    from lightning_t5.train.fit import fit

    assert load_checkpoint(stop.checkpoint)["global_step"] == 4
    fit(compose_config(tmp_path, *WITH_EVAL, f"resume={run}", run_name="run"))
    assert_same_losses(run, reference)


def test_second_ctrl_c_before_any_checkpoint_says_there_is_nothing_to_resume(tmp_path: Path) -> None:
    from lightning_t5.train.fit import fit

    with pytest.raises(RunInterrupted) as stop:
        fit(compose_config(tmp_path, "trainer.max_steps=3", run_name="early"),
            callbacks=[SigintAt("on_train_batch_start", step=0), SigintAt("on_before_optimizer_step", step=0)])
    assert stop.value.checkpoint is None and not stop.value.saved and "nothing to resume" in str(stop.value)
    assert "Resume with" not in str(stop.value)
    assert not (tmp_path / "early").exists()  # a launch stopped before its first step leaves no run directory


def test_forked_workers_leave_ctrl_c_to_the_training_process(tmp_path: Path, capfd) -> None:
    """The terminal's Ctrl-C reaches every process of the group, also the batch-building workers that
    `data.num_workers` forks during training with the training process's SIGINT handler: before, each of them
    printed the Ctrl-C message again and took a second Ctrl-C as its own order to stop."""
    from lightning_t5.train.callbacks import InterruptCheckpoint

    interrupt = InterruptCheckpoint(tmp_path / "checkpoints")
    with interrupt.catching_sigint():
        pid = os.fork()
        if pid == 0:  # the worker: Ctrl-C twice, then report whether its copy of the callback reacted
            try:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                os._exit(3 if interrupt.requested or interrupt.aborted else 0)
            except BaseException:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "Ctrl-C" not in capfd.readouterr().err
    assert not interrupt.requested


@pytest.mark.slow
def test_ctrl_c_twice_through_make_leaves_a_resumable_run_and_says_how_to_resume(tmp_path: Path) -> None:
    """`make train` with Ctrl-C pressed twice: the terminal sends SIGINT to the whole foreground process group
    (make and python). Before the fix, the first Ctrl-C saved last.ckpt and then Lightning evaluated for as long as
    the evaluation takes (minutes on full validation splits, no output); the second one ended in "Detected
    KeyboardInterrupt, attempting graceful shutdown ..." and exit status 1, without the resume line."""
    repo = Path(CONFIG_DIR).parent
    tests_dir = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests_dir), str(repo)]))
    run_dir = tmp_path / "make_run"
    args = [*[o for o in FAST if not o.startswith(("trainer.max_steps", "eval.max_examples"))],
            "trainer.max_steps=100000", "trainer.checkpoint_every_n_steps=2", "eval.max_examples=200",
            "imports=[test_train_helpers]", f"output_dir={tmp_path}", "run_name=make_run"]
    venv = Path(sys.executable).parent.parent  # `make -o` keeps make from re-running `setup` (pip) on a stale stamp
    proc = subprocess.Popen(["make", "--no-print-directory", "-o", f"{venv}/.installed", "train", f"VENV={venv}",
                             "ARGS=" + " ".join(args)], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run_dir / "train_log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    python_lines = [line for line in err.splitlines() if line.strip() and not line.startswith("make")]
    assert python_lines[-1] == f"Resume with: python train.py resume={run_dir}", err[-3000:]
    assert "Traceback" not in err and "Detected KeyboardInterrupt" not in err, err[-3000:]
    assert not list((run_dir / "checkpoints").glob("*.tmp")) and not list((run_dir / "checkpoints").glob(".*"))

    from lightning_t5.dist.checkpoint import load_checkpoint

    step = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert step >= 2
    resumed = subprocess.run([sys.executable, "train.py", f"resume={run_dir}", f"trainer.max_steps={step + 1}"],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert logged_steps(run_dir) == list(range(1, step + 2))


# --------------------------------------------------------------------------- refused resumes (issue 24 item 3)
def snapshot(run_dir: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `run_dir`: size, modification time and content hash."""
    import hashlib

    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns,
                                          hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small test run stopped after 3 of its 6 steps (last checkpoint: step 3). Tests copy it before changing it."""
    from lightning_t5.train.fit import fit

    root = tmp_path_factory.mktemp("stopped")
    run = fit(compose_config(root, "trainer.max_steps=4", "trainer.checkpoint_every_n_steps=3", run_name="stopped"),
              callbacks=[StopAt(3)])
    assert run["steps"] == 3
    return Path(run["run_dir"])


def test_a_refused_resume_writes_nothing_and_a_plain_resume_still_works(tmp_path: Path, stopped_run: Path) -> None:
    """Before: a refused resume (the mixing rates changed) rewrote the run's config.yaml first, after which even a
    plain `resume=` failed, and the refusal came from inside Lightning's checkpoint restore, chained under "Please
    call `iter(combined_loader)` first". Now the resume is validated before anything is written."""
    import shutil

    from lightning_t5.errors import CheckpointError
    from lightning_t5.train.fit import fit

    run = tmp_path / "stopped"
    shutil.copytree(stopped_run, run)
    before = snapshot(run)
    line = [f"resume={run}", "mixing.rate=equal"]  # the command line train.py hands to fit
    with pytest.raises(CheckpointError, match=r"^cannot resume with mixing.rate=equal \(mixing.rate null -> 'equal'"):
        fit(compose_config(tmp_path, *line, fast=False, run_name="stopped"), overrides=line)
    assert snapshot(run) == before
    # resume=auto (what the experiment runner passes) with the whole command line changed: the data check refuses
    with pytest.raises(CheckpointError, match=r"^resume=auto: cannot resume: the mixing rates changed"):
        fit(compose_config(tmp_path, "resume=auto", "mixing.rate=equal", "trainer.max_steps=4", run_name="stopped"))
    assert snapshot(run) == before

    result = fit(compose_config(tmp_path, f"resume={run}", fast=False, run_name="stopped"), overrides=[f"resume={run}"])
    assert result["steps"] == 4 and logged_steps(run) == [1, 2, 3, 4]


def test_a_longer_budget_is_refused_when_the_mixing_depends_on_it(tmp_path: Path, monkeypatch) -> None:
    """`trainer.max_steps` is accepted on resume unless the mixing depends on the step budget (as a budget-based
    method like UniMax does; simulated here by a temperature computed from the run's number of batches): then the
    data check refuses, naming the budget, and nothing is written."""
    from lightning_t5.errors import CheckpointError
    from lightning_t5.train.data import MixtureDataModule
    from lightning_t5.train.fit import fit

    original = MixtureDataModule.make_train_dataset

    def budget_dependent(self, rank=0, world_size=1, num_workers=0):
        self.mixing_cfg = {**self.mixing_cfg, "rate": "temperature", "temperature": 1.0 + self.total_batches / 4}
        return original(self, rank, world_size, num_workers)

    monkeypatch.setattr(MixtureDataModule, "make_train_dataset", budget_dependent)
    fit(compose_config(tmp_path, "trainer.max_steps=4", "trainer.checkpoint_every_n_steps=2", run_name="budget"),
        callbacks=[StopAt(2)])
    run = tmp_path / "budget"
    before = snapshot(run)
    line = [f"resume={run}", "trainer.max_steps=8"]
    with pytest.raises(CheckpointError) as err:
        fit(compose_config(tmp_path, *line, fast=False, run_name="budget"), overrides=line)
    message = str(err.value)
    assert message.startswith(f"resume={run}: cannot resume: the mixing rates changed since the checkpoint")
    assert message.endswith("The mixing depends on the step budget, and trainer.max_steps changed from 4 to 8: "
                            "resume with trainer.max_steps=4, or start a new run.")
    assert snapshot(run) == before


@pytest.mark.slow
def test_train_py_prints_a_refused_resume_as_its_last_line(tmp_path: Path, stopped_run: Path) -> None:
    """Through `python train.py`: exit status 2, the refusal as the last line, no traceback, nothing written."""
    repo = Path(CONFIG_DIR).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent), str(repo)]))
    before = snapshot(stopped_run)
    for line, expected in [
            ([f"resume={stopped_run}", "imports=[test_train_helpers]", "mixture=default"],
             "error: cannot resume with mixture=default (mixture "
                                                            "'test_train_mix' -> 'default': the training data stream"),
            ([*FAST, "trainer.max_steps=4", "imports=[test_train_helpers]", f"output_dir={stopped_run.parent}",
              "run_name=stopped", "resume=auto", "mixing.rate=equal"],
             "error: resume=auto: cannot resume: the mixing rates changed since the checkpoint")]:
        proc = subprocess.run([sys.executable, "train.py", *line], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1].startswith(expected), proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "combined_loader" not in proc.stderr
    assert snapshot(stopped_run) == before
