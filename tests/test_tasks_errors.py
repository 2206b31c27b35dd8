"""Every bad input is one clear TaskError, raised before training (issue 2, "Bad input")."""

from __future__ import annotations

import dataclasses
import functools
import json

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
    with pytest.raises(TaskError, match=r"split 'train', row 0 \(source: memory\): .*needs field 'text'"):
        list(task.text_examples("train"))


def test_field_missing_in_some_rows_of_a_file(tmp_path):
    # Arrow fills a field absent from one JSONL row with null; that row is reported.
    path = tmp_path / "train.jsonl"
    path.write_text('{"sentence": "a", "label": 0, "idx": 0}\n{"label": 1, "idx": 1}\n', encoding="utf-8")
    task = Task("tiny_partial", FileSource({"train": path}), [glue_like()])
    with pytest.raises(TaskError, match=r"split 'train', row 1 \(file .*train\.jsonl, line 2\), field 'sentence'"):
        task.tokenized("train")
    user = Task("tiny_partial_user", FileSource({"train": path}), [lambda r: {"inputs": r["sentence"], "targets": "x"}])
    with pytest.raises(TaskError, match=r"row 1 \(file .*train\.jsonl, line 2\): .*null: a field the preprocessor "
                                        r"read is probably missing"):
        list(user.text_examples("train"))


def test_empty_split():
    task = Task("tiny_empty", InMemorySource({"train": {"sentence": [], "label": []}}), [glue_like()])
    with pytest.raises(TaskError, match=r"split 'train' is empty"):
        task.tokenized("train")


def test_empty_jsonl_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("", encoding="utf-8")
    task = Task("tiny_empty_file", FileSource({"train": path}), [glue_like()])
    with pytest.raises(TaskError, match=r"Task 'tiny_empty_file': Data file\(s\) for split 'train' are empty: "
                                        r".*train\.jsonl\. Put the rows in the file"):
        task.tokenized("train")


def test_unreadable_file_gives_the_reason(tmp_path):
    """Issue 24 item 6: `datasets` raises a generic error whose cause holds the reason; the message carries both."""
    path = tmp_path / "train.csv"
    path.write_text("a,b\n1,2\n3,4,5,6\n", encoding="utf-8")
    task = Task("tiny_bad_csv", FileSource({"train": path}), [lambda r: {"inputs": str(r["a"]), "targets": "x"}])
    with pytest.raises(TaskError, match=r"Could not read data files .*train\.csv.*: .*Expected 2 fields in line 3"):
        task.tokenized("train")


def test_label_out_of_range():
    rows = [{"sentence": "a", "label": 1, "idx": 0}, {"sentence": "b", "label": 2, "idx": 1}]
    task = Task("tiny_labels", InMemorySource({"validation": rows}), [glue_like()])
    with pytest.raises(TaskError, match=r"row 1 \(source: memory\), field 'label': label 2 is out of range: this "
                                        r"task has 2 classes"):
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


# ---------------------------------------------------------------------------------------------------------------
# The user's own preprocessors (issue 24 item 6): whatever they raise names the task, the split, the file and the row.
LABELS = ["negative", "positive"]


def review(row):
    return {"inputs": "review: " + row["sentence"], "targets": LABELS[int(row["label"])]}


def boolq(row):
    return {"inputs": "question: " + row["question"] + " passage: " + row["passage"],
            "targets": "yes" if row["label"] else "no"}


def _jsonl(path, rows, blank_after_first=True):
    lines = [json.dumps(r) for r in rows]
    if blank_after_first:
        lines.insert(1, "")  # JSON Lines readers skip blank lines: the message must still give the right line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_user_preprocessor_index_error_names_task_split_file_row_and_line(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": 0}, {"sentence": "b", "label": 1},
                                             {"sentence": "c", "label": 2}])
    task = Task("user_labels", FileSource({"train": path}), [review])
    expected = (r"Task 'user_labels', split 'train', row 2 \(file .*train\.jsonl, line 4\): preprocessor 'review' "
                r"raised IndexError: list index out of range, at .*test_tasks_errors\.py:\d+\. "
                r"Raw row: \{\"sentence\": \"c\", \"label\": 2\}")
    for read in (lambda: list(task.text_examples("train")), lambda: task.tokenized("train"),
                 lambda: task.token_cache("train")):  # evaluation, the HF path, training
        with pytest.raises(TaskError, match=expected) as err:
            read()
        assert isinstance(err.value.__cause__, IndexError)


def test_user_preprocessor_on_a_missing_field_names_the_null_field(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", [{"question": "q1", "passage": "p1", "label": True},
                                             {"question": "q2", "label": False}])
    task = Task("user_boolq", FileSource({"train": path}), [boolq])
    with pytest.raises(TaskError) as err:
        task.token_cache("train")
    msg = str(err.value)
    for part in ("Task 'user_boolq'", "split 'train'", "row 1 (file ", "train.jsonl, line 3)",
                 "preprocessor 'boolq' raised TypeError", "null in this row (absent from the file?): ['passage']"):
        assert part in msg, msg
    assert isinstance(err.value.__cause__, TypeError)


def test_a_second_preprocessor_and_a_partial_are_wrapped_too():
    def add_prefix(row, *, prefix):
        return {**row, "inputs": prefix + row["inputs"]}

    rows = [{"inputs": "a", "targets": "x"}, {"inputs": None, "targets": "y"}]
    task = Task("user_chain", InMemorySource({"validation": rows}),
                [lambda r: dict(r), functools.partial(add_prefix, prefix="p: ")])
    with pytest.raises(TaskError, match=r"row 1 \(source: memory\): preprocessor 'add_prefix' raised TypeError: "
                                        r".*, at .*test_tasks_errors\.py:\d+\. Fields that are null .*\['inputs'\]"):
        list(task.text_examples("validation"))


def _choices_task(tmp_path, targets_of, choices, name="user_choices", rows=None):
    rows = rows or [{"question": f"q{i}", "passage": "p", "label": bool(i % 3)} for i in range(20)]
    path = _jsonl(tmp_path / f"{name}.jsonl", rows, blank_after_first=False)
    fmt = functools.partial(_choice_row, targets=targets_of)
    return Task(name, FileSource({"train": path, "validation": path}), [fmt], label_choices=choices)


def _choice_row(row, *, targets):
    label = row["label"]
    return {"inputs": "question: " + row["question"], "targets": "<unk>" if label == -1 else targets[bool(label)]}


def test_targets_outside_label_choices_stop_evaluation_and_training(tmp_path):
    """"yes"/"no" targets against label_choices False/True: rank classification could never match them (accuracy
    0.00 and no error before); the first examples are compared and the mismatch stops the run."""
    from lightning_t5.eval.evaluation import TaskEvaluator

    task = _choices_task(tmp_path, {False: "no", True: "yes"}, ["False", "True"])
    expected = (r"Task 'user_choices', split '(train|validation)': targets \[\"no\", \"yes\"\] of the first 20 "
                r"examples are not among label_choices \['False', 'True'\] \(first at row 0, file "
                r".*user_choices\.jsonl, line 1\)")
    with pytest.raises(TaskError, match=expected):
        TaskEvaluator(task, split="validation", max_examples=4, rank_classification=True)  # the evaluation set-up
    with pytest.raises(TaskError, match=expected):
        task.token_cache("train")  # what training reads
    with pytest.raises(TaskError, match=expected):
        task.tokenized("train")


def test_matching_label_choices_and_unlabelled_rows_pass(tmp_path):
    good = _choices_task(tmp_path, {False: "False", True: "True"}, ["False", "True"], name="user_good")
    assert [ex["targets"] for ex in good.text_examples("validation")][:3] == ["False", "True", "True"]
    assert len(good.token_cache("train")) == 20
    rows = [{"question": "q", "passage": "p", "label": -1}] * 3  # a test split: T5's "<unk>" for unlabelled rows
    unlabelled = _choices_task(tmp_path, {False: "no", True: "yes"}, ["no", "yes"], name="user_test", rows=rows)
    assert {ex["targets"] for ex in unlabelled.text_examples("validation")} == {"<unk>"}


def test_only_a_few_rows_are_checked_once(tmp_path):
    """The check reads the first LABEL_CHECK_EXAMPLES examples, once per split and source in a process."""
    from tasks.task import LABEL_CHECK_EXAMPLES

    calls = []

    def counting(row):
        calls.append(1)
        return {"inputs": row["question"], "targets": "yes" if row["label"] else "no"}

    rows = [{"question": f"q{i}", "label": i % 2} for i in range(3 * LABEL_CHECK_EXAMPLES)]
    task = Task("user_counted", InMemorySource({"validation": rows}), [counting], label_choices=["no", "yes"])
    assert len(list(task.text_examples("validation"))) == len(rows)
    assert len(calls) == len(rows) + LABEL_CHECK_EXAMPLES
    assert len(list(task.text_examples("validation"))) == len(rows)
    assert len(calls) == 2 * len(rows) + LABEL_CHECK_EXAMPLES


def test_mixtures_show_prints_a_data_error_without_traceback(capsys):
    from mixtures import MixtureRegistry
    from mixtures.__main__ import main

    rows = [{"sentence": "a", "label": 0}, {"sentence": "b", "label": 5}]
    TaskRegistry.add(Task("user_bad_show", InMemorySource({"train": rows}), [review]), replace=True)
    MixtureRegistry.add("user_bad_show_mix", ["user_bad_show", "glue_rte"], replace=True)
    try:
        assert main(["show", "user_bad_show_mix", "-n", "0", "--steps", "0"]) == 2
    finally:
        MixtureRegistry.remove("user_bad_show_mix")
        TaskRegistry.remove("user_bad_show")
    err = capsys.readouterr().err
    assert err.startswith("error: Task 'user_bad_show', split 'train', row 1 (source: memory): preprocessor 'review' "
                          "raised IndexError"), err
