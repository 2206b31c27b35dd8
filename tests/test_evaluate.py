"""What a run's evaluation writes (intervals, real counts, majority class, predictions, strict JSON) and
`python -m lightning_t5.evaluate` on a tiny trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_train_helpers import compose_config

TASKS = ["glue_rte", "glue_mrpc"]


def strict_json(path: Path):
    """json.loads that rejects NaN / Infinity (not JSON; strict parsers refuse the file)."""
    def refuse(token: str):
        raise ValueError(f"{path}: non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from lightning_t5.train.fit import fit

    root = tmp_path_factory.mktemp("eval_run")
    cfg = compose_config(root, "trainer.max_steps=2", "eval.max_examples=6", "eval.batch_size=6",
                         "data.batch_size=8", "trainer.enable_progress_bar=false",
                         f"eval.tasks=[{','.join(TASKS)}]", fast=False, run_name="tiny")
    return fit(cfg)


def test_run_metrics_have_intervals_counts_majority_and_are_strict_json(tiny_run: dict) -> None:
    run_dir = Path(tiny_run["run_dir"])
    saved = strict_json(run_dir / "metrics.json")
    strict_json(run_dir / "eval_before.json")
    assert saved["num_examples"] == {t: 6 for t in TASKS} and saved["eval_split"] == "validation"
    for task in TASKS:
        assert set(saved["ci"][task]) == set(saved["metrics"][task])
        for metric, (lo, hi) in saved["ci"][task].items():
            assert lo <= saved["metrics"][task][metric] <= hi, (task, metric)
        maj = saved["majority"][task]
        assert maj["prediction"] in ("entailment", "not_entailment", "equivalent", "not_equivalent")
        assert set(maj["metrics"]) == set(saved["metrics"][task])
    # RTE's majority class scored on the same 6 validation examples: the share of the majority label there
    rows = [json.loads(line) for line in (run_dir / "predictions" / "glue_rte.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"inputs", "targets", "target", "prediction", "generated", "rank_prediction",
                               "majority_prediction"} <= set(rows[0])
    share = 100 * sum(r["target"] == rows[0]["majority_prediction"] for r in rows) / 6
    assert saved["majority"]["glue_rte"]["metrics"]["accuracy"] == pytest.approx(share)
    md = (run_dir / "results.md").read_text()
    assert "glue_mrpc 6, glue_rte 6 examples" in md and "up to 6" not in md
    assert "| 95% CI | majority class |" in md


def test_evaluate_cli_scores_a_checkpoint_like_training_did(tiny_run: dict, tmp_path: Path, capsys) -> None:
    from lightning_t5.evaluate import main

    out = tmp_path / "held_out"
    assert main(["--ckpt", tiny_run["run_dir"], "--tasks", *TASKS, "--split", "validation", "--max-examples", "6",
                 "--out", str(out)]) == 0
    result = strict_json(out / "metrics.json")
    # same checkpoint, same examples, same generation settings: the metrics training reported at its end
    for task in TASKS:
        assert result["metrics"][task] == pytest.approx(tiny_run["metrics"][task])
    assert result["num_examples"] == {t: 6 for t in TASKS} and result["split"] == "validation"
    assert set(result["ci"]["glue_mrpc"]) == set(result["metrics"]["glue_mrpc"])
    assert len((out / "predictions" / "glue_mrpc.jsonl").read_text().splitlines()) == 6
    assert "| glue_rte | accuracy | 6 |" in (out / "results.md").read_text()
    assert "written to" in capsys.readouterr().out
    # a checkpoint file works too, with the default output folder next to the run
    ckpt = Path(tiny_run["checkpoint"])
    assert main(["--ckpt", str(ckpt), "--tasks", "glue_rte", "--max-examples", "3"]) == 0
    assert strict_json(ckpt.parent.parent / "evaluate_validation" / "metrics.json")["num_examples"] == {"glue_rte": 3}


@pytest.mark.parametrize("args, message", [
    (["--tasks", "glue_rtee"], "unknown task"),
    (["--tasks", "glue_rte", "--split", "tset"], "has splits"),
    (["--imports", "no_such_module_xyz", "--tasks", "glue_rte"], "no_such_module_xyz"),
])
def test_evaluate_cli_errors_are_one_line(tiny_run: dict, args, message, capsys) -> None:
    from lightning_t5.evaluate import main

    assert main(["--ckpt", tiny_run["run_dir"], *args]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_cli_missing_checkpoint(tmp_path: Path, capsys) -> None:
    from lightning_t5.evaluate import main

    assert main(["--ckpt", str(tmp_path / "nowhere"), "--tasks", "glue_rte"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_truncation_report_and_generation_length(tiny_run: dict) -> None:
    """16.7: the share of each task cut by data.sequence_length (train and eval split), and a generation length
    derived from the targets instead of a fixed default that could cut them."""
    from tasks import TaskRegistry

    saved = strict_json(Path(tiny_run["run_dir"]) / "metrics.json")
    rte = {e["split"]: e for e in saved["truncation"]["glue_rte"]}
    task = TaskRegistry.get("glue_rte")
    lengths = np.array([len(ids) + 1 for ids in task.vocabulary.encode_batch(
        [ex["inputs"] for ex in task.text_examples("validation")])])  # + EOS
    assert rte["validation"]["examples"] == len(lengths)
    assert rte["validation"]["inputs"]["truncated_share"] == pytest.approx(float((lengths > 128).mean()))
    assert rte["validation"]["inputs"]["p95"] == int(np.ceil(np.percentile(lengths, 95)))
    assert 0 < rte["train"]["inputs"]["truncated_share"] < 1 and rte["train"]["targets"]["truncated"] == 0
    md = (Path(tiny_run["run_dir"]) / "results.md").read_text()
    assert "| glue_rte | validation |" in md and "fits 95 %" in md
    # eval.max_new_tokens is null by default: each task generates up to its longest target (incl. EOS)
    longest = max(len(ids) + 1 for ids in task.vocabulary.encode_batch(["entailment", "not_entailment"]))
    assert saved["max_new_tokens"]["glue_rte"] == longest


def test_explicit_generation_length_that_cuts_targets_is_warned(tiny_run: dict, tmp_path: Path, caplog) -> None:
    from lightning_t5.evaluate import main

    with caplog.at_level("WARNING"):
        assert main(["--ckpt", tiny_run["run_dir"], "--tasks", "glue_mrpc", "--max-examples", "4",
                     "--max-new-tokens", "1", "--out", str(tmp_path / "o")]) == 0
    assert "eval.max_new_tokens=1 is shorter than 100.0% of the targets" in caplog.text
    assert strict_json(tmp_path / "o" / "metrics.json")["max_new_tokens"] == {"glue_mrpc": 1}


@pytest.mark.parametrize("writer", ["metrics", "run_config", "mixing", "checkpoint"])
def test_run_directory_files_are_written_durably(writer: str, tmp_path: Path, monkeypatch) -> None:
    """metrics.json, config.yaml, mixing.json and checkpoints (a resume reads them back) go through one durable
    writer (`tasks.utils.write_atomic`): the file's data and the folder entry are fsynced, and no temporary file is
    left beside them."""
    import os

    import tasks.utils
    from lightning_t5.dist.checkpoint import write_file
    from lightning_t5.eval.evaluation import write_json
    from mixtures.stages import write_run_file
    from tasks.utils import write_text_atomic

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else str(fd))
        real_fsync(fd)

    monkeypatch.setattr(tasks.utils.os, "fsync", fsync)
    if writer == "metrics":
        path = tmp_path / "metrics.json"
        write_json(path, {"score": float("nan"), "n": 3})
        assert json.loads(path.read_text()) == {"n": 3, "score": None}
    elif writer == "run_config":
        path = tmp_path / "config.yaml"
        write_text_atomic(path, "seed: 42\n")
        assert path.read_text() == "seed: 42\n"
    elif writer == "mixing":
        path = write_run_file(tmp_path, {"every": 4})
        assert json.loads(path.read_text()) == {"every": 4}
    else:
        path = tmp_path / "last.ckpt"
        write_file({"global_step": 3, "w": torch.ones(2)}, path)
        assert torch.load(path, weights_only=True)["global_step"] == 3
    assert len(synced) == 2 and str(tmp_path) in synced, synced  # the temp file's data, then the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
