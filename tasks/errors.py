"""Errors raised by the task layer.

Every problem with data, configuration or vocabularies that the task layer detects is a
:class:`TaskError` (a ``ValueError``), so callers (the CLI, ``train.py``) can catch one type and print
a single readable paragraph before any training starts.
"""

from __future__ import annotations


class TaskError(ValueError):
    """A data, task or vocabulary problem, described in one paragraph."""


class RowError(TaskError):
    """A problem with one source row, raised by a preprocessor.

    Preprocessors do not know which task, split or row they are working on; :class:`tasks.Task`
    catches this error and re-raises a :class:`TaskError` that names all of them.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
