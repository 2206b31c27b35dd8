"""Checkpoints that load without running code (issue 21 A.3) and survive crashes and copies (A.8): the restricted
reading of DCP directories through `resume=`, `init_from=` and `python -m lightning_t5.export`, the fsync before the
completion marker, and `find_last_checkpoint` skipping what does not load and ordering by the recorded step."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_train_helpers import compose_config

from lightning_t5 import T5, T5Config
from lightning_t5.dist.checkpoint import (
    DCP_METADATA,
    MARKER,
    META,
    UnsafeCheckpointError,
    finalize,
    find_last_checkpoint,
    load_checkpoint,
    partial_dir,
    split_sharded,
    write_file,
)
from lightning_t5.errors import CheckpointError

#: A model small enough to write a checkpoint of in milliseconds.
TINY = {"vocab_size": 256, "d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16, "num_layers": 1,
        "num_decoder_layers": 1, "dropout_rate": 0.0}


def write_sharded_checkpoint(path: Path, step: int, model_config: dict | None = None, vocab: str = "v",
                             seed: int = 0) -> T5:
    """Write a checkpoint directory the way `ShardedStrategy.save_checkpoint` does (here on one process): the
    tensors through DCP, the rest (optimizer param groups included) as `meta.pt`, then `finalize`. Returns the
    model whose weights it holds."""
    import torch.distributed.checkpoint as dcp

    model_config = model_config or TINY
    torch.manual_seed(seed)
    model = T5(T5Config.from_dict(model_config))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    optimizer = {"state": {k: {"step": torch.tensor(float(step)), "exp_avg": torch.zeros_like(v)}
                           for k, v in list(state.items())[:2]},
                 "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": list(state)[:2]}]}
    checkpoint = {"global_step": step, "state_dict": state, "optimizer_states": [optimizer],
                  "hyper_parameters": {"model_config": dict(model_config), "vocab_fingerprint": vocab},
                  "loops": {"fit_loop": {"step": step}}}
    sharded, meta = split_sharded(checkpoint)
    tmp = partial_dir(path)
    tmp.mkdir(parents=True, exist_ok=True)
    dcp.save(sharded, storage_writer=dcp.FileSystemWriter(str(tmp)))
    write_file(meta, tmp / META)
    finalize(tmp, path, step=step)
    return model


class _RunsCode:
    """Unpickling this creates the directory `marker`: what a hostile pickle would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


# ---------------------------------------------------------------------------------------------------------------
# A.3: a DCP directory whose .metadata would run code is refused by every loading path, and the code never runs
@pytest.fixture
def hostile_run(tmp_path: Path) -> tuple[Path, Path, object]:
    """A sharded run directory (`config.yaml`, `checkpoints/last.ckpt/`) for the test config, compatible with it
    (model and vocabulary), whose DCP `.metadata` has been replaced by a pickle that creates a directory."""
    from lightning_t5.train.setup import RunSetup, resolve_run_config

    sharded = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true"]
    cfg = resolve_run_config(compose_config(tmp_path, *sharded, run_name="victim"), None)
    setup = RunSetup(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    last = run_dir / "checkpoints" / "last.ckpt"
    write_sharded_checkpoint(last, 3, model_config=dict(setup.model_config), vocab=setup.vocab_fingerprint)
    marker = tmp_path / "code_ran"
    (last / DCP_METADATA).write_bytes(pickle.dumps({"state_dict_metadata": _RunsCode(marker)}))
    return run_dir, marker, cfg


def test_resume_refuses_a_checkpoint_whose_metadata_would_run_code(hostile_run, tmp_path: Path) -> None:
    from lightning_t5.train.fit import fit

    run_dir, marker, _ = hostile_run
    cfg = compose_config(tmp_path, "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1",
                         "trainer.precision=32-true", f"resume={run_dir}", run_name="victim")
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load it: the pickle refers to posix\.mkdir"):
        fit(cfg, overrides=[f"resume={run_dir}"])
    assert not marker.exists()


def test_init_from_refuses_a_checkpoint_whose_metadata_would_run_code(hostile_run, tmp_path: Path) -> None:
    from lightning_t5.train.fit import fit

    run_dir, marker, _ = hostile_run
    cfg = compose_config(tmp_path, "trainer.accelerator=cpu", f"init_from={run_dir}", "trainer.max_steps=1",
                         run_name="new")
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.mkdir.*could run arbitrary code"):
        fit(cfg)
    assert not marker.exists()


def test_export_refuses_a_checkpoint_whose_metadata_would_run_code(hostile_run, tmp_path: Path, capsys) -> None:
    from lightning_t5.export import main

    run_dir, marker, _ = hostile_run
    assert main(["--ckpt", str(run_dir), "--out", str(tmp_path / "hf")]) == 2
    assert "refusing to load it: the pickle refers to posix.mkdir" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "hf").exists()


def test_byte_items_are_never_unpickled_and_sharded_saves_write_none(tmp_path: Path) -> None:
    """DCP stores a non-tensor value as a pickled "byte item" and loads it with weights_only=False: the safe reader
    refuses one (here under the model's keys, which export reads), and `split_sharded` (what our sharded saves
    use) keeps every non-tensor value out of the shards."""
    import torch.distributed.checkpoint as dcp

    from lightning_t5.dist.checkpoint import byte_items, load_full_model_state, read_dcp_metadata

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    write_sharded_checkpoint(last, 2)
    metadata = read_dcp_metadata(last)
    assert byte_items(metadata) == []
    assert "optimizer_0.state.model.shared.weight.exp_avg" in metadata.state_dict_metadata
    assert torch.load(last / META, weights_only=True)["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-3

    marker = tmp_path / "code_ran"
    hostile = tmp_path / "hostile.ckpt"
    tmp = partial_dir(hostile)
    tmp.mkdir()
    dcp.save({"state_dict": {"model.shared.weight": torch.zeros(2), "model.note": _RunsCode(marker)}},
             storage_writer=dcp.FileSystemWriter(str(tmp)))
    torch.save({"global_step": 1, "hyper_parameters": {"model_config": TINY}}, tmp / META)
    finalize(tmp, hostile, step=1)
    assert byte_items(read_dcp_metadata(hostile)) == ["state_dict.model.note"]
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load 1 pickled item\(s\) \(state_dict.model.note\)"):
        load_full_model_state(hostile)
    assert not marker.exists()


def test_split_sharded_round_trips_through_merge() -> None:
    from lightning_t5.dist.checkpoint import merge_sharded, split_tensors

    state = {"state": {"w": {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
             "param_groups": [{"lr": 0.1, "params": ["w"]}], "empty": {}}
    tensors, rest = split_tensors(state)
    assert tensors == {"state": {"w": {"step": state["state"]["w"]["step"], "exp_avg": state["state"]["w"]["exp_avg"]}}}
    assert rest == {"param_groups": [{"lr": 0.1, "params": ["w"]}], "empty": {}}
    assert merge_sharded(tensors, rest) == state
    with pytest.raises(TypeError, match="list holding tensors"):
        split_tensors({"x": [torch.ones(1)]})


# ---------------------------------------------------------------------------------------------------------------
# A.8: durable directories, validated reads, order by the recorded step
def test_finalize_fsyncs_every_file_before_the_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_t5.dist import checkpoint

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", recording_fsync)
    write_sharded_checkpoint(tmp_path / "step000002.ckpt", 2)
    files = sorted(p.name for p in (tmp_path / "step000002.ckpt").iterdir() if p.name != MARKER)
    assert {".metadata", META} <= set(files) and any(f.endswith(".distcp") for f in files)
    before_marker = synced[:synced.index(MARKER)]
    assert set(files) <= set(before_marker), f"not fsynced before {MARKER}: {set(files) - set(before_marker)}"


def test_a_checkpoint_whose_meta_is_empty_is_skipped_for_the_previous_one(tmp_path: Path, caplog) -> None:
    ckpt = tmp_path / "checkpoints"
    for step in (3, 6):
        write_sharded_checkpoint(ckpt / f"step{step:06d}.ckpt", step)
    write_sharded_checkpoint(ckpt / "last.ckpt", 6)
    assert find_last_checkpoint(tmp_path) == ckpt / "last.ckpt"
    (ckpt / "last.ckpt" / META).write_bytes(b"")  # e.g. a copy that ran out of space
    (ckpt / "step000006.ckpt" / META).write_bytes(b"")
    assert find_last_checkpoint(tmp_path) == ckpt / "step000003.ckpt"
    assert "skipping checkpoint" in caplog.text and "meta.pt" in caplog.text
    # a shard cut short is skipped as well
    shard = next((ckpt / "step000003.ckpt").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    assert find_last_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match=r"shard .*\.distcp is 100 bytes"):
        load_checkpoint(ckpt / "step000003.ckpt")


def test_a_step_file_that_does_not_load_is_skipped_for_the_previous_one(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    for step in (3, 6):
        write_file({"global_step": step, "state_dict": {"w": torch.ones(4)}}, ckpt / f"step{step:06d}.ckpt")
    write_file({"global_step": 6, "state_dict": {"w": torch.ones(4)}}, ckpt / "last.ckpt")
    assert find_last_checkpoint(tmp_path) == ckpt / "last.ckpt"
    (ckpt / "last.ckpt").write_bytes(b"")
    data = (ckpt / "step000006.ckpt").read_bytes()
    (ckpt / "step000006.ckpt").write_bytes(data[: len(data) // 2])  # an interrupted copy
    assert find_last_checkpoint(tmp_path) == ckpt / "step000003.ckpt"


def test_checkpoints_are_ordered_by_the_step_recorded_in_them(tmp_path: Path) -> None:
    """Not by modification time (wrong after `cp` or `rsync` without -t), and not `last.ckpt` blindly: a stale
    `last.ckpt` (step 4) loses to a step checkpoint that records step 6."""
    ckpt = tmp_path / "checkpoints"
    write_sharded_checkpoint(ckpt / "step000006.ckpt", 6)
    write_sharded_checkpoint(ckpt / "last.ckpt", 4)
    write_sharded_checkpoint(ckpt / "step000002.ckpt", 2)
    os.utime(ckpt / "step000006.ckpt", (0, 0))  # the oldest by mtime
    assert find_last_checkpoint(tmp_path) == ckpt / "step000006.ckpt"
    files = tmp_path / "files" / "checkpoints"
    write_file({"global_step": 4, "state_dict": {}}, files / "last.ckpt")
    write_file({"global_step": 6, "state_dict": {}}, files / "step000006.ckpt")
    os.utime(files / "step000006.ckpt", (0, 0))
    assert find_last_checkpoint(files.parent) == files / "step000006.ckpt"


def test_an_unsafe_checkpoint_stops_the_search_instead_of_being_skipped(tmp_path: Path) -> None:
    """Damage from a crash is skipped for an older checkpoint; a pickle that would run code is an error."""
    ckpt = tmp_path / "checkpoints"
    write_sharded_checkpoint(ckpt / "step000003.ckpt", 3)
    write_sharded_checkpoint(ckpt / "last.ckpt", 6)
    marker = tmp_path / "code_ran"
    (ckpt / "last.ckpt" / DCP_METADATA).write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(UnsafeCheckpointError):
        find_last_checkpoint(tmp_path)
    buf = io.BytesIO()
    torch.save({"global_step": 7, "x": _RunsCode(marker)}, buf)
    (ckpt / "last.ckpt").rename(tmp_path / "moved")
    (ckpt / "last.ckpt").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeCheckpointError, match="posix.mkdir"):
        find_last_checkpoint(tmp_path)
    assert not marker.exists()
