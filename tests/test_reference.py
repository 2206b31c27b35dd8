"""docs/reference.md lists exactly what the task registries offer (regenerate: python -m tasks reference)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tasks import metrics, postprocessors, preprocessors
from tasks.reference import public_functions, reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_reference_doc_is_current() -> None:
    doc = (ROOT / "docs" / "reference.md").read_text()
    assert doc.rstrip("\n") == reference_markdown().rstrip("\n"), (
        "docs/reference.md is stale: run `python -m tasks reference > docs/reference.md`")


def test_reference_lists_every_public_preprocessor_postprocessor_and_metric() -> None:
    doc = (ROOT / "docs" / "reference.md").read_text()
    for module, expected in ((preprocessors, "summarize"), (postprocessors, "string_label_to_class_id"),
                             (metrics, "rouge")):
        names = [name for name, _ in public_functions(module)]
        assert expected in names
        assert all(f"| `{name}` |" in doc for name in names)


def test_tasks_reference_command_prints_it() -> None:
    out = subprocess.run([sys.executable, "-m", "tasks", "reference"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.rstrip("\n") == reference_markdown().rstrip("\n")
