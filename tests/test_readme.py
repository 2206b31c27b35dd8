"""The README walk-through, run as a new user would: its `my_tasks.py` block, its check command and its commands.

The code is taken from README.md itself (so the README cannot drift from the code); only the step budgets and the
model are shrunk so the commands take seconds. Every command runs as a subprocess from a scratch directory that holds
the user's `my_tasks.py` next to a copy of `train.py` (with `configs/` and `data/` linked in), as the README says.

Hermetic: a user's own `my_tasks.py` in the repository root must not change these tests. Every subprocess therefore
gets, ahead of the repository on PYTHONPATH, a directory whose `my_tasks.py` fails on import; the tests pass only
because the scratch directory's module wins, which is also what protects them from a file in the repository root.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
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


SHADOW_ERROR = "a my_tasks.py outside the user's directory was imported"


def write_books(folder: Path, documents: int = 100) -> None:
    """The user's own plain-text corpus the README's `my_corpus` reads: paragraphs of the shipped books, one per line,
    in books/book_1.txt, book_2.txt and held_out.txt."""
    texts = [json.loads(line)["text"] for line in
             (ROOT / "data" / "english_corpus" / "train.jsonl").read_text().splitlines()[:documents]]
    paragraphs = [" ".join(p.split()) for text in texts for p in text.split("\n\n") if p.strip()]
    fifth = len(paragraphs) // 5
    folder.mkdir()
    for name, part in (("book_1", paragraphs[:2 * fifth]), ("book_2", paragraphs[2 * fifth:4 * fifth]),
                       ("held_out", paragraphs[4 * fifth:])):
        (folder / f"{name}.txt").write_text("\n".join(part) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch directory as a user would set it up: my_tasks.py next to train.py, configs/ and data/ beside them."""
    directory = tmp_path_factory.mktemp("user")
    (directory / "my_tasks.py").write_text(readme_block("# my_tasks.py") + "\n"
                                           + readme_block("# my_tasks.py, continued"))
    write_books(directory / "books")
    shutil.copy(ROOT / "train.py", directory / "train.py")
    for name in ("configs", "data"):
        (directory / name).symlink_to(ROOT / name, target_is_directory=True)
    return directory


@pytest.fixture(scope="module")
def shadow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stands in for a conflicting my_tasks.py in the repository root (it sits where the repository sits on the
    path)."""
    directory = tmp_path_factory.mktemp("shadow")
    (directory / "my_tasks.py").write_text(f"raise ImportError({SHADOW_ERROR!r})\n")
    return directory


def run(argv: list[str], user_dir: Path, shadow_dir: Path, timeout: int = 600, cwd: Path | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow_dir), str(ROOT)]))
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    out = subprocess.run(argv, cwd=cwd or user_dir, env=env, capture_output=True, text=True, timeout=timeout,
                         check=False)
    if check:
        assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


def test_a_conflicting_my_tasks_elsewhere_on_the_path_is_live_but_loses(user_dir: Path, shadow_dir: Path,
                                                                         tmp_path: Path) -> None:
    """The guard is real: from a directory without my_tasks.py the conflicting module is what gets imported;
    from the user's directory (next to train.py) the user's module wins."""
    elsewhere = run(["python", "-c", "import my_tasks"], user_dir, shadow_dir, cwd=tmp_path, check=False)
    assert elsewhere.returncode != 0 and SHADOW_ERROR in elsewhere.stderr
    mine = run(["python", "-c", "import my_tasks; print(my_tasks.__file__)"], user_dir, shadow_dir)
    assert Path(mine.stdout.strip()).parent == user_dir


def test_readme_task_registration_and_check_command(user_dir: Path, shadow_dir: Path) -> None:
    check = re.search(r"Check it: `(python -c .*?)`", README)
    assert check, "README lost its check command"
    out = run(shlex.split(check.group(1)), user_dir, shadow_dir)
    first = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - the printed dict of our own example
    assert first["inputs"].startswith("review: ") and first["targets"] in ("negative", "positive")


@pytest.mark.slow
def test_readme_train_on_my_mixture_and_strategy_comparison(user_dir: Path, shadow_dir: Path,
                                                            tmp_path: Path) -> None:
    """Step 2 (train on the user's mixture) and step 4 (the strategy comparison on the user's tasks), shrunk."""
    train = readme_command("python train.py imports=[my_tasks] mixture=my_mix ")
    train = [a for a in train if not a.startswith("trainer.max_steps")]
    run([*train, *SHRINK, "trainer.max_steps=4", f"output_dir={tmp_path}", "run_name=mine"], user_dir, shadow_dir)
    metrics = json.loads((tmp_path / "mine" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and set(metrics["metrics"]) == {"my_reviews", "my_summaries", "glue_rte"}
    assert {"rouge1", "rouge2", "rougeLsum"} <= set(metrics["metrics"]["my_summaries"])  # the generation task

    strategies = readme_command("python train.py imports=[my_tasks] experiment=strategies_tiny")
    run([*strategies, "experiment_options.strategies=[pretrain_finetune,multitask]",
         "experiment_options.pretrain_steps=4", "experiment_options.finetune_steps=2", f"output_dir={tmp_path}",
         "experiment_options.overrides.eval.max_examples=8", "experiment_options.overrides.data.batch_size=4",
         *SHRINK[:6]], user_dir, shadow_dir)
    results = json.loads((tmp_path / "strategies_tiny" / "results.json").read_text())
    assert [r["key"] for r in results["rows"]] == ["pretrain_finetune", "multitask"]
    assert all(set(r["metrics"]) == {"my_reviews", "glue_rte"} for r in results["rows"])
    assert (tmp_path / "strategies_tiny" / "results.md").is_file()


def test_readme_cli_commands_see_the_users_module(user_dir: Path, shadow_dir: Path) -> None:
    """`python -m tasks show ... imports=[my_tasks]` and `python -m mixtures show ... imports=[my_tasks] --json`,
    as written in the README; `--imports` after the sub-command works too."""
    shown = run(readme_command("python -m tasks show my_summaries"), user_dir, shadow_dir)
    assert "summarize: " in shown.stdout
    mixture = run(readme_command("python -m mixtures show my_mix"), user_dir, shadow_dir)
    assert set(json.loads(mixture.stdout)) == {"my_reviews", "my_summaries", "glue_rte", "corpus_span_corruption"}
    text = run(["python", "-m", "mixtures", "show", "my_mix", "-n", "0", "--imports", "my_tasks"], user_dir,
               shadow_dir)
    assert "mixing: rate=proportional, K=none (no cap)" in text.stdout


def test_readme_corpus_task_from_the_users_text_files(user_dir: Path, shadow_dir: Path) -> None:
    """The README's `my_corpus`: a FileSource over .txt files, span corruption, registered in the user's module."""
    shown = run(readme_command("python -m tasks show my_corpus"), user_dir, shadow_dir)
    assert "=== my_corpus [" in shown.stdout and "<extra_id_0>" in shown.stdout, shown.stdout[-2000:]
    mixture = run([*readme_command("python -m mixtures show my_mix_own_corpus"), "-n", "0", "--steps", "0"],
                  user_dir, shadow_dir)
    sizes = {task: row["size"] for task, row in json.loads(mixture.stdout).items()}
    assert set(sizes) == {"my_reviews", "glue_rte", "my_corpus"} and sizes["my_corpus"] > 0, sizes


@pytest.mark.slow
def test_readme_train_on_the_users_corpus(user_dir: Path, shadow_dir: Path, tmp_path: Path) -> None:
    train = readme_command("python train.py imports=[my_tasks] mixture=my_mix_own_corpus")
    train = [a for a in train if not a.startswith("trainer.max_steps")]
    run([*train, *SHRINK, "trainer.max_steps=3", f"output_dir={tmp_path}", "run_name=corpus"], user_dir, shadow_dir)
    metrics = json.loads((tmp_path / "corpus" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and set(metrics["metrics"]) == {"my_reviews", "glue_rte"}  # the corpus trains only


def test_readme_explicit_weights_command(user_dir: Path, shadow_dir: Path) -> None:
    """`mixing.weights={...}` as the README writes it gives the shares of those weights."""
    argv = readme_command("python -m mixtures show my_mix imports=[my_tasks] mixing.rate=explicit")
    shown = json.loads(run([*argv, "-n", "0", "--steps", "0"], user_dir, shadow_dir).stdout)
    assert {task: row["share"] for task, row in shown.items()} == pytest.approx(
        {"my_reviews": 2 / 8, "my_summaries": 1 / 8, "glue_rte": 1 / 8, "corpus_span_corruption": 4 / 8})


def test_readme_links_the_experiments_page() -> None:
    assert "](docs/experiments.md)" in README
