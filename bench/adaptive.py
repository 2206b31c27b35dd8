"""Benchmark: what adaptive mixing (ODM) costs in training throughput, against the same run with static rates.

Both runs are `python train.py`'s default run (tiny T5, the `default` mixture, packed 32 x 128/32 batches, CPU) without
evaluation; the ODM run adds `mixing.adaptive=odm` with no warm-up, an update every step and a new stage every 10 steps
(the most work ODM can do: every step reduces the per-task losses, updates the bandit, every block appends a stage).
Packed batches have the same number of token slots whatever the mixture draws, so steps per second compare the same
work. The runs alternate (static, ODM, static, ODM, ...) so that load on the machine hits both alike; each run's speed
is the median time between consecutive steps of its `train_log.jsonl` after the first `--skip` steps.

End to end, the load of a shared machine moves a run's speed by more than the 5 % to be shown, so the bench also
times ODM's own work inside the runs: the per-task loss reduction the module computes every step
(`T5LightningModule.task_loss_sums`, every 10th step without ODM, for the per-task log) and the mixing callback
(`MixingMonitor.on_train_batch_end`: the copy to the CPU, the bandit's update, a new stage at each block end, and
the per-block record both runs keep), as a share of the step time of the same run. Prints the median step time of
each run, the ratio ODM throughput / static throughput (1.0 = free; the target is >= 0.95), end to end and from ODM's
measured work.

Run: ``.venv/bin/python bench/adaptive.py [--steps 80] [--repeats 3] [--json] [key=value ...]`` (the overrides apply
to both runs, e.g. ``data.batch_size=8`` for a quicker measurement).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ODM = ["mixing.adaptive=odm", "mixing.adaptive_options.warmup_steps=0", "mixing.adaptive_every=10"]


SPENT: dict[str, float] = {}  # seconds inside the timed functions during the current run


def _timed(cls: type, name: str) -> None:
    """Wrap `cls.name` so that the seconds spent in it add up in SPENT[name]."""
    inner = getattr(cls, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            SPENT[name] = SPENT.get(name, 0.0) + time.perf_counter() - start

    setattr(cls, name, wrapper)


def run(out: Path, name: str, steps: int, extra: list[str]) -> tuple[list[float], float]:
    """Train one run; the seconds between consecutive optimizer steps, and the examples a step drew (packed rows hold
    more short examples than long ones, and the data path's work grows with the examples)."""
    from hydra import compose, initialize_config_dir

    from lightning_t5.train.fit import fit
    from lightning_t5.train.schema import register_schema

    register_schema()
    overrides = [f"trainer.max_steps={steps}", "eval.tasks=[]", "eval.before_training=false",
                 "trainer.enable_progress_bar=false", f"trainer.checkpoint_every_n_steps={steps}",
                 f"output_dir={out}", f"run_name={name}", *extra]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    result = fit(cfg)
    times = [json.loads(line)["time"] for line in (out / name / "train_log.jsonl").read_text().splitlines()]
    drawn = sum(c["examples"] for c in result["shares"]["drawn"]["counts"].values()) / steps
    return [b - a for a, b in zip(times, times[1:])], drawn


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--skip", type=int, default=10, help="steps left out at the start of each run (warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each kind, alternating")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*", help="train.py overrides for both runs, e.g. data.batch_size=8")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from lightning_t5.train.callbacks import MixingMonitor
    from lightning_t5.train.module import T5LightningModule

    _timed(T5LightningModule, "task_loss_sums")
    _timed(MixingMonitor, "on_train_batch_end")
    medians: dict[str, list[float]] = {"static": [], "odm": []}
    spent: dict[str, list[float]] = {"static": [], "odm": []}  # seconds per step inside the timed functions
    examples: dict[str, list[float]] = {"static": [], "odm": []}  # examples drawn per step
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for kind, extra in (("static", []), ("odm", ODM)):
                SPENT.clear()
                gaps, drawn = run(Path(tmp), f"{kind}{r}", args.steps, [*args.overrides, *extra])
                medians[kind].append(statistics.median(gaps[args.skip:]))
                examples[kind].append(drawn)
                spent[kind].append(sum(SPENT.values()) / args.steps)
    static, odm = statistics.median(medians["static"]), statistics.median(medians["odm"])
    ratio = static / odm  # throughput ratio: (1 / odm) / (1 / static)
    paired = [a / b for a, b in zip(medians["static"], medians["odm"])]
    extra_work = statistics.median(spent["odm"]) - statistics.median(spent["static"])
    measured = static / (static + extra_work)  # the static run's speed with ODM's extra work added to each step
    result = {"steps": args.steps, "repeats": args.repeats, "overrides": args.overrides,
              "static_s_per_step": medians["static"],
              "odm_s_per_step": medians["odm"], "median_static_s_per_step": static, "median_odm_s_per_step": odm,
              "odm_over_static_throughput": ratio, "paired_ratios": paired,
              "odm_work_s_per_step": spent["odm"], "static_work_s_per_step": spent["static"],
              "odm_extra_work_s_per_step": extra_work, "odm_over_static_throughput_from_work": measured,
              "static_examples_per_step": examples["static"], "odm_examples_per_step": examples["odm"],
              "wall_s": round(time.time() - start, 1)}
    if args.json:
        print("BENCH_JSON " + json.dumps(result))
    else:
        print("## Adaptive mixing overhead (default run: tiny T5, packed 32 x 128/32, CPU, no evaluation; overrides: "
              f"{' '.join(args.overrides) or 'none'})")
        print(f"static rates: {', '.join(f'{t * 1000:.1f}' for t in medians['static'])} ms/step (median of each run)")
        print(f"ODM         : {', '.join(f'{t * 1000:.1f}' for t in medians['odm'])} ms/step")
        print(f"ODM throughput / static throughput = {ratio:.3f} end to end (paired runs: "
              f"{', '.join(f'{x:.3f}' for x in paired)}; target >= 0.95; {result['wall_s']} s)")
        print(f"ODM's own work: {extra_work * 1000:.2f} ms per step more than static rates -> throughput ratio "
              f"{measured:.4f}")
        print(f"examples per step (packed rows): static {statistics.mean(examples['static']):.1f}, ODM "
              f"{statistics.mean(examples['odm']):.1f} (the mixture ODM draws changes the data path's work)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
