"""The interval and test code against known distributions (lightning_t5/eval/stats.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_t5.eval import stats
from tasks import metrics as M


def _binary(rng, n, p_correct):
    t = rng.integers(0, 2, n)
    p = np.where(rng.random(n) < p_correct, t, 1 - t)
    return t.tolist(), p.tolist()


def test_bootstrap_interval_covers_the_true_accuracy_95_percent_of_the_time():
    """1000 simulated evaluation sets (n = 200, true accuracy 70 %): the 95 % interval holds 70 in 92-98 % of them."""
    rng = np.random.default_rng(0)
    n, truth, datasets = 200, 0.7, 1000
    correct = (rng.random((datasets, n)) < truth).astype(np.float64)
    idx = stats.bootstrap_indices(n, stats.N_RESAMPLES, seed=1)
    # every resample of every dataset at once as one matrix product: weights[b, i] = times example i is drawn
    weights = np.zeros((len(idx), n))
    np.add.at(weights, (np.arange(len(idx))[:, None], idx), 1.0)
    reps = 100.0 * (correct @ weights.T) / n  # [datasets, resamples]
    lo, hi = np.percentile(reps, [2.5, 97.5], axis=1)
    coverage = np.mean((lo <= 100 * truth) & (100 * truth <= hi))
    assert 0.92 <= coverage <= 0.98, coverage
    # and the public function gives the same interval as this vectorised check on one dataset
    t = [1] * n
    p = correct[0].astype(int).tolist()
    ci = stats.bootstrap_ci([M.accuracy], t, [p], seed=1)["accuracy"]["ci"]
    assert ci == pytest.approx([lo[0], hi[0]])


def test_pearson_interval_coverage():
    rng = np.random.default_rng(3)
    n, rho, datasets = 150, 0.6, 300
    cover = 0
    for d in range(datasets):
        x = rng.normal(size=n)
        y = rho * x + np.sqrt(1 - rho**2) * rng.normal(size=n)
        lo, hi = stats.bootstrap_ci([M.pearson_corrcoef], x.tolist(), [y.tolist()], seed=d)["pearson_corrcoef"]["ci"]
        cover += lo <= 100 * rho <= hi
    assert 0.90 <= cover / datasets <= 0.99  # 300 datasets: binomial sd 1.3 points around ~94 %


@pytest.mark.parametrize("fn", [M.accuracy, M.matthews_corrcoef, M.f1_score_with_invalid, M.mean_multiclass_f1(3),
                                M.pearson_corrcoef, M.spearman_corrcoef])
def test_vectorised_kernels_equal_the_task_metric_on_every_resample(fn):
    rng = np.random.default_rng(5)
    n = 60
    if fn in (M.pearson_corrcoef, M.spearman_corrcoef):
        t = rng.normal(size=n).round(1).tolist()
        p = (np.array(t) + rng.normal(size=n)).round(1).tolist()
    else:
        k = 3 if "3class" in getattr(fn, "__name__", "") else 2
        t = rng.integers(0, k, n).tolist()
        p = [x if rng.random() < 0.6 else int(rng.integers(-1, k)) for x in t]  # -1: an invalid prediction
    (route,) = stats.route_metrics([fn], t, [p])
    assert route.kind == "kernel"
    idx = stats.bootstrap_indices(n, 20, seed=2)
    fast = stats._replicates(route, idx)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slow = [next(iter(fn([t[i] for i in row], [p[i] for i in row]).values())) for row in idx]
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)


def test_other_metrics_take_the_per_example_or_loop_route():
    squad = stats.route_metrics([M.squad], [["a b"], ["c"]] * 10, [["a b"] * 20])
    assert {r.kind for r in squad} == {"mean"}
    bleu_routes = stats.route_metrics([M.bleu], ["the cat sat on the mat", "a dog ran home fast"] * 5,
                                      [["the cat sat on a mat", "the dog ran home"] * 5])
    assert [r.kind for r in bleu_routes] == ["loop"]
    out = stats.bootstrap_ci([M.bleu], ["the cat sat on the mat", "a dog ran home fast"] * 5,
                             [["the cat sat on a mat", "the dog ran home"] * 5])
    assert out["bleu"]["resamples"] == stats.LOOP_RESAMPLES and out["bleu"]["ci"][0] <= out["bleu"]["value"]


def test_identical_rows_are_never_significant():
    rng = np.random.default_rng(7)
    t, p = _binary(rng, 300, 0.7)
    obs, null = stats.paired_permutation([M.accuracy, M.f1_score_with_invalid], t, [p], [p])
    assert obs == 0 and stats.permutation_p_value(obs, null) == 1.0


def test_no_significance_between_two_equally_good_models_at_the_nominal_rate():
    """Two independent models of the same accuracy: the test rejects in about 5 % of 200 simulated datasets."""
    rng = np.random.default_rng(11)
    rejections = 0
    for d in range(200):
        t = rng.integers(0, 2, 200)
        a = np.where(rng.random(200) < 0.7, t, 1 - t)
        b = np.where(rng.random(200) < 0.7, t, 1 - t)
        obs, null = stats.paired_permutation([M.accuracy], t.tolist(), [a.tolist()], [b.tolist()], n_permutations=400,
                                             seed=d)
        rejections += stats.permutation_p_value(obs, null) < 0.05
    assert rejections / 200 <= 0.10


def test_planted_difference_is_significant_and_signed():
    rng = np.random.default_rng(13)
    t = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.85, t, 1 - t).tolist()
    bad = np.where(rng.random(400) < 0.65, t, 1 - t).tolist()
    obs, null = stats.paired_permutation([M.accuracy, M.f1_score_with_invalid], t.tolist(), [good, good], [bad, bad])
    assert obs > 10 and stats.permutation_p_value(obs, null) < 0.01
    obs_rev, _ = stats.paired_permutation([M.accuracy], t.tolist(), [bad], [good])
    assert obs_rev < -10


def test_seeds_pool_examples_and_average_the_metric():
    t = [0, 1, 0, 1]
    out = stats.bootstrap_ci([M.accuracy], t, [[0, 1, 0, 1], [0, 0, 0, 0]])
    assert out["accuracy"]["value"] == 75.0  # mean of 100 and 50


def test_holm_against_a_hand_worked_example():
    # p sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    adj = stats.holm({"a": 0.03, "b": 0.01, "c": 0.04, "d": 0.02, "e": None})
    assert adj == {"a": pytest.approx(0.06), "b": pytest.approx(0.04), "c": pytest.approx(0.06),
                   "d": pytest.approx(0.06), "e": None}
    assert stats.holm({"x": 0.6, "y": 0.5}) == {"x": 1.0, "y": 1.0}


def test_json_safe_writes_standard_json():
    data = {"a": float("nan"), "b": [np.float32(1.5), float("inf")], "c": np.arange(2)}
    text = json.dumps(stats.json_safe(data), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [1.5, None], "c": [0, 1]}


def test_constant_prediction_has_no_correlation_and_stays_vectorised():
    """A constant prediction (the majority-class reference of STS-B) has an undefined correlation, as in scipy; the
    kernel must say so instead of correlating rounding noise, or the route would fall back to the slow loop."""
    rng = np.random.default_rng(2)
    y = rng.uniform(0, 5, 300).round(1).tolist()
    p = (np.array(y) + rng.normal(0, 1, 300)).round(1).tolist()
    routes = stats.route_metrics([M.pearson_corrcoef, M.spearman_corrcoef], y, [p, [2.6] * 300])
    assert [r.kind for r in routes] == ["kernel", "kernel"]
    assert all(np.isnan(r.value) for r in routes)
    obs, null = stats.paired_permutation([M.pearson_corrcoef], y, [p], [[2.6] * 300])
    assert np.isnan(obs) and stats.permutation_p_value(obs, null) is None
