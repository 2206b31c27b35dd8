"""Stage plans of the T5 comparisons (Tables 11 and 12), checked without training."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from lightning_t5.experiments import STRATEGIES, ExperimentConfigError, make_plan, plan_experiment
from lightning_t5.experiments.plan import iter_task_budgets

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "experiment"


def preset(name: str) -> dict:
    """The experiment keys of a preset file, as Hydra would compose them (no Hydra needed for planning)."""
    raw = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    raw.pop("defaults", None)
    return raw


def strategies_cfg(tasks=("glue_sst2", "glue_rte", "super_glue_cb"), n=64, m=32, **extra) -> dict:
    opts = {"kind": "strategies", "tasks": list(tasks), "corpus_task": "corpus_x", "pretrain_steps": n,
            "finetune_steps": m, "mixing": {"rate": "proportional", "max_examples": 1024}, **extra}
    return {"experiment": "xp", "experiment_options": opts}


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["strategies_tiny", "strategies"])
def test_every_strategy_stage_plan(name):
    cfg = preset(name)
    plan = make_plan(cfg)
    opts = cfg["experiment_options"]
    n, m, tasks, corpus = opts["pretrain_steps"], opts["finetune_steps"], tuple(opts["tasks"]), opts["corpus_task"]
    assert [r.key for r in plan.rows] == list(STRATEGIES)
    rows = {r.key: r for r in plan.rows}
    k = opts["mixing"]["max_examples"]

    # (1) baseline: corpus-only pre-training (N), then each task alone (M) from that checkpoint.
    pre = plan.stage("pretrain")
    assert pre.tasks == (corpus,) and pre.steps == n and pre.init_stage is None and pre.eval_tasks == ()
    for t in tasks:
        ft = plan.stage(rows["pretrain_finetune"].eval_stage[t])
        assert ft.tasks == (t,) and ft.steps == m and ft.init_stage == "pretrain" and ft.eval_tasks == (t,)
        assert ft.role == "finetune" and ft.optim == opts["finetune_optim"]

    # (2) multi-task training: one model on supervised + corpus for N + M steps, evaluated on every task.
    mt = plan.stage("multitask")
    assert set(rows["multitask"].eval_stage.values()) == {"multitask"}
    assert mt.tasks == (*tasks, corpus) and mt.steps == n + m and mt.init_stage is None
    assert mt.eval_tasks == tasks and mt.mixing["max_examples"] == k and mt.mixing["rate"] == "proportional"

    # (3) multi-task pre-training (N) on the same mixture, then per-task fine-tuning (M).
    mtp = plan.stage("mt_pretrain")
    assert mtp.tasks == (*tasks, corpus) and mtp.steps == n and mtp.eval_tasks == () and mtp.mixture == mt.mixture
    for t in tasks:
        ft = plan.stage(rows["multitask_pretrain_finetune"].eval_stage[t])
        assert (ft.init_stage, ft.tasks, ft.steps) == ("mt_pretrain", (t,), m)

    # (4) leave-one-out: per target, pre-train on the others + corpus, fine-tune on the target.
    for t in tasks:
        ft = plan.stage(rows["leave_one_out"].eval_stage[t])
        loo = plan.stage(ft.init_stage)
        assert loo.name == f"loo_{t}" and loo.steps == n and loo.init_stage is None
        assert t not in loo.tasks and set(loo.tasks) == (set(tasks) - {t}) | {corpus}
        assert t not in plan.mixtures[loo.mixture]
        assert ft.tasks == (t,) and ft.steps == m

    # (5) supervised-only multi-task pre-training: no corpus task.
    sup = plan.stage("sup_pretrain")
    assert sup.tasks == tasks and corpus not in plan.mixtures[sup.mixture] and sup.steps == n
    for t in tasks:
        assert plan.stage(rows["supervised_pretrain_finetune"].eval_stage[t]).init_stage == "sup_pretrain"

    # (6) MT-DNN: from the baseline's pre-trained checkpoint, multi-task fine-tuning with one task per batch,
    # then per-task fine-tuning; the two fine-tuning phases share M.
    mtdnn = plan.stage("mtdnn_mt")
    assert mtdnn.init_stage == "pretrain" and mtdnn.granularity == "batch" and mtdnn.tasks == tasks
    for t in tasks:
        ft = plan.stage(rows["mtdnn"].eval_stage[t])
        assert ft.init_stage == "mtdnn_mt" and mtdnn.steps + ft.steps == m
    assert all(s.granularity == "example" for s in plan.stages if s.name != "mtdnn_mt")

    # (7) no pre-training (the paper's Table 1 reference): each task alone for M steps from random weights.
    for t in tasks:
        ft = plan.stage(rows["no_pretraining"].eval_stage[t])
        assert (ft.init_stage, ft.init_checkpoint, ft.tasks, ft.steps) == (None, None, (t,), m)
        assert ft.optim == opts["finetune_optim"] and ft.eval_tasks == (t,)

    # The shared pre-training is planned once, and every stage comes after the one it starts from.
    names = [s.name for s in plan.stages]
    assert names.count("pretrain") == 1 and len(names) == len(set(names))
    for i, s in enumerate(plan.stages):
        if s.init_stage:
            assert names.index(s.init_stage) < i
        assert s.run_dir == f"stages/{s.name}"
    # 5 shared roots; per task: 6 fine-tuning stages + 1 leave-one-out root
    assert len(plan.stages) == 5 + 7 * len(tasks)


def test_full_presets_use_the_paper_settings():
    s = preset("strategies")["experiment_options"]
    assert (s["pretrain_steps"], s["finetune_steps"]) == (2**19, 2**18)
    assert s["mixing"] == {"rate": "proportional", "max_examples": 2**19, "temperature": 1.0}
    assert s["overrides"]["data"]["batch_size"] == 128 and s["overrides"]["data"]["sequence_length"]["inputs"] == 512
    sweep = make_plan(preset("mixing_sweep"))
    temps = [st for st in sweep.stages if st.mixing.get("rate") == "temperature"]
    assert sorted(st.mixing["temperature"] for st in temps) == [2.0, 4.0, 8.0]
    assert all(st.mixing["max_examples"] == 2**21 for st in temps)
    props = sorted(st.mixing["max_examples"] for st in sweep.stages if st.mixing.get("rate") == "proportional")
    assert props == [2**k for k in range(16, 22)]
    assert [r.key for r in sweep.rows][:2] == ["baseline", "equal"]


@pytest.mark.parametrize("name", ["strategies_tiny", "strategies", "mixing_sweep_tiny", "mixing_sweep"])
def test_budget_is_equal_across_rows(name):
    plan = make_plan(preset(name))
    budget = plan.pretrain_steps + plan.finetune_steps
    seen = list(iter_task_budgets(plan))
    # every row trains N + M steps to each evaluated model, except the no-pre-training reference (M only)
    assert seen and all(steps == (plan.finetune_steps if row == "no_pretraining" else budget)
                        for row, _, steps in seen), seen


def test_mixing_sweep_rows():
    cfg = preset("mixing_sweep_tiny")
    opts = cfg["experiment_options"]
    plan = make_plan(cfg)
    keys = [r.key for r in plan.rows]
    assert keys == ["equal"] + [f"proportional_k{k}" for k in opts["proportional_k"]] + [
        f"temperature_t{t}" for t in opts["temperatures"]]
    for row in plan.rows:
        (stage_name,) = set(row.eval_stage.values())
        s = plan.stage(stage_name)
        assert s.steps == opts["pretrain_steps"] + opts["finetune_steps"] and s.init_stage is None
        assert s.tasks == (*opts["tasks"], opts["corpus_task"]) and s.eval_tasks == tuple(opts["tasks"])
    assert plan.stage("mix_equal").mixing["rate"] == "equal"
    t2 = plan.stage("mix_temperature_t2").mixing
    assert t2["rate"] == "temperature" and t2["temperature"] == 2.0 and t2["max_examples"] == opts["temperature_k"]
    assert plan.stage("mix_proportional_k256").mixing == {"rate": "proportional", "max_examples": 256,
                                                          "temperature": 1.0}


def test_rows_selection_keeps_only_needed_stages():
    cfg = strategies_cfg(rows=["mtdnn"])
    plan = make_plan(cfg)
    assert [r.key for r in plan.rows] == ["mtdnn"]
    assert {s.name for s in plan.stages} == {"pretrain", "mtdnn_mt"} | {f"mtdnn_mt__ft_{t}" for t in plan.tasks}
    assert len(make_plan(cfg, select_rows=False).rows) == len(STRATEGIES)
    with pytest.raises(ExperimentConfigError, match="unknown rows"):
        make_plan(strategies_cfg(rows=["nope"]))


def test_plan_experiment_returns_stage_list_and_accepts_a_mapping_block():
    stages = plan_experiment({"experiment": {"name": "x", **strategies_cfg()["experiment_options"]}})
    assert stages[0].name == "pretrain" and all(s.steps > 0 for s in stages)


@pytest.mark.parametrize("change, message", [
    ({"strategies": ["pretrain_finetune", "multitsk"]}, "valid: pretrain_finetune"),
    ({"pretrain_stepz": 3}, "did you mean pretrain_steps"),
    ({"corpus_task": "glue_rte"}, "must not also be in"),
    ({"corpus_task": None}, "corpus_task is required"),
    ({"finetune_steps": 0}, "finetune_steps must be a positive integer"),
    ({"tasks": []}, "tasks must be a non-empty list"),
    ({"tasks": ["a", "a"]}, "more than once"),
    ({"mtdnn_multitask_fraction": 1.0}, r"must be in \(0, 1\)"),
    ({"kind": "sweep"}, "kind must be one of"),
])
def test_config_errors_name_the_key(change, message):
    cfg = strategies_cfg()
    cfg["experiment_options"].update(change)
    with pytest.raises(ExperimentConfigError, match=message):
        make_plan(cfg)


def test_missing_experiment_settings_is_a_clear_error():
    with pytest.raises(ExperimentConfigError, match="experiment=<name>"):
        make_plan({"experiment": None, "experiment_options": {}})


@settings(max_examples=40, deadline=None)
@given(
    n_tasks=st.integers(1, 5),
    n=st.integers(1, 10_000),
    m=st.integers(2, 10_000),
    frac=st.floats(0.05, 0.95),
    strategies=st.lists(st.sampled_from(sorted(STRATEGIES)), min_size=1, max_size=6, unique=True),
)
def test_plan_invariants(n_tasks, n, m, frac, strategies):
    tasks = [f"task_{i}" for i in range(n_tasks)]
    plan = make_plan(strategies_cfg(tasks, n, m, strategies=strategies, mtdnn_multitask_fraction=frac))
    # equal budget for every (row, task); leave-one-out mixtures never hold their target; no stage is planned twice
    assert all(b == (m if row == "no_pretraining" else n + m) for row, _, b in iter_task_budgets(plan))
    for s in plan.stages:
        if s.name.startswith("loo_") and "__ft_" not in s.name:
            target = s.name[len("loo_"):]
            assert target not in s.tasks and target not in plan.mixtures[s.mixture]
        assert plan.mixtures[s.mixture] == s.tasks
    assert len({s.name for s in plan.stages}) == len(plan.stages)
    assert {r.key for r in plan.rows} == set(strategies)
    for r in plan.rows:
        assert set(r.eval_stage) == set(tasks)
        for stage_name in r.eval_stage.values():
            assert set(plan.ancestors(stage_name)) <= set(r.stages)


@pytest.mark.parametrize("name, model, accelerator", [
    ("strategies_tiny", "tiny", "cpu"), ("mixing_sweep_tiny", "tiny", "cpu"),
    ("strategies", "base", "gpu"), ("mixing_sweep", "base", "gpu"),
])
def test_presets_compose_with_hydra_and_yield_valid_stage_configs(name, model, accelerator, tmp_path):
    """`python train.py experiment=<name>` composes, and every stage's derived config passes the run schema."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lightning_t5.experiments.runner import apply_overrides, stage_config
    from lightning_t5.train.schema import register_schema, validate_config

    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS.parent), version_base=None):
        cfg = compose(config_name="config", overrides=[f"experiment={name}"])
    GlobalHydra.instance().clear()
    assert cfg.model.name == model and cfg.trainer.accelerator == accelerator
    cfg = apply_overrides(cfg)
    plan = make_plan(cfg)
    assert plan.name == name
    opts = preset(name)["experiment_options"]
    assert cfg.data.batch_size == opts["overrides"]["data"]["batch_size"]
    for stage in plan.stages[:8]:
        c = validate_config(stage_config(cfg, stage, tmp_path / stage.run_dir, None))
        assert c.trainer.max_steps == stage.steps and c.resume == "auto" and c.experiment is None
        for key, value in stage.optim.items():
            assert c.optim[key] == value


def test_seeds_plan_every_stage_once_per_seed():
    plan = make_plan(strategies_cfg(strategies=["pretrain_finetune", "no_pretraining"], seeds=[3, 5]))
    single = make_plan(strategies_cfg(strategies=["pretrain_finetune", "no_pretraining"]))
    assert plan.seeds == (3, 5) and len(plan.stages) == 2 * len(single.stages)
    for stage in plan.stages:
        seed = stage.name.rpartition("__seed")[2]
        assert stage.seed == int(seed) and stage.run_dir == f"stages/{stage.name}"
        if stage.init_stage:  # each seed's fine-tuning starts from the same seed's pre-training
            assert stage.init_stage.endswith(f"__seed{seed}")
    row = plan.rows[0]
    assert [s for s, _ in row.eval_stages()] == [3, 5]
    assert row.eval_stages()[1][1]["glue_rte"] == "pretrain__ft_glue_rte__seed5"
    # the seed is part of what identifies a stage's weights; single-seed plans keep their old fingerprints
    from lightning_t5.experiments.plan import fingerprint
    a, b = plan.stage("pretrain__seed3"), plan.stage("pretrain__seed5")
    assert fingerprint(a, None, {}) != fingerprint(b, None, {})
    assert "seed" not in single.stage("pretrain").spec()
    assert single.rows[0].eval_stages() == ((None, single.rows[0].eval_stage),)


@pytest.mark.parametrize("seeds, message", [([1, 1], "more than once"), ([], "non-empty list")])
def test_bad_seeds_are_config_errors(seeds, message):
    with pytest.raises(ExperimentConfigError, match=message):
        make_plan(strategies_cfg(seeds=seeds))


def test_experiment_options_are_checked_by_the_run_schema_at_composition():
    """Typos and wrong types in experiment_options fail when Hydra composes the config, before any training."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    from lightning_t5.train.schema import register_schema

    register_schema()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIGS.parent), version_base=None):
            cfg = compose(config_name="config",
                          overrides=["experiment=strategies_tiny", "experiment_options.seeds=[1,2]"])
            assert list(cfg.experiment_options.seeds) == [1, 2]
            for bad in ("experiment_options.pretrain_stepz=3", "experiment_options.seeds=[a]",
                        "experiment_options.pretrain_steps=many"):
                with pytest.raises(ConfigCompositionException) as err:
                    compose(config_name="config", overrides=["experiment=strategies_tiny", bad])
                assert bad.split("=")[0].split(".")[1] in str(err.value.__cause__ or err.value)
    finally:
        GlobalHydra.instance().clear()
    with pytest.raises(ExperimentConfigError, match=r"experiment_options.seeds\[0\]"):
        make_plan(strategies_cfg(seeds=["x"]))


def test_docs_list_every_experiment_option_and_strategy():
    import dataclasses

    from lightning_t5.train.experiment_options import ExperimentOptions

    root = CONFIGS.parents[1]
    for doc in (root / "docs" / "experiments.md",):  # the one reference; the README links to it (test_readme.py)
        text = doc.read_text()
        reference = text[text.index("## Reference: experiment settings"):]
        for f in dataclasses.fields(ExperimentOptions):
            assert f"`{f.name}`" in reference, (doc.name, f.name)
        for strategy in STRATEGIES:
            assert f"`{strategy}`" in text, (doc.name, strategy)
