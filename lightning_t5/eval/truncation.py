"""Say, at the start of a run, how much of each task does not fit `data.sequence_length`.

Why: a 1,172-token summarisation input fed to a 128-token encoder is cut without a word, and the model is then
trained and scored on text it never fully sees. For every supervised task of the run this measures the share of
examples whose inputs / targets exceed the configured lengths and the length that would fit 95 % of them. The
lengths are the differences of the token caches' offsets (`tasks.cache`; EOS included): the train splits' caches
are the ones training reads, so nothing is tokenized a second time; an evaluation split is cached on first use.
The report is logged (a warning per truncated task), stored in `metrics.json` under "truncation" and rendered into
`results.md`.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["length_stats", "truncation_report", "render_truncation", "log_truncation"]

log = logging.getLogger(__name__)


def length_stats(lengths: np.ndarray, limit: int) -> dict[str, Any]:
    """{"limit", "truncated_share" (0-1), "truncated", "p95", "max"} of token lengths against `limit`."""
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        return {"limit": int(limit), "truncated": 0, "truncated_share": 0.0, "p95": 0, "max": 0}
    over = int((lengths > limit).sum())
    return {"limit": int(limit), "truncated": over, "truncated_share": over / lengths.size,
            "p95": int(np.ceil(np.percentile(lengths, 95))), "max": int(lengths.max())}


def _split_report(task: Any, split: str, sequence_length: Mapping[str, int]) -> dict[str, Any] | None:
    if split not in getattr(task, "splits", []) or not hasattr(task, "token_cache"):
        return None
    try:
        cache = task.token_cache(split, sequence_length)
    except Exception as err:  # a streaming split without its offline cache: nothing to measure up front
        log.debug("no length report for %s/%s: %s", task.name, split, err)
        return None
    out: dict[str, Any] = {"split": split, "examples": len(cache)}
    for key in ("inputs", "targets"):
        out[key] = length_stats(cache.lengths(key), int(sequence_length[key]))
    return out


def truncation_report(train_tasks: Iterable[Any], eval_tasks: Iterable[Any], sequence_length: Mapping[str, int],
                      eval_split: str = "validation") -> dict[str, list[dict[str, Any]]]:
    """task -> length reports of its train split (training tasks) and its evaluation split (evaluated tasks).
    Unsupervised (corpus) tasks are skipped: their examples are cut to length by design."""
    report: dict[str, list[dict[str, Any]]] = {}
    for tasks, split in ((train_tasks, "train"), (eval_tasks, eval_split)):
        for task in tasks:
            if getattr(task, "supervised", True) is False:
                continue
            entry = _split_report(task, split, sequence_length)
            if entry is not None:
                report.setdefault(task.name, []).append(entry)
    return report


def log_truncation(report: Mapping[str, list[Mapping[str, Any]]]) -> None:
    """One warning per task and split that has truncated examples, naming the lengths that would fit 95 %."""
    for task, entries in report.items():
        for e in entries:
            for key in ("inputs", "targets"):
                s = e[key]
                if s["truncated"]:
                    log.warning("%s/%s: %.1f%% of %d examples have %s longer than data.sequence_length.%s=%d "
                                "(truncated); %d tokens would fit 95%% (longest %d)", task, e["split"],
                                100 * s["truncated_share"], e["examples"], key, key, s["limit"], s["p95"], s["max"])


def render_truncation(report: Mapping[str, list[Mapping[str, Any]]]) -> str:
    """Markdown table of the report (results.md)."""
    lines = ["Sequence lengths (tokens incl. EOS) against data.sequence_length: share of examples truncated, and "
             "the length that fits 95 % of them.", "",
             "| task | split | examples | inputs truncated | inputs 95% / max | targets truncated "
             "| targets 95% / max |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for task, entries in sorted(report.items()):
        for e in entries:
            i, t = e["inputs"], e["targets"]
            lines.append(f"| {task} | {e['split']} | {e['examples']} | "
                         f"{100 * i['truncated_share']:.1f}% (> {i['limit']}) | {i['p95']} / {i['max']} | "
                         f"{100 * t['truncated_share']:.1f}% (> {t['limit']}) | {t['p95']} / {t['max']} |")
    return "\n".join(lines)


def report_for_run(mixture: Any, cfg: Any) -> dict[str, list[dict[str, Any]]]:
    """The report for one run config (the mixture's tasks, the evaluated tasks), logged; what `fit` stores."""
    from tasks import TaskRegistry

    eval_names = cfg.eval.tasks
    eval_tasks = [TaskRegistry.get(n) for n in eval_names] if eval_names is not None else list(mixture.tasks)
    seq = {"inputs": int(cfg.data.sequence_length.inputs), "targets": int(cfg.data.sequence_length.targets)}
    report = truncation_report(mixture.tasks, eval_tasks, seq, eval_split=str(cfg.eval.split))
    log_truncation(report)
    return report
