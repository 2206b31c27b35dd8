"""The mixing sampler: a deterministic, sharded, resumable stream of ready batches.

Design (why it is built this way)
---------------------------------
* **A plan, then tokens.** Which task and which example each batch slot gets (and, when packing, where it goes)
  is cheap metadata: task draws, per-task counters and example lengths. Every dataloader worker computes the
  whole plan of its rank, but materializes (gathers tokens, runs ``task.finalize``, packs) only the batches
  ``b ≡ worker_id (mod num_workers)``. The batch sequence is therefore a function of
  ``(seed, rank, world_size, config)`` only, never of ``num_workers``, and torch/torchdata's round-robin over
  workers returns the batches in plan order.
* **Each task's stream** is a permutation of the task's token cache per task-epoch, a keyed bijection
  (:mod:`mixtures.permutation`) of ``(seed, task name, pass, task epoch)`` computed on demand, repeated (T5 re-reads
  small tasks). Tokens and offsets are read through ``np.memmap`` (``tasks.Task.token_cache``): a process's memory
  does not grow with corpus size, and planning an example costs O(1) (its lengths come from the cached offsets and
  the objective's length arithmetic, never from running the objective). Random objectives get the seeds
  ``tasks.example_seed(seed, task.name, epoch_key, row)`` so an example's noise does not depend on batching.
* **Draws.** ``granularity="example"`` (T5): every example's task is drawn from the mixture's shares.
  ``granularity="batch"`` (MT-DNN/jiant): one task per step (the same on every rank), all rows from it.
  Draws at step ``s`` come from a generator seeded by ``(seed, pass, s)`` (plus the rank in packed mode) with the
  shares of the stage holding ``s`` (:mod:`mixtures.stages`: static rates, schedules, fixed stage lists and adaptive
  methods are all stage lists), so the stream is a function of ``(seed, stages, step)`` alone.
* **Data parallel.** Padding mode: the plan is the *global* batch of ``world_size * batch_size`` examples and rank
  ``r`` takes rows ``[r*B, (r+1)*B)``, so concatenating ranks reproduces the single-process batch. Packing mode:
  each task's stream is sharded across ranks (rank ``r`` takes positions ``p ≡ r mod world_size``), each rank
  draws and packs its own examples; no example is duplicated or lost across ranks.
* **Passes.** ``epoch_mode="all_seen"`` ends a pass once every task with a positive share has been read
  completely (the rest of the pass keeps the mixture's rates; finished tasks start their next task-epoch). With
  padding all ranks end at the same step. With packing each rank ends when *its* shard is exhausted, so ranks
  may end a few steps apart: under DDP use padding for ``all_seen`` or cap the pass with ``num_batches``.
* **Resume.** The state is a compact cursor (pass, step, per-task counters, a carried draw, observed counts), the
  added rate stages and the adaptive method's state. ``state_dict()`` is the cursor after the last batch yielded by
  this process/worker, which is what ``torchdata.stateful_dataloader.StatefulDataLoader`` snapshots per worker.
* **Adaptive rates.** ``mixing.adaptive`` attaches an :class:`mixtures.stages.AdaptiveController`: the training loop
  calls :meth:`MixtureDataset.observe` after every step with the per-task losses summed over ranks, and the method's
  proposal becomes the stage of the block after next. Planning happens in this process (a 0-worker loader; the
  dataset's own pool only materializes), so the stages it appends are the ones the next plans read.

What the training code must do (Lightning)
------------------------------------------
Wrap the dataset in ``StatefulDataLoader(ds, batch_size=None, num_workers=N)`` (it yields ready batches), pass
``use_distributed_sampler=False`` to the Trainer (the dataset shards itself by ``rank``/``world_size``), build one
dataset per rank with ``rank=trainer.global_rank, world_size=trainer.world_size``, pass ``num_batches`` (e.g.
``max_steps * accumulate_grad_batches``) so that ``__len__`` is defined and true (without a length Lightning
prefetches a batch and resumes one batch off), do not read ``trainer.estimated_stepping_batches`` in
``configure_optimizers`` (Lightning issue 20550), and for ``epoch_mode="all_seen"`` call ``set_epoch`` at each
epoch start.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import itertools
import logging
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tasks.utils import example_seed

from .errors import MixtureError
from .mixture import Mixture
from .packing import FirstFitPacker, assemble, compact_offsets, to_torch
from .permutation import FeistelPermutation
from .rates import MixingConfig
from .stages import Stages, fixed_stages

#: How a batch's rows choose their task (the one list; `lightning_t5.train.schema` validates `data.granularity`
#: with it).
GRANULARITIES: tuple[str, ...] = ("example", "batch")
EPOCH_MODES: tuple[str, ...] = ("continuous", "all_seen")

log = logging.getLogger(__name__)

_TAG_PADDED, _TAG_PACKED, _TAG_BATCH, _TAG_PERM = 1, 2, 3, 4
_PASS_STRIDE = 1 << 32  # epoch key = pass * stride + task epoch (stable seeds per pass)
_STATE_VERSION = 1


def _name_key(name: str) -> int:
    """Stable 64-bit key of a task name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _example_seeds(seed: int, name: str, epoch: int, rows: np.ndarray) -> np.ndarray:
    """``tasks.example_seed(seed, task, epoch, row)``: an example's noise depends on nothing else."""
    return np.asarray(example_seed(seed, name, epoch, np.asarray(rows, np.int64)), dtype=np.uint64)


class _ArrowStore:
    """Duck-typed tasks without a token cache (e.g. :class:`mixtures.testing.SyntheticTask`): the Arrow columns of
    ``task.tokenized(split)`` as flat numpy arrays (in memory; real ``tasks.Task`` objects are memory-mapped)."""

    def __init__(self, task: Any, split: str, sequence_length: Mapping[str, int]) -> None:
        ds = task.tokenized(split, sequence_length)
        if getattr(ds, "_indices", None) is not None:
            ds = ds.flatten_indices()
        self.rows = len(ds)
        self.fingerprint = str(getattr(ds, "_fingerprint", f"rows:{self.rows}"))
        self._cols: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for col in ("inputs", "targets"):
            if col not in ds.column_names:
                raise MixtureError(f"task {task.name!r}: tokenized({split!r}) has no {col!r} column "
                                   f"(columns: {ds.column_names}).")
            arr = ds.data.column(col).combine_chunks()
            self._cols[col] = (arr.offsets.to_numpy().astype(np.int64), arr.values.to_numpy(zero_copy_only=False))

    def __len__(self) -> int:
        return self.rows

    def column(self, col: str) -> tuple[np.ndarray, np.ndarray]:
        return self._cols[col]


def _open_store(task: Any, split: str, sequence_length: Mapping[str, int]) -> Any:
    """The task's memory-mapped token cache (``tasks.Task.token_cache``), else its Arrow columns."""
    if hasattr(task, "token_cache"):
        try:
            return task.token_cache(split, sequence_length)
        except MixtureError:
            raise
        except ValueError as e:  # TaskError: missing offline cache of a streaming task, bad data, ...
            raise MixtureError(str(e)) from e
    return _ArrowStore(task, split, sequence_length)


class TaskSource:
    """Random access to one task's tokenized split, read through memory maps (no copy, O(1) memory per example).

    Row order per task-epoch is a keyed bijection (:class:`FeistelPermutation`) computed on demand; example
    lengths for planning come from the cached offsets and, for random objectives, from the task's length
    arithmetic (``task.example_lengths``), never from running the objective.
    """

    def __init__(self, task: Any, split: str, sequence_length: Mapping[str, int]) -> None:
        self.task = task
        self.name = task.name
        self.store = _open_store(task, split, sequence_length)
        self.n = len(self.store)
        if self.n == 0:
            raise MixtureError(f"task {self.name!r} has no examples in split {split!r}; it cannot be sampled.")
        self.fingerprint = str(self.store.fingerprint)
        self.sequence_length = dict(sequence_length)
        self.supervised = bool(getattr(task, "supervised", True))
        self._perms: dict[tuple[int, int, int], FeistelPermutation] = {}
        self._bounds: dict[tuple[int, int], tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_perms": {}}

    def _col(self, col: str) -> tuple[np.ndarray, np.ndarray]:
        return self.store.column(col)

    def permutation(self, seed: int, pass_: int, epoch: int) -> FeistelPermutation:
        """The row order of one task-epoch (a bijection of [0, n), O(1) memory)."""
        key = (seed, pass_, epoch)
        perm = self._perms.get(key)
        if perm is None:
            ss = np.random.SeedSequence([seed, _TAG_PERM, _name_key(self.name), pass_, epoch])
            perm = FeistelPermutation(self.n, int(ss.generate_state(1, np.uint64)[0]))
            if len(self._perms) >= 4:
                self._perms.pop(next(iter(self._perms)))
            self._perms[key] = perm
        return perm

    def rows(self, seed: int, pass_: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Task-stream positions -> (dataset rows, epoch keys)."""
        epochs, idx = np.divmod(np.asarray(positions, np.int64), self.n)
        rows = np.empty_like(idx)
        for e in np.unique(epochs):
            sel = epochs == e
            rows[sel] = self.permutation(seed, pass_, int(e))(idx[sel])
        return rows, pass_ * _PASS_STRIDE + epochs

    def row(self, seed: int, pass_: int, position: int) -> tuple[int, int]:
        """Scalar fast path of :meth:`rows`: (dataset row, epoch key) of one task-stream position."""
        epoch, i = divmod(position, self.n)
        return self.permutation(seed, pass_, epoch).at(i), pass_ * _PASS_STRIDE + epoch

    def raw_lengths(self, row: int) -> tuple[int, int]:
        (io, _), (to, _) = self._col("inputs"), self._col("targets")
        return int(io[row + 1] - io[row]), int(to[row + 1] - to[row])

    def lengths(self, row: int) -> tuple[int, int]:
        """Lengths of the final example of ``row`` (exact for supervised tasks and span corruption; an upper bound
        for objectives whose output length is random), before truncation to the sequence length."""
        li, lt = self.raw_lengths(row)
        if self.supervised:
            return li, lt
        got = self._bounds.get((li, lt))
        if got is None:
            fn = getattr(self.task, "example_lengths", None)
            if fn is None:  # no length arithmetic: one full row each (always fits)
                got = (self.sequence_length["inputs"], self.sequence_length["targets"])
            else:
                bi, bt = fn(np.array([li]), np.array([lt]), self.sequence_length)
                got = (int(bi[0]), int(bt[0]))
            if len(self._bounds) < 65536:
                self._bounds[(li, lt)] = got
        return got

    def mean_tokens(self) -> float:
        """Mean tokens (inputs + targets, EOS included, after truncation to the sequence length) of this task's final
        examples, over every cached row, by the same length arithmetic the planner uses (vectorised)."""
        li = np.diff(np.asarray(self._col("inputs")[0], np.int64))
        lt = np.diff(np.asarray(self._col("targets")[0], np.int64))
        if not self.supervised:
            fn = getattr(self.task, "example_lengths", None)
            if fn is None:
                li = np.full_like(li, self.sequence_length["inputs"])
                lt = np.full_like(lt, self.sequence_length["targets"])
            else:
                li, lt = fn(li, lt, self.sequence_length)
        li = np.minimum(li, self.sequence_length["inputs"])
        lt = np.minimum(lt, self.sequence_length["targets"])
        return float((li + lt).mean()) if li.size else 0.0

    def get(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of one cached row (int32)."""
        (io, iv), (to, tv) = self._col("inputs"), self._col("targets")
        return (np.asarray(iv[io[row]:io[row + 1]], np.int32), np.asarray(tv[to[row]:to[row + 1]], np.int32))

    def fetch(self, rows: np.ndarray, epoch_keys: np.ndarray, seed: int,
              sequence_length: Mapping[str, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Final examples (``task.finalize`` applied) for ``rows``; untruncated."""
        batch = {c: [np.asarray(vals[off[r]:off[r + 1]], np.int32) for r in rows]
                 for c, (off, vals) in ((c, self._col(c)) for c in ("inputs", "targets"))}
        seeds = np.empty(len(rows), np.uint64)
        for e in np.unique(epoch_keys):
            sel = epoch_keys == e
            seeds[sel] = _example_seeds(seed, self.name, int(e), rows[sel])
        out = self.task.finalize(batch, seeds, dict(sequence_length))
        return ([np.asarray(x) for x in out["inputs"]], [np.asarray(x) for x in out["targets"]])


_POOLED: dict[int, Any] = {}  # datasets being iterated with a materialize pool (inherited by the forked workers)
_POOL_DATASET: list[Any] = []


def _pool_init(key: int) -> None:
    """A forked materialize worker: one thread, its dataset, and signal handling of its own. The fork inherits the
    training process's handlers: Lightning's SIGTERM handler logs and returns, so `pool.terminate()` (SIGTERM) would
    not end the worker and `pool.join()` would wait forever at the end of a run; the terminal's Ctrl-C is the
    training process's to handle (it saves a checkpoint), not the workers'."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    _POOL_DATASET[:] = [_POOLED[key]]


def _close_pool(pool: Any, pending: list, wait_s: float = 60.0) -> None:
    """End a materialize pool whose stream stopped, possibly with batches still in flight (a closed generator).

    ``Pool.terminate()`` with results outstanding races its own result-handler thread (CPython raises "Cannot have
    cache with result_hander not alive" and leaves the workers running, so ``join()`` never returns). The in-flight
    batches (at most two per worker) are awaited first, so the pool's cache is empty when it is terminated; a worker
    that died leaves its result unanswered, and after ``wait_s`` the workers are ended directly.
    """
    for result in pending:
        result.wait(wait_s)
    try:
        pool.terminate()
    except AssertionError:  # the race above, when a result never came back
        for proc in pool._pool:
            proc.kill()
    pool.join()


def _pool_materialize(plan: Any, pass_: int) -> tuple[dict[str, torch.Tensor], int, int, int, np.ndarray]:
    """A pool worker: one planned batch's tokens, and the counters materializing it adds."""
    ds = _POOL_DATASET[0]
    scratch = _Cursor(pass_=pass_, task_tokens=np.zeros(len(ds.task_names), np.int64))
    batch = ds._materialize(plan, scratch)
    return batch, scratch.truncated, scratch.real_tokens, scratch.slot_tokens, scratch.task_tokens


@dataclass
class _Cursor:
    pass_: int = 0
    step: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pending: int = -1
    observed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    done: bool = False
    truncated: int = 0
    real_tokens: int = 0
    slot_tokens: int = 0
    task_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # tokens built per task

    def to_state(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "pass": self.pass_, "step": self.step, "counts": self.counts.tolist(),
                "pending": self.pending, "observed": self.observed.tolist(), "done": self.done,
                "truncated": self.truncated, "real_tokens": self.real_tokens, "slot_tokens": self.slot_tokens,
                "task_tokens": self.task_tokens.tolist()}

    @classmethod
    def from_state(cls, sd: Mapping[str, Any], num_tasks: int) -> _Cursor:
        if sd.get("version") != _STATE_VERSION or len(sd["counts"]) != num_tasks:
            raise MixtureError(f"cannot load sampler state (version {sd.get('version')}, {len(sd.get('counts', []))} "
                               f"tasks) into a mixture of {num_tasks} tasks (state version {_STATE_VERSION}).")
        return cls(int(sd["pass"]), int(sd["step"]), np.asarray(sd["counts"], np.int64), int(sd["pending"]),
                   np.asarray(sd["observed"], np.int64), bool(sd["done"]), int(sd.get("truncated", 0)),
                   int(sd.get("real_tokens", 0)), int(sd.get("slot_tokens", 0)),
                   np.asarray(sd.get("task_tokens", [0] * num_tasks), np.int64))


@dataclass
class _Plan:
    step: int
    task_ids: np.ndarray
    positions: np.ndarray
    placements: np.ndarray | None = None  # [n, 4]: row, enc offset, dec offset, segment id (packed mode)


class MixtureDataset(torch.utils.data.IterableDataset):
    """A torch ``IterableDataset`` of ready batches (dicts of tensors, the contract's feature names and dtypes).

    Args:
        mixture: a :class:`Mixture` or a registry name.
        split: data split of every task.
        sequence_length: ``{"inputs": L_in, "targets": L_out}``.
        batch_size: rows per batch *per rank*.
        mixing: :class:`MixingConfig` or mapping (``None`` fields take the mixture's defaults); its ``stages`` and
            ``adaptive`` fields make the rates change during training (:mod:`mixtures.stages`).
        pack: pack several examples per row (T5) or pad one example per row.
        granularity: ``"example"`` (T5: each example's task drawn) or ``"batch"`` (MT-DNN: one task per batch).
        epoch_mode: ``"continuous"`` (infinite; tasks reshuffled and repeated) or ``"all_seen"`` (a pass ends once every
            task with a positive share has been seen completely once).
        seed, rank, world_size: determinism and data-parallel sharding.
        num_batches: stop after this many batches per rank; makes ``__len__`` true (recommended under Lightning).
        log_every: log observed vs target shares every this many batches (0: never).
        num_workers: processes of the dataset's own pool that materialize batches while this process plans them, so
            the plan is computed once per rank (use with a loader of 0 workers; ``MixtureDataModule`` does). With
            torch dataloader workers instead, every worker plans the whole stream and materializes its share.
    """

    def __init__(self, mixture: Mixture | str, split: str = "train", sequence_length: Mapping[str, int] | None = None,
                 batch_size: int = 8, mixing: MixingConfig | Mapping | None = None, pack: bool = True,
                 granularity: str = "example", seed: int = 0, rank: int = 0, world_size: int = 1,
                 epoch_mode: str = "continuous", num_batches: int | None = None, log_every: int = 0,
                 validate: bool = True, num_workers: int = 0) -> None:
        super().__init__()
        if isinstance(mixture, str):
            from .mixture import MixtureRegistry
            mixture = MixtureRegistry.get(mixture)
        if sequence_length is None or not {"inputs", "targets"} <= set(sequence_length):
            raise MixtureError(f"sequence_length must be {{'inputs': int, 'targets': int}}, got {sequence_length!r}.")
        self.sequence_length = {"inputs": int(sequence_length["inputs"]), "targets": int(sequence_length["targets"])}
        if min(self.sequence_length.values()) <= 0:
            raise MixtureError(f"sequence_length values must be positive, got {self.sequence_length}.")
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise MixtureError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if granularity not in GRANULARITIES:
            raise MixtureError(f"granularity={granularity!r}; valid: {', '.join(GRANULARITIES)}.")
        if epoch_mode not in EPOCH_MODES:
            raise MixtureError(f"epoch_mode={epoch_mode!r}; valid: {', '.join(EPOCH_MODES)}.")
        if not (0 <= rank < world_size):
            raise MixtureError(f"rank {rank} must be in [0, world_size={world_size}).")
        if num_batches is not None and num_batches < 0:
            raise MixtureError(f"num_batches must be non-negative or None, got {num_batches}.")
        self.mixture, self.split, self.batch_size = mixture, split, batch_size
        self.mixing = MixingConfig.from_dict(mixing)
        self.pack, self.granularity, self.epoch_mode = pack, granularity, epoch_mode
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_batches, self.log_every = num_batches, log_every
        self.num_workers = int(num_workers)  # materialize processes of this dataset's own pool (plans made once)
        if validate:
            mixture.validate(split, self.mixing, self.sequence_length)
        self.task_names = mixture.task_names
        self._tasks = mixture.tasks
        effective = self.mixing.merged_over(mixture.defaults)
        # the rates over training: the config's own (one stage, or a schedule's stage per step), then mixing.stages,
        # then whatever the adaptive method appends (the sampler reads only this)
        self.stages = Stages(self.task_names, mixture.rate_schedule(split, self.mixing, self.sequence_length),
                             schedule=effective.schedule)
        fixed_stages(self.stages, effective.stages)
        from .adaptive import build_controller

        self.adaptive = build_controller(effective, self.stages)
        if self.adaptive is not None and self.num_workers and self.adaptive.every <= 2 * self.num_workers:
            raise MixtureError(f"mixing.adaptive_every={self.adaptive.every} must exceed the steps the sampler plans "
                               f"ahead (2 x data.num_workers = {2 * self.num_workers}).")
        self._probs_at = self.stages
        start = self.stages.base(0)
        end = self.stages.base(1 << 62)
        self._active = (start > 0) | (end > 0)
        for stage in self.stages.added:
            self._active |= stage.shares > 0
        # every task's token store, opened once per rank (memory maps: workers inherit only paths and small state)
        self._sources: dict[int, TaskSource] = {
            t: TaskSource(task, split, self.sequence_length) for t, task in enumerate(self._tasks)}
        self._sizes = np.array([self._sources[t].n for t in range(len(self._tasks))], np.int64)
        self.fingerprints = {self.task_names[t]: src.fingerprint for t, src in self._sources.items()}
        self._epoch = 0
        self._cursor: _Cursor | None = None
        self._last: _Cursor | None = None

    # ------------------------------------------------------------------------------------------ public
    def __len__(self) -> int:
        if self.num_batches is None or self.epoch_mode == "all_seen":
            raise TypeError("MixtureDataset has no length: the stream is infinite (pass num_batches=...) or ends when "
                            "every task has been seen (epoch_mode='all_seen').")
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the pass (``all_seen`` epochs, or a new stream per epoch). Does not touch a loaded mid-pass state."""
        if self._cursor is None or self._cursor.pass_ != epoch:
            self._epoch = int(epoch)
            if self._cursor is not None and self._cursor.pass_ != epoch:
                self._cursor = None

    def state_dict(self) -> dict[str, Any]:
        """Cursor after the last batch this process/worker yielded (exact mid-epoch resume), the rate stages and the
        adaptive method's state (read when the checkpoint is written: it holds every step observed so far)."""
        cur = self._cursor or self._fresh_cursor()
        return {**cur.to_state(), "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "fingerprints": dict(self.fingerprints), "rates": self._rates_signature(),
                "stages": self.stages.state_dict(),
                "adaptive": self.adaptive.state_dict() if self.adaptive is not None else None}

    def observe(self, step: int, loss_sums: Any, token_counts: Any) -> Any:
        """Feed one training step's per-task loss sums and target-token counts (summed over every rank) to the
        adaptive method (``mixing.adaptive``); returns the stage it appended at a block boundary, if any."""
        if self.adaptive is None:
            raise MixtureError("observe() needs an adaptive method (mixing.adaptive).")
        return self.adaptive.observe(step, loss_sums, token_counts)

    def _rates_signature(self) -> dict[str, list[float]]:
        """Each task's share at the first step and at the end of the rate schedule (what decides the stream)."""
        start, end = self.stages.base(0), self.stages.base(1 << 62)
        return {n: [float(start[i]), float(end[i])] for i, n in enumerate(self.task_names)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("seed", "rank", "world_size"):
            if key in state and state[key] != getattr(self, key):
                raise MixtureError(f"sampler state was saved with {key}={state[key]} but this dataset has "
                                   f"{key}={getattr(self, key)}; resume with the same seed and data-parallel layout.")
        self._check_same_data(state)
        self._load_stages(state)
        self._cursor = _Cursor.from_state(state, len(self._tasks))
        self._epoch = self._cursor.pass_

    def _load_stages(self, state: Mapping[str, Any]) -> None:
        """The added stages and the adaptive method's state, checked against this run's mixing settings."""
        saved_adaptive = state.get("adaptive")
        if (saved_adaptive is None) != (self.adaptive is None):
            was = saved_adaptive.get("method") if saved_adaptive else None
            now = self.adaptive.name if self.adaptive is not None else None
            raise MixtureError(f"cannot resume: the checkpoint was trained with mixing.adaptive={was!r}, this run has "
                               f"mixing.adaptive={now!r}; resume with the original mixing settings.")
        if "stages" in state:
            self.stages.load_state_dict(state["stages"])
        if self.adaptive is not None:
            self.adaptive.load_state_dict(saved_adaptive)

    def _check_same_data(self, state: Mapping[str, Any]) -> None:
        """Resume safety: the saved stream was drawn from these exact caches at these exact rates."""
        saved_fp = state.get("fingerprints")
        if saved_fp is not None:
            if list(saved_fp) != self.task_names:
                raise MixtureError(f"sampler state was saved for tasks {list(saved_fp)} but this mixture has "
                                   f"{self.task_names}; resume with the same mixture.")
            changed = [n for n in self.task_names if saved_fp[n] != self.fingerprints[n]]
            if changed:
                details = "; ".join(f"{n}: saved {saved_fp[n]}, now {self.fingerprints[n]}" for n in changed)
                raise MixtureError(f"cannot resume: the data of task(s) {changed} changed since the checkpoint (cache "
                                   f"fingerprints {details}). The resumed stream would differ silently; resume "
                                   "with the original data/vocabulary/preprocessors, or start a new run.")
        saved_rates = state.get("rates")
        if saved_rates is not None:
            now = self._rates_signature()
            diff = {n: (saved_rates.get(n), now[n]) for n in now
                    if saved_rates.get(n) is None or not np.allclose(saved_rates[n], now[n], rtol=1e-9, atol=1e-12)}
            if diff:
                details = "; ".join(f"{n}: saved {a}, now {b}" for n, (a, b) in diff.items())
                raise MixtureError(f"cannot resume: the mixing rates changed since the checkpoint ({details}); "
                                   "resume with the original mixing.* settings (and data sizes), or start a new run.")

    def planned_passes(self, num_batches: int, probe_batches: int = 16) -> dict[str, dict[str, float]]:
        """Per task: its size, the examples ``num_batches`` planned batches (all ranks) draw from it, and how many
        passes over its data that makes. Packing's examples per batch are measured on the first batches' plan."""
        per_batch = self.examples_per_step(probe_batches)
        shares = np.maximum(self.stages.base(0), self.stages.base(1 << 62))
        for stage in self.stages.added:
            shares = np.maximum(shares, stage.shares)
        out = {}
        for i, name in enumerate(self.task_names):
            examples = float(num_batches * per_batch * shares[i])
            out[name] = {"size": int(self._sizes[i]), "examples": examples,
                         "passes": examples / max(int(self._sizes[i]), 1)}
        return out

    def examples_per_step(self, probe_batches: int = 16) -> float:
        """Examples one step draws over all ranks: the global batch when padding; when packing, measured on the plan
        of the first ``probe_batches`` batches at the config's rates (no tokens built)."""
        if not self.pack:
            return float(self.batch_size * self.world_size)
        cur = self._fresh_cursor()
        steps = 0
        for _ in itertools.islice(self._plans(cur, self.stages.base), probe_batches):
            steps += 1
        return float(cur.observed.sum() / max(steps, 1) * self.world_size)  # this rank's rows -> all ranks

    def check_passes(self, num_batches: int, max_passes: float | None,
                     passes: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
        """Log each task's planned passes; raise if one exceeds ``max_passes`` (silent repetition)."""
        passes = passes if passes is not None else self.planned_passes(num_batches)
        log.info("planned passes over each task's data in %d batches: %s", num_batches,
                 ", ".join(f"{n} {p['passes']:.3g}" for n, p in passes.items()))
        if max_passes is None:
            return passes
        over = {n: p for n, p in passes.items() if p["passes"] > max_passes}
        if over:
            lines = "; ".join(f"task {n!r} has {p['size']:,} examples and {num_batches:,} planned steps draw about "
                              f"{p['examples']:,.0f} from it = {p['passes']:,.1f} passes" for n, p in over.items())
            corpus = [self._sources[self.task_names.index(n)].task for n in over]
            corpus = [t for t in corpus if not getattr(t, "supervised", True) and hasattr(t, "token_cache")]
            how = ""
            if corpus:
                from tasks.cache import corpus_hint

                factor = over[corpus[0].name]["passes"] / max_passes  # how much more text the task needs
                how = " " + corpus_hint(corpus[0], self.split, self.sequence_length, factor)
            raise MixtureError(f"the run would repeat data more than mixing.max_passes={max_passes} times: {lines}. "
                               "Fix: fewer steps (trainer.max_steps), more data, a lower rate for that task, or raise "
                               f"mixing.max_passes (null disables the check).{how}")
        return passes

    def target_shares(self, step: int = 0) -> dict[str, float]:
        return dict(zip(self.task_names, self.stages.latest(step).tolist()))

    def stats(self) -> dict[str, dict[str, float]]:
        """Observed share of each task (examples this rank/worker has planned) next to its target share."""
        cur = self._cursor or self._last or self._fresh_cursor()
        total = max(int(cur.observed.sum()), 1)
        target = self.stages.latest(cur.step)
        return {n: {"target": float(target[i]), "observed": float(cur.observed[i] / total),
                    "count": int(cur.observed[i])} for i, n in enumerate(self.task_names)}

    def drawn(self) -> dict[str, dict[str, int]]:
        """Examples and tokens (after truncation, inputs + targets) this rank/worker has built per task so far."""
        cur = self._cursor or self._last or self._fresh_cursor()
        return {n: {"examples": int(cur.observed[i]), "tokens": int(cur.task_tokens[i])}
                for i, n in enumerate(self.task_names)}

    def counters(self) -> dict[str, float]:
        """Batches planned, examples truncated and packing efficiency (non-pad share of the batches this
        process/worker built)."""
        cur = self._cursor or self._last or self._fresh_cursor()
        return {"batches": cur.step, "examples": int(cur.observed.sum()), "truncated": cur.truncated,
                "packing_efficiency": cur.real_tokens / cur.slot_tokens if cur.slot_tokens else 0.0}

    def draw_counts(self, num_examples: int) -> dict[str, int]:
        """How many of the first ``num_examples`` planned examples of this rank each task gets (no tokens built
        when padding; packing needs example lengths). Does not change this dataset's state."""
        cur = self._fresh_cursor()
        n = 0
        for plan in self._plans(cur, self.stages.base if self.adaptive is not None else None):
            n += len(plan.task_ids)
            if n >= num_examples:
                break
        return dict(zip(self.task_names, cur.observed.tolist()))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        nw, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        if info is not None and self.adaptive is not None:
            raise MixtureError("mixing.adaptive needs the sampler to plan in the training process: use a loader with "
                               "num_workers=0 and MixtureDataset(num_workers=N) for parallel batch building.")
        cursor = copy.deepcopy(self._cursor) if self._cursor is not None else self._fresh_cursor()
        if cursor.done:  # a finished pass was loaded: start the next one
            self._epoch = cursor.pass_ + 1
            cursor = self._fresh_cursor()
        if self.num_workers > 0 and info is None:
            yield from self._iter_pooled(cursor)
            return
        for plan in self._plans(cursor):
            if plan.step % nw == wid:
                batch = self._materialize(plan, cursor)
                self._cursor = copy.deepcopy(cursor)
                if self.log_every and (plan.step + 1) % self.log_every == 0:
                    self._log_stats()
                yield batch
        self._last = cursor  # for stats() after the stream ended
        self._cursor = None
        self._epoch = cursor.pass_ + 1 if self.epoch_mode == "all_seen" else self._epoch

    def _iter_pooled(self, cursor: _Cursor) -> Iterator[dict[str, torch.Tensor]]:
        """Plan once in this process; ``num_workers`` forked processes materialize the batches, in plan order.

        The state after each yielded batch is known here (no worker round-robin), so resume stays exact.
        """
        ctx = torch.multiprocessing.get_context("fork")  # tensors come back through shared memory
        _POOLED[id(self)] = self
        pool = ctx.Pool(self.num_workers, initializer=_pool_init, initargs=(id(self),))
        pending: collections.deque = collections.deque()
        plans = self._plans(cursor)
        try:
            while True:
                while len(pending) < 2 * self.num_workers:
                    plan = next(plans, None)
                    if plan is None:
                        break
                    pending.append((pool.apply_async(_pool_materialize, (plan, cursor.pass_)), copy.deepcopy(cursor),
                                    plan.step))
                if not pending:
                    break
                result, snapshot, step = pending.popleft()
                batch, truncated, real, slot, task_tokens = result.get()
                for c in (cursor, *(p[1] for p in pending), snapshot):  # materialize's counters, in stream order
                    c.truncated += truncated
                    c.real_tokens += real
                    c.slot_tokens += slot
                    c.task_tokens += task_tokens
                self._cursor = snapshot
                if self.log_every and (step + 1) % self.log_every == 0:
                    self._log_stats()
                yield batch
        finally:
            _close_pool(pool, [p[0] for p in pending])
            _POOLED.pop(id(self), None)
        self._last = cursor
        self._cursor = None
        self._epoch = cursor.pass_ + 1 if self.epoch_mode == "all_seen" else self._epoch

    def as_hf_iterable_dataset(self, names: str = "hf", unbatch: bool = True):
        """This stream as a Hugging Face ``datasets.IterableDataset`` (see :mod:`mixtures.hf`)."""
        from .hf import as_hf_iterable_dataset
        return as_hf_iterable_dataset(self, names=names, unbatch=unbatch)

    # ------------------------------------------------------------------------------------------ plan
    def _fresh_cursor(self) -> _Cursor:
        n = len(self._tasks)
        return _Cursor(pass_=self._epoch, counts=np.zeros(n, np.int64), observed=np.zeros(n, np.int64),
                       task_tokens=np.zeros(n, np.int64))

    def _source(self, t: int) -> TaskSource:
        return self._sources[t]

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, *key])))

    def _draw(self, probs: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
        cdf = np.cumsum(probs)
        idx = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
        return np.minimum(idx, len(probs) - 1)

    def _all_seen(self, cur: _Cursor) -> bool:
        if self.pack:  # rank's shard of each task's first epoch: positions p < n with p ≡ rank (mod W)
            need = (self._sizes - self.rank + self.world_size - 1) // self.world_size
        else:
            need = self._sizes
        return bool(np.all((cur.counts >= need) | ~self._active))

    def _plans(self, cur: _Cursor, rates: Any = None) -> Iterator[_Plan]:
        """Yield the plan of each batch, advancing ``cur`` in place (cheap: no tokens touched when padding).
        ``rates`` (``step -> shares``) defaults to the stages; probes of an adaptive run pass the config's rates."""
        rates = rates if rates is not None else self.stages
        while not cur.done and (self.num_batches is None or cur.step < self.num_batches):
            probs = rates(cur.step)
            plan = self._plan_padded(cur, probs) if not self.pack else self._plan_packed(cur, probs)
            np.add.at(cur.observed, plan.task_ids, 1)
            cur.step += 1
            if self.epoch_mode == "all_seen" and self._all_seen(cur):
                cur.done = True
            yield plan

    def _plan_padded(self, cur: _Cursor, probs: np.ndarray) -> _Plan:
        g = self.world_size * self.batch_size
        if self.granularity == "batch":
            t = int(self._draw(probs, self._rng(_TAG_BATCH, cur.pass_, cur.step), 1)[0])
            tasks = np.full(g, t, np.int64)
            pos = cur.counts[t] + np.arange(g)
        else:
            tasks = self._draw(probs, self._rng(_TAG_PADDED, cur.pass_, cur.step), g).astype(np.int64)
            order = np.argsort(tasks, kind="stable")
            sorted_t = tasks[order]
            first = np.searchsorted(sorted_t, sorted_t, side="left")
            occ = np.empty(g, np.int64)
            occ[order] = np.arange(g) - first
            pos = cur.counts[tasks] + occ
        cur.counts += np.bincount(tasks, minlength=len(cur.counts))
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return _Plan(cur.step, tasks[lo:hi], pos[lo:hi])

    def _lengths(self, t: int, position: int, cur: _Cursor) -> tuple[int, int]:
        """Final (truncated) lengths of the example at task-stream ``position``, from cached offsets and the
        objective's length arithmetic (an upper bound for random-length objectives; see ``TaskSource.lengths``)."""
        src = self._sources[t]
        li, lt = src.lengths(src.row(self.seed, cur.pass_, position)[0])
        return min(li, self.sequence_length["inputs"]), min(lt, self.sequence_length["targets"])

    def _plan_packed(self, cur: _Cursor, probs: np.ndarray) -> _Plan:
        W, r = self.world_size, self.rank
        packer = FirstFitPacker(self.batch_size, self.sequence_length["inputs"], self.sequence_length["targets"], True)
        tasks, positions, places = [], [], []
        if self.granularity == "batch":
            fixed = int(self._draw(probs, self._rng(_TAG_BATCH, cur.pass_, cur.step), 1)[0])
            draws: Iterator[int] = itertools.repeat(fixed)
        else:
            draws = self._draw_stream(probs, cur)
        while True:
            if cur.pending >= 0 and self.granularity == "example":
                t, cur.pending = cur.pending, -1
            else:
                t = next(draws)
            p = int(cur.counts[t]) * W + r
            place = packer.add(*self._lengths(t, p, cur))
            if place is None:
                if self.granularity == "example":
                    cur.pending = t
                break
            cur.counts[t] += 1
            tasks.append(t)
            positions.append(p)
            places.append(place)
            if self.epoch_mode == "all_seen" and self._all_seen(cur):
                break
        return _Plan(cur.step, np.array(tasks, np.int64), np.array(positions, np.int64),
                     np.array(places, np.int64).reshape(-1, 4))

    def _draw_stream(self, probs: np.ndarray, cur: _Cursor) -> Iterator[int]:
        chunk, k = 4 * self.batch_size, 0
        while True:
            yield from self._draw(probs, self._rng(_TAG_PACKED, cur.pass_, self.rank, cur.step, k), chunk).tolist()
            k += 1

    # ----------------------------------------------------------------------------------- materialize
    def _materialize(self, plan: _Plan, cur: _Cursor) -> dict[str, torch.Tensor]:
        n = len(plan.task_ids)
        inputs: list[np.ndarray] = [None] * n  # type: ignore[list-item]
        targets: list[np.ndarray] = [None] * n  # type: ignore[list-item]
        groups: dict[int, list[int]] = {}
        # supervised tasks: finalize is the identity, so gather rows one by one (constant cost per example, no
        # per-task overhead: the cost per example stays flat with 1,000 tasks)
        for i, (t, p) in enumerate(zip(plan.task_ids.tolist(), plan.positions.tolist())):
            src = self._source(t)
            if src.supervised:
                inputs[i], targets[i] = src.get(src.row(self.seed, cur.pass_, p)[0])
            else:
                groups.setdefault(t, []).append(i)
        for t, sel in groups.items():  # random objectives: one finalize call per task with per-example seeds
            src = self._source(t)
            rows, ek = src.rows(self.seed, cur.pass_, plan.positions[sel])
            xs, ys = src.fetch(rows, ek, self.seed, self.sequence_length)
            for j, i in enumerate(sel):
                inputs[i], targets[i] = xs[j], ys[j]
        L_in, L_t = self.sequence_length["inputs"], self.sequence_length["targets"]
        cut = sum(1 for x, y in zip(inputs, targets) if len(x) > L_in or len(y) > L_t)
        if cut:
            cur.truncated += cut
            inputs = [x[:L_in] for x in inputs]
            targets = [y[:L_t] for y in targets]
        if plan.placements is not None:
            pl = plan.placements
            rows, seg = pl[:, 0], pl[:, 3]
            # planned lengths of random-length objectives are upper bounds: close the gaps within each row
            eo = compact_offsets(rows, seg, np.fromiter(map(len, inputs), np.int64, n))
            do = compact_offsets(rows, seg, np.fromiter(map(len, targets), np.int64, n))
        else:
            rows, eo, do, seg = np.arange(n), np.zeros(n, np.int64), np.zeros(n, np.int64), np.ones(n, np.int64)
        arrays = assemble(inputs, targets, rows, eo, do, seg, plan.task_ids, self.batch_size, L_in, L_t)
        lengths = np.fromiter(map(len, inputs), np.int64, n) + np.fromiter(map(len, targets), np.int64, n)
        cur.task_tokens += np.bincount(plan.task_ids, weights=lengths, minlength=len(cur.task_tokens)).astype(np.int64)
        cur.real_tokens += int(lengths.sum())
        cur.slot_tokens += self.batch_size * (L_in + L_t)
        return to_torch(arrays)

    def _log_stats(self) -> None:
        st = self.stats()
        parts = ", ".join(f"{n} {s['observed']:.3f}/{s['target']:.3f}" for n, s in st.items())
        c = self.counters()
        log.info("mixture %s rank %d: observed/target shares: %s; packing efficiency %.3f, %d truncated",
                 self.mixture.name, self.rank, parts, c["packing_efficiency"], c["truncated"])
