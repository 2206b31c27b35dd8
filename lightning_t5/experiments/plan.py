"""Stage planning for the T5 paper's multi-task comparisons (Tables 11 and 12), computed without training.

An experiment is a set of *rows* (a training strategy, or a mixing rate) and the *stages* that produce them. A
stage is one call of `lightning_t5.train.fit.fit`: a mixture, a number of steps, where its weights start from,
and which tasks it evaluates. Stages are shared between rows by name, so a checkpoint that several rows start
from (the unsupervised pre-training of the baseline, which MT-DNN also fine-tunes) is trained once.

Budgets follow the paper (Section 3.7.1/3.7.3): every path from random initialisation to an evaluated model
trains N + M steps, N = `experiment_options.pretrain_steps` (2^19 in the paper),
M = `experiment_options.finetune_steps` (2^18):

==============================  ================================================================  ==========
strategy id                     stages                                                            evaluated
==============================  ================================================================  ==========
pretrain_finetune (baseline)    corpus task N  ->  each task alone M                              fine-tunes
multitask                       supervised tasks + corpus, N + M, no fine-tuning                  one model
multitask_pretrain_finetune     supervised tasks + corpus N  ->  each task alone M                fine-tunes
leave_one_out                   for each task t: tasks - {t} + corpus N  ->  t alone M            fine-tunes
supervised_pretrain_finetune    supervised tasks only N  ->  each task alone M                    fine-tunes
mtdnn                           baseline's corpus checkpoint (N)  ->  supervised tasks, one task   fine-tunes
                                per batch, f*M  ->  each task alone (1-f)*M
no_pretraining                  each task alone M, from random initialisation (paper Table 1's     fine-tunes
                                "no pre-training" row: M steps only, the reference for transfer)
==============================  ================================================================  ==========

With `experiment_options.seeds: [s1, s2, ...]` every stage is planned once per seed (name `<stage>__seed<s>`, the
run's `seed` set to s, so the seed changes the initialisation and the data order); a row then has one evaluated
model per task and seed, and the results report the mean and standard deviation over seeds.

The mixing sweep (Table 11) trains one multi-task model per mixing rate for N + M steps on supervised tasks +
corpus: equal, examples-proportional for each K, temperature-scaled for each T (with K fixed, 2^21 in the paper),
and optionally the baseline rows for comparison.

Everything here is pure data: `plan_experiment(cfg)` reads only the experiment settings (`experiment` = the name,
`experiment_options` = the settings below; `mixing` for defaults) of the composed config and never touches the task
registry or the file system. Errors name the `experiment_options.<key>` at fault.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from lightning_t5.errors import ConfigError

from lightning_t5.train.experiment_options import ExperimentOptions

STRATEGIES: dict[str, str] = {
    "pretrain_finetune": "Unsupervised pre-training + fine-tuning",
    "multitask": "Multi-task training",
    "multitask_pretrain_finetune": "Multi-task pre-training + fine-tuning",
    "leave_one_out": "Leave-one-out training",
    "supervised_pretrain_finetune": "Supervised multi-task pre-training",
    "mtdnn": "MT-DNN-style multi-task fine-tuning",
    "no_pretraining": "No pre-training",
}
KINDS = ("strategies", "mixing_sweep")  # planned here; other kinds register a planner (register_kind)
Planner = Callable[[Mapping[str, Any], "_Builder", Mapping[str, Any]], list["Row"]]
_PLANNERS: dict[str, Planner] = {}


@dataclass(frozen=True)
class ComputeContext:
    """What a compute stage's function gets (`Stage.compute`, run by the runner in its own process when every stage
    in `stage.after` has finished): the plan, the experiment's config, every finished stage's result, and the
    stage's own folder, where it writes its outputs (e.g. `weights.json`)."""

    stage: Stage
    plan: ExperimentPlan
    cfg: Any
    results: Mapping[str, Mapping[str, Any]]
    experiment_dir: Any  # pathlib.Path
    run_dir: Any  # pathlib.Path


ComputeFn = Callable[[ComputeContext], Mapping[str, Any]]
_COMPUTE: dict[str, ComputeFn] = {}


def register_compute(name: str, fn: ComputeFn) -> None:
    """Name a function that a stage with `compute=name` runs (lightning_t5.experiments.search registers its own)."""
    _COMPUTE[name] = fn


def compute_function(name: str) -> ComputeFn:
    if name not in _COMPUTE:
        raise ExperimentConfigError(f"no compute function {name!r} is registered; known: {sorted(_COMPUTE)}")
    return _COMPUTE[name]


def register_kind(kind: str, planner: Planner) -> None:
    """Add an experiment kind: `planner(block, builder, mixing) -> rows`, adding its stages to `builder` (as
    `_plan_strategies` does). lightning_t5.experiments.doremi and .search register theirs when the package loads."""
    _PLANNERS[kind] = planner


def kinds() -> tuple[str, ...]:
    return (*KINDS, *_PLANNERS)


class ExperimentConfigError(ConfigError):
    """The experiment settings are inconsistent; the message names the `experiment_options.<key>` and the valid
    choices. A `lightning_t5.train.schema.ConfigError`, so `train.py` prints it as one paragraph and exits with 2."""


@dataclass(frozen=True)
class Stage:
    """One training run of an experiment (one `fit` call).

    `init_stage` is the name of the stage whose final checkpoint this one starts from (None: random init or
    `init_checkpoint`, a path given by the user). `mixing`, `optim` are overrides merged onto the base config's
    blocks. `eval_tasks` empty means the stage is only an intermediate checkpoint and is not evaluated.
    `run_dir` is relative to the experiment folder.
    """

    name: str
    mixture: str
    tasks: tuple[str, ...]
    steps: int
    init_stage: str | None = None
    init_checkpoint: str | None = None
    mixing: Mapping[str, Any] = field(default_factory=dict)
    optim: Mapping[str, Any] = field(default_factory=dict)
    granularity: str = "example"
    eval_tasks: tuple[str, ...] = ()
    role: str = "finetune"  # pretrain | multitask | finetune | reference | proxy | compute
    run_dir: str = ""
    seed: int | None = None  # None: the run's `seed`
    # Inputs that only exist once other stages have finished (resolved by the runner when this stage starts):
    checkpoint_inputs: Mapping[str, str] = field(default_factory=dict)  # run-config key -> stage: its final checkpoint
    weights_from: str | None = None  # "<stage>" or "<stage>:<key>": mixing.weights from that stage's weights.json
    after: tuple[str, ...] = ()  # further stages that must finish first (a compute stage's inputs)
    compute: str | None = None  # a stage that trains nothing: the name of a runner compute function (COMPUTE)
    params: Mapping[str, Any] = field(default_factory=dict)  # arguments of `compute`
    overrides: Mapping[str, Any] = field(default_factory=dict)  # run-config overrides of this stage only

    def spec(self) -> dict[str, Any]:
        """JSON-able description (what `stage.json` stores and the fingerprint hashes)."""
        d = dataclasses.asdict(self)
        if self.seed is None:
            d.pop("seed")  # single-seed plans keep the fingerprints they had before seeds existed
        for key in _LATER_FIELDS:  # likewise plans without them keep the fingerprints they had
            if not d[key]:
                d.pop(key)
        d["tasks"] = list(self.tasks)
        d["eval_tasks"] = list(self.eval_tasks)
        d["mixing"] = dict(self.mixing)
        d["optim"] = dict(self.optim)
        for key in ("checkpoint_inputs", "params", "overrides"):
            if key in d:
                d[key] = dict(d[key])
        if "after" in d:
            d["after"] = list(self.after)
        return d

    def dependencies(self) -> tuple[str, ...]:
        """Every stage that must finish before this one starts (its starting point first)."""
        deps = [self.init_stage] if self.init_stage else []
        deps += list(self.checkpoint_inputs.values())
        if self.weights_from:
            deps.append(weights_source(self.weights_from)[0])
        deps += list(self.after)
        return tuple(dict.fromkeys(deps))


_LATER_FIELDS = ("checkpoint_inputs", "weights_from", "after", "compute", "params", "overrides")


def weights_source(ref: str) -> tuple[str, str | None]:
    """`"<stage>"` -> (stage, None); `"<stage>:<key>"` -> (stage, key): which of the stage's weight sets to read."""
    stage, _, key = ref.partition(":")
    return stage, (key or None)


@dataclass(frozen=True)
class Row:
    """One row of the results table: which stage's evaluation provides each task's metrics."""

    key: str
    label: str
    eval_stage: Mapping[str, str]  # task -> stage name (the first seed's)
    stages: tuple[str, ...]  # every stage this row depends on, all seeds (for compute accounting)
    seed_eval_stages: tuple[tuple[int | None, Mapping[str, str]], ...] = ()  # (seed, task -> stage) per seed

    def eval_stages(self) -> tuple[tuple[int | None, Mapping[str, str]], ...]:
        """(seed, task -> stage name) for every seed the row is trained with."""
        return self.seed_eval_stages or ((None, self.eval_stage),)


@dataclass(frozen=True)
class ExperimentPlan:
    name: str
    kind: str
    tasks: tuple[str, ...]
    corpus_task: str | None
    pretrain_steps: int
    finetune_steps: int
    stages: tuple[Stage, ...]
    rows: tuple[Row, ...]
    mixtures: Mapping[str, tuple[str, ...]]  # mixture name -> its tasks (registered by the runner)
    description: str = ""
    seeds: tuple[int, ...] = ()  # experiment_options.seeds (empty: the run's seed only)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def path_steps(self, stage_name: str) -> int:
        """Steps trained from random initialisation up to the end of `stage_name` (its chain of init stages)."""
        total, s = 0, self.stage(stage_name)
        while True:
            total += s.steps
            if s.init_stage is None:
                return total
            s = self.stage(s.init_stage)

    def ancestors(self, stage_name: str) -> list[str]:
        """`stage_name` and the stages it starts from, root first."""
        chain, s = [], self.stage(stage_name)
        while True:
            chain.append(s.name)
            if s.init_stage is None:
                return chain[::-1]
            s = self.stage(s.init_stage)


# ---------------------------------------------------------------------------------------------------------------
def experiment_block(cfg: DictConfig | Mapping) -> dict[str, Any]:
    """The experiment's settings as a plain dict, with `name` filled in.

    The run schema (lightning_t5/train/schema.py) keeps `experiment` as the experiment's *name* (a string, so that
    `python train.py experiment=<name>` and the structured config agree) and the settings under
    `experiment_options`. An unstructured config may instead give a whole `experiment:` mapping; both work.
    """
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: d)
    exp, opts = get("experiment"), get("experiment_options")
    if isinstance(exp, (Mapping, DictConfig)):
        raw: Any = exp
    else:
        raw = opts if opts is not None else {}
    block = _structured(raw)
    if isinstance(exp, str) and exp and not block.get("name"):
        block["name"] = exp
    if not block.get("kind"):
        raise ExperimentConfigError(
            f"config has no experiment settings (experiment={exp!r}, experiment_options empty); run "
            "`python train.py experiment=<name>` with a file from configs/experiment/ (strategies_tiny, "
            "mixing_sweep_tiny, strategies, mixing_sweep) or set experiment_options.kind"
        )
    return block


def _structured(raw: Any) -> dict[str, Any]:
    """`raw` merged onto the `ExperimentOptions` schema: unknown keys and wrongly typed values are errors that name
    the `experiment_options.<key>` (with a suggestion), exactly as when Hydra composes the run config."""
    from omegaconf.errors import OmegaConfBaseException

    keys = [f.name for f in dataclasses.fields(ExperimentOptions)]
    plain = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else dict(raw)
    unknown = sorted(set(plain) - set(keys))
    if unknown:
        hints = {k: difflib.get_close_matches(k, keys, n=1) for k in unknown}
        parts = [f"experiment_options.{k}" + (f" (did you mean {hints[k][0]}?)" if hints[k] else "") for k in unknown]
        raise ExperimentConfigError(f"unknown key(s) {', '.join(parts)}; valid experiment_options keys: "
                                    f"{', '.join(keys)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ExperimentOptions), plain)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or ""
        raise ExperimentConfigError(f"invalid value for experiment_options.{key}: {str(err).splitlines()[0]}") from None
    out = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(out, dict)
    return out


def _positive_int(block: Mapping, key: str) -> int:
    value = block.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ExperimentConfigError(f"experiment_options.{key} must be a positive integer of steps, got {value!r}")
    return value


def _name_part(value: Any) -> str:
    """A file-system friendly rendering of a rate parameter (2.0 -> '2', 0.5 -> '0p5')."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return re.sub(r"[^A-Za-z0-9_]+", "p", str(value))


def _tasks(block: Mapping) -> tuple[str, ...]:
    tasks = block.get("tasks")
    if not tasks or isinstance(tasks, str):
        raise ExperimentConfigError(
            "experiment_options.tasks must be a non-empty list of supervised task names, e.g. [glue_sst2, glue_rte]"
        )
    tasks = tuple(str(t) for t in tasks)
    dup = sorted({t for t in tasks if tasks.count(t) > 1})
    if dup:
        raise ExperimentConfigError(f"experiment_options.tasks lists {dup} more than once")
    return tasks


def mixture_name(experiment: str, part: str) -> str:
    """Name under which the runner registers an experiment's own mixture (kept apart from the catalog's)."""
    return f"xp_{experiment}__{part}"


class _Builder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stages: dict[str, Stage] = {}
        self.mixtures: dict[str, tuple[str, ...]] = {}

    def mixture(self, part: str, tasks: Sequence[str]) -> str:
        name = mixture_name(self.name, part)
        self.mixtures[name] = tuple(tasks)
        return name

    def add(self, stage: Stage) -> str:
        stage = dataclasses.replace(stage, run_dir=f"stages/{stage.name}")
        old = self.stages.get(stage.name)
        if old is not None and old != stage:
            raise AssertionError(f"stage {stage.name!r} planned twice with different settings")
        self.stages[stage.name] = stage
        return stage.name


def _finetunes(b: _Builder, parent: str | None, prefix: str, tasks: Sequence[str], steps: int,
               optim: Mapping, init_checkpoint: str | None = None) -> dict[str, str]:
    """One fine-tuning stage per task starting from `parent`; returns task -> stage name."""
    out = {}
    for t in tasks:
        out[t] = b.add(Stage(
            name=f"{prefix}__ft_{t}", mixture=b.mixture(t, [t]), tasks=(t,), steps=steps, init_stage=parent,
            init_checkpoint=init_checkpoint if parent is None else None, optim=dict(optim), eval_tasks=(t,),
            role="finetune",
        ))
    return out


def _plan_strategies(block: Mapping, b: _Builder, mixing: Mapping) -> list[Row]:
    tasks = _tasks(block)
    corpus = block.get("corpus_task")
    n, m = _positive_int(block, "pretrain_steps"), _positive_int(block, "finetune_steps")
    strategies = block.get("strategies") or list(STRATEGIES)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ExperimentConfigError(
            f"unknown strategy {unknown} in experiment_options.strategies; valid: {', '.join(STRATEGIES)}"
        )
    needs_corpus = {"pretrain_finetune", "multitask", "multitask_pretrain_finetune", "leave_one_out", "mtdnn"}
    if needs_corpus & set(strategies) and not corpus:
        raise ExperimentConfigError(
            f"experiment_options.corpus_task is required by strategies {sorted(needs_corpus & set(strategies))} "
            "(the unsupervised task, e.g. the span-corruption corpus task)"
        )
    if corpus in tasks:
        raise ExperimentConfigError(f"experiment_options.corpus_task {corpus!r} "
                                    "must not also be in experiment_options.tasks")
    pre_opt, ft_opt = dict(block.get("pretrain_optim") or {}), dict(block.get("finetune_optim") or {})
    frac = float(block.get("mtdnn_multitask_fraction", 0.5))
    if "mtdnn" in strategies and not 0.0 < frac < 1.0:
        raise ExperimentConfigError(f"experiment_options.mtdnn_multitask_fraction must be in (0, 1), got {frac}")
    if "mtdnn" in strategies and m < 2:
        raise ExperimentConfigError("strategy mtdnn splits experiment_options.finetune_steps between multi-task and "
                                    f"per-task fine-tuning, so it needs at least 2 steps, got {m}")

    def pretrain() -> str:
        return b.add(Stage(name="pretrain", mixture=b.mixture("corpus", [corpus]), tasks=(corpus,), steps=n,
                           optim=pre_opt, role="pretrain"))

    rows = []
    for s in strategies:
        if s == "pretrain_finetune":
            root = pretrain()
            ev = _finetunes(b, root, "pretrain", tasks, m, ft_opt)
        elif s == "multitask":
            name = b.add(Stage(name="multitask", mixture=b.mixture("all", [*tasks, corpus]), tasks=(*tasks, corpus),
                               steps=n + m, mixing=dict(mixing), optim=pre_opt, eval_tasks=tasks, role="multitask"))
            ev = {t: name for t in tasks}
        elif s == "multitask_pretrain_finetune":
            root = b.add(Stage(name="mt_pretrain", mixture=b.mixture("all", [*tasks, corpus]),
                               tasks=(*tasks, corpus), steps=n, mixing=dict(mixing), optim=pre_opt, role="pretrain"))
            ev = _finetunes(b, root, "mt_pretrain", tasks, m, ft_opt)
        elif s == "leave_one_out":
            ev = {}
            for t in tasks:
                rest = [x for x in tasks if x != t]
                root = b.add(Stage(name=f"loo_{t}", mixture=b.mixture(f"leave_one_out_{t}", [*rest, corpus]),
                                   tasks=(*rest, corpus), steps=n, mixing=dict(mixing), optim=pre_opt,
                                   role="pretrain"))
                ev.update(_finetunes(b, root, f"loo_{t}", [t], m, ft_opt))
        elif s == "no_pretraining":
            ev = _finetunes(b, None, "scratch", tasks, m, ft_opt)
        elif s == "supervised_pretrain_finetune":
            root = b.add(Stage(name="sup_pretrain", mixture=b.mixture("supervised", tasks), tasks=tasks, steps=n,
                               mixing=dict(mixing), optim=pre_opt, role="pretrain"))
            ev = _finetunes(b, root, "sup_pretrain", tasks, m, ft_opt)
        else:  # mtdnn
            m_mt = min(m - 1, max(1, round(m * frac)))
            root = pretrain()
            mt = b.add(Stage(name="mtdnn_mt", mixture=b.mixture("supervised", tasks), tasks=tasks, steps=m_mt,
                             init_stage=root, mixing=dict(mixing), optim=ft_opt, granularity="batch",
                             role="multitask"))
            ev = _finetunes(b, mt, "mtdnn_mt", tasks, m - m_mt, ft_opt)
        rows.append(_row(b, s, STRATEGIES[s], ev))
    return rows


def _row(b: _Builder, key: str, label: str, ev: Mapping[str, str]) -> Row:
    """A row that depends on its evaluated stages and, transitively, on every stage they need (starting points,
    reference models, the proxies whose results chose its weights): the row's compute counts all of them."""
    deps: list[str] = []

    def visit(name: str) -> None:
        if name in deps:
            return
        for dep in b.stages[name].dependencies():
            visit(dep)
        deps.append(name)

    for stage_name in ev.values():
        visit(stage_name)
    return Row(key=key, label=label, eval_stage=dict(ev), stages=tuple(deps))


def row(b: _Builder, key: str, label: str, ev: Mapping[str, str]) -> Row:
    """Public alias of `_row` for the planners of other experiment kinds (lightning_t5.experiments.doremi...)."""
    return _row(b, key, label, ev)


def _plan_sweep(block: Mapping, b: _Builder, mixing: Mapping) -> list[Row]:
    tasks = _tasks(block)
    corpus = block.get("corpus_task")
    if not corpus:
        raise ExperimentConfigError("experiment_options.corpus_task is required by the mixing sweep (T5 Table 11 mixes "
                                    "the unsupervised task with the supervised ones)")
    n, m = _positive_int(block, "pretrain_steps"), _positive_int(block, "finetune_steps")
    pre_opt = dict(block.get("pretrain_optim") or {})
    mix = b.mixture("all", [*tasks, corpus])
    rows: list[Row] = []
    if block.get("include_baseline", False):
        sub = _Builder(b.name)
        sub.stages, sub.mixtures = b.stages, b.mixtures
        rows += [dataclasses.replace(r, key="baseline", label="Baseline (pre-train/fine-tune)")
                 for r in _plan_strategies({**block, "strategies": ["pretrain_finetune"]}, sub, mixing)]

    def multitask(key: str, label: str, overrides: Mapping) -> None:
        name = b.add(Stage(name=f"mix_{key}", mixture=mix, tasks=(*tasks, corpus), steps=n + m,
                           mixing={**mixing, **overrides}, optim=pre_opt, eval_tasks=tasks, role="multitask"))
        rows.append(_row(b, key, label, {t: name for t in tasks}))

    if block.get("equal", True):
        multitask("equal", "Equal", {"rate": "equal"})
    for k in block.get("proportional_k") or []:
        k = _positive_k(k, "experiment_options.proportional_k")
        multitask(f"proportional_k{k}", f"Examples-proportional, K = {_pow2(k)}",
                  {"rate": "proportional", "max_examples": k, "temperature": 1.0})
    temps = block.get("temperatures") or []
    if temps:
        tk = _positive_k(block.get("temperature_k"), "experiment_options.temperature_k")
        for t in temps:
            if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
                raise ExperimentConfigError(f"experiment_options.temperatures must hold positive numbers, got {t!r}")
            multitask(f"temperature_t{_name_part(t)}", f"Temperature-scaled, T = {_name_part(t)}",
                      {"rate": "temperature", "temperature": float(t), "max_examples": tk})
    if not rows:
        raise ExperimentConfigError("the mixing sweep has no rows: set experiment_options.equal, "
                                    "experiment_options.proportional_k "
                                    "or experiment_options.temperatures")
    return rows


def _positive_k(k: Any, key: str) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ExperimentConfigError(f"{key} must hold positive integers (dataset-size limits K), got {k!r}")
    return k


def _pow2(k: int) -> str:
    return f"2^{k.bit_length() - 1}" if k & (k - 1) == 0 else str(k)


def make_plan(cfg: DictConfig | Mapping, select_rows: bool = True) -> ExperimentPlan:
    """The plan (stages, rows and the experiment's mixtures) of the composed config's experiment settings.

    With `select_rows` (default) only the rows named in `experiment_options.rows` (all when null) and the stages
    they need are kept; `select_rows=False` gives every row (the runner tables all finished rows)."""
    block = experiment_block(cfg)
    name = str(block.get("name") or "")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ExperimentConfigError("experiment_options.name must be a plain folder name (letters, digits, _ . -), "
                                    f"got {name!r}")
    kind = block.get("kind")
    if kind not in kinds():
        raise ExperimentConfigError(f"experiment_options.kind must be one of {kinds()}, got {kind!r}")
    base_mixing = cfg.get("mixing") if hasattr(cfg, "get") else None
    mixing = {}
    if block.get("mixing"):
        mixing = dict(block["mixing"])
    elif kind == "strategies" and base_mixing is not None:
        # The multi-task stages follow the run's own mixing settings unless the experiment pins them.
        mixing = (OmegaConf.to_container(base_mixing, resolve=True) if isinstance(base_mixing, DictConfig)
                  else dict(base_mixing))
    b = _Builder(name)
    if kind == "strategies":
        rows = _plan_strategies(block, b, mixing)
    elif kind == "mixing_sweep":
        rows = _plan_sweep(block, b, mixing)
    else:
        rows = _PLANNERS[kind](block, b, mixing)
    wanted = block.get("rows") if select_rows else None
    if wanted:
        keys = [r.key for r in rows]
        bad = [w for w in wanted if w not in keys]
        if bad:
            raise ExperimentConfigError(f"experiment_options.rows names unknown rows {bad}; this experiment has {keys}")
        rows = [r for r in rows if r.key in wanted]
    needed = {s for r in rows for s in r.stages}
    stages = tuple(s for s in b.stages.values() if s.name in needed)  # insertion order is topological
    seeds = _seeds(block)
    if seeds:
        stages, rows = _per_seed(stages, rows, seeds)
    used = {s.mixture for s in stages}
    return ExperimentPlan(
        name=name, kind=kind, tasks=_tasks(block), corpus_task=block.get("corpus_task"),
        pretrain_steps=int(block["pretrain_steps"]), finetune_steps=int(block["finetune_steps"]),
        stages=stages, rows=tuple(rows), mixtures={k: v for k, v in b.mixtures.items() if k in used},
        description=str(block.get("description") or ""), seeds=seeds,
    )


def _seeds(block: Mapping) -> tuple[int, ...]:
    seeds = block.get("seeds")
    if seeds is None:
        return ()
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds or any(
            not isinstance(x, int) or isinstance(x, bool) for x in seeds):
        raise ExperimentConfigError(
            f"experiment_options.seeds must be null or a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ExperimentConfigError(f"experiment_options.seeds lists a seed more than once: {list(seeds)}")
    return tuple(int(x) for x in seeds)


def seed_stage_name(name: str, seed: int) -> str:
    return f"{name}__seed{seed}"


def _per_seed(stages: Sequence[Stage], rows: Sequence[Row], seeds: Sequence[int]
              ) -> tuple[tuple[Stage, ...], list[Row]]:
    """Every stage once per seed (renamed, chained to the same seed's parents) and rows that know all seeds."""
    out: list[Stage] = []
    for seed in seeds:
        for st in stages:
            name = seed_stage_name(st.name, seed)
            weights_from = None
            if st.weights_from:
                source, key = weights_source(st.weights_from)
                weights_from = seed_stage_name(source, seed) + (f":{key}" if key else "")
            out.append(dataclasses.replace(
                st, name=name, seed=seed, run_dir=f"stages/{name}",
                init_stage=seed_stage_name(st.init_stage, seed) if st.init_stage else None,
                checkpoint_inputs={k: seed_stage_name(v, seed) for k, v in st.checkpoint_inputs.items()},
                weights_from=weights_from, after=tuple(seed_stage_name(a, seed) for a in st.after)))
    new_rows = []
    for r in rows:
        per_seed = tuple((seed, {t: seed_stage_name(n, seed) for t, n in r.eval_stage.items()}) for seed in seeds)
        deps = tuple(seed_stage_name(n, seed) for seed in seeds for n in r.stages)
        new_rows.append(dataclasses.replace(r, eval_stage=dict(per_seed[0][1]), stages=deps,
                                            seed_eval_stages=per_seed))
    return tuple(out), new_rows


def plan_experiment(cfg: DictConfig | Mapping) -> list[Stage]:
    """The stages of the experiment in `cfg`, in an order where every stage comes after the one it starts from."""
    return list(make_plan(cfg).stages)


def fingerprint(stage: Stage, parent_fingerprint: str | None, context: Mapping[str, Any],
                inputs: Mapping[str, str] | None = None) -> str:
    """Stable hash of what determines a stage's weights: its spec (minus its folder), its parent's fingerprint,
    the fingerprints of the other stages it reads (`inputs`: stage -> fingerprint, e.g. DoReMi's reference model or
    the proxies a search fits) and the run-wide settings in `context` (model, data, seed, base optim). A finished
    stage is reused only when this matches, so changing `finetune_steps` or the model never silently reuses stale
    checkpoints. A stage whose weights come from a file is fingerprinted with those weights filled in."""
    spec = stage.spec()
    spec.pop("run_dir")
    spec.pop("eval_tasks")  # evaluation does not change the weights
    body: dict[str, Any] = {"stage": spec, "parent": parent_fingerprint, "context": context}
    if inputs:
        body["inputs"] = dict(inputs)
    payload = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def iter_task_budgets(plan: ExperimentPlan) -> Iterable[tuple[str, str, int]]:
    """(row key, task, steps from scratch to the evaluated model) for every row and task (first seed)."""
    for row in plan.rows:
        for task, stage_name in row.eval_stage.items():
            yield row.key, task, plan.path_steps(stage_name)
