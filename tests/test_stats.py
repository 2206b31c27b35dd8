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
    fast = stats._replicates(route, stats.bootstrap_weights(n, 20, seed=2))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slow = [next(iter(fn([t[i] for i in row], [p[i] for i in row]).values())) for row in idx]
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)


def _bleu_loop(targets, predictions):
    """BLEU under another name: no fast route knows it, so it takes the loop (the reference for the fast routes)."""
    return {"bleu_loop": M.bleu(targets, predictions)["bleu"]}


def test_other_metrics_take_the_per_example_sum_or_loop_route():
    squad = stats.route_metrics([M.squad], [["a b"], ["c"]] * 10, [["a b"] * 20])
    assert {r.kind for r in squad} == {"mean"}
    t, p = ["the cat sat on the mat", "a dog ran home fast"] * 5, ["the cat sat on a mat", "the dog ran home"] * 5
    assert [r.kind for r in stats.route_metrics([M.bleu], t, [p])] == ["sum"]
    assert [r.kind for r in stats.route_metrics([_bleu_loop], t, [p])] == ["loop"]
    out = stats.bootstrap_ci([_bleu_loop], t, [p])["bleu_loop"]
    assert out["resamples"] == stats.LOOP_RESAMPLES and out["ci"][0] <= out["value"]


def test_bleu_from_summed_sentence_statistics_equals_sacrebleu_on_every_resample_and_swap():
    """The BLEU route sums sacrebleu's per-sentence statistics with the resample weights (or the swaps) and lets
    sacrebleu finish them: every replicate equals the task's own BLEU on that resample, at 1000 resamples in a
    fraction of the loop's time."""
    rng = np.random.default_rng(4)
    words = "the cat sat on a mat while every dog ran home fast over lazy brown fox".split()
    t = [" ".join(rng.choice(words, 10)) for _ in range(40)]
    a = [" ".join(w if rng.random() < 0.7 else "x" for w in s.split()) for s in t]
    b = [" ".join(w if rng.random() < 0.5 else "x" for w in s.split()) for s in t]
    (fast,) = stats.route_metrics([M.bleu], t, [a])
    loop = stats.MetricRoute(name="bleu", kind="loop", value=0.0, fn=M.bleu, targets=t, predictions=[a])
    weights = stats.bootstrap_weights(len(t), 25, seed=5)
    np.testing.assert_allclose(stats._replicates(fast, weights), stats._loop_values(loop, weights), atol=1e-9)
    obs, null = stats.paired_permutation([M.bleu], t, [a], [b], seed=3)
    obs_loop, null_loop = stats.paired_permutation([_bleu_loop], t, [a], [b], seed=3)
    assert len(null) == stats.N_RESAMPLES and len(null_loop) == stats.LOOP_RESAMPLES
    assert obs == pytest.approx(obs_loop) and obs > 0
    np.testing.assert_allclose(null[: stats.LOOP_RESAMPLES], null_loop, atol=1e-9)


def _multirc(n_questions, answers, rng, p_right):
    """MultiRC-shaped targets and predictions: whole questions answered right or wrong together."""
    targets, preds = [], []
    for q in range(n_questions):
        right = rng.random() < p_right
        for _ in range(answers):
            v = int(rng.integers(0, 2))
            targets.append({"value": v, "group": q})
            preds.append({"value": v if right else 1 - v})
    return targets, preds


MULTIRC = [M.multirc_f1_over_all_answers, M.mean_group_metric(M.all_match)]
RECORD = [M.deduplicate_metric(M.squad)]


def test_grouped_tasks_resample_questions_not_answers():
    """MultiRC scores answers grouped by question. 50 questions of 10 answers, each question right or wrong as a
    whole (p = 0.5): the exact-match interval must be about as wide as 50 independent coin flips give (2 x 1.96 x
    sqrt(.25 / 50) = 28 points). Resampling the 500 answers instead keeps almost every question in every resample:
    an interval of nearly 0 width (what the code did before)."""
    rng = np.random.default_rng(0)
    targets, preds = _multirc(50, 10, rng, 0.5)
    out = stats.bootstrap_ci(MULTIRC, targets, [preds])
    lo, hi = out["exact_match"]["ci"]
    assert 20 < hi - lo < 36, (lo, hi)
    assert out["exact_match"]["unit"] == "group"
    routes = {r.name: r for r in stats.route_metrics(MULTIRC, targets, [preds])}
    assert routes["f1"].kind == "kernel" and routes["exact_match"].kind == "mean"
    assert out["exact_match"]["resamples"] == out["f1"]["resamples"] == stats.N_RESAMPLES


@pytest.mark.parametrize("fns,kind", [(MULTIRC, "multirc"), (RECORD, "record")])
def test_fast_routes_of_grouped_metrics_equal_the_task_function_on_group_resamples(fns, kind):
    """On every resample of questions (a question drawn twice counts twice), the vectorised and per-group routes
    give what the task's own function gives on the resampled answers."""
    rng = np.random.default_rng(1)
    if kind == "multirc":
        targets, preds = _multirc(12, 4, rng, 0.6)
        preds = [{"value": p["value"] if rng.random() < 0.8 else 1 - p["value"]} for p in preds]
    else:
        targets = [{"value": [f"ans{q}", f"Ans {q}"], "group": ("passage", q)} for q in range(15) for _ in range(3)]
        preds = [{"value": f"ans{t['group'][1]}" if rng.random() < 0.6 else "other"} for t in targets]
    units = stats.resampling_units(targets)
    weights = stats.bootstrap_weights(int(units.max()) + 1, 30, seed=2)
    for route in stats.route_metrics(fns, targets, [preds]):
        assert route.kind in ("kernel", "mean")
        fn = next(f for f in fns if route.name in f(targets, preds))
        loop = stats.MetricRoute(name=route.name, kind="loop", value=0.0, fn=fn, targets=targets,
                                 predictions=[preds], units=units)
        np.testing.assert_allclose(stats._replicates(route, weights), stats._loop_values(loop, weights), atol=1e-9)


def test_permutations_swap_whole_questions():
    """Two rows that differ on one question only: swapping whole questions gives a null of +-d (or 0 for the
    f1 of answers), so p is about 1; swapping answers would mix partial differences into the null."""
    rng = np.random.default_rng(3)
    targets, a = _multirc(20, 5, rng, 1.0)
    b = [dict(p) for p in a]
    for i in range(5):  # question 0 all wrong in B
        b[i] = {"value": 1 - a[i]["value"]}
    obs, null = stats.paired_permutation(MULTIRC, targets, [a], [b], names=["exact_match"])
    assert obs == pytest.approx(5.0)  # one question of 20
    assert set(np.round(np.abs(null), 9)) == {5.0} and stats.permutation_p_value(obs, null) == 1.0


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


def test_constant_prediction_counts_as_no_correlation_in_every_replicate_and_stays_vectorised():
    """A constant prediction (the majority-class reference of STS-B) has an undefined correlation (scipy: NaN). The
    kernel must see that instead of correlating rounding noise (or the route would fall back to the slow loop), and
    the scoring rule counts it as 0 in the value, in every bootstrap replicate and in every permutation, so a
    constant-predicting row gets a finite interval, difference and p-value."""
    rng = np.random.default_rng(2)
    y = rng.uniform(0, 5, 300).round(1).tolist()
    p = (np.array(y) + rng.normal(0, 1, 300)).round(1).tolist()
    fns = [M.pearson_corrcoef, M.spearman_corrcoef]
    routes = stats.route_metrics(fns, y, [p, [2.6] * 300])
    assert [r.kind for r in routes] == ["kernel", "kernel"]
    good = {k: v for f in fns for k, v in f(y, p).items()}
    for r in routes:  # seed 2 predicts a constant: its 0 enters the mean over seeds
        assert r.value == pytest.approx(good[r.name] / 2)
    out, score = stats.bootstrap(fns, y, [[2.6] * 300])
    assert all(v["value"] == 0 and v["ci"] == [0.0, 0.0] for v in out.values())
    assert len(score) == stats.N_RESAMPLES and np.all(score == 0)
    obs, null = stats.paired_permutation(fns, y, [p], [[2.6] * 300])
    assert obs == pytest.approx(np.mean(list(good.values())))
    assert np.isfinite(null).all() and stats.permutation_p_value(obs, null) < 0.01
