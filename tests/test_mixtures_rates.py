"""Rates: the T5/seqio formulas, sub-mixtures, schedules and bad configurations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixtures import MixingConfig, Mixture, MixtureError, RateSchedule, Scaled, rate_num_examples
from mixtures.testing import SyntheticTask, SyntheticVocabulary


def _mix(sizes, **kw):
    return Mixture("m", [SyntheticTask(f"t{i}", n) for i, n in enumerate(sizes)], **kw)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 10**7), min_size=1, max_size=12),
       K=st.one_of(st.none(), st.integers(1, 2**21)),
       T=st.floats(0.05, 50.0, allow_nan=False))
def test_temperature_rates_match_formula(sizes, K, T):
    mix = _mix(sizes)
    got = mix.rates(mixing=MixingConfig(rate="temperature", max_examples=K, temperature=T))
    capped = np.minimum(np.asarray(sizes, float), K if K is not None else np.inf)
    want = capped ** (1.0 / T)
    want = want / want.sum()
    assert math.isclose(sum(got.values()), 1.0, abs_tol=1e-12)
    for i, w in enumerate(want):
        assert abs(got[f"t{i}"] - w) <= 1e-12


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 10**7), min_size=1, max_size=12), K=st.one_of(st.none(), st.integers(1, 2**21)))
def test_proportional_and_equal_match_formula(sizes, K):
    mix = _mix(sizes)
    got = mix.rates(mixing={"rate": "proportional", "max_examples": K})
    capped = [min(n, K) if K else n for n in sizes]
    for i, c in enumerate(capped):
        assert abs(got[f"t{i}"] - c / sum(capped)) <= 1e-12
    eq = mix.rates(mixing={"rate": "equal"})
    assert all(abs(v - 1 / len(sizes)) <= 1e-12 for v in eq.values())


def test_rate_num_examples_order_scale_cap_power():
    # seqio: scale first, then cap, then the 1/T power
    assert rate_num_examples(1000, scale=0.5, maximum=600, temperature=2.0) == pytest.approx(math.sqrt(500))
    assert rate_num_examples(1000, scale=2.0, maximum=600, temperature=2.0) == pytest.approx(math.sqrt(600))


def test_explicit_unsupervised_callable_and_scaled():
    a, b = SyntheticTask("a", 100), SyntheticTask("b", 300)
    corpus = SyntheticTask("corpus", 10**6, supervised=False)
    mix = Mixture("m", [a, (b, Scaled(0.5)), corpus])
    r = mix.rates(mixing={"rate": "proportional", "unsupervised_rate": 250})
    assert r == pytest.approx({"a": 100 / 500, "b": 150 / 500, "corpus": 250 / 500}, abs=1e-12)
    ex = mix.rates(mixing={"rate": "explicit", "weights": {"a": 1, "b": 3, "corpus": 0}})
    assert ex == pytest.approx({"a": 0.25, "b": 0.75, "corpus": 0.0}, abs=1e-12)
    fn = Mixture("f", [(a, lambda t: 7.0), (b, lambda t: t.num_examples("train") / 100)])
    assert fn.rates() == pytest.approx({"a": 0.7, "b": 0.3}, abs=1e-12)


def test_seqio_style_default_rate():
    a, b = SyntheticTask("a", 100), SyntheticTask("b", 300)
    assert Mixture("d", [a, (b, 3.0)], default_rate=1.0).rates() == pytest.approx({"a": 0.25, "b": 0.75})
    assert Mixture("c", [a, b], default_rate=lambda t: 1.0).rates() == pytest.approx({"a": 0.5, "b": 0.5})


def test_sub_mixture_share_is_rate_times_share_within():
    a, b, c = SyntheticTask("a", 100), SyntheticTask("b", 300), SyntheticTask("c", 50)
    sub = Mixture("sub", [a, b])
    outer = Mixture("outer", [(sub, 3.0), (c, 1.0)])
    assert outer.task_names == ["a", "b", "c"]
    assert outer.rates() == pytest.approx({"a": 0.75 * 0.25, "b": 0.75 * 0.75, "c": 0.25}, abs=1e-12)
    # no explicit rate: the sub-mixture is rated by its total size (FLAN-style cap with K); K also caps inside it
    capped = Mixture("capped", [sub, c]).rates(mixing={"max_examples": 200})
    assert capped == pytest.approx({"a": 0.8 / 3, "b": 0.8 * 2 / 3, "c": 0.2}, abs=1e-12)


def test_schedule_interpolates_shares_by_step():
    mix = _mix([100, 900])
    cfg = MixingConfig(rate="equal", schedule=RateSchedule(MixingConfig(rate="proportional"), 10, 20))
    assert mix.rates(mixing=cfg, step=0) == pytest.approx({"t0": 0.5, "t1": 0.5})
    assert mix.rates(mixing=cfg, step=15) == pytest.approx({"t0": 0.3, "t1": 0.7})
    assert mix.rates(mixing=cfg, step=99) == pytest.approx({"t0": 0.1, "t1": 0.9})
    from_dict = MixingConfig.from_dict({"rate": "equal", "schedule": {"to": {"rate": "proportional"},
                                                                       "start_step": 10, "end_step": 20}})
    assert mix.rates(mixing=from_dict, step=15) == pytest.approx({"t0": 0.3, "t1": 0.7})


def test_official_sizes_vs_actual():
    a, b = SyntheticTask("a", 100), SyntheticTask("b", 100)
    mix = Mixture("m", [a, b], sizes={"a": 300})
    assert mix.rates() == pytest.approx({"a": 0.75, "b": 0.25})
    assert mix.rates(mixing={"size_source": "actual"}) == pytest.approx({"a": 0.5, "b": 0.5})


@pytest.mark.parametrize("cfg, match", [
    ({"max_examples": 0}, "max_examples"), ({"max_examples": -5}, "max_examples"),
    ({"temperature": 0}, "temperature"), ({"temperature": -1.0}, "temperature"),
    ({"rate": "proportionl"}, "proportional"), ({"weights": {"a": -1}}, "negative"),
    ({"weights": {"a": 0, "b": 0}}, "all zero"), ({"nonsense": 1}, "valid keys"),
    ({"unsupervised_rate": -1}, "unsupervised_rate"),
])
def test_bad_mixing_config(cfg, match):
    with pytest.raises(MixtureError, match=match):
        MixingConfig.from_dict(cfg)


def test_bad_mixtures():
    a, b = SyntheticTask("a", 100), SyntheticTask("b", 100)
    with pytest.raises(MixtureError, match="rates must be non-negative"):
        Mixture("neg", [(a, -1.0), b]).rates()
    with pytest.raises(MixtureError, match="all rates are zero"):
        Mixture("zero", [(a, 0.0), (b, 0)]).rates()
    with pytest.raises(MixtureError, match="no tasks"):
        Mixture("empty", [])
    with pytest.raises(MixtureError, match="no examples"):
        Mixture("e", [a, SyntheticTask("empty", {"train": 0})]).validate("train", {"rate": "equal"})
    other = SyntheticTask("other", 10, vocabulary=SyntheticVocabulary(tag="different"))
    with pytest.raises(MixtureError, match="different vocabularies"):
        Mixture("v", [a, other]).validate()
    with pytest.raises(MixtureError, match="no weight for task 'b'"):
        Mixture("x", [a, b]).rates(mixing={"rate": "explicit", "weights": {"a": 1}})
    with pytest.raises(MixtureError, match="not in mixture 'x'.*Did you mean: b"):
        Mixture("x", [a, b]).rates(mixing={"rate": "explicit", "weights": {"a": 1, "bb": 1}})
    with pytest.raises(MixtureError, match="unknown task 'glue_sst_two'"):
        Mixture("u", ["glue_sst_two"]).rates()
