"""Hydra composition and structured-config validation: every mistake stops at once with the valid choices."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from lightning_t5.errors import ConfigError
from lightning_t5.train.schema import validate_config
from test_train_helpers import CONFIG_DIR, FAST, compose_config

REPO = Path(CONFIG_DIR).parent


def test_default_config_composes_and_validates(tmp_path: Path) -> None:
    cfg = validate_config(compose_config(tmp_path, fast=False))
    assert cfg.model.name == "tiny" and cfg.mixture == "default" and cfg.trainer.accelerator == "cpu"
    assert cfg.optim.name == "adafactor" and cfg.optim.lr == 0.01
    assert cfg.data.pack is True


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in ("optim", "trainer")
                                          for p in sorted((REPO / "configs" / g).glob("*.yaml"))])
def test_every_group_option_validates(tmp_path: Path, group: str, option: str) -> None:
    validate_config(compose_config(tmp_path, f"{group}={option}", fast=False))


def test_invalid_value_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mixing.rate='foo'.*proportional, temperature, equal, explicit"):
        validate_config(compose_config(tmp_path, "mixing.rate=foo"))
    with pytest.raises(ConfigError, match="trainer.precision='bf16'.*did you mean 'bf16-(mixed|true)'"):
        validate_config(compose_config(tmp_path, "trainer.precision=bf16"))
    with pytest.raises(ConfigError, match="optim.name='adam'.*adamw, adafactor"):
        validate_config(compose_config(tmp_path, "optim.name=adam"))
    with pytest.raises(ConfigError, match="data.batch_size=0"):
        validate_config(compose_config(tmp_path, "data.batch_size=0"))


def test_unknown_key_is_rejected_with_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="data.batchsize"):
        compose_config(tmp_path, "data.batchsize=8")
    with pytest.raises(ConfigError, match="Did you mean 'data.batch_size'"):
        validate_config({"data": {"batchsize": 8}})
    with pytest.raises(ConfigError, match="Did you mean 'model.d_model'"):
        validate_config({"model": {"d_modle": 8}})
    with pytest.raises(ConfigError, match="Unknown config key 'foo'"):
        validate_config(compose_config(tmp_path, "+foo=1"))


def test_wrong_type_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_config(tmp_path, "trainer.max_steps=many")


def test_unknown_group_option_lists_available(tmp_path: Path) -> None:
    with pytest.raises(MissingConfigException) as err:
        compose_config(tmp_path, "model=huge")
    assert "tiny" in str(err.value) and "t5_1_1_base" in str(err.value)


def test_unknown_mixture_suggests_close_name(tmp_path: Path) -> None:
    from mixtures import MixtureError

    from lightning_t5.train.setup import RunSetup, prepare_config

    with pytest.raises(MixtureError, match="glue"):
        RunSetup(prepare_config(compose_config(tmp_path, "mixture=glu")))


@pytest.mark.parametrize("override,expected", [
    ("mixing.temperature=0", "mixing.temperature (T) must be a positive number"),
    ("mixing.max_examples=-5", "mixing.max_examples (K) must be a positive number"),
    ("mixing.rate=explicit", None),
    ("eval.tasks=[glue_sst3]", "Unknown task 'glue_sst3'"),
    ("data.sequence_length.inputs=0", "data.sequence_length.inputs=0 is not valid"),
])
def test_run_setup_checks_everything_data_free(tmp_path: Path, override: str, expected: str | None) -> None:
    from mixtures import MixtureError
    from tasks.errors import TaskError

    from lightning_t5.train.setup import RunSetup, prepare_config

    if expected is None:
        RunSetup(prepare_config(compose_config(tmp_path, override)))
        return
    with pytest.raises((ConfigError, MixtureError, TaskError), match=re.escape(expected)):
        RunSetup(prepare_config(compose_config(tmp_path, override)))
    assert not (tmp_path / "run").exists()


def test_missing_user_import_is_a_clear_error(tmp_path: Path) -> None:
    from tasks.errors import TaskError

    from lightning_t5.train.setup import RunSetup, prepare_config

    with pytest.raises(TaskError, match="no_such_user_module"):
        RunSetup(prepare_config(compose_config(tmp_path, "imports=[no_such_user_module]")))


def train_py(*overrides: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """`python train.py <overrides>` run from `cwd` (the repository on PYTHONPATH), and the CPU seconds it used.

    CPU time rather than wall time: on a loaded machine (tests run in parallel with other work) the wall time of the
    same failing launch varied 4-47 s, its CPU time 3.3-4.5 s."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_train_py_reports_config_errors_without_traceback(tmp_path: Path) -> None:
    proc, _ = train_py("mixing.rate=foo", f"output_dir={tmp_path / 'runs'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "mixing.rate='foo' is not valid" in proc.stderr and "proportional" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written: no runs/<name>/, no Hydra outputs/ in the cwd


TYPOS = [
    ("seeed=1", "Unknown config key 'seeed'. Did you mean 'seed'? Valid keys under '<top level>': seed, imports"),
    ("trainer.max_step=10", "Did you mean 'trainer.max_steps'? Valid keys under 'trainer': accelerator,"),
    ("mixing.temprature=2", "Did you mean 'mixing.temperature'? Valid keys under 'mixing': rate,"),
    ("model.d_modle=8", "Did you mean 'model.d_model'? Valid keys under 'model': name,"),
    ("data.sequence_length.input=8", "Did you mean 'data.sequence_length.inputs'? Valid keys under "
                                     "'data.sequence_length': inputs, targets."),
    ("optim.name=adam", "optim.name='adam' is not valid (did you mean 'adamw'?); choose one of: adamw,"),
    ("model.fused=apx", "model.fused='apx' is not valid (did you mean 'apex'?)"),
    ("experiment_options.seed=[1]", "Did you mean 'experiment_options.seeds'? Valid keys under 'experiment_options':"),
]


@pytest.mark.parametrize("override,expected", TYPOS)
def test_misspelt_key_or_choice_at_any_depth_suggests_and_lists(override: str, expected: str) -> None:
    from lightning_t5.train.schema import check_overrides

    with pytest.raises(ConfigError) as err:
        check_overrides([override], groups=["model", "optim", "trainer", "objective", "experiment"])
    assert expected in str(err.value)


@pytest.mark.parametrize("override", ["model=small", "objective.anything=1", "experiment_options.overrides.x=1",
                                      "mixing.weights.glue_rte=2", "hydra.job.chdir=false", "mixing.temperature=1,2",
                                      "hydra/launcher=basic", "experiment_options.rows=[equal],[proportional_k256]"])
def test_free_form_nodes_group_choices_and_sweeps_pass_the_key_check(override: str) -> None:
    from lightning_t5.train.schema import check_overrides

    check_overrides([override], groups=["model", "optim", "trainer", "objective", "experiment"])


@pytest.mark.parametrize("override,expected", [TYPOS[0], TYPOS[1], TYPOS[4]])
def test_train_py_misspelt_key_suggests_and_lists(tmp_path: Path, override: str, expected: str) -> None:
    """The same messages through `python train.py`, at the top level, one and two levels down."""
    proc, seconds = train_py(override, f"output_dir={tmp_path / 'runs'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert seconds < 15 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("override,expected", [
    ("mixing.temperature=0", "mixing.temperature (T) must be a positive number"),
    ("mixing.max_examples=-5", "mixing.max_examples (K) must be a positive number"),
    ("eval.tasks=[glue_sst3]", "Unknown task 'glue_sst3'. Did you mean: glue_sst2"),
])
def test_train_py_data_free_mistakes_fail_fast_without_a_run_directory(tmp_path: Path, override: str,
                                                                       expected: str) -> None:
    """Values that can be checked without data stop before the run directory exists (and before any evaluation)."""
    proc, seconds = train_py(override, f"output_dir={tmp_path / 'runs'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
    assert seconds < 15  # CPU seconds; measured 3.7-4.5 (no data read, no evaluation, no Lightning import)


def test_objective_group_replaces_the_corpus_task_with_a_variant(tmp_path: Path) -> None:
    """`objective=... objective.noise_density=...` sweeps the corpus objective from the command line."""
    from lightning_t5.train.setup import RunSetup, prepare_config

    cfg = prepare_config(compose_config(
        tmp_path, "objective=span_corruption", "objective.noise_density=0.5", "objective.mean_noise_span_length=10"))
    names = RunSetup(cfg).mixture.task_names
    assert "corpus_span_corruption_msl10_nd0.5" in names
    assert "corpus_span_corruption" not in names
    from tasks import TaskRegistry
    variant = TaskRegistry.get("corpus_span_corruption_msl10_nd0.5")
    assert any(getattr(p, "noise_density", None) == 0.5 for p in variant.token_preprocessors)


def test_objective_group_prefix_lm(tmp_path: Path) -> None:
    from lightning_t5.train.setup import RunSetup, prepare_config

    names = RunSetup(prepare_config(compose_config(tmp_path, "objective=prefix_lm"))).mixture.task_names
    assert any(n.startswith("corpus_prefix_lm") for n in names) and "corpus_span_corruption" not in names


# --------------------------------------------------------------------------- what a resume accepts (issue 24 item 3)
def saved_run(tmp_path: Path, *overrides: str) -> Path:
    """A run directory holding the config.yaml of the small test run (resume's override checks read nothing else)."""
    from omegaconf import OmegaConf

    from lightning_t5.train.setup import prepare_config

    cfg = prepare_config(compose_config(tmp_path, *overrides, run_name="saved"))
    run = Path(cfg.run_dir)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run


def resume_with(tmp_path: Path, run: Path, *overrides: str, fast: bool = False):
    """`python train.py resume=<run> <overrides>`: the composed config and the override list, as train.py hands
    them to `fit` (`fast`: the whole original command line again, plus `resume=`)."""
    from lightning_t5.train.setup import load_resume_config

    composed = compose_config(tmp_path, f"resume={run}", *overrides, fast=fast, run_name="saved")
    line = [f"resume={run}", *(overrides if not fast else [*FAST, *overrides])]
    return load_resume_config(str(run), line, composed=composed)


@pytest.mark.parametrize("override,expected", [
    ("mixture=default", "mixture=default (mixture 'test_train_mix' -> 'default': the training data stream"),
    ("mixing.rate=equal", "mixing.rate=equal (mixing.rate null -> 'equal': the training data stream"),
    ("objective=prefix_lm", "objective=prefix_lm (objective null -> {"),
    ("data.batch_size=8", "data.batch_size=8 (data.batch_size 4 -> 8: the training data stream"),
    ("seed=3", "seed=3 (seed 42 -> 3: the training data stream and the random numbers"),
    ("model=small", "model=small (model.d_ff 128 -> 2048, model.d_kv 32 -> 64, model.d_model 64 -> 512"),
    ("model.dropout_rate=0", "model.dropout_rate 0.1 -> 0.0: the model is the checkpoint's"),
    ("optim.lr=0.5", "optim.lr 0.001 -> 0.5: the optimizer, its state and the learning-rate schedule"),
    ("trainer.devices=2", "trainer.devices 1 -> 2: the checkpoint holds one data-loader position per process"),
    ("trainer.precision=bf16-mixed", "trainer.precision '32-true' -> 'bf16-mixed': it changes how every step"),
    ("init_from=runs/other", "init_from null -> 'runs/other': a resumed run starts from its own checkpoint"),
])
def test_resume_refuses_a_change_it_cannot_honour_with_the_reason(tmp_path: Path, override: str,
                                                                  expected: str) -> None:
    """Before: `mixture=other`, `model=small` were dropped silently (group choices and plain top-level keys) and
    `seed`, `optim.*`, `mixing.*` were applied, so the run went on with something else or failed inside Lightning."""
    from lightning_t5.errors import CheckpointError

    run = saved_run(tmp_path)
    with pytest.raises(CheckpointError) as err:
        resume_with(tmp_path, run, override)
    message = str(err.value)
    assert message.startswith(f"cannot resume with {override} (") and expected in message, message
    assert "accepts changes of trainer.max_steps," in message and "start a new run" in message


def test_resume_refuses_a_group_choice_it_cannot_compare(tmp_path: Path) -> None:
    from lightning_t5.errors import CheckpointError
    from lightning_t5.train.setup import load_resume_config

    run = saved_run(tmp_path)
    with pytest.raises(CheckpointError, match=r"model=small \(it selects another config group"):
        load_resume_config(run, ["trainer.max_steps=10", "model=small"])
    assert load_resume_config(run, ["trainer.max_steps=10"]).trainer.max_steps == 10


def test_resume_accepts_the_budget_evaluation_and_the_original_command_line(tmp_path: Path, caplog) -> None:
    """`trainer.max_steps` and evaluation settings change with one log line for the budget; repeating the original
    command line (every override equal to the saved value, group choices included) is accepted as it is."""
    import logging

    run = saved_run(tmp_path)
    with caplog.at_level(logging.WARNING):
        cfg = resume_with(tmp_path, run, "trainer.max_steps=10", "eval.max_examples=4", "eval.tasks=[glue_rte]",
                          "trainer.checkpoint_every_n_steps=5", "export_hf=out/hf", fast=True)
    assert cfg.trainer.max_steps == 10 and cfg.eval.max_examples == 4 and list(cfg.eval.tasks) == ["glue_rte"]
    assert cfg.trainer.checkpoint_every_n_steps == 5 and cfg.export_hf == "out/hf"
    assert cfg.run_dir == str(run) and cfg.resume == str(run) and cfg.mixture == "test_train_mix"
    lines = [r.getMessage() for r in caplog.records if "trainer.max_steps" in r.getMessage()]
    assert lines == ["resume: trainer.max_steps 6 -> 10: training continues to step 10; the learning-rate schedule "
                     "(optim.schedule=cosine) now spans 10 steps instead of 6, so the learning rate from here on "
                     "differs from the original plan."]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        same = resume_with(tmp_path, run, "trainer.max_steps=6", "optim=adamw", fast=True)
    assert same.trainer.max_steps == 6 and not caplog.records
    constant = saved_run(tmp_path / "constant", "optim.schedule=constant")
    with caplog.at_level(logging.WARNING):
        resume_with(tmp_path, constant, "trainer.max_steps=10")
    assert caplog.records[-1].getMessage() == (
        "resume: trainer.max_steps 6 -> 10: training continues to step 10; the learning-rate schedule "
        "(optim.schedule=constant) does not depend on it.")


def test_resume_from_a_step_checkpoint_uses_the_run_config(tmp_path: Path) -> None:
    """`resume=runs/X/checkpoints/step000002.ckpt` continues run X with X's settings too (it took today's defaults)."""
    from lightning_t5.errors import CheckpointError
    from lightning_t5.train.setup import resolve_run_config

    run = saved_run(tmp_path)
    ckpt = run / "checkpoints" / "step000002.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    cfg = resolve_run_config(compose_config(tmp_path, f"resume={ckpt}", fast=False), [f"resume={ckpt}"])
    assert cfg.resume == str(ckpt) and cfg.run_dir == str(run) and cfg.mixture == "test_train_mix"
    with pytest.raises(CheckpointError, match="mixture=default"):
        resolve_run_config(compose_config(tmp_path, f"resume={ckpt}", "mixture=default", fast=False),
                           [f"resume={ckpt}", "mixture=default"])
