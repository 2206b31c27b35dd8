"""Uncertainty for evaluation scores: bootstrap confidence intervals, paired permutation tests, Holm correction.

Why this module: a score on 48 or 277 validation examples is a noisy estimate, and two training strategies can only
be ranked when their difference is larger than that noise. Everything here works on the *per-example* targets and
predictions that evaluation keeps, so metrics that are not means over examples (F1, MCC, Pearson, Spearman) are
recomputed on every resample instead of being approximated.

* `bootstrap_ci`: percentile bootstrap over evaluation examples (1000 resamples, fixed seed). With several seeds
  of one row, the statistic is the mean over seeds, and an example is resampled together with all its seeds'
  predictions (the examples, not the seeds, are the sampled population).
* `paired_permutation`: two rows scored on the same examples. Under the null hypothesis "no difference", the two
  rows' predictions for an example are exchangeable, so each permutation swaps them on a random half of the
  examples (for every seed at once) and recomputes the difference of the metrics. A benchmark average is tested by
  averaging the per-task permutation differences (`permutation_p_value` on the averaged replicates).
* `holm`: Holm's step-down adjustment of the p-values of several rows compared with one baseline.

Each metric is computed by the fastest exact route that reproduces the task's own metric function on the full
sample: a vectorised kernel (accuracy, MCC, binary/macro F1, Pearson, Spearman), else a mean of per-example scores
(exact match, SQuAD F1, ROUGE), else the task's function itself in a loop over fewer resamples (BLEU, grouped
metrics). The route is checked against the task's reported value, so a kernel never silently changes a metric.
Pure numpy/scipy: no torch, no task registry.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "N_RESAMPLES",
    "LOOP_RESAMPLES",
    "LEVEL",
    "ALPHA",
    "MetricRoute",
    "route_metrics",
    "bootstrap_indices",
    "bootstrap",
    "bootstrap_ci",
    "percentile_ci",
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
Kernel = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (targets [B, n], predictions [B, n]) -> [B]


# ------------------------------------------------------------------------------------------------ encodings
def _key(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)


def _label_codes(targets: Sequence[Any], predictions: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Targets and predictions as codes 0..K-1 over the union of their values (K = number of distinct values)."""
    codes: dict[Any, int] = {}
    t = np.array([codes.setdefault(_key(v), len(codes)) for v in targets], dtype=np.int64)
    p = np.array([[codes.setdefault(_key(v), len(codes)) for v in row] for row in predictions], dtype=np.int64)
    return t, p, len(codes)


def _floats(values: Sequence[Any]) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if isinstance(v, (int, float, np.number)):
            out[i] = float(v)
    return out


# ------------------------------------------------------------------------------------------------ kernels
def _confusion(t: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """[B, K, K] confusion counts (rows: target code, columns: prediction code) of each resample."""
    b = t.shape[0]
    flat = (np.arange(b)[:, None] * (k * k) + t * k + p).ravel()
    return np.bincount(flat, minlength=b * k * k).reshape(b, k, k).astype(np.float64)


def _k_accuracy(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return 100.0 * (t == p).mean(axis=1)


def _k_mcc(k: int) -> Kernel:
    def kernel(t: np.ndarray, p: np.ndarray) -> np.ndarray:
        c = _confusion(t, p, k)
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


def _k_binary_f1(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """t5's f1_score_with_invalid: a prediction that is neither 0 nor 1 counts as the wrong class."""
    p = np.where((p == 0) | (p == 1), p, 1 - t)
    tp = ((t == 1) & (p == 1)).sum(axis=1)
    fp = ((t == 0) & (p == 1)).sum(axis=1)
    fn = ((t == 1) & (p == 0)).sum(axis=1)
    return 100.0 * _f1(tp, fp, fn)


def _k_macro_f1(num_classes: int) -> Kernel:
    def kernel(t: np.ndarray, p: np.ndarray) -> np.ndarray:
        scores = []
        for c in range(num_classes):
            tc, pc = t == c, p == c
            scores.append(_f1((tc & pc).sum(axis=1), (~tc & pc).sum(axis=1), (tc & ~pc).sum(axis=1)))
        return 100.0 * np.mean(scores, axis=0)

    return kernel


def _k_pearson(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    dt = t - t.mean(axis=1, keepdims=True)
    dp = p - p.mean(axis=1, keepdims=True)
    # a constant row has no correlation (NaN, as scipy says); its mean-centred values are rounding noise, not 0
    constant = (t.max(axis=1) == t.min(axis=1)) | (p.max(axis=1) == p.min(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = 100.0 * (dt * dp).sum(axis=1) / np.sqrt((dt * dt).sum(axis=1) * (dp * dp).sum(axis=1))
    return np.where(constant, np.nan, r)


def _row_ranks(codes: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) within each row of dense value codes [B, m].

    Counting instead of sorting: per row, how many elements hold each code (bincount), cumulated; the rank of code
    u is cum[u] - (count[u] - 1) / 2. O(B * (m + U)), which is what makes Spearman on 1000 resamples cheap."""
    b = codes.shape[0]
    u = int(codes.max()) + 1
    counts = np.bincount((np.arange(b)[:, None] * u + codes).ravel(), minlength=b * u).reshape(b, u)
    rank_of_code = np.cumsum(counts, axis=1) - (counts - 1) / 2.0
    return np.take_along_axis(rank_of_code, codes, axis=1)


def _k_spearman(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Spearman on dense rank codes (see `_dense_codes`): Pearson of the within-resample average ranks."""
    return _k_pearson(_row_ranks(t), _row_ranks(p))


def _dense_codes(values: np.ndarray) -> np.ndarray:
    """Values replaced by the index of their value among the sorted distinct values (same shape). Rank statistics
    are unchanged by this, and integer codes can be counted per resample."""
    _, inverse = np.unique(values, return_inverse=True)
    return inverse.reshape(values.shape).astype(np.int64)


def _k_mean(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p.mean(axis=1)


# ------------------------------------------------------------------------------------------------ routes
@dataclass
class MetricRoute:
    """How one metric of one task is recomputed on resamples.

    `kind` is "kernel" (vectorised on the encoded arrays `t` [n] and `p` [S, n]), "mean" (per-example scores in
    `p`, [S, n]) or "loop" (the task's function `fn` called on each resample of the raw `targets`/`predictions`).
    `value` is the task's own value on the full sample (mean over seeds).
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


def _try_kernel(name: str, value: float, targets: list, predictions: list[list]) -> MetricRoute | None:
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
        full = np.mean([kernel(t[None, :], p[s][None, :])[0] for s in range(len(predictions))])
        if _close(float(full), value):
            return MetricRoute(name=name, kind="kernel", value=value, t=t, p=p, kernel=kernel)
    return None


def _try_mean(name: str, value: float, fn: MetricFn, targets: list, predictions: list[list]) -> MetricRoute | None:
    """Per-example scores fn([t], [p]) whose mean reproduces the task's value (exact match, SQuAD F1, ROUGE)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = np.array([[float(fn([t], [q])[name]) for t, q in zip(targets, row)] for row in predictions])
    except Exception:  # a metric undefined on one example (correlations, MCC) is not mean-decomposable
        return None
    if np.isnan(p).any() or not _close(float(p.mean(axis=1).mean()), value):
        return None
    return MetricRoute(name=name, kind="mean", value=value, t=np.zeros(len(targets)), p=p, kernel=_k_mean)


def route_metrics(metric_fns: Sequence[MetricFn], targets: Sequence[Any], predictions: Sequence[Sequence[Any]]
                  ) -> list[MetricRoute]:
    """One `MetricRoute` per metric the task's functions report, for `predictions` [S seeds][n examples]."""
    targets = list(targets)
    predictions = [list(row) for row in predictions]
    if any(len(row) != len(targets) for row in predictions):
        raise ValueError("every seed's predictions must cover the same examples as the targets")
    routes = []
    for fn in metric_fns:
        with warnings.catch_warnings():  # scipy's ConstantInputWarning on a constant prediction: NaN is the answer
            warnings.simplefilter("ignore")
            per_seed = [dict(fn(targets, row)) for row in predictions]
        for name in per_seed[0]:
            value = float(np.mean([float(s[name]) for s in per_seed]))
            route = _try_kernel(name, value, targets, predictions) or _try_mean(name, value, fn, targets, predictions)
            if route is None:
                route = MetricRoute(name=name, kind="loop", value=value, fn=fn, targets=targets,
                                    predictions=predictions)
            routes.append(route)
    return routes


# ------------------------------------------------------------------------------------------------ bootstrap
def bootstrap_indices(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[n_resamples, n] example indices drawn with replacement (fixed seed: the same CI on every run)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _loop_values(route: MetricRoute, rows: np.ndarray) -> np.ndarray:
    """The task's own function on each resample (rows: [B, n] index vectors), mean over seeds."""
    assert route.fn is not None and route.targets is not None and route.predictions is not None
    out = np.empty(len(rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b, idx in enumerate(rows):
            t = [route.targets[i] for i in idx]
            out[b] = np.mean([float(route.fn(t, [row[i] for i in idx])[route.name]) for row in route.predictions])
    return out


def _replicates(route: MetricRoute, idx: np.ndarray) -> np.ndarray:
    """[B] metric values (mean over seeds) on the resamples idx [B, n]."""
    if route.kind == "loop":
        return _loop_values(route, idx[:LOOP_RESAMPLES])
    assert route.t is not None and route.p is not None and route.kernel is not None
    t = route.t[idx]
    return np.mean([route.kernel(t, route.p[s][idx]) for s in range(route.p.shape[0])], axis=0)


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
    """(`bootstrap_ci`'s dict, [B] replicates of the task score = mean of the metrics per resample)."""
    routes = route_metrics(metric_fns, targets, predictions)
    idx = bootstrap_indices(len(list(targets)), n_resamples, seed)
    out, reps = {}, []
    for route in routes:
        r = _replicates(route, idx)
        lo, hi = percentile_ci(r, level)
        out[route.name] = {"value": route.value, "ci": [lo, hi], "resamples": int(len(r)), "method": route.kind}
        reps.append(r)
    b = min(len(r) for r in reps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample where every metric is undefined: NaN
        score = np.nanmean(np.stack([r[:b] for r in reps]), axis=0)
    return out, score


def bootstrap_ci(metric_fns: Sequence[MetricFn], targets: Sequence[Any], predictions: Sequence[Sequence[Any]],
                 n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict[str, dict[str, Any]]:
    """{metric: {"value", "ci": [lo, hi], "resamples", "method"}} for one task (predictions: [S seeds][n])."""
    return bootstrap(metric_fns, targets, predictions, n_resamples, seed, level)[0]


# ------------------------------------------------------------------------------------------------ paired test
def paired_permutation(metric_fns: Sequence[MetricFn], targets: Sequence[Any], predictions_a: Sequence[Sequence[Any]],
                       predictions_b: Sequence[Sequence[Any]], names: Sequence[str] | None = None,
                       n_permutations: int = N_RESAMPLES, seed: int = 0) -> tuple[float, np.ndarray]:
    """(observed difference A - B of the task score, [P] differences under random swaps of A's and B's predictions).

    The task score is the mean of the metrics in `names` (all when None). Seed s of A is paired with seed s of B
    (both rows need the same number of seeds); an example's predictions are swapped for every seed at once.
    """
    k = len(predictions_a)
    if k != len(predictions_b):
        raise ValueError(f"paired test needs the same number of seeds in both rows ({k} vs {len(predictions_b)})")
    targets = list(targets)
    n = len(targets)
    # Routed jointly so that both rows' labels share one code space.
    routes = route_metrics(metric_fns, targets, [*predictions_a, *predictions_b])
    swap = np.random.default_rng(seed).random((n_permutations, n)) < 0.5
    observed, diffs = [], []
    for route in routes:
        if names is not None and route.name not in names:
            continue
        if route.kind == "loop":
            assert route.fn is not None and route.predictions is not None
            def value(preds: list[list], fn: MetricFn = route.fn, name: str = route.name) -> float:
                return float(np.mean([float(fn(targets, row)[name]) for row in preds]))

            pa, pb = route.predictions[:k], route.predictions[k:]
            observed.append(value(pa) - value(pb))
            d = []
            for sw in swap[:LOOP_RESAMPLES]:
                xa = [[b if s else a for a, b, s in zip(ra, rb, sw)] for ra, rb in zip(pa, pb)]
                xb = [[a if s else b for a, b, s in zip(ra, rb, sw)] for ra, rb in zip(pa, pb)]
                d.append(value(xa) - value(xb))
            diffs.append(np.asarray(d))
            continue
        assert route.p is not None and route.kernel is not None and route.t is not None
        pa, pb = route.p[:k], route.p[k:]
        kern, t1 = route.kernel, route.t[None, :]
        observed.append(float(np.mean([kern(t1, pa[s][None])[0] - kern(t1, pb[s][None])[0] for s in range(k)])))
        t = np.broadcast_to(route.t, swap.shape)
        da = np.mean([kern(t, np.where(swap, pb[s], pa[s])) for s in range(k)], axis=0)
        db = np.mean([kern(t, np.where(swap, pa[s], pb[s])) for s in range(k)], axis=0)
        diffs.append(da - db)
    if not diffs:
        raise ValueError(f"none of the metrics {names} is reported by the task")
    b = min(len(d) for d in diffs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every metric undefined (e.g. a correlation of a constant): NaN
        return float(np.nanmean(observed)), np.nanmean(np.stack([d[:b] for d in diffs]), axis=0)


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
