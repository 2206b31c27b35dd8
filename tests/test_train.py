"""End-to-end training runs (few steps), checkpoints, export, and every bad input stopping with a clear error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lightning_t5.dist.checkpoint import check_compatible, load_checkpoint
from lightning_t5.errors import CheckpointError
from lightning_t5.train.module import NonFiniteLossError, lr_lambda
from test_train_helpers import compose_config, read_losses


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The embedded default config (tiny model, `default` mixture, eval before and after) for 3 steps."""
    from lightning_t5.train.fit import fit

    root = tmp_path_factory.mktemp("default_run")
    cfg = compose_config(root, "trainer.max_steps=3", "trainer.checkpoint_every_n_steps=2", "eval.max_examples=4",
                         "eval.batch_size=4", "eval.max_new_tokens=4", "data.batch_size=8",
                         "trainer.enable_progress_bar=false", fast=False, run_name="default")
    return fit(cfg)


def test_default_run_writes_run_directory(default_run: dict) -> None:
    run_dir = Path(default_run["run_dir"])
    assert default_run["steps"] == 3 and default_run["tokens"] > 0
    for name in ("config.yaml", "metrics.json", "results.md", "train_log.jsonl", "eval_before.json"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["last.ckpt", "step000002.ckpt",
                                                                                 "step000003.ckpt"]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run_dir / "csv").glob("version_*/metrics.csv"))
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["steps"] == 3 and saved["checkpoint"].endswith("last.ckpt")
    # every supervised task of the default mixture is evaluated, before and after training
    expected = {"glue_sst2", "glue_cola", "glue_mrpc", "glue_stsb", "glue_rte", "super_glue_cb", "super_glue_copa"}
    assert set(saved["metrics"]) == expected == set(saved["metrics_before"])
    assert "rank_accuracy" in saved["metrics"]["glue_sst2"] and "accuracy" in saved["metrics"]["glue_sst2"]
    assert {"glue", "super_glue", "overall"} <= set(saved["averages"])
    assert "| glue_sst2 | accuracy |" in (run_dir / "results.md").read_text()
    losses = read_losses(run_dir)
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())


def test_checkpoints_load_weights_only(default_run: dict) -> None:
    ckpt_dir = Path(default_run["run_dir"]) / "checkpoints"
    for path in ckpt_dir.glob("*.ckpt"):
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["hyper_parameters"]["model_config"]["name"] == "tiny"
    assert not list(ckpt_dir.glob("*.tmp")) and not list(ckpt_dir.glob(".*"))


def test_export_to_hugging_face(default_run: dict, tmp_path: Path) -> None:
    from lightning_t5 import T5
    from lightning_t5.export import load_model, main

    assert main(["--ckpt", default_run["run_dir"], "--out", str(tmp_path / "hf")]) == 0
    exported = T5.from_hf(str(tmp_path / "hf")).eval()
    original = load_model(default_run["checkpoint"])
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        a = original(input_ids=ids, labels=torch.tensor([[8, 1]])).logits
        b = exported(input_ids=ids, labels=torch.tensor([[8, 1]])).logits
    torch.testing.assert_close(a, b)
    assert main(["--ckpt", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2


def test_export_of_an_apex_trained_checkpoint_needs_no_apex(default_run: dict, tmp_path: Path) -> None:
    """A run trained with model.fused=apex (here: its checkpoint's config says so) exports on a machine without
    Apex: every export path rebuilds the model on the CPU-safe torch backend."""
    from lightning_t5 import T5
    from lightning_t5.export import load_model, main
    from lightning_t5.model.fused import probe_apex

    if probe_apex().available:
        pytest.skip("NVIDIA Apex is installed here; the point is a machine without it")
    ckpt = torch.load(default_run["checkpoint"], map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["model_config"]["fused"] = "apex"
    torch.save(ckpt, tmp_path / "apex.ckpt")
    assert load_model(tmp_path / "apex.ckpt").backend == "torch"
    assert main(["--ckpt", str(tmp_path / "apex.ckpt"), "--out", str(tmp_path / "hf")]) == 0
    exported = T5.from_hf(str(tmp_path / "hf")).eval()
    reference = load_model(default_run["checkpoint"])
    for (name, a), (_, b) in zip(sorted(reference.state_dict().items()), sorted(exported.state_dict().items())):
        torch.testing.assert_close(a, b, msg=name)


def test_incompatible_checkpoint_is_rejected(default_run: dict, tmp_path: Path) -> None:
    from lightning_t5.train.fit import fit

    cfg = compose_config(tmp_path, "resume=" + default_run["run_dir"], "model.d_model=64", fast=False)
    with pytest.raises(CheckpointError, match="d_model: checkpoint 128 vs config 64"):
        fit(cfg)
    ckpt = load_checkpoint(default_run["checkpoint"])
    model_config = ckpt["hyper_parameters"]["model_config"]
    with pytest.raises(CheckpointError, match="different vocabulary"):
        check_compatible(ckpt, model_config, "0123456789abcdef")
    check_compatible(ckpt, {**model_config, "dropout_rate": 0.0}, ckpt["hyper_parameters"]["vocab_fingerprint"])


def test_missing_resume_directory(tmp_path: Path) -> None:
    from lightning_t5.train.fit import fit

    with pytest.raises(CheckpointError, match="run directory does not exist"):
        fit(compose_config(tmp_path, f"resume={tmp_path / 'no_such_run'}"))
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        fit(compose_config(tmp_path, f"resume={tmp_path / 'empty_run'}"))


def test_apex_requested_but_absent(tmp_path: Path) -> None:
    from lightning_t5.model.fused import FusedBackendError, probe_apex
    from lightning_t5.train.fit import fit

    if probe_apex().available:
        pytest.skip("NVIDIA Apex is installed here")
    with pytest.raises(FusedBackendError, match="model.fused=apex"):
        fit(compose_config(tmp_path, "model.fused=apex"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any training


class PoisonWeights(pl.Callback):
    """Makes the model produce NaN from optimizer step `step` + 1 on."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.shared.weight.fill_(float("nan"))


def test_nan_loss_stops_naming_step_and_tasks(tmp_path: Path) -> None:
    from lightning_t5.train.fit import fit

    with pytest.raises(NonFiniteLossError) as err:
        fit(compose_config(tmp_path, "trainer.max_steps=4"), callbacks=[PoisonWeights(2)])
    message = str(err.value)
    assert "at step 3" in message and "nan" in message.lower()
    assert any(t in message for t in ("glue_sst2", "glue_rte", "corpus_span_corruption"))
    assert sorted(read_losses(tmp_path / "run")) == [1, 2]


def test_resume_config_keeps_run_settings_and_applies_overrides(default_run: dict) -> None:
    """The run's own settings plus the changes a resume accepts (the refusals: tests/test_config.py)."""
    from lightning_t5.train.setup import load_resume_config

    cfg = load_resume_config(default_run["run_dir"], ["resume=x", "trainer.max_steps=10", "eval.max_examples=2"])
    assert cfg.trainer.max_steps == 10 and cfg.eval.max_examples == 2
    assert cfg.model.name == "tiny" and cfg.data.batch_size == 8 and cfg.seed == 42  # the run's own settings
    assert cfg.run_dir == default_run["run_dir"]
    with pytest.raises(CheckpointError, match=r"seed=3 \(seed 42 -> 3"):
        load_resume_config(default_run["run_dir"], ["trainer.max_steps=10", "seed=3"])


def test_learning_rate_schedules() -> None:
    inv = lr_lambda("inverse_sqrt", warmup_steps=100, total_steps=1000)
    assert inv(0) == 1.0 and inv(99) == 1.0 and inv(399) == pytest.approx(0.5)
    cos = lr_lambda("cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == 1.0 and cos(110) == pytest.approx(0.1)
    assert cos(60) == pytest.approx(0.55)
    lin = lr_lambda("linear", warmup_steps=0, total_steps=100)
    assert lin(0) == 1.0 and lin(50) == 0.5 and lin(100) == 0.0
    assert lr_lambda("constant", warmup_steps=0, total_steps=5)(1000) == 1.0
    with pytest.raises(ValueError, match="cosine"):
        lr_lambda("cosin", warmup_steps=0, total_steps=1)


@pytest.mark.slow
def test_console_is_quiet_and_names_the_run_directory_first(tmp_path: Path) -> None:
    """`python train.py`: no Lightning advert, no `datasets` Map/Generating bars, no "Total length of `list`" warning
    for a run without evaluation tasks; the run directory is printed before training starts."""
    import os
    import platform
    import subprocess
    import sys

    from test_train_helpers import CONFIG_DIR, FAST

    root = Path(CONFIG_DIR).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(root)]),
               LIGHTNING_T5_CACHE=str(tmp_path / "cache"))  # a cold cache: the tokenization phase runs
    proc = subprocess.run([sys.executable, "train.py", *FAST, "trainer.max_steps=2", "eval.tasks=[]",
                           "imports=[test_train_helpers]", f"output_dir={tmp_path}", "run_name=quiet"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    for noise in ("💡", "litlogger", "litmodels", "Map:", "Generating train split", "Total length of"):
        assert noise not in console, (noise, console[-3000:])
    assert proc.stdout.index(f"run directory: {tmp_path / 'quiet'}") < proc.stdout.index("training (Ctrl-C")
    # what runs is on the console, not only in a logger nobody configured: the kernels, and on CPU the allocator
    assert proc.stdout.count("kernels: backend=torch, rms_norm=lightning_t5.CPURMSNorm") == 1, proc.stdout[-3000:]
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert proc.stdout.count("host memory: glibc malloc keeps freed memory") == 1, proc.stdout[-3000:]
    results = (tmp_path / "quiet" / "results.md").read_text()  # no evaluation: said so, and no empty table
    assert "No task was evaluated (eval.tasks is empty" in results and "| task | metric" not in results, results[:1500]


def test_a_launch_that_fails_before_its_first_step_leaves_no_run_directory(tmp_path: Path) -> None:
    """Bad data is only found when the data is read; the half-made `runs/<name>/` is removed again."""
    from mixtures import Mixture, MixtureRegistry
    from tasks import FileSource, Task, TaskRegistry

    from lightning_t5.train.fit import fit

    TaskRegistry.add(Task("missing_file_task", FileSource({"train": str(tmp_path / "nope.jsonl"),
                                                           "validation": str(tmp_path / "nope.jsonl")}),
                          [lambda row: {"inputs": row["x"], "targets": row["y"]}]), replace=True)
    MixtureRegistry.add(Mixture("missing_file_mix", ["missing_file_task"]), replace=True)
    try:
        with pytest.raises(Exception):  # noqa: B017 - whichever error the data layer raises, the directory must go
            fit(compose_config(tmp_path, "mixture=missing_file_mix", run_name="broken"))
    finally:  # the registries are process-wide: test_tasks_formats checks that only catalog tasks are registered
        MixtureRegistry.remove("missing_file_mix")
        TaskRegistry.remove("missing_file_task")
    assert not (tmp_path / "broken").exists()
