"""`imports=[...]` and `--imports M` are accepted anywhere on the command line of all three entry points."""

from __future__ import annotations

import pytest

from tasks import TaskError, pop_imports


@pytest.mark.parametrize("argv,modules,rest", [
    (["show", "my_mix", "imports=[my_tasks]", "--json"], ["my_tasks"], ["show", "my_mix", "--json"]),
    (["--imports", "my_tasks", "show", "x"], ["my_tasks"], ["show", "x"]),
    (["show", "x", "--imports=a,b", "-n", "1"], ["a", "b"], ["show", "x", "-n", "1"]),
    (["imports=[a, 'b']", "--imports", "c", "mixture=m"], ["a", "b", "c"], ["mixture=m"]),
    (["+imports=[a]"], ["a"], []),
    (["mixture=m", "trainer.max_steps=1"], [], ["mixture=m", "trainer.max_steps=1"]),
])
def test_pop_imports_anywhere(argv: list[str], modules: list[str], rest: list[str]) -> None:
    assert pop_imports(argv) == (modules, rest)


def test_imports_flag_without_a_module_is_an_error() -> None:
    with pytest.raises(TaskError, match="--imports needs a module name"):
        pop_imports(["show", "--imports"])


def test_train_py_turns_imports_flags_into_one_override() -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("train_entry", Path(__file__).resolve().parents[1] / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    assert train.normalise_argv(["--imports", "a", "mixture=m", "imports=[b]"]) == ["mixture=m", "imports=[a,b]"]
