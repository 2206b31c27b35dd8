"""Before the first training step of a multi-process run, check that every rank trains the same thing.

Each rank resolves its config, mixture, vocabulary and caches on its own (on multi-node jobs from its own copy of the
code and its own cache directory). A rank with another seed, other mixing rates, another vocabulary or stale caches
would train silently on different data, and a rank with another per-process batch size would break the
"global batch = batch_size x data-parallel size" arithmetic the loss normalisation relies on. `RankAgreement`
all-gathers one small record per rank and stops with a ConfigError naming the first key that differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from lightning_t5.errors import ConfigError

__all__ = ["RankAgreement", "check_rank_agreement", "rank_record"]

_KEYS = ("seed", "mixture_rates", "vocab_fingerprint", "cache_fingerprints", "data.batch_size",
         "trainer.accumulate_grad_batches")


def rank_record(seed: int, vocab_fingerprint: str | None, datamodule: Any, accumulate: int) -> dict[str, Any]:
    """What must agree across ranks, as seen by this rank.

    The caches are compared by what this rank's sampler actually opened: each token cache's key, rows, tokens and
    the content hash computed when it was built (``tasks.cache``), so two nodes whose caches share a key but not
    their contents (another ``--max-tokens``, a hub dataset that changed under its name) stop here."""
    dataset = getattr(datamodule, "train_dataset", None)
    rates = {k: round(float(v), 12) for k, v in dataset.target_shares(0).items()} if dataset is not None else None
    caches = dict(dataset.fingerprints) if dataset is not None else None
    return {"seed": int(seed), "mixture_rates": rates, "vocab_fingerprint": vocab_fingerprint,
            "cache_fingerprints": caches, "data.batch_size": int(datamodule.data_cfg["batch_size"]),
            "trainer.accumulate_grad_batches": int(accumulate)}


def check_rank_agreement(records: Sequence[Mapping[str, Any]]) -> None:
    """Raise ConfigError naming the first key whose value differs between ranks (records are in rank order).

    `data.batch_size` is per process, so the global batch is data.batch_size x data-parallel size: it divides over
    the data-parallel ranks exactly when every rank has the same `data.batch_size` (and accumulation), checked here.
    """
    if not records:
        return
    for key in _KEYS:
        values = [r.get(key) for r in records]
        for rank, value in enumerate(values):
            if value != values[0]:
                detail = ""
                if isinstance(value, Mapping) and isinstance(values[0], Mapping):
                    keys = sorted(k for k in set(value) | set(values[0]) if value.get(k) != values[0].get(k))
                    detail = f" (differs for: {', '.join(map(str, keys[:5]))})"
                raise ConfigError(
                    f"Ranks disagree on '{key}'{detail}: rank 0 has {values[0]!r}, rank {rank} has {value!r}. Every "
                    f"process must run the same config, code and data caches (check the launcher's per-rank "
                    f"environment; token caches are compared by the content hash of their files: build them once "
                    f"on storage every node reads, or from the same source with the same `python -m tasks cache` "
                    f"command everywhere).")


class RankAgreement(pl.Callback):
    """Runs `check_rank_agreement` over all ranks at the start of training (no-op in a single process)."""

    def __init__(self, seed: int, vocab_fingerprint: str | None) -> None:
        self.seed = int(seed)
        self.vocab_fingerprint = vocab_fingerprint

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return
        record = rank_record(self.seed, self.vocab_fingerprint, trainer.datamodule, trainer.accumulate_grad_batches)
        gathered: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, record)
        check_rank_agreement(gathered)
