"""The experiment runner with a fake `fit`: stage order, checkpoints passed on, reuse and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_t5.experiments import StageMismatchError, make_plan, run_experiment, stage_config


class FakeFit:
    """Records every call and behaves like `fit`'s contract: checkpoints under run_dir, metrics.json at the end.

    `crash_at` = (stage name, step): that call writes a checkpoint at `step` and raises, like a killed run.
    A call whose run_dir already has a checkpoint and resume == "auto" continues from it (records where from).
    """

    def __init__(self, crash_at: tuple[str, int] | None = None) -> None:
        self.calls: list[dict] = []
        self.crash_at = crash_at

    def __call__(self, cfg):
        run_dir = Path(cfg.run_dir)
        name = run_dir.name
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        start = 0
        if cfg.resume == "auto" and ckpt.exists():
            start = json.loads(ckpt.read_text())["step"]
        self.calls.append({"stage": name, "init_from": cfg.init_from, "resume": cfg.resume, "start": start,
                           "max_steps": cfg.trainer.max_steps, "mixture": cfg.mixture,
                           "eval": list(cfg.eval.tasks), "granularity": cfg.data.granularity,
                           "mixing": OmegaConf.to_container(cfg.mixing), "experiment": cfg.experiment,
                           "optim": OmegaConf.to_container(cfg.optim)})
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        if self.crash_at and self.crash_at[0] == name:
            ckpt.write_text(json.dumps({"step": self.crash_at[1]}))
            self.crash_at = None
            raise KeyboardInterrupt(f"killed {name}")
        steps = cfg.trainer.max_steps
        ckpt.write_text(json.dumps({"step": steps}))
        # deterministic fake scores: depend on the stage, so rows differ
        metrics = {t: {"accuracy": 50.0 + len(name) % 7 + i} for i, t in enumerate(cfg.eval.tasks)}
        result = {"run_dir": str(run_dir), "checkpoint": str(ckpt), "metrics": metrics, "averages": {},
                  "steps": steps, "tokens": steps * 1000, "wall_time_s": 0.5}
        (run_dir / "metrics.json").write_text(json.dumps(result))
        return result


def make_cfg(tmp_path: Path, **opts) -> OmegaConf:
    base = {
        "seed": 1, "mixture": "default", "output_dir": str(tmp_path / "runs"), "run_name": None, "run_dir": None,
        "mixing": {"rate": "proportional", "max_examples": None, "temperature": 1.0},
        "data": {"sequence_length": {"inputs": 32, "targets": 8}, "batch_size": 4, "granularity": "example"},
        "eval": {"tasks": None, "max_examples": 8, "before_training": True},
        "model": {"name": "tiny"}, "optim": {"name": "adafactor", "lr": 0.01, "total_steps": None},
        "trainer": {"max_steps": 999}, "init_from": None, "resume": None, "export_hf": None,
        "experiment": "xp",
        "experiment_options": {"kind": "strategies", "tasks": ["glue_sst2", "super_glue_cb"],
                               "corpus_task": "corpus_x", "pretrain_steps": 8, "finetune_steps": 4,
                               "mixing": {"rate": "proportional", "max_examples": 64},
                               "finetune_optim": {"lr": 0.001}, **opts},
    }
    return OmegaConf.create(base)


def test_runs_every_stage_once_in_order_and_passes_checkpoints(tmp_path):
    cfg = make_cfg(tmp_path)
    fit = FakeFit()
    table = run_experiment(cfg, fit_fn=fit)
    plan = make_plan(cfg)
    assert [c["stage"] for c in fit.calls] == [s.name for s in plan.stages]
    by_stage = {c["stage"]: c for c in fit.calls}
    out = tmp_path / "runs" / "xp"
    for s in plan.stages:
        call = by_stage[s.name]
        assert call["resume"] == "auto" and call["max_steps"] == s.steps and call["experiment"] is None
        assert call["eval"] == list(s.eval_tasks) and call["granularity"] == s.granularity
        expected = None if s.init_stage is None else str(out / "stages" / s.init_stage / "checkpoints" / "last.ckpt")
        assert call["init_from"] == expected
    # the shared pre-training was trained once although two strategies start from it
    assert sum(c["stage"] == "pretrain" for c in fit.calls) == 1
    assert by_stage["mtdnn_mt"]["init_from"].endswith("stages/pretrain/checkpoints/last.ckpt")
    assert by_stage["pretrain__ft_glue_sst2"]["optim"]["lr"] == 0.001
    assert by_stage["multitask"]["mixing"]["max_examples"] == 64
    for name in ("md", "csv", "json", "png"):
        assert (out / f"results.{name}").stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["experiment"] == "xp"
    assert all(r["status"] == "done" for r in table["rows"])
    # compute accounting: the baseline row = pretrain (8) + two fine-tunes (4 each)
    base = next(r for r in table["rows"] if r["key"] == "pretrain_finetune")
    assert base["compute"]["steps"] == 16 and base["compute"]["tokens"] == 16_000


def test_rerun_reuses_finished_stages(tmp_path):
    cfg = make_cfg(tmp_path)
    run_experiment(cfg, fit_fn=FakeFit())
    again = FakeFit()
    table = run_experiment(cfg, fit_fn=again)
    assert again.calls == []
    assert all(r["status"] == "done" for r in table["rows"])


def test_interrupted_stage_resumes_instead_of_restarting(tmp_path):
    cfg = make_cfg(tmp_path)
    plan = make_plan(cfg)
    victim = plan.stages[3].name
    first = FakeFit(crash_at=(victim, 3))
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, fit_fn=first)
    assert [c["stage"] for c in first.calls] == [s.name for s in plan.stages[:4]]
    assert not (tmp_path / "runs" / "xp" / "stages" / victim / "metrics.json").exists()

    second = FakeFit()
    run_experiment(cfg, fit_fn=second)
    # finished stages are not run again; the interrupted one continues from its own checkpoint (step 3)
    assert [c["stage"] for c in second.calls] == [s.name for s in plan.stages[3:]]
    resumed = second.calls[0]
    assert resumed["stage"] == victim and resumed["resume"] == "auto" and resumed["start"] == 3
    assert all(c["start"] == 0 for c in second.calls[1:])


def test_incomplete_metrics_json_is_not_reused(tmp_path):
    cfg = make_cfg(tmp_path, strategies=["pretrain_finetune"])
    run_experiment(cfg, fit_fn=FakeFit())
    m = tmp_path / "runs" / "xp" / "stages" / "pretrain__ft_super_glue_cb" / "metrics.json"
    data = json.loads(m.read_text())
    data["metrics"] = {}  # e.g. evaluation crashed after training
    m.write_text(json.dumps(data))
    again = FakeFit()
    run_experiment(cfg, fit_fn=again)
    assert [c["stage"] for c in again.calls] == ["pretrain__ft_super_glue_cb"]


def test_changed_settings_stop_instead_of_reusing_stale_stages(tmp_path):
    run_experiment(make_cfg(tmp_path, strategies=["pretrain_finetune"]), fit_fn=FakeFit())
    fit = FakeFit()
    with pytest.raises(StageMismatchError, match="pretrain__ft_glue_sst2.*steps"):
        run_experiment(make_cfg(tmp_path, strategies=["pretrain_finetune"], finetune_steps=6), fit_fn=fit)
    assert fit.calls == []  # the unchanged pre-training was reused, nothing retrained
    # a new run name gives a fresh folder
    run_experiment(make_cfg(tmp_path, strategies=["pretrain_finetune"], finetune_steps=6, run_name="xp6"),
                   fit_fn=fit)
    assert (tmp_path / "runs" / "xp6" / "results.md").exists()


def test_split_sweep_jobs_fill_one_table(tmp_path):
    """A Hydra multirun over experiment_options.rows: each job runs its rows; the table lists all finished."""
    def sweep(**kw):
        return make_cfg(tmp_path, kind="mixing_sweep", equal=True, proportional_k=[16, 64], temperatures=[2],
                        temperature_k=64, **kw)

    fit = FakeFit()
    t1 = run_experiment(sweep(rows=["equal"]), fit_fn=fit)
    assert {r["key"]: r["status"] for r in t1["rows"]} == {
        "equal": "done", "proportional_k16": "not run", "proportional_k64": "not run", "temperature_t2": "not run"}
    run_experiment(sweep(rows=["proportional_k16", "proportional_k64", "temperature_t2"]), fit_fn=fit)
    t3 = run_experiment(sweep(), fit_fn=fit)
    assert [c["stage"] for c in fit.calls] == ["mix_equal", "mix_proportional_k16", "mix_proportional_k64",
                                                "mix_temperature_t2"]
    assert all(r["status"] == "done" for r in t3["rows"])
    temp = next(c for c in fit.calls if c["stage"] == "mix_temperature_t2")["mixing"]
    assert (temp["rate"], temp["temperature"], temp["max_examples"]) == ("temperature", 2.0, 64)


def test_overrides_apply_to_every_stage(tmp_path):
    cfg = make_cfg(tmp_path, strategies=["multitask"],
                   overrides={"data": {"batch_size": 2}, "eval": {"max_examples": 3}})
    seen = []

    def fit(c):
        seen.append((c.data.batch_size, c.eval.max_examples, c.eval.before_training))
        return FakeFit()(c)

    run_experiment(cfg, fit_fn=fit)
    assert seen == [(2, 3, False)]


def test_stage_config_is_valid_for_the_run_schema(tmp_path):
    """The derived stage config must pass the training engine's schema validation (no unknown keys)."""
    schema = pytest.importorskip("lightning_t5.train.schema")
    base = schema.to_run_config({
        "experiment": "xp",
        "experiment_options": {"kind": "strategies", "tasks": ["glue_sst2"], "corpus_task": "corpus_x",
                               "pretrain_steps": 8, "finetune_steps": 4},
        "output_dir": str(tmp_path),
    })
    plan = make_plan(base)
    for stage in plan.stages:
        c = schema.validate_config(stage_config(base, stage, tmp_path / stage.run_dir, "x.ckpt"))
        assert c.trainer.max_steps == stage.steps and c.mixture == stage.mixture and c.resume == "auto"
        assert c.experiment is None and list(c.eval.tasks) == list(stage.eval_tasks)


def test_stage_that_returns_early_is_not_built_on(tmp_path):
    """The real `fit` returns (and writes metrics.json) after Lightning catches an interrupt: the runner must stop
    there, and the next run must resume that stage rather than reuse its partial result."""
    cfg = make_cfg(tmp_path, strategies=["pretrain_finetune"])

    class EarlyStop(FakeFit):
        def __call__(self, c):
            if Path(c.run_dir).name == "pretrain" and not self.calls:
                self.calls.append({"stage": "pretrain"})
                ckpt = Path(c.run_dir) / "checkpoints" / "last.ckpt"
                ckpt.parent.mkdir(parents=True)
                ckpt.write_text(json.dumps({"step": 5}))
                result = {"checkpoint": str(ckpt), "steps": 5, "metrics": {}, "tokens": 5, "wall_time_s": 1.0}
                (Path(c.run_dir) / "metrics.json").write_text(json.dumps(result))
                return result
            return super().__call__(c)

    with pytest.raises(RuntimeError, match="stopped at step 5 of 8"):
        run_experiment(cfg, fit_fn=EarlyStop())
    fit = FakeFit()
    run_experiment(cfg, fit_fn=fit)
    assert fit.calls[0]["stage"] == "pretrain" and fit.calls[0]["start"] == 5 and fit.calls[0]["resume"] == "auto"


def test_mixing_rates_of_the_real_catalog_mixtures():
    """The experiment's mixtures resolve in the real registry, and each sweep row records its task shares."""
    from lightning_t5.experiments.runner import _add_mixing_rates, register_mixtures

    cfg = {"experiment": "rates_check", "experiment_options": {
        "kind": "mixing_sweep", "tasks": ["glue_rte", "super_glue_cb"], "corpus_task": "corpus_span_corruption",
        "pretrain_steps": 2, "finetune_steps": 1, "equal": True, "proportional_k": [16]}}
    plan = make_plan(cfg)
    register_mixtures(plan)
    table = {"rows": [{"key": r.key} for r in plan.rows]}
    _add_mixing_rates(table, plan)
    equal, prop = (r["mixing_rates"] for r in table["rows"])
    assert equal == pytest.approx({"glue_rte": 1 / 3, "super_glue_cb": 1 / 3, "corpus_span_corruption": 1 / 3})
    # K = 16 caps every task below CB's 64 training rows: proportional with a tiny K is equal mixing
    assert prop == pytest.approx(equal)
    from mixtures import MixtureRegistry

    for name in plan.mixtures:
        MixtureRegistry.remove(name)
