"""Text formats of every catalog task, checked by hand against the t5 library's preprocessors.

Shipped tasks are checked on real rows from data/; hub-only tasks on in-memory rows in the Hugging
Face layout (what the t5 library saw through TFDS).
"""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import InMemorySource, TaskRegistry
from tasks.preprocessors import pad_punctuation


def first(name: str, split: str = "validation") -> dict:
    return next(TaskRegistry.get(name).text_examples(split))


def all_examples(name: str, rows: list[dict], split: str = "validation") -> list[dict]:
    task = TaskRegistry.get(name).with_source(InMemorySource({split: rows}))
    return list(task.text_examples(split))


# ------------------------------------------------------------------------------------- shipped rows
def test_glue_cola_shipped():
    ex = first("glue_cola")
    assert ex["inputs"] == "cola sentence: The sailors rode the breeze clear of the rocks."
    assert ex["targets"] == "acceptable"
    # The shipped CoLA columns 'source'/'original_judgment' must not leak into the input.
    assert "source:" not in ex["inputs"]


def test_glue_sst2_shipped():
    ex = first("glue_sst2")
    assert ex["inputs"] == "sst2 sentence: it 's a charming and often affecting journey . "
    assert ex["targets"] == "positive"
    assert ex["idx"] == 0


def test_glue_mrpc_shipped():
    ex = first("glue_mrpc")
    assert ex["inputs"] == (
        "mrpc sentence1: PCCW's chief operating officer, Mike Butcher, and Alex Arena, the chief financial "
        "officer, will report directly to Mr So. sentence2: Current Chief Operating Officer Mike Butcher and "
        "Group Chief Financial Officer Alex Arena will report to So."
    )
    assert ex["targets"] == "equivalent"


def test_glue_stsb_shipped_and_rounding():
    ex = first("glue_stsb")
    assert ex["inputs"] == (
        "stsb sentence1: A man with a hard hat is dancing. sentence2: A man wearing a hard hat is dancing."
    )
    assert ex["targets"] == "5.0"
    rows = [{"sentence1": "a", "sentence2": "b", "label": score, "idx": i}
            for i, score in enumerate([2.5, 4.75, 3.0, 1.1, 0.0, 3.8, 0.33])]
    targets = [e["targets"] for e in all_examples("glue_stsb", rows)]
    # round(x * 5) / 5 with round-half-to-even, printed with one decimal: 12.5 -> 12 -> "2.4".
    assert targets == ["2.4", "4.8", "3.0", "1.2", "0.0", "3.8", "0.4"]


def test_glue_rte_shipped_string_labels_normalised():
    ex = first("glue_rte")
    assert ex["inputs"] == (
        "rte sentence1: Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, "
        "according to the Christopher Reeve Foundation. sentence2: Christopher Reeve had an accident."
    )
    assert ex["targets"] == "not_entailment"
    assert ex["label"] == 1  # HF class id, not the shipped string


def test_super_glue_rte_from_glue_rows():
    ex = first("super_glue_rte")
    assert ex["inputs"] == (
        "rte hypothesis: Christopher Reeve had an accident. premise: Dana Reeve, the widow of the actor "
        "Christopher Reeve, has died of lung cancer at age 44, according to the Christopher Reeve Foundation."
    )
    assert ex["targets"] == "not_entailment"


def test_super_glue_boolq_shipped_bool_label():
    ex = first("super_glue_boolq")
    assert ex["inputs"].startswith("boolq passage: Ethanol fuel -- All biomass goes through")
    assert ex["inputs"].endswith(" question: does ethanol take more energy make that produces")
    assert ex["targets"] == "False"


def test_super_glue_cb_shipped_string_label():
    ex = first("super_glue_cb")
    assert ex["inputs"] == (
        "cb hypothesis: Valence was helping premise: Valence the void-brain, Valence the virtuous valet. "
        "Why couldn't the figger choose his own portion of titanic anatomy to shaft? Did he think he was helping?"
    )
    assert ex["targets"] == "contradiction"


def test_super_glue_copa_shipped():
    ex = first("super_glue_copa")
    assert ex["inputs"] == (
        "copa choice1: The toilet filled with water. choice2: Water flowed from the spout. "
        "premise: The man turned on the faucet. question: effect"
    )
    assert ex["targets"] == "choice2"


def test_squad_shipped_punctuation_padding():
    ex = first("squad")
    assert ex["inputs"].startswith(
        "question: Which NFL team represented the AFC at Super Bowl 50 ? context: Super Bowl 50 was an "
        "American football game to determine the champion of the National Football League ( NFL ) for the "
        "2015 season . "
    )
    assert "Carolina Panthers 24–10 to earn" in ex["inputs"]  # the en dash is not ASCII: t5 leaves it alone
    assert "at Levi ' s Stadium" in ex["inputs"]
    assert ex["inputs"].endswith(" . ")  # t5 does not strip the padded final period
    assert ex["targets"] == "Denver Broncos"
    assert ex["answers"] == ["Denver Broncos", "Denver Broncos", "Denver Broncos"]


def test_squad_in_memory_hand_checked():
    rows = [{"id": "x", "title": "t", "context": "It's 4 (four), café.", "question": "What's 2+2?",
             "answers": {"text": ["4 (four)"], "answer_start": [5]}}]
    (ex,) = all_examples("squad", rows)
    assert ex["inputs"] == "question: What ' s 2 + 2 ? context: It ' s 4 ( four ) , café . "
    assert ex["targets"] == "4 ( four ) "


@pytest.mark.parametrize("text", ["24–10", "x’s", "5°C", "€5", "Beyoncé", "«oui»", "a\u00a0b"])
def test_pad_punctuation_leaves_non_ascii_alone(text):
    """t5's _pad_punctuation pads RE2 [[:punct:]], which is ASCII punctuation only."""
    assert pad_punctuation(text) == text


def test_pad_punctuation_pads_every_ascii_punctuation_mark():
    for mark in string.punctuation:
        assert pad_punctuation(f"a{mark}b") == f"a {mark} b", mark
    assert pad_punctuation("Levi's  24–10 (5°C)\n") == "Levi ' s 24–10 ( 5°C ) "


def _t5_pad_punctuation(text: str) -> str:
    """Direct reimplementation of t5.data.preprocessors._pad_punctuation (RE2: [[:punct:]] and \\s are ASCII)."""
    text = re.sub(r"([!-/:-@\[-`{-~])", r" \1 ", text)
    return re.sub(r"[\t\n\f\r ]+", " ", text)


def _t5_squad(row: dict) -> dict:
    """t5.data.preprocessors.squad (include_context=True) with _string_join = join on " " + collapse whitespace."""
    answers = [_t5_pad_punctuation(a) for a in row["answers"]["text"]]
    q, c = _t5_pad_punctuation(row["question"]), _t5_pad_punctuation(row["context"])
    inputs = re.sub(r"[\t\n\f\r ]+", " ", " ".join(["question:", q, "context:", c]))
    return {"inputs": inputs, "targets": answers[0], "answers": answers}


def test_squad_cli_matches_the_t5_preprocessor_character_for_character():
    """`python -m tasks show squad --split validation -n 25 --json` on data/squad against the reimplementation
    above; the rows include non-ASCII punctuation (24–10 in the first context)."""
    assert set(string.punctuation) == {chr(c) for c in range(128) if re.fullmatch(r"[!-/:-@\[-`{-~]", chr(c))}
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "tasks", "show", "squad", "--split", "validation", "-n", "25",
                             "--json"], cwd=root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr[-2000:]
    shown = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    with open(root / "data" / "squad" / "validation.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(25), f)]
    assert len(shown) == 25
    assert any("–" in row["context"] for row in rows)
    for got, row in zip(shown, rows):
        assert got["raw"]["id"] == row["id"]
        expected = _t5_squad(row)
        assert got["inputs"] == expected["inputs"]
        assert got["targets"] == expected["targets"]


def test_cnn_dailymail_shipped():
    ex = first("cnn_dailymail")
    assert ex["inputs"].startswith("summarize: More than 20,000 foreign fighters have fled to Syria and Iraq")
    assert ex["inputs"] == "summarize: " + ex["article"]
    assert ex["targets"] == ex["highlights"]


def test_wmt_ende_shipped():
    ex = first("wmt_ende")
    assert ex["inputs"] == "translate English to German: Parliament Does Not Support Amendment Freeing Tymoshenko"
    assert ex["targets"] == "Keine befreiende Novelle für Tymoshenko durch das Parlament"


# ------------------------------------------------------------------------------------- hub-only tasks
@pytest.mark.parametrize(
    ("name", "row", "inputs", "targets"),
    [
        ("glue_qqp", {"question1": "Why do I easily get bored of my friends?",
                      "question2": "Why do I get bored of friends so quickly?", "label": 1, "idx": 10},
         "qqp question1: Why do I easily get bored of my friends? question2: Why do I get bored of friends so quickly?",
         "duplicate"),
        ("glue_mnli", {"premise": "P text.", "hypothesis": "H text.", "label": 2, "idx": 0},
         "mnli hypothesis: H text. premise: P text.", "contradiction"),
        ("glue_mnli_matched", {"premise": "P.", "hypothesis": "H.", "label": 0, "idx": 3},
         "mnli hypothesis: H. premise: P.", "entailment"),
        ("glue_mnli_mismatched", {"premise": "P.", "hypothesis": "H.", "label": 1, "idx": 3},
         "mnli hypothesis: H. premise: P.", "neutral"),
        ("glue_qnli", {"question": "Q?", "sentence": "S.", "label": 1, "idx": 0},
         "qnli question: Q? sentence: S.", "not_entailment"),
        ("glue_wnli", {"sentence1": "A.", "sentence2": "B.", "label": 1, "idx": 0},
         "wnli sentence1: A. sentence2: B.", "entailment"),
        ("glue_ax", {"premise": "P.", "hypothesis": "H.", "label": -1, "idx": 0},
         "mnli hypothesis: H. premise: P.", "<unk>"),
        ("super_glue_wic", {"word": "place", "sentence1": "Do you want to come over to my place later?",
                            "sentence2": "A political system with no place for the less prominent groups.",
                            "start1": 31, "start2": 27, "end1": 36, "end2": 32, "label": 0, "idx": 0},
         "wic sentence1: Do you want to come over to my place later? sentence2: A political system with no "
         "place for the less prominent groups. word: place", "False"),
        ("super_glue_axb", {"sentence1": "The cat sat.", "sentence2": "The cat did not sit.", "label": -1, "idx": 0},
         "rte hypothesis: The cat did not sit. premise: The cat sat.", "<unk>"),
        ("super_glue_axg", {"premise": "The nurse smiled.", "hypothesis": "She smiled.", "label": 0, "idx": 0},
         "rte hypothesis: She smiled. premise: The nurse smiled.", "entailment"),
        ("wmt_enfr", {"translation": {"en": "That is good.", "fr": "C'est bon."}},
         "translate English to French: That is good.", "C'est bon."),
        ("wmt_enro", {"translation": {"en": "That is good.", "ro": "Este bine."}},
         "translate English to Romanian: That is good.", "Este bine."),
    ],
)
def test_hub_only_glue_style(name, row, inputs, targets):
    split = TaskRegistry.get(name).splits[0]
    (ex,) = all_examples(name, [row], split=split)
    assert ex["inputs"] == inputs
    assert ex["targets"] == targets


def test_super_glue_multirc_markup_and_order():
    row = {"paragraph": "Sent 1: Tom ran.<br>Sent 2: He <b>won</b>.", "question": "Who ran?", "answer": "Tom",
           "idx": {"paragraph": 4, "question": 7, "answer": 9}, "label": 1}
    (ex,) = all_examples("super_glue_multirc", [row])
    assert ex["inputs"] == "multirc question: Who ran? answer: Tom paragraph: Sent 1: Tom ran. Sent 2: He won."
    assert ex["targets"] == "True"
    assert (ex["idx/paragraph"], ex["idx/question"], ex["idx/answer"]) == (4, 7, 9)


def test_super_glue_record_one_example_per_answer():
    row = {"passage": "Rain fell.\n@highlight\nFloods hit town\n@highlight\nSchools shut",
           "query": "@placeholder closed its schools", "entities": ["Leeds", "York"],
           "entity_spans": {"text": ["Leeds", "York"], "start": [0, 0], "end": [0, 0]},
           "answers": ["Leeds", "York"], "idx": {"passage": 2, "query": 5}}
    exs = all_examples("super_glue_record", [row])
    expected = ("record query: @placeholder closed its schools entities: Leeds, York passage: "
                "Rain fell. Floods hit town. Schools shut")
    assert [e["inputs"] for e in exs] == [expected, expected]
    assert [e["targets"] for e in exs] == ["Leeds", "York"]
    test_row = dict(row, answers=[])
    (ex,) = all_examples("super_glue_record", [test_row], split="test")
    assert ex["targets"] == "<unk>"


WSC_ROW = {
    "text": ("Mark told Pete many lies about himself, which Pete included in his book. "
             "He should have been more truthful."),
    "span1_index": 0, "span1_text": "Mark", "span2_index": 13, "span2_text": "He", "idx": 0,
}


def test_super_glue_wsc_simple_train_and_eval():
    rows = [dict(WSC_ROW, label=1), dict(WSC_ROW, span1_text="Pete", span1_index=2, label=0, idx=1)]
    expected = ("wsc: Mark told Pete many lies about himself, which Pete included in his book. *He* should "
                "have been more truthful.")
    train = all_examples("super_glue_wsc", rows, split="train")
    assert [(e["inputs"], e["targets"]) for e in train] == [(expected, "Mark")]  # wrong referents dropped
    val = all_examples("super_glue_wsc", rows, split="validation")
    assert [(e["inputs"], e["targets"]) for e in val] == [(expected, "Mark"), (expected, "Pete")]


def test_every_catalog_task_is_covered():
    covered = {
        "glue_cola", "glue_sst2", "glue_mrpc", "glue_qqp", "glue_stsb", "glue_mnli", "glue_mnli_matched",
        "glue_mnli_mismatched", "glue_qnli", "glue_rte", "glue_wnli", "glue_ax", "super_glue_boolq",
        "super_glue_cb", "super_glue_copa", "super_glue_multirc", "super_glue_record", "super_glue_rte",
        "super_glue_wic", "super_glue_wsc", "super_glue_axb", "super_glue_axg", "squad", "cnn_dailymail",
        "wmt_ende", "wmt_enfr", "wmt_enro",
    }
    # The catalog as a fresh process registers it: tests register tasks of their own in this process.
    proc = subprocess.run([sys.executable, "-c", "import tasks; print(' '.join(tasks.TaskRegistry.names()))"],
                          capture_output=True, text=True, check=True, timeout=120)
    supervised = {n for n in proc.stdout.split() if not n.startswith("corpus_")}
    assert supervised == covered


SHIPPED = ["glue_cola", "glue_sst2", "glue_mrpc", "glue_stsb", "glue_rte", "super_glue_boolq", "super_glue_cb",
           "super_glue_copa", "super_glue_rte", "squad", "cnn_dailymail", "wmt_ende"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_validation_split_tokenizes_one_example_per_row(name):
    task = TaskRegistry.get(name)
    ds = task.tokenized("validation")
    assert len(ds) == task.num_rows("validation")  # JSONL line count == examples for these tasks
    row = ds[len(ds) - 1]
    for key in ("inputs", "targets"):
        assert row[key].dtype.name == "int32" and row[key][-1] == 1 and len(row[key]) > 1
    last = list(task.text_examples("validation"))[-1]
    assert task.vocabulary.decode(row["targets"]) == task.vocabulary.decode(task.vocabulary.encode(last["targets"]))
    if task.label_choices and name != "glue_stsb":
        assert last["targets"] in task.label_choices
