"""`imports=[...]` and `--imports M` are accepted anywhere on the command line of all three entry points."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

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
    spec = importlib.util.spec_from_file_location("train_entry", Path(__file__).resolve().parents[1] / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    assert train.normalise_argv(["--imports", "a", "mixture=m", "imports=[b]"]) == ["mixture=m", "imports=[a,b]"]


USER_MODULE = '''
from mixtures import MixtureRegistry
from tasks import InMemorySource, Task, TaskRegistry

ROWS = [{"text": f"row {i}", "label": i % 2} for i in range(8)]


def fmt(row):
    return {"inputs": "classify: " + row["text"], "targets": ["no", "yes"][row["label"]]}


TaskRegistry.add(Task("cwd_user_task", InMemorySource({"train": ROWS, "validation": ROWS}), [fmt],
                      label_choices=["no", "yes"]), replace=True)
MixtureRegistry.add("cwd_user_mix", ["cwd_user_task", "glue_rte"], replace=True)
'''


def test_every_cli_imports_the_users_module_from_the_directory_it_runs_in(tmp_path) -> None:
    """Issue 24 item 5: `python /path/to/train.py imports=[my_tasks]` run from the folder holding `my_tasks.py` finds
    it, like `python -m tasks` and `python -m mixtures` do; no PYTHONPATH, only the installed package."""
    root = Path(__file__).resolve().parents[1]
    user = tmp_path / "user"
    user.mkdir()
    (user / "my_tasks.py").write_text(USER_MODULE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["LIGHTNING_T5_CACHE"] = str(tmp_path / "cache")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], cwd=user, env=env, capture_output=True, text=True, timeout=300)

    shown = run("-m", "tasks", "show", "cwd_user_task", "imports=[my_tasks]", "-n", "1")
    assert shown.returncode == 0 and "classify: row 0" in shown.stdout, shown.stderr[-2000:]
    mixture = run("-m", "mixtures", "show", "cwd_user_mix", "--imports", "my_tasks", "-n", "0", "--steps", "0",
                  "--json")
    assert mixture.returncode == 0, mixture.stderr[-2000:]
    assert set(json.loads(mixture.stdout)) == {"cwd_user_task", "glue_rte"}
    # train.py from elsewhere: the module's mixture resolves and the run stops at the first data-free check, which
    # can only name the user's task when `my_tasks` was imported.
    train = run(str(root / "train.py"), "imports=[my_tasks]", "mixture=cwd_user_mix", "eval.tasks=[cwd_user_tsk]",
                f"output_dir={tmp_path / 'runs'}")
    assert train.returncode == 2, train.stderr[-2000:]
    assert "cannot import module" not in train.stderr and "Did you mean: cwd_user_task?" in train.stderr, \
        train.stderr[-2000:]
    assert not (tmp_path / "runs").exists()
