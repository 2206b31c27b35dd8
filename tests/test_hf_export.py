"""An exported model is usable as-is: `AutoTokenizer` + `T5ForConditionalGeneration` from the export directory give
the project's token ids and its predictions (issue 24 item 4)."""

from __future__ import annotations

import json
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lightning_t5.dist.checkpoint import load_model  # noqa: E402
from lightning_t5.export import main as export_main  # noqa: E402
from tasks import TaskRegistry, get_default_vocabulary, train_vocabulary  # noqa: E402
from tasks.errors import TaskError  # noqa: E402
from tasks.vocabulary import HF_TOKENIZER_FILES, _read_model_proto  # noqa: E402
from test_hf_parity import loader_messages  # noqa: E402
from test_train_helpers import compose_config  # noqa: E402

EVAL_TASKS = ("glue_sst2", "glue_rte")  # the supervised tasks of the test mixture (tests/test_train_helpers.py)


@contextmanager
def no_loader_warnings():
    """Python warnings raise; nothing may be logged by transformers at warning level or above."""
    with loader_messages() as messages:
        yield
    assert messages == [], f"transformers logged while loading: {messages}"


def shipped_texts(task_names, split: str = "validation", limit: int = 400) -> list[str]:
    texts = []
    for name in task_names:
        for i, example in enumerate(TaskRegistry.get(name).text_examples(split)):
            if i == limit:
                break
            texts += [example["inputs"], example["targets"]]
    return texts


# ------------------------------------------------------------------------------------------- the tokenizer files
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    written = get_default_vocabulary().save_hf_tokenizer(out)
    assert [p.name for p in written] == list(HF_TOKENIZER_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(HF_TOKENIZER_FILES)  # no temp files left
    return out


@pytest.mark.parametrize("files", ["all", "without spiece.model", "without tokenizer.json"])
def test_auto_tokenizer_gives_the_vocabulary_ids(tokenizer_dir: Path, tmp_path: Path, files: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file set transformers may read from gives the same ids: tokenizer.json alone (loaded here with
    sentencepiece and protobuf made unimportable: transformers and tokenizers suffice) and spiece.model alone
    (transformers converts it, with sentencepiece and protobuf)."""
    vocab = get_default_vocabulary()
    directory = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, directory)
    if files != "all":
        (directory / files.split()[-1]).unlink()
    if files == "without spiece.model":
        for module in ("sentencepiece", "google.protobuf", "google"):
            monkeypatch.setitem(sys.modules, module, None)
    with no_loader_warnings():
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    assert len(tokenizer) == vocab.vocab_size == 8100
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert [tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in (0, 1, 99)] == \
        [vocab.sentinel_id(i) for i in (0, 1, 99)] == [8099, 8098, 8000]
    texts = shipped_texts(["glue_sst2", "glue_rte", "glue_cola", "super_glue_boolq", "cnn_dailymail"], limit=150)
    ours = vocab.encode_batch(texts)
    assert tokenizer(texts).input_ids == [ids + [vocab.eos_id] for ids in ours]
    sentinel_text = "Thank you <extra_id_0> to your party <extra_id_1> week."
    assert tokenizer(sentinel_text).input_ids == vocab.encode_with_sentinels(sentinel_text) + [vocab.eos_id]
    # decoding: the same text, except that SentencePiece renders an unknown piece as " ⁇ " where transformers drops it
    known = [ids for ids in ours if vocab.unk_id not in ids]
    assert len(known) > len(ours) // 2
    assert tokenizer.batch_decode(known, skip_special_tokens=True) == [vocab.decode(ids) for ids in known]


def test_tokenizer_json_matches_what_transformers_builds(tokenizer_dir: Path, tmp_path: Path) -> None:
    """The tokenizer.json we write without transformers is the one transformers writes itself after loading our
    spiece.model (same pieces, scores, added tokens, normalizer, pre-tokenizer, decoder and EOS template)."""
    only_spm = tmp_path / "spm"
    only_spm.mkdir()
    for name in ("spiece.model", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, only_spm / name)
    transformers.AutoTokenizer.from_pretrained(str(only_spm)).save_pretrained(str(tmp_path / "saved"))
    theirs = json.loads((tmp_path / "saved" / "tokenizer.json").read_text())
    ours = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    assert ours == theirs


def test_model_proto_reader_agrees_with_protobuf() -> None:
    """The small wire-format reader in tasks/vocabulary.py reads what SentencePiece's own protobuf classes read."""
    pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    data = get_default_vocabulary().path.read_bytes()
    proto = pb2.ModelProto()
    proto.ParseFromString(data)
    spec = _read_model_proto(data)
    assert spec["pieces"] == [(p.piece, p.score, p.type) for p in proto.pieces]
    assert spec["precompiled_charsmap"] == proto.normalizer_spec.precompiled_charsmap != b""
    assert (spec["add_dummy_prefix"], spec["remove_extra_whitespaces"], spec["escape_whitespaces"]) == \
        (proto.normalizer_spec.add_dummy_prefix, proto.normalizer_spec.remove_extra_whitespaces,
         proto.normalizer_spec.escape_whitespaces)
    assert spec["model_type"] == "unigram" and proto.trainer_spec.model_type == 1
    assert spec["byte_fallback"] is proto.trainer_spec.byte_fallback is False


def test_a_vocabulary_transformers_would_split_differently_is_refused(tmp_path: Path) -> None:
    """A BPE SentencePiece model would load as T5's Unigram tokenizer without complaint and give other ids: the
    writer refuses it, before writing anything."""
    vocab = train_vocabulary(shipped_texts(["glue_sst2"], split="train", limit=2000), tmp_path / "bpe.model",
                             size=300, model_type="bpe")
    with pytest.raises(TaskError, match=r"model_type='bpe' \(needs 'unigram'\)"):
        vocab.save_hf_tokenizer(tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# ------------------------------------------------------------------------------------------- a trained run's export
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A few training steps of the test mixture with `export_hf=` (the export written by training itself)."""
    from lightning_t5.train.fit import fit

    root = tmp_path_factory.mktemp("export_run")
    result = fit(compose_config(root, f"export_hf={root / 'hf'}", "eval.max_new_tokens=8"))
    return {**result, "hf": root / "hf"}


def test_training_export_generates_the_runs_predictions(run: dict) -> None:
    """transformers alone (AutoTokenizer + T5ForConditionalGeneration from the export) reproduces the run's own
    predictions on shipped validation inputs: the same input ids, the same generated ids as `T5.generate`, and the
    same texts as the run's predictions/<task>.jsonl."""
    vocab = get_default_vocabulary()
    with no_loader_warnings():
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(run["hf"]))
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(run["hf"])).eval()
    ours = load_model(run["checkpoint"]).eval()
    compared_texts = 0
    for task in EVAL_TASKS:
        rows = [json.loads(line) for line in (Path(run["run_dir"]) / "predictions" / f"{task}.jsonl").open()]
        assert len(rows) == 8
        batch = tokenizer([row["inputs"] for row in rows], max_length=64, truncation=True, padding=True,
                          return_tensors="pt")
        expected_inputs = [ids[:63] + [vocab.eos_id] for ids in vocab.encode_batch([r["inputs"] for r in rows])]
        assert [ids[:int(n)] for ids, n in zip(batch.input_ids.tolist(), batch.attention_mask.sum(1))] == \
            expected_inputs
        with torch.no_grad():
            generated = model.generate(**batch, max_new_tokens=8, do_sample=False, num_beams=1)[:, 1:]
            reference = ours.generate(batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=8)
        width = max(generated.shape[1], reference.shape[1])
        pad = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in (generated, reference)]
        assert torch.equal(*pad), task
        for row, ids in zip(rows, generated.tolist()):
            assert vocab.decode(ids) == row["generated"]
            if not any(i == vocab.unk_id or i >= vocab.base_vocab_size for i in ids):
                assert tokenizer.decode(ids, skip_special_tokens=True) == row["generated"]
                compared_texts += 1
    assert compared_texts >= 4


def test_export_command_writes_the_same_tokenizer(run: dict, tmp_path: Path) -> None:
    assert export_main(["--ckpt", run["run_dir"], "--out", str(tmp_path / "hf")]) == 0
    for name in HF_TOKENIZER_FILES:
        assert (tmp_path / "hf" / name).read_bytes() == (run["hf"] / name).read_bytes(), name
    with no_loader_warnings():
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert len(tokenizer) == 8100


def test_export_finds_the_runs_vocabulary_or_says_how(run: dict, tmp_path: Path, capsys) -> None:
    checkpoint = Path(run["checkpoint"])
    # a checkpoint copied out of its run directory: the default vocabulary, accepted because the fingerprints agree
    shutil.copy(checkpoint, tmp_path / "copied.ckpt")
    assert export_main(["--ckpt", str(tmp_path / "copied.ckpt"), "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "tokenizer.json").is_file()
    # --vocab naming another SentencePiece model: refused, nothing written
    other = train_vocabulary(shipped_texts(["glue_sst2"], split="train", limit=2000), tmp_path / "other.model",
                             size=300)
    assert export_main(["--ckpt", str(tmp_path / "copied.ckpt"), "--vocab", str(other.path),
                        "--out", str(tmp_path / "b")]) == 2
    assert "was trained with fingerprint" in capsys.readouterr().err and not (tmp_path / "b").exists()
    # a run whose config.yaml names a mixture this process does not know: the reason and the way out
    run_copy = tmp_path / "run"
    shutil.copytree(run["run_dir"], run_copy, ignore=shutil.ignore_patterns("step*.ckpt", "tensorboard", "csv"))
    config = run_copy / "config.yaml"
    config.write_text(config.read_text().replace("mixture: test_train_mix", "mixture: their_own_mix"))
    assert export_main(["--ckpt", str(run_copy), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "cannot rebuild the vocabulary" in err and "their_own_mix" in err and "--vocab" in err
    assert export_main(["--ckpt", str(run_copy), "--vocab", str(get_default_vocabulary().path),
                        "--out", str(tmp_path / "c")]) == 0
    # a checkpoint trained with another vocabulary, outside its run directory, without --vocab
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["vocab_fingerprint"] = other.fingerprint
    torch.save(ckpt, tmp_path / "other_vocab.ckpt")
    assert export_main(["--ckpt", str(tmp_path / "other_vocab.ckpt"), "--out", str(tmp_path / "d")]) == 2
    assert "its vocabulary is unknown" in capsys.readouterr().err and not (tmp_path / "d").exists()
