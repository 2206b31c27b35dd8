"""docs/CONTRACTS.md is self-contained: it names no file outside the repository and every repository path exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "CONTRACTS.md").read_text()
PATH = re.compile(r"^[\w.-]+(/[\w.*-]*)+$|^[\w-]+\.(py|toml)$")
NOT_IN_A_CHECKOUT = ("checkpoints/", "csv/", "tensorboard/", "runs/", "run_dir/", ".venv/")  # run outputs, make setup


def named_paths() -> list[str]:
    spans = re.findall(r"`([^`\s]+)`", DOC)
    return [s for s in spans if PATH.match(s) and not s.startswith(NOT_IN_A_CHECKOUT)]


def test_contracts_doc_points_nowhere_outside_the_repository() -> None:
    assert "../" not in DOC and "/work/" not in DOC and "shared/" not in DOC


def test_every_repository_path_named_in_contracts_exists() -> None:
    paths = named_paths()
    assert "lightning_t5/train/fit.py" in paths and "docs/reference.md" in paths  # the check sees the doc's paths
    missing = [p for p in paths if not (list(ROOT.glob(p)) if "*" in p else (ROOT / p).exists())]
    assert not missing, f"docs/CONTRACTS.md names paths that do not exist: {missing}"
