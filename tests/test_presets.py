"""Model presets are defined once (lightning_t5.model.config.PRESETS); configs/model/*.yaml are generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_t5.model.config import PRESETS, preset_yaml

MODEL_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"


def test_every_yaml_preset_has_a_python_definition_and_back() -> None:
    assert sorted(p.stem for p in MODEL_DIR.glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("name", list(PRESETS))
def test_yaml_preset_is_what_presets_generate(name: str) -> None:
    assert (MODEL_DIR / f"{name}.yaml").read_text() == preset_yaml(name), (
        f"configs/model/{name}.yaml differs from PRESETS[{name!r}]: edit PRESETS in lightning_t5/model/config.py, then "
        f"regenerate: python -c \"from lightning_t5.model.config import write_preset_yamls; "
        f"write_preset_yamls('configs/model')\"")
