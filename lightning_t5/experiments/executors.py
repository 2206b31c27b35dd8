"""Where an experiment's stages run: in this process one after another (`local`), or as submitit jobs on SLURM
(`submitit`) or as local subprocesses (`submitit_local`, submitit's local executor: the same code path as SLURM,
testable on one machine).

A stage waits for every stage it reads (`Stage.dependencies()`: its starting checkpoint, a reference model, the
stage whose weights file sets its mixing weights). A stage that trains nothing (`Stage.compute`: a search's sampling
or regression) is done by the runner's `prepare` in this process and never submitted.

`experiment_options.executor: local | submitit | submitit_local` (default local: the sequential loop the runner has
always had). With a submitit executor a stage is submitted as soon as the stage it starts from has finished, so
independent stages run concurrently (e.g. every fine-tune after one pre-training, or all multi-task rows at once).
`experiment_options.cluster` sets the job resources:

    cluster: {partition: gpu, gpus_per_node: 8, nodes: 1, timeout_min: 1440, cpus_per_task: 8, mem_gb: 200,
              slurm_additional_parameters: {...}}

`gpus_per_node`/`nodes` also become the stage's `trainer.devices`/`trainer.num_nodes` (one SLURM task per GPU, which
Lightning's SLURM environment expects). Stage reuse and resume are the runner's (a finished stage is never
submitted; an interrupted one restarts with `resume=auto`), so re-running the same command after a crash or a job
timeout continues the experiment. Each stage's start and end times are recorded (`results.json` "stage_times").

Reruns while jobs run: each submitted job's id is recorded in the experiment folder
(`orchestrator/<stage>.job.json`, `lightning_t5.experiments.orchestration.JobRecords`); a rerun attaches to a job
that is still queued or running instead of submitting its stage again, and waits for it like for its own. (The
runner also refuses a second live orchestrator on the same stages: `orchestration.stage_locks`.)

How many stages run at once (`experiment_options.max_parallel_stages`, `machine_capacity`): null means what the
machine can run. With `submitit_local` that is one stage per CPU core (each stage then gets cores / stages torch
threads), or, when `cluster.gpus_per_node` is set, one stage per group of `gpus_per_node` GPUs, each stage on its own
GPUs (submitit's local executor would otherwise give every job the first ones). With `submitit` (SLURM) there is no
cap: the scheduler queues the jobs. A positive number overrides it (on GPUs stages then share the groups).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from lightning_t5.dist.liveness import pid_alive

from .orchestration import JobRecords
from .plan import ExperimentConfigError, Stage

__all__ = ["EXECUTORS", "Capacity", "StageWork", "SubmititJobs", "check_executor_options", "check_max_parallel",
           "machine_capacity", "run_stages"]

log = logging.getLogger(__name__)

EXECUTORS = ("local", "submitit", "submitit_local")
_POLL_S = 1.0
# experiment_options.cluster keys with the same name in submitit's AutoExecutor; `partition` maps to slurm_partition,
# `slurm_*` keys pass through.
_GENERIC = ("gpus_per_node", "nodes", "timeout_min", "cpus_per_task", "mem_gb", "tasks_per_node", "name")


class StageWork:
    """What the runner decided for one stage: reuse a finished result, or run `cfg` and hand the result to
    `finish` (which validates it and returns what dependants read, e.g. the checkpoint path)."""

    def __init__(self, done: Mapping[str, Any] | None = None, cfg: DictConfig | None = None,
                 finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.done, self.cfg, self.finish = done, cfg, finish


def check_executor_options(block: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(`executor`, `cluster`) of an experiment block, validated (ExperimentConfigError naming the key)."""
    executor = str(block.get("executor") or "local")
    if executor not in EXECUTORS:
        raise ExperimentConfigError(f"experiment_options.executor={executor!r} is not valid; choose one of: "
                                    f"{', '.join(EXECUTORS)}.")
    if executor != "local" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise ExperimentConfigError(f"experiment_options.executor={executor} submits one job per stage and must run in "
                                    f"a single process (the jobs start their own ranks); do not launch it with "
                                    f"torchrun/srun over several processes.")
    cluster = {k: v for k, v in dict(block.get("cluster") or {}).items() if v is not None}  # null: not set
    unknown = sorted(k for k in cluster if k not in (*_GENERIC, "partition") and not k.startswith("slurm_"))
    if unknown:
        raise ExperimentConfigError(f"unknown experiment_options.cluster key(s) {', '.join(unknown)}; valid: "
                                    f"{', '.join((*_GENERIC, 'partition'))} and slurm_* (submitit's SLURM options).")
    if cluster and executor == "local":
        raise ExperimentConfigError("experiment_options.cluster is set but experiment_options.executor=local runs "
                                    "stages in this process; use executor=submitit (SLURM) or submitit_local.")
    return executor, cluster


def _call_stage(fit_fn: Callable[[DictConfig], Mapping[str, Any]], cfg: DictConfig,
                setup: Callable[[], None] | None, threads: int | None = None) -> dict[str, Any]:
    """The job body (runs in the submitit process): its share of the CPU threads, the experiment's mixtures, then
    train the stage."""
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)  # also for processes the stage starts
        torch.set_num_threads(threads)
    if setup is not None:
        setup()
    return dict(fit_fn(cfg))


def _exception_line(err: BaseException) -> str:
    """The `SomeError: message` line of a failed job's remote traceback (submitit wraps it in FailedJobError)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    matches = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b.*", ln)]
    return matches[-1] if matches else (lines[-1] if lines else type(err).__name__)


def _with_resources(cfg: DictConfig, cluster: Mapping[str, Any]) -> DictConfig:
    if "gpus_per_node" not in cluster and "nodes" not in cluster:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        if "gpus_per_node" in cluster:
            cfg.trainer.devices = int(cluster["gpus_per_node"])
            cfg.trainer.accelerator = "gpu" if int(cluster["gpus_per_node"]) > 0 else cfg.trainer.accelerator
        if "nodes" in cluster:
            cfg.trainer.num_nodes = int(cluster["nodes"])
    return cfg


def _submitit_executor(kind: str, folder: Path, cluster: Mapping[str, Any]) -> Any:
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster="local" if kind == "submitit_local" else "slurm")
    params: dict[str, Any] = {}
    for key, value in cluster.items():
        params["slurm_partition" if key == "partition" else key] = value
    if "gpus_per_node" in cluster and "tasks_per_node" not in cluster:
        params["tasks_per_node"] = int(cluster["gpus_per_node"]) or 1  # one task per GPU (Lightning on SLURM)
    params.setdefault("timeout_min", 24 * 60)
    executor.update_parameters(**params)
    return executor


# SLURM states of a job that has not ended yet (anything else: ended, or unknown to the scheduler).
_SLURM_LIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
               "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT")


class _ReattachedLocalJob:
    """A `submitit_local` job started by an earlier orchestrator: not this process's child, so submitit's LocalJob
    cannot poll it. It runs while its process (job id = pid) does; its result is read from the job folder."""

    def __init__(self, folder: Path, job_id: str) -> None:
        from submitit.local.local import LocalJob

        self.job_id = job_id
        self._job = LocalJob(folder=folder, job_id=job_id)
        self.paths = self._job.paths

    def done(self) -> bool:
        return self.paths.result_pickle.exists() or not pid_alive(int(self.job_id))

    def result(self) -> Any:
        return self._job.result()


class SubmititJobs:
    """submitit's AutoExecutor plus what reruns and one machine need: submit a job on given GPUs, and attach to a
    job by its id (`attach`: the job if it is still queued or running, else None)."""

    def __init__(self, kind: str, folder: Path, cluster: Mapping[str, Any]) -> None:
        self.kind, self.folder = kind, Path(folder)
        self.executor = _submitit_executor(kind, self.folder, cluster)

    def submit(self, fn: Callable[..., Any], *args: Any, gpus: Sequence[int] | None = None) -> Any:
        if gpus is not None:  # submitit_local: CUDA_VISIBLE_DEVICES of this job
            self.executor.update_parameters(local_visible_gpus=list(gpus))
        return self.executor.submit(fn, *args)

    def attach(self, job_id: str) -> Any | None:
        if self.kind == "submitit":
            import submitit

            job = submitit.SlurmJob(folder=self.folder, job_id=str(job_id))
            return job if str(job.state).split()[0] in _SLURM_LIVE else None
        if not str(job_id).isdigit() or not pid_alive(int(job_id)):
            return None
        try:  # the pid may have been reused by another program since
            if "submitit" not in Path(f"/proc/{job_id}/cmdline").read_text():
                return None
        except OSError:
            pass
        job = _ReattachedLocalJob(self.folder, str(job_id))
        return None if job.done() else job


def check_max_parallel(block: Mapping[str, Any]) -> int | None:
    """`experiment_options.max_parallel_stages`: null (what the machine can run, `machine_capacity`) or a positive
    number of stages running at once."""
    value = block.get("max_parallel_stages")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExperimentConfigError(f"experiment_options.max_parallel_stages={value!r} must be a positive integer or "
                                    "null (what the machine can run).")
    return int(value)


@dataclass(frozen=True)
class Capacity:
    """How many stages run at once, and what each gets: `gpu_slots`, the GPU groups stages are spread over
    (`submitit_local` on GPUs); `threads`, torch threads per stage (`submitit_local` on CPU)."""

    max_parallel: int | None
    gpu_slots: tuple[tuple[int, ...], ...] = ()
    threads: int | None = None


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _visible_gpus() -> list[int]:
    """The GPU indices jobs may be given: CUDA_VISIBLE_DEVICES when it lists indices, else every device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(v.strip().isdigit() for v in visible.split(",") if v.strip()):
        return [int(v) for v in visible.split(",") if v.strip()]
    import torch

    return list(range(torch.cuda.device_count()))


def machine_capacity(executor: str, cluster: Mapping[str, Any], max_parallel: int | None) -> Capacity:
    """What `max_parallel` (experiment_options.max_parallel_stages; null: what the machine can run) means for
    `executor`; see the module docstring."""
    if executor != "submitit_local":
        return Capacity(max_parallel)
    per_stage = int(cluster.get("gpus_per_node") or 0)
    if per_stage > 0:
        gpus = _visible_gpus()
        slots = tuple(tuple(gpus[i:i + per_stage]) for i in range(0, len(gpus) - per_stage + 1, per_stage))
        if not slots:
            raise ExperimentConfigError(f"experiment_options.cluster.gpus_per_node={per_stage} but this machine has "
                                        f"{len(gpus)} visible GPU(s) for executor=submitit_local.")
        return Capacity(max_parallel or len(slots), gpu_slots=slots)
    cores = _cpu_cores()
    stages = max_parallel or cores
    return Capacity(stages, threads=max(1, cores // stages))


def run_stages(stages: Sequence[Stage], prepare: Callable[[Stage, Mapping[str, dict[str, Any]]], StageWork],
               fit_fn: Callable[[DictConfig], Mapping[str, Any]], *, executor: str = "local",
               cluster: Mapping[str, Any] | None = None, folder: Path | None = None,
               setup: Callable[[], None] | None = None, max_parallel: int | None = None,
               records: JobRecords | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, dict]]:
    """Run `stages` (plan order; a stage depends on its `init_stage`) and return (results by stage name,
    stage_times: {stage: {"start", "end" (unix seconds), "reused"}}). With a submitit executor, `max_parallel` caps the
    jobs running at once (null: what the machine can run, `machine_capacity`) and `records` keeps each stage's job id
    for a rerun to attach to; the local executor runs one stage at a time."""
    if executor == "local":
        return _run_local(stages, prepare, fit_fn)
    if folder is None:
        raise ValueError("a submitit executor needs a folder for its job files")
    cluster = cluster or {}
    capacity = machine_capacity(executor, cluster, max_parallel)
    return _run_submitit(stages, prepare, fit_fn, SubmititJobs(executor, folder, cluster), cluster, setup, capacity,
                         records)


def _run_local(stages: Sequence[Stage], prepare: Callable[..., StageWork], fit_fn: Callable[..., Any]
               ) -> tuple[dict[str, dict[str, Any]], dict[str, dict]]:
    results: dict[str, dict[str, Any]] = {}
    times: dict[str, dict] = {}
    for stage in stages:
        work = prepare(stage, results)
        if work.done is not None:
            results[stage.name] = dict(work.done)
            times[stage.name] = {"reused": True}
            continue
        start = time.time()
        result = dict(fit_fn(work.cfg))
        times[stage.name] = {"start": start, "end": time.time(), "reused": False}
        results[stage.name] = work.finish(result) if work.finish else result
    return results, times


def _free_slot(capacity: Capacity, running: Mapping[str, tuple[Any, StageWork, Any]]) -> tuple[int, ...] | None:
    """The GPU group with the fewest running stages (None when stages are not placed on GPUs)."""
    if not capacity.gpu_slots:
        return None
    used = [sum(1 for _, _, slot in running.values() if slot is not None and tuple(slot) == s)
            for s in capacity.gpu_slots]
    return capacity.gpu_slots[used.index(min(used))]


def _ready(stage: Stage, results: Mapping[str, Any]) -> bool:
    """Every stage this one reads (its starting point, a reference checkpoint, a weights file) has finished."""
    return all(dep in results for dep in stage.dependencies())


def _run_submitit(stages: Sequence[Stage], prepare: Callable[..., StageWork], fit_fn: Callable[..., Any],
                  jobs: Any, cluster: Mapping[str, Any], setup: Callable[[], None] | None,
                  capacity: Capacity | int | None = None, records: JobRecords | None = None,
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, dict]]:
    """The submitit loop. `jobs` submits (`submit(fn, *args, gpus=None)`) and attaches (`attach(job_id)`) jobs:
    `SubmititJobs`, or a fake in tests."""
    if not isinstance(capacity, Capacity):
        capacity = Capacity(capacity)
    kind = getattr(jobs, "kind", "submitit")
    results: dict[str, dict[str, Any]] = {}
    times: dict[str, dict] = {}
    pending = list(stages)
    running: dict[str, tuple[Any, StageWork, Any]] = {}
    error: BaseException | None = None
    while pending or running:
        if error is None:  # submit every stage whose starting point is finished
            for stage in [s for s in pending if _ready(s, results)]:
                if capacity.max_parallel is not None and len(running) >= capacity.max_parallel:
                    break
                pending.remove(stage)
                work = prepare(stage, results)
                if work.done is not None:
                    results[stage.name] = dict(work.done)
                    times[stage.name] = {"reused": True}
                    continue
                recorded = records.get(stage.name) if records is not None else None
                job = jobs.attach(recorded["job_id"]) if recorded and recorded.get("executor") == kind else None
                if job is not None:  # submitted by an earlier orchestrator and still running: wait for it
                    slot = tuple(recorded.get("gpus") or ()) or None
                    times[stage.name] = {"start": float(recorded.get("submitted") or time.time()), "reused": False,
                                         "job_id": str(job.job_id), "reattached": True}
                    print(f"[experiment] stage {stage.name}: job {job.job_id} (submitted earlier) is still running; "
                          f"waiting for it", flush=True)
                else:
                    slot = _free_slot(capacity, running)
                    job = jobs.submit(_call_stage, fit_fn, _with_resources(work.cfg, cluster), setup,
                                      capacity.threads, gpus=slot)
                    if records is not None:
                        records.record(stage.name, str(job.job_id), kind, slot)
                    times[stage.name] = {"start": time.time(), "reused": False, "job_id": str(job.job_id)}
                    log.info("stage %s submitted as job %s", stage.name, job.job_id)
                    print(f"[experiment] stage {stage.name}: submitted (job {job.job_id}"
                          f"{f', GPUs {list(slot)}' if slot else ''})", flush=True)
                running[stage.name] = (job, work, slot)
        elif not running:
            break
        if error is None and pending and not running and not any(_ready(s, results) for s in pending):
            raise ExperimentConfigError(f"stages {[s.name for s in pending]} wait for stages that never run")
        for name, (job, work, _) in list(running.items()):
            if not job.done():
                continue
            del running[name]
            try:
                result = dict(job.result())
            except Exception as err:  # noqa: BLE001 - reported after the running jobs end
                log.error("stage %s (job %s) failed: %s", name, job.job_id, err)
                error = error or RuntimeError(f"stage {name!r} failed in job {job.job_id} ({_exception_line(err)}; "
                                              f"log: {job.paths.stderr}). Run the same command again: finished "
                                              f"stages are reused and interrupted ones resume.")
                continue
            times[name]["end"] = time.time()
            try:
                results[name] = work.finish(result) if work.finish else result
            except Exception as err:  # noqa: BLE001 - e.g. an interrupted stage
                error = error or err
        if running:
            time.sleep(_POLL_S)
    if error is not None:
        raise error
    return results, times
