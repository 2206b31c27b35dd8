"""Errors raised by the mixtures package.

Every mixture/mixing problem raises :class:`MixtureError`, a ``ValueError`` so that callers that
already guard configuration with ``except ValueError`` keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MixtureError(ValueError):
    """A mixture, its mixing configuration or its data cannot be used (raised before training starts)."""


def suggest(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """Return ' Did you mean: a, b?' for close matches of ``name`` (empty string when none)."""
    close = difflib.get_close_matches(name, sorted(candidates), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""
