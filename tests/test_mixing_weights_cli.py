"""Explicit mixing weights on the command line (issue 24 item 8): the whole mapping `mixing.weights={a:2,b:1}` and one
key at a time `mixing.weights.a=2` both reach MixingConfig, through `train.py`'s composition and `python -m mixtures
show` alike."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from test_train_helpers import compose_config

from mixtures import MixtureRegistry

ROOT = Path(__file__).resolve().parents[1]
MIX = "weights_cli_mix"
SPELLINGS = [
    ["mixing.weights={glue_rte:2,super_glue_cb:1}"],
    ["mixing.weights.glue_rte=2", "mixing.weights.super_glue_cb=1"],
    ["mixing.weights={glue_rte:2}", "mixing.weights.super_glue_cb=1"],
]


@pytest.fixture(scope="module", autouse=True)
def _mixture():
    MixtureRegistry.add(MIX, ["glue_rte", "super_glue_cb"], replace=True)
    yield
    MixtureRegistry.remove(MIX)


def _normalise_argv(argv: list[str]) -> list[str]:
    """train.py's own command-line handling (run before Hydra composes the config)."""
    spec = importlib.util.spec_from_file_location("train_entry", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    return train.normalise_argv(argv)


@pytest.mark.parametrize("weights", SPELLINGS, ids=["mapping", "keys", "both"])
def test_train_py_accepts_explicit_weights_in_both_spellings(tmp_path: Path, weights: list[str]) -> None:
    from lightning_t5.train.setup import RunSetup, prepare_config

    argv = _normalise_argv([f"mixture={MIX}", "mixing.rate=explicit", *weights])
    setup = RunSetup(prepare_config(compose_config(tmp_path, *argv)))
    assert setup.mixing.weights == {"glue_rte": 2, "super_glue_cb": 1}
    shares = setup.mixture.rates("train", setup.mixing)
    assert shares == pytest.approx({"glue_rte": 2 / 3, "super_glue_cb": 1 / 3})


def test_a_weights_value_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    from mixtures import MixtureError

    from lightning_t5.train.setup import RunSetup, prepare_config

    argv = _normalise_argv([f"mixture={MIX}", "mixing.rate=explicit", "mixing.weights=3"])
    with pytest.raises(MixtureError, match="mixing.weights must map task names to weights, got int"):
        RunSetup(prepare_config(compose_config(tmp_path, *argv)))


@pytest.mark.parametrize("weights", SPELLINGS, ids=["mapping", "keys", "both"])
def test_mixtures_show_accepts_explicit_weights_in_both_spellings(capsys, weights: list[str]) -> None:
    from mixtures.__main__ import main

    assert main(["show", MIX, "mixing.rate=explicit", *weights, "-n", "0", "--steps", "0", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {t: v["share"] for t, v in shown.items()} == pytest.approx({"glue_rte": 2 / 3, "super_glue_cb": 1 / 3})


def test_mixtures_show_value_errors_are_one_line(capsys) -> None:
    from mixtures.__main__ import main

    assert main(["show", MIX, "mixing.weights={glue_rte:2", "-n", "0", "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot parse override 'mixing.weights={glue_rte:2'") and err.count("\n") == 1
