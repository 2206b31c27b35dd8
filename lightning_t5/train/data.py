"""LightningDataModule over a task mixture: mixed training batches and per-task evaluation sets.

Resume pitfalls this module is shaped around (REFERENCE.md):
- Training batches come from `mixtures.MixtureDataset` (one instance per rank, sharded by rank/world size from the
  Trainer), wrapped in `torchdata.stateful_dataloader.StatefulDataLoader(batch_size=None)`: Lightning stores the
  loader's `state_dict()` (which embeds the dataset's) in every checkpoint, and restores it on resume.
- The wrapped stream reports a `__len__` (the run's total number of batches). Without a length Lightning prefetches
  one batch to detect the end of the epoch and the saved loader state would count that unconsumed batch, resuming
  one batch late.
- The Trainer must be built with `use_distributed_sampler=False`: sharding is the dataset's job, and Lightning's
  DistributedSamplerWrapper neither applies to an IterableDataset nor resumes in order.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterator, Mapping

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from lightning_t5.eval.evaluation import TaskEvaluator, collate_eval
from lightning_t5.train.cache_wait import BuildStatus, wait_for_caches

__all__ = ["MixtureDataModule", "SizedStream"]


class SizedStream(IterableDataset):
    """An iterable dataset with a declared length and pass-through `state_dict`/`load_state_dict`.

    The length is what Lightning needs to avoid prefetching (see the module docstring); the stream itself may be
    infinite, the run stops at `trainer.max_steps`.
    """

    def __init__(self, dataset: Any, length: int) -> None:
        self.dataset = dataset
        self.length = int(length)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.dataset)

    def __len__(self) -> int:
        return self.length

    def state_dict(self) -> dict[str, Any]:
        """This rank's stream position, or, in a multi-process run, every rank's (`{"ranks": [...]}`).

        Lightning writes a single-file (DDP) checkpoint from rank 0 only, with rank 0's loader state; each rank must
        resume from its own position, so the states are gathered here (every rank reaches this point: Lightning
        builds the checkpoint dict on all ranks) and `load_state_dict` picks the rank's own."""
        state = self.dataset.state_dict()
        world = _world_size()
        if world == 1:
            return state
        states: list[Any] = [None] * world
        torch.distributed.all_gather_object(states, state)
        return {"ranks": states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "ranks" in state:
            ranks = list(state["ranks"])
            world = _world_size()
            if len(ranks) != world:
                raise RuntimeError(f"the checkpoint holds the data-loader positions of {len(ranks)} processes but this "
                                   f"run has {world}; resume with the same number of processes (trainer.devices x "
                                   "trainer.num_nodes).")
            state = ranks[torch.distributed.get_rank() if world > 1 else 0]
        self.dataset.load_state_dict(state)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class MixtureDataModule(pl.LightningDataModule):
    """Training batches from a mixture, evaluation sets from its (or the configured) supervised tasks.

    Args are plain config sections (dicts or DictConfigs): `data` (sequence_length, batch_size, pack, granularity,
    num_workers), `mixing` (MixingConfig fields), `eval` (tasks, split, max_examples, batch_size,
    rank_classification). `total_batches` is the number of loader batches the run consumes
    (max_steps * accumulate_grad_batches).
    """

    def __init__(self, mixture: str | Any, data: Mapping[str, Any], mixing: Mapping[str, Any],
                 eval: Mapping[str, Any] | None = None, seed: int = 0, total_batches: int = 1,
                 pin_memory: bool = False, imports: Any = None) -> None:
        super().__init__()
        from mixtures import MixtureRegistry

        self.mixture = MixtureRegistry.get(mixture) if isinstance(mixture, str) else mixture
        self.data_cfg = dict(data)
        self.mixing_cfg = dict(mixing)
        self.eval_cfg = dict(eval or {})
        self.seed = int(seed)
        self.total_batches = int(total_batches)
        self.pin_memory = bool(pin_memory)
        self.imports = list(imports or [])
        self.train_dataset: Any = None
        self.evaluators: list[TaskEvaluator] = []
        self._eval_built = False
        self._mixing: dict[int, Any] = {}  # world size -> resolved MixingConfig (UniMax's budget filled in)
        self.share_report: dict[str, Any] | None = None  # mixtures.shares.task_shares of this run (start-up)

    # ------------------------------------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return list(self.mixture.task_names)

    @property
    def sequence_length(self) -> dict[str, int]:
        seq = self.data_cfg["sequence_length"]
        return {"inputs": int(seq["inputs"]), "targets": int(seq["targets"])}

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def eval_tasks(self) -> list[Any]:
        """The configured eval tasks, or the mixture's supervised tasks (corpus tasks have nothing to score)."""
        from tasks import TaskRegistry

        names = self.eval_cfg.get("tasks")
        if names is not None:
            return [TaskRegistry.get(n) for n in names]
        return [t for t in self.mixture.tasks if getattr(t, "supervised", True)]

    def resolved_mixing(self, world_size: int) -> Any:
        """`mixing.*` with what depends on the run filled in (UniMax's budget from the run's steps, computed once)."""
        from mixtures import MixingConfig
        from mixtures.shares import resolve_mixing

        if world_size not in self._mixing:
            mixing = MixingConfig.from_dict({k: v for k, v in self.mixing_cfg.items()
                                             if v is not None or k in ("max_examples", "max_passes")})
            self._mixing[world_size] = resolve_mixing(
                self.mixture, mixing, sequence_length=self.sequence_length, steps=self.total_batches,
                batch_size=int(self.data_cfg["batch_size"]), world_size=world_size,
                pack=bool(self.data_cfg.get("pack", True)),
                granularity=str(self.data_cfg.get("granularity", "example")), seed=self.seed)
        return self._mixing[world_size]

    def make_train_dataset(self, rank: int = 0, world_size: int = 1, num_workers: int = 0) -> Any:
        from mixtures import MixtureDataset

        return MixtureDataset(
            self.mixture, split="train", sequence_length=self.sequence_length,
            batch_size=int(self.data_cfg["batch_size"]), mixing=self.resolved_mixing(world_size),
            pack=bool(self.data_cfg.get("pack", True)), granularity=str(self.data_cfg.get("granularity", "example")),
            seed=self.seed, rank=rank, world_size=world_size, num_workers=num_workers,
        )

    def prepare_training_data(self) -> dict[str, dict[str, float]]:
        """Before anything slow: every training task's token cache, then the repetition guard.

        A streaming task (C4 from the hub, streamed files) must have been cached offline: without its cache this
        raises with the exact ``python -m tasks cache ...`` command. Local random-access tasks are cached on first
        use by local rank 0 only; the other ranks wait for the caches' COMPLETE markers (a file barrier: this runs
        before the process group exists), and stop within minutes, with the reason, if rank 0 fails or dies while
        building (`lightning_t5.train.cache_wait`). Then each task's size and shares (``mixtures.shares.task_shares``,
        the computation `python -m mixtures show` prints) are printed (rank 0) and kept in ``share_report``, and
        ``mixing.max_passes`` is checked against the planned passes. Returns the planned passes per task.
        """
        from mixtures import MixtureError
        from mixtures.shares import format_shares, task_shares
        from tasks.cache import cache_command, open_cache

        seq, split = self.sequence_length, "train"
        tasks = [t for t in self.mixture.tasks if hasattr(t, "token_cache")]
        missing = [t for t in tasks if t.source.streaming and open_cache(t, split, seq) is None]
        if missing:
            imports = [str(m) for m in (self.imports or [])]
            cmds = "\n".join(f"    {cache_command(t, split, seq, imports)}" for t in missing)
            raise MixtureError(f"mixture {self.mixture.name!r}: task(s) {[t.name for t in missing]} stream their data "
                               f"and have no token cache yet; build it first (then rerun):\n{cmds}")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        status = BuildStatus([(t.name, split, seq) for t in tasks])  # rank 0's heartbeat / failure (cache_wait)
        if local_rank == 0:
            building = [t for t in tasks if open_cache(t, split, seq) is None]
            with status.building() if building else contextlib.nullcontext():
                for t in building:
                    start = time.time()
                    cache = t.token_cache(split, seq)
                    print(f"[local rank 0] built token cache {t.name}/{split}: {len(cache):,} rows in "
                          f"{time.time() - start:.1f} s ({cache.path})", file=sys.stderr, flush=True)
        else:
            wait_for_caches(lambda: all(open_cache(t, split, seq) is not None for t in tasks), status, local_rank)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        probe = self.make_train_dataset(0, world)
        self.share_report = task_shares(
            self.mixture, probe.mixing, sequence_length=seq, batch_size=int(self.data_cfg["batch_size"]),
            steps=self.total_batches, world_size=world, pack=probe.pack, granularity=probe.granularity,
            seed=self.seed, dataset=probe)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"mixture {self.mixture.name}: each task's size, planned shares and planned passes over its data "
                  "in this run\n"
                  + format_shares(self.share_report), flush=True)
        max_passes = self.mixing_cfg.get("max_passes", 100.0)
        planned = {n: {"size": t["size"], "examples": t["examples"], "passes": t["passes"]}
                   for n, t in self.share_report["tasks"].items()}
        return probe.check_passes(self.total_batches, None if max_passes is None else float(max_passes), planned)

    def shares_record(self) -> dict[str, Any]:
        """Planned and drawn shares per task, by examples and tokens (``mixtures.shares.shares_record``): the
        sampler's counters of every rank, summed (collective under torch.distributed: every rank calls it)."""
        from mixtures.shares import shares_record, task_shares

        if self.share_report is None or self.train_dataset is None:
            return {}
        ds, world = self.train_dataset, _world_size()
        if self.share_report["world_size"] != world:  # a launcher that sets WORLD_SIZE only after the start-up
            self.share_report = task_shares(
                self.mixture, ds.mixing, sequence_length=self.sequence_length, batch_size=ds.batch_size,
                steps=self.total_batches, world_size=world, pack=ds.pack, granularity=ds.granularity, seed=self.seed,
                dataset=ds)
        local = ds.drawn()
        parts = [local]
        if _world_size() > 1:
            parts = [None] * _world_size()
            torch.distributed.all_gather_object(parts, local)
        total = {n: {"examples": sum(p[n]["examples"] for p in parts), "tokens": sum(p[n]["tokens"] for p in parts)}
                 for n in local}
        return shares_record(self.share_report, total)

    def setup(self, stage: str | None = None) -> None:
        rank, world = self._rank_world()
        if stage in (None, "fit") and self.train_dataset is None:
            # data.num_workers processes materialize batches that this process plans (once per rank)
            self.train_dataset = self.make_train_dataset(rank, world, int(self.data_cfg.get("num_workers", 0)))
        if not self._eval_built:
            max_in = self.sequence_length["inputs"]
            self.evaluators = [
                TaskEvaluator(task, split=self.eval_cfg.get("split", "validation"),
                              max_examples=self.eval_cfg.get("max_examples"), max_input_length=max_in,
                              rank_classification=bool(self.eval_cfg.get("rank_classification", False)))
                for task in self.eval_tasks()
            ]
            self._eval_built = True

    # ------------------------------------------------------------------------------------------------------------
    def train_dataloader(self) -> Any:
        from torchdata.stateful_dataloader import StatefulDataLoader

        # no loader workers: the dataset's own pool (data.num_workers) materializes while this process plans, so the
        # plan is computed once per rank and the state after each yielded batch is exact
        return StatefulDataLoader(
            SizedStream(self.train_dataset, self.total_batches), batch_size=None, num_workers=0,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> list[DataLoader]:
        rank, world = self._rank_world()
        return [
            DataLoader(ev.dataset(rank, world), batch_size=int(self.eval_cfg.get("batch_size", 64)), shuffle=False,
                       collate_fn=collate_eval, pin_memory=self.pin_memory)
            for ev in self.evaluators
        ]

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, Mapping):
            return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

