"""Run an experiment's stages with `lightning_t5.train.fit.fit`, reusing finished work, and write the results.

Reuse rules (so an experiment can be interrupted, extended or re-run at no extra cost):

* A stage whose folder holds a complete `metrics.json` (written by `fit` when the run has finished: it has a
  checkpoint, at least the planned steps and a score for every task the stage evaluates) is not trained again.
* A stage without one is (re)started with `resume="auto"`, so `fit` continues from the stage folder's last
  checkpoint when a previous attempt was interrupted, instead of starting over.
* Each stage folder records its `stage.json` (spec + fingerprint of everything that determines its weights,
  including the stage it starts from). If the config changed since (other steps, model, mixture...), the runner
  stops with an error instead of mixing stale and new checkpoints.

* A stage may read what earlier stages produced, resolved when it starts: a checkpoint into a run-config key
  (`Stage.checkpoint_inputs`, e.g. DoReMi's `doremi.reference`) and mixing weights from a stage's `weights.json`
  (`Stage.weights_from`, `resolve_stage`); the weights are part of its spec and fingerprint, as are the fingerprints
  of the stages it reads, so other weights or another reference mean a mismatch, never a silent reuse.
* A compute stage (`Stage.compute`: a search's sampling or regression) trains nothing: the runner runs its function
  in this process once the stages in `Stage.after` have finished, and its `result.json` marks it finished.

The experiment folder is `<output_dir>/<experiment_options.run_name or experiment name>/` with `stages/<stage>/`
(one `fit` run each), `plan.json`, `results.{md,csv,json,png}`, `mixing_shares.png` (the weights over training of
every row evaluated by one multi-task model, from its stage's `mixing.json`) and `orchestrator/` (the stage locks of
the running orchestrator and the job ids of submitted stages: `lightning_t5.experiments.orchestration`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_t5.errors import ConfigError

from lightning_t5.eval.evaluation import write_json

from .executors import StageWork, check_executor_options, check_max_parallel, run_stages
from .orchestration import ORCHESTRATOR_DIR, JobRecords, stage_locks
from lightning_t5.train.experiment_options import ExperimentOptions
from lightning_t5.train.mixing_weights import read_weights
from .plan import (ComputeContext, ExperimentConfigError, ExperimentPlan, Stage, compute_function, experiment_block,
                   fingerprint, make_plan, weights_source)
from .results import SHARES_PLOT, build_results, plot_row_shares, row_shares, write_results

log = logging.getLogger(__name__)

FitFn = Callable[[DictConfig], Mapping[str, Any]]

# Keys of the base config that determine a stage's weights besides the stage spec itself.
_CONTEXT_KEYS = ("seed", "model", "data", "optim", "imports")


class StageMismatchError(ConfigError):
    """A stage folder holds a run made with different settings than the current plan (reported by `train.py` as a
    configuration error: the fix is a new `experiment_options.run_name` or deleting the stage folder)."""


# ---------------------------------------------------------------------------------------------------------------
def experiment_dir(cfg: DictConfig, plan: ExperimentPlan) -> Path:
    block = experiment_block(cfg)
    out = cfg.get("output_dir") or "runs"
    return Path(str(out)) / str(block.get("run_name") or plan.name)


def read_finished(run_dir: Path, stage: Stage) -> dict[str, Any] | None:
    """The stage's `metrics.json` if the run finished, else None (missing, unreadable, or incomplete); for a
    compute stage its `result.json`."""
    if stage.compute:
        try:
            done = json.loads((run_dir / COMPUTE_RESULT).read_text())
        except (OSError, ValueError):
            return None
        return done if isinstance(done, dict) else None
    path = run_dir / "metrics.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or not result.get("checkpoint"):
        return None
    if int(result.get("steps") or 0) < stage.steps:
        return None
    metrics = result.get("metrics") or {}
    if any(t not in metrics for t in stage.eval_tasks):
        return None
    return result


def stage_config(cfg: DictConfig, stage: Stage, run_dir: Path, init_from: str | None,
                 inputs: Mapping[str, Any] | None = None) -> DictConfig:
    """The run configuration of one stage: a copy of the experiment's config with the stage's own overrides,
    mixture, mixing, steps, starting weights, folder and evaluation set, `inputs` (run-config key -> value, e.g.
    `doremi.reference` -> the reference stage's checkpoint) and `resume="auto"` so an interrupted stage continues."""
    c = copy.deepcopy(cfg)
    if stage.overrides:
        merged = OmegaConf.merge(c, dict(stage.overrides))
        assert isinstance(merged, DictConfig)
        c = merged
    with open_dict(c):
        for key, value in (inputs or {}).items():
            OmegaConf.update(c, key, value, force_add=True)
        c.experiment = None
        c.experiment_options = OmegaConf.structured(ExperimentOptions)
        c.mixture = stage.mixture
        if stage.mixing:
            c.mixing = OmegaConf.merge(c.get("mixing") or {}, dict(stage.mixing))
        c.optim = OmegaConf.merge(c.get("optim") or {}, dict(stage.optim))
        if "total_steps" in c.optim and "total_steps" not in stage.optim:
            c.optim.total_steps = None  # each stage's schedule spans its own steps
        c.trainer.max_steps = stage.steps
        c.data.granularity = stage.granularity
        c.eval.tasks = list(stage.eval_tasks)
        if not stage.eval_tasks and c.eval.get("max_examples", 1) != 1:
            # An intermediate checkpoint is not scored. `eval.tasks: []` says so; if the training engine treats an
            # empty list like null (the mixture's tasks), scoring one example per task keeps that cheap.
            c.eval.max_examples = 1
        if "before_training" in c.eval:
            c.eval.before_training = False  # the experiment compares final models only
        c.init_from = init_from
        c.resume = "auto"
        c.export_hf = None
        c.run_name = f"{stage.name}"
        c.run_dir = str(run_dir)
        if stage.seed is not None:
            c.seed = stage.seed  # experiment_options.seeds: changes the initialisation and the data order
    return c


COMPUTE_RESULT = "result.json"


def resolve_stage(stage: Stage, plan: ExperimentPlan, out: Path) -> Stage:
    """`stage` with what it reads from earlier stages filled in: `weights_from` becomes `mixing.weights` (rate
    explicit) from the producing stage's weights.json, so the fingerprint, `stage.json` and the run see the weights.
    Call it once the producing stage has finished (ConfigError naming the file otherwise)."""
    if not stage.weights_from:
        return stage
    source, key = weights_source(stage.weights_from)
    weights = read_weights(out / plan.stage(source).run_dir, key)
    mixing = {k: v for k, v in dict(stage.mixing).items() if k not in ("max_examples", "temperature")}
    return dataclasses.replace(stage, mixing={**mixing, "rate": "explicit", "weights": weights})


def _input_fingerprints(stage: Stage, fps: Mapping[str, str]) -> dict[str, str]:
    """Fingerprints of the stages `stage` reads besides its starting point (reference, weights, compute inputs)."""
    return {dep: fps[dep] for dep in stage.dependencies() if dep != stage.init_stage and dep in fps}


def _context(cfg: DictConfig) -> dict[str, Any]:
    out = {}
    for key in _CONTEXT_KEYS:
        if key in cfg:
            value = cfg.get(key)
            out[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    return out


def task_benchmarks(tasks: list[str]) -> dict[str, str | None]:
    """task -> benchmark ("glue", "super_glue" or None), from the task registry when it knows the task."""
    out: dict[str, str | None] = {}
    try:
        from tasks import TaskRegistry
    except ImportError:  # pragma: no cover - tasks is a hard dependency of the project
        TaskRegistry = None  # type: ignore[assignment]
    for t in tasks:
        bench = None
        if TaskRegistry is not None:
            try:
                bench = getattr(TaskRegistry.get(t), "benchmark", None)
            except Exception:  # unknown task in fake/offline use: fall back to the naming convention
                bench = None
        if bench is None:
            bench = "super_glue" if t.startswith("super_glue_") else "glue" if t.startswith("glue_") else None
        out[t] = bench
    return out


def _metric_fns(tasks: list[str]) -> dict[str, list[Any]]:
    """task -> its metric functions (for intervals and paired tests); tasks the registry does not know are left
    out, so their rows get no intervals instead of failing the table."""
    from tasks import TaskRegistry

    out = {}
    for t in tasks:
        try:
            out[t] = list(TaskRegistry.get(t).metric_fns)
        except Exception:  # unknown task in fake/offline use
            continue
    return out


def register_mixtures(plan: ExperimentPlan) -> None:
    """Register the experiment's own mixtures (single tasks, all tasks + corpus, leave-one-out, supervised only)
    so that each stage's `mixture` name resolves in `fit`; idempotent."""
    from mixtures import MixtureRegistry

    for name, members in plan.mixtures.items():
        MixtureRegistry.add(name, list(members), replace=True)


def import_user_modules(cfg: DictConfig) -> None:
    modules = list(cfg.get("imports") or [])
    if modules:
        import tasks

        tasks.import_modules(modules)


def _is_rank_zero() -> bool:
    """Under a multi-process launch (torchrun, Lightning's ddp re-launching the script) every process runs the
    runner and walks the same stages in lock step (each `fit` is collective); only rank 0 writes files."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def _spec_fingerprint(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "stage.json").read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _check_or_write_spec(run_dir: Path, stage: Stage, fp: str, init_from: str | None) -> None:
    spec_path = run_dir / "stage.json"
    if spec_path.exists():
        try:
            old = json.loads(spec_path.read_text())
        except ValueError:
            old = {}
        if old.get("fingerprint") not in (None, fp):
            changed = sorted(k for k, v in stage.spec().items() if old.get("spec", {}).get(k) != v and k != "run_dir")
            raise StageMismatchError(
                f"stage {stage.name!r} in {run_dir} was run with different settings (changed: "
                f"{', '.join(changed) or 'model/data/optim/seed or an earlier stage'}). Use a new "
                "experiment_options.run_name for the new settings, or delete that stage folder to retrain it."
            )
    if not _is_rank_zero():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = spec_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"fingerprint": fp, "spec": stage.spec(), "init_from": init_from}, indent=2,
                              allow_nan=False))
    os.replace(tmp, spec_path)


def apply_overrides(cfg: DictConfig) -> DictConfig:
    """`cfg` with `experiment_options.overrides` merged on top.

    Why: an experiment file is merged into the primary config with Hydra's `_global_` package, but keys that
    `configs/config.yaml` sets itself (data, eval, mixing, ...) may win over it depending on where `_self_` sits
    in the defaults list. Overrides kept inside the experiment's own block always apply, and the merge keeps the
    structured schema's validation (an unknown key is still an error).
    """
    overrides = experiment_block(cfg).get("overrides") or {}
    if not overrides:
        return cfg
    merged = OmegaConf.merge(cfg, overrides)
    assert isinstance(merged, DictConfig)
    return merged


def _add_mixing_rates(table: dict[str, Any], plan: ExperimentPlan, resolved: Mapping[str, Stage] | None = None,
                      results: Mapping[str, Mapping[str, Any]] | None = None,
                      sequence_length: Mapping[str, int] | None = None) -> None:
    """Each multi-task row's share of training examples per task: the planned shares its stage recorded in
    `metrics.json` (`mixtures.shares.task_shares` at the run's own lengths, the numbers the run drew by); for a stage
    without that record, the rates at the experiment's sequence lengths. `resolved`: stages whose weights were read
    from a file, with those weights."""
    from mixtures import MixingConfig, MixtureRegistry

    plan_rows = {r.key: r for r in plan.rows}
    for row in table["rows"]:
        if row.get("status") == "not run":
            continue
        names = set(plan_rows[row["key"]].eval_stage.values())
        if len(names) != 1:
            continue
        name = names.pop()
        stage = (resolved or {}).get(name) or plan.stage(name)
        if stage.role != "multitask":
            continue
        recorded = (((results or {}).get(stage.name) or {}).get("shares") or {}).get("planned", {}).get("examples")
        if recorded:
            row["mixing_rates"] = {k: float(v) for k, v in recorded.items()}
            continue
        try:
            mix = MixtureRegistry.get(stage.mixture)
            mixing = MixingConfig.from_dict(dict(stage.mixing))
            row["mixing_rates"] = {k: float(v) for k, v in mix.rates(mixing=mixing,
                                                                     sequence_length=sequence_length).items()}
        except Exception as err:  # rates are informative only; never fail the results over them
            log.warning("could not compute the mixing rates of %s: %s", stage.name, err)


def _run_compute(stage: Stage, plan: ExperimentPlan, cfg: DictConfig, results: Mapping[str, dict[str, Any]],
                 out: Path, run_dir: Path, rank_zero: bool) -> dict[str, Any]:
    """Run a compute stage here (it trains nothing: sampling a search's mixtures, fitting its regressor) and record
    its result (`result.json`, written last: its presence marks the stage finished)."""
    print(f"[experiment {plan.name}] stage {stage.name}: {stage.compute}", flush=True)
    t0 = time.time()
    ctx = ComputeContext(stage=stage, plan=plan, cfg=cfg, results=results, experiment_dir=out, run_dir=run_dir)
    result = dict(compute_function(str(stage.compute))(ctx))
    result.update({"run_dir": str(run_dir), "steps": 0, "tokens": 0, "wall_time_s": round(time.time() - t0, 3),
                   "computed_at": [t0, time.time()]})
    if rank_zero:
        write_json(run_dir / COMPUTE_RESULT, result)
    if result.get("summary"):
        print(f"[experiment {plan.name}] stage {stage.name}: {result['summary']}", flush=True)
    return result


def run_experiment(cfg: DictConfig, fit_fn: FitFn | None = None, *, register: bool | None = None) -> dict[str, Any]:
    """Plan the experiment in `cfg`, run every stage not finished yet, and write the results table + plot.

    `fit_fn` defaults to `lightning_t5.train.fit.fit`; tests inject a fake. The experiment's mixtures are registered
    in `mixtures.MixtureRegistry` when `register` is true (default: only with the real `fit`; pass True for a
    custom `fit_fn` that trains for real). Returns the results dict (also written as results.json), with "files"
    naming the written tables.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    cfg = apply_overrides(cfg)
    import_user_modules(cfg)
    plan = make_plan(cfg)
    out = experiment_dir(cfg, plan)
    rank_zero = _is_rank_zero()
    if rank_zero:
        out.mkdir(parents=True, exist_ok=True)
    if register is None:
        register = fit_fn is None
    if fit_fn is None:
        from lightning_t5.train.fit import fit as fit_fn  # noqa: N813 - imported lazily: heavy
    if register:
        register_mixtures(plan)
    if rank_zero:
        (out / "plan.json").write_text(json.dumps(
            {"name": plan.name, "kind": plan.kind, "seeds": list(plan.seeds) or None,
             "stages": [s.spec() for s in plan.stages],
             "rows": [{"key": r.key, "label": r.label, "eval_stage": dict(r.eval_stage),
                       "eval_stages": [{"seed": seed, "eval_stage": dict(m)} for seed, m in r.eval_stages()],
                       "stages": list(r.stages)} for r in plan.rows],
             "mixtures": {k: list(v) for k, v in plan.mixtures.items()}}, indent=2, allow_nan=False))

    context = _context(cfg)
    fps: dict[str, str] = {}
    resolved: dict[str, Stage] = {}
    started = time.time()
    index = {stage.name: i for i, stage in enumerate(plan.stages, 1)}

    def checkpoint_of(dep: str, stage: Stage, results: Mapping[str, dict[str, Any]]) -> str:
        path = results[dep].get("checkpoint")
        if not path:
            raise ExperimentConfigError(f"stage {dep!r} returned no checkpoint for {stage.name!r} to read (fit must "
                                        "return a 'checkpoint' path)")
        return str(path)

    def prepare(stage: Stage, results: Mapping[str, dict[str, Any]]) -> StageWork:
        i = index[stage.name]
        run_dir = out / stage.run_dir
        stage = resolved.setdefault(stage.name, resolve_stage(stage, plan, out))
        fp = fingerprint(stage, fps.get(stage.init_stage) if stage.init_stage else None, context,
                         _input_fingerprints(stage, fps))
        fps[stage.name] = fp
        init_from = checkpoint_of(stage.init_stage, stage, results) if stage.init_stage else stage.init_checkpoint
        inputs = {key: checkpoint_of(dep, stage, results) for key, dep in stage.checkpoint_inputs.items()}
        _check_or_write_spec(run_dir, stage, fp, init_from)
        done = read_finished(run_dir, stage)
        if done is not None:
            log.info("[%d/%d] stage %s: finished earlier, reusing %s", i, len(plan.stages), stage.name, run_dir)
            return StageWork(done=done)
        if stage.compute:
            return StageWork(done=_run_compute(stage, plan, cfg, results, out, run_dir, rank_zero))
        log.info("[%d/%d] stage %s: %s, %d steps, from %s", i, len(plan.stages), stage.name, stage.mixture,
                 stage.steps, init_from or "scratch")
        print(f"[experiment {plan.name}] stage {i}/{len(plan.stages)}: {stage.name} ({stage.steps} steps on "
              f"{'+'.join(stage.tasks)}, from {stage.init_stage or init_from or 'scratch'})", flush=True)
        t0 = time.time()

        def finish(result: dict[str, Any]) -> dict[str, Any]:
            result.setdefault("wall_time_s", time.time() - t0)
            if int(result.get("steps") or 0) < stage.steps:
                # fit returns (and may even write metrics.json) after an interrupted run; never build on it
                raise RuntimeError(
                    f"stage {stage.name!r} stopped at step {result.get('steps')} of {stage.steps} (interrupted?). "
                    "Run the same command again: finished stages are reused and this one resumes from its last "
                    "checkpoint.")
            metrics_path = run_dir / "metrics.json"
            if rank_zero and not metrics_path.exists():  # fit writes it; keep reuse working if a fit does not
                write_json(metrics_path, result)
            return result

        return StageWork(cfg=stage_config(cfg, stage, run_dir, init_from, inputs), finish=finish)

    executor, cluster = check_executor_options(experiment_block(cfg))
    # this invocation's stages are its own while it runs (a second live orchestrator on them stops), and submitted
    # jobs are recorded for a rerun to attach to (lightning_t5.experiments.orchestration)
    owned = stage_locks(out / ORCHESTRATOR_DIR, [s.name for s in plan.stages]) if rank_zero else nullcontext()
    with owned:
        results, stage_times = run_stages(
            plan.stages, prepare, fit_fn, executor=executor, cluster=cluster, folder=out / "submitit",
            setup=(lambda: register_mixtures(plan)) if register else None,
            max_parallel=check_max_parallel(experiment_block(cfg)),
            records=JobRecords(out / ORCHESTRATOR_DIR) if rank_zero else None)

    # Rows not selected in this invocation (experiment_options.rows) still appear with whatever earlier runs of
    # the same experiment folder finished, so the last job of a split sweep writes the whole table.
    full = make_plan(cfg, select_rows=False)
    for stage in full.stages:
        if stage.name not in results:
            if any(dep not in results for dep in stage.dependencies()):
                continue  # what it reads is not there: it cannot have finished with these settings
            try:
                stage = resolved.setdefault(stage.name, resolve_stage(stage, full, out))
            except ConfigError:
                continue  # its weights file was never written
            fp = fingerprint(stage, fps.get(stage.init_stage) if stage.init_stage else None, context,
                             _input_fingerprints(stage, fps))
            fps[stage.name] = fp
            run_dir = out / stage.run_dir
            if _spec_fingerprint(run_dir) == fp:
                done = read_finished(run_dir, stage)
                if done is not None:
                    results[stage.name] = done
    table = build_results(full, results, benchmarks=task_benchmarks(list(plan.tasks)),
                          include_paper=bool(experiment_block(cfg).get("paper", True)),
                          metric_fns=_metric_fns(list(plan.tasks)))
    if register:
        seq = OmegaConf.select(cfg, "data.sequence_length")
        _add_mixing_rates(table, full, resolved, results,
                          {k: int(v) for k, v in seq.items()} if seq is not None else None)
    table["compute_stages"] = {s.name: results[s.name].get("summary") for s in full.stages
                               if s.compute and s.name in results}  # e.g. the search's regressor and its choice
    table["stage_weights"] = {name: dict(st.mixing.get("weights") or {}) for name, st in resolved.items()
                              if st.weights_from}  # weights read from an earlier stage's weights.json
    table["wall_time_s_this_invocation"] = round(time.time() - started, 3)
    for name, times in stage_times.items():  # a compute stage run now was done by `prepare`, not reused
        at = (results.get(name) or {}).get("computed_at")
        if at and times.get("reused") and at[0] >= started:
            stage_times[name] = {"start": at[0], "end": at[1], "reused": False}
    table["stage_times"] = stage_times  # start/end (unix s) of the stages run now; reused ones are marked
    shares = row_shares(full, results, out)  # each multi-task row's weights over training, from its mixing.json
    table["weights_over_training"] = {k: {key: v[key] for key in ("label", "stage", "adaptive", "stages")}
                                      for k, v in shares.items()}
    if rank_zero:
        table["files"] = {k: str(v) for k, v in write_results(table, out).items()}
        plotted = plot_row_shares(shares, out / SHARES_PLOT, f"{plan.name}: task shares over training, per row")
        if plotted is not None:
            table["files"]["shares_png"] = str(plotted)
        print(f"[experiment {plan.name}] results in {out}/results.md", flush=True)
    return table
