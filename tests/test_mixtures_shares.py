"""One computation of a task's size and share (issue 24, item 1): `python -m mixtures show`, the start-up log, the
checkpoint, metrics.json and the experiment table agree for a user mixture with a corpus task, at the run's own
lengths; `python -m tasks cache` and `python -m mixtures show` read train.py's defaults and overrides."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from test_train_helpers import compose_config

USER_MODULE = "share_user_tasks"
LENGTHS = ["data.sequence_length.inputs=64", "data.sequence_length.targets=16"]


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A user's module: their own classification task, their own corpus task, a mixture with GLUE RTE."""
    folder = tmp_path_factory.mktemp("user")
    data = Path(__file__).resolve().parents[1] / "data"
    (folder / f"{USER_MODULE}.py").write_text(textwrap.dedent(f"""
        from mixtures import MixtureRegistry
        from tasks import Task, TaskRegistry, metrics, preprocessors
        from tasks.catalog.corpus import objective_preprocessors
        from tasks.sources import FileSource

        LABELS = ["negative", "positive"]

        def review(row):
            return {{"inputs": "review: " + row["sentence"], "targets": LABELS[int(row["label"])]}}

        TaskRegistry.add(Task("share_reviews", FileSource({{"train": "{data}/sst2/train.jsonl",
                                                            "validation": "{data}/sst2/validation.jsonl"}}),
                              [review], metric_fns=[metrics.accuracy], label_choices=LABELS), replace=True)
        TaskRegistry.add(Task("share_books", FileSource({{"train": "{data}/english_corpus/train.jsonl",
                                                          "validation": "{data}/english_corpus/validation.jsonl"}}),
                              [lambda row: preprocessors.lm_text(row, text_key="text")],
                              token_preprocessors=objective_preprocessors("span_corruption"), supervised=False),
                         replace=True)
        MixtureRegistry.add("share_mix", ["share_reviews", "glue_rte", "share_books"], replace=True)
    """))
    sys.path.insert(0, str(folder))
    yield USER_MODULE
    sys.path.remove(str(folder))


def _show_json(capsys, *args: str) -> dict:
    from mixtures.__main__ import main

    capsys.readouterr()
    assert main(["show", *args, "-n", "0", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _logged_shares(text: str, names: list[str]) -> dict[str, float]:
    """The `share` column of the start-up table ("each task's size, planned shares ...")."""
    block = text.split("each task's size, planned shares and planned passes", 1)[1]
    out = {}
    for name in names:
        m = re.search(rf"^{re.escape(name)}\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)", block, re.M)
        out[name] = float(m.group(4))
    return out


def _checkpoint_rates(path: Path) -> dict[str, float]:
    from mixtures.stages import _find_sampler_state

    state = _find_sampler_state(torch.load(path, map_location="cpu", weights_only=True))
    return {n: v[0] for n, v in state["rates"].items()}


@pytest.mark.slow
def test_show_log_checkpoint_metrics_and_experiment_table_agree(user_module, tmp_path, capsys):
    from lightning_t5.experiments import run_experiment
    from lightning_t5.experiments.plan import mixture_name
    from mixtures import MixtureRegistry

    cfg = compose_config(
        tmp_path, f"imports=[{user_module}]", "experiment=mixing_sweep_tiny",
        "experiment_options.tasks=[share_reviews,glue_rte]", "experiment_options.corpus_task=share_books",
        "experiment_options.equal=false", "experiment_options.proportional_k=[1000000]",
        "experiment_options.temperatures=[]", "experiment_options.pretrain_steps=2",
        "experiment_options.finetune_steps=1", "experiment_options.overrides.data.sequence_length.inputs=64",
        "experiment_options.overrides.data.sequence_length.targets=16",
        "experiment_options.overrides.data.batch_size=4", "experiment_options.overrides.eval.max_examples=4",
        fast=False)
    capsys.readouterr()
    table = run_experiment(cfg)
    log = capsys.readouterr().out
    names = ["share_reviews", "glue_rte", "share_books"]
    row = table["rows"][0]
    (stage_dir,) = (tmp_path / "mixing_sweep_tiny" / "stages").iterdir()  # the sweep's one multi-task stage
    experiment_table = row["mixing_rates"]
    metrics = json.loads((stage_dir / "metrics.json").read_text())["shares"]["planned"]["examples"]
    checkpoint = _checkpoint_rates(stage_dir / "checkpoints" / "last.ckpt")
    logged = _logged_shares(log, names)
    mixture = mixture_name("mixing_sweep_tiny", "all")  # the sweep's mixture of the user's tasks and corpus
    assert MixtureRegistry.get(mixture).task_names == names
    shown = {n: v["share"] for n, v in _show_json(capsys, mixture, *LENGTHS).items()}
    md = (tmp_path / "mixing_sweep_tiny" / "results.md").read_text()
    for name in names:
        assert experiment_table[name] == pytest.approx(metrics[name], abs=1e-12), name
        assert checkpoint[name] == pytest.approx(metrics[name], abs=1e-12), name
        assert shown[name] == pytest.approx(metrics[name], abs=1e-12), name
        assert logged[name] == pytest.approx(metrics[name], abs=5e-5), name  # printed with 4 decimals
        assert f"{100 * metrics[name]:.1f}%" in md
    # the corpus task is sized at the run's lengths (64/16), not at a tool's own default (512/114 before)
    sizes = json.loads((stage_dir / "metrics.json").read_text())["shares"]["sizes"]
    from tasks import TaskRegistry

    books = TaskRegistry.get("share_books")
    assert sizes["share_books"] == books.num_examples("train", {"inputs": 64, "targets": 16})
    assert sizes["share_books"] > 2 * books.num_examples("train", {"inputs": 512, "targets": 114})
    # and the run drew about what it planned (3 steps of packed batches: a loose check)
    drawn = json.loads((stage_dir / "metrics.json").read_text())["shares"]["drawn"]
    assert sum(drawn["counts"][n]["examples"] for n in names) > 0
    assert "| share_books |" in (stage_dir / "results.md").read_text()


def test_show_reads_train_defaults_and_overrides(user_module, capsys):
    """No flags: the lengths, batch size and steps of configs/config.yaml (128/32, 32, 500), like train.py."""
    from mixtures.__main__ import main

    __import__(user_module)
    from tasks import TaskRegistry

    books = TaskRegistry.get("share_books")
    default = _show_json(capsys, "share_mix")
    assert default["share_books"]["size"] == books.num_examples("train", {"inputs": 128, "targets": 32})
    over = _show_json(capsys, "share_mix", *LENGTHS, "mixing.rate=equal")
    assert over["share_books"]["size"] == books.num_examples("train", {"inputs": 64, "targets": 16})
    assert over["share_books"]["share"] == pytest.approx(1 / 3)
    capsys.readouterr()
    assert main(["show", "share_mix", "-n", "0", "data.sequence_lenght.inputs=64"]) == 2
    assert "unknown config key 'data.sequence_lenght.inputs'. Did you mean sequence_length?" in capsys.readouterr().err
    assert main(["show", "share_mix", "-n", "0", "trainer.max_steps=1000", "data.batch_size=8"]) == 0
    assert "in 1000 steps of 8 x 1 sequences" in capsys.readouterr().out


def test_tasks_cache_builds_the_cache_train_reads(user_module, fresh_cache):
    """`python -m tasks cache NAME` with train.py's defaults (and overrides) builds the cache a run with the same
    settings opens, instead of a 512/114 cache no default run reads."""
    from tasks.__main__ import main
    from tasks.cache import open_cache

    __import__(user_module)
    from tasks import TaskRegistry

    books = TaskRegistry.get("share_books")
    assert main(["cache", "share_books"]) == 0
    assert open_cache(books, "train", {"inputs": 128, "targets": 32}) is not None
    assert open_cache(books, "train", {"inputs": 512, "targets": 114}) is None
    assert main(["cache", "share_books", *LENGTHS]) == 0
    assert open_cache(books, "train", {"inputs": 64, "targets": 16}) is not None


def test_stages_of_a_config_and_a_run(user_module, tmp_path, capsys):
    from mixtures.__main__ import main
    from mixtures.stages import write_run_file

    capsys.readouterr()
    assert main(["show", "share_mix", "--stages", "-n", "0",
                 "mixing.stages=[{start_step:0,weights:{glue_rte:1}},{start_step:50,weights:{share_books:1}}]"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+0\s+mixing.stages\s+0.0000\s+1.0000\s+0.0000$", out, re.M), out
    assert re.search(r"^\s+50\s+mixing.stages\s+0.0000\s+0.0000\s+1.0000$", out, re.M), out
    write_run_file(tmp_path, {"task_names": ["a", "b"], "every": 10, "adaptive": "odm", "blocks": [], "stages": [
        {"start_step": 0, "source": "rates", "shares": {"a": 0.25, "b": 0.75}},
        {"start_step": 20, "source": "odm", "shares": {"a": 0.5, "b": 0.5}}]})
    assert main(["show", str(tmp_path), "--stages"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+20\s+odm\s+0.5000\s+0.5000$", out, re.M) and "adaptive method 'odm'" in out
    from mixtures import read_run_stages

    assert read_run_stages(tmp_path) == [{"start_step": 0, "weights": {"a": 0.25, "b": 0.75}},
                                         {"start_step": 20, "weights": {"a": 0.5, "b": 0.5}}]
