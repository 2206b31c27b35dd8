"""The T5 paper's multi-task comparisons as one command each.

`python train.py experiment=strategies_tiny` (Table 12: pre-train + fine-tune vs. multi-task training vs.
multi-task pre-training, leave-one-out, supervised-only pre-training, MT-DNN style) and
`python train.py experiment=mixing_sweep_tiny` (Table 11: equal, examples-proportional with K, temperature T)
dispatch to `run_experiment(cfg)`. See docs/experiments.md for a walk-through.

* `plan` — pure stage planning (`plan_experiment(cfg) -> list[Stage]`, `make_plan(cfg) -> ExperimentPlan`).
* `runner` — runs the stages through `lightning_t5.train.fit.fit`, reusing finished ones, resuming interrupted ones.
* `results` — the results table (Markdown, CSV, JSON) and plot, with the paper's numbers (`paper`) beside ours.
"""

from __future__ import annotations

from . import doremi as _doremi  # noqa: F401 - registers experiment kind doremi
from . import search as _search  # noqa: F401 - registers experiment kind mixing_search and its compute stages
from .paper import PAPER_CITATION, TABLE_11, TABLE_12
from .plan import (
    STRATEGIES,
    ExperimentConfigError,
    ExperimentPlan,
    Row,
    Stage,
    experiment_block,
    make_plan,
    plan_experiment,
)
from .results import build_results, render_markdown, write_results
from .runner import StageMismatchError, read_finished, run_experiment, stage_config

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
    "build_results",
    "render_markdown",
    "write_results",
    "TABLE_11",
    "TABLE_12",
    "PAPER_CITATION",
]
