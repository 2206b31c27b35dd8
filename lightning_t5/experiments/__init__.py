"""The T5 paper's multi-task comparisons as one command each.

`python train.py experiment=strategies_tiny` (Table 12: pre-train + fine-tune vs. multi-task training vs.
multi-task pre-training, leave-one-out, supervised-only pre-training, MT-DNN style) and
`python train.py experiment=mixing_sweep_tiny` (Table 11: equal, examples-proportional with K, temperature T)
dispatch to `run_experiment(cfg)`. See docs/experiments.md for a walk-through.

* `plan` — pure stage planning (`plan_experiment(cfg) -> list[Stage]`, `make_plan(cfg) -> ExperimentPlan`).
* `runner` — runs the stages through `lightning_t5.train.fit.fit`, reusing finished ones, resuming interrupted ones;
  `executors` (in this process or as submitit jobs) and `orchestration` (stage locks, job ids for reruns).
* `results` — the results table (Markdown, CSV, JSON) and plot, with the paper's numbers (`paper`) beside ours.
* `doremi`, `search` — `experiment=doremi_small` (reference, Group DRO proxy, main model on the averaged weights) and
  `experiment=mixing_search_small` (RegMix-style proxies, regressor, top-k average): planners registered as experiment
  kinds (`plan.register_kind`), the search's sampling and regression as compute stages (`plan.register_compute`).
* `methods` — `experiment=mixing_methods_small`: static rates, UniMax, ODM, DoReMi's and the search's weights as the
  rows of one table, sharing the stages the methods allow.
"""

from __future__ import annotations

from .paper import PAPER_CITATION, TABLE_11, TABLE_12
from .doremi import plan_doremi
from .methods import plan_methods
from .plan import (
    STRATEGIES,
    ComputeContext,
    ExperimentConfigError,
    ExperimentPlan,
    Row,
    Stage,
    experiment_block,
    make_plan,
    plan_experiment,
    register_compute,
    register_kind,
)
from .results import build_results, render_markdown, write_results
from .runner import StageMismatchError, read_finished, resolve_stage, run_experiment, stage_config
from .search import plan_search

__all__ = [
    "run_experiment",
    "plan_experiment",
    "make_plan",
    "experiment_block",
    "stage_config",
    "read_finished",
    "Stage",
    "Row",
    "ExperimentPlan",
    "ExperimentConfigError",
    "StageMismatchError",
    "STRATEGIES",
    "ComputeContext",
    "register_kind",
    "register_compute",
    "resolve_stage",
    "plan_doremi",
    "plan_search",
    "plan_methods",
    "build_results",
    "render_markdown",
    "write_results",
    "TABLE_11",
    "TABLE_12",
    "PAPER_CITATION",
]
