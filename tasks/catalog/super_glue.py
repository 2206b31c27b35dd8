"""SuperGLUE tasks ``super_glue_<name>`` in T5's format (t5 ``glue_utils.register_super_glue``).

Shipped rows: boolq, cb, copa (data/README.md) and, for RTE, the GLUE RTE rows in data/rte
(SuperGLUE RTE is the same data: 2,490 train rows; the dev rows match SuperGLUE's validation),
renamed to SuperGLUE's premise/hypothesis. Labels are normalised to HF's class ids. WSC uses T5's
"simple" format: training keeps only correct referents, evaluation keeps every candidate.
"""

from __future__ import annotations

import functools
from typing import Any

from tasks import metrics, postprocessors, preprocessors
from tasks.sources import shipped_or_hub
from tasks.task import Task, TaskRegistry

HUB = "aps/super_glue"
BOOL_LABELS = ["False", "True"]
RTE_LABELS = ["entailment", "not_entailment"]
CB_LABELS = ["entailment", "contradiction", "neutral"]


def normalize_boolq(row: dict[str, Any], index: int) -> dict[str, Any]:
    """Shipped BoolQ labels are JSON booleans; HF uses 0/1."""
    return {"question": row["question"], "passage": row["passage"], "idx": row["idx"], "label": int(row["label"])}


def normalize_cb(row: dict[str, Any], index: int) -> dict[str, Any]:
    """Shipped CB labels are strings; HF uses ids into entailment/contradiction/neutral."""
    label = row["label"]
    if isinstance(label, str) and label in CB_LABELS:
        label = CB_LABELS.index(label)
    return {"premise": row["premise"], "hypothesis": row["hypothesis"], "idx": row["idx"], "label": label}


def normalize_copa(row: dict[str, Any], index: int) -> dict[str, Any]:
    """COPA ships in HF's layout; keep exactly its fields (the glue preprocessor joins all of them)."""
    return {k: row[k] for k in ("premise", "choice1", "choice2", "question", "idx", "label")}


def normalize_rte_from_glue(row: dict[str, Any], index: int) -> dict[str, Any]:
    """data/rte (GLUE layout, string labels) -> SuperGLUE RTE {premise, hypothesis, idx, label id}."""
    label = row["label"]
    if isinstance(label, str) and label in RTE_LABELS:
        label = RTE_LABELS.index(label)
    return {"premise": row["sentence1"], "hypothesis": row["sentence2"], "idx": row["idx"], "label": label}


def _classification(name: str, labels: list[str], metric_fns: list, *, local: str = "", normalize=None,
                    benchmark_name: str | None = None, feature_names=None, hub_splits=("train", "validation", "test"),
                    extra_preprocessors=()) -> Task:
    source = shipped_or_hub(local, HUB, name, hub_splits=hub_splits, normalize_local=normalize)
    prep = [*extra_preprocessors, functools.partial(
        preprocessors.glue, benchmark_name=benchmark_name or name, label_names=labels, feature_names=feature_names)]
    return Task(
        f"super_glue_{name}", source, prep,
        postprocess_fn=functools.partial(postprocessors.string_label_to_class_id, label_classes=labels),
        metric_fns=metric_fns, label_choices=labels, benchmark="super_glue",
        description=f"SuperGLUE {name} (T5 format)",
    )


def _tasks() -> list[Task]:
    acc = [metrics.accuracy]
    multirc = Task(
        "super_glue_multirc", shipped_or_hub("", HUB, "multirc"),
        [functools.partial(preprocessors.glue, benchmark_name="multirc", label_names=BOOL_LABELS,
                           feature_names=("question", "answer", "paragraph"))],
        postprocess_fn=postprocessors.multirc,
        metric_fns=[metrics.multirc_f1_over_all_answers, metrics.mean_group_metric(metrics.all_match)],
        label_choices=BOOL_LABELS, benchmark="super_glue", description="SuperGLUE MultiRC (T5 format)",
    )
    record = Task(
        "super_glue_record", shipped_or_hub("", HUB, "record"), [preprocessors.record],
        postprocess_fn=postprocessors.record, metric_fns=[metrics.deduplicate_metric(metrics.squad)],
        benchmark="super_glue", description="SuperGLUE ReCoRD (T5 format: one example per answer)",
    )
    wsc = Task(
        "super_glue_wsc", shipped_or_hub("", HUB, "wsc.fixed"), [preprocessors.wsc_simple],
        postprocess_fn=postprocessors.wsc_simple, metric_fns=acc, benchmark="super_glue",
        description="SuperGLUE WSC, T5's simple format (train: correct referents only)",
    )
    return [
        _classification("boolq", BOOL_LABELS, acc, local="boolq", normalize=normalize_boolq),
        _classification("cb", CB_LABELS, [metrics.mean_multiclass_f1(3), metrics.accuracy], local="cb",
                        normalize=normalize_cb),
        _classification("copa", ["choice1", "choice2"], acc, local="copa", normalize=normalize_copa),
        multirc,
        record,
        _classification("rte", RTE_LABELS, acc, local="rte", normalize=normalize_rte_from_glue),
        _classification("wic", BOOL_LABELS, acc, feature_names=("sentence1", "sentence2", "word")),
        wsc,
        # AX-b ships sentence1/sentence2; t5 rekeys them to premise/hypothesis and casts it as RTE.
        _classification("axb", RTE_LABELS, [], benchmark_name="rte", hub_splits=("test",),
                        extra_preprocessors=[functools.partial(preprocessors.rekey, key_map={
                            "premise": "sentence1", "hypothesis": "sentence2", "label": "label", "idx": "idx"})]),
        _classification("axg", RTE_LABELS, [], benchmark_name="rte", hub_splits=("test",)),
    ]


for _task in _tasks():
    TaskRegistry.add(_task, replace=True)
