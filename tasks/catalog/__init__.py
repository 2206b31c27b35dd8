"""The built-in task catalog; importing this package registers every task.

``corpus.py`` (the unsupervised ``corpus_*`` tasks) is owned by the objectives work and may not
exist yet in a checkout; we import it only when it exists, so a real error inside it still raises.
"""

from __future__ import annotations

import importlib
import importlib.util

from tasks.catalog import cnn_dailymail, glue, squad, super_glue, wmt  # noqa: F401  (registers tasks)

if importlib.util.find_spec("tasks.catalog.corpus") is not None:
    importlib.import_module("tasks.catalog.corpus")
