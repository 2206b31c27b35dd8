"""Corpus-scale data path: offline sharded token caches, memory-mapped reading, streaming corpora in mixtures,
the repetition guard and resume safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixtures import Mixture, MixtureDataset, MixtureError
from mixtures.permutation import FeistelPermutation
from mixtures.testing import SyntheticTask
from tasks import TaskRegistry
from tasks import cache as token_cache
from tasks.errors import TaskError

REPO = Path(__file__).resolve().parents[1]
SEQ = {"inputs": 64, "targets": 16}


def _texts(n: int) -> list[str]:
    lines = (REPO / "data" / "english_corpus" / "validation.jsonl").read_text().splitlines()
    return [json.loads(lines[i % len(lines)])["text"] for i in range(n)]


def _write_shards(folder: Path, num_shards: int, rows: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = _texts(num_shards * rows)
    paths = []
    for s in range(num_shards):
        path = folder / f"part-{s:03d}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[s * rows:(s + 1) * rows]))
        paths.append(path)
    return paths


MODULE = """
import functools
from pathlib import Path
from tasks import Task, TaskRegistry, FileSource, preprocessors
from tasks.objectives.preprocessors import objective_preprocessors
from mixtures import Mixture, MixtureRegistry

files = sorted(Path({folder!r}).glob("part-*.jsonl"))
TaskRegistry.add(Task("stream_corpus", FileSource({{"train": files}}, format="json", streaming=True),
                      [functools.partial(preprocessors.lm_text, text_key="text")],
                      token_preprocessors=objective_preprocessors("span_corruption"), supervised=False),
                 replace=True)
MixtureRegistry.add(Mixture("stream_mix", [("glue_sst2", 1.0), ("stream_corpus", 1.0)]), replace=True)
"""


@pytest.fixture
def stream_module(tmp_path, monkeypatch, fresh_cache):
    """A user module registering a streaming FileSource corpus over 4 JSONL shards, and a mixture using it."""
    _write_shards(tmp_path / "corpus", 4, 60)
    name = f"stream_tasks_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(MODULE.format(folder=str(tmp_path / "corpus")))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for t in ("stream_corpus",):
        if t in TaskRegistry.names():
            TaskRegistry.remove(t)


def test_feistel_permutation_is_a_bijection_and_scalar_matches_vector():
    for n in (1, 2, 3, 7, 100, 4097):
        p = FeistelPermutation(n, key=12345)
        order = p(np.arange(n))
        assert sorted(order.tolist()) == list(range(n))
        assert [p.at(i) for i in range(min(n, 200))] == order[:200].tolist()
    a, b = FeistelPermutation(1000, 1)(np.arange(1000)), FeistelPermutation(1000, 2)(np.arange(1000))
    assert not np.array_equal(a, b) and not np.array_equal(a, np.arange(1000))
    big = FeistelPermutation(10**12, 7)
    assert big.at(10**12 - 1) < 10**12  # O(1) memory whatever n


def test_streaming_corpus_cached_by_the_command_then_mixed_and_trained(stream_module, tmp_path, capsys):
    from test_train_helpers import compose_config

    from tasks.__main__ import main

    # before the cache exists: training stops at once and gives the exact command
    __import__(stream_module)
    from lightning_t5.train.data import MixtureDataModule

    dm = MixtureDataModule("stream_mix", data={"sequence_length": SEQ, "batch_size": 4}, mixing={},
                           total_batches=5, imports=[stream_module])
    with pytest.raises(MixtureError) as err:
        dm.prepare_training_data()
    cmd = f"python -m tasks --imports {stream_module} cache stream_corpus --splits train --inputs-length 64"
    assert cmd in str(err.value)

    argv = ["--imports", stream_module, "cache", "stream_corpus", "--splits", "train", "--inputs-length", "64",
            "--targets-length", "16", "--num-proc", "2", "--shard-rows", "50"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "stream_corpus/train:" in out
    task = TaskRegistry.get("stream_corpus")
    cache = task.token_cache("train", SEQ)
    assert cache.dtype == np.uint16 and cache.stats["raw_rows"] == 240 and cache.stats["shards"] == 5
    offsets, tokens = cache.column("targets")
    assert isinstance(tokens, np.memmap) and offsets.dtype == np.int64 and offsets[-1] == len(tokens)
    assert sum(cache.stats["length_histogram"]["targets"]) == len(cache) == task.num_examples("train", SEQ)
    # the windows are the objective's raw length (span corruption into 64 inputs), the last of each group shorter
    lengths = np.diff(offsets)
    raw = task.token_preprocessors[0].window_length(SEQ)
    assert lengths.max() == raw and (lengths == raw).mean() > 0.9

    # mixed and trained on: a few steps through fit
    from lightning_t5.train.fit import fit

    cfg = compose_config(tmp_path, f"imports=[{stream_module}]", "mixture=stream_mix", "trainer.max_steps=3",
                         "eval.max_examples=4", run_name="stream")
    result = fit(cfg)
    assert result["steps"] == 3
    assert "planned passes" in capsys.readouterr().out


def _stream_task(stream_module):
    __import__(stream_module)
    return TaskRegistry.get("stream_corpus")


def test_killed_cache_job_resumes_at_the_first_unfinished_shard(stream_module, monkeypatch):
    task = _stream_task(stream_module)
    built: list[int] = []
    real = token_cache._build_shard

    def dies_at_shard_3(job):
        if job.shard == 3:
            # a kill in the middle of writing shard 3: its temporary folder is left behind
            (token_cache._shard_dir(token_cache._WORKER["root"], 3).with_name("0000003.tmp999")).mkdir()
            raise KeyboardInterrupt
        built.append(job.shard)
        return real(job)

    monkeypatch.setattr(token_cache, "_build_shard", dies_at_shard_3)
    with pytest.raises(KeyboardInterrupt):
        token_cache.build_cache(task, "train", SEQ, shard_rows=40)
    root = token_cache.cache_dir(task, "train", SEQ)
    assert token_cache.open_cache(task, "train", SEQ) is None and built == [0, 1, 2]

    def counting(job):
        built.append(job.shard)
        return real(job)

    monkeypatch.setattr(token_cache, "_build_shard", counting)
    built.clear()
    cache = token_cache.build_cache(task, "train", SEQ, shard_rows=40)
    assert built == [3, 4, 5]  # resumed at the first unfinished shard
    assert not (root / token_cache.BUILD).exists()
    resumed = {c: np.array(cache.column(c)[1]) for c in ("inputs", "targets")}
    offsets = np.array(cache.column("targets")[0])
    # identical to an uninterrupted build
    import shutil
    shutil.rmtree(root)
    fresh = token_cache.build_cache(task, "train", SEQ, shard_rows=40)
    assert np.array_equal(np.array(fresh.column("targets")[1]), resumed["targets"])
    assert np.array_equal(np.array(fresh.column("targets")[0]), offsets)


def test_max_tokens_budget_stops_at_a_shard_boundary(stream_module):
    task = _stream_task(stream_module)
    full = token_cache.build_cache(task, "train", SEQ, shard_rows=40)
    total = full.stats["total_tokens"]
    full_tokens = np.array(full.column("targets")[1])
    capped = token_cache.build_cache(task, "train", SEQ, shard_rows=40, max_tokens=total // 3, num_proc=2)
    assert total // 3 <= capped.stats["total_tokens"] < total and capped.stats["max_tokens"] == total // 3
    assert capped.stats["shards"] < full.stats["shards"]
    # the capped cache is a prefix of the full one: the same shards, in order
    assert np.array_equal(np.array(capped.column("targets")[1]), full_tokens[:capped.stats["tokens"]["targets"]])


def test_row_errors_name_task_split_row_and_field(fresh_cache):
    from tasks import InMemorySource, Task

    rows = [{"sentence": "fine", "label": 0}, {"sentence": None, "label": 1}]
    task = Task("bad_rows", InMemorySource({"train": rows}),
                [lambda r: {"inputs": r["sentence"], "targets": str(r["label"])}])
    with pytest.raises(TaskError, match=r"Task 'bad_rows', split 'train', row 1.*'inputs'"):
        token_cache.build_cache(task, "train", num_proc=2, shard_rows=1)


def _synthetic_cache_task(name: str, num_tokens: int, fresh_cache: Path):
    """A real tasks.Task whose train cache is a synthetic corpus of ``num_tokens`` tokens (raw windows of 142)."""
    from tasks import InMemorySource, Task
    from tasks.objectives.preprocessors import objective_preprocessors

    task = Task(name, InMemorySource({"train": [{"text": "x"}]}), [lambda r: {"inputs": "", "targets": r["text"]}],
                token_preprocessors=objective_preprocessors("span_corruption"), supervised=False)
    seq = {"inputs": 128, "targets": 32}
    window = task.token_preprocessors[0].window_length(seq)
    rows = num_tokens // window
    tokens = np.random.default_rng(0).integers(3, 8000, rows * window, dtype=np.uint16)
    offsets = np.arange(rows + 1, dtype=np.int64) * window
    fp = token_cache.cache_key(task, "train", seq)
    token_cache.write_flat(token_cache.cache_dir(task, "train", seq),
                           {"inputs": (np.zeros(rows + 1, np.int64), np.zeros(0, np.uint16)),
                            "targets": (offsets, tokens)}, np.dtype(np.uint16),
                           {"fingerprint": fp, "rows": rows, "dtype": "uint16", "total_tokens": int(offsets[-1])})
    return task, seq


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("no RssAnon")


def test_memory_flat_in_corpus_size(fresh_cache):
    """Anonymous memory of sampling a corpus does not grow with its size (memory maps, no O(N) arrays)."""
    import gc

    growth = {}
    for size in (1_000_000, 60_000_000):
        task, seq = _synthetic_cache_task(f"synthetic_{size}", size, fresh_cache)
        gc.collect()
        before = _rss_anon_kb()
        ds = MixtureDataset(Mixture(f"m{size}", [task]), sequence_length=seq, batch_size=8, pack=True, seed=1)
        it = iter(ds)
        for _ in range(30):
            next(it)
        growth[size] = _rss_anon_kb() - before
        del it, ds
    # 60M tokens copied into memory would be 240 MB (int32) and any O(N) int64 array 3.4 MB per 420k windows
    assert growth[60_000_000] - growth[1_000_000] < 8 * 1024, growth


def test_planned_lengths_of_span_corruption_are_exact(fresh_cache):
    task, seq = _synthetic_cache_task("synthetic_exact", 200_000, fresh_cache)
    ds = MixtureDataset(Mixture("mexact", [task]), sequence_length=seq, batch_size=4, pack=True, seed=3)
    src = ds._sources[0]
    rows, ek = src.rows(ds.seed, 0, np.arange(50))
    xs, ys = src.fetch(rows, ek, ds.seed, seq)
    for r, x, y in zip(rows, xs, ys):
        assert src.lengths(int(r)) == (len(x), len(y))


def test_repetition_guard_names_task_size_steps_and_fix():
    mix = Mixture("guard_mix", [SyntheticTask("tiny_task", 50), SyntheticTask("big_task", 5000)])
    ds = MixtureDataset(mix, sequence_length={"inputs": 32, "targets": 12}, batch_size=8, pack=False,
                        mixing={"rate": "equal"})
    passes = ds.check_passes(10, max_passes=100)
    assert passes["tiny_task"]["passes"] == pytest.approx(10 * 4 / 50, rel=0.5)
    with pytest.raises(MixtureError) as err:
        ds.check_passes(10_000, max_passes=100)  # tiny: ~800 passes, big: ~8
    msg = str(err.value)
    assert "'tiny_task' has 50 examples" in msg and "10,000 planned steps" in msg and "max_passes" in msg
    assert "big_task" not in msg.split("Fix")[0]
    assert ds.check_passes(10_000, max_passes=None)["tiny_task"]["passes"] > 100


def test_paper_scale_presets_refuse_the_shipped_corpus(tmp_path):
    """experiment=strategies / mixing_sweep: the pre-training stage's plan check stops before training."""
    from omegaconf import OmegaConf

    from lightning_t5.train.data import MixtureDataModule
    from lightning_t5.experiments.plan import make_plan
    from lightning_t5.experiments.runner import register_mixtures

    for name in ("strategies", "mixing_sweep"):
        raw = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "experiment" / f"{name}.yaml"))
        raw.pop("defaults", None)
        plan = make_plan(raw)
        register_mixtures(plan)
        opts = raw["experiment_options"]
        stage = next(s for s in plan.stages if opts["corpus_task"] in s.tasks)
        over = opts["overrides"]["data"]
        # the stage's data and steps with its corpus task alone (cheap: no tokenizing of the supervised tasks;
        # the corpus share of a multi-task stage only lowers its passes by a constant factor)
        dm = MixtureDataModule(Mixture(f"{name}_corpus", [opts["corpus_task"]]),
                               data={**over, "batch_size": 128}, mixing={"max_passes": 100}, total_batches=stage.steps)
        with pytest.raises(MixtureError) as err:
            dm.prepare_training_data()
        msg = str(err.value)
        assert opts["corpus_task"] in msg and f"{stage.steps:,} planned steps" in msg
        assert "python -m tasks cache" in msg and "LIGHTNING_T5_SOURCE=hub" in msg


def test_resume_refuses_different_data_or_rates():
    seq = {"inputs": 32, "targets": 12}
    a = Mixture("fp_a", [SyntheticTask("t1", 40), SyntheticTask("t2", 60)])
    ds = MixtureDataset(a, sequence_length=seq, batch_size=4, seed=1)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    assert set(state["fingerprints"]) == {"t1", "t2"} and set(state["rates"]) == {"t1", "t2"}
    MixtureDataset(a, sequence_length=seq, batch_size=4, seed=1).load_state_dict(state)  # same data: fine
    changed = Mixture("fp_b", [SyntheticTask("t1", 40, seed=9), SyntheticTask("t2", 60)])
    with pytest.raises(MixtureError, match=r"data of task\(s\) \['t1'\] changed"):
        MixtureDataset(changed, sequence_length=seq, batch_size=4, seed=1).load_state_dict(state)
    with pytest.raises(MixtureError, match="mixing rates changed"):
        MixtureDataset(a, sequence_length=seq, batch_size=4, seed=1, mixing={"rate": "equal"}).load_state_dict(state)


def test_cache_command_cli_rebuilds_nothing_when_complete(fresh_cache, capsys):
    from tasks.__main__ import main

    assert main(["cache", "glue_rte", "--splits", "train", "validation", "--num-proc", "2", "--shard-rows", "500"]) == 0
    first = capsys.readouterr().out
    assert "glue_rte/train" in first and "glue_rte/validation" in first
    stats = token_cache.open_cache(TaskRegistry.get("glue_rte"), "train").stats
    task = TaskRegistry.get("glue_rte")
    assert stats["rows"] == len(task.tokenized("train"))
    cache = task.token_cache("train")
    ds = task.tokenized("train")
    for i in (0, 7, stats["rows"] - 1):
        assert cache.get("inputs", i).tolist() == ds[i]["inputs"].tolist()
    mtime = (cache.path / token_cache.COMPLETE).stat().st_mtime_ns
    assert main(["cache", "glue_rte"]) == 0
    assert (cache.path / token_cache.COMPLETE).stat().st_mtime_ns == mtime


@pytest.mark.parametrize("pack", [False, True])
def test_pooled_workers_plan_once_and_resume_exactly(pack, monkeypatch):
    """num_workers processes of the dataset's pool materialize; plans are made once, in this process."""
    import os

    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader

    mix = Mixture("pool_mix", [SyntheticTask("p1", 30), SyntheticTask("p2", 70),
                               SyntheticTask("pc", 40, supervised=False, targets_length=(4, 30))])
    kw = {"sequence_length": {"inputs": 32, "targets": 12}, "batch_size": 3, "pack": pack, "seed": 5, "num_batches": 10}
    reference = list(MixtureDataset(mix, **kw))
    planners: list[int] = []
    real = MixtureDataset._plans

    def spying(self, cur):
        planners.append(os.getpid())
        return real(self, cur)

    monkeypatch.setattr(MixtureDataset, "_plans", spying)
    loader = StatefulDataLoader(MixtureDataset(mix, num_workers=2, **kw), batch_size=None, num_workers=0)
    it = iter(loader)
    first = [next(it) for _ in range(4)]
    state = loader.state_dict()
    del it
    resumed = StatefulDataLoader(MixtureDataset(mix, num_workers=2, **kw), batch_size=None, num_workers=0)
    resumed.load_state_dict(state)
    got = first + list(resumed)
    assert len(got) == len(reference) == 10
    for x, y in zip(got, reference):
        for k in x:
            assert torch.equal(x[k], y[k]), k
    assert set(planners) == {os.getpid()} and len(planners) == 2  # one plan per iteration, in this process


def test_mixtures_show_reports_passes(capsys):
    from mixtures import MixtureRegistry
    from mixtures.__main__ import main

    MixtureRegistry.add(Mixture("show_passes_mix", [SyntheticTask("s_small", 40), SyntheticTask("s_large", 4000)]),
                        replace=True)
    try:
        assert main(["show", "show_passes_mix", "mixing.rate=equal", "-n", "0", "--steps", "1000", "--batch-size", "8",
                     "--inputs-length", "32", "--targets-length", "12", "--json"]) == 0
        table = json.loads(capsys.readouterr().out)
        # equal rates: half of the packed examples (several per row of 8) come from each task
        assert table["s_small"]["passes"] == pytest.approx(100 * table["s_large"]["passes"], rel=0.01)
        assert 8 * 1000 / 2 / 40 <= table["s_small"]["passes"] < 1000
        assert main(["show", "show_passes_mix", "-n", "0", "--steps", "1000", "--batch-size", "8"]) == 0
        assert "passes" in capsys.readouterr().out
    finally:
        MixtureRegistry.remove("show_passes_mix")
