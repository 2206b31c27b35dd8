"""Catalog mixtures on the real task catalog (shipped data), the CLI and the Hugging Face adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mixtures import Mixture, MixtureDataset, MixtureError, MixtureRegistry, catalog
from mixtures.__main__ import main

SEQ = {"inputs": 64, "targets": 16}


@pytest.fixture
def fresh_catalog():
    """Catalog mixtures registered anew (unresolved) for the test, and again after it."""
    catalog.register()
    yield
    catalog.register()


def test_registry_lists_t5_catalog_names():
    names = MixtureRegistry.names()
    for n in ["glue", "super_glue", "glue_local", "super_glue_local", "all_supervised", "all_equal",
              "all_proportional", "all_mix",
              "large_supervised_equal", "large_supervised_proportional", "default", "default_with_corpus",
              "leave_one_out_glue_sst2",
              "leave_one_out_super_glue_cb", "leave_one_out_squad"]:
        assert n in names, n
    assert not any(n.startswith("leave_one_out_corpus") for n in names)
    with pytest.raises(MixtureError, match="Did you mean: glue"):
        MixtureRegistry.get("glu")


def test_unknown_task_is_lazy_and_clear():
    mix = MixtureRegistry.add(Mixture("test_lazy_unknown", ["glue_sst2", "glue_sts_b"]), replace=True)
    try:
        with pytest.raises(MixtureError, match=r"unknown task 'glue_sts_b'.*glue_stsb"):
            mix.rates()
    finally:
        MixtureRegistry.remove("test_lazy_unknown")


def test_catalog_mixtures_keep_every_task_and_stop_naming_the_missing_ones(fresh_catalog, monkeypatch):
    """Issue 21 A.11: `glue` is the paper's 8 tasks everywhere. Where 3 have no data (offline, nothing shipped), any
    use stops naming them and both ways on; nothing is left out silently, whatever MIXTURES_INCLUDE_HUB_TASKS says."""
    monkeypatch.delenv("LIGHTNING_T5_SOURCE", raising=False)
    for include in (None, "1"):
        if include is not None:
            monkeypatch.setenv("MIXTURES_INCLUDE_HUB_TASKS", include)
        with pytest.raises(MixtureError) as err:
            MixtureRegistry.get("glue").task_names
        msg = str(err.value)
        assert "mixture 'glue' has 8 tasks and 3 of them have no data on this machine" in msg
        assert all(t in msg for t in ("glue_mnli", "glue_qqp", "glue_qnli")) and "glue_sst2 " not in msg
        assert "LIGHTNING_T5_SOURCE=hub" in msg and "mixture=glue_local" in msg
    # a user mixture that contains the catalog's glue stops the same way
    MixtureRegistry.add(Mixture("test_with_glue", [(MixtureRegistry.get("glue"), 1.0), "glue_rte"]), replace=True)
    try:
        with pytest.raises(MixtureError, match="mixture 'glue' has 8 tasks"):
            MixtureRegistry.get("test_with_glue").tasks
    finally:
        MixtureRegistry.remove("test_with_glue")
    # described anyway (python -m mixtures show): all 8, the missing ones named
    with catalog.describing():
        glue = MixtureRegistry.get("glue")
        assert glue.task_names == list(catalog.GLUE_SIZES)
        assert set(catalog.missing_data(glue)) == {"glue_mnli", "glue_qqp", "glue_qnli"}
    # the hub chosen: all 8, nothing missing (the hub itself is only read when the data is)
    monkeypatch.setenv("LIGHTNING_T5_SOURCE", "hub")
    assert MixtureRegistry.get("glue").task_names == list(catalog.GLUE_SIZES)
    assert catalog.missing_data(MixtureRegistry.get("glue")) == {}


def test_shipped_subset_mixtures_read_only_shipped_data(fresh_catalog, monkeypatch):
    monkeypatch.delenv("LIGHTNING_T5_SOURCE", raising=False)
    for name, names in (("glue_local", catalog.GLUE_LOCAL), ("super_glue_local", catalog.SUPER_GLUE_LOCAL)):
        mix = MixtureRegistry.get(name)
        assert mix.task_names == names and not any(t.source.reads_hub for t in mix.tasks)
        official = {n: catalog.OFFICIAL_SIZES[n] for n in names}  # rated as in glue / super_glue
        assert mix.rates() == pytest.approx({n: v / sum(official.values()) for n, v in official.items()}, abs=1e-12)


def test_a_run_on_a_catalog_mixture_without_its_data_stops_before_the_model(fresh_catalog, tmp_path, monkeypatch):
    from test_train_helpers import compose_config

    from lightning_t5.train.setup import RunSetup, prepare_config

    monkeypatch.delenv("LIGHTNING_T5_SOURCE", raising=False)
    with pytest.raises(MixtureError, match=r"glue_mnli.*LIGHTNING_T5_SOURCE=hub.*mixture=glue_local"):
        RunSetup(prepare_config(compose_config(tmp_path, "mixture=glue")))
    assert RunSetup(prepare_config(compose_config(tmp_path, "mixture=glue_local"))).task_names == catalog.GLUE_LOCAL


@pytest.mark.parametrize("name", ["strategies_small", "mixing_sweep_small", "strategies_tiny", "mixing_sweep_tiny"])
def test_cpu_presets_name_only_tasks_with_shipped_data(name, monkeypatch):
    """The CPU presets run offline: their tasks are named explicitly and every one reads data/ (glue_local's tasks)."""
    from test_experiment_presets_small import compose

    from lightning_t5.experiments.plan import make_plan
    from tasks import TaskRegistry

    monkeypatch.delenv("LIGHTNING_T5_SOURCE", raising=False)
    plan = make_plan(compose(name))
    assert not [t for t in [*plan.tasks, plan.corpus_task] if TaskRegistry.get(t).source.reads_hub]
    if name.endswith("_small"):
        assert list(plan.tasks) == catalog.GLUE_LOCAL


def test_glue_rates_use_official_sizes_unless_actual(fresh_catalog):
    with catalog.describing():
        glue = MixtureRegistry.get("glue")
        assert glue.task_names == list(catalog.GLUE_SIZES)
        r = glue.rates()
        with pytest.raises(MixtureError, match="rating them needs their rows"):
            glue.rates(mixing={"size_source": "actual"})
    total = sum(catalog.GLUE_SIZES.values())
    assert r == pytest.approx({n: s / total for n, s in catalog.GLUE_SIZES.items()}, abs=1e-12)
    local = MixtureRegistry.get("glue_local")
    actual = local.rates(mixing={"size_source": "actual"})
    sizes = {t.name: t.num_examples("train") for t in local.tasks}
    assert actual == pytest.approx({n: v / sum(sizes.values()) for n, v in sizes.items()}, abs=1e-12)


@pytest.fixture
def shipped_supervised(monkeypatch):
    """The all_* and leave-one-out mixtures over the supervised tasks that ship data (their rate rules, offline)."""
    from tasks import TaskRegistry

    shipped = [n for n in catalog.SUPERVISED if not TaskRegistry.get(n).source.reads_hub]
    monkeypatch.setattr(catalog, "_all_supervised_names", lambda: list(shipped))
    catalog.register()
    yield shipped
    monkeypatch.undo()
    catalog.register()


def test_all_proportional_halves_glue_rte_and_all_mix_fixes_corpus_rate(shipped_supervised):
    ap = MixtureRegistry.get("all_proportional")
    raw = ap.raw_rates(mixing={"max_examples": 2**19})
    assert raw["glue_rte"] == pytest.approx(0.5 * catalog.GLUE_SIZES["glue_rte"])
    assert raw["super_glue_rte"] == pytest.approx(catalog.SUPER_GLUE_SIZES["super_glue_rte"])
    corpus = raw[catalog.CORPUS]
    assert corpus == MixtureRegistry.get("all_proportional").tasks[-1].num_examples("train")
    mix_raw = MixtureRegistry.get("all_mix").raw_rates()
    assert mix_raw[catalog.CORPUS] == catalog.T5_UNSUPERVISED_RATE
    assert MixtureRegistry.get("all_equal").rates()["glue_sst2"] == pytest.approx(
        1 / len(MixtureRegistry.get("all_equal").task_names))
    loo = MixtureRegistry.get("leave_one_out_glue_sst2").task_names
    assert "glue_sst2" not in loo and "glue_cola" in loo and catalog.CORPUS in loo
    assert not any(n.startswith("glue_") for n in MixtureRegistry.get("leave_one_out_glue").task_names)


def test_default_mixture_is_the_supervised_subset_examples_proportional():
    mix = MixtureRegistry.get("default")
    mix.validate()
    assert mix.task_names == catalog.DEFAULT_TASKS  # no corpus: see the comment in mixtures/catalog.py
    sizes = {t.name: min(t.num_examples("train"), 4096) for t in mix.tasks}
    assert mix.rates() == pytest.approx({k: v / sum(sizes.values()) for k, v in sizes.items()}, abs=1e-12)


def test_default_with_corpus_mixture_formula_and_validation():
    mix = MixtureRegistry.get("default_with_corpus")
    mix.validate()
    assert set(mix.task_names) == set(catalog.DEFAULT_TASKS + [catalog.CORPUS])
    r = mix.rates()
    raw = {t.name: (4096.0 if not t.supervised else min(t.num_examples("train"), 4096)) for t in mix.tasks}
    total = sum(raw.values())
    assert r == pytest.approx({k: v / total for k, v in raw.items()}, abs=1e-12)
    t2 = mix.rates(mixing={"rate": "temperature", "temperature": 3.0})
    raw3 = {k: (v if k == catalog.CORPUS else v ** (1 / 3)) for k, v in raw.items()}
    assert t2 == pytest.approx({k: v / sum(raw3.values()) for k, v in raw3.items()}, abs=1e-12)


@pytest.mark.parametrize("pack", [False, True])
def test_default_mixture_real_batches(pack):
    ds = MixtureDataset("default", sequence_length=SEQ, batch_size=8, pack=pack, num_batches=6, seed=1)
    batches = list(ds)
    assert len(batches) == 6
    b = batches[0]
    assert b["encoder_input_tokens"].shape == (8, 64) and b["decoder_target_tokens"].dtype == torch.int64
    ids = torch.cat([x["decoder_task_ids"][x["decoder_task_ids"] >= 0] for x in batches]).unique().tolist()
    assert len(ids) >= 3
    # every segment's target ends with EOS unless it was truncated to the target length
    vocab = ds.mixture.tasks[0].vocabulary
    for x in batches:
        seg, tgt = x["decoder_segment_ids"].numpy(), x["decoder_target_tokens"].numpy()
        for r in range(seg.shape[0]):
            for s in np.unique(seg[r][seg[r] > 0]):
                toks = tgt[r][seg[r] == s]
                assert toks[-1] == vocab.eos_id or len(toks) == SEQ["targets"] or seg[r][-1] == s


def test_cli_show_json_and_table(capsys):
    assert main(["show", "default_with_corpus", "--json", "-n", "20000", "mixing.max_examples=2048"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == set(catalog.DEFAULT_TASKS + [catalog.CORPUS])
    assert sum(v["share"] for v in out.values()) == pytest.approx(1.0)
    assert all(abs(v["drawn"] - v["share"]) < 0.02 for v in out.values())
    assert out["glue_cola"]["rate"] == 2048
    assert main(["show", "glue", "-n", "0"]) == 0
    text = capsys.readouterr().out
    assert "glue_sst2" in text and "67349" in text
    assert main(["show", "default", "mixing.temperature=-1"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert main(["list"]) == 0
    assert "all_mix" in capsys.readouterr().out
    # the overrides are train.py's (tasks.run_defaults): nested keys and null reach the mixing config
    from tasks.run_defaults import load_run_config

    cfg = load_run_config(["mixing.schedule.to.rate=equal", "mixing.max_examples=null"])
    assert cfg.mixing.schedule.to.rate == "equal" and cfg.mixing.max_examples is None


def test_cli_shows_a_catalog_mixture_offline_by_official_sizes(fresh_catalog, capsys, monkeypatch):
    """`python -m mixtures show glue` offline: all 8 tasks at their official sizes (no draws or passes without the
    data), the missing ones named with both ways to train on them."""
    monkeypatch.delenv("LIGHTNING_T5_SOURCE", raising=False)
    assert main(["show", "glue"]) == 0  # default -n and --steps: skipped, they need every task's data
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("glue_")}
    assert list(rows) == list(catalog.GLUE_SIZES)
    assert rows["glue_mnli"][1] == "-" and rows["glue_mnli"][2] == "392702" and rows["glue_sst2"][2] == "67349"
    assert "LIGHTNING_T5_SOURCE=hub" in text and "mixture=glue_local" in text and "drawn" not in text
    assert main(["show", "glue", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.split("\nsize '-'")[0])
    assert out["glue_qqp"]["size"] is None and out["glue_rte"]["size"] == 2490
    assert sum(v["share"] for v in out.values()) == pytest.approx(1.0)


def _collate(rows):  # what transformers' default_data_collator does with equal-length rows
    return {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) for k in rows[0]}


def test_hf_iterable_dataset_names_and_collation():
    ds = MixtureDataset("default", sequence_length=SEQ, batch_size=4, pack=False, num_batches=2, seed=0)
    hf = ds.as_hf_iterable_dataset()
    rows = list(hf)
    assert len(rows) == 8
    batch = _collate(rows[:4])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "decoder_input_ids", "decoder_attention_mask"}
    ref = next(iter(MixtureDataset("default", sequence_length=SEQ, batch_size=4, pack=False, seed=0)))
    assert torch.equal(batch["input_ids"], ref["encoder_input_tokens"])
    assert torch.equal(batch["labels"] == -100, ref["decoder_loss_weights"] == 0)
    with pytest.raises(MixtureError, match="pack=False"):
        MixtureDataset("default", sequence_length=SEQ, batch_size=4, pack=True).as_hf_iterable_dataset()
    packed = MixtureDataset("default", sequence_length=SEQ, batch_size=4, pack=True, num_batches=1)
    assert "encoder_segment_ids" in next(iter(packed.as_hf_iterable_dataset(names="t5")))


@pytest.mark.slow
def test_transformers_trainer_trains_on_a_mixture(tmp_path):
    """A transformers user can train on our mixture: Trainer when accelerate is installed, else a plain loop."""
    import importlib.util

    from transformers import T5Config, T5ForConditionalGeneration

    ds = MixtureDataset("default", sequence_length=SEQ, batch_size=4, pack=False, seed=0)
    vocab = ds.mixture.tasks[0].vocabulary
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=vocab.vocab_size, d_model=32, d_kv=8, d_ff=64,
                                                num_layers=1, num_heads=2, decoder_start_token_id=0, pad_token_id=0))
    hf = ds.as_hf_iterable_dataset()
    if importlib.util.find_spec("accelerate") is not None:
        from transformers import Trainer, TrainingArguments

        args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, report_to=[],
                                 logging_steps=1, save_strategy="no", use_cpu=True, dataloader_num_workers=0)
        out = Trainer(model=model, args=args, train_dataset=hf).train()
        assert out.global_step == 3 and np.isfinite(out.training_loss)
        return
    from transformers import default_data_collator

    loader = torch.utils.data.DataLoader(hf, batch_size=4, collate_fn=default_data_collator)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _, batch in zip(range(3), loader):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert len(losses) == 3 and all(np.isfinite(losses))
