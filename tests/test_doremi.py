"""DoReMi: the weight update against the paper's formula, the proxy's loss, and the experiment's stages (reference,
proxy, main) through the runner with a fake `fit`, including weights read from the proxy's file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lightning_t5.experiments import StageMismatchError, make_plan, run_experiment
from lightning_t5.train.doremi import GroupDRO
from lightning_t5.train.mixing_weights import read_weights, write_weights
from test_experiments_runner import FakeFit, make_cfg


def paper_update(alpha: np.ndarray, excess: np.ndarray, eta: float, eps: float) -> np.ndarray:
    """Algorithm 1 of Xie et al. 2023, written out: alpha' = alpha * exp(eta * lambda), normalised, smoothed."""
    unnormalised = alpha * np.exp(eta * excess)
    return (1 - eps) * unnormalised / unnormalised.sum() + eps / len(alpha)


def test_group_dro_update_matches_the_paper_on_a_fixed_excess_loss_sequence() -> None:
    """Per-task sums of clipped excess loss and token counts -> lambda = mean excess per task; a task without
    tokens in a step keeps its last lambda; the result is the mean of alpha_1..alpha_T."""
    eta, eps, k = 0.7, 1e-3, 3
    sums = [[0.6, 0.0, 3.0], [1.2, 0.5, 0.0], [0.0, 2.0, 4.0], [0.9, 0.1, 1.0]]
    counts = [[2, 4, 10], [3, 5, 0], [1, 4, 8], [3, 1, 2]]
    dro = GroupDRO(k, eta=eta, eps=eps)
    alpha, last, history = np.full(k, 1 / k), np.zeros(k), []
    for s, c in zip(sums, counts):
        s, c = np.array(s), np.array(c, dtype=float)
        last = np.where(c > 0, s / np.maximum(c, 1), last)
        alpha = paper_update(alpha, last, eta, eps)
        history.append(alpha)
        got = dro.update(torch.tensor(s), torch.tensor(c))
        np.testing.assert_allclose(got.numpy(), alpha, rtol=1e-12)
    np.testing.assert_allclose(dro.averaged().numpy(), np.mean(history, axis=0), rtol=1e-12)
    assert dro.updates == 4 and abs(float(dro.averaged().sum()) - 1) < 1e-12
    # the state round-trips (what the checkpoint carries for an exact resume)
    again = GroupDRO(k, eta=eta, eps=eps)
    again.load_state_dict(dro.state_dict())
    np.testing.assert_array_equal(again.update(torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 0, 0])).numpy(),
                                  dro.update(torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 0, 0])).numpy())


def _tiny_checkpoint(path: Path, seed: int) -> tuple[dict, torch.nn.Module]:
    from lightning_t5.model.t5 import T5
    from lightning_t5.model.config import T5Config

    torch.manual_seed(seed)
    config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, dropout_rate=0.0,
                      fused="none").to_dict()
    model = T5.from_state_dict(config, T5(T5Config.from_dict(config)).state_dict())
    torch.save({"hyper_parameters": {"model_config": config, "vocab_fingerprint": None},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return config, model


def test_proxy_loss_is_the_alpha_weighted_sum_of_per_task_means(tmp_path: Path) -> None:
    """One training step of the proxy module by hand: excess per task from the two models' token losses, alpha
    updated with it, the loss = sum_i alpha_i * mean proxy loss over task-i tokens (paper, eq. 1)."""
    from lightning_t5.train.doremi import DoReMiLightningModule

    config, reference = _tiny_checkpoint(tmp_path / "ref.ckpt", seed=0)
    module = DoReMiLightningModule(model_config=config, optim={"name": "adamw", "lr": 1e-3},
                                   task_names=["a", "b", "c"], total_steps=10,
                                   doremi={"reference": str(tmp_path / "ref.ckpt"), "eta": 0.5, "eps": 0.01})
    module.model.eval()  # no dropout, so a plain forward reproduces the step's losses
    g = torch.Generator().manual_seed(1)
    batch = {"encoder_input_tokens": torch.randint(2, 64, (2, 6), generator=g),
             "decoder_target_tokens": torch.randint(2, 64, (2, 5), generator=g)}
    batch["decoder_input_tokens"] = torch.cat([torch.zeros(2, 1, dtype=torch.long),
                                               batch["decoder_target_tokens"][:, :-1]], 1)
    batch["decoder_loss_weights"] = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    batch["decoder_task_ids"] = torch.tensor([[0, 0, 2, -1, -1], [1, 1, 1, 2, 2]])
    loss = module.training_step(batch, 0)

    ids, w = batch["decoder_task_ids"], batch["decoder_loss_weights"]
    with torch.no_grad():
        proxy = module.model(**batch, return_loss=True).per_token
        ref = reference(**batch, return_loss=True).per_token
    excess = (proxy - ref).clamp(min=0)
    lam = np.array([float(excess[(ids == i) & (w > 0)].mean()) for i in range(3)])
    alpha = paper_update(np.full(3, 1 / 3), lam, 0.5, 0.01)
    np.testing.assert_allclose(module.dro.alpha.numpy(), alpha, rtol=1e-6)
    means = np.array([float(proxy[(ids == i) & (w > 0)].mean()) for i in range(3)])
    assert float(loss.detach()) == pytest.approx(float((alpha * means).sum()), rel=1e-5)
    loss.backward()  # the loss carries the proxy's gradient (the reference is frozen and outside the module)
    assert all(p.grad is not None for p in module.model.parameters() if p.requires_grad)
    assert not any(k.startswith("_reference") or "reference" in k for k in module.state_dict())


def doremi_cfg(tmp_path: Path, **opts) -> OmegaConf:
    cfg = make_cfg(tmp_path, kind="doremi", doremi={"eta": 0.5, "proxy_steps": 5, **opts.pop("doremi", {})}, **opts)
    cfg.experiment = "dr"
    cfg.experiment_options.mixing = {"rate": "proportional"}
    return cfg


class DoReMiFakeFit(FakeFit):
    """FakeFit that, for a proxy run (doremi.reference set), writes the weights a DoReMi proxy would."""

    weights = {"glue_sst2": 0.2, "super_glue_cb": 0.3, "corpus_x": 0.5}

    def __call__(self, cfg):
        result = super().__call__(cfg)
        self.calls[-1]["doremi"] = OmegaConf.to_container(cfg.doremi) if "doremi" in cfg else None
        if self.calls[-1]["doremi"] and self.calls[-1]["doremi"].get("reference"):
            write_weights(cfg.run_dir, self.weights, name="doremi", source="fake proxy")
        return result


def test_doremi_plan_stages_and_rows(tmp_path: Path) -> None:
    plan = make_plan(doremi_cfg(tmp_path))
    assert [s.name for s in plan.stages] == ["doremi_reference", "doremi_proxy", "doremi_main"]
    ref, proxy, main = plan.stages
    assert ref.steps == 12 and proxy.steps == 5 and main.steps == 12  # N + M = 8 + 4; proxy_steps = 5
    assert proxy.checkpoint_inputs == {"doremi.reference": "doremi_reference"}
    assert proxy.overrides == {"doremi": {"eta": 0.5, "eps": 1e-4}} and proxy.mixing == ref.mixing
    assert main.weights_from == "doremi_proxy" and main.dependencies() == ("doremi_proxy",)
    rows = {r.key: r for r in plan.rows}
    # the reference, at the main model's size and budget, is the reference-weights row; DoReMi's row counts all three
    assert rows["reference"].stages == ("doremi_reference",)
    assert rows["doremi"].stages == ("doremi_reference", "doremi_proxy", "doremi_main")
    small = make_plan(doremi_cfg(tmp_path, doremi={"proxy_model": "tiny"}))
    assert [s.name for s in small.stages] == ["doremi_reference", "doremi_proxy", "doremi_main", "doremi_baseline"]
    assert small.stage("doremi_proxy").overrides["model"]["name"] == "tiny"
    with pytest.raises(Exception, match=r"experiment_options.doremi.etta \(did you mean eta\?\)"):
        make_plan(doremi_cfg(tmp_path, doremi={"etta": 1.0}))


def test_doremi_experiment_runs_reference_proxy_main_and_reuses_them(tmp_path: Path) -> None:
    cfg = doremi_cfg(tmp_path)
    fit = DoReMiFakeFit()
    table = run_experiment(cfg, fit_fn=fit)
    calls = {c["stage"]: c for c in fit.calls}
    out = tmp_path / "runs" / "dr"
    assert [c["stage"] for c in fit.calls] == ["doremi_reference", "doremi_proxy", "doremi_main"]
    assert calls["doremi_proxy"]["doremi"]["reference"] == str(out / "stages/doremi_reference/checkpoints/last.ckpt")
    assert calls["doremi_proxy"]["doremi"]["eta"] == 0.5 and calls["doremi_proxy"]["init_from"] is None
    main_mixing = calls["doremi_main"]["mixing"]
    assert main_mixing["rate"] == "explicit"
    assert main_mixing["weights"] == pytest.approx(read_weights(out / "stages/doremi_proxy"))
    assert json.loads((out / "stages/doremi_main/stage.json").read_text())["spec"]["mixing"]["weights"] == \
        pytest.approx({"glue_sst2": 0.2, "super_glue_cb": 0.3, "corpus_x": 0.5})
    rows = {r["key"]: r for r in table["rows"]}
    assert rows["doremi"]["compute"]["steps"] == 12 + 5 + 12  # the reference and proxy runs count in DoReMi's row
    assert rows["reference"]["compute"]["steps"] == 12
    assert table["stage_weights"]["doremi_main"] == pytest.approx(main_mixing["weights"])
    # a rerun trains nothing
    again = DoReMiFakeFit()
    run_experiment(cfg, fit_fn=again)
    assert again.calls == []
    # other weights in the proxy's file (say, the proxy was retrained elsewhere): the main stage refuses to be reused
    write_weights(out / "stages/doremi_proxy", {"glue_sst2": 0.6, "super_glue_cb": 0.2, "corpus_x": 0.2},
                  name="doremi", source="other")
    with pytest.raises(StageMismatchError, match="doremi_main.*changed: mixing"):
        run_experiment(cfg, fit_fn=DoReMiFakeFit())


def test_doremi_with_seeds_reads_each_seed_s_own_reference_and_weights(tmp_path: Path) -> None:
    cfg = doremi_cfg(tmp_path, seeds=[1, 2])
    plan = make_plan(cfg)
    assert plan.stage("doremi_proxy__seed2").checkpoint_inputs == {"doremi.reference": "doremi_reference__seed2"}
    assert plan.stage("doremi_main__seed2").weights_from == "doremi_proxy__seed2"
    fit = DoReMiFakeFit()
    table = run_experiment(cfg, fit_fn=fit)
    calls = {c["stage"]: c for c in fit.calls}
    assert calls["doremi_proxy__seed2"]["doremi"]["reference"].endswith("doremi_reference__seed2/checkpoints/last.ckpt")
    steps = {r["key"]: r["compute"]["steps"] for r in table["rows"]}
    assert steps == {"reference": 2 * 12, "doremi": 2 * (12 + 5 + 12)}


@pytest.mark.slow
def test_proxy_run_writes_its_weights_and_resumes_exactly(tmp_path: Path) -> None:
    """A real DoReMi proxy (tiny model, 6 steps) against a reference: weights.json and mixing/doremi.yaml hold the
    averaged alpha, and a run stopped after step 4 and resumed from its step-3 checkpoint gives the uninterrupted
    run's losses and weights (alpha, its average and the last lambda travel in the checkpoint)."""
    from test_resume import StopAt
    from test_train_helpers import compose_config, read_losses

    from lightning_t5.train.fit import fit

    ref = fit(compose_config(tmp_path, "eval.tasks=[]", run_name="ref"))
    proxy = [f"doremi.reference={ref['checkpoint']}", "doremi.eta=0.5", "eval.tasks=[]"]
    full = fit(compose_config(tmp_path, *proxy, run_name="full"))
    weights = read_weights(tmp_path / "full")
    assert set(weights) == {"glue_sst2", "glue_rte", "corpus_span_corruption"}
    assert json.loads((tmp_path / "full" / "weights.json").read_text())["updates"] == 6
    yaml = OmegaConf.load(tmp_path / "full" / "mixing" / "doremi.yaml")
    assert yaml.rate == "explicit" and dict(yaml.weights) == pytest.approx(weights)

    part = fit(compose_config(tmp_path, *proxy, run_name="part"), callbacks=[StopAt(4)])
    assert part["steps"] == 4
    resumed = fit(compose_config(tmp_path, *proxy, "resume=" + str(tmp_path / "part"), run_name="part"))
    assert resumed["steps"] == 6
    expected, got = read_losses(full["run_dir"]), read_losses(resumed["run_dir"])
    for step in range(1, 7):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-6), (step, got, expected)
    assert read_weights(tmp_path / "part") == pytest.approx(weights, rel=1e-9)


@pytest.mark.slow
def test_two_process_proxy_matches_one_process(tmp_path: Path) -> None:
    """DDP: the per-task excess sums and token counts are summed over the ranks before each update, so 2 processes
    with half the batch each hold the alpha of 1 process with the whole batch (losses and averaged weights agree)."""
    from test_ddp import _train
    from test_train_helpers import read_losses

    ref = _train(tmp_path, "ref", 1, ["data.batch_size=4", "eval.tasks=[]"])
    proxy = [f"doremi.reference={ref}", "doremi.eta=0.5", "eval.tasks=[]"]
    one = _train(tmp_path, "one", 1, ["data.batch_size=4", *proxy])
    two = _train(tmp_path, "two", 2, ["data.batch_size=2", "trainer.strategy=ddp", "trainer.devices=2", *proxy])
    a, b = read_losses(one), read_losses(two)
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=2e-5)
    wa, wb = read_weights(one), read_weights(two)
    assert wb == pytest.approx(wa, rel=1e-5)
    assert max(wa.values()) - min(wa.values()) > 1e-4  # the weights moved: the comparison is not of two uniforms


@pytest.mark.slow  # each stage is a fresh Python process under submitit's local executor
def test_doremi_stages_wait_for_what_they_read_under_submitit_local(tmp_path: Path) -> None:
    import sys

    import cloudpickle

    import test_experiments_runner

    for module in (sys.modules[__name__], test_experiments_runner):
        cloudpickle.register_pickle_by_value(module)  # the jobs unpickle the fake fit by value
    cfg = doremi_cfg(tmp_path, executor="submitit_local", cluster={"timeout_min": 5})
    table = run_experiment(cfg, fit_fn=DoReMiFakeFit())
    times = table["stage_times"]
    assert times["doremi_proxy"]["start"] >= times["doremi_reference"]["end"]  # reads the reference's checkpoint
    assert times["doremi_main"]["start"] >= times["doremi_proxy"]["end"]  # reads the proxy's weights.json
    out = tmp_path / "runs" / "dr"
    spec = json.loads((out / "stages/doremi_main/stage.json").read_text())["spec"]
    assert spec["mixing"]["weights"] == pytest.approx(read_weights(out / "stages/doremi_proxy"))
    assert all(r["status"] == "done" for r in table["rows"])
