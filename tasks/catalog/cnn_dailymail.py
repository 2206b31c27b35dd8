"""CNN/DailyMail (``cnn_dailymail``): ``summarize: <article>`` -> highlights, scored by ROUGE."""

from __future__ import annotations

import functools

from tasks import metrics, preprocessors
from tasks.sources import shipped_or_hub
from tasks.task import Task, TaskRegistry

TaskRegistry.add(
    Task(
        "cnn_dailymail",
        shipped_or_hub("cnn_dailymail", "abisee/cnn_dailymail", "3.0.0"),
        [functools.partial(preprocessors.summarize, article_key="article", summary_key="highlights")],
        metric_fns=[metrics.rouge],
        description="CNN/DailyMail summarisation (t5 cnn_dailymail_v002)",
    ),
    replace=True,
)
