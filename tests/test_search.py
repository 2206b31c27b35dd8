"""The RegMix-style mixing search: proxy mixtures that respect the epoch cap (and are the same for the same seed),
the regressor and top-k average, and the whole experiment through the runner with a fake `fit`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from lightning_t5.experiments import make_plan, run_experiment
from lightning_t5.experiments.plan import ExperimentConfigError
from lightning_t5.experiments.search import (
    epoch_cap,
    fit_regressor,
    cross_validated_rank_correlation,
    planned_passes,
    sample_mixtures,
    top_k_average,
)
from lightning_t5.train.mixing_weights import read_weights
from test_experiments_runner import FakeFit, make_cfg

SIZES = np.array([64.0, 2_490.0, 5_000.0, 14_000.0])  # CB, RTE, SST-2, corpus windows (shipped data)
PER_ROW = np.array([1.1, 1.3, 6.2, 1.0])  # examples of each task one packed 128/32 row holds


def test_planned_passes_by_hand() -> None:
    # 1000 rows, half the examples from each of two tasks: a row holds 1/(0.5/2 + 0.5/1) = 4/3 examples
    got = planned_passes(np.array([0.5, 0.5]), np.array([100.0, 1000.0]), np.array([2.0, 1.0]), 1000)
    examples = 1000 * 4 / 3
    np.testing.assert_allclose(got, [0.5 * examples / 100, 0.5 * examples / 1000])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proxy_weights_respect_the_epoch_cap(seed: int) -> None:
    prior = SIZES ** 0.5 / (SIZES ** 0.5).sum()
    rows = 100 * 16.0  # 100 proxy steps of 16 packed rows
    accept = epoch_cap(SIZES, PER_ROW, rows, max_epochs=2.0)
    weights = sample_mixtures(prior, 64, seed, accept)
    assert weights.shape == (64, 4)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert (planned_passes(weights, SIZES, PER_ROW, rows) <= 2.0).all()
    # the cap binds: without it, the same draws put far more passes on the small task (CB)
    free = sample_mixtures(prior, 64, seed, lambda w: np.ones(len(w), bool))
    assert (planned_passes(free, SIZES, PER_ROW, rows) > 2.0).any()
    # seeded: the plan's mixtures are a pure function of the settings
    np.testing.assert_array_equal(sample_mixtures(prior, 64, seed, accept), weights)


def test_an_unreachable_cap_is_a_config_error() -> None:
    accept = epoch_cap(SIZES, PER_ROW, 1e9, max_epochs=1.0)  # no mixture can stay under one pass
    with pytest.raises(ExperimentConfigError, match="respect max_epochs"):
        sample_mixtures(np.full(4, 0.25), 4, 0, accept, max_draws=8192)


@pytest.mark.parametrize("kind", ["linear", "gbm"])
def test_regressor_and_top_k_average_find_the_better_task(kind: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.dirichlet(np.ones(3), size=64)
    y = 50 + 30 * x[:, 1] + rng.normal(0, 0.5, 64)  # the score rises with task 1's weight
    model = fit_regressor(x, y, kind, seed=0)
    cands = rng.dirichlet(np.ones(3), size=2000)
    chosen = top_k_average(cands, model.predict(cands), 32)
    assert chosen.sum() == pytest.approx(1.0) and chosen[1] > 0.6
    if kind == "linear":  # (gbm's 10 refits take seconds on a busy CPU; the function is the same)
        assert cross_validated_rank_correlation(x[:24], y[:24], kind, 0) > 0.5


def test_top_k_average_by_hand() -> None:
    cands = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(top_k_average(cands, np.array([3.0, 1.0, 2.0]), 2), [0.75, 0.25])


class SearchFakeFit(FakeFit):
    """FakeFit whose score rises with the weight the run gave glue_rte (so the search has something to find)."""

    def __call__(self, cfg):
        result = super().__call__(cfg)
        weights = (OmegaConf.to_container(cfg.mixing).get("weights") or {}) if cfg.mixing.rate == "explicit" else {}
        share = weights.get("glue_rte", 0.0) / max(sum(weights.values()), 1e-9) if weights else 0.3
        for task in result["metrics"]:
            result["metrics"][task] = {"accuracy": 40.0 + 40.0 * share}
        (Path(cfg.run_dir) / "metrics.json").write_text(json.dumps(result))
        return result


def search_cfg(tmp_path: Path, **search) -> OmegaConf:
    cfg = make_cfg(tmp_path, kind="mixing_search", tasks=["glue_rte", "super_glue_cb"],
                   corpus_task="corpus_span_corruption",
                   search={"proxies": 6, "proxy_steps": 10, "candidates": 2000, "top_k": 16, "max_epochs": 15,
                           **search})
    cfg.experiment = "rs"
    cfg.data.pack = True
    cfg.data.sequence_length = {"inputs": 64, "targets": 16}
    return cfg


def test_search_plan(tmp_path: Path) -> None:
    plan = make_plan(search_cfg(tmp_path, proxy_eval_examples=20))
    names = [s.name for s in plan.stages]
    assert names == ["search_sample", *[f"search_proxy_{i}" for i in range(6)], "search_fit", "search_main",
                     "search_prior"]
    proxy = plan.stage("search_proxy_3")
    assert proxy.weights_from == "search_sample:search_proxy_3" and proxy.steps == 10
    assert proxy.overrides == {"eval": {"max_examples": 20}} and proxy.eval_tasks == ("glue_rte", "super_glue_cb")
    assert plan.stage("search_fit").dependencies() == ("search_sample", *[f"search_proxy_{i}" for i in range(6)])
    rows = {r.key: r for r in plan.rows}
    assert rows["search"].stages == (*names[:8], "search_main")  # the proxies count in the search's compute
    assert rows["prior"].stages == ("search_prior",)
    # the prior: the experiment's mixing at temperature T = 2 (RegMix's sizes ** 0.5)
    assert plan.stage("search_prior").mixing == {"rate": "temperature", "max_examples": 64, "temperature": 2.0}
    with pytest.raises(ExperimentConfigError, match="search.target='sst2'"):
        make_plan(search_cfg(tmp_path, target="sst2"))


def test_search_experiment_runs_proxies_fits_and_trains_the_chosen_mixture(tmp_path: Path) -> None:
    cfg = search_cfg(tmp_path)
    fit = SearchFakeFit()
    table = run_experiment(cfg, fit_fn=fit)
    out = tmp_path / "runs" / "rs"
    calls = {c["stage"]: c for c in fit.calls}
    assert list(calls) == [*[f"search_proxy_{i}" for i in range(6)], "search_main", "search_prior"]
    sample = json.loads((out / "stages/search_sample/weights.json").read_text())
    assert sample["max_passes"] <= 15
    for i in range(6):  # each proxy trained on its own sampled mixture
        key = f"search_proxy_{i}"
        assert calls[key]["mixing"]["weights"] == pytest.approx(sample["sets"][key])
        assert calls[key]["max_steps"] == 10
    chosen = read_weights(out / "stages/search_fit")
    assert calls["search_main"]["mixing"]["weights"] == pytest.approx(chosen)
    assert chosen["glue_rte"] > max(s["glue_rte"] for s in sample["sets"].values()) * 0.5
    assert chosen["glue_rte"] > sample["prior"]["glue_rte"]  # the search moved towards what scores better
    assert (out / "stages/search_fit/mixing/search.yaml").is_file()
    rows = {r["key"]: r for r in table["rows"]}
    assert rows["search"]["compute"]["steps"] == 6 * 10 + 12 and rows["prior"]["compute"]["steps"] == 12
    assert rows["search"]["compute"]["stages"] == 9
    computed = [table["stage_times"][n] for n in ("search_sample", "search_fit")]
    assert all(not t["reused"] and t["end"] >= t["start"] for t in computed)  # run now, in this process
    overhead = sum(json.loads((out / f"stages/{n}/result.json").read_text())["wall_time_s"]
                   for n in ("search_sample", "search_fit"))
    assert rows["search"]["compute"]["wall_time_s"] == pytest.approx(7 * 0.5 + overhead, abs=2e-3)  # 6 proxies + main
    # a rerun reuses every stage, the compute ones included; a new folder draws the very same mixtures
    again = SearchFakeFit()
    run_experiment(cfg, fit_fn=again)
    assert again.calls == []
    fresh = search_cfg(tmp_path)
    fresh.experiment_options.run_name = "rs2"
    run_experiment(fresh, fit_fn=SearchFakeFit())
    assert json.loads((tmp_path / "runs/rs2/stages/search_sample/weights.json").read_text())["sets"] == sample["sets"]
