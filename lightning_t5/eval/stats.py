"""Uncertainty for evaluation scores: bootstrap confidence intervals, paired permutation tests, Holm correction.

Why this module: a score on 48 or 277 validation examples is a noisy estimate, and two training strategies can only
be ranked when their difference is larger than that noise. Everything here works on the *per-example* targets and
predictions that evaluation keeps, so metrics that are not means over examples (F1, MCC, Pearson, Spearman) are
recomputed on every resample instead of being approximated.

What is resampled: the evaluation examples, or, for a task whose metrics group examples (MultiRC's answers by
question, ReCoRD's answers by query: targets that carry a "group", the convention of `tasks.metrics`), the groups.
Resampling answers of one question independently would treat correlated answers as independent evidence and make
the intervals too narrow. The trained models are held fixed: the intervals and tests say how much the scores could
move on other evaluation examples, not how much another training run (seed) would move them; several seeds of a row
enter as a mean over seeds, resampled together.

* `bootstrap_ci`: percentile bootstrap (1000 resamples, fixed seed). With several seeds of one row, the statistic is
  the mean over seeds, and an example is resampled together with all its seeds' predictions.
* `paired_permutation`: two rows scored on the same examples. Under the null hypothesis "no difference", the two
  rows' predictions for an example (group) are exchangeable, so each permutation swaps them on a random half of the
  examples (for every seed at once) and recomputes the difference of the task scores. A benchmark average is tested
  by averaging the per-task permutation differences (`permutation_p_value` on the averaged replicates).
* `holm`: Holm's step-down adjustment of the p-values of several rows compared with one baseline.

Every replicate is scored by `lightning_t5.eval.scoring` (an undefined correlation counts as 0, a task score is the
mean of its metrics), the same function as the point estimates.

Each metric is computed by the fastest exact route that reproduces the task's own metric function on the full
sample: a vectorised kernel on resample weights (accuracy, MCC, binary/macro F1, Pearson, Spearman), else weighted
sums of per-sentence sufficient statistics finished by the metric's library (BLEU: sacrebleu's own statistics and
formula, the way its paired bootstrap does it), else a mean of per-example (per-group) scores (exact match, SQuAD F1,
ROUGE, MultiRC's and ReCoRD's grouped scores), else the task's function itself in a loop over fewer resamples (any
other metric). The route is checked against the task's reported value, so a kernel never silently changes a metric.
Loop routes get `LOOP_RESAMPLES` replicates, the others `N_RESAMPLES`; where replicates of both kinds are combined (a
task score, an average) the first `LOOP_RESAMPLES` of each are used. Numpy (and sacrebleu for BLEU): no torch, no
task registry.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from lightning_t5.eval.scoring import metric_scores, task_score_replicates

__all__ = [
    "N_RESAMPLES",
    "LOOP_RESAMPLES",
    "LEVEL",
    "ALPHA",
    "MetricRoute",
    "resampling_units",
    "route_metrics",
    "bootstrap_indices",
    "bootstrap_weights",
    "bootstrap",
    "bootstrap_ci",
    "percentile_ci",
    "PairedTest",
    "paired_test",
    "paired_permutation",
    "permutation_p_value",
    "holm",
    "json_safe",
]

N_RESAMPLES = 1000  # bootstrap resamples / permutations of the vectorised routes
LOOP_RESAMPLES = 200  # resamples when the task's own metric function must be called once per resample
LEVEL = 0.95
ALPHA = 0.05
_TOL = 1e-6

MetricFn = Callable[[list, list], Mapping[str, float]]
# (targets [n] or [B, n], predictions [B, n], weights [B, n]: how often each example is in the resample) -> [B]
Kernel = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------------------ encodings
def _key(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)


def resampling_units(targets: Sequence[Any]) -> np.ndarray | None:
    """Group code (0..G-1) of every example when every target is a mapping with a "group" (MultiRC: the question,
    ReCoRD: the query; `tasks.metrics.mean_group_metric` and `deduplicate_metric` group by it), else None: then the
    examples themselves are the units that are resampled and swapped."""
    if not targets or not all(isinstance(t, Mapping) and "group" in t for t in targets):
        return None
    codes: dict[Any, int] = {}
    return np.array([codes.setdefault(_key(t["group"]), len(codes)) for t in targets], dtype=np.int64)


def _value(x: Any) -> Any:
    """The scored value of a grouped target / prediction ({"value": ..., "group": ...}), else x itself."""
    return x["value"] if isinstance(x, Mapping) and "value" in x else x


def _label_codes(targets: Sequence[Any], predictions: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Targets and predictions as codes 0..K-1 over the union of their values (K = number of distinct values)."""
    codes: dict[Any, int] = {}
    t = np.array([codes.setdefault(_key(_value(v)), len(codes)) for v in targets], dtype=np.int64)
    p = np.array([[codes.setdefault(_key(_value(v)), len(codes)) for v in row] for row in predictions], dtype=np.int64)
    return t, p, len(codes)


def _floats(values: Sequence[Any]) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        v = _value(v)
        if isinstance(v, (int, float, np.number)):
            out[i] = float(v)
    return out


# ------------------------------------------------------------------------------------------------ kernels
def _wsum(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x * w).sum(axis=-1)


def _bcast(t: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """t, p, w broadcast to one [B, n] shape (views): a kernel is called with one prediction row and B weight rows
    (bootstrap) or B swapped prediction rows and one weight row (permutations)."""
    shape = np.broadcast_shapes(np.shape(t), np.shape(p), np.shape(w))
    shape = shape if len(shape) == 2 else (1, *shape)
    return np.broadcast_to(t, shape), np.broadcast_to(p, shape), np.broadcast_to(w, shape)


def _confusion(t: np.ndarray, p: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """[B, K, K] weighted confusion counts (rows: target code, columns: prediction code) of each resample."""
    t, p, w = _bcast(t, p, w)
    b = p.shape[0]
    flat = (np.arange(b)[:, None] * (k * k) + t * k + p).ravel()
    return np.bincount(flat, weights=w.ravel(), minlength=b * k * k).reshape(b, k, k)


def _k_accuracy(t: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    t, p, w = _bcast(t, p, w)
    return 100.0 * _wsum(t == p, w) / w.sum(axis=-1)


def _k_mcc(k: int) -> Kernel:
    def kernel(t: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
        c = _confusion(t, p, w, k)
        s = c.sum(axis=(1, 2))
        correct = np.trace(c, axis1=1, axis2=2)
        t_sum, p_sum = c.sum(axis=2), c.sum(axis=1)
        cov_tp = correct * s - (t_sum * p_sum).sum(axis=1)
        cov_pp = s * s - (p_sum * p_sum).sum(axis=1)
        cov_tt = s * s - (t_sum * t_sum).sum(axis=1)
        denom = np.sqrt(cov_tt * cov_pp)
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * np.where(denom > 0, cov_tp / np.where(denom > 0, denom, 1.0), 0.0)

    return kernel


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), 0.0)


def _k_binary_f1(t: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """t5's f1_score_with_invalid: a prediction that is neither 0 nor 1 counts as the wrong class."""
    t, p, w = _bcast(t, p, w)
    p = np.where((p == 0) | (p == 1), p, 1 - t)
    tp = _wsum((t == 1) & (p == 1), w)
    fp = _wsum((t == 0) & (p == 1), w)
    fn = _wsum((t == 1) & (p == 0), w)
    return 100.0 * _f1(tp, fp, fn)


def _k_macro_f1(num_classes: int) -> Kernel:
    def kernel(t: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
        t, p, w = _bcast(t, p, w)
        scores = []
        for c in range(num_classes):
            tc, pc = t == c, p == c
            scores.append(_f1(_wsum(tc & pc, w), _wsum(~tc & pc, w), _wsum(tc & ~pc, w)))
        return 100.0 * np.mean(scores, axis=0)

    return kernel


def _k_pearson(t: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Pearson (weights: multiplicities in the resample). NaN for a constant resample, as scipy says; the
    scoring rule then counts it as 0."""
    t, p, w = _bcast(t, p, w)
    total = w.sum(axis=1, keepdims=True)
    dt = t - _wsum(t, w)[:, None] / total
    dp = p - _wsum(p, w)[:, None] / total
    present = w > 0
    # a constant resample has no correlation; its mean-centred values are rounding noise, not 0
    constant = ((np.where(present, t, np.inf).min(axis=1) == np.where(present, t, -np.inf).max(axis=1))
                | (np.where(present, p, np.inf).min(axis=1) == np.where(present, p, -np.inf).max(axis=1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = 100.0 * _wsum(dt * dp, w) / np.sqrt(_wsum(dt * dt, w) * _wsum(dp * dp, w))
    return np.where(constant, np.nan, r)


def _row_ranks(codes: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) within each resample of dense value codes [B, n], every
    example counted `w` times.

    Counting instead of sorting: per row, the weight of each code (bincount), cumulated; the rank of code u is
    cum[u] - (count[u] - 1) / 2. O(B * (n + U)), which is what makes Spearman on 1000 resamples cheap."""
    b = codes.shape[0]
    u = int(codes.max()) + 1
    counts = np.bincount((np.arange(b)[:, None] * u + codes).ravel(), weights=w.ravel(),
                         minlength=b * u).reshape(b, u)
    rank_of_code = np.cumsum(counts, axis=1) - (counts - 1) / 2.0
    return np.take_along_axis(rank_of_code, codes, axis=1)


def _k_spearman(t: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Spearman on dense rank codes (see `_dense_codes`): weighted Pearson of the within-resample average ranks."""
    t, p, w = _bcast(t, p, w)
    return _k_pearson(_row_ranks(t, w), _row_ranks(p, w), w)


def _dense_codes(values: np.ndarray) -> np.ndarray:
    """Values replaced by the index of their value among the sorted distinct values (same shape). Rank statistics
    are unchanged by this, and integer codes can be counted per resample."""
    _, inverse = np.unique(values, return_inverse=True)
    return inverse.reshape(values.shape).astype(np.int64)


def _k_mean(t: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean of per-unit scores p [B, G] (unit weights w)."""
    t, p, w = _bcast(t, p, w)
    return _wsum(p, w) / w.sum(axis=-1)


# ------------------------------------------------------------------------------------------------ routes
@dataclass
class MetricRoute:
    """How one metric of one task is recomputed on resamples.

    `kind` is "kernel" (vectorised on the encoded arrays `t` [n] and `p` [S, n], weighted per example), "sum"
    (per-example sufficient statistics `p` [S, n, k], summed with the resample weights and passed to `finish`),
    "mean" (per-unit scores in `p` [S, G]: per example, or per group of a grouped task) or "loop" (the task's
    function `fn` called on each resample of the raw `targets`/`predictions`). `value` is the score of the task's
    own value on the full sample (mean over seeds, each scored by `lightning_t5.eval.scoring.metric_scores`).
    `units`: the group of each example for a grouped task, else None.
    """

    name: str
    kind: str
    value: float
    t: np.ndarray | None = None
    p: np.ndarray | None = None
    kernel: Kernel | None = None
    fn: MetricFn | None = None
    targets: list | None = None
    predictions: list | None = None  # [S][n] raw values
    units: np.ndarray | None = None
    finish: Callable[[np.ndarray], float] | None = None  # "sum" route: summed statistics [k] -> metric value

    def scored(self, raw: np.ndarray) -> np.ndarray:
        """Raw metric values of one seed as scores (an undefined correlation counts as 0)."""
        return metric_scores(self.name, raw)


def _kernels_for(name: str) -> list[tuple[str, Kernel | None]]:
    """Candidate (encoding, kernel) pairs for a metric name; checked against the task's value before use."""
    if name == "accuracy":
        return [("codes", _k_accuracy)]
    if name == "matthews_corrcoef":
        return [("codes", None)]  # needs K: built in _try_kernel
    if name == "f1":
        return [("floats", _k_binary_f1)]
    if name.startswith("mean_") and name.endswith("class_f1") and name[5:-8].isdigit():
        return [("floats", _k_macro_f1(int(name[5:-8])))]
    if name == "pearson_corrcoef":
        return [("floats", _k_pearson)]
    if name == "spearman_corrcoef":
        return [("floats", _k_spearman)]
    return []


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= _TOL * max(1.0, abs(b))


def _full(kernel: Kernel, t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """[S] kernel values of every seed on the full sample."""
    return np.array([kernel(t[None, :], p[s][None, :], np.ones((1, len(t))))[0] for s in range(p.shape[0])])


def _try_kernel(name: str, raw: np.ndarray, targets: list, predictions: list[list]) -> MetricRoute | None:
    for encoding, kernel in _kernels_for(name):
        try:
            if encoding == "codes":
                t, p, k = _label_codes(targets, predictions)
                kernel = kernel or _k_mcc(k)
            else:
                t = _floats(targets)
                p = np.stack([_floats(row) for row in predictions])
                if np.isnan(t).any():
                    continue
                if name == "spearman_corrcoef":
                    if np.isnan(p).any():
                        continue
                    t, p = _dense_codes(t), _dense_codes(p)
                elif name != "pearson_corrcoef":
                    p = np.nan_to_num(p, nan=-1.0)  # unparsable label -> an invalid class
        except (TypeError, ValueError):
            continue
        full = _full(kernel, t, p)
        if all(_close(float(a), float(b)) for a, b in zip(full, raw)):
            return MetricRoute(name=name, kind="kernel", value=0.0, t=t, p=p, kernel=kernel)
    return None


def _bleu_statistics(targets: list, predictions: list[list]) -> tuple[np.ndarray, Callable[[np.ndarray], float]]:
    """([S, n, 10] sacrebleu's per-sentence statistics (lengths, n-gram matches and totals), their finishing formula)
    with T5's settings (`tasks.metrics.bleu`: intl tokenizer, exp smoothing, no lower-casing); the route check
    rejects them if the task scores BLEU otherwise."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(smooth_method="exp", smooth_value=0.0, force=False, lowercase=False, tokenize="intl",
                  effective_order=False)
    refs = [[str(t) for t in targets]]
    stats = np.array([metric._extract_corpus_statistics([str(p) for p in row], refs) for row in predictions],
                     dtype=np.float64)

    def finish(summed: np.ndarray) -> float:
        return float(metric._compute_score_from_stats(list(summed)).score)

    return stats, finish


_SUFFICIENT_STATISTICS = {"bleu": _bleu_statistics}


def _try_sum(name: str, raw: np.ndarray, targets: list, predictions: list[list]) -> MetricRoute | None:
    """A corpus metric computed from per-example statistics summed over the sample (BLEU), when its statistics
    reproduce the task's value on the full sample."""
    build = _SUFFICIENT_STATISTICS.get(name)
    if build is None or not all(isinstance(_value(t), str) for t in targets):
        return None
    try:
        stats, finish = build(targets, predictions)
        full = [finish(stats[s].sum(axis=0)) for s in range(len(predictions))]
    except Exception:  # the library's internals moved, or odd inputs: the task's own function in a loop
        return None
    if not all(_close(float(a), float(b)) for a, b in zip(full, raw)):
        return None
    return MetricRoute(name=name, kind="sum", value=0.0, p=stats, finish=finish)


def _sum_values(route: MetricRoute, sums: np.ndarray) -> np.ndarray:
    """[B] scored metric values of the summed statistics [B, k]."""
    assert route.finish is not None
    return route.scored(np.array([route.finish(row) for row in sums]))


def _unit_members(units: np.ndarray | None, n: int) -> list[np.ndarray]:
    """Example indices of each unit (each example alone when ungrouped)."""
    if units is None:
        return [np.array([i]) for i in range(n)]
    order = np.argsort(units, kind="stable")
    bounds = np.cumsum(np.bincount(units))
    return np.split(order, bounds[:-1])


def _try_mean(name: str, raw: np.ndarray, fn: MetricFn, targets: list, predictions: list[list],
              units: np.ndarray | None) -> MetricRoute | None:
    """Per-unit scores fn(unit's targets, unit's predictions) whose mean reproduces the task's value (exact match,
    SQuAD F1, ROUGE; per group: MultiRC's all-answers-right, ReCoRD's deduplicated SQuAD)."""
    members = _unit_members(units, len(targets))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = np.array([[float(fn([targets[i] for i in m], [row[i] for i in m])[name]) for m in members]
                          for row in predictions])
    except Exception:  # a metric undefined on one example (correlations, MCC) is not mean-decomposable
        return None
    if np.isnan(p).any() or not all(_close(float(a), float(b)) for a, b in zip(p.mean(axis=1), raw)):
        return None
    return MetricRoute(name=name, kind="mean", value=0.0, t=np.zeros(len(members)), p=p, kernel=_k_mean)


def route_metrics(metric_fns: Sequence[MetricFn], targets: Sequence[Any], predictions: Sequence[Sequence[Any]]
                  ) -> list[MetricRoute]:
    """One `MetricRoute` per metric the task's functions report, for `predictions` [S seeds][n examples]."""
    targets = list(targets)
    predictions = [list(row) for row in predictions]
    if any(len(row) != len(targets) for row in predictions):
        raise ValueError("every seed's predictions must cover the same examples as the targets")
    units = resampling_units(targets)
    routes = []
    for fn in metric_fns:
        with warnings.catch_warnings():  # scipy's ConstantInputWarning on a constant prediction: NaN is the answer
            warnings.simplefilter("ignore")
            per_seed = [dict(fn(targets, row)) for row in predictions]
        for name in per_seed[0]:
            raw = np.array([np.nan if s[name] is None else float(s[name]) for s in per_seed])
            route = (_try_kernel(name, raw, targets, predictions)
                     or _try_sum(name, raw, targets, predictions)
                     or _try_mean(name, raw, fn, targets, predictions, units)
                     or MetricRoute(name=name, kind="loop", value=0.0, fn=fn, targets=targets, predictions=predictions))
            route.units = units
            route.value = float(np.mean(route.scored(raw)))
            routes.append(route)
    return routes


# ------------------------------------------------------------------------------------------------ bootstrap
def bootstrap_indices(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[n_resamples, n] unit indices drawn with replacement (fixed seed: the same CI on every run)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def bootstrap_weights(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[n_resamples, n] multiplicities: how often unit i is drawn in resample b (of `bootstrap_indices`)."""
    idx = bootstrap_indices(n, n_resamples, seed)
    flat = (np.arange(n_resamples)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)


def _relabel(target: Any, copy: int) -> Any:
    """A grouped target as the `copy`-th drawn group: a group drawn twice counts twice in a grouped metric."""
    return {**target, "group": copy} if isinstance(target, Mapping) else target


def _loop_values(route: MetricRoute, weights: np.ndarray) -> np.ndarray:
    """The task's own function on each resample (unit weights [B, G]), scored, mean over seeds."""
    assert route.fn is not None and route.targets is not None and route.predictions is not None
    members = _unit_members(route.units, len(route.targets)) if route.units is not None else None
    out = np.empty(len(weights))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b, w in enumerate(weights):
            drawn = np.repeat(np.arange(len(w)), w.astype(np.int64))
            if members is None:
                idx, t = drawn, [route.targets[i] for i in drawn]
            else:
                idx = np.concatenate([members[u] for u in drawn])
                t = [_relabel(route.targets[i], c) for c, u in enumerate(drawn) for i in members[u]]
            out[b] = np.mean([route.scored(float(route.fn(t, [row[i] for i in idx])[route.name]))
                              for row in route.predictions])
    return out


def _replicates(route: MetricRoute, weights: np.ndarray) -> np.ndarray:
    """[B] scored metric values (mean over seeds) on the resamples given by unit weights [B, G]."""
    if route.kind == "loop":
        return _loop_values(route, weights[:LOOP_RESAMPLES])
    if route.kind == "sum":
        assert route.p is not None
        w = weights[:, route.units] if route.units is not None else weights
        return np.mean([_sum_values(route, w @ route.p[s]) for s in range(route.p.shape[0])], axis=0)
    assert route.t is not None and route.p is not None and route.kernel is not None
    w = weights[:, route.units] if route.kind == "kernel" and route.units is not None else weights
    return np.mean([route.scored(route.kernel(route.t, route.p[s], w)) for s in range(route.p.shape[0])], axis=0)


def _n_units(targets: Sequence[Any]) -> tuple[int, np.ndarray | None]:
    units = resampling_units(targets)
    return (len(targets) if units is None else int(units.max()) + 1), units


def percentile_ci(replicates: np.ndarray, level: float = LEVEL) -> tuple[float | None, float | None]:
    """Percentile interval of the finite replicates (None when there are none)."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return None, None
    lo, hi = np.percentile(r, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap(metric_fns: Sequence[MetricFn], targets: Sequence[Any], predictions: Sequence[Sequence[Any]],
              n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL
              ) -> tuple[dict[str, dict[str, Any]], np.ndarray]:
    """(`bootstrap_ci`'s dict, [B] replicates of the task score: `scoring.task_score_replicates` per resample)."""
    targets = list(targets)
    routes = route_metrics(metric_fns, targets, predictions)
    n_units, _ = _n_units(targets)
    weights = bootstrap_weights(n_units, n_resamples, seed)
    out, reps = {}, {}
    for route in routes:
        r = _replicates(route, weights)
        lo, hi = percentile_ci(r, level)
        out[route.name] = {"value": route.value, "ci": [lo, hi], "resamples": int(len(r)), "method": route.kind,
                           "unit": "example" if route.units is None else "group"}
        reps[route.name] = r
    return out, task_score_replicates(reps)


def bootstrap_ci(metric_fns: Sequence[MetricFn], targets: Sequence[Any], predictions: Sequence[Sequence[Any]],
                 n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict[str, dict[str, Any]]:
    """{metric: {"value", "ci": [lo, hi], "resamples", "method", "unit"}} for one task (predictions: [S seeds][n])."""
    return bootstrap(metric_fns, targets, predictions, n_resamples, seed, level)[0]


# ------------------------------------------------------------------------------------------------ paired test
def _arms(route: MetricRoute, k: int, swap: np.ndarray, targets: list) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(score of A, score of B on the full sample, [P] scores of A's and B's arms under the unit swaps [P, G])."""
    if route.kind == "loop":
        assert route.fn is not None and route.predictions is not None

        def value(preds: list[list], fn: MetricFn = route.fn, name: str = route.name) -> float:
            return float(np.mean([route.scored(float(fn(targets, row)[name])) for row in preds]))

        pa, pb = route.predictions[:k], route.predictions[k:]
        ra, rb = [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for sw in swap[:LOOP_RESAMPLES]:
                ex = sw[route.units] if route.units is not None else sw
                ra.append(value([[b if s else a for a, b, s in zip(xa, xb, ex)] for xa, xb in zip(pa, pb)]))
                rb.append(value([[a if s else b for a, b, s in zip(xa, xb, ex)] for xa, xb in zip(pa, pb)]))
            return value(pa), value(pb), np.asarray(ra), np.asarray(rb)
    if route.kind == "sum":  # statistics of a swapped arm: its own total plus the swapped examples' differences
        assert route.p is not None
        ex = (swap[:, route.units] if route.units is not None else swap).astype(np.float64)
        sa, sb = route.p[:k], route.p[k:]

        def arm(own: np.ndarray, other: np.ndarray) -> tuple[float, np.ndarray]:
            full = float(np.mean([_sum_values(route, own[s].sum(axis=0)[None])[0] for s in range(k)]))
            reps = np.mean([_sum_values(route, own[s].sum(axis=0) + ex @ (other[s] - own[s])) for s in range(k)],
                           axis=0)
            return full, reps

        (fa, ra), (fb, rb) = arm(sa, sb), arm(sb, sa)
        return fa, fb, ra, rb
    assert route.p is not None and route.kernel is not None and route.t is not None
    if route.kind == "kernel" and route.units is not None:
        swap = swap[:, route.units]
    pa, pb = route.p[:k], route.p[k:]
    kern, t = route.kernel, route.t
    ones = np.ones((1, len(t)))
    full_a = float(np.mean([route.scored(kern(t[None, :], pa[s][None], ones))[0] for s in range(k)]))
    full_b = float(np.mean([route.scored(kern(t[None, :], pb[s][None], ones))[0] for s in range(k)]))
    ra = np.mean([route.scored(kern(t, np.where(swap, pb[s], pa[s]), ones)) for s in range(k)], axis=0)
    rb = np.mean([route.scored(kern(t, np.where(swap, pa[s], pb[s]), ones)) for s in range(k)], axis=0)
    return full_a, full_b, ra, rb


def _paired_routes(metric_fns: Sequence[MetricFn], targets: Sequence[Any], predictions_a: Sequence[Sequence[Any]],
                   predictions_b: Sequence[Sequence[Any]], n_permutations: int, seed: int
                   ) -> list[tuple[str, float, float, np.ndarray, np.ndarray]]:
    k = len(predictions_a)
    if k != len(predictions_b):
        raise ValueError(f"paired test needs the same number of seeds in both rows ({k} vs {len(predictions_b)})")
    targets = list(targets)
    n_units, _ = _n_units(targets)
    # Routed jointly so that both rows' labels share one code space.
    routes = route_metrics(metric_fns, targets, [*predictions_a, *predictions_b])
    swap = np.random.default_rng(seed).random((n_permutations, n_units)) < 0.5
    return [(route.name, *_arms(route, k, swap, targets)) for route in routes]


class PairedTest(NamedTuple):
    """A paired permutation test of rows A and B on one task: `diff` = task score of A - task score of B, `null` =
    [P] differences under random swaps, `metrics` = {metric: (difference, [P] null differences)} of each metric."""

    diff: float
    null: np.ndarray
    metrics: dict[str, tuple[float, np.ndarray]]


def paired_test(metric_fns: Sequence[MetricFn], targets: Sequence[Any], predictions_a: Sequence[Sequence[Any]],
                predictions_b: Sequence[Sequence[Any]], names: Sequence[str] | None = None,
                n_permutations: int = N_RESAMPLES, seed: int = 0) -> PairedTest:
    """Paired permutation test of the task score (`scoring.task_score_replicates` over the metrics in `names`, all
    when None) and of each metric, from one set of swaps.

    Seed s of A is paired with seed s of B (both rows need the same number of seeds); an example's (group's)
    predictions are swapped for every seed at once.
    """
    arms = _paired_routes(metric_fns, targets, predictions_a, predictions_b, n_permutations, seed)
    chosen = [a for a in arms if names is None or a[0] in names]
    if not chosen:
        raise ValueError(f"none of the metrics {list(names or [])} is reported by the task")
    observed = (task_score_replicates({name: fa for name, fa, _, _, _ in chosen})
                - task_score_replicates({name: fb for name, _, fb, _, _ in chosen}))
    null = (task_score_replicates({name: ra for name, _, _, ra, _ in chosen})
            - task_score_replicates({name: rb for name, _, _, _, rb in chosen}))
    return PairedTest(float(observed[0]), null, {name: (fa - fb, ra - rb) for name, fa, fb, ra, rb in arms})


def paired_permutation(metric_fns: Sequence[MetricFn], targets: Sequence[Any], predictions_a: Sequence[Sequence[Any]],
                       predictions_b: Sequence[Sequence[Any]], names: Sequence[str] | None = None,
                       n_permutations: int = N_RESAMPLES, seed: int = 0) -> tuple[float, np.ndarray]:
    """(observed difference A - B of the task score, [P] differences under random swaps): `paired_test`'s first
    two fields."""
    test = paired_test(metric_fns, targets, predictions_a, predictions_b, names, n_permutations, seed)
    return test.diff, test.null


def permutation_p_value(observed: float, null: np.ndarray) -> float | None:
    """Two-sided p-value: (1 + #|null| >= |observed|) / (1 + #finite null); None when undefined."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not math.isfinite(observed) or null.size == 0:
        return None
    extreme = np.abs(null) >= abs(observed) - 1e-9
    return float((1 + extreme.sum()) / (1 + null.size))


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjusted p-values (None stays None and does not count towards m)."""
    items = sorted(((p, k) for k, p in p_values.items() if p is not None), key=lambda x: x[0])
    m = len(items)
    out: dict[str, float | None] = {k: None for k in p_values}
    running = 0.0
    for i, (p, k) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


# ------------------------------------------------------------------------------------------------ JSON
def json_safe(obj: Any) -> Any:
    """`obj` with NaN/inf replaced by None and numpy scalars/arrays made plain, so json.dumps(allow_nan=False)
    writes standard JSON (bare NaN is not JSON and strict parsers reject the file)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
