"""Experiment stages through an executor: local (in order) and submitit (jobs; its local executor here), with
dependent stages waiting for their starting point and independent ones running concurrently."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from lightning_t5.experiments.executors import (
    StageWork,
    check_executor_options,
    run_stages,
)
from lightning_t5.experiments.plan import ExperimentConfigError, Stage

ROOT = Path(__file__).resolve().parents[1]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # submitit jobs unpickle the fake fit by value


def fake_fit(cfg) -> dict:
    """Stands in for `fit`: takes a second, 'trains' from cfg.init_from, returns a checkpoint path."""
    time.sleep(1.5)
    return {"checkpoint": f"{cfg.run_dir}/last.ckpt", "steps": int(cfg.steps), "init_from": cfg.init_from}


STAGES = [Stage("pretrain", "mix", ("a", "b"), 4, role="pretrain", run_dir="pretrain"),
          Stage("ft_a", "a", ("a",), 2, init_stage="pretrain", run_dir="ft_a"),
          Stage("ft_b", "b", ("b",), 2, init_stage="pretrain", run_dir="ft_b"),
          Stage("multitask", "mix", ("a", "b"), 6, role="multitask", run_dir="multitask"),
          Stage("multitask__ft_a", "a", ("a",), 2, init_stage="multitask", run_dir="multitask__ft_a")]


def _prepare(reuse: dict | None = None):
    from omegaconf import OmegaConf

    def prepare(stage: Stage, results) -> StageWork:
        if reuse and stage.name in reuse:
            return StageWork(done=reuse[stage.name])
        init = results[stage.init_stage]["checkpoint"] if stage.init_stage else None
        return StageWork(cfg=OmegaConf.create({"run_dir": stage.run_dir, "steps": stage.steps, "init_from": init}),
                         finish=lambda r: {**r, "finished": True})
    return prepare


def test_executor_options_are_validated() -> None:
    assert check_executor_options({}) == ("local", {})
    assert check_executor_options({"executor": "submitit", "cluster": {"partition": "gpu", "gpus_per_node": 8}}) == (
        "submitit", {"partition": "gpu", "gpus_per_node": 8})
    with pytest.raises(ExperimentConfigError, match=r"experiment_options.executor='slurm' is not valid"):
        check_executor_options({"executor": "slurm"})
    with pytest.raises(ExperimentConfigError, match=r"unknown experiment_options.cluster key\(s\) gpus"):
        check_executor_options({"executor": "submitit", "cluster": {"gpus": 8}})
    with pytest.raises(ExperimentConfigError, match="executor=local"):
        check_executor_options({"cluster": {"nodes": 2}})
    assert check_executor_options({"cluster": {"nodes": None, "partition": None}}) == ("local", {})  # yaml nulls


def test_submitit_is_refused_under_a_multi_process_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ExperimentConfigError, match="must run in a single process"):
        check_executor_options({"executor": "submitit_local"})
    assert check_executor_options({"executor": "local"}) == ("local", {})


def test_local_executor_runs_in_plan_order() -> None:
    def quick_fit(cfg) -> dict:
        time.sleep(0.01)
        return {"checkpoint": f"{cfg.run_dir}/last.ckpt", "steps": cfg.steps, "init_from": cfg.init_from}

    results, times = run_stages(STAGES, _prepare(), quick_fit)
    assert list(results) == [s.name for s in STAGES]
    assert results["ft_b"]["init_from"] == "pretrain/last.ckpt" and results["ft_b"]["finished"]
    starts = [times[s.name]["start"] for s in STAGES]
    assert starts == sorted(starts)


class _InstantJobs:
    """A submitit-like executor whose jobs run at submit time and report done after a few polls; it records how many
    jobs were running (submitted, not yet reported done) whenever one is submitted."""

    def __init__(self) -> None:
        self.running: list = []
        self.peak = 0

    def submit(self, fn, *args, gpus=None):
        executor = self

        class Job:
            job_id = f"job{len(executor.running)}"
            polls = 0
            value = fn(*args)

            def done(self) -> bool:
                self.polls += 1
                if self.polls >= 3 and self in executor.running:
                    executor.running.remove(self)
                return self.polls >= 3

            def result(self):
                return self.value

        job = Job()
        self.running.append(job)
        self.peak = max(self.peak, len(self.running))
        return job


@pytest.mark.parametrize("cap, peak", [(None, 3), (1, 1), (2, 2)])
def test_max_parallel_stages_caps_the_running_jobs(monkeypatch: pytest.MonkeyPatch, cap, peak) -> None:
    from lightning_t5.experiments import executors

    monkeypatch.setattr(executors, "_POLL_S", 0.001)
    jobs = _InstantJobs()
    quick = lambda cfg: {"checkpoint": f"{cfg.run_dir}/last.ckpt", "steps": cfg.steps}  # noqa: E731
    results, _ = executors._run_submitit(STAGES, _prepare(), quick, jobs, {}, None, cap)
    assert set(results) == {s.name for s in STAGES}
    assert jobs.peak == peak  # no cap: pretrain + multitask, then ft_a + ft_b + multitask__ft_a at once
    assert executors.check_max_parallel({"max_parallel_stages": 2}) == 2
    assert executors.check_max_parallel({}) is None
    with pytest.raises(ExperimentConfigError, match="max_parallel_stages=0 must be a positive integer"):
        executors.check_max_parallel({"max_parallel_stages": 0})


@pytest.mark.slow  # each job is a fresh Python process (~10 s each on 2 busy cores)
def test_submitit_local_runs_independent_stages_concurrently(tmp_path: Path) -> None:
    reuse = {"multitask": {"checkpoint": "multitask/last.ckpt", "steps": 6}}  # finished earlier: not submitted
    results, times = run_stages(STAGES, _prepare(reuse), fake_fit, executor="submitit_local",
                                cluster={"timeout_min": 5}, folder=tmp_path / "jobs", max_parallel=4)
    assert set(results) == {s.name for s in STAGES}
    assert times["multitask"] == {"reused": True}
    assert results["multitask__ft_a"]["init_from"] == "multitask/last.ckpt"
    assert results["ft_a"]["init_from"] == results["ft_b"]["init_from"] == "pretrain/last.ckpt"
    # fine-tunes start only after their pre-training ended, and run at the same time as each other
    for name in ("ft_a", "ft_b"):
        assert times[name]["start"] >= times["pretrain"]["end"]
    assert times["ft_a"]["start"] < times["ft_b"]["end"] and times["ft_b"]["start"] < times["ft_a"]["end"]
    # multitask__ft_a depended only on a reused stage: it ran alongside the pre-training
    assert times["multitask__ft_a"]["start"] < times["pretrain"]["end"]


@pytest.mark.slow
def test_a_failed_job_is_reported_after_the_running_ones_end(tmp_path: Path) -> None:
    def broken_fit(cfg) -> dict:
        if cfg.run_dir == "ft_a":
            raise ValueError("out of memory (simulated)")
        return fake_fit(cfg)

    expected = r"stage 'ft_a' failed in job \S+ \(ValueError: out of memory \(simulated\); log"
    with pytest.raises(RuntimeError, match=expected):
        run_stages(STAGES[:3], _prepare(), broken_fit, executor="submitit_local", folder=tmp_path / "jobs")


# ---------------------------------------------------------------------------------------------------------------
# Reruns: job ids recorded, running jobs reattached; a second orchestrator refused; the machine's capacity
class _Scheduler:
    """A submitit-like scheduler whose jobs outlive the orchestrator that submitted them (like SLURM's, or local
    processes whose parent was killed). Each job reports done on its third poll; `kill_orchestrator_at_poll` makes
    that poll raise KeyboardInterrupt instead, as the orchestrator being killed while it waits."""

    kind = "submitit"

    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}
        self.submissions: list[tuple[str, Any]] = []  # (stage run_dir, gpus)
        self.polls = 0
        self.kill_orchestrator_at_poll: int | None = None

    def submit(self, fn, fit_fn, cfg, setup, threads, gpus=None):
        scheduler = self

        class Job:
            job_id = f"{len(scheduler.jobs) + 100}"
            paths = None

            def __init__(self) -> None:
                self.polls, self.finished, self.gpus = 0, False, gpus

            def done(self) -> bool:
                scheduler.polls += 1
                if scheduler.polls == scheduler.kill_orchestrator_at_poll:
                    raise KeyboardInterrupt("orchestrator killed")
                self.polls += 1
                self.finished = self.finished or self.polls >= 3
                return self.finished

            def result(self):
                return fit_fn(cfg)

        job = Job()
        self.jobs[job.job_id] = job
        self.submissions.append((cfg.run_dir, gpus))
        return job

    def attach(self, job_id: str):
        job = self.jobs.get(job_id)
        return job if job is not None and not job.finished else None

    def running(self) -> list:
        return [j for j in self.jobs.values() if not j.finished]


def test_job_ids_are_recorded_and_a_rerun_attaches_to_the_running_jobs(tmp_path: Path, monkeypatch) -> None:
    """The orchestrator is killed while pretrain and multitask run; the rerun waits for those two jobs instead of
    submitting them again, then submits the three stages that start from them. Each stage is submitted once."""
    from lightning_t5.experiments import executors
    from lightning_t5.experiments.orchestration import JobRecords

    monkeypatch.setattr(executors, "_POLL_S", 0.001)
    scheduler, records = _Scheduler(), JobRecords(tmp_path / "orchestrator")
    quick = lambda cfg: {"checkpoint": f"{cfg.run_dir}/last.ckpt", "steps": cfg.steps}  # noqa: E731
    scheduler.kill_orchestrator_at_poll = 1
    with pytest.raises(KeyboardInterrupt):
        executors._run_submitit(STAGES, _prepare(), quick, scheduler, {}, None, None, records)
    assert [run_dir for run_dir, _ in scheduler.submissions] == ["pretrain", "multitask"]
    first = {name: records.get(name)["job_id"] for name in ("pretrain", "multitask")}
    assert first == {"pretrain": "100", "multitask": "101"}

    scheduler.kill_orchestrator_at_poll = None
    results, times = executors._run_submitit(STAGES, _prepare(), quick, scheduler, {}, None, None, records)
    assert set(results) == {s.name for s in STAGES} and all(r["finished"] for r in results.values())
    assert sorted(run_dir for run_dir, _ in scheduler.submissions) == sorted(s.run_dir for s in STAGES)  # once each
    assert times["pretrain"]["reattached"] and times["pretrain"]["job_id"] == "100"
    assert not times["ft_a"].get("reattached")
    assert {s.name: records.get(s.name)["job_id"] for s in STAGES}.keys() == {s.name for s in STAGES}
    # a job that has ended is not attached to: its stage is submitted again (resume=auto continues it)
    assert scheduler.attach("100") is None


def _sleep_then(seconds: float, value: str) -> str:
    time.sleep(seconds)
    return value


@pytest.mark.slow  # a real submitit_local job (~10 s of Python start-up on 2 busy cores)
def test_a_new_orchestrator_attaches_to_a_running_submitit_local_job(tmp_path: Path) -> None:
    from lightning_t5.experiments.executors import SubmititJobs

    job = SubmititJobs("submitit_local", tmp_path / "jobs", {"timeout_min": 5}).submit(_sleep_then, 8.0, "trained")
    rerun = SubmititJobs("submitit_local", tmp_path / "jobs", {})  # as a new orchestrator process would
    attached = rerun.attach(str(job.job_id))
    assert attached is not None and not attached.done()
    deadline = time.time() + 240
    while not attached.done() and time.time() < deadline:
        time.sleep(0.5)
    assert attached.result() == "trained"
    assert rerun.attach(str(job.job_id)) is None  # ended: nothing to attach to
    assert rerun.attach("999999999") is None


def _live_foreign_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_a_second_orchestrator_on_the_same_stages_is_refused(tmp_path: Path) -> None:
    from lightning_t5.experiments.orchestration import ExperimentBusyError, stage_locks

    folder = tmp_path / "orchestrator"
    other = _live_foreign_process()
    try:
        with stage_locks(folder, ["pretrain", "ft_a"]):
            assert json.loads((folder / "ft_a.lock").read_text())["pid"] == os.getpid()
            (folder / "ft_a.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                                          "started": time.time(), "argv": ["train.py", "x"]}))
            with pytest.raises(ExperimentBusyError, match=rf"\(ft_a\) belong to another orchestrator that is still "
                                                          rf"running: pid {other.pid}"):
                with stage_locks(folder, ["ft_a", "ft_b"]):
                    pass
            assert not (folder / "ft_b.lock").exists()  # refused before taking anything
            with stage_locks(folder, ["ft_b"]):  # disjoint stages (rows split over processes) run side by side
                assert (folder / "ft_b.lock").exists()
            assert not (folder / "ft_b.lock").exists()
    finally:
        other.kill()
        other.wait()
    # its process is gone: the lock is stale and taken over
    with stage_locks(folder, ["ft_a"]):
        assert json.loads((folder / "ft_a.lock").read_text())["pid"] == os.getpid()
    assert not (folder / "ft_a.lock").exists()


def test_run_experiment_refuses_while_another_orchestrator_runs_its_stages(tmp_path: Path) -> None:
    from test_experiments_runner import FakeFit, make_cfg

    from lightning_t5.experiments import run_experiment
    from lightning_t5.experiments.orchestration import ExperimentBusyError

    cfg = make_cfg(tmp_path, strategies=["pretrain_finetune"], tasks=["glue_rte"])
    folder = tmp_path / "runs" / "xp" / "orchestrator"
    folder.mkdir(parents=True)
    other = _live_foreign_process()
    try:
        (folder / "pretrain.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                                          "started": time.time(), "argv": []}))
        fit = FakeFit()
        with pytest.raises(ExperimentBusyError, match=f"pid {other.pid}"):
            run_experiment(cfg, fit)
        assert fit.calls == []
    finally:
        other.kill()
        other.wait()
    fit = FakeFit()
    run_experiment(cfg, fit)  # the holder is gone: the experiment runs, and leaves no lock behind
    assert fit.calls and not list(folder.glob("*.lock"))


def test_submitit_local_runs_what_the_machine_can_run_by_default(monkeypatch) -> None:
    from lightning_t5.experiments import executors
    from lightning_t5.experiments.executors import Capacity, machine_capacity

    monkeypatch.setattr(executors, "_cpu_cores", lambda: 2)
    assert machine_capacity("submitit_local", {}, None) == Capacity(2, threads=1)  # one stage per core
    assert machine_capacity("submitit_local", {}, 1) == Capacity(1, threads=2)  # overridden: it gets both cores
    assert machine_capacity("submitit", {"gpus_per_node": 8}, None) == Capacity(None)  # SLURM queues the jobs
    assert machine_capacity("local", {}, None) == Capacity(None)
    monkeypatch.setattr(executors, "_visible_gpus", lambda: [0, 1, 2, 3, 4])
    assert machine_capacity("submitit_local", {"gpus_per_node": 2}, None) == Capacity(2, gpu_slots=((0, 1), (2, 3)))
    with pytest.raises(ExperimentConfigError, match="gpus_per_node=8 but this machine has 5 visible GPU"):
        machine_capacity("submitit_local", {"gpus_per_node": 8}, None)


def test_stages_on_gpus_get_their_own_devices(monkeypatch) -> None:
    from lightning_t5.experiments import executors
    from lightning_t5.experiments.executors import Capacity

    monkeypatch.setattr(executors, "_POLL_S", 0.001)
    scheduler = _Scheduler()
    peak: list[list] = []
    real_submit = scheduler.submit

    def submit(*args, gpus=None):
        job = real_submit(*args, gpus=gpus)
        peak.append(sorted(tuple(j.gpus) for j in scheduler.running()))
        return job

    scheduler.submit = submit
    quick = lambda cfg: {"checkpoint": f"{cfg.run_dir}/last.ckpt", "steps": cfg.steps}  # noqa: E731
    capacity = Capacity(2, gpu_slots=((0, 1), (2, 3)))
    executors._run_submitit(STAGES, _prepare(), quick, scheduler, {}, None, capacity)
    assert len(scheduler.submissions) == len(STAGES)
    assert max(len(p) for p in peak) == 2
    assert all(len(set(p)) == len(p) for p in peak)  # never two running stages on the same GPUs


def test_a_stage_job_takes_its_share_of_the_threads(monkeypatch) -> None:
    import torch

    from lightning_t5.experiments.executors import _call_stage

    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    assert _call_stage(lambda cfg: {"threads": os.environ["OMP_NUM_THREADS"]}, None, None, 3) == {"threads": "3"}
    assert calls == [3]


# ---------------------------------------------------------------------------------------------------------------
def _experiment(out: Path, *extra: str) -> dict:
    args = ["experiment=strategies_tiny", f"output_dir={out}", "experiment_options.pretrain_steps=4",
            "experiment_options.finetune_steps=2", "experiment_options.tasks=[glue_rte,super_glue_cb]",
            "experiment_options.strategies=[pretrain_finetune]",
            "experiment_options.overrides.eval.max_examples=8", *extra]
    proc = subprocess.run([sys.executable, "train.py", *args], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "strategies_tiny" / "results.json").read_text())


@pytest.mark.slow
def test_strategies_tiny_with_submitit_local_gives_the_local_table(tmp_path: Path) -> None:
    local = _experiment(tmp_path / "local")
    jobs = _experiment(tmp_path / "jobs", "experiment_options.executor=submitit_local")
    assert [r["key"] for r in jobs["rows"]] == [r["key"] for r in local["rows"]] == ["pretrain_finetune"]
    for a, b in zip(local["rows"], jobs["rows"]):
        assert b["status"] == a["status"] == "done"
        for task, values in a["metrics"].items():
            for key, value in values.items():
                assert b["metrics"][task][key] == pytest.approx(value, abs=1e-6), (a["key"], task, key)
    times = jobs["stage_times"]
    assert all(not t["reused"] for t in times.values())
    # both fine-tunes wait for the pre-training, then run at the same time
    fts = [n for n in times if n.startswith("pretrain__ft_")]
    assert len(fts) == 2 and all(times[n]["start"] >= times["pretrain"]["end"] for n in fts)
    assert times[fts[0]]["start"] < times[fts[1]]["end"] and times[fts[1]]["start"] < times[fts[0]]["end"]
    assert (tmp_path / "jobs" / "strategies_tiny" / "results.md").is_file()
