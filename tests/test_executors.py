"""Experiment stages through an executor: local (in order) and submitit (jobs; its local executor here), with
dependent stages waiting for their starting point and independent ones running concurrently."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

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

    def submit(self, fn, *args):
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
                                cluster={"timeout_min": 5}, folder=tmp_path / "jobs")
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
