"""GLUE tasks ``glue_<name>``, in T5's text-to-text format (t5 ``glue_utils`` + ``preprocessors.glue``).

Shipped rows (data/README.md): cola, sst2, mrpc, stsb, rte. Their layouts are normalised to the
Hugging Face ``nyu-mll/glue`` layout (only the HF features, an ``idx``, int labels) because the glue
preprocessor joins *every* field except ``label``/``idx`` into the input. The other tasks read the hub.
"""

from __future__ import annotations

import functools
from typing import Any

from tasks import metrics, postprocessors, preprocessors
from tasks.sources import shipped_or_hub
from tasks.task import Task, TaskRegistry

HUB = "nyu-mll/glue"
RTE_LABELS = ["entailment", "not_entailment"]
MNLI_LABELS = ["entailment", "neutral", "contradiction"]
STSB_CHOICES = ["%.1f" % (i / 5) for i in range(26)]


def normalize_single_sentence(row: dict[str, Any], index: int) -> dict[str, Any]:
    """CoLA / SST-2 shipped rows -> HF layout {sentence, label, idx} (drops CoLA's source columns)."""
    return {"sentence": row["sentence"], "label": row["label"], "idx": index}


def normalize_mrpc(row: dict[str, Any], index: int) -> dict[str, Any]:
    """MRPC shipped rows carry MSR ids; HF has {sentence1, sentence2, label, idx}."""
    return {"sentence1": row["sentence1"], "sentence2": row["sentence2"], "label": row["label"], "idx": index}


def normalize_stsb(row: dict[str, Any], index: int) -> dict[str, Any]:
    """STS-B shipped rows use the GLUE TSV header (score, index, genre...);
    HF has {sentence1, sentence2, label, idx}."""
    return {"sentence1": row["sentence1"], "sentence2": row["sentence2"], "label": float(row["score"]),
            "idx": int(row["index"])}


def normalize_rte(row: dict[str, Any], index: int) -> dict[str, Any]:
    """GLUE RTE shipped labels are strings ("entailment"/"not_entailment"); HF uses class ids."""
    label = row["label"]
    if isinstance(label, str) and label in RTE_LABELS:
        label = RTE_LABELS.index(label)
    return {"sentence1": row["sentence1"], "sentence2": row["sentence2"], "label": label, "idx": row["idx"]}


# name -> (label names, metric fns, shipped dir, local normaliser, hub splits, split map)
_GLUE: dict[str, dict[str, Any]] = {
    "cola": dict(labels=["unacceptable", "acceptable"], metrics=[metrics.matthews_corrcoef],
                 local="cola", normalize=normalize_single_sentence),
    "sst2": dict(labels=["negative", "positive"], metrics=[metrics.accuracy],
                 local="sst2", normalize=normalize_single_sentence),
    "mrpc": dict(labels=["not_equivalent", "equivalent"],
                 metrics=[metrics.f1_score_with_invalid, metrics.accuracy], local="mrpc", normalize=normalize_mrpc),
    "qqp": dict(labels=["not_duplicate", "duplicate"], metrics=[metrics.f1_score_with_invalid, metrics.accuracy]),
    "stsb": dict(labels=None, metrics=[metrics.pearson_corrcoef, metrics.spearman_corrcoef],
                 local="stsb", normalize=normalize_stsb),
    "mnli": dict(labels=MNLI_LABELS, metrics=[metrics.accuracy],
                 hub_splits=["train", "validation_matched", "validation_mismatched", "test_matched",
                             "test_mismatched"]),
    "mnli_matched": dict(labels=MNLI_LABELS, metrics=[metrics.accuracy], config="mnli",
                         hub_splits=["validation", "test"],
                         split_map={"validation": "validation_matched", "test": "test_matched"}),
    "mnli_mismatched": dict(labels=MNLI_LABELS, metrics=[metrics.accuracy], config="mnli",
                            hub_splits=["validation", "test"],
                            split_map={"validation": "validation_mismatched", "test": "test_mismatched"}),
    "qnli": dict(labels=RTE_LABELS, metrics=[metrics.accuracy]),
    "rte": dict(labels=RTE_LABELS, metrics=[metrics.accuracy], local="rte", normalize=normalize_rte),
    "wnli": dict(labels=["not_entailment", "entailment"], metrics=[metrics.accuracy]),
    "ax": dict(labels=MNLI_LABELS, metrics=[], hub_splits=["test"]),
}


def glue_task(name: str) -> Task:
    """Build ``glue_<name>`` exactly as t5's ``get_glue_text_preprocessor`` would format it."""
    spec = _GLUE[name]
    source = shipped_or_hub(
        spec.get("local", ""), HUB, spec.get("config", name),
        hub_splits=spec.get("hub_splits", ["train", "validation", "test"]),
        split_map=spec.get("split_map"), normalize_local=spec.get("normalize"),
    )
    labels = spec["labels"]
    if name == "stsb":
        prep = [preprocessors.stsb]
        post = postprocessors.string_to_float
        choices = STSB_CHOICES
    else:
        # MNLI's matched/mismatched sets and the AX diagnostic are cast as MNLI, like T5.
        benchmark = "mnli" if ("mnli" in name or name == "ax") else name
        prep = [functools.partial(preprocessors.glue, benchmark_name=benchmark, label_names=labels)]
        post = functools.partial(postprocessors.string_label_to_class_id, label_classes=labels)
        choices = labels
    return Task(
        f"glue_{name}", source, prep, postprocess_fn=post, metric_fns=spec["metrics"],
        label_choices=choices, benchmark="glue", description=f"GLUE {name} (T5 format)",
    )


for _name in _GLUE:
    TaskRegistry.add(glue_task(_name), replace=True)
