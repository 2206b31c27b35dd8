"""``python -m mixtures list`` and ``python -m mixtures show NAME [key=value ...] [--json] [-n N] [--stages]``.

Tasks and mixtures of your own module: add ``imports=[my_tasks]`` or ``--imports my_tasks`` anywhere on the line.

``show`` describes the run ``python train.py mixture=NAME <the same key=value>`` would make: the defaults come from
``configs/config.yaml`` (sequence lengths, batch size, steps, seed) and the overrides are train.py's. It prints the
effective mixing settings (rate, K, T) and, from ``mixtures.shares.task_shares`` (the computation every report of
shares uses), each task's size (rows at the run's lengths), the size it is rated by, its rate (unnormalized, seqio's
value), its share (normalized), its planned share of examples and of tokens, the passes the run's steps make, and the
share the sampler actually drew over ``-n`` examples. ``show --stages NAME|RUN_DIR`` prints the rate stages of a
config or of a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from omegaconf import OmegaConf

from .errors import MixtureError
from .mixture import MixtureRegistry
from .rates import MixingConfig


def describe_mixing(mixing: MixingConfig) -> str:
    """The mixing settings a run would use, in the paper's terms (rate name, K, T), with defaults filled in."""
    rate = mixing.rate or "proportional"
    parts = [f"rate={rate}", f"K={mixing.max_examples:g}" if mixing.max_examples else "K=none (no cap)"]
    if rate == "temperature":
        parts.append(f"T={mixing.temperature if mixing.temperature is not None else 1.0:g}")
    if mixing.weights:
        parts.append(f"weights={dict(mixing.weights)}")
    if mixing.unsupervised_rate is not None:
        parts.append(f"unsupervised_rate={mixing.unsupervised_rate:g}")
    parts.append(f"sizes={mixing.size_source or 'auto'}")
    if rate == "unimax":
        budget = f"{mixing.unimax_budget:,.0f} examples" if mixing.unimax_budget else "from the run's steps"
        parts.append(f"N={mixing.unimax_max_epochs or 1:g} epochs, budget {budget}")
    if mixing.schedule is not None:
        parts.append(f"schedule: -> {describe_mixing(mixing.schedule.to)} over steps "
                     f"{mixing.schedule.start_step}..{mixing.schedule.end_step}")
    if mixing.stages:
        parts.append(f"{len(mixing.stages)} fixed stage(s) from step {mixing.stages[0]['start_step']}")
    if mixing.adaptive:
        options = {k: v for k, v in (mixing.adaptive_options or {}).items() if v is not None}
        parts.append(f"adaptive={mixing.adaptive}{options or ''} (a stage every {mixing.adaptive_every} steps)")
    return ", ".join(parts)


def _list() -> int:
    for name in MixtureRegistry.names():
        mix = MixtureRegistry.get(name)
        print(f"{name:40s} {mix.description}")
    return 0


def run_settings(overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The run this command describes: ``configs/config.yaml`` plus ``key=value`` overrides, exactly the defaults and
    overrides of ``python train.py`` (``tasks.run_defaults``); the old flags still override their keys."""
    from tasks.run_defaults import load_run_config, run_sequence_length

    cfg = load_run_config(overrides)
    seq = run_sequence_length(cfg)
    seq = {"inputs": args.inputs_length or seq["inputs"], "targets": args.targets_length or seq["targets"]}
    devices, nodes = cfg.trainer.get("devices", 1), int(cfg.trainer.get("num_nodes", 1) or 1)
    world = int(devices) * nodes if isinstance(devices, int) and devices > 0 else 1
    steps = int(cfg.trainer.max_steps) * int(cfg.trainer.get("accumulate_grad_batches", 1) or 1)
    mixing = {k: v for k, v in OmegaConf.to_container(cfg.mixing, resolve=True).items() if v is not None}
    return {"mixing": MixingConfig.from_dict(mixing), "sequence_length": seq,
            "steps": steps if args.steps is None else args.steps,
            "batch_size": int(args.batch_size or cfg.data.batch_size), "world_size": world,
            "pack": bool(cfg.data.pack), "granularity": str(cfg.data.granularity),
            "seed": int(cfg.seed if args.seed is None else args.seed), "objective": cfg.get("objective")}


def _mixture(name: str, run: dict[str, Any]) -> Any:
    mix = MixtureRegistry.get(name)
    if run["objective"]:
        from .objective import with_objective

        mix = with_objective(mix, OmegaConf.to_container(run["objective"], resolve=True))
    return mix


def _show(name: str, overrides: list[str], args: argparse.Namespace) -> int:
    from . import catalog
    from .sampler import MixtureDataset
    from .shares import format_shares, task_shares

    run = run_settings(overrides, args)
    mix = _mixture(name, run)
    missing = catalog.missing_data(mix)
    if missing:
        return _show_official(name, mix, run, missing, args)
    steps = run["steps"] or None
    report = task_shares(mix, run["mixing"], sequence_length=run["sequence_length"], batch_size=run["batch_size"],
                         steps=steps, world_size=run["world_size"], pack=run["pack"], granularity=run["granularity"],
                         split=args.split, seed=run["seed"])
    tasks = report["tasks"]
    drawn: dict[str, float] = {}
    if args.n > 0:  # the draws only depend on the shares: count them on padded batches (fast, no packing)
        ds = MixtureDataset(mix, args.split, run["sequence_length"], batch_size=min(args.n, 4096),
                            mixing=report["mixing"], pack=False, seed=run["seed"], validate=False)
        counts = ds.draw_counts(args.n)
        total = max(sum(counts.values()), 1)
        drawn = {k: v / total for k, v in counts.items()}
    if args.json:
        print(json.dumps({t: {**row, **({"drawn": drawn[t]} if drawn else {})} for t, row in tasks.items()},
                         indent=2))
        return 0
    print(f"mixture {name}: {mix.description}")
    print(f"mixing: {describe_mixing(MixingConfig.from_dict(report['mixing']))}")
    table = format_shares(report).splitlines()
    if drawn:
        table[0] += f" {'drawn':>8s}"
        for i, t in enumerate(tasks, 1):
            table[i] += f" {drawn[t]:8.4f}"
    print("\n".join(table))
    if drawn:
        print(f"(drawn: the sampler's task shares over the first {args.n} examples, seed {run['seed']})")
    return 0


def _show_official(name: str, mix: Any, run: dict[str, Any], missing: dict[str, str],
                   args: argparse.Namespace) -> int:
    """A catalog mixture some of whose tasks have no data here: rated by official sizes (nothing to count, draw or
    plan; training on it stops with `catalog.missing_data_message`)."""
    from . import catalog

    mixing, split = run["mixing"], args.split
    shares = mix.rates(split, mixing)
    raw = mix.raw_rates(split, mixing)
    rated = mix.sizes_for_rating(split, mixing)
    sizes = {t.name: None if t.name in missing else t.num_examples(split) for t in mix.tasks}
    if args.json:
        print(json.dumps({t: {"size": sizes[t], "rated_size": rated[t], "rate": raw[t], "share": shares[t]}
                          for t in shares}, indent=2))
        return 0
    print(f"mixture {name}: {mix.description}")
    print(f"mixing: {describe_mixing(mixing.merged_over(mix.defaults))}")
    print(f"{'task':30s} {'size':>9s} {'rated by':>10s} {'rate':>12s} {'share':>8s}")
    for t in shares:
        size = f"{sizes[t]:9d}" if sizes[t] is not None else f"{'-':>9s}"
        print(f"{t:30s} {size} {rated[t]:10.0f} {raw[t]:12.4g} {shares[t]:8.4f}")
    print(f"size '-': no data on this machine; rated by the official size. Training: "
          f"{catalog.missing_data_message(mix, missing)}")
    return 0


def _show_stages(name: str, overrides: list[str], args: argparse.Namespace) -> int:
    """``show --stages``: a run's stages (run directory or .ckpt), else the stages a config would start with."""
    from pathlib import Path

    from .sampler import MixtureDataset
    from .shares import resolve_mixing
    from .stages import format_stages, read_run_file

    if Path(name).exists():
        record = read_run_file(name)
    else:
        run = run_settings(overrides, args)
        mix = _mixture(name, run)
        mixing = resolve_mixing(mix, run["mixing"], sequence_length=run["sequence_length"], steps=run["steps"],
                                batch_size=run["batch_size"], world_size=run["world_size"], pack=run["pack"],
                                granularity=run["granularity"], split=args.split, seed=run["seed"])
        ds = MixtureDataset(mix, args.split, run["sequence_length"], batch_size=run["batch_size"], mixing=mixing,
                            pack=run["pack"], seed=run["seed"])
        record = {"task_names": ds.task_names, "stages": ds.stages.listing(),
                  "adaptive": ds.adaptive.name if ds.adaptive is not None else None,
                  "every": ds.adaptive.every if ds.adaptive is not None else None}
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(format_stages(record))
    return 0


def main(argv: list[str] | None = None) -> int:
    from tasks import TaskError, import_modules, pop_imports

    try:
        modules, argv = pop_imports(sys.argv[1:] if argv is None else argv)
        import_modules(modules)
    except TaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m mixtures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list mixture names")
    show = sub.add_parser("show", help="sizes, rates and shares of one mixture (or a run's stages)")
    show.add_argument("name", help="a mixture; with --stages also a run directory or a .ckpt file")
    show.add_argument("overrides", nargs="*",
                      help="key=value as for train.py (mixing.rate=temperature, data.sequence_length.inputs=512, "
                           "data.batch_size=8, trainer.max_steps=1000, objective=prefix_lm)")
    show.add_argument("--json", action="store_true",
                      help='print {task: {"size", "rate", "share", "planned", "token_share", ...}}')
    show.add_argument("--stages", action="store_true", help="print the rate stages (of a run directory or a config)")
    show.add_argument("-n", type=int, default=100_000, help="examples to draw with the sampler (0: skip)")
    show.add_argument("--split", default="train")
    show.add_argument("--seed", type=int, default=None, help="default: the config's seed")
    show.add_argument("--steps", type=int, default=None,
                      help="planned steps for the passes column (default: trainer.max_steps; 0: skip)")
    show.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: data.batch_size)")
    show.add_argument("--inputs-length", type=int, default=None, help="default: data.sequence_length.inputs")
    show.add_argument("--targets-length", type=int, default=None, help="default: data.sequence_length.targets")
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad or (extra and args.cmd != "show"):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if args.cmd == "show":
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.WARNING)
    try:
        from datasets.utils.logging import disable_progress_bar
        disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        if args.cmd == "list":
            return _list()
        from . import catalog

        with catalog.describing():  # a catalog mixture is shown even where some of its tasks have no data
            if args.stages:
                return _show_stages(args.name, args.overrides, args)
            return _show(args.name, args.overrides, args)
    except (MixtureError, TaskError) as e:  # data errors (a bad row, an empty file) too: the message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
