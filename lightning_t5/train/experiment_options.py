"""`experiment_options`: the settings of a T5 comparison (Tables 11/12) as a structured schema.

It lives in the training room because it is part of the run schema (`lightning_t5.train.schema.build_schema`
embeds it), and the schema may not import from `experiments/`, the room above. Why a dataclass: a misspelt key
(`experiment_options.pretrain_stepz=3`) or a wrongly typed value (`experiment_options.seeds=[a]`) fails when Hydra
composes the config, with the same "did you mean" message as every other config key, before anything trains.
`lightning_t5.experiments.plan` then checks what types cannot say (positive step counts, known strategies, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = ["ExperimentOptions"]


@dataclass
class ExperimentOptions:
    """Keys of `experiment_options` (see docs/experiments.md "Experiment settings" for each one's meaning)."""

    name: Optional[str] = None  # experiment name (default: the `experiment` key); also the default run folder
    kind: Optional[str] = None  # strategies | mixing_sweep | doremi | mixing_search | mixing_methods
    description: str = ""  # free text shown above the results table
    strategies: Optional[List[str]] = None  # strategy ids (strategies kind; null: all)
    tasks: Optional[List[str]] = None  # target (supervised) tasks to evaluate
    corpus_task: Optional[str] = None  # the unsupervised (corpus) task used for pre-training
    pretrain_steps: Optional[int] = None  # N (paper: 2^19)
    finetune_steps: Optional[int] = None  # M (paper: 2^18)
    mtdnn_multitask_fraction: float = 0.5  # share of M spent on MT-DNN's multi-task fine-tuning
    mixing: Optional[Dict[str, Any]] = None  # mixing overrides for the multi-task stages (paper: proportional, K=2^19)
    pretrain_optim: Optional[Dict[str, Any]] = None  # optim overrides for pre-training / multi-task stages
    finetune_optim: Optional[Dict[str, Any]] = None  # optim overrides for fine-tuning stages
    equal: bool = True  # mixing sweep: include equal mixing
    proportional_k: Optional[List[int]] = None  # mixing sweep: K values of examples-proportional mixing
    temperatures: Optional[List[float]] = None  # mixing sweep: T values of temperature-scaled mixing
    temperature_k: Optional[int] = None  # mixing sweep: K used with temperature scaling (paper: 2^21)
    include_baseline: bool = False  # mixing sweep: also run pre-train + fine-tune as the reference row
    rows: Optional[List[str]] = None  # run only these row ids (null: all)
    run_name: Optional[str] = None  # folder under output_dir (default: name); reruns reuse finished stages
    paper: bool = True  # show the T5 paper's numbers beside ours
    seeds: Optional[List[int]] = None  # train every row once per seed; the table shows mean ± std over seeds
    overrides: Dict[str, Any] = field(default_factory=dict)  # run-config overrides applied under every stage
    executor: str = "local"  # where stages run: local | submitit (SLURM) | submitit_local
    cluster: Dict[str, Any] = field(default_factory=dict)  # submitit resources: partition, gpus_per_node, nodes, ...
    max_parallel_stages: Optional[int] = None  # submitit executors: cap on stages at once (null: what the machine runs)
    doremi: Optional[Dict[str, Any]] = None  # kind doremi: reference_steps, proxy_steps, eta, eps, proxy_model
    search: Optional[Dict[str, Any]] = None  # kind mixing_search: proxies, proxy_steps, max_epochs, regressor, ...
    methods: Optional[Dict[str, Any]] = None  # kind mixing_methods: temperature, unimax_max_epochs, adaptive_every, odm
