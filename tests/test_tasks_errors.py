"""Every bad input is one clear TaskError, raised before training (issue 2, "Bad input")."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import sentencepiece as spm

from tasks import FileSource, InMemorySource, SentencePieceVocabulary, Task, TaskError, TaskRegistry, preprocessors


def glue_like(labels=("no", "yes")):
    return functools.partial(preprocessors.glue, benchmark_name="tiny", label_names=list(labels))


def test_unknown_task_suggests_close_names():
    with pytest.raises(TaskError) as err:
        TaskRegistry.get("glue_sst")
    msg = str(err.value)
    assert "Unknown task 'glue_sst'" in msg and "glue_sst2" in msg and "python -m tasks list" in msg
    assert "\n" not in msg


def test_unknown_split_is_clear():
    with pytest.raises(TaskError, match=r"no split 'valid'.*Did you mean 'validation'"):
        next(TaskRegistry.get("glue_sst2").text_examples("valid"))


def test_missing_data_file(tmp_path):
    task = Task("tiny_missing", FileSource({"train": tmp_path / "nope.jsonl"}), [glue_like()])
    with pytest.raises(TaskError, match=r"not found: .*nope\.jsonl"):
        task.tokenized("train")


def test_row_missing_field_names_task_split_row_and_field():
    rows = [{"sentence": "fine", "label": 0, "idx": 0}, {"sentence": "fine", "label": 1, "idx": 1},
            {"label": 1, "idx": 2, "other": "x"}]
    fmt = functools.partial(preprocessors.stsb)
    task = Task("tiny_fields", InMemorySource({"train": rows}), [fmt])
    with pytest.raises(TaskError) as err:
        task.tokenized("train")
    msg = str(err.value)
    for part in ("Task 'tiny_fields'", "split 'train'", "row 0", "sentence1"):
        assert part in msg


def test_user_preprocessor_key_error_names_the_field():
    rows = [{"txt": "a"}, {"txt": "b"}]
    task = Task("tiny_keyerror", InMemorySource({"train": rows}), [lambda r: {"inputs": r["text"], "targets": "x"}])
    with pytest.raises(TaskError, match=r"split 'train', row 0: .*needs field 'text'"):
        list(task.text_examples("train"))


def test_field_missing_in_some_rows_of_a_file(tmp_path):
    # Arrow fills a field absent from one JSONL row with null; that row is reported.
    path = tmp_path / "train.jsonl"
    path.write_text('{"sentence": "a", "label": 0, "idx": 0}\n{"label": 1, "idx": 1}\n', encoding="utf-8")
    task = Task("tiny_partial", FileSource({"train": path}), [glue_like()])
    with pytest.raises(TaskError, match=r"split 'train', row 1 \(field 'sentence'\)"):
        task.tokenized("train")
    user = Task("tiny_partial_user", FileSource({"train": path}), [lambda r: {"inputs": r["sentence"], "targets": "x"}])
    with pytest.raises(TaskError, match=r"row 1: .*null: a field the preprocessor read is probably missing"):
        list(user.text_examples("train"))


def test_empty_split():
    task = Task("tiny_empty", InMemorySource({"train": {"sentence": [], "label": []}}), [glue_like()])
    with pytest.raises(TaskError, match=r"split 'train' is empty"):
        task.tokenized("train")


def test_empty_jsonl_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("", encoding="utf-8")
    task = Task("tiny_empty_file", FileSource({"train": path}), [glue_like()])
    with pytest.raises(TaskError, match="empty|Could not read"):
        task.tokenized("train")


def test_label_out_of_range():
    rows = [{"sentence": "a", "label": 1, "idx": 0}, {"sentence": "b", "label": 2, "idx": 1}]
    task = Task("tiny_labels", InMemorySource({"validation": rows}), [glue_like()])
    with pytest.raises(TaskError, match=r"row 1 \(field 'label'\): label 2 is out of range: this task has 2 classes"):
        task.tokenized("validation")


def test_string_label_that_is_not_a_class_is_reported():
    rows = [{"idx": 0, "sentence1": "a", "sentence2": "b", "label": "maybe"}]
    task = TaskRegistry.get("glue_rte").with_source(
        InMemorySource({"validation": rows}, normalize=TaskRegistry.get("glue_rte").source.local.normalize))
    with pytest.raises(TaskError, match=r"field 'label' must be an integer class id .* got 'maybe'"):
        list(task.text_examples("validation"))


def test_stsb_score_out_of_range():
    rows = [{"sentence1": "a", "sentence2": "b", "label": 7.5, "idx": 0}]
    task = TaskRegistry.get("glue_stsb").with_source(InMemorySource({"train": rows}))
    with pytest.raises(TaskError, match="out of range"):
        list(task.text_examples("train"))


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"sentence": "a", "label": 0}\n{"sentence": "b", "label": 1\n', encoding="utf-8")
    task = Task("tiny_badjson", FileSource({"train": path}), [glue_like()])
    with pytest.raises(TaskError, match=r"train\.jsonl, line 2: not valid JSON"):
        task.tokenized("train")


def test_bad_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"sentence": "a", "label": 0}\n{"sentence": "caf\xe9", "label": 1}\n')
    task = Task("tiny_badutf8", FileSource({"train": path}), [glue_like()])
    with pytest.raises(TaskError, match=r"train\.jsonl, line 2: not valid UTF-8"):
        task.tokenized("train")


def test_preprocessor_must_return_strings():
    task = Task("tiny_nonstr", InMemorySource({"train": [{"a": 1}]}), [lambda r: {"inputs": r["a"], "targets": "x"}])
    with pytest.raises(TaskError, match="'inputs' must be a string"):
        list(task.text_examples("train"))


@dataclasses.dataclass(frozen=True)
class NeedsSentinels:
    name: str = "needs_sentinels"
    cacheable: bool = False

    def fingerprint(self) -> str:
        return self.name

    def __call__(self, batch, **kwargs):
        return batch


def test_vocabulary_without_sentinels(tmp_path):
    from tasks.vocabulary import DEFAULT_VOCAB_PATH

    no_sentinels = SentencePieceVocabulary(DEFAULT_VOCAB_PATH, extra_ids=0)
    with pytest.raises(TaskError, match="<extra_id_0> does not exist"):
        no_sentinels.sentinel_id(0)
    with pytest.raises(TaskError, match=r"need sentinel ids.*extra_ids=0"):
        Task("tiny_nosent", InMemorySource({"train": [{"text": "a"}]}), [preprocessors.lm_text],
             token_preprocessors=[NeedsSentinels()], vocabulary=no_sentinels)


def test_vocabulary_with_wrong_special_ids(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"line {i} of some text for a tiny model" for i in range(200)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "default_ids"), vocab_size=40,
                                   minloglevel=2)  # SentencePiece defaults: unk=0, bos=1, eos=2
    with pytest.raises(TaskError, match=r"needs pad=0, eos=1,\s+unk=2"):
        SentencePieceVocabulary(tmp_path / "default_ids.model")


def test_missing_vocabulary_file(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        SentencePieceVocabulary(tmp_path / "none.model")


def test_errors_are_value_errors_for_callers():
    assert issubclass(TaskError, ValueError)
