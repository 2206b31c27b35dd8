"""The one entry point: `python train.py [key=value ...]` (Hydra overrides over configs/config.yaml).

    python train.py                                   # the embedded default: tiny T5, `default` mixture, CPU
    python train.py model=small mixture=glue mixing.rate=temperature mixing.temperature=2 trainer.max_steps=1000
    python train.py resume=runs/<run>                 # continue a run exactly where its last checkpoint left it
    python train.py experiment=<name>                 # one of the T5 paper's comparisons (lightning_t5.experiments)
    python train.py imports=[my_tasks] mixture=my_mix  # or --imports my_tasks, anywhere: your own tasks/mixtures

All logic lives in lightning_t5.train.fit.fit / lightning_t5.experiments.run_experiment; this file only composes the
config and turns configuration errors into one readable paragraph and exit status 2.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lightning_t5.errors import ConfigError
from lightning_t5.train.schema import add_mapping_keys, check_overrides, register_schema
from tasks import TaskError, pop_imports

register_schema()
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def normalise_argv(argv: list[str]) -> list[str]:
    """`--imports M` / `imports=[...]` anywhere -> one Hydra `imports=[...]` override; misspelt keys and invalid
    choices stop here, before Hydra composes anything (its own message has no suggestion and no valid keys);
    `mixing.weights.<task>=W` becomes the `++` override Hydra needs for a new key."""
    modules, rest = pop_imports(argv)
    groups = [p.name for p in CONFIG_DIR.iterdir() if p.is_dir()]
    check_overrides(rest, groups=groups)
    return add_mapping_keys(rest) + ([f"imports=[{','.join(modules)}]"] if modules else [])


def sweep_score(cfg: DictConfig, result: dict) -> float | None:
    """The score a sweeper optimises (`tuning.objective`: a benchmark average or a task; `tuning.rank`: rank
    classification), by the function the mixing search scores its proxies with; None without `tuning.objective`."""
    objective = (cfg.get("tuning") or {}).get("objective")
    if not objective:
        return None
    from lightning_t5.experiments.runner import task_benchmarks
    from lightning_t5.experiments.search import proxy_score

    metrics = result.get("metrics") or {}
    score = proxy_score(metrics, task_benchmarks(list(metrics)), str(objective), bool(cfg.tuning.get("rank", False)))
    if score is None:
        raise ConfigError(f"tuning.objective={objective!r}: the run has no such score (its tasks: {sorted(metrics)})")
    return score


@hydra.main(version_base=None, config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from lightning_t5.errors import CheckpointError, RunInterrupted
    from lightning_t5.model.fused import FusedBackendError
    from mixtures import MixtureError
    from tasks.errors import TaskError

    hydra_cfg = HydraConfig.get()
    experiment = cfg.get("experiment") or hydra_cfg.runtime.choices.get("experiment")
    try:
        if experiment:
            from lightning_t5.experiments import run_experiment

            if not cfg.get("experiment"):
                cfg.experiment = experiment
            run_experiment(cfg)
        else:
            from lightning_t5.train.fit import fit

            return sweep_score(cfg, fit(cfg, overrides=list(hydra_cfg.overrides.task)))  # a sweeper's objective
    except (ConfigError, CheckpointError, FusedBackendError, MixtureError, TaskError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except RunInterrupted as stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one more Ctrl-C must not replace the resume line by a traceback
        if experiment:  # the runner resumes interrupted stages and reuses finished ones
            where = (f"resumable checkpoint saved to {stop.checkpoint}" if stop.saved else
                     f"the stage resumes from its last checkpoint, {stop.checkpoint}" if stop.checkpoint else
                     "the stage had no checkpoint yet and starts again")
            print(f"interrupted at step {stop.step} of stage {stop.run_dir}; {where}.\nResume with the same command: "
                  f"python train.py {' '.join(sys.argv[1:])}", file=sys.stderr)
        else:
            print(stop, file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    try:
        sys.argv[1:] = normalise_argv(sys.argv[1:])
    except (ConfigError, TaskError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()
