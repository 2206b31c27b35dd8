"""The Optuna route over mixing weights (configs/tuning/default_weights.yaml), tested without the optional Optuna
packages: the composed config turns each trial's uniforms into weights -ln(u) (uniform on the simplex once the
sampler normalises them), and train.py returns the score the sweeper maximises."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from lightning_t5.errors import ConfigError
from lightning_t5.train.schema import neg_log, validate_config
from mixtures import MixingConfig, MixtureRegistry

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
TASKS = ["glue_sst2", "glue_cola", "glue_mrpc", "glue_stsb", "glue_rte", "super_glue_cb", "super_glue_copa"]


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lightning_t5.train.schema import register_schema

    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = hydra_compose(config_name="config", overrides=["+tuning=default_weights", *overrides])
    GlobalHydra.instance().clear()
    return cfg


def test_a_trial_s_uniforms_become_weights_on_the_simplex() -> None:
    u = dict(zip(TASKS, [0.9, 0.1, 0.5, 0.25, 0.75, 0.01, 0.6]))
    cfg = validate_config(compose(*[f"tuning.u.{t}={v}" for t, v in u.items()]))  # what the sweeper passes
    weights = OmegaConf.to_container(cfg.mixing.weights, resolve=True)
    assert weights == pytest.approx({t: -math.log(v) for t, v in u.items()})
    shares = MixtureRegistry.get(cfg.mixture).rates(mixing=MixingConfig.from_dict({"rate": "explicit",
                                                                                   "weights": weights}))
    total = sum(-math.log(v) for v in u.values())
    assert shares == pytest.approx({t: -math.log(v) / total for t, v in u.items()})


def test_normalised_neg_log_uniforms_are_uniform_on_the_simplex() -> None:
    """Dirichlet(1, ..., 1): each share has mean 1/K and variance (K - 1) / (K^2 (K + 1))."""
    k, u = 7, np.random.default_rng(0).uniform(size=(20000, 7))
    w = np.vectorize(neg_log)(u)
    shares = w / w.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(shares.mean(axis=0), 1 / k, atol=0.005)  # 5 standard errors
    np.testing.assert_allclose(shares.var(axis=0), (k - 1) / (k * k * (k + 1)), rtol=0.05)
    with pytest.raises(ConfigError, match=r"neg_log needs a number in \(0, 1\]"):
        neg_log(0.0)


def test_train_py_returns_the_tuning_objective() -> None:
    spec = importlib.util.spec_from_file_location("train_script", Path(__file__).resolve().parents[1] / "train.py")
    train = importlib.util.module_from_spec(spec)  # by path: bench/train.py may be on sys.path in this process
    spec.loader.exec_module(train)

    cfg = compose("tuning.objective=glue")
    result = {"metrics": {"glue_sst2": {"accuracy": 80.0, "rank_accuracy": 90.0},
                          "glue_mrpc": {"accuracy": 60.0, "f1": 70.0, "rank_accuracy": 50.0, "rank_f1": 40.0},
                          "super_glue_cb": {"accuracy": 10.0, "f1": 20.0}}}
    assert train.sweep_score(cfg, result) == pytest.approx((80.0 + 65.0) / 2)  # GLUE average of task scores
    cfg.tuning.rank = True
    assert train.sweep_score(cfg, result) == pytest.approx((90.0 + 45.0) / 2)
    cfg.tuning.objective = "glue_mrpc"
    assert train.sweep_score(cfg, result) == pytest.approx(45.0)
    cfg.tuning.objective = "glue_qqp"
    with pytest.raises(ConfigError, match="tuning.objective='glue_qqp'"):
        train.sweep_score(cfg, result)
    cfg.tuning = None
    assert train.sweep_score(cfg, result) is None  # a plain run returns nothing to Hydra
