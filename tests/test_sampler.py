"""The mixing sampler: shares, determinism, exact resume (0/1/2 workers), data-parallel sharding."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from mixtures import Mixture, MixtureDataset, MixtureError
from mixtures.packing import FEATURES
from mixtures.testing import SyntheticTask

SEQ = {"inputs": 32, "targets": 12}


@pytest.fixture(scope="module")
def mix():
    tasks = [SyntheticTask("small", 23), SyntheticTask("medium", 57), SyntheticTask("large", 130),
             SyntheticTask("corpus", 40, supervised=False, targets_length=(4, 30))]
    return Mixture("test_mix", tasks)


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _take(ds_or_loader, n):
    return list(itertools.islice(iter(ds_or_loader), n))


@pytest.mark.parametrize("pack", [False, True])
def test_batches_have_contract_keys_and_dtypes(mix, pack):
    b = next(iter(MixtureDataset(mix, sequence_length=SEQ, batch_size=4, pack=pack)))
    assert {k: v.dtype for k, v in b.items()} == FEATURES
    assert b["encoder_input_tokens"].shape == (4, 32) and b["decoder_target_tokens"].shape == (4, 12)


@pytest.mark.parametrize("pack", [False, True])
def test_empirical_shares_within_3_standard_errors(mix, pack):
    # 100k draws; the plan is what decides the shares, so count it without materializing tokens
    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=500 if not pack else 64, pack=pack,
                        mixing={"rate": "temperature", "temperature": 2.0}, seed=3)
    cur = ds._fresh_cursor()
    n = 0
    for plan in ds._plans(cur):
        n += len(plan.task_ids)
        if n >= 100_000:
            break
    p = ds._probs_at(0)
    for i, name in enumerate(ds.task_names):
        se = math.sqrt(n * p[i] * (1 - p[i]))
        assert abs(cur.observed[i] - n * p[i]) <= 3 * se, (name, cur.observed[i], n * p[i], se)


def test_stats_report_observed_next_to_target(mix, caplog):
    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=50, pack=False, num_batches=20, log_every=10)
    with caplog.at_level("INFO", logger="mixtures.sampler"):
        list(ds)
    st = ds.stats()
    assert sum(s["count"] for s in st.values()) == 1000
    assert all(abs(s["observed"] - s["target"]) < 0.06 for s in st.values())
    assert "observed/target" in caplog.text and "packing efficiency" in caplog.text
    c = ds.counters()
    assert c["batches"] == 20 and c["examples"] == 1000 and 0 < c["packing_efficiency"] < 1


@pytest.mark.parametrize("pack, granularity", [(False, "example"), (True, "example"), (True, "batch")])
def test_deterministic_and_seed_dependent(mix, pack, granularity):
    kw = dict(sequence_length=SEQ, batch_size=4, pack=pack, granularity=granularity)
    a = _take(MixtureDataset(mix, seed=1, **kw), 6)
    b = _take(MixtureDataset(mix, seed=1, **kw), 6)
    c = _take(MixtureDataset(mix, seed=2, **kw), 6)
    for x, y in zip(a, b):
        _same(x, y)
    assert any(not torch.equal(x["encoder_input_tokens"], y["encoder_input_tokens"]) for x, y in zip(a, c))


def test_batch_granularity_one_task_per_batch(mix):
    for pack in (False, True):
        ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=4, pack=pack, granularity="batch")
        for b in _take(ds, 8):
            ids = b["decoder_task_ids"][b["decoder_task_ids"] >= 0]
            assert len(ids.unique()) == 1


@pytest.mark.parametrize("num_workers", [0, 1, 2])
@pytest.mark.parametrize("pack", [False, True])
def test_resume_mid_epoch_equals_uninterrupted(mix, num_workers, pack):
    kw = dict(sequence_length=SEQ, batch_size=3, pack=pack, seed=5, num_batches=12)
    reference = list(MixtureDataset(mix, **kw))  # single process, no loader
    loader = StatefulDataLoader(MixtureDataset(mix, **kw), batch_size=None, num_workers=num_workers)
    it = iter(loader)
    first = [next(it) for _ in range(5)]
    state = loader.state_dict()
    del it, loader
    resumed_loader = StatefulDataLoader(MixtureDataset(mix, **kw), batch_size=None, num_workers=num_workers)
    resumed_loader.load_state_dict(state)
    rest = list(resumed_loader)
    got = first + rest
    assert len(got) == len(reference) == 12
    for x, y in zip(got, reference):
        _same(x, y)


def test_dataset_state_dict_roundtrip_without_loader(mix):
    kw = dict(sequence_length=SEQ, batch_size=3, pack=True, seed=9)
    ds = MixtureDataset(mix, **kw)
    it = iter(ds)
    _ = [next(it) for _ in range(4)]
    sd = ds.state_dict()
    expected = [next(it) for _ in range(3)]
    ds2 = MixtureDataset(mix, **kw)
    ds2.load_state_dict(sd)
    for x, y in zip(_take(ds2, 3), expected):
        _same(x, y)
    with pytest.raises(MixtureError, match="world_size"):
        MixtureDataset(mix, world_size=2, **kw).load_state_dict(sd)


def test_resume_with_two_simulated_ranks(mix):
    for rank in (0, 1):
        kw = dict(sequence_length=SEQ, batch_size=3, pack=True, seed=5, rank=rank, world_size=2, num_batches=8)
        reference = list(MixtureDataset(mix, **kw))
        loader = StatefulDataLoader(MixtureDataset(mix, **kw), batch_size=None, num_workers=2)
        it = iter(loader)
        first = [next(it) for _ in range(3)]
        state = loader.state_dict()
        loader2 = StatefulDataLoader(MixtureDataset(mix, **kw), batch_size=None, num_workers=2)
        loader2.load_state_dict(state)
        for x, y in zip(first + list(loader2), reference):
            _same(x, y)


@pytest.mark.parametrize("granularity", ["example", "batch"])
def test_padded_ranks_concatenate_to_single_process_batch(mix, granularity):
    W, B = 3, 4
    kw = dict(sequence_length=SEQ, pack=False, seed=11, granularity=granularity)
    single = _take(MixtureDataset(mix, batch_size=W * B, **kw), 5)
    per_rank = [_take(MixtureDataset(mix, batch_size=B, rank=r, world_size=W, **kw), 5) for r in range(W)]
    for s in range(5):
        for k in single[s]:
            assert torch.equal(torch.cat([per_rank[r][s][k] for r in range(W)]), single[s][k]), (s, k)


def test_packed_ranks_never_duplicate_or_lose_examples(mix):
    W = 2
    plans = []
    for r in range(W):
        ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=3, pack=True, seed=2, rank=r, world_size=W,
                            num_batches=60)
        cur = ds._fresh_cursor()
        plans.append((ds, cur, list(ds._plans(cur))))
    sizes = plans[0][0]._sizes
    for t in range(len(sizes)):
        per_rank = [np.concatenate([p.positions[p.task_ids == t] for p in pl]) for _, _, pl in plans]
        a, b = set(per_rank[0].tolist()), set(per_rank[1].tolist())
        assert not (a & b)  # disjoint task-stream positions
        assert len(a) == len(per_rank[0]) and len(b) == len(per_rank[1])  # no repeats within a rank
        # positions are a gap-free prefix of each rank's shard (nothing skipped)
        for r, s in enumerate((a, b)):
            assert sorted(s) == list(range(r, r + W * len(s), W))
        # within the first task-epoch every row is seen at most once across ranks
        ds = plans[0][0]
        src = ds._source(t)
        both = np.concatenate(per_rank)
        first_epoch = both[both < src.n]
        rows, _ = src.rows(ds.seed, 0, first_epoch)
        assert len(np.unique(rows)) == len(rows)


def test_all_seen_epoch_covers_every_example_once(mix):
    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=8, pack=False, epoch_mode="all_seen", seed=4)
    with pytest.raises(TypeError):
        len(ds)
    cur = ds._fresh_cursor()
    plans = list(ds._plans(cur))
    assert cur.done
    for t, n in enumerate(ds._sizes):
        pos = np.concatenate([p.positions[p.task_ids == t] for p in plans])
        assert set(range(n)) <= set(pos.tolist())
    # the pass ended with the batch in which the last task completed its epoch
    last = plans[-1]
    assert any((last.positions == ds._sizes[last.task_ids] - 1).tolist())
    batches = list(ds)
    assert len(batches) == len(plans)
    ds.set_epoch(1)
    nxt = next(iter(ds))
    assert not torch.equal(nxt["encoder_input_tokens"], batches[0]["encoder_input_tokens"])


def test_packed_segments_are_the_planned_examples(mix):
    """Every packed segment is exactly one whole example (never split), in the row the plan chose."""
    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=4, pack=True, seed=8)
    cur = ds._fresh_cursor()
    for plan, batch in zip(itertools.islice(ds._plans(cur), 6), _take(MixtureDataset(mix, sequence_length=SEQ,
                                                                                    batch_size=4, pack=True,
                                                                                    seed=8), 6)):
        for t, p, (row, eo, do, seg) in zip(plan.task_ids, plan.positions, plan.placements):
            src = ds._source(int(t))
            rows, ek = src.rows(ds.seed, 0, np.array([p]))
            xs, ys = src.fetch(rows, ek, ds.seed, SEQ)
            x, y = xs[0][:SEQ["inputs"]], ys[0][:SEQ["targets"]]
            enc = batch["encoder_input_tokens"][row][batch["encoder_segment_ids"][row] == seg].numpy()
            dec = batch["decoder_target_tokens"][row][batch["decoder_segment_ids"][row] == seg].numpy()
            assert np.array_equal(enc, x) and np.array_equal(dec, y)
            assert (batch["decoder_task_ids"][row][batch["decoder_segment_ids"][row] == seg] == t).all()


def test_len_and_bad_arguments(mix):
    assert len(MixtureDataset(mix, sequence_length=SEQ, num_batches=7)) == 7
    with pytest.raises(TypeError):
        len(MixtureDataset(mix, sequence_length=SEQ))
    with pytest.raises(MixtureError, match="sequence_length"):
        MixtureDataset(mix, sequence_length={"inputs": 4})
    with pytest.raises(MixtureError, match="granularity"):
        MixtureDataset(mix, sequence_length=SEQ, granularity="step")
    with pytest.raises(MixtureError, match="rank"):
        MixtureDataset(mix, sequence_length=SEQ, rank=2, world_size=2)
    with pytest.raises(MixtureError, match="no examples"):
        MixtureDataset(Mixture("e", [SyntheticTask("a", 5), SyntheticTask("empty", {"train": 0})]),
                       sequence_length=SEQ, mixing={"rate": "equal"})


def test_batch_granularity_task_shares_within_3_standard_errors(mix):
    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=1, pack=False, granularity="batch", seed=6)
    cur = ds._fresh_cursor()
    n = 20_000
    firsts = np.array([int(p.task_ids[0]) for _, p in zip(range(n), ds._plans(cur))])
    p = ds._probs_at(0)
    counts = np.bincount(firsts, minlength=len(p))
    assert np.all(np.abs(counts - n * p) <= 3 * np.sqrt(n * p * (1 - p)))


def test_schedule_changes_draws_by_step(mix):
    mixing = {"rate": "equal", "schedule": {"to": {"rate": "explicit", "weights": {"small": 0, "medium": 0,
                                                                                    "large": 1, "corpus": 0}},
                                            "start_step": 0, "end_step": 10}}
    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=64, pack=False, mixing=mixing, seed=1)
    plans = [p for _, p in zip(range(20), ds._plans(ds._fresh_cursor()))]
    large = ds.task_names.index("large")
    assert len(set(plans[0].task_ids.tolist())) == 4
    assert all((p.task_ids == large).all() for p in plans[10:])
    assert ds.target_shares(5)["large"] == pytest.approx(0.25 + 0.5 * 0.75)


def test_mixing_from_omegaconf(mix):
    from omegaconf import OmegaConf

    from mixtures import MixingConfig

    cfg = OmegaConf.create({"rate": "temperature", "max_examples": 50, "temperature": 2.0, "weights": None,
                            "unsupervised_rate": None})
    mc = MixingConfig.from_dict(cfg)
    assert mc.rate == "temperature" and mc.max_examples == 50
    assert mix.rates(mixing=cfg)["small"] == pytest.approx(mix.rates(mixing=mc)["small"])


@pytest.mark.parametrize("pack", [False, True])
def test_all_seen_pass_resumes_exactly_with_workers(mix, pack):
    kw = dict(sequence_length=SEQ, batch_size=16, pack=pack, seed=12, epoch_mode="all_seen")
    reference = list(MixtureDataset(mix, **kw))
    loader = StatefulDataLoader(MixtureDataset(mix, **kw), batch_size=None, num_workers=2)
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    state = loader.state_dict()
    loader2 = StatefulDataLoader(MixtureDataset(mix, **kw), batch_size=None, num_workers=2)
    loader2.load_state_dict(state)
    got = first + list(loader2)
    assert len(got) == len(reference) > 3
    for x, y in zip(got, reference):
        _same(x, y)


def test_dataset_pickles_for_spawned_workers(mix):
    import pickle

    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=3, pack=True, seed=2,
                        mixing={"rate": "equal", "schedule": {"to": {"rate": "proportional"}, "end_step": 5}})
    clone = pickle.loads(pickle.dumps(ds))
    for x, y in zip(_take(clone, 3), _take(ds, 3)):
        _same(x, y)


@pytest.mark.slow
def test_spawned_workers_give_the_same_batches(mix):
    kw = dict(sequence_length=SEQ, batch_size=3, pack=True, seed=2, num_batches=4)
    ref = list(MixtureDataset(mix, **kw))
    loader = StatefulDataLoader(MixtureDataset(mix, **kw), batch_size=None, num_workers=2,
                                multiprocessing_context="spawn")
    for x, y in zip(list(loader), ref):
        _same(x, y)
