"""End to end through `python train.py experiment=...` with the real training engine (slow: trains ~20 stages)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=3600)


def test_strategies_tiny_end_to_end_and_rerun_reuses(tmp_path):
    args = ["experiment=strategies_tiny", f"output_dir={tmp_path}", "experiment_options.pretrain_steps=4",
            "experiment_options.finetune_steps=2", "experiment_options.tasks=[glue_rte,super_glue_cb]",
            "experiment_options.overrides.eval.max_examples=8"]
    first = train(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "strategies_tiny"
    results = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in results["rows"]] == ["pretrain_finetune", "multitask", "multitask_pretrain_finetune",
                                                    "leave_one_out", "supervised_pretrain_finetune", "mtdnn",
                                                    "no_pretraining"]
    assert all(r["status"] == "done" for r in results["rows"])
    for row in results["rows"]:
        assert set(row["metrics"]) == {"glue_rte", "super_glue_cb"}
        budget = 2 if row["key"] == "no_pretraining" else 6  # no pre-training: the M fine-tuning steps only
        assert row["budget_steps_per_task"] == {"glue_rte": budget, "super_glue_cb": budget}
        assert row["compute"]["tokens"] > 0 and row["compute"]["wall_time_s"] > 0
        assert row["num_examples"] == {"glue_rte": 8, "super_glue_cb": 8}
        # intervals from the per-example predictions, and a paired test against the baseline for every other row
        for task, metrics in row["metrics"].items():
            for metric, value in metrics.items():
                lo, hi = row["ci"][task][metric]
                assert lo <= value <= hi
        lo, hi = row["averages_ci"]["overall"]
        assert lo <= row["averages"]["overall"] <= hi
        if row["key"] != "pretrain_finetune":
            assert 0 < row["vs_baseline"]["p_holm"] <= 1 and "significant" in row["vs_baseline"]
    assert results["baseline"] == "pretrain_finetune" and results["majority"]["metrics"]["glue_rte"]["accuracy"] > 0
    assert results["rows"][-1]["paper"]["glue"] == 66.22  # Table 1's no-pre-training row beside ours
    assert "pairs_not_separable" in results["ordering"]
    md = (out / "results.md").read_text()
    assert "Majority class (reference)" in md and "(n=8)" in md and "vs pretrain_finetune" in md
    with open(out / "results.csv") as f:
        assert [r["key"] for r in csv.DictReader(f)][-1] == "majority_class"
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # every stage's own run folder, with the checkpoint the next stage started from
    ft = json.loads((out / "stages" / "pretrain__ft_glue_rte" / "stage.json").read_text())
    assert ft["init_from"] == str(out / "stages" / "pretrain" / "checkpoints" / "last.ckpt")
    assert "stage 1/" in first.stdout

    again = train(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage 1/" not in again.stdout  # nothing retrained
    assert json.loads((out / "results.json").read_text())["rows"][0]["averages"] == results["rows"][0]["averages"]


def test_mixing_sweep_tiny_end_to_end(tmp_path):
    args = ["experiment=mixing_sweep_tiny", f"output_dir={tmp_path}", "experiment_options.pretrain_steps=4",
            "experiment_options.finetune_steps=2", "experiment_options.tasks=[glue_rte,super_glue_cb]",
            "experiment_options.proportional_k=[64]", "experiment_options.temperatures=[2]",
            "experiment_options.overrides.eval.max_examples=8"]
    done = train(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "mixing_sweep_tiny" / "results.json").read_text())
    assert [r["key"] for r in results["rows"]] == ["equal", "proportional_k64", "temperature_t2"]
    assert all(r["status"] == "done" and r["compute"]["steps"] == 6 for r in results["rows"])
    cfg = (tmp_path / "mixing_sweep_tiny" / "stages" / "mix_temperature_t2" / "config.yaml").read_text()
    assert "rate: temperature" in cfg and "temperature: 2.0" in cfg
