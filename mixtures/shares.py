"""One computation of each task's size and share for a run's config: every report of shares calls it.

``python -m mixtures show``, the start-up log of a training run, its ``metrics.json`` / ``results.md`` and the
experiment tables all read :func:`task_shares`, which builds the run's own sampler (the run's sequence lengths, batch
size, packing, ranks and steps) and reads the shares the sampler draws by. The checkpoint's ``rates`` are the same
sampler's vectors. So a corpus task, whose size is its number of windows at the run's lengths, is sized and shared the
same everywhere.

Definitions (per task ``i``):
    size            rows of the task's token cache at the run's lengths (a corpus task: windows)
    rated_size      the size the rate formula uses (official sizes under ``size_source`` auto/official)
    rate            the unnormalised rate (seqio's value; UniMax: the examples allocated)
    share           the share of examples at step 0 (the sampler's draw probability; the checkpoint's ``rates``)
    planned         the share of the run's examples the stages plan (the mean over the run's steps: ``share`` for
                    static rates; an adaptive run plans its initial shares and records what it drew)
    token_share     ``planned`` weighted by the task's mean tokens per example (inputs + targets after truncation)
    passes          passes over the task's data the run's steps plan (``mixing.max_passes`` guards it)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .mixture import Mixture
from .rates import MixingConfig
from .sampler import MixtureDataset


def resolve_mixing(mixture: Mixture, mixing: MixingConfig | Mapping | None, *, sequence_length: Mapping[str, int],
                   steps: int | None, batch_size: int, world_size: int = 1, pack: bool = True,
                   granularity: str = "example", split: str = "train", seed: int = 0) -> MixingConfig:
    """``mixing`` with what depends on the run filled in: UniMax's budget, in examples over all ranks.

    Why examples: the sampler draws examples by their shares, and UniMax's cap is in passes over a task's data,
    i.e. examples drawn / examples in the task; a token budget would tie each cap to packing and length estimates.
    The budget is ``steps x examples per step``: the global batch when padding; when packing, the examples the
    run's own packed batches hold at the UniMax shares (measured on the plan, iterated until the budget moves by
    less than 1 %: the shares change how many examples a packed row holds).
    """
    cfg = MixingConfig.from_dict(mixing)
    effective = cfg.merged_over(mixture.defaults)
    if effective.rate != "unimax" or effective.unimax_budget is not None:
        return cfg
    if not steps:
        from .errors import MixtureError

        raise MixtureError("mixing.rate=unimax needs the run's steps (trainer.max_steps) to size its budget.")
    budget = float(steps * batch_size * world_size)
    for _ in range(6 if pack else 1):
        probe = MixtureDataset(mixture, split, sequence_length, batch_size=batch_size,
                               mixing=dataclasses.replace(cfg, unimax_budget=budget), pack=pack,
                               granularity=granularity, seed=seed, world_size=world_size, validate=False)
        new = float(steps) * probe.examples_per_step()
        done = abs(new - budget) <= 0.01 * budget
        budget = new
        if done:
            break
    return dataclasses.replace(cfg, unimax_budget=float(round(budget)))


def task_shares(mixture: Mixture, mixing: MixingConfig | Mapping | None = None, *,
                sequence_length: Mapping[str, int], batch_size: int, steps: int | None = None, world_size: int = 1,
                pack: bool = True, granularity: str = "example", split: str = "train", seed: int = 0,
                dataset: MixtureDataset | None = None) -> dict[str, Any]:
    """Each task's size and shares under a run's config (see the module docstring); ``steps`` adds passes.

    ``dataset`` reuses a sampler already built with these settings (the run's own probe). Returns
    ``{"mixture", "mixing", "sequence_length", "batch_size", "world_size", "steps", "examples_per_step",
    "tasks": {name: {size, rated_size, rate, share, planned, tokens_per_example, token_share[, share_end,
    examples, passes]}}}``.
    """
    mixing = resolve_mixing(mixture, mixing, sequence_length=sequence_length, steps=steps, batch_size=batch_size,
                            world_size=world_size, pack=pack, granularity=granularity, split=split, seed=seed)
    ds = dataset if dataset is not None else MixtureDataset(
        mixture, split, sequence_length, batch_size=batch_size, mixing=mixing, pack=pack, granularity=granularity,
        seed=seed, world_size=world_size)
    names = ds.task_names
    share = ds.stages.base(0)
    planned = _planned(ds, steps)
    tpe = np.array([ds._source(t).mean_tokens() for t in range(len(names))])
    tokens = planned * tpe
    token_share = tokens / tokens.sum() if tokens.sum() > 0 else tokens
    rated = mixture.sizes_for_rating(split, mixing, sequence_length)
    raw = mixture.raw_rates(split, mixing, sequence_length)
    per_step = ds.examples_per_step() if steps else None
    passes = ds.planned_passes(steps) if steps else {}
    schedule = ds.stages.schedule is not None
    tasks = {}
    for i, n in enumerate(names):
        row = {"size": int(ds._sizes[i]), "rated_size": float(rated[n]), "rate": float(raw[n]),
               "share": float(share[i]), "planned": float(planned[i]), "tokens_per_example": float(tpe[i]),
               "token_share": float(token_share[i])}
        if schedule:
            row["share_end"] = float(ds.stages.base(1 << 62)[i])
        if passes:
            row["examples"] = float(passes[n]["examples"])
            row["passes"] = float(passes[n]["passes"])
        tasks[n] = row
    return {"mixture": mixture.name, "mixing": _plain(mixing.merged_over(mixture.defaults).to_dict()),
            "sequence_length": dict(sequence_length), "batch_size": int(batch_size), "world_size": int(world_size),
            "steps": steps, "examples_per_step": per_step, "tasks": tasks}


def _planned(ds: MixtureDataset, steps: int | None) -> np.ndarray:
    """The mean share over the run's steps (exactly the step-0 share when nothing changes during the run)."""
    stages = ds.stages
    if stages.schedule is None and not stages.added or not steps:
        return np.asarray(stages.base(0), dtype=np.float64)
    rates = stages.base if ds.adaptive is not None else stages
    total = np.zeros(len(ds.task_names))
    for step in range(int(steps)):  # cheap: one vector lookup per step
        total += rates(step)
    return total / total.sum()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def shares_record(report: Mapping[str, Any], drawn: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """What a run records (``metrics.json`` ``shares``): planned and drawn shares per task, by examples and tokens.

    ``drawn`` is ``{task: {"examples": n, "tokens": n}}`` summed over every rank (the sampler's counters)."""
    tasks = report["tasks"]
    ex = {n: int(drawn.get(n, {}).get("examples", 0)) for n in tasks}
    tok = {n: int(drawn.get(n, {}).get("tokens", 0)) for n in tasks}
    n_ex, n_tok = max(sum(ex.values()), 1), max(sum(tok.values()), 1)
    return {
        "sizes": {n: t["size"] for n, t in tasks.items()},
        "planned": {"examples": {n: t["planned"] for n, t in tasks.items()},
                    "tokens": {n: t["token_share"] for n, t in tasks.items()}},
        "drawn": {"examples": {n: ex[n] / n_ex for n in tasks}, "tokens": {n: tok[n] / n_tok for n in tasks},
                  "counts": {n: {"examples": ex[n], "tokens": tok[n]} for n in tasks}},
        "sequence_length": dict(report["sequence_length"]),
    }


def format_shares(report: Mapping[str, Any]) -> str:
    """The report as a text table (``python -m mixtures show`` and the start-up log print this)."""
    tasks = report["tasks"]
    passes = any("passes" in t for t in tasks.values())
    end = any("share_end" in t for t in tasks.values())
    head = (f"{'task':30s} {'size':>9s} {'rated by':>10s} {'rate':>12s} {'share':>8s}"
            + (f" {'end':>8s}" if end else "") + f" {'planned':>8s} {'tokens':>8s}" + (f" {'passes':>9s}" if passes
                                                                                     else ""))
    lines = [head]
    for n, t in tasks.items():
        line = (f"{n:30s} {t['size']:9d} {t['rated_size']:10.0f} {t['rate']:12.4g} {t['share']:8.4f}"
                + (f" {t.get('share_end', t['share']):8.4f}" if end else "")
                + f" {t['planned']:8.4f} {t['token_share']:8.4f}")
        lines.append(line + (f" {t.get('passes', float('nan')):9.3g}" if passes else ""))
    seq = report["sequence_length"]
    note = (f"(size: rows at inputs {seq['inputs']} / targets {seq['targets']} tokens; share: of examples at step 0; "
            "planned: of the run's examples; tokens: planned share of tokens")
    if passes:
        note += (f"; passes over each task's data in {report['steps']} steps of {report['batch_size']} x "
                 f"{report['world_size']} sequences")
    return "\n".join(lines + [note + ")"])


def render_shares_markdown(record: Mapping[str, Any]) -> str:
    """The ``results.md`` table of a run's planned and drawn shares (``shares_record``)."""
    if not record:
        return ""
    planned, drawn = record["planned"], record["drawn"]
    lines = ["Share of each task in training (planned by the mixing rates / drawn by the sampler, over all ranks):",
             "", "| task | size | planned examples | drawn examples | planned tokens | drawn tokens |",
             "|---|---:|---:|---:|---:|---:|"]
    for n, size in record["sizes"].items():
        counts = drawn["counts"][n]
        lines.append(f"| {n} | {size:,} | {100 * planned['examples'][n]:.2f}% | {100 * drawn['examples'][n]:.2f}% "
                     f"({counts['examples']:,}) | {100 * planned['tokens'][n]:.2f}% | "
                     f"{100 * drawn['tokens'][n]:.2f}% ({counts['tokens']:,}) |")
    return "\n".join(lines) + "\n"
