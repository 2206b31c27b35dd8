"""The README's walk-through, run as a new user types it, and the README's other examples of the user's own tasks.

`test_readme_walkthrough_from_an_empty_folder` takes every code block of the README section "Walk-through: your own
tasks, ..." in order and runs them in ONE bash shell started in an empty temporary folder (not the repository), as
a user would type them: a bash block as it is written, a Python block saved under the file name on its first line.
The only substitution is the README's placeholder for the checkout's path. The training command is interrupted by
a real SIGINT to the shell's process group (what Ctrl-C in a terminal sends) after a few steps; the rest of the
path (resume, export, transformers) must then work from what that Ctrl-C left. Nothing else in the README is
shrunk, so the README and this test cannot drift.

The other tests use the folder the walk-through's first blocks build (folder, data, `my_tasks.py`) plus the blocks of
"Your own tasks: more", and run single README commands in it (shrunk where they train).

Hermetic: a user's own `my_tasks.py` elsewhere (e.g. in the repository root) must not change these tests. Every
subprocess therefore gets on PYTHONPATH a directory whose `my_tasks.py` fails on import; the tests pass only because
the module in the folder the command runs from wins.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PLACEHOLDER = "/path/to/lightning-t5"  # the README's "your checkout"; the tests put the repository there
WALK = "## Walk-through: your own tasks"
MORE = "## Your own tasks: more"
EXPERIMENTS = "## Experiments on your own tasks"
SHRINK = ["model.d_model=64", "model.d_ff=128", "model.num_heads=2", "model.d_kv=32", "model.num_layers=1",
          "model.num_decoder_layers=1", "data.batch_size=4", "data.sequence_length.inputs=64",
          "data.sequence_length.targets=16", "eval.max_examples=8", "eval.batch_size=8", "eval.max_new_tokens=4",
          "trainer.enable_progress_bar=false"]
SHADOW_ERROR = "a my_tasks.py outside the user's directory was imported"
MARK = "@@readme-block"     # echoed by the shell before each block: "@@readme-block <i> <working directory>"
STATUS = "@@readme-status"  # echoed after the interrupted command: its exit status
BLOCK_END = "README_BLOCK_END"


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


def section_blocks(heading: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced bash/python block of the README section starting with `heading`, in order."""
    start = README.index(heading)
    end = README.find("\n## ", start + len(heading))
    section = README[start:end if end >= 0 else len(README)]
    return re.findall(r"```(python|bash)\n(.*?)```", section, flags=re.S)


def shell_script(blocks: list[tuple[str, str]]) -> str:
    """One bash script typing `blocks` in order: bash as written, Python saved as the file its first line names
    (`# name.py...`; `# name.py, continued...` appends); the block with "Ctrl-C" in it may end with status 130."""
    lines = ["set -eo pipefail"]
    for i, (language, code) in enumerate(blocks):
        lines.append(f'echo "{MARK} {i} $PWD"')
        if language == "python":
            name = re.match(r"# (\w+\.py)(, continued)?\b", code)
            assert name, f"a Python block of the walk-through must start with '# <file>.py': {code[:80]!r}"
            assert BLOCK_END not in code
            lines.append(f"cat {'>>' if name.group(2) else '>'} {name.group(1)} <<'{BLOCK_END}'\n{code}{BLOCK_END}")
        elif "Ctrl-C" in code:
            lines += ["set +e", code.rstrip(), f'echo "{STATUS} $?"', "set -e"]
        else:
            lines.append(code.rstrip())
    lines.append(f'echo "{MARK} end $PWD"')
    return "\n".join(lines).replace(PLACEHOLDER, str(ROOT)) + "\n"


def as_typed(command: str) -> str:
    """A README command line as the shell runs it ($LT5 is the checkout)."""
    return command.replace("$LT5", str(ROOT))


@pytest.fixture(scope="module")
def shadow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stands in for a conflicting my_tasks.py elsewhere on the Python path (e.g. in the repository root)."""
    directory = tmp_path_factory.mktemp("shadow")
    (directory / "my_tasks.py").write_text(f"raise ImportError({SHADOW_ERROR!r})\n")
    return directory


def user_env(shadow_dir: Path, cache: Path | None = None) -> dict[str, str]:
    """The environment of a user's shell: the project's python first on PATH (what the README's `export PATH` does
    when the checkout has its .venv), nothing of the repository on PYTHONPATH, output unbuffered as on a terminal."""
    env = dict(os.environ, PYTHONPATH=str(shadow_dir), PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.pop("LT5", None)
    if cache is not None:
        env["LIGHTNING_T5_CACHE"] = str(cache)
    return env


def run_script(script: str, cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    out = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                         check=False)
    assert out.returncode == 0, f"the README's blocks failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory, shadow_dir: Path) -> Path:
    """The walk-through's folder, set up by its own blocks (folder, data, my_tasks.py), plus the blocks of "Your own
    tasks: more" that add to it (the articles, the generation task)."""
    walk = section_blocks(WALK)
    upto = next(i for i, (_, code) in enumerate(walk) if code.startswith("# my_tasks.py"))
    more = [b for b in section_blocks(MORE) if b[1].startswith(("mkdir", "# my_tasks.py, continued"))]
    assert len(more) == 2, more
    home = tmp_path_factory.mktemp("home")
    out = run_script(shell_script(walk[:upto + 1] + more), home, user_env(shadow_dir))
    folder = Path(re.findall(rf"^{MARK} end (.+)$", out, re.M)[-1])
    assert folder.parent == home and (folder / "my_tasks.py").is_file()
    return folder


def run(argv: list[str], user_dir: Path, shadow_dir: Path, timeout: int = 600, cwd: Path | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    argv = [as_typed(a) for a in argv]
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    out = subprocess.run(argv, cwd=cwd or user_dir, env=user_env(shadow_dir), capture_output=True, text=True,
                         timeout=timeout, check=False)
    if check:
        assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


# ----------------------------------------------------------------------------------------------- the walk-through
class Shell:
    """The user's terminal: one bash running the walk-through, its output in a file read as it grows."""

    def __init__(self, script: str, cwd: Path, env: dict[str, str], log: Path) -> None:
        (cwd / ".walkthrough.sh").write_text(script)
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(["bash", str(cwd / ".walkthrough.sh")], cwd=cwd, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, deadline: float, after: int = 0) -> re.Match:
        while True:
            found = re.compile(pattern, re.M).search(self.output(), after)
            if found:
                return found
            assert self.proc.poll() is None, f"the shell ended before {pattern!r}:\n{self.output()[-6000:]}"
            assert time.time() < deadline, f"no {pattern!r} in time:\n{self.output()[-6000:]}"
            time.sleep(0.1)

    def ctrl_c(self) -> None:
        """What Ctrl-C in a terminal does: SIGINT to the foreground process group (here: bash and its command)."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def block_outputs(text: str) -> dict[str, str]:
    """The shell's output split at the markers: block index ("0", "1", ..., "end") -> its lines."""
    outputs: dict[str, str] = {}
    current = None
    for line in text.splitlines():  # also splits at the progress bar's carriage returns
        marker = re.match(rf"{MARK} (\S+) ", line)
        if marker:
            current = marker.group(1)
            outputs[current] = ""
        elif current is not None:
            outputs[current] += line + "\n"
    return outputs


def shares_table(text: str, names: set[str]) -> dict[str, float]:
    """The `share` column of the table `python -m mixtures show` and the start of training print."""
    header = re.search(r"^task\s+size\s+rated by\s+rate\s+share\b", text, re.M)
    assert header, text[-3000:]
    rows = re.findall(r"^(\S+)\s+\d+\s+\d+\s+\S+\s+(\S+)", text[header.end():], re.M)
    shares = {name: float(share) for name, share in rows if name in names}
    assert set(shares) == names, (shares, text[-3000:])
    return shares


@pytest.mark.slow
def test_readme_walkthrough_from_an_empty_folder(tmp_path: Path, shadow_dir: Path) -> None:
    """Folder, data, my_tasks.py (a supervised task and a corpus task), tasks show, tasks cache, mixtures show,
    train + Ctrl-C, resume, export, transformers: each README block in order in one shell; every step checked."""
    blocks = section_blocks(WALK)
    script = shell_script(blocks)
    interrupted = next(i for i, (lang, code) in enumerate(blocks) if lang == "bash" and "Ctrl-C" in code)
    train_command = blocks[interrupted][1].split("#")[0].strip()
    resume_command = blocks[interrupted + 1][1].strip()
    max_steps = int(re.search(r"trainer\.max_steps=(\d+)", train_command).group(1))
    cache = tmp_path / "cache"  # a new user's empty cache
    home = tmp_path / "home"
    home.mkdir()
    shell = Shell(script, home, user_env(shadow_dir, cache), tmp_path / "terminal.log")
    deadline = time.time() + 600
    try:
        started = shell.wait_for(rf"^{MARK} {interrupted} (.+)$", deadline)
        folder = Path(started.group(1))
        run_dir = folder / shell.wait_for(r"^run directory: (\S+)$", deadline, started.end()).group(1)
        log = run_dir / "train_log.jsonl"
        while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
            assert shell.proc.poll() is None and time.time() < deadline, shell.output()[-6000:]
            time.sleep(0.1)
        shell.ctrl_c()
        assert shell.wait_for(rf"^{STATUS} (\d+)$", deadline, started.end()).group(1) == "130", shell.output()[-6000:]
        shell.proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        shell.close()
    text = shell.output()
    assert shell.proc.returncode == 0 and f"{MARK} end " in text, text[-6000:]
    out = block_outputs(text)

    # the folder is the user's own, outside the checkout, holding what the blocks made
    assert folder.parent == home and not folder.is_relative_to(ROOT)
    assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == \
        ["books", "my_data", "my_t5", "my_tasks.py", "runs", "use_my_t5.py"]
    names = {"my_questions", "glue_rte", "glue_sst2", "my_books"}

    # tasks show / cache: the corpus task's token cache is built once, at train.py's lengths, and training used it
    def block(prefix: str) -> str:
        """The output of the block with a line starting with `prefix`."""
        return out[next(str(i) for i, (_, code) in enumerate(blocks)
                        if any(line.startswith(prefix) for line in code.splitlines()))]

    cache_out = block("python -m tasks cache my_books")
    assert re.search(r"^my_books/train: [\d,]+ rows", cache_out, re.M), cache_out
    assert len(list((cache / "tokens" / "my_books").glob("*/v*"))) == 1

    # mixtures show, the start-up log and metrics.json: the same shares
    shown = shares_table(block("python -m mixtures show my_first_mix"), names)
    logged = shares_table(out[str(interrupted)], names)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    planned = metrics["shares"]["planned"]["examples"]
    assert set(planned) == names
    for name in names:
        assert shown[name] == pytest.approx(planned[name], abs=5e-5), name  # printed with 4 decimals
        assert logged[name] == pytest.approx(planned[name], abs=5e-5), name

    # Ctrl-C: stopped at a step boundary, saved, said how to resume (a command that works from this folder)
    stopped = re.search(r"^interrupted at step (\d+); resumable checkpoint saved to (\S+)\.$", out[str(interrupted)],
                        re.M)
    assert stopped and 2 <= int(stopped.group(1)) < max_steps, out[str(interrupted)][-3000:]
    resume_lines = re.findall(r"^Resume with: (.+)$", out[str(interrupted)], re.M)
    assert resume_lines == [as_typed(resume_command)], (resume_lines, resume_command)
    # resume: every step once, to the end
    steps = [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, max_steps + 1)) and metrics["steps"] == max_steps

    # export + transformers: the README's script prints, per evaluated task, what the run generated and what the
    # exported model generates; they agree (texts with an unknown piece or a sentinel decode differently by design)
    assert re.search(r"^exported runs/first -> my_t5 \(model and tokenizer\)$",
                     block("python -m lightning_t5.export"), re.M)
    used = block("python use_my_t5.py")
    printed = re.findall(r"^(\w+): (.+) \(the run generated (.+); target (.+)\)$", used, re.M)
    assert {task for task, *_ in printed} == {"my_questions", "glue_rte", "glue_sst2"}, used
    assert len(printed) == 12
    answers = [(ast.literal_eval(answer), ast.literal_eval(generated)) for _, answer, generated, _ in printed]
    comparable = [(a, g) for a, g in answers if "⁇" not in g and "<extra_id" not in g]
    assert len(comparable) >= 8 and all(a == g for a, g in comparable), answers
    check_export_ids(folder / "my_t5", run_dir)


def check_export_ids(export: Path, run_dir: Path) -> None:
    """What the printed texts cannot show: on the run's own evaluation inputs, AutoTokenizer gives the project's
    token ids, and T5ForConditionalGeneration generates the ids the project's model (from the checkpoint) generates,
    which decode to the run's predictions."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from lightning_t5.dist.checkpoint import load_model
    from tasks import get_default_vocabulary

    vocab = get_default_vocabulary()
    tokenizer = AutoTokenizer.from_pretrained(str(export))
    model = T5ForConditionalGeneration.from_pretrained(str(export)).eval()
    ours = load_model(run_dir / "checkpoints" / "last.ckpt").eval()
    max_new_tokens = json.loads((run_dir / "metrics.json").read_text())["max_new_tokens"]
    for task, length in max_new_tokens.items():
        rows = [json.loads(line) for line in (run_dir / "predictions" / f"{task}.jsonl").read_text().splitlines()]
        rows = rows[:8]
        batch = tokenizer([r["inputs"] for r in rows], max_length=128, truncation=True, padding=True,
                          return_tensors="pt")
        expected = [ids[:127] + [vocab.eos_id] for ids in vocab.encode_batch([r["inputs"] for r in rows])]
        assert [ids[:int(n)] for ids, n in zip(batch.input_ids.tolist(), batch.attention_mask.sum(1))] == expected
        with torch.no_grad():
            theirs = model.generate(**batch, max_new_tokens=length, do_sample=False, num_beams=1)[:, 1:]
            reference = ours.generate(batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=length)
        width = max(theirs.shape[1], reference.shape[1])
        pad = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in (theirs, reference)]
        assert torch.equal(*pad), task
        assert [vocab.decode(ids) for ids in theirs.tolist()] == [r["generated"] for r in rows], task


# ------------------------------------------------------------------------------------ "Your own tasks: more" etc.
def test_a_conflicting_my_tasks_elsewhere_on_the_path_is_live_but_loses(user_dir: Path, shadow_dir: Path,
                                                                         tmp_path: Path) -> None:
    """The guard is real: from a directory without my_tasks.py the conflicting module is what gets imported;
    from the user's folder the user's module wins."""
    elsewhere = run(["python", "-c", "import my_tasks"], user_dir, shadow_dir, cwd=tmp_path, check=False)
    assert elsewhere.returncode != 0 and SHADOW_ERROR in elsewhere.stderr
    mine = run(["python", "-c", "import my_tasks; print(my_tasks.__file__)"], user_dir, shadow_dir)
    assert Path(mine.stdout.strip()).parent == user_dir


def test_readme_python_check_of_the_module(user_dir: Path, shadow_dir: Path) -> None:
    check = re.search(r"`(python -c \"import my_tasks; .*?)`", README)
    assert check, "README lost its Python check of my_tasks"
    out = run(shlex.split(check.group(1)), user_dir, shadow_dir)
    first = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - the printed dict of our own example
    assert first["inputs"].startswith("question: ") and first["targets"] in ("no", "yes")


def test_readme_cli_commands_see_the_users_module(user_dir: Path, shadow_dir: Path) -> None:
    """`python -m tasks show ... imports=[my_tasks]` and `python -m mixtures show ... imports=[my_tasks] --json`,
    as written in the README; `--imports` after the sub-command works too."""
    shown = run(readme_command("python -m tasks show my_summaries"), user_dir, shadow_dir)
    assert "summarize: " in shown.stdout
    mixture = run(readme_command("python -m mixtures show my_mix imports=[my_tasks] --json"), user_dir, shadow_dir)
    assert set(json.loads(mixture.stdout)) == {"my_questions", "my_summaries", "glue_rte", "my_books"}
    text = run(["python", "-m", "mixtures", "show", "my_mix", "-n", "0", "--imports", "my_tasks"], user_dir,
               shadow_dir)
    assert "mixing: rate=proportional, K=none (no cap)" in text.stdout


def test_readme_explicit_weights_command(user_dir: Path, shadow_dir: Path) -> None:
    """`mixing.weights={...}` as the README writes it gives the shares of those weights."""
    argv = readme_command("python -m mixtures show my_mix imports=[my_tasks] mixing.rate=explicit")
    shown = json.loads(run([*argv, "-n", "0", "--steps", "0"], user_dir, shadow_dir).stdout)
    assert {task: row["share"] for task, row in shown.items()} == pytest.approx(
        {"my_questions": 2 / 8, "my_summaries": 1 / 8, "glue_rte": 1 / 8, "my_books": 4 / 8})


@pytest.mark.slow
def test_readme_train_on_my_mix_and_strategy_comparison(user_dir: Path, shadow_dir: Path, tmp_path: Path) -> None:
    """"Your own tasks: more" (train on the mixture with the generation task) and the strategy comparison of
    "Experiments on your own tasks", shrunk."""
    train = readme_command("python $LT5/train.py imports=[my_tasks] mixture=my_mix ")
    train = [a for a in train if not a.startswith("trainer.max_steps")]
    run([*train, *SHRINK, "trainer.max_steps=4", f"output_dir={tmp_path}", "run_name=mine"], user_dir, shadow_dir)
    metrics = json.loads((tmp_path / "mine" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and set(metrics["metrics"]) == {"my_questions", "my_summaries", "glue_rte"}
    assert {"rouge1", "rouge2", "rougeLsum"} <= set(metrics["metrics"]["my_summaries"])  # the generation task

    strategies = readme_command("python $LT5/train.py imports=[my_tasks] experiment=strategies_tiny")
    assert strategies in [shlex.split(line) for _, code in section_blocks(EXPERIMENTS) for line in code.splitlines()]
    run([*strategies, "experiment_options.strategies=[pretrain_finetune,multitask]",
         "experiment_options.pretrain_steps=4", "experiment_options.finetune_steps=2", f"output_dir={tmp_path}",
         "experiment_options.overrides.eval.max_examples=8", "experiment_options.overrides.data.batch_size=4",
         *SHRINK[:6]], user_dir, shadow_dir)
    results = json.loads((tmp_path / "strategies_tiny" / "results.json").read_text())
    assert [r["key"] for r in results["rows"]] == ["pretrain_finetune", "multitask"]
    assert all(set(r["metrics"]) == {"my_questions", "glue_rte"} for r in results["rows"])
    assert (tmp_path / "strategies_tiny" / "results.md").is_file()


def test_readme_links_the_experiments_page_and_its_settings_reference() -> None:
    """One copy of the experiment settings: docs/experiments.md; the README links to it."""
    assert "](docs/experiments.md)" in README
    assert "](docs/experiments.md#reference-experiment-settings-experiment_options)" in README
    assert "## Reference: experiment settings" not in README
    page = (ROOT / "docs" / "experiments.md").read_text()
    assert "## Reference: experiment settings (`experiment_options.*`)" in page
    assert "(../README.md#walk-through-your-own-tasks-from-an-empty-folder-to-a-model-transformers-loads)" in page
    assert README.count("\n## Walk-through: your own tasks, from an empty folder to a model transformers loads\n") == 1
