"""model.compile: compiled training equals eager, compiles once per batch shape (not once per step), `auto` compiles
only when it pays, and checkpoints, resume, export and FSDP work with compilation on.

Compiling takes tens of seconds on 2 CPU cores even for these small models, so the tests that compile are marked
slow and share what they can (inductor's on-disk cache makes a second compile of the same graph fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lightning_t5 import T5Config
from lightning_t5.model.flops import COMPILE_BUDGET, compile_pays, estimate_compile_seconds
from lightning_t5.model.t5 import BEST_COMPILE_MODE, COMPILE_MODES
from test_model import make_model, pack, random_examples
from test_train_helpers import compose_config, read_losses


def _batches() -> list[dict[str, torch.Tensor]]:
    """Five steps: three packed batches of one shape, then two of another (a padded-to-a-longer-length batch)."""
    def rows(seed: int, enc: int, dec: int) -> dict[str, torch.Tensor]:
        parts = [pack(random_examples(3, seed=seed + r), enc, dec) for r in range(2)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    return [rows(s, 30, 18) for s in (1, 3, 5)] + [rows(s, 40, 20) for s in (7, 9)]


def _train(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> tuple[list[float], list[int]]:
    # SGD: the weights move by the gradients themselves, so comparing weights compares gradients. (Adam divides
    # by the gradient's running magnitude: where a gradient is ~0, a 1e-9 difference between compiled and eager
    # kernels flips the update's sign, a weight difference of 2 x lr that says nothing about the gradients.)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses, counts = [], []
    for batch in batches:
        out = model.loss(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        counts.append(model.compile_count)
    return losses, counts


@pytest.mark.slow
def test_compiled_training_equals_eager_and_compiles_once_per_shape() -> None:
    """Whole-stack compilation (what `model.compile=true` runs on CPU; the per-block mode is covered with FSDP
    below): the same losses and weights as eager over five steps of two batch shapes."""
    mode = "model"
    eager, compiled = make_model(seed=21).train(), make_model(seed=21).train()
    compiled.enable_compile(mode)
    batches = _batches()
    eager_losses, eager_counts = _train(eager, batches)
    losses, counts = _train(compiled, batches)
    assert eager_counts == [0] * 5 and compiled.compile_mode == mode
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-5)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no `_orig_mod` in checkpoints
    # one compilation for the first shape, none for the next steps of that shape, a bounded number for the second
    # shape, none after: a model that recompiled every step would fail here. The batches of one shape have
    # different numbers of target positions, which the compiled loss graph (output projection + cross-entropy of
    # those N positions) takes with N dynamic: a new N must not compile again either.
    targets_per_batch = [int((b["decoder_target_tokens"] > 0).sum()) for b in batches[:3]]
    assert targets_per_batch[2] not in targets_per_batch[:2], targets_per_batch
    first = counts[0]
    assert first >= 1 and counts[1] == counts[2] == first, counts
    assert counts[3] <= 2 * first and counts[4] == counts[3], counts
    # evaluation runs eager: no compilation for it
    with torch.no_grad():
        compiled.eval()(**batches[0])
    assert compiled.compile_count == counts[-1]


def test_compile_setting_is_validated_and_defaults_to_auto() -> None:
    assert T5Config.from_preset("tiny").compile == "auto"
    assert {T5Config.from_preset("tiny", compile=v).compile for v in (True, False, "auto")} == {True, False, "auto"}
    with pytest.raises(ValueError, match=r"model.compile='sometimes' is not valid: expected one of auto, true, false"):
        T5Config.from_preset("tiny", compile="sometimes")
    assert set(BEST_COMPILE_MODE.values()) <= set(COMPILE_MODES)
    with pytest.raises(ValueError, match="compile mode 'fast'"):
        make_model().enable_compile("fast")


def test_auto_compiles_when_compile_time_is_under_five_percent_of_the_run() -> None:
    tiny, small = T5Config.from_preset("tiny"), T5Config.from_preset("t5_1_1_small")
    # the default run (500 steps of 32 x (128 + 32) on 2 CPU threads): compiling would cost far more than 5 %
    pays, why = compile_pays(tiny, 500, 32, 128, 32, "cpu", threads=2)
    assert not pays and "not compiling" in why and "500 steps of 32 x (128 + 32)" in why
    # a long T5.1.1-small run on the same CPU: compile once, then thousands of multi-second steps
    pays, why = compile_pays(small, 2000, 8, 512, 114, "cpu", threads=2)
    assert pays and "compiling (threshold 5 %)" in why
    # the rule itself: compile time < COMPILE_BUDGET * (steps * step time), monotone in steps
    decisions = [compile_pays(small, steps, 128, 512, 114, "cuda", "NVIDIA H100 80GB HBM3", dtype="bf16")[0]
                 for steps in (10, 1000, 100_000, 1_000_000)]
    assert decisions == sorted(decisions) and decisions[0] is False and decisions[-1] is True
    assert 0 < COMPILE_BUDGET <= 0.05 and estimate_compile_seconds(small) > estimate_compile_seconds(tiny)


class CompileSeen(pl.Callback):
    """Records what the training module's model compiled."""

    def on_train_end(self, trainer, pl_module) -> None:
        self.mode, self.count = pl_module.model.compile_mode, pl_module.model.compile_count


def test_auto_does_not_compile_a_short_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Through the training module: `model.compile=auto` (the default) decides at the first batch, says why, and a
    short run stays eager (so the default suite's training tests run eager)."""
    from lightning_t5.train.fit import fit

    seen = CompileSeen()
    result = fit(compose_config(tmp_path, "trainer.max_steps=2", "trainer.checkpoint_every_n_steps=2",
                                "eval.max_examples=2"), callbacks=[seen])
    assert result["steps"] == 2 and seen.mode is None and seen.count == 0
    assert "model.compile=auto: estimated compile time" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_run_resumes_exactly_and_exports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`model.compile=true` through train.py's path: checkpoints (no compiled-module names), exact resume from a
    checkpoint (the resumed process compiles again), Hugging Face export; the compile count is logged."""
    from lightning_t5 import T5
    from lightning_t5.export import load_model, main
    from test_resume import StopAt

    from lightning_t5.train.fit import fit

    common = ["model.compile=true", "model.dropout_rate=0.0"]
    seen = CompileSeen()
    full = fit(compose_config(tmp_path, *common, run_name="full"), callbacks=[seen])
    assert seen.mode == BEST_COMPILE_MODE["cpu"] and seen.count >= 1
    printed = [line for line in capsys.readouterr().out.splitlines() if "graph(s) compiled so far" in line]
    assert len(printed) == 1 and "(step 1)" in printed[0], printed  # compiled at step 1, never again
    reference = read_losses(full["run_dir"])
    metrics = (Path(full["run_dir"]) / "csv").glob("version_*/metrics.csv")
    assert any("compile/graphs" in p.read_text().splitlines()[0] for p in metrics)
    part = fit(compose_config(tmp_path, *common, run_name="part"), callbacks=[StopAt(4)])
    assert part["steps"] == 4
    resumed = fit(compose_config(tmp_path, *common, "resume=" + str(tmp_path / "part"), run_name="part"))
    losses = read_losses(resumed["run_dir"])
    for step in range(1, 7):
        assert losses[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (step, losses, reference)
    checkpoint = torch.load(full["checkpoint"], weights_only=True)
    assert not any("_orig_mod" in k for k in checkpoint["state_dict"])
    assert main(["--ckpt", full["run_dir"], "--out", str(tmp_path / "hf")]) == 0
    exported, original = T5.from_hf(str(tmp_path / "hf")).eval(), load_model(full["checkpoint"])
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids, labels=ids).logits,
                                   original(input_ids=ids, labels=ids).logits)


@pytest.mark.slow
def test_fsdp_with_compile_matches_fsdp_eager(tmp_path: Path) -> None:
    """Two processes, FSDP2 with per-block compilation (the blocks FSDP wraps) and activation checkpointing:
    the same losses as the same sharded run eager, and the blocks compile at the first step only."""
    import subprocess

    from test_fsdp import REPO, SHARDED, _env, _run, _train_cmd

    _run(_train_cmd(tmp_path, "eager", *SHARDED, "model.compile=false"))
    proc = subprocess.run(_train_cmd(tmp_path, "compiled", *SHARDED, "model.compile=true"), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = [line for line in proc.stdout.splitlines() if "graph(s) compiled so far" in line]
    assert len(printed) == 1 and printed[0].startswith("torch.compile (block)") and "(step 1)" in printed[0], printed
    eager, compiled = read_losses(tmp_path / "eager"), read_losses(tmp_path / "compiled")
    assert sorted(compiled) == sorted(eager) == list(range(1, 9))
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4, abs=1e-5), (step, compiled, eager)


@pytest.mark.parametrize("pack", [True, False])
def test_training_batches_have_one_shape(pack: bool) -> None:
    """What bounds the compilations of a run: the data pipeline pads every batch, packed or not, to
    data.sequence_length and data.batch_size, so a training run sees one input shape (one compilation)."""
    from mixtures import MixtureDataset, MixtureRegistry

    ds = MixtureDataset(MixtureRegistry.get("default"), sequence_length={"inputs": 64, "targets": 16}, batch_size=4,
                        pack=pack, seed=0, num_batches=6)
    shapes = {tuple((k, tuple(v.shape)) for k, v in sorted(batch.items())) for batch in ds}
    assert len(shapes) == 1, shapes
    assert dict(next(iter(shapes)))["encoder_input_tokens"] == (4, 64)
