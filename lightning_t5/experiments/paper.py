"""The T5 paper's reference numbers for the comparisons this package reproduces.

Source: Raffel et al., "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer",
JMLR 21(140), 2020 (arXiv:1910.10683). All scores are on the validation sets, T5-Base sized model, 2^35 tokens
of pre-training (2^19 steps of 128 x 512 tokens) and 2^18 fine-tuning steps.

Only numbers that were checked against a copy of the paper are recorded here; a missing value means "not
checked", never "zero". Columns use the paper's headings:

* ``glue`` / ``super_glue``: benchmark averages (GLUE, SGLUE), ``squad`` (exact match), ``cnndm`` (ROUGE-2),
  ``ende`` / ``enfr`` / ``enro`` (BLEU).

Checked:

* The baseline row ("Unsupervised pre-training + fine-tuning" of Table 12, "Baseline (pre-train/fine-tune)" of
  Table 11, the "Baseline average" of Table 1): 83.28 GLUE, 19.24 CNNDM, 80.88 SQuAD, 71.36 SGLUE, 26.98 EnDe,
  39.82 EnFr, 27.65 EnRo (Table 1 text, arXiv v4, p. 14).
* Table 12's GLUE column for the other strategies: 81.42 multi-task training, 83.11 multi-task pre-training +
  fine-tuning, 81.98 leave-one-out, 79.93 supervised multi-task pre-training (the issue text of this project,
  matching Section 3.7's summary that multi-task pre-training + fine-tuning is comparable to the baseline).

Not recorded (could not be verified from a copy of the paper while this was written): the other columns of
Table 12 and the non-baseline rows of Table 11 (equal mixing, examples-proportional K = 2^16..2^21,
temperature-scaled T = 2, 4, 8). Add them to ``TABLE_11`` / ``TABLE_12`` below once checked; the results table
picks them up automatically.
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

# Table 12: training strategies. Keys are this package's strategy ids (lightning_t5.experiments.plan.STRATEGIES).
TABLE_12: dict[str, dict[str, float]] = {
    "pretrain_finetune": dict(_BASELINE),
    "multitask": {"glue": 81.42},
    "multitask_pretrain_finetune": {"glue": 83.11},
    "leave_one_out": {"glue": 81.98},
    "supervised_pretrain_finetune": {"glue": 79.93},
    # MT-DNN-style multi-task fine-tuning is not a row of the paper's Table 12.
}

# Table 11: mixing strategies for multi-task training (2^19 + 2^18 steps). Keys are sweep row ids
# (lightning_t5.experiments.plan: "baseline", "equal", "proportional_k<K>", "temperature_t<T>").
TABLE_11: dict[str, dict[str, float]] = {
    "baseline": dict(_BASELINE),
    # Table 12's "multi-task training" row *is* examples-proportional mixing with K = 2^19 (Section 3.7.3).
    "proportional_k524288": {"glue": 81.42},
}

# Table 12 ordering by GLUE average (best first), the paper's headline comparison.
TABLE_12_GLUE_ORDER: tuple[str, ...] = tuple(
    sorted((k for k, v in TABLE_12.items() if "glue" in v), key=lambda k: -TABLE_12[k]["glue"])
)


def paper_row(kind: str, key: str) -> Mapping[str, float]:
    """The paper's numbers for one row of an experiment (`kind` "strategies" or "mixing_sweep"); {} if none."""
    table = TABLE_12 if kind == "strategies" else TABLE_11
    return table.get(key, {})
