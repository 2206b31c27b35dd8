"""The T5 paper's reference numbers for the comparisons this package reproduces.

Source: Raffel et al., "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer",
JMLR 21(140), 2020 (arXiv:1910.10683). All scores are on the validation sets, T5-Base sized model, 2^35 tokens
of pre-training (2^19 steps of 128 x 512 tokens) and 2^18 fine-tuning steps.

Only numbers that were checked against a copy of the paper are recorded here; a missing value means "not
checked", never "zero". Columns use the paper's headings:

* ``glue`` / ``super_glue``: benchmark averages (GLUE, SGLUE), ``squad`` (exact match), ``cnndm`` (ROUGE-2),
  ``ende`` / ``enfr`` / ``enro`` (BLEU).

Checked:

* Table 1: the baseline average (GLUE 83.28, CNNDM 19.24, SQuAD 80.88, SGLUE 71.36, EnDe 26.98, EnFr 39.82,
  EnRo 27.65), its standard deviation over 10 runs (0.235 / 0.065 / 0.343 / 0.416 / 0.112 / 0.090 / 0.108; the
  paper treats it as the noise level of every row) and the "no pre-training" row (2^18 fine-tuning steps from
  scratch: 66.22 / 17.60 / 50.31 / 53.04 / 25.86 / 39.77 / 24.04).
* Table 12, all columns, all five strategies.
* Table 11, GLUE column: equal mixing, examples-proportional K = 2^16 .. 2^21, temperature-scaled T = 2, 4, 8 at
  K = 2^21 (the other columns of Table 11 are not recorded).
"""

from __future__ import annotations

from typing import Mapping

PAPER_CITATION = "Raffel et al. 2020, JMLR 21(140) (arXiv:1910.10683)"

# Display names of the paper's columns (also the order they are shown in).
PAPER_COLUMNS: dict[str, str] = {
    "glue": "GLUE",
    "cnndm": "CNNDM",
    "squad": "SQuAD",
    "super_glue": "SGLUE",
    "ende": "EnDe",
    "enfr": "EnFr",
    "enro": "EnRo",
}

_BASELINE = {
    "glue": 83.28,
    "cnndm": 19.24,
    "squad": 80.88,
    "super_glue": 71.36,
    "ende": 26.98,
    "enfr": 39.82,
    "enro": 27.65,
}

_COLS = ("glue", "cnndm", "squad", "super_glue", "ende", "enfr", "enro")


def _row(*values: float) -> dict[str, float]:
    return dict(zip(_COLS, values))


# Table 1: standard deviation of the baseline over 10 independent runs, and the no-pre-training row.
BASELINE_STD: dict[str, float] = _row(0.235, 0.065, 0.343, 0.416, 0.112, 0.090, 0.108)
NO_PRETRAINING: dict[str, float] = _row(66.22, 17.60, 50.31, 53.04, 25.86, 39.77, 24.04)

# Table 12: training strategies. Keys are this package's strategy ids (lightning_t5.experiments.plan.STRATEGIES).
TABLE_12: dict[str, dict[str, float]] = {
    "pretrain_finetune": dict(_BASELINE),
    "multitask": _row(81.42, 19.24, 79.78, 67.30, 25.21, 36.30, 27.76),
    "multitask_pretrain_finetune": _row(83.11, 19.12, 80.26, 71.03, 27.08, 39.80, 28.07),
    "leave_one_out": _row(81.98, 19.05, 79.97, 71.68, 26.93, 39.79, 27.87),
    "supervised_pretrain_finetune": _row(79.93, 18.96, 77.38, 65.36, 26.81, 40.13, 28.04),
    # MT-DNN-style multi-task fine-tuning is not a row of the paper's Table 12.
}

# Table 11: mixing strategies for multi-task training (2^19 + 2^18 steps). Keys are sweep row ids
# (lightning_t5.experiments.plan: "baseline", "equal", "proportional_k<K>", "temperature_t<T>").
TABLE_11: dict[str, dict[str, float]] = {
    "baseline": dict(_BASELINE),
    "equal": {"glue": 76.13},
    "proportional_k65536": {"glue": 80.45},
    "proportional_k131072": {"glue": 81.56},
    "proportional_k262144": {"glue": 81.67},
    # Table 12's "multi-task training" row *is* examples-proportional mixing with K = 2^19 (Section 3.7.3).
    "proportional_k524288": {"glue": 81.42},
    "proportional_k1048576": {"glue": 80.80},
    "proportional_k2097152": {"glue": 79.83},
    "temperature_t2": {"glue": 81.90},
    "temperature_t4": {"glue": 80.56},
    "temperature_t8": {"glue": 77.21},
}

# Table 12 ordering by GLUE average (best first), the paper's headline comparison.
TABLE_12_GLUE_ORDER: tuple[str, ...] = tuple(
    sorted((k for k, v in TABLE_12.items() if "glue" in v), key=lambda k: -TABLE_12[k]["glue"])
)


def paper_row(kind: str, key: str) -> Mapping[str, float]:
    """The paper's numbers for one row of an experiment (`kind` "strategies" or "mixing_sweep"); {} if none."""
    if key == "no_pretraining":
        return NO_PRETRAINING
    table = TABLE_12 if kind == "strategies" else TABLE_11
    return table.get(key, {})
