"""The objectives as Task token preprocessors and the corpus_* catalog tasks (on the shipped corpus)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from tasks import TaskError, TaskRegistry
from tasks.catalog import corpus
from tasks.objectives import random_spans_helper
from tasks.objectives.preprocessors import OBJECTIVES, ChunkCorpus, Denoise, SpanCorruption, objective_preprocessors

SEQ = {"inputs": 128, "targets": 32}
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "objective"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LIGHTNING_T5_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_catalog_registers_every_objective():
    for name in corpus.CORPUS_TASKS:
        task = TaskRegistry.get(name)
        assert task.supervised is False and task.benchmark is None
        assert [tp.cacheable for tp in task.token_preprocessors] == [True, False]
    assert set(corpus.CORPUS_TASKS.values()) == set(OBJECTIVES)


def test_span_corruption_windows_and_examples_have_t5_lengths():
    task = TaskRegistry.get("corpus_span_corruption")
    raw, targets_length = random_spans_helper(SEQ["inputs"])
    assert (raw, targets_length) == (141, 29)
    windows = task.tokenized("validation", SEQ)
    lengths = np.array([len(w) for w in windows["targets"]])
    assert (lengths == raw).mean() > 0.98 and lengths.max() == raw  # only each group's last window is shorter
    examples = list(task.get_dataset("validation", sequence_length=SEQ))
    assert len(examples) == len(windows) == task.num_examples("validation", SEQ)
    full = [e for e in examples if len(e["inputs"]) == SEQ["inputs"]]
    assert len(full) == (lengths == raw).sum()
    assert all(len(e["targets"]) == targets_length for e in full)
    vocab = task.vocabulary
    for e, w in zip(examples[:20], windows["targets"][:20]):
        assert e["inputs"][-1] == vocab.eos_id and e["targets"][-1] == vocab.eos_id
        assert e["inputs"][-2] == vocab.sentinel_id(int((e["inputs"] >= vocab.vocab_size - vocab.extra_ids).sum()) - 1)
        # the corrupted inputs keep the window's tokens that are not in the targets, in order
        ordinary = e["inputs"][e["inputs"] < vocab.vocab_size - vocab.extra_ids][:-1]
        assert np.isin(ordinary, w).all()


@pytest.mark.parametrize("name", sorted(corpus.CORPUS_TASKS))
def test_every_corpus_task_fits_the_sequence_length(name):
    task = TaskRegistry.get(name)
    examples = list(task.get_dataset("validation", sequence_length=SEQ, shuffle=True, seed=3))
    assert examples
    assert max(len(e["inputs"]) for e in examples) <= SEQ["inputs"]
    assert max(len(e["targets"]) for e in examples) <= SEQ["targets"]


def test_get_dataset_is_deterministic_and_seed_dependent():
    task = TaskRegistry.get("corpus_span_corruption")
    a = list(task.get_dataset("validation", sequence_length=SEQ, seed=1))
    b = list(task.get_dataset("validation", sequence_length=SEQ, seed=1))
    c = list(task.get_dataset("validation", sequence_length=SEQ, seed=2))
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
    assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


def test_finalize_is_independent_of_batching():
    task = TaskRegistry.get("corpus_bert_mlm")
    ds = task.tokenized("validation", SEQ)
    rows = {"inputs": list(ds["inputs"][:30]), "targets": list(ds["targets"][:30])}
    seeds = np.arange(30, dtype=np.uint64) * np.uint64(977)
    whole = task.finalize(rows, seeds, SEQ)
    for i in (0, 13, 29):
        one = task.finalize({k: v[i : i + 1] for k, v in rows.items()}, seeds[i : i + 1], SEQ)
        assert np.array_equal(one["inputs"][0], whole["inputs"][i])


def test_with_options_sweeps_density_and_span_length():
    base = TaskRegistry.get("corpus_span_corruption")
    task = base.with_options(noise_density=0.5, mean_noise_span_length=10.0)
    chunk, objective = task.token_preprocessors
    assert chunk.noise_density == objective.noise_density == 0.5
    assert objective.mean_noise_span_length == chunk.mean_noise_span_length == 10.0
    assert base.token_preprocessors[1].noise_density == 0.15  # the registered task is unchanged
    seq = {"inputs": 128, "targets": 128}
    raw, _ = random_spans_helper(128, 0.5, 10.0)
    assert chunk.window_length(seq) == raw
    examples = list(task.get_dataset("validation", sequence_length=seq))
    assert max(len(e["inputs"]) for e in examples) == 128 and max(len(e["targets"]) for e in examples) <= 128
    with pytest.raises(TaskError, match="noise_density"):
        base.with_options(noise_density=1.5)
    with pytest.raises(TaskError, match="with_options"):
        base.with_options(noise_densty=0.5)


def test_objective_configs_build_their_tasks():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        cfg = OmegaConf.to_container(OmegaConf.load(path))
        task = corpus.task_for_objective(cfg)
        objective = task.token_preprocessors[1]
        for key, value in corpus.objective_options(cfg).items():
            assert getattr(objective, key) == value, (path.name, key)
    swept = corpus.task_for_objective({"task": "corpus_replace_spans", "noise_density": 0.25})
    assert swept.token_preprocessors[1].noise_density == 0.25
    with pytest.raises(TaskError, match="unknown key"):
        corpus.objective_options({"task": "corpus_mass", "noise": 0.1})


def test_preprocessor_contract():
    chunk, objective = objective_preprocessors("span_corruption")
    assert isinstance(objective, SpanCorruption) and isinstance(chunk, ChunkCorpus)
    assert ChunkCorpus.cacheable and not Denoise.cacheable
    assert objective.fingerprint() != dataclasses.replace(objective, noise_density=0.3).fingerprint()
    assert chunk.fingerprint() != dataclasses.replace(chunk, mean_noise_span_length=2.0).fingerprint()
    with pytest.raises(dataclasses.FrozenInstanceError):
        objective.noise_density = 0.2  # type: ignore[misc]
    with pytest.raises(TaskError, match="prefix"):
        objective_preprocessors("prefix_lm", noise_density=0.8)
    with pytest.raises(TaskError, match="unknown objective"):
        objective_preprocessors("span_corrupt")
    with pytest.raises(TaskError, match="no option"):
        objective_preprocessors("deshuffle", mask_probability=0.5)


def test_chunking_keeps_every_token_and_picks_chunks_deterministically():
    from tasks.objectives.chunking import concat_and_split, select_random_chunk

    docs = [np.arange(n, dtype=np.int32) + 10 * n for n in (5, 0, 17, 3, 40)]
    windows = concat_and_split(docs, 8)
    assert np.array_equal(np.concatenate(windows), np.concatenate(docs))
    assert [len(w) for w in windows] == [8] * 8 + [1]
    grouped = concat_and_split(docs, 8, concat_documents=2)  # empty doc skipped; groups 5+17 and 3+40 tokens
    assert np.array_equal(np.concatenate(grouped), np.concatenate(docs))
    assert [len(w) for w in grouped] == [8, 8, 6, 8, 8, 8, 8, 8, 3]
    long = np.arange(1000, dtype=np.int32)
    chunk = select_random_chunk(long, 300)
    assert len(chunk) in (300, 100) and chunk[0] % 300 == 0
    assert np.array_equal(chunk, select_random_chunk(long.copy(), 300))


def test_paper_sweep_variants_are_registered():
    names = TaskRegistry.names()
    for name in ("corpus_replace_spans_nd0.1", "corpus_replace_spans_nd0.25", "corpus_replace_spans_nd0.5",
                 "corpus_span_corruption_msl2", "corpus_span_corruption_msl5", "corpus_span_corruption_msl10"):
        assert name in names
    task = TaskRegistry.get("corpus_span_corruption_msl10")
    assert task.token_preprocessors[1].mean_noise_span_length == 10.0 and task.supervised is False
    assert corpus.variant_name("corpus_span_corruption", noise_density=0.5, mean_noise_span_length=10.0) == \
        "corpus_span_corruption_msl10_nd0.5"
    again = corpus.register_variant("corpus_span_corruption", mean_noise_span_length=10.0)
    assert again is task
    raw, _ = random_spans_helper(512, 0.15, 10.0)
    assert task.token_preprocessors[0].window_length({"inputs": 512, "targets": 114}) == raw == 591


def test_too_many_spans_for_the_sentinels_fails_at_chunking_time():
    chunk, _ = objective_preprocessors("span_corruption", noise_density=0.5, mean_noise_span_length=2.0)
    vocab = TaskRegistry.get("corpus_span_corruption").vocabulary
    docs = {"inputs": [np.zeros(0, np.int32)], "targets": [np.arange(3, 3000, dtype=np.int32)]}
    with pytest.raises(TaskError, match="sentinel ids"):
        chunk(docs, sequence_length={"inputs": 512, "targets": 512}, vocabulary=vocab)
    assert chunk(docs, sequence_length={"inputs": 128, "targets": 128}, vocabulary=vocab)["targets"]
