"""Every way of setting mixing rates in one table (`experiment_options.kind: mixing_methods`).

One multi-task model per method, each trained N + M steps on the tasks + the corpus task and evaluated on the tasks:

    proportional      examples-proportional (`experiment_options.mixing`: rate proportional and its K); the
                      baseline every other row is tested against, and DoReMi's reference model
    temperature_tT    temperature-scaled, T = `methods.temperature` (default 2) at the same K; the search's prior
    equal             equal shares
    unimax            UniMax (umT5), capped at `methods.unimax_max_epochs` passes (default 1) of each task's data;
                      its budget is the examples the row's N + M steps draw
    odm               Online Data Mixing: the proportional rates, then an EXP3 bandit on the per-task training losses
                      (`mixing.adaptive=odm` with `methods.odm` as its options, a stage per `methods.adaptive_every`
                      steps)
    doremi            DoReMi's averaged weights: a Group DRO proxy against the proportional row's model
                      (lightning_t5.experiments.doremi, `experiment_options.doremi`)
    search            a RegMix-style search's weights: short proxies around the temperature row's rates, a regressor,
                      the top-k average (lightning_t5.experiments.search, `experiment_options.search`)

Stages are shared where the methods allow, so the table costs 7 models + DoReMi's proxy + the search's proxies: the
proportional row's model is DoReMi's reference (same size, budget and weights) and the temperature row is the search's
prior row. A row's compute counts every stage it needs: DoReMi's the reference, the proxy and its own model; the
search's the proxies, its two compute stages and its own model.

`experiment_options.methods` keys (all optional): `temperature` (2), `unimax_max_epochs` (1), `adaptive_every` (the
ODM row's block length; default: the run's `mixing.adaptive_every`), `odm` (the ODM row's `mixing.adaptive_options`,
e.g. `{warmup_steps: 100}`: the paper's 2,000-step warm-up is longer than a small budget). `experiment_options.rows`
picks a subset of the rows.
"""

from __future__ import annotations

from typing import Any, Mapping

from .doremi import plan_doremi, sub_options
from .plan import (ExperimentConfigError, Row, Stage, _Builder, _name_part, _positive_int, _pow2, _tasks,
                   register_kind, row)
from .search import plan_search

__all__ = ["METHOD_KEYS", "plan_methods"]

METHOD_KEYS = ("temperature", "unimax_max_epochs", "adaptive_every", "odm")


def _positive_number(opts: Mapping[str, Any], key: str, default: float) -> float:
    value = opts.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ExperimentConfigError(f"experiment_options.methods.{key} must be a positive number, got {value!r}")
    return float(value)


def plan_methods(block: Mapping[str, Any], b: _Builder, mixing: Mapping[str, Any]) -> list[Row]:
    """Add the stages of every method's row to `b` and return the rows (proportional first: the baseline)."""
    tasks = _tasks(block)
    corpus = block.get("corpus_task")
    if not corpus:
        raise ExperimentConfigError("experiment_options.corpus_task is required by kind mixing_methods (the rates "
                                    "matter most where an unsupervised task's long targets meet one-token labels)")
    if corpus in tasks:
        raise ExperimentConfigError(f"experiment_options.corpus_task {corpus!r} must not also be in "
                                    "experiment_options.tasks")
    total = _positive_int(block, "pretrain_steps") + _positive_int(block, "finetune_steps")
    opts = sub_options(block, "methods", METHOD_KEYS)
    base = dict(mixing) or {"rate": "proportional"}
    if base.get("rate", "proportional") != "proportional" or base.get("adaptive") or base.get("stages"):
        raise ExperimentConfigError(
            "experiment_options.mixing is the proportional row (rate proportional with its K, no adaptive method or "
            f"stages), got {base}; the other rows are planned from it")
    base = {**base, "rate": "proportional", "temperature": 1.0}
    k = base.get("max_examples")
    temperature = _positive_number(opts, "temperature", 2.0)
    odm_options = dict(opts.get("odm") or {})
    odm: dict[str, Any] = {**base, "adaptive": "odm", "adaptive_options": odm_options}
    if opts.get("adaptive_every") is not None:
        every = opts["adaptive_every"]
        if isinstance(every, bool) or not isinstance(every, int) or every <= 0:
            raise ExperimentConfigError(f"experiment_options.methods.adaptive_every must be a positive integer of "
                                        f"steps, got {every!r}")
        odm["adaptive_every"] = every
    search_opts = dict(block.get("search") or {})
    if search_opts.get("prior") is not None:
        raise ExperimentConfigError("experiment_options.search.prior: in kind mixing_methods the search's prior is the "
                                    "temperature row; set experiment_options.methods.temperature instead")

    optim = dict(block.get("pretrain_optim") or {})
    members = (*tasks, corpus)
    mix = b.mixture("all", members)
    k_text = f", K = {_pow2(int(k))}" if isinstance(k, int) else ""
    rows: list[Row] = []

    def multitask(key: str, label: str, rates: Mapping[str, Any]) -> str:
        name = b.add(Stage(name=f"mix_{key}", mixture=mix, tasks=members, steps=total, mixing=dict(rates),
                           optim=optim, eval_tasks=tasks, role="multitask"))
        rows.append(row(b, key, label, {t: name for t in tasks}))
        return name

    proportional = multitask("proportional", f"Examples-proportional{k_text}", base)
    t_key = f"temperature_t{_name_part(temperature)}"
    t_rates = {**base, "rate": "temperature", "temperature": temperature}
    temperature_stage = multitask(t_key, f"Temperature-scaled, T = {_name_part(temperature)}{k_text}", t_rates)
    multitask("equal", "Equal", {**base, "rate": "equal"})
    multitask("unimax", f"UniMax, N = {_name_part(_positive_number(opts, 'unimax_max_epochs', 1.0))} epochs",
              {**base, "rate": "unimax", "unimax_max_epochs": _positive_number(opts, "unimax_max_epochs", 1.0)})
    warmup = odm_options.get("warmup_steps")
    multitask("odm", "Online Data Mixing (ODM)" + (f", warm-up {warmup} steps" if warmup is not None else ""), odm)

    doremi = {r.key: r for r in plan_doremi(block, b, base, reference_stage=proportional)}
    rows.append(doremi["doremi"])
    searched = {r.key: r for r in plan_search({**block, "search": {**search_opts, "prior": t_rates}}, b, base,
                                              prior_stage=temperature_stage)}
    rows.append(searched["search"])
    return rows


register_kind("mixing_methods", plan_methods)
