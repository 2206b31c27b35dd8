"""``python -m mixtures list`` and ``python -m mixtures show NAME [mixing.key=value ...] [--json] [-n N]``.

Tasks and mixtures of your own module: add ``imports=[my_tasks]`` or ``--imports my_tasks`` anywhere on the line.

``show`` prints the effective mixing settings (rate, K, T) and each task's size (rows in the split), the size it is
rated by, its rate (unnormalized, seqio's value), its share (normalized), and the share the sampler actually drew
over ``-n`` examples.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from .errors import MixtureError
from .mixture import MixtureRegistry
from .rates import MixingConfig


def _parse_value(text: str) -> Any:
    """One override value in Hydra's grammar, exactly as ``train.py`` reads it: ``null``, ``true``, ``2``, ``1e6``,
    ``temperature``, ``{glue_rte:2,my_task:1}`` (a whole mapping, e.g. ``mixing.weights``), ``[a,b]``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_override(f"value={text}")
    except HydraException as err:
        raise MixtureError(f"cannot read the value {text!r}: {str(err).splitlines()[0]}") from None
    if override.is_sweep_override():
        raise MixtureError(f"{text!r} is a sweep (several values); `mixtures show` takes one value per key.")
    return override.value()


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``mixing.rate=temperature mixing.schedule.to.rate=equal`` -> nested mixing dict (keys validated later)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise MixtureError(f"override {item!r} must look like mixing.KEY=VALUE (e.g. mixing.rate=temperature).")
        key, value = item.split("=", 1)
        parts = key.split(".")
        if parts[0] != "mixing" or len(parts) < 2:
            raise MixtureError(f"override {item!r}: only mixing.* keys are accepted here, e.g. "
                               f"mixing.max_examples=2048.")
        node = out
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(value)
    return out


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
    if mixing.schedule is not None:
        parts.append(f"schedule: -> {describe_mixing(mixing.schedule.to)} over steps "
                     f"{mixing.schedule.start_step}..{mixing.schedule.end_step}")
    return ", ".join(parts)


def _list() -> int:
    for name in MixtureRegistry.names():
        mix = MixtureRegistry.get(name)
        print(f"{name:40s} {mix.description}")
    return 0


def _passes(mix: Any, split: str, mixing: MixingConfig, steps: int, batch_size: int,
            sequence_length: dict[str, int]) -> dict[str, float]:
    """Passes over each task's data that ``steps`` packed batches make (see MixtureDataset.planned_passes)."""
    from .sampler import MixtureDataset

    ds = MixtureDataset(mix, split, sequence_length, batch_size=batch_size, mixing=mixing, pack=True)
    return {k: v["passes"] for k, v in ds.planned_passes(steps).items()}


def _show(name: str, overrides: list[str], as_json: bool, n: int, split: str, seed: int,
          steps: int = 0, batch_size: int = 128, sequence_length: dict[str, int] | None = None) -> int:
    from . import catalog
    from .sampler import MixtureDataset

    mix = MixtureRegistry.get(name)
    mixing = MixingConfig.from_dict(parse_overrides(overrides))
    missing = catalog.missing_data(mix)  # no data here: rated by official sizes, nothing to count, draw or plan
    if missing:
        n = steps = 0
    shares = mix.rates(split, mixing)
    raw = mix.raw_rates(split, mixing)
    rated = mix.sizes_for_rating(split, mixing)
    sizes = {t.name: None if t.name in missing else t.num_examples(split) for t in mix.tasks}
    passes = _passes(mix, split, mixing, steps, batch_size, sequence_length or {"inputs": 512, "targets": 114}) \
        if steps > 0 else {}
    drawn: dict[str, float] = {}
    if n > 0:
        ds = MixtureDataset(mix, split, {"inputs": 512, "targets": 128}, batch_size=min(n, 4096), mixing=mixing,
                            pack=False, seed=seed)
        counts = ds.draw_counts(n)
        total = max(sum(counts.values()), 1)
        drawn = {k: v / total for k, v in counts.items()}
    if as_json:
        print(json.dumps({t: {"size": sizes[t], "rate": raw[t], "share": shares[t],
                              **({"drawn": drawn[t]} if drawn else {}),
                              **({"passes": passes[t]} if passes else {})} for t in shares}, indent=2))
        return 0
    print(f"mixture {name}: {mix.description}")
    print(f"mixing: {describe_mixing(mixing.merged_over(mix.defaults))}")
    head = f"{'task':30s} {'size':>9s} {'rated by':>10s} {'rate':>12s} {'share':>8s}"
    print(head + (f" {'drawn':>8s}" if drawn else "") + (f" {'passes':>9s}" if passes else ""))
    for t in shares:
        size = f"{sizes[t]:9d}" if sizes[t] is not None else f"{'-':>9s}"
        line = f"{t:30s} {size} {rated[t]:10.0f} {raw[t]:12.4g} {shares[t]:8.4f}"
        print(line + (f" {drawn[t]:8.4f}" if drawn else "") + (f" {passes[t]:9.3g}" if passes else ""))
    if passes:
        print(f"(passes: over each task's data in {steps} steps of {batch_size} packed sequences; "
              "mixing.max_passes stops a run above it)")
    if drawn:
        print(f"(drawn: the sampler's task shares over the first {n} examples, seed {seed})")
    if missing:
        print(f"size '-': no data on this machine; rated by the official size. Training: "
              f"{catalog.missing_data_message(mix, missing)}")
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
    show = sub.add_parser("show", help="sizes, rates and shares of one mixture")
    show.add_argument("name")
    show.add_argument("overrides", nargs="*", help="mixing.KEY=VALUE, e.g. mixing.rate=temperature")
    show.add_argument("--json", action="store_true", help='print {task: {"size", "rate", "share"}}')
    show.add_argument("-n", type=int, default=100_000, help="examples to draw with the sampler (0: skip)")
    show.add_argument("--split", default="train")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--steps", type=int, default=2**18, help="planned steps for the passes column (0: skip)")
    show.add_argument("--batch-size", type=int, default=128, help="sequences per step for the passes column")
    show.add_argument("--inputs-length", type=int, default=512)
    show.add_argument("--targets-length", type=int, default=114)
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
            return _show(args.name, args.overrides, args.json, args.n, args.split, args.seed, args.steps,
                         args.batch_size, {"inputs": args.inputs_length, "targets": args.targets_length})
    except (MixtureError, TaskError) as e:  # data errors (a bad row, an empty file) too: the message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
