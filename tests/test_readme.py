"""The README walk-through, run as a new user would: its `my_tasks.py` block, its check command and its commands.

The code is taken from README.md itself (so the README cannot drift from the code); only the step budgets and the
model are shrunk so the commands take seconds. `python train.py` runs as a subprocess from the repository root, with
the user's module on PYTHONPATH, exactly as the README says.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SHRINK = ["model.d_model=64", "model.d_ff=128", "model.num_heads=2", "model.d_kv=32", "model.num_layers=1",
          "model.num_decoder_layers=1", "data.batch_size=4", "data.sequence_length.inputs=64",
          "data.sequence_length.targets=16", "eval.max_examples=8", "eval.batch_size=8", "eval.max_new_tokens=4",
          "trainer.enable_progress_bar=false"]


def readme_block(marker: str) -> str:
    """The fenced code block of README.md that contains `marker`."""
    for block in re.findall(r"```(?:python|bash)\n(.*?)```", README, flags=re.S):
        if marker in block:
            return block
    raise AssertionError(f"README.md has no code block containing {marker!r}")


def readme_command(prefix: str) -> list[str]:
    """The README's command line starting with `prefix` (first match, backslash continuations joined), as argv."""
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if line.strip().startswith(prefix):
                return shlex.split(line.split("#")[0])
    raise AssertionError(f"README.md has no command starting with {prefix!r}")


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("user")
    (directory / "my_tasks.py").write_text(readme_block("# my_tasks.py"))
    return directory


def run(argv: list[str], user_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(user_dir), str(ROOT)]))
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


def test_readme_task_registration_and_check_command(user_dir: Path) -> None:
    check = re.search(r"Check it: `(python -c .*?)`", README)
    assert check, "README lost its check command"
    out = run(shlex.split(check.group(1)), user_dir)
    first = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - the printed dict of our own example
    assert first["inputs"].startswith("review: ") and first["targets"] in ("negative", "positive")


@pytest.mark.slow
def test_readme_train_on_my_mixture_and_strategy_comparison(user_dir: Path, tmp_path: Path) -> None:
    """Step 2 (train on the user's mixture) and step 4 (the strategy comparison on the user's tasks), shrunk."""
    train = readme_command("python train.py imports=[my_tasks] mixture=my_mix")
    train = [a for a in train if not a.startswith("trainer.max_steps")]
    run([*train, *SHRINK, "trainer.max_steps=4", f"output_dir={tmp_path}", "run_name=mine"], user_dir)
    metrics = json.loads((tmp_path / "mine" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and set(metrics["metrics"]) == {"my_reviews", "glue_rte"}

    strategies = readme_command("python train.py imports=[my_tasks] experiment=strategies_tiny")
    run([*strategies, "experiment_options.strategies=[pretrain_finetune,multitask]",
         "experiment_options.pretrain_steps=4", "experiment_options.finetune_steps=2", f"output_dir={tmp_path}",
         "experiment_options.overrides.eval.max_examples=8", "experiment_options.overrides.data.batch_size=4",
         *SHRINK[:6]], user_dir)
    results = json.loads((tmp_path / "strategies_tiny" / "results.json").read_text())
    assert [r["key"] for r in results["rows"]] == ["pretrain_finetune", "multitask"]
    assert all(set(r["metrics"]) == {"my_reviews", "glue_rte"} for r in results["rows"])
    assert (tmp_path / "strategies_tiny" / "results.md").is_file()
