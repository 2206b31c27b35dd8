"""The mixing-methods page (`experiment=mixing_methods_small`, `experiment=mixing_methods_gpu1h`): the presets
compose and fit their budgets, the plan shares the stages the methods allow (DoReMi's reference is the proportional
row, the search's prior the T = 2 row) and counts each method's overhead in its row, the runner writes every row's
weights over training from the stages' `mixing.json`, and (slow) the shrunken preset runs end to end through
`train.py` with ODM's stages changing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_t5.experiments import make_plan, run_experiment
from lightning_t5.experiments.plan import ExperimentConfigError
from lightning_t5.experiments.results import SHARES_PLOT, plot_row_shares, row_shares
from lightning_t5.experiments.significance import baseline_key
from lightning_t5.model.config import T5Config
from lightning_t5.model.flops import PEAK_FLOPS, training_flops_per_sequence
from mixtures.stages import write_run_file
from test_experiment_presets_gpu1h import ASSUMED_MFU
from test_experiment_presets_gpu1h import STAGE_START_S as GPU_STAGE_START_S
from test_experiment_presets_gpu1h import TASK_EVAL_S as GPU_TASK_EVAL_S
from test_experiment_presets_small import GLUE, compose
from test_experiments_runner import make_cfg
from test_methods_presets import planned_cpu_minutes
from test_search import SearchFakeFit

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["proportional", "temperature_t2", "equal", "unimax", "odm", "doremi", "search"]
# The CPU page must finish within 120 minutes of wall time on 2 shared cores; the plan, at the measured one-thread
# CPU cost per step, stage and evaluation (test_experiment_presets_small / test_methods_presets), must leave a margin.
SMALL_BUDGET_MIN = 100
GLUE_VALIDATION = {"glue_cola": 1043, "glue_sst2": 872, "glue_mrpc": 408, "glue_stsb": 1500, "glue_rte": 277}


# --------------------------------------------------------------------------------------------------- presets
def test_small_preset_composes_has_every_row_and_fits_the_cpu_budget(tmp_path: Path) -> None:
    from lightning_t5.experiments.runner import stage_config
    from lightning_t5.train.schema import validate_config

    cfg = compose("mixing_methods_small")
    assert cfg.model.name == "tiny" and cfg.trainer.accelerator == "cpu" and cfg.eval.max_examples is None
    plan = make_plan(cfg)
    assert set(plan.tasks) == GLUE and plan.corpus_task == "corpus_span_corruption"
    assert [r.key for r in plan.rows] == ROWS  # proportional first: the baseline of the paired tests
    for stage in plan.stages:
        if stage.compute:
            continue
        inputs = {key: str(tmp_path / "ref.ckpt") for key in stage.checkpoint_inputs}
        c = validate_config(stage_config(cfg, stage, tmp_path / stage.run_dir, None, inputs))
        assert c.trainer.max_steps == stage.steps and c.model.name == "tiny"
        if stage.role == "multitask":  # every row's model: N + M steps, full validation splits
            assert stage.steps == 1200 and c.eval.max_examples is None
    odm = validate_config(stage_config(cfg, plan.stage("mix_odm"), tmp_path / "odm", None))
    assert odm.mixing.adaptive == "odm" and odm.mixing.adaptive_every == 50
    assert odm.mixing.adaptive_options.warmup_steps == 100 < 1200  # adapts within the budget (paper: 2,000)
    unimax = validate_config(stage_config(cfg, plan.stage("mix_unimax"), tmp_path / "unimax", None))
    assert unimax.mixing.rate == "unimax" and unimax.mixing.unimax_max_epochs == 1
    minutes = planned_cpu_minutes(cfg)
    assert minutes < SMALL_BUDGET_MIN, f"{minutes:.0f} CPU minutes planned"


def test_small_preset_shares_the_reference_and_the_prior_and_counts_each_method_s_overhead() -> None:
    plan = make_plan(compose("mixing_methods_small"))
    multitask = [s.name for s in plan.stages if s.role == "multitask"]
    assert len(multitask) == 7  # one model per row: no separate DoReMi reference, no separate search prior
    proxy = plan.stage("doremi_proxy")
    assert proxy.checkpoint_inputs == {"doremi.reference": "mix_proportional"}
    assert proxy.mixing == plan.stage("mix_proportional").mixing  # drawn with the reference's weights
    sample = plan.stage("search_sample")
    assert sample.params["prior"] == plan.stage("mix_temperature_t2").mixing  # the search centres on the T = 2 row
    assert len([s for s in plan.stages if s.role == "proxy" and not s.checkpoint_inputs]) == 16
    rows = {r.key: r for r in plan.rows}
    assert rows["doremi"].stages == ("mix_proportional", "doremi_proxy", "doremi_main")
    assert rows["search"].stages[0] == "search_sample" and rows["search"].stages[-2:] == ("search_fit", "search_main")
    assert "mix_temperature_t2" not in rows["search"].stages  # the prior row is a comparison, not a search input
    for key in ("proportional", "temperature_t2", "equal", "unimax", "odm"):
        assert rows[key].stages == (f"mix_{key}",)


def test_gpu1h_preset_composes_and_fits_one_h100_hour_by_the_flops_formula(tmp_path: Path) -> None:
    from lightning_t5.experiments.runner import stage_config
    from lightning_t5.train.schema import validate_config

    cfg = compose("mixing_methods_gpu1h")
    assert cfg.model.name == "t5_1_1_small" and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.precision == "bf16-mixed" and cfg.eval.max_examples is None
    plan = make_plan(cfg)
    assert set(plan.tasks) == GLUE and plan.corpus_task == "corpus_span_corruption"
    assert [r.key for r in plan.rows] == ROWS
    for stage in plan.stages:
        if stage.compute:
            continue
        inputs = {key: str(tmp_path / "ref.ckpt") for key in stage.checkpoint_inputs}
        c = validate_config(stage_config(cfg, stage, tmp_path / stage.run_dir, None, inputs))
        assert c.trainer.max_steps == stage.steps and c.model.name == "t5_1_1_small"
    lengths = cfg.data.sequence_length
    per_step = cfg.data.batch_size * training_flops_per_sequence(T5Config.from_preset("t5_1_1_small"),
                                                                 lengths.inputs, lengths.targets)
    seconds, flops = 0.0, 0.0
    for stage in plan.stages:
        if stage.compute:
            seconds += 60.0  # sizes and packing per task from the token caches, sampling, a regression
            continue
        # a DoReMi proxy step also runs the reference's forward pass: a third of a training step's FLOPs
        factor = 4 / 3 if stage.checkpoint_inputs else 1.0
        flops += stage.steps * per_step * factor
        per_task = (stage.overrides.get("eval") or {}).get("max_examples")
        seconds += GPU_STAGE_START_S + sum(GPU_TASK_EVAL_S * (min(1.0, per_task / GLUE_VALIDATION[t]) if per_task
                                                              else 1.0) for t in stage.eval_tasks)
    seconds += flops / (ASSUMED_MFU * PEAK_FLOPS["H100"]["bf16"])
    assert 30 < seconds / 60 < 60, f"{seconds / 60:.0f} GPU minutes planned ({flops:.2e} FLOP)"
    assert cfg.experiment_options.mixing.max_examples == 2 ** 19


def test_methods_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ExperimentConfigError, match=r"methods.temprature \(did you mean temperature\?\)"):
        make_plan(methods_cfg(tmp_path, methods={"temprature": 2.0}))
    with pytest.raises(ExperimentConfigError, match="search's prior is the temperature row"):
        make_plan(methods_cfg(tmp_path, search={"prior": {"rate": "equal"}}))
    with pytest.raises(ExperimentConfigError, match="experiment_options.mixing is the proportional row"):
        make_plan(methods_cfg(tmp_path, mixing={"rate": "equal"}))
    with pytest.raises(ExperimentConfigError, match="methods.adaptive_every must be a positive integer"):
        make_plan(methods_cfg(tmp_path, methods={"adaptive_every": 0}))
    plan = make_plan(methods_cfg(tmp_path, rows=["equal", "doremi"]))
    assert [r.key for r in plan.rows] == ["equal", "doremi"]
    assert [s.name for s in plan.stages] == ["mix_proportional", "mix_equal", "doremi_proxy", "doremi_main"]


# ------------------------------------------------------------------------------------- through the runner
class MethodsFakeFit(SearchFakeFit):
    """A fake `fit` that writes what the real one does for this page: a DoReMi proxy's weights.json, and every
    multi-task run's mixing.json (one stage of its rates; under `mixing.adaptive` a second stage at step 4)."""

    members = ("glue_rte", "super_glue_cb", "corpus_span_corruption")

    def __call__(self, cfg):
        from lightning_t5.train.mixing_weights import write_weights

        result = super().__call__(cfg)
        mixing = OmegaConf.to_container(cfg.mixing)
        names = list(self.members)
        if "doremi" in cfg and cfg.doremi.get("reference"):
            write_weights(cfg.run_dir, dict(zip(names, [0.1, 0.3, 0.6])), name="doremi", source="fake proxy")
        first = {n: 1.0 / len(names) for n in names}
        stages = [{"start_step": 0, "source": "rates", "shares": first}]
        if mixing.get("adaptive"):
            stages.append({"start_step": 4, "source": mixing["adaptive"], "shares": dict(zip(names, [0.1, 0.1, 0.8]))})
        steps = int(cfg.trainer.max_steps)
        blocks = []
        for start in range(0, steps, 4):
            planned = [s for s in stages if s["start_step"] <= start][-1]["shares"]
            blocks.append({"start_step": start, "end_step": min(start + 4, steps), "planned": planned,
                           "drawn": planned})
        write_run_file(cfg.run_dir, {"task_names": names, "every": 4, "adaptive": mixing.get("adaptive"),
                                     "stages": stages, "blocks": blocks})
        return result


def methods_cfg(tmp_path: Path, **opts) -> OmegaConf:
    opts.setdefault("mixing", {"rate": "proportional", "max_examples": 64})
    cfg = make_cfg(tmp_path, kind="mixing_methods", tasks=["glue_rte", "super_glue_cb"],
                   corpus_task="corpus_span_corruption",
                   methods={"odm": {"warmup_steps": 2}, "adaptive_every": 4, **opts.pop("methods", {})},
                   doremi={"eta": 0.1, "proxy_steps": 6},
                   search={"proxies": 4, "proxy_steps": 10, "candidates": 2000, "top_k": 16, "max_epochs": 15,
                           **opts.pop("search", {})}, **opts)
    cfg.experiment = "mm"
    cfg.data.pack = True
    cfg.data.sequence_length = {"inputs": 64, "targets": 16}
    return cfg


def test_methods_experiment_trains_each_stage_once_and_plots_every_row_s_weights(tmp_path: Path) -> None:
    cfg = methods_cfg(tmp_path)
    fit = MethodsFakeFit()
    table = run_experiment(cfg, fit_fn=fit)
    out = tmp_path / "runs" / "mm"
    called = [c["stage"] for c in fit.calls]
    assert len(called) == len(set(called))  # every stage trained once
    assert called[:5] == ["mix_proportional", "mix_temperature_t2", "mix_equal", "mix_unimax", "mix_odm"]
    calls = {c["stage"]: c for c in fit.calls}
    assert calls["mix_odm"]["mixing"]["adaptive"] == "odm"
    assert calls["mix_odm"]["mixing"]["adaptive_options"] == {"warmup_steps": 2}
    assert calls["mix_unimax"]["mixing"]["rate"] == "unimax"
    assert calls["doremi_main"]["mixing"]["weights"] == pytest.approx(
        {"glue_rte": 0.1, "super_glue_cb": 0.3, "corpus_span_corruption": 0.6})
    rows = {r["key"]: r for r in table["rows"]}
    assert list(rows) == ROWS and all(r["status"] == "done" for r in rows.values())
    assert baseline_key(list(rows)) == "proportional"  # the row every other is tested against
    # each method's overhead in its row: DoReMi's reference (the proportional model) and proxy; the search's proxies
    assert rows["doremi"]["compute"]["steps"] == 12 + 6 + 12
    assert rows["doremi"]["compute"]["wall_time_s"] == pytest.approx(3 * 0.5)
    assert rows["search"]["compute"]["steps"] == 4 * 10 + 12
    assert rows["proportional"]["compute"]["steps"] == 12
    # the weights over training of every row, from each stage's mixing.json, in results.json and plotted
    weights = table["weights_over_training"]
    assert list(weights) == ROWS
    assert [s["start_step"] for s in weights["odm"]["stages"]] == [0, 4] and weights["odm"]["adaptive"] == "odm"
    assert weights["doremi"]["stage"] == "doremi_main" and len(weights["equal"]["stages"]) == 1
    assert json.loads((out / "results.json").read_text())["weights_over_training"]["odm"]["stage"] == "mix_odm"
    assert (out / SHARES_PLOT).read_bytes()[:4] == b"\x89PNG"
    assert table["files"]["shares_png"] == str(out / SHARES_PLOT)
    again = MethodsFakeFit()
    run_experiment(cfg, fit_fn=again)
    assert again.calls == []


def test_row_shares_reads_mixing_json_of_single_model_rows_only(tmp_path: Path) -> None:
    """Rows fine-tuned per task and stages without a mixing.json are left out; the plot needs a record."""
    cfg = make_cfg(tmp_path, strategies=["pretrain_finetune", "multitask"], corpus_task="corpus_x")
    plan = make_plan(cfg)
    out = tmp_path / "xp"
    names = ["glue_sst2", "super_glue_cb", "corpus_x"]
    record = {"task_names": names, "every": 2, "adaptive": None,
              "stages": [{"start_step": 0, "source": "rates", "shares": dict(zip(names, [0.2, 0.3, 0.5]))}],
              "blocks": [{"start_step": 0, "end_step": 2, "planned": dict(zip(names, [0.2, 0.3, 0.5])),
                          "drawn": dict(zip(names, [0.25, 0.25, 0.5]))}]}
    for stage in plan.stages:
        (out / stage.run_dir).mkdir(parents=True)
        write_run_file(out / stage.run_dir, record)
    finished = {s.name: {} for s in plan.stages}
    shares = row_shares(plan, finished, out)
    assert list(shares) == ["multitask"]  # the baseline is one fine-tuned model per task
    assert shares["multitask"]["blocks"] == record["blocks"]
    assert row_shares(plan, {}, out) == {}  # nothing finished
    assert plot_row_shares({}, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    assert plot_row_shares(shares, tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_mixing_methods_small_end_to_end_shrunken(tmp_path: Path) -> None:
    """The preset itself through `python train.py`, every step count cut to a few: all seven rows finish with
    intervals and tests against proportional, ODM's mixing.json holds stages that change, the plot is written."""
    args = [sys.executable, "train.py", "experiment=mixing_methods_small", f"output_dir={tmp_path}",
            "experiment_options.pretrain_steps=10", "experiment_options.finetune_steps=2",
            "experiment_options.tasks=[glue_rte,glue_mrpc]", "experiment_options.overrides.eval.max_examples=8",
            "experiment_options.methods.adaptive_every=2", "experiment_options.methods.odm.warmup_steps=2",
            "experiment_options.doremi.proxy_steps=4", "experiment_options.search.proxies=4",
            "experiment_options.search.proxy_steps=4", "experiment_options.search.proxy_eval_examples=4",
            "experiment_options.search.candidates=500", "experiment_options.search.top_k=8"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "mixing_methods_small"
    results = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in results["rows"]] == ROWS and all(r["status"] == "done" for r in results["rows"])
    assert results["baseline"] == "proportional" and results["majority"] is not None
    for row in results["rows"]:
        assert row["averages_ci"]["glue"][0] <= row["averages"]["glue"] <= row["averages_ci"]["glue"][1]
        if row["key"] != "proportional":
            assert 0 < row["vs_baseline"]["p_holm"] <= 1
    odm = json.loads((out / "stages" / "mix_odm" / "mixing.json").read_text())
    assert odm["adaptive"] == "odm" and len(odm["stages"]) > 2
    planned = [tuple(b["planned"].values()) for b in odm["blocks"]]
    assert len(set(planned)) > 1, "ODM's shares never changed"
    weights = results["weights_over_training"]
    assert list(weights) == ROWS and len(weights["proportional"]["stages"]) == 1
    assert (out / SHARES_PLOT).read_bytes()[:4] == b"\x89PNG"
