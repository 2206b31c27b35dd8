"""Vocabulary conventions, vocabulary training and the `python -m tasks` CLI."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from tasks import InMemorySource, Task, TaskRegistry, get_default_vocabulary, preprocessors
from tasks.__main__ import main


def test_default_vocabulary_conventions():
    vocab = get_default_vocabulary()
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.extra_ids) == (0, 1, 2, 100)
    assert vocab.vocab_size == 8100 and vocab.base_vocab_size == 8000
    assert vocab.sentinel_id(0) == 8099 and vocab.sentinel_id(99) == 8000
    ids = vocab.encode("The cat sat on the mat.")
    assert vocab.encode_batch(["The cat sat on the mat.", "hi"])[0] == ids
    assert vocab.decode(ids + [1, 77, 78]) == "The cat sat on the mat."  # stops at EOS
    assert vocab.decode(np.array([0] + ids + [0], dtype=np.int32)) == "The cat sat on the mat."
    mixed = [vocab.sentinel_id(0)] + vocab.encode("cat sat") + [vocab.sentinel_id(1)]
    assert vocab.decode(mixed) == "<extra_id_0> cat sat<extra_id_1>"
    assert vocab.encode_with_sentinels("a <extra_id_0> b")[1] == 8099
    assert len(vocab.fingerprint) == 16
    clone = pickle.loads(pickle.dumps(vocab))
    assert clone.encode("hello") == vocab.encode("hello") and clone.fingerprint == vocab.fingerprint


def test_vocab_cli_trains_a_t5_convention_model(tmp_path, capsys):
    rows = [{"text": f"sentence {i} about the quick brown fox and lazy dogs number {i * 7}"} for i in range(300)]
    task = Task("tiny_vocab_corpus", InMemorySource({"train": rows}), [preprocessors.lm_text])
    TaskRegistry.add(task)
    try:
        out = tmp_path / "v" / "spiece.model"
        assert main(["vocab", "--tasks", "tiny_vocab_corpus", "--size", "120", "--out", str(out)]) == 0
    finally:
        TaskRegistry.remove("tiny_vocab_corpus")
    assert "120 pieces + 100 sentinels = 220 ids" in capsys.readouterr().out
    from tasks import SentencePieceVocabulary

    vocab = SentencePieceVocabulary(out)
    assert vocab.vocab_size == 220 and vocab.decode(vocab.encode("the quick fox")) == "the quick fox"


def test_cli_list_shows_every_task_with_cheap_sizes(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in TaskRegistry.names():
        assert name in out
    assert "train=5000 validation=436" in out  # glue_sst2, counted from the JSONL lines


def test_cli_show_json_schema(capsys):
    assert main(["show", "glue_sst2", "-n", "2", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    ex = json.loads(lines[0])
    assert set(ex) == {"raw", "inputs", "targets", "inputs_ids", "targets_ids"}
    assert ex["raw"] == {"sentence": "it 's a charming and often affecting journey . ", "label": 1, "idx": 0}
    assert ex["inputs"] == "sst2 sentence: it 's a charming and often affecting journey . "
    vocab = get_default_vocabulary()
    assert ex["targets_ids"] == vocab.encode("positive") + [1]
    assert ex["inputs_ids"][-1] == 1


@pytest.mark.parametrize("name", ["super_glue_copa", "squad", "cnn_dailymail", "wmt_ende"])
def test_cli_show_text(name, capsys):
    assert main(["show", name, "-n", "1", "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert f"=== {name} [train] example 0" in out and "inputs_ids:" in out


def test_cli_reports_task_errors(capsys):
    assert main(["show", "glue_sst"]) == 2
    assert "Unknown task 'glue_sst'" in capsys.readouterr().err
