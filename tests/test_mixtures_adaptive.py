"""Adaptive mixing methods: ODM's update against a hand computation, the registry, UniMax against a hand computation
and its budget from the run's steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixtures import AdaptiveMethod, AdaptiveRegistry, MixingConfig, Mixture, MixtureDataset, MixtureError
from mixtures.adaptive import OnlineDataMixing, method_options
from mixtures.rates import unimax_allocation
from mixtures.shares import resolve_mixing
from mixtures.testing import SyntheticTask

# Recorded per-task loss sums and target-token counts of four steps (3 tasks; 0 tokens: not drawn in that step).
RECORDED = [([9.0, 9.0, 9.0], [1, 1, 1]),   # step 0 (t = 1): inside the warm-up, ignored
            ([6.0, 3.0, 0.0], [3, 1, 0]),   # step 1 (t = 2): mean losses 2, 3, -
            ([2.0, 0.0, 4.0], [2, 0, 2]),   # step 2 (t = 3): mean losses 1, -, 2
            ([0.0, 1.5, 0.0], [0, 1, 0])]   # step 3 (t = 4): mean loss -, 1.5, -


def test_odm_update_matches_a_hand_computation_on_recorded_losses():
    odm = OnlineDataMixing(["a", "b", "c"], np.array([0.5, 0.3, 0.2]), smoothing=0.5, warmup_steps=1)
    assert odm.propose(0) is None  # before the first update the config's shares stay
    probs = []
    for step, (sums, counts) in enumerate(RECORDED):
        odm.observe(step, np.array(sums), np.array(counts, float))
        probs.append(odm.propose(step))
    assert probs[0] is None
    # by hand: R_i <- 0.5 R_i + 0.5 exp(mean loss_i) for the tasks drawn; eps_t = min(1/3, sqrt(ln 3 / (3 t)))
    e = math.exp
    r_after_2 = [0.5 * e(2), 0.5 * e(3), 0.0]
    r_after_3 = [0.5 * r_after_2[0] + 0.5 * e(1), r_after_2[1], 0.5 * e(2)]
    r_after_4 = [r_after_3[0], 0.5 * r_after_3[1] + 0.5 * e(1.5), r_after_3[2]]
    # t = 2 and t = 3: sqrt(ln 3 / 6) = 0.428 and sqrt(ln 3 / 9) = 0.349 exceed 1/3, so eps = 1/3 and
    # p = (1 - 3 * 1/3) * softmax + 1/3: uniform
    np.testing.assert_allclose(probs[1], [1 / 3] * 3, rtol=0, atol=1e-15)
    np.testing.assert_allclose(probs[2], [1 / 3] * 3, rtol=0, atol=1e-15)
    # t = 4: eps_4 = sqrt(ln 3 / 12) = 0.302574, the softmax uses eps_3 = 1/3
    eps4 = math.sqrt(math.log(3) / 12)
    assert eps4 == pytest.approx(0.30257399765293086, abs=1e-15)
    w = [e(r / 3) for r in r_after_4]
    expected = [(1 - 3 * eps4) * x / sum(w) + eps4 for x in w]
    np.testing.assert_allclose(probs[3], expected, rtol=1e-13)
    np.testing.assert_allclose(probs[3], [0.3178477324019748, 0.36160577782126024, 0.3205464897767651], rtol=1e-12)
    np.testing.assert_allclose(odm.reward, r_after_4, rtol=1e-15)
    # state round trip: a restored method continues identically
    twin = OnlineDataMixing(["a", "b", "c"], np.array([0.5, 0.3, 0.2]), smoothing=0.5, warmup_steps=1)
    twin.load_state_dict(odm.state_dict())
    for m in (odm, twin):
        m.observe(4, np.array([3.0, 2.0, 1.0]), np.array([1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(odm.propose(4), twin.propose(4))


def test_odm_defaults_are_the_papers_scripts_and_update_interval_applies():
    assert method_options(OnlineDataMixing) == {"smoothing": 0.5, "warmup_steps": 2000, "update_every": 1}
    odm = OnlineDataMixing(["a", "b"], np.array([0.5, 0.5]), warmup_steps=0, update_every=3)
    for step in range(5):
        odm.observe(step, np.array([2.0, 1.0]), np.array([1.0, 1.0]))
    assert odm.updates == 1  # only t = 3 (t % 3 == 0 after the warm-up)
    with pytest.raises(MixtureError, match="smoothing"):
        OnlineDataMixing(["a"], np.array([1.0]), smoothing=1.0)


def test_odm_survives_losses_that_overflow_the_papers_exponent():
    odm = OnlineDataMixing(["a", "b", "c"], np.ones(3), warmup_steps=0)
    for step in range(6):
        odm.observe(step, np.array([40.0, 9.0, 9.0]), np.ones(3))  # exp(exp(40) / 3) overflows a float
    p = odm.propose(5)
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0) and p[0] == p.max()


class Greedy(AdaptiveMethod):
    def __init__(self, task_names, initial, *, temperature: float = 1.0):
        super().__init__(task_names, initial)
        self.temperature = temperature

    def observe(self, step, loss_sums, token_counts):
        pass

    def propose(self, step):
        return {self.task_names[0]: 1.0}


def test_registry_checks_classes_and_names():
    AdaptiveRegistry.add("greedy_test", Greedy, replace=True)
    try:
        assert "greedy_test" in AdaptiveRegistry.names()
        with pytest.raises(MixtureError, match="already registered"):
            AdaptiveRegistry.add("greedy_test", OnlineDataMixing)
        with pytest.raises(MixtureError, match="observe, propose"):
            AdaptiveRegistry.add("not_a_method", object)
        assert method_options(Greedy) == {"temperature": 1.0}
    finally:
        AdaptiveRegistry._registry.pop("greedy_test", None)


# ------------------------------------------------------------------------------------------------------- UniMax
def test_unimax_allocation_matches_a_hand_computation():
    # budget 400, N = 2, ascending sizes 10, 50, 100, 1000:
    #   a: 400/4 = 100, capped at 2 x 10 = 20         -> 380 left
    #   b: 380/3 = 126.7, capped at 2 x 50 = 100      -> 280 left
    #   c: 280/2 = 140 (cap 200)                       -> 140 left
    #   d: 140/1 = 140 (cap 2000)
    sizes = {"d": 1000, "b": 50, "a": 10, "c": 100}
    assert unimax_allocation(sizes, 400, 2) == {"d": 140.0, "b": 100.0, "a": 20.0, "c": 140.0}
    # every task capped: the allocations are the caps (the rest of the budget is not used)
    assert unimax_allocation({"a": 10, "b": 20}, 1000, 1) == {"a": 10.0, "b": 20.0}
    mix = Mixture("uni", [SyntheticTask(n, s) for n, s in sizes.items()])
    shares = mix.rates(mixing={"rate": "unimax", "unimax_max_epochs": 2, "unimax_budget": 400})
    assert shares == pytest.approx({"a": 0.05, "b": 0.25, "c": 0.35, "d": 0.35}, abs=1e-15)
    with pytest.raises(MixtureError, match="unimax_budget"):
        mix.rates(mixing={"rate": "unimax"})


def test_unimax_budget_comes_from_the_runs_steps():
    """The run's budget is in examples: steps x the global batch when padding (exact), steps x the examples the
    packed batches really hold when packing, so the N-epoch cap holds for what training draws."""
    from lightning_t5.train.data import MixtureDataModule

    sizes = {"a": 10, "b": 50, "c": 100, "d": 1000}
    mix = Mixture("uni_run", [SyntheticTask(n, s, inputs_length=(2, 10), targets_length=(1, 3))
                              for n, s in sizes.items()])
    data = {"sequence_length": {"inputs": 32, "targets": 8}, "batch_size": 4, "pack": False}
    dm = MixtureDataModule(mix, data=data, mixing={"rate": "unimax", "unimax_max_epochs": 2}, total_batches=50)
    ds = dm.make_train_dataset(0, 2)  # 2 ranks x 4 rows x 50 steps = 400 examples
    assert ds.mixing.unimax_budget == 400
    assert ds.target_shares(0) == pytest.approx({"a": 0.05, "b": 0.25, "c": 0.35, "d": 0.35}, abs=1e-15)

    packed = resolve_mixing(mix, MixingConfig(rate="unimax", unimax_max_epochs=2), sequence_length={
        "inputs": 32, "targets": 8}, steps=50, batch_size=4, pack=True)
    ds = MixtureDataset(mix, sequence_length={"inputs": 32, "targets": 8}, batch_size=4, pack=True,
                        mixing=packed, num_batches=50)
    assert packed.unimax_budget > 400  # several short examples per packed row
    cur = ds._fresh_cursor()
    for _ in ds._plans(cur):
        pass
    total = int(cur.observed.sum())
    assert total == pytest.approx(packed.unimax_budget, rel=0.03)  # the budget is what the run draws
    shares = ds.target_shares(0)
    for name in ("a", "b"):  # the capped tasks: N = 2 passes over their data in expectation, not more
        assert shares[name] * total == pytest.approx(2 * sizes[name], rel=0.03)
