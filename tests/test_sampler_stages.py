"""Rate stages in the sampler: the stream is a function of (seed, stages, step); static rates and schedules draw
exactly what they drew before stages existed; adaptive stages come one block late and resume exactly."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from mixtures import AdaptiveMethod, AdaptiveRegistry, Mixture, MixtureDataset, MixtureError
from mixtures.testing import SyntheticTask

SEQ = {"inputs": 32, "targets": 12}

# sha256 of the first 12 batches of each configuration, recorded on the sampler before rate stages existed
# (commit c22d30c): the stage list must not change a single token of a static or scheduled stream.
GOLDEN = {
    "padded_proportional": "2aaf8efaf94573c078a44b26db1c237bd52306f0043f1d76f89a92e6181c9099",
    "packed_temperature": "597f6c21494ad67e8aee585c2c135ee0304a2f7e2465315b43456130ca66ef24",
    "packed_batch_equal": "f3fad0d8cd2e6bca2e76dc5f41502c69996db766728bb1166776dd95d9a78961",
    "padded_schedule": "770bd156efe7ceffb01e2c2df663c4bf7f051d858b6763d2ba8de2613c907fba",
    "packed_schedule_rank1": "b80e3c7198b8e6840964c0c0071c343076d6eadca9c1e7d09951993732db7f9a",
}
CASES = {
    "padded_proportional": dict(pack=False),
    "packed_temperature": dict(pack=True, mixing={"rate": "temperature", "temperature": 2.0}),
    "packed_batch_equal": dict(pack=True, granularity="batch", mixing={"rate": "equal"}),
    "padded_schedule": dict(pack=False, mixing={"rate": "equal", "schedule": {"to": {"rate": "proportional"},
                                                                              "start_step": 2, "end_step": 9}}),
    "packed_schedule_rank1": dict(pack=True, rank=1, world_size=2, mixing={
        "rate": "equal", "schedule": {"to": {"rate": "explicit", "weights": {"small": 0, "medium": 1, "large": 3,
                                                                             "corpus": 1}},
                                      "start_step": 0, "end_step": 6}}),
}


@pytest.fixture(scope="module")
def mix():
    tasks = [SyntheticTask("small", 23), SyntheticTask("medium", 57), SyntheticTask("large", 130),
             SyntheticTask("corpus", 40, supervised=False, targets_length=(4, 30))]
    return Mixture("golden_mix", tasks)


def _digest(batches) -> str:
    h = hashlib.sha256()
    for b in batches:
        for k in sorted(b):
            h.update(k.encode())
            h.update(b[k].numpy().tobytes())
    return h.hexdigest()


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("case", sorted(CASES))
def test_static_and_scheduled_streams_are_bit_identical_to_before_stages(mix, case):
    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=4, seed=3, **CASES[case])
    assert _digest(itertools.islice(iter(ds), 12)) == GOLDEN[case]


def test_fixed_stages_change_the_draws_from_their_start_on(mix):
    kw = dict(sequence_length=SEQ, batch_size=16, pack=False, seed=4, num_batches=12)
    base = list(MixtureDataset(mix, **kw))
    only_large = {"small": 0, "medium": 0, "large": 1, "corpus": 0}
    ds = MixtureDataset(mix, mixing={"stages": [{"start_step": 5, "weights": only_large},
                                                {"start_step": 9, "weights": {"small": 1}}]}, **kw)
    staged = list(ds)
    for a, b in zip(base[:5], staged[:5]):  # before the first stage: the config's rates, the same batches
        _same(a, b)
    large, small = ds.task_names.index("large"), ds.task_names.index("small")
    assert all((b["decoder_task_ids"][b["decoder_task_ids"] >= 0] == large).all() for b in staged[5:9])
    assert all((b["decoder_task_ids"][b["decoder_task_ids"] >= 0] == small).all() for b in staged[9:])
    assert [s["start_step"] for s in ds.stages.listing()] == [0, 5, 9]
    with pytest.raises(MixtureError, match="start_step"):
        MixtureDataset(mix, mixing={"stages": [{"start_step": 3, "weights": only_large},
                                               {"start_step": 3, "weights": only_large}]}, **kw)
    with pytest.raises(MixtureError, match="not in the mixture"):
        MixtureDataset(mix, mixing={"stages": [{"start_step": 0, "weights": {"nope": 1}}]}, **kw)


class Scripted(AdaptiveMethod):
    """Proposes all weight on the task with the highest mean loss seen in the block (a deterministic toy)."""

    def __init__(self, task_names, initial, *, floor: float = 0.0) -> None:
        super().__init__(task_names, initial)
        self.floor = floor
        self.sums = np.zeros(len(task_names))
        self.steps_seen: list[int] = []

    def observe(self, step, loss_sums, token_counts):
        self.steps_seen.append(step)
        self.sums += np.divide(loss_sums, token_counts, out=np.zeros_like(loss_sums), where=token_counts > 0)

    def propose(self, step):
        out = np.full(len(self.task_names), self.floor)
        out[int(np.argmax(self.sums))] += 1.0
        self.sums[:] = 0
        return out

    def state_dict(self):
        return {"sums": self.sums.tolist(), "steps_seen": list(self.steps_seen)}

    def load_state_dict(self, state):
        self.sums = np.asarray(state["sums"])
        self.steps_seen = list(state["steps_seen"])


@pytest.fixture(autouse=True)
def _scripted():
    AdaptiveRegistry.add("scripted_test", Scripted, replace=True)
    yield
    AdaptiveRegistry._registry.pop("scripted_test", None)


def _losses(batch, step: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic stand-in for the model's per-task losses: a function of the batch and the step."""
    ids = batch["decoder_task_ids"]
    counts = np.bincount(ids[ids >= 0].numpy(), minlength=k).astype(np.float64)
    sums = counts * (1.0 + ((np.arange(k) * 7 + step) % 5))
    return sums, counts


def _train(ds, n: int, start: int = 0, loader=None):
    """Consume n batches like the training loop: take a batch, then observe its losses."""
    out = []
    it = iter(loader if loader is not None else ds)
    for step in range(start, start + n):
        batch = next(it)
        out.append(batch)
        ds.observe(step, *_losses(batch, step, len(ds.task_names)))
    return out, it


@pytest.mark.parametrize("pack, num_workers", [(False, 0), (True, 0), (True, 2)])
def test_adaptive_stages_are_one_block_late_and_resume_exactly(mix, pack, num_workers):
    kw = dict(sequence_length=SEQ, batch_size=6, pack=pack, seed=7, num_batches=20, num_workers=num_workers,
              mixing={"adaptive": "scripted_test", "adaptive_every": 5, "adaptive_options": {"floor": 0.1}})
    ref_ds = MixtureDataset(mix, **kw)
    reference, _ = _train(ref_ds, 20)
    starts = [s.start for s in ref_ds.stages.added]
    assert starts == [10, 15, 20, 25]  # block k's losses decide block k + 2
    assert ref_ds.adaptive.method.steps_seen == list(range(20))
    # the appended stages really steer the draws: block 2 draws mostly from the task its stage favours
    favoured = int(np.argmax(ref_ds.stages(10)))
    ids = torch.cat([b["decoder_task_ids"].flatten() for b in reference[10:15]])
    assert (ids[ids >= 0] == favoured).float().mean() > 0.5

    # interrupted after 8 steps (mid-block), resumed from the state a checkpoint would hold
    ds = MixtureDataset(mix, **kw)
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=0)
    first, _ = _train(ds, 8, loader=loader)
    state = loader.state_dict()
    ds2 = MixtureDataset(mix, **kw)
    loader2 = StatefulDataLoader(ds2, batch_size=None, num_workers=0)
    loader2.load_state_dict(state)
    rest, _ = _train(ds2, 12, start=8, loader=loader2)
    for a, b in zip(first + rest, reference):
        _same(a, b)
    assert [(s.start, s.shares.tolist()) for s in ds2.stages.added] == \
        [(s.start, s.shares.tolist()) for s in ref_ds.stages.added]


def test_two_ranks_with_the_same_observations_use_the_same_stages(mix):
    """Padding: rank r's rows concatenate to the 1-process batch, and both ranks append identical stages from the
    reduced (identical) losses."""
    mixing = {"adaptive": "scripted_test", "adaptive_every": 3}
    single = MixtureDataset(mix, sequence_length=SEQ, batch_size=8, pack=False, seed=2, mixing=mixing)
    ranks = [MixtureDataset(mix, sequence_length=SEQ, batch_size=4, pack=False, seed=2, rank=r, world_size=2,
                            mixing=mixing) for r in (0, 1)]
    its = [iter(single), *(iter(d) for d in ranks)]
    for step in range(12):
        full, r0, r1 = (next(it) for it in its)
        for k in full:
            assert torch.equal(torch.cat([r0[k], r1[k]]), full[k]), (step, k)
        losses = _losses(full, step, 4)  # what the all-reduce gives every rank
        for ds in (single, *ranks):
            ds.observe(step, *losses)
    stages = [[(s.start, s.shares.tolist()) for s in ds.stages.added] for ds in (single, *ranks)]
    assert stages[0] == stages[1] == stages[2] and len(stages[0]) == 4


def test_adaptive_guards(mix):
    mixing = {"adaptive": "scripted_test", "adaptive_every": 2}
    with pytest.raises(MixtureError, match="plans ahead"):
        MixtureDataset(mix, sequence_length=SEQ, batch_size=4, mixing=mixing, num_workers=1)
    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=4, mixing=mixing)
    it = iter(ds)
    for _ in range(4):  # blocks 0 and 1 are known; block 2 waits for block 0's losses
        next(it)
    with pytest.raises(MixtureError, match="not decided yet"):
        next(it)
    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=4, mixing=mixing)
    with pytest.raises(MixtureError, match="expected step 0"):
        ds.observe(1, np.ones(4), np.ones(4))
    with pytest.raises(MixtureError, match="not a registered adaptive method.*Did you mean: scripted_test"):
        MixtureDataset(mix, sequence_length=SEQ, batch_size=4, mixing={"adaptive": "scripted_tst"})
    with pytest.raises(MixtureError, match=r"\['flor'\] are not options.*floor=0.0"):
        MixtureDataset(mix, sequence_length=SEQ, batch_size=4,
                       mixing={"adaptive": "scripted_test", "adaptive_options": {"flor": 1}})
    loader = StatefulDataLoader(MixtureDataset(mix, sequence_length=SEQ, batch_size=4, mixing=mixing), batch_size=None,
                                num_workers=1)
    with pytest.raises(Exception, match="plan in the training process"):
        next(iter(loader))


def test_resume_refuses_other_adaptive_settings(mix):
    kw = dict(sequence_length=SEQ, batch_size=4, pack=False, seed=1)
    ds = MixtureDataset(mix, mixing={"adaptive": "scripted_test", "adaptive_every": 3}, **kw)
    _train(ds, 4)
    state = ds.state_dict()
    with pytest.raises(MixtureError, match="mixing.adaptive='scripted_test'.*mixing.adaptive=None"):
        MixtureDataset(mix, **kw).load_state_dict(state)
    with pytest.raises(MixtureError, match="every=3"):
        MixtureDataset(mix, mixing={"adaptive": "scripted_test", "adaptive_every": 4}, **kw).load_state_dict(state)
    fixed = MixtureDataset(mix, mixing={"stages": [{"start_step": 2, "weights": {"small": 1}}]}, **kw)
    _train_fixed = fixed.state_dict()
    with pytest.raises(MixtureError, match="mixing.stages differs"):
        MixtureDataset(mix, mixing={"stages": [{"start_step": 3, "weights": {"small": 1}}]}, **kw).load_state_dict(
            _train_fixed)
