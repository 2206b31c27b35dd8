"""Shared test setup: no network, and every cache under a per-session temporary directory."""

from __future__ import annotations

import os

import pytest

# Fail fast instead of retrying the Hugging Face Hub (tests never reach it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _lightning_t5_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point LIGHTNING_T5_CACHE (tokenized and source caches) at a session temp dir."""
    old = os.environ.get("LIGHTNING_T5_CACHE")
    os.environ["LIGHTNING_T5_CACHE"] = str(tmp_path_factory.mktemp("lightning_t5_cache"))
    yield
    if old is None:
        os.environ.pop("LIGHTNING_T5_CACHE", None)
    else:
        os.environ["LIGHTNING_T5_CACHE"] = old


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A test-private LIGHTNING_T5_CACHE, for tests that inspect cache files."""
    path = tmp_path / "cache"
    monkeypatch.setenv("LIGHTNING_T5_CACHE", str(path))
    return path
