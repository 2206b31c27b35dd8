"""A search for mixing weights in the style of RegMix (Liu et al. 2024, `sail-sg/regmix`):
`experiment_options.kind: mixing_search`.

    search_sample      (compute) N mixtures drawn from Dirichlet(prior * s), s from a log grid 0.1-5, rejecting any
                       that would repeat a task more than `max_epochs` passes over its data within the proxy budget;
                       seeded, so the same settings always give the same mixtures (its weights.json, one set per proxy)
    search_proxy_XX    N short proxy runs, one per mixture (`Stage.weights_from`), each evaluated on the tasks
    search_fit         (compute) a regressor from the weights to the proxies' validation score (`target`), used to
                       score `candidates` fresh mixtures (the same sampling, capped over the main budget); the
                       average of the `top_k` best predicted is the chosen mixture (its weights.json and
                       mixing/search.yaml); also reports the regressor's cross-validated rank correlation
    search_main        the main model on the chosen mixture, N + M steps, evaluated
    search_prior       the main model on the prior, N + M steps, evaluated: the row the search must beat

The `search` row's compute counts the proxies and the two compute stages too (the search's overhead).

`experiment_options.search` keys (all optional): `proxies` (N, default 16), `proxy_steps` (default 100),
`proxy_model` (a model preset; null: the run's model), `proxy_eval_examples` (evaluation examples per task of a
proxy; null: the run's `eval.max_examples`), `prior` (mixing settings of the prior, default temperature T = 2, i.e.
RegMix's sizes ** 0.5), `scales` (Dirichlet concentration scales, default 10 log-spaced values 0.1-5), `max_epochs`
(default 15, RegMix's), `seed` (default 0), `target` (`glue`, `super_glue`, `overall` or a task name; default
`overall`), `rank` (score by rank classification instead of generation, default false), `regressor` (`linear`:
ridge regression with leave-one-out choice of its penalty, the default for a few proxies; `gbm`: scikit-learn's
gradient boosting with RegMix's LightGBM settings: learning rate 0.01, up to 1000 trees, early stopping after 3
rounds without gain, from 20 proxies on), `candidates` (default 100000), `top_k` (default 128).

The epoch cap needs each task's size and how many of its examples one packed row holds; both are measured on the
training data (`task.num_examples`, `mixtures.MixtureDataset.planned_passes` with that task alone), so the check is
the repetition guard of training (`mixing.max_passes`) applied to a whole mixture at once:
passes_i(w) = w_i * rows / sum_j(w_j / per_row_j) / size_i, with rows = steps * batch_size * accumulation * devices.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lightning_t5.eval.scoring import benchmark_averages, task_score
from lightning_t5.train.mixing_weights import read_weights, write_weights

from .doremi import model_override, positive_steps, sub_options
from .plan import (ComputeContext, ExperimentConfigError, Row, Stage, _Builder, _positive_int, _tasks, register_compute,
                   register_kind, row, weights_source)

__all__ = ["SEARCH_KEYS", "DEFAULT_SCALES", "sample_mixtures", "planned_passes", "epoch_cap", "fit_regressor",
           "top_k_average", "plan_search"]

SEARCH_KEYS = ("proxies", "proxy_steps", "proxy_model", "proxy_eval_examples", "prior", "scales", "max_epochs",
               "seed", "target", "rank", "regressor", "candidates", "top_k")
log = logging.getLogger(__name__)
DEFAULT_SCALES = tuple(float(x) for x in np.geomspace(0.1, 5.0, 10))
REGRESSORS = ("linear", "gbm")


# --------------------------------------------------------------------------------------------------- the maths
def planned_passes(weights: np.ndarray, sizes: np.ndarray, per_row: np.ndarray, rows: float) -> np.ndarray:
    """Passes over each task's data when `rows` packed rows are drawn with example shares `weights` ([n, K] or
    [K]); a task of example share w_i takes w_i / per_row_i of a row per example drawn."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    examples = rows / np.sum(w / per_row, axis=1, keepdims=True)
    out = w * examples / sizes
    return out if np.ndim(weights) > 1 else out[0]


def epoch_cap(sizes: np.ndarray, per_row: np.ndarray, rows: float, max_epochs: float
              ) -> Callable[[np.ndarray], np.ndarray]:
    """A filter: for [n, K] weights, which rows repeat no task more than `max_epochs` times in `rows` rows."""
    def accept(weights: np.ndarray) -> np.ndarray:
        return np.all(planned_passes(weights, sizes, per_row, rows) <= max_epochs, axis=1)
    return accept


def sample_mixtures(prior: np.ndarray, n: int, seed: int, accept: Callable[[np.ndarray], np.ndarray],
                    scales: Sequence[float] = DEFAULT_SCALES, batch: int = 4096, max_draws: int = 10_000_000
                    ) -> np.ndarray:
    """`n` mixtures [n, K] from Dirichlet(prior * s) (s drawn from `scales` per mixture) that `accept` keeps, in
    draw order; a pure function of its arguments. Raises ExperimentConfigError when too few are accepted (a cap
    the budget cannot meet)."""
    prior = np.asarray(prior, dtype=np.float64)
    prior = prior / prior.sum()
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    count, drawn = 0, 0
    while count < n:
        if drawn >= max_draws:
            raise ExperimentConfigError(
                f"experiment_options.search: only {count} of {n} sampled mixtures respect max_epochs after {drawn} "
                "draws; raise max_epochs, lower the proxy steps or give the small tasks more weight in the prior")
        s = rng.choice(np.asarray(scales, dtype=np.float64), size=batch)
        alpha = np.maximum(prior[None, :] * s[:, None], 1e-6)
        w = rng.gamma(alpha)  # Dirichlet via normalised gammas (vectorised over the batch)
        total = w.sum(axis=1, keepdims=True)
        ok = total[:, 0] > 0
        w = np.where(ok[:, None], w / np.where(total > 0, total, 1.0), 0.0)
        ok &= accept(w) if ok.any() else ok
        kept.append(w[ok])
        count += int(ok.sum())
        drawn += batch
    return np.concatenate(kept)[:n]


def fit_regressor(x: np.ndarray, y: np.ndarray, kind: str, seed: int) -> Any:
    """A scikit-learn regressor of y (validation score) on x (mixture weights), fitted."""
    if kind == "linear":
        from sklearn.linear_model import RidgeCV

        model = RidgeCV(alphas=np.logspace(-6, 2, 17))
    elif kind == "gbm":
        from sklearn.ensemble import GradientBoostingRegressor

        model = GradientBoostingRegressor(learning_rate=0.01, n_estimators=1000, min_samples_leaf=2,
                                          n_iter_no_change=3 if len(y) >= 20 else None, random_state=seed)
    else:
        raise ExperimentConfigError(f"experiment_options.search.regressor={kind!r}; choose one of {REGRESSORS}")
    return model.fit(x, y)


def cross_validated_rank_correlation(x: np.ndarray, y: np.ndarray, kind: str, seed: int) -> float | None:
    """Spearman correlation between the proxies' scores and the regressor's predictions of them from the other
    proxies (10-fold, leave-one-out below 10 proxies): how much the regressor knows (near 0: nothing, and the chosen
    mixture is then the prior's neighbourhood rather than a finding)."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold

    if len(y) < 4 or np.ptp(y) == 0:
        return None
    pred = np.empty(len(y))
    for train, test in KFold(n_splits=min(len(y), 10), shuffle=True, random_state=seed).split(x):
        pred[test] = fit_regressor(x[train], y[train], kind, seed).predict(x[test])
    if np.ptp(pred) == 0:
        return None
    value = float(spearmanr(pred, y).statistic)
    return value if math.isfinite(value) else None


def top_k_average(candidates: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """Mean of the `k` candidates with the highest predicted score (RegMix's top-k average); ties by order."""
    k = max(1, min(int(k), len(candidates)))
    best = np.argsort(-predicted, kind="stable")[:k]
    mean = candidates[best].mean(axis=0)
    return mean / mean.sum()


# --------------------------------------------------------------------------------------- data the maths needs
def _mixture(ctx: ComputeContext) -> Any:
    from mixtures import Mixture, MixtureRegistry, with_objective

    name = ctx.stage.mixture
    mixture = MixtureRegistry.get(name) if name in MixtureRegistry.names() else Mixture(
        name, list(ctx.plan.mixtures[name]))
    objective = ctx.cfg.get("objective")
    if objective:
        from omegaconf import OmegaConf

        mixture = with_objective(mixture, OmegaConf.to_container(objective, resolve=True))
    return mixture


def _rows(cfg: Any, steps: int) -> float:
    """Packed rows `steps` optimizer steps draw (all ranks): steps x batch_size x accumulation x devices x nodes."""
    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices", 1)
    devices = devices if isinstance(devices, int) and devices > 0 else 1
    return float(steps * int(cfg.data.batch_size) * int(trainer.get("accumulate_grad_batches", 1) or 1) * devices
                 * int(trainer.get("num_nodes", 1) or 1))


def mixture_statistics(mixture: Any, cfg: Any, prior_mixing: Mapping[str, Any]
                       ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(task names, prior shares, training examples per task, examples of each task per packed row)."""
    from mixtures import MixingConfig, MixtureDataset

    names = list(mixture.task_names)
    seq = {"inputs": int(cfg.data.sequence_length.inputs), "targets": int(cfg.data.sequence_length.targets)}
    prior = mixture.rates("train", MixingConfig.from_dict(dict(prior_mixing)), sequence_length=seq)
    sizes, per_row = [], []
    batch = int(cfg.data.batch_size)
    for name in names:
        alone = MixingConfig(rate="explicit", weights={n: float(n == name) for n in names}, max_passes=None)
        ds = MixtureDataset(mixture, "train", seq, batch_size=batch, mixing=alone, pack=bool(cfg.data.pack),
                            granularity=str(cfg.data.get("granularity", "example")), seed=0)
        info = ds.planned_passes(1)[name]
        sizes.append(float(info["size"]))
        per_row.append(float(info["examples"]) / batch)
    return names, np.array([prior[n] for n in names]), np.array(sizes), np.array(per_row)


def _sample_stage(ctx: ComputeContext) -> dict[str, Any]:
    """Compute stage `search_sample`: the proxies' mixtures, as weight sets keyed by proxy name."""
    p = ctx.stage.params
    names, prior, sizes, per_row = mixture_statistics(_mixture(ctx), ctx.cfg, p["prior"])
    accept = epoch_cap(sizes, per_row, _rows(ctx.cfg, int(p["proxy_steps"])), float(p["max_epochs"]))
    weights = sample_mixtures(prior, len(p["keys"]), int(p["seed"]), accept, p["scales"])
    sets = {key: dict(zip(names, w.tolist())) for key, w in zip(p["keys"], weights)}
    passes = planned_passes(weights, sizes, per_row, _rows(ctx.cfg, int(p["proxy_steps"])))
    write_weights(ctx.run_dir, sets=sets, name="search_sample",
                  source=f"{len(sets)} proxy mixtures from Dirichlet(prior * s), seed {p['seed']}, at most "
                         f"{p['max_epochs']} passes over any task in {p['proxy_steps']} steps",
                  extra={"prior": dict(zip(names, prior.tolist())), "sizes": dict(zip(names, sizes.tolist())),
                         "examples_per_row": dict(zip(names, per_row.tolist())),
                         "max_passes": float(passes.max())})
    return {"summary": f"{len(sets)} proxy mixtures (max {float(passes.max()):.2f} passes over a task, cap "
                       f"{p['max_epochs']})", "sets": sets}


def proxy_score(metrics: Mapping[str, Mapping[str, Any]], benchmarks: Mapping[str, str | None], target: str,
                rank: bool) -> float | None:
    """The validation score a proxy is judged by: a benchmark average (`glue`, `super_glue`, `overall`) or one
    task's score, by the one scoring function (generation, or rank classification with `rank`)."""
    if target in metrics:
        return task_score(metrics[target], rank=rank)
    value = benchmark_averages(metrics, benchmarks, rank=rank).get(target)
    return value if value is not None and math.isfinite(value) else None


def _fit_stage(ctx: ComputeContext) -> dict[str, Any]:
    """Compute stage `search_fit`: regress the proxies' scores on their weights, pick the top-k average."""
    from .runner import task_benchmarks

    p = ctx.stage.params
    bench = task_benchmarks(list(ctx.plan.tasks))
    xs, ys, names = [], [], None
    for dep in ctx.stage.after:
        st = ctx.plan.stage(dep)
        if st.compute or not st.weights_from:
            continue
        source, key = weights_source(st.weights_from)
        w = read_weights(ctx.experiment_dir / ctx.plan.stage(source).run_dir, key)
        names = names or list(w)
        score = proxy_score(ctx.results[dep].get("metrics") or {}, bench, str(p["target"]), bool(p["rank"]))
        if score is None:
            got = sorted(ctx.results[dep].get("metrics") or {})
            raise ExperimentConfigError(f"proxy {dep!r} has no {'rank ' if p['rank'] else ''}score for target "
                                        f"{p['target']!r}; it has metrics of {got}")
        xs.append([w[n] for n in names])
        ys.append(score)
    x, y = np.array(xs), np.array(ys)
    model = fit_regressor(x, y, str(p["regressor"]), int(p["seed"]))
    _, prior, sizes, per_row = mixture_statistics(_mixture(ctx), ctx.cfg, p["prior"])
    accept = epoch_cap(sizes, per_row, _rows(ctx.cfg, int(p["main_steps"])), float(p["max_epochs"]))
    cands = sample_mixtures(prior, int(p["candidates"]), int(p["seed"]) + 1, accept, p["scales"])
    chosen = top_k_average(cands, model.predict(cands), int(p["top_k"]))
    cv = cross_validated_rank_correlation(x, y, str(p["regressor"]), int(p["seed"]))
    weights = dict(zip(names or [], chosen.tolist()))
    best = int(np.argmax(y))
    write_weights(ctx.run_dir, weights, name="search",
                  source=f"RegMix-style search: {p['regressor']} regressor on {len(y)} proxies' {p['target']}"
                         f"{' (rank)' if p['rank'] else ''} score, mean of the top {p['top_k']} of "
                         f"{p['candidates']} candidates",
                  extra={"proxy_scores": [float(v) for v in y], "best_proxy_weights": dict(zip(names or [], x[best])),
                         "predicted_score": float(model.predict(chosen[None, :])[0]),
                         "cv_rank_correlation": cv})
    if np.ptp(y) == 0:
        log.warning("search_fit: every proxy scored %.2f; the regressor learned nothing and the chosen mixture is "
                    "an average of arbitrary candidates around the prior (more proxy steps or another target)", y[0])
    summary = (("ALL PROXIES SCORED THE SAME: the choice is uninformed. " if np.ptp(y) == 0 else "")
               + f"regressor {p['regressor']} on {len(y)} proxies (scores {y.min():.2f}-{y.max():.2f}); "
               f"cross-validated rank correlation {'n/a' if cv is None else f'{cv:.2f}'}; chosen weights "
               + ", ".join(f"{n} {v:.3f}" for n, v in weights.items()))
    return {"summary": summary, "weights": weights, "cv_rank_correlation": cv}


register_compute("search_sample", _sample_stage)
register_compute("search_fit", _fit_stage)


# --------------------------------------------------------------------------------------------------- the plan
def _number(opts: Mapping[str, Any], key: str, default: float, positive: bool = True) -> float:
    value = opts.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value <= 0):
        raise ExperimentConfigError(f"experiment_options.search.{key} must be a positive number, got {value!r}")
    return float(value)


def plan_search(block: Mapping[str, Any], b: _Builder, mixing: Mapping[str, Any],
                prior_stage: str | None = None) -> list[Row]:
    """Add the search's stages to `b` and return its rows. `prior_stage`: a stage already in `b` trained on the
    prior, used as the prior's row instead of a `search_prior` stage (a page that has that row trains it once)."""
    tasks = _tasks(block)
    corpus = block.get("corpus_task")
    members = (*tasks, corpus) if corpus else tuple(tasks)
    total = _positive_int(block, "pretrain_steps") + _positive_int(block, "finetune_steps")
    opts = sub_options(block, "search", SEARCH_KEYS)
    n = positive_steps(opts, "search", "proxies", 16)
    proxy_steps = positive_steps(opts, "search", "proxy_steps", 100)
    regressor = str(opts.get("regressor", "linear"))
    if regressor not in REGRESSORS:
        raise ExperimentConfigError(f"experiment_options.search.regressor={regressor!r}; choose one of {REGRESSORS}")
    scales = [float(s) for s in (opts.get("scales") or DEFAULT_SCALES)]
    if any(s <= 0 for s in scales):
        raise ExperimentConfigError(f"experiment_options.search.scales must be positive, got {scales}")
    target = str(opts.get("target", "overall"))
    if target not in ("glue", "super_glue", "overall", *tasks):
        raise ExperimentConfigError(f"experiment_options.search.target={target!r}: a benchmark (glue, super_glue, "
                                    f"overall) or one of experiment_options.tasks {list(tasks)}")
    prior = dict(opts.get("prior") or {**dict(mixing), "rate": "temperature", "temperature": 2.0})
    seed = int(opts.get("seed", 0))
    small = model_override(opts.get("proxy_model"), "search.proxy_model")
    proxy_over: dict[str, Any] = dict(small)
    if opts.get("proxy_eval_examples") is not None:
        proxy_over["eval"] = {"max_examples": positive_steps(opts, "search", "proxy_eval_examples", 1)}
    optim = dict(block.get("pretrain_optim") or {})
    mix = b.mixture("all", members)
    keys = [f"search_proxy_{i:0{len(str(n - 1))}d}" for i in range(n)]
    common = {"prior": prior, "scales": scales, "seed": seed, "max_epochs": _number(opts, "max_epochs", 15.0)}
    sample = b.add(Stage(name="search_sample", mixture=mix, tasks=members, steps=0, role="compute",
                         compute="search_sample", params={**common, "keys": keys, "proxy_steps": proxy_steps}))
    proxies = [b.add(Stage(name=key, mixture=mix, tasks=members, steps=proxy_steps, mixing={"rate": "explicit"},
                           optim=optim, eval_tasks=tasks, role="proxy", weights_from=f"{sample}:{key}",
                           overrides=proxy_over)) for key in keys]
    fit = b.add(Stage(name="search_fit", mixture=mix, tasks=members, steps=0, role="compute", compute="search_fit",
                      after=(sample, *proxies),
                      params={**common, "target": target, "rank": bool(opts.get("rank", False)),
                              "regressor": regressor, "main_steps": total,
                              "candidates": positive_steps(opts, "search", "candidates", 100_000),
                              "top_k": positive_steps(opts, "search", "top_k", 128)}))
    main = b.add(Stage(name="search_main", mixture=mix, tasks=members, steps=total, mixing={"rate": "explicit"},
                       optim=optim, eval_tasks=tasks, role="multitask", weights_from=fit))
    base = prior_stage or b.add(Stage(name="search_prior", mixture=mix, tasks=members, steps=total, mixing=prior,
                                      optim=optim, eval_tasks=tasks, role="multitask"))
    return [row(b, "prior", "Search prior", {t: base for t in tasks}),
            row(b, "search", "Search (RegMix-style) weights", {t: main for t in tasks})]


register_kind("mixing_search", plan_search)
