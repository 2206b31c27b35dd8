"""SQuAD v1.1 (``squad``): ``question: ... context: ...`` -> first answer, punctuation padded (T5)."""

from __future__ import annotations

from tasks import metrics, postprocessors, preprocessors
from tasks.sources import shipped_or_hub
from tasks.task import Task, TaskRegistry

TaskRegistry.add(
    Task(
        "squad",
        shipped_or_hub("squad", "rajpurkar/squad", hub_splits=("train", "validation")),
        [preprocessors.squad],
        postprocess_fn=postprocessors.qa,
        metric_fns=[metrics.squad],
        description="SQuAD v1.1 with context (t5 squad_v010_allanswers)",
    ),
    replace=True,
)
