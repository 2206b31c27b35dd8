"""The DoReMi and mixing-search presets: they compose, every stage config is valid, the small ones use the shipped
GLUE sets + the English corpus and fit their CPU budget at the measured step cost (the later mixing-methods page
reuses their stages), and the paper-scale DoReMi preset has a small proxy choosing a larger model's weights."""

from __future__ import annotations

import pytest

from lightning_t5.experiments.plan import make_plan
from test_experiment_presets_small import GLUE, SECONDS_PER_STEP, STAGE_START_S, TASK_EVAL_S, compose

DRO_STEP_FACTOR = 2.0  # a proxy step adds the reference's forward pass and a second cross-entropy: counted as 2 steps
FULL_SPLIT = 543  # mean examples of the five validation splits (CoLA 527, SST-2 436, MRPC 863, STS-B 750, RTE 139)


def planned_cpu_minutes(cfg) -> float:
    plan = make_plan(cfg)
    seconds = 0.0
    for stage in plan.stages:
        if stage.compute:
            seconds += 30.0  # sizes and packing per task from the token caches, sampling, a regression
            continue
        factor = DRO_STEP_FACTOR if stage.role == "proxy" and stage.checkpoint_inputs else 1.0
        per_task = (stage.overrides.get("eval") or {}).get("max_examples")
        eval_s = TASK_EVAL_S * (min(1.0, per_task / FULL_SPLIT) if per_task else 1.0)
        seconds += stage.steps * SECONDS_PER_STEP * factor + STAGE_START_S + len(stage.eval_tasks) * eval_s
    return seconds / 60


@pytest.mark.parametrize("name", ["doremi_small", "mixing_search_small"])
def test_small_method_presets_compose_and_fit_their_budget(name, tmp_path):
    from lightning_t5.experiments.runner import stage_config
    from lightning_t5.train.schema import validate_config

    cfg = compose(name)
    assert cfg.model.name == "tiny" and cfg.trainer.accelerator == "cpu" and cfg.eval.max_examples is None
    plan = make_plan(cfg)
    assert set(plan.tasks) == GLUE and plan.corpus_task == "corpus_span_corruption"
    for stage in plan.stages:
        if stage.compute:
            continue
        inputs = {key: str(tmp_path / "ref.ckpt") for key in stage.checkpoint_inputs}
        c = validate_config(stage_config(cfg, stage, tmp_path / stage.run_dir, None, inputs))
        assert c.trainer.max_steps == stage.steps and c.model.name == "tiny"
        if stage.role == "multitask":  # the rows' models: full validation splits, N + M steps
            assert c.eval.max_examples is None and stage.steps == 1200
    assert planned_cpu_minutes(cfg) < 35, f"{name}: {planned_cpu_minutes(cfg):.0f} CPU minutes planned"


def test_doremi_small_trains_the_proxy_against_the_reference_with_small_eta():
    plan = make_plan(compose("doremi_small"))
    proxy = plan.stage("doremi_proxy")
    assert proxy.overrides["doremi"] == {"eta": 0.1, "eps": 0.0001}
    assert proxy.mixing == plan.stage("doremi_reference").mixing == {"rate": "proportional", "max_examples": 16384,
                                                                      "temperature": 1.0}
    assert [r.key for r in plan.rows] == ["reference", "doremi"]


def test_mixing_search_small_has_16_short_proxies_scored_on_a_subset():
    plan = make_plan(compose("mixing_search_small"))
    proxies = [s for s in plan.stages if s.role == "proxy"]
    assert len(proxies) == 16 and {s.steps for s in proxies} == {64}
    assert all(s.overrides == {"eval": {"max_examples": 100}} for s in proxies)
    fit = plan.stage("search_fit")
    assert fit.params["target"] == "glue" and fit.params["rank"] is True and fit.params["regressor"] == "linear"


def test_paper_scale_doremi_preset(tmp_path):
    from lightning_t5.experiments.runner import stage_config
    from lightning_t5.train.schema import validate_config

    cfg = compose("doremi")
    plan = make_plan(cfg)
    assert cfg.model.name == "base"
    assert [s.name for s in plan.stages] == ["doremi_reference", "doremi_proxy", "doremi_main", "doremi_baseline"]
    for name in ("doremi_reference", "doremi_proxy"):
        stage = plan.stage(name)
        assert stage.steps == 2 ** 17 and stage.overrides["model"]["name"] == "small"
        c = validate_config(stage_config(cfg, stage, tmp_path / name, None,
                                         {k: "ref.ckpt" for k in stage.checkpoint_inputs}))
        assert c.model.d_model == 512 and c.model.num_layers == 6  # T5-Small
    assert plan.stage("doremi_main").steps == plan.stage("doremi_baseline").steps == 2 ** 19 + 2 ** 18
