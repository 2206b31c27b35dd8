"""Sharded data parallelism (trainer=fsdp, FSDP2 on 2 CPU processes over gloo): equality with 1-process training,
per-rank memory, atomic distributed checkpoints, SIGKILL + resume, Hugging Face export of the sharded weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_helpers import CONFIG_DIR, FAST, compose_config, read_losses, sigkill_after_logged_steps

REPO = Path(CONFIG_DIR).parent
# 8 steps, padded batches, no dropout, two layers per stack (so blocks 1.. are their own FSDP units), per-block
# activation checkpointing in the sharded run, checkpoints every 3 steps.
EXTRA = ["imports=[test_train_helpers]", "data.pack=false", "model.dropout_rate=0.0", "trainer.max_steps=8",
         "model.num_layers=2", "model.num_decoder_layers=2", "eval.max_examples=6"]
COMMON = [*FAST, *EXTRA]
SHARDED = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
           "data.batch_size=2", "model.gradient_checkpointing=true"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}


def _train_cmd(out: Path, name: str, *extra: str) -> list[str]:
    """`python train.py ...` exactly as a user runs it (2 processes: Lightning launches the second one)."""
    return [sys.executable, "train.py", *COMMON, f"output_dir={out}", f"run_name={name}", *extra]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted 2-process sharded run (with export_hf) and its 1-process twin (same global batch 4)."""
    out = tmp_path_factory.mktemp("fsdp")
    _run(_train_cmd(out, "sharded", *SHARDED, f"export_hf={out / 'hf_sharded'}"))
    _run(_train_cmd(out, "single", "data.batch_size=4", f"export_hf={out / 'hf_single'}"))
    return out


# ---------------------------------------------------------------------------------------------------------------
def test_fsdp_refuses_adafactor_and_fp16(tmp_path: Path) -> None:
    from lightning_t5.errors import ConfigError
    from lightning_t5.train.fit import fit

    with pytest.raises(ConfigError, match=r"optim.name='adafactor'.*optim=adamw"):
        fit(compose_config(tmp_path, "trainer=fsdp", "trainer.accelerator=cpu", "optim=adafactor"))
    with pytest.raises(ConfigError, match=r"trainer.precision='16-mixed'"):
        fit(compose_config(tmp_path, "trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=16-mixed"))


def test_fsdp_preset_selects_adamw_and_deepspeed_is_gone(tmp_path: Path) -> None:
    from lightning_t5.errors import ConfigError
    from lightning_t5.train.schema import validate_config

    cfg = compose_config(tmp_path, "trainer=fsdp", fast=False)
    assert (cfg.optim.name, cfg.trainer.strategy) == ("adamw", "fsdp")
    assert not (REPO / "configs" / "trainer" / "deepspeed.yaml").exists()
    bad = compose_config(tmp_path, "trainer.strategy=deepspeed_stage_2", fast=False)
    with pytest.raises(ConfigError, match="trainer.strategy='deepspeed_stage_2' is not valid"):
        validate_config(bad)


def test_incomplete_checkpoint_directories_are_never_picked(tmp_path: Path) -> None:
    """A directory checkpoint counts only with its completion marker; `.partial` writes are invisible."""
    from test_checkpoints import write_sharded_checkpoint

    from lightning_t5.dist.checkpoint import MARKER, find_last_checkpoint, partial_dir

    ckpt = tmp_path / "checkpoints"
    for step in (3, 6):
        write_sharded_checkpoint(ckpt / f"step{step:06d}.ckpt", step)
    assert find_last_checkpoint(tmp_path) == ckpt / "step000006.ckpt"
    (ckpt / "step000006.ckpt" / MARKER).unlink()  # as if the write had been interrupted
    assert find_last_checkpoint(tmp_path) == ckpt / "step000003.ckpt"
    half = partial_dir(ckpt / "last.ckpt")  # a crash mid-write leaves only this
    half.mkdir()
    (half / "__0_0.distcp").write_bytes(b"\0" * 10)
    assert find_last_checkpoint(tmp_path) == ckpt / "step000003.ckpt"
    # finalize replaces an existing complete directory (last.ckpt is rewritten every time)
    for step in (7, 8):
        write_sharded_checkpoint(ckpt / "last.ckpt", step)
    assert find_last_checkpoint(tmp_path) == ckpt / "last.ckpt"
    assert json.loads((ckpt / "last.ckpt" / MARKER).read_text()) == {"global_step": 8}
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt", "step000003.ckpt", "step000006.ckpt"]


@pytest.mark.parametrize("meta_init", [None, False, True])
def test_build_model_draws_what_a_one_process_build_draws(meta_init) -> None:
    """Whatever `trainer.fsdp.meta_init` decides, the model's init seed and the RNG state after the build are those
    of a plain `T5(config)` (the size probe of meta_init=null draws from a fork)."""
    from lightning_t5 import T5, T5Config
    from lightning_t5.dist.sharding import build_model

    model_config = {"vocab_size": 300, "d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16, "num_layers": 1,
                    "num_decoder_layers": 1}
    torch.manual_seed(3)
    plain = T5(T5Config.from_dict(model_config))
    after_plain = torch.rand(3)
    torch.manual_seed(3)
    built = build_model(model_config, {"param_dtype": "float32", "meta_init": meta_init})
    assert torch.equal(torch.rand(3), after_plain)
    assert built.init_seed == plain.init_seed
    assert next(built.parameters()).is_meta == bool(meta_init)
    if not meta_init:
        for name, value in plain.state_dict().items():
            assert torch.equal(built.state_dict()[name], value), name


def test_meta_initialised_shards_start_from_the_one_process_weights(tmp_path: Path) -> None:
    """Meta-initialisation forced on for a small model (untied head, gated FFN, 2 blocks per stack, a vocabulary that
    2 ranks shard unevenly): the weights gathered from 2 gloo processes equal, bit for bit, those of the model a
    1-process run builds from the same seed."""
    from lightning_t5 import T5, T5Config

    model_config = {"vocab_size": 1001, "d_model": 64, "d_ff": 128, "num_heads": 2, "d_kv": 32, "num_layers": 2,
                    "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
                    "dropout_rate": 0.0}
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
          str(REPO / "tests" / "fsdp_worker.py"), str(tmp_path), "--initial-weights", "7", json.dumps(model_config)])
    sharded = torch.load(tmp_path / "initial_weights.pt", weights_only=True)
    torch.manual_seed(7)
    reference = T5(T5Config.from_dict(model_config)).state_dict()
    assert sorted(sharded) == sorted(reference)
    for name, value in reference.items():
        assert torch.equal(sharded[name], value), name


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_process_fsdp_matches_one_process(runs: Path) -> None:
    single, sharded = read_losses(runs / "single"), read_losses(runs / "sharded")
    assert sorted(single) == sorted(sharded) == list(range(1, 9))
    np.testing.assert_allclose([sharded[s] for s in range(1, 9)], [single[s] for s in range(1, 9)], rtol=1e-4)
    last = runs / "sharded" / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2  # one shard file per rank
    from lightning_t5.dist.checkpoint import byte_items, read_dcp_metadata

    metadata = read_dcp_metadata(last)  # through the restricted unpickler
    assert any(k.startswith("optimizer_0.state.") for k in metadata.state_dict_metadata)
    assert byte_items(metadata) == []  # nothing that loading would have to unpickle
    assert json.loads((runs / "sharded" / "metrics.json").read_text())["steps"] == 8


@pytest.mark.slow
def test_sharded_export_loads_in_transformers_with_the_unsharded_logits(runs: Path, tmp_path: Path) -> None:
    from transformers import T5ForConditionalGeneration

    from lightning_t5.export import load_model, main

    # offline export of the distributed checkpoint directory (one process, no process group)
    assert main(["--ckpt", str(runs / "sharded"), "--out", str(tmp_path / "offline")]) == 0
    unsharded = load_model(runs / "single").eval()  # the 1-process run's model
    torch.manual_seed(0)
    ids = torch.randint(2, 1000, (2, 12))
    labels = torch.randint(2, 1000, (2, 5))
    with torch.no_grad():
        expected = unsharded(input_ids=ids, labels=labels).logits
        for exported in (runs / "hf_sharded", tmp_path / "offline"):
            hf = T5ForConditionalGeneration.from_pretrained(str(exported)).eval()
            logits = hf(input_ids=ids, labels=labels).logits
            torch.testing.assert_close(logits, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_same_losses(runs: Path) -> None:
    """SIGKILL both ranks of a running `python train.py trainer=fsdp ...` (as a pre-emption would), then
    `resume=<run dir>`: steps after the last complete checkpoint are redone and every loss matches the reference."""
    out = runs / "kill"
    run_dir = out / "killed"
    killed_at = sigkill_after_logged_steps(_train_cmd(out, "killed", *SHARDED), REPO, _env(), run_dir, 4)
    assert 4 <= killed_at < 8, "the run finished before it could be killed"
    from lightning_t5.dist.checkpoint import find_last_checkpoint

    found = find_last_checkpoint(run_dir)
    assert found is not None and found.is_dir()

    _run(_train_cmd(out, "killed", *SHARDED, f"resume={run_dir}"))
    reference, losses = read_losses(runs / "sharded"), read_losses(run_dir)
    assert sorted(losses) == list(range(1, 9))
    np.testing.assert_allclose([losses[s] for s in range(1, 9)], [reference[s] for s in range(1, 9)], rtol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_each_rank_holds_half_of_parameters_and_optimizer_state_with_meta_init(tmp_path: Path) -> None:
    """Built on the meta device and initialised on the shards (trainer.fsdp.meta_init=true), bf16-mixed: each rank
    stores about half of the parameters and of AdamW's moments, in fp32, gathers bf16 weights for the forward, and
    the weights have the model's init scale (not garbage)."""
    sharded = [o for o in SHARDED if not o.startswith("trainer.precision")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(REPO / "tests" / "fsdp_worker.py"), str(tmp_path), *EXTRA, *sharded, "trainer.precision=bf16-mixed",
           "trainer.fsdp.meta_init=true", "trainer.max_steps=3", "eval.max_examples=2"]
    _run(cmd)
    assert all(np.isfinite(v) for v in read_losses(tmp_path / "measured").values())
    records = [json.loads((tmp_path / "measured" / f"shards_rank{r}.json").read_text()) for r in (0, 1)]
    for rec in records:
        assert rec["param_types"] == ["DTensor"]
        assert rec["param_dtypes"] == rec["grad_dtypes"] == ["torch.float32"]  # sharded master weights, fp32 reduce
        assert rec["forward_param_dtypes"] == ["torch.bfloat16"]  # MixedPrecisionPolicy(param_dtype=bf16)
        assert rec["total_optimizer_state"] == 2 * rec["total_params"]  # exp_avg + exp_avg_sq
        assert rec["local_params"] == pytest.approx(rec["total_params"] / 2, rel=0.02)
        assert rec["local_optimizer_state"] == pytest.approx(rec["total_optimizer_state"] / 2, rel=0.02)
    assert sum(r["local_params"] for r in records) == records[0]["total_params"]
    from omegaconf import OmegaConf

    from lightning_t5 import T5, T5Config

    run_cfg = OmegaConf.load(tmp_path / "measured" / "config.yaml")
    model_cfg = OmegaConf.to_container(run_cfg.model, resolve=True)
    torch.manual_seed(int(run_cfg.seed))
    reference = dict(T5(T5Config.from_dict(model_cfg)).named_parameters())  # built in full, initialised as usual
    initial = torch.load(tmp_path / "measured" / "initial_weights.pt", weights_only=True)
    for name, value in reference.items():  # the sharded run started from the 1-process run's weights
        assert torch.equal(initial[name], value.detach()), name
    for name, std in records[0]["std"].items():  # after 2 AdamW steps of lr 1e-3: still the init's scale
        assert std == pytest.approx(float(reference[name].detach().std()), rel=0.25, abs=0.02), name


# ---------------------------------------------------------------------------------------------------------------
def _records(n: int = 2) -> list[dict]:
    return [{"seed": 42, "mixture_rates": {"a": 0.25, "b": 0.75}, "vocab_fingerprint": "v1",
             "cache_fingerprints": {"a": "ca", "b": "cb"}, "data.batch_size": 4, "trainer.accumulate_grad_batches": 1}
            for _ in range(n)]


@pytest.mark.parametrize("key, value, message", [
    ("seed", 43, r"Ranks disagree on 'seed': rank 0 has 42, rank 1 has 43"),
    ("mixture_rates", {"a": 0.5, "b": 0.5}, r"'mixture_rates' \(differs for: a, b\)"),
    ("vocab_fingerprint", "v2", r"'vocab_fingerprint'"),
    ("cache_fingerprints", {"a": "ca", "b": "stale"}, r"'cache_fingerprints' \(differs for: b\)"),
    ("data.batch_size", 2, r"'data.batch_size'"),
])
def test_rank_agreement_names_the_key_that_differs(key: str, value, message: str) -> None:
    from lightning_t5.dist.rank_agreement import check_rank_agreement
    from lightning_t5.errors import ConfigError

    records = _records(3)
    check_rank_agreement(records)  # all equal: fine
    records[1][key] = value
    with pytest.raises(ConfigError, match=message):
        check_rank_agreement(records)


def test_rank_record_reads_the_run(tmp_path: Path) -> None:
    from test_train_helpers import TEST_MIXTURE

    from lightning_t5.train.data import MixtureDataModule
    from lightning_t5.dist.rank_agreement import rank_record

    data = {"sequence_length": {"inputs": 64, "targets": 16}, "batch_size": 4, "pack": False}
    dm = MixtureDataModule(TEST_MIXTURE, data=data, mixing={}, seed=7)
    dm.train_dataset = dm.make_train_dataset(0, 1)
    record = rank_record(7, "vocab", dm, accumulate=2)
    assert set(record["mixture_rates"]) == set(record["cache_fingerprints"]) == set(dm.mixture.task_names)
    assert sum(record["mixture_rates"].values()) == pytest.approx(1.0)
    assert (record["seed"], record["data.batch_size"], record["trainer.accumulate_grad_batches"]) == (7, 4, 2)


@pytest.mark.slow
def test_two_process_run_with_mismatched_seeds_stops_before_training(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(REPO / "tests" / "fsdp_worker.py"), str(tmp_path), "--seed-per-rank", *EXTRA, *SHARDED]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "Ranks disagree on 'seed': rank 0 has 40, rank 1 has 41" in proc.stderr
    assert not (tmp_path / "measured" / "train_log.jsonl").exists() or not read_losses(tmp_path / "measured")


def test_init_from_and_export_read_a_distributed_checkpoint_directory(tmp_path: Path) -> None:
    """The directory format sharded runs write (DCP tensors + meta.pt + COMPLETE), here written by one process with
    the functions the sharded strategy calls: `init_from=<run dir>` and `lightning_t5.export.load_model` rebuild the
    full weights from it."""
    from test_checkpoints import TINY, write_sharded_checkpoint

    from lightning_t5 import T5, T5Config
    from lightning_t5.dist.checkpoint import load_weights
    from lightning_t5.export import load_model

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    source = write_sharded_checkpoint(last, 5, seed=1)
    target = T5(T5Config.from_dict(TINY))
    load_weights(target, str(tmp_path / "run"), TINY, "v")
    exported = load_model(last)
    for name, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[name], value, rtol=0, atol=0)
        torch.testing.assert_close(exported.state_dict()[name], value, rtol=0, atol=0)
