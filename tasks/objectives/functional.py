"""The T5 paper's pretraining objectives as pure, batch-vectorized numpy functions.

Every function takes a batch of raw-token windows (a ``[B, L]`` array, or a list of 1-D arrays of any
lengths) and one uint64 seed per row, and returns ``{"inputs": [...], "targets": [...]}`` (lists of int
arrays, no EOS: :meth:`tasks.Task.finalize` appends it). Row ``i`` of the output depends only on row
``i`` and ``seeds[i]``, so results do not depend on batch size, dataloader workers or ranks.

All objectives are instances of one recipe, T5's ``denoise``: a noise mask (``random_spans``, ``iid``,
``prefix`` or ``all``), an inputs function and a targets function:

=====================  ============  ==================  ==================
objective              noise_mask    inputs              targets
=====================  ============  ==================  ==================
span_corruption        random_spans  unique_sentinels    unique_sentinels
iid_replace_spans      iid           unique_sentinels    unique_sentinels
iid_drop               iid           drop                noise
mask_tokens / mass     iid           mask                original
bert_mlm               iid           bert (80/10/10)     original
prefix_lm              prefix        drop                noise
deshuffle              all           permute             original
=====================  ============  ==================  ==================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tasks.objectives import masks, rng, transforms
from tasks.objectives.transforms import Ragged

INPUTS_FNS = ("unique_sentinels", "drop", "mask", "bert", "permute")
TARGETS_FNS = ("unique_sentinels", "noise", "original")
DEFAULT_NUM_SENTINELS = 100

Tokens = np.ndarray | Sequence[np.ndarray]


def _check_kinds(noise_mask: str, inputs: str, targets: str) -> None:
    if noise_mask not in masks.NOISE_MASKS:
        raise ValueError(f"unknown noise_mask {noise_mask!r}; choose one of {sorted(masks.NOISE_MASKS)}.")
    if inputs not in INPUTS_FNS:
        raise ValueError(f"unknown inputs function {inputs!r}; choose one of {list(INPUTS_FNS)}.")
    if targets not in TARGETS_FNS:
        raise ValueError(f"unknown targets function {targets!r}; choose one of {list(TARGETS_FNS)}.")


def raw_window_length(
    sequence_length: Mapping[str, int],
    *,
    noise_mask: str = "random_spans",
    inputs: str = "unique_sentinels",
    targets: str = "unique_sentinels",
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> int:
    """How many raw tokens one window should hold so the objective's outputs fit ``sequence_length``.

    Lengths in ``sequence_length`` include the EOS that ``Task.finalize`` appends.

    * random spans with sentinel/drop inputs and targets: T5's :func:`random_spans_helper` (512 -> 568
      raw tokens), shortened further if the requested targets length is smaller than the helper's;
      outputs then have exactly the requested inputs length, never more.
    * prefix LM: ``min(inputs, targets)``: prefix and suffix both hold at most ``L - 1`` tokens.
    * everything else: ``inputs - 1`` (inputs never get longer than the window), and also at most
      ``targets - 1`` when the targets are the full original. Random-length targets of i.i.d. objectives
      (e.g. replace spans at 15 %: 512 -> about 192) are trimmed to the requested length, as seqio does.
    """
    _check_kinds(noise_mask, inputs, targets)
    try:
        seq_in, seq_tg = int(sequence_length["inputs"]), int(sequence_length["targets"])
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"sequence_length must be a mapping with int 'inputs' and 'targets'; got {sequence_length!r}."
        ) from err
    if seq_in < 2 or seq_tg < 2:
        raise ValueError(f"sequence_length {dict(sequence_length)} leaves no room for a token plus EOS.")
    if noise_mask == "prefix":
        return min(seq_in, seq_tg)
    if (noise_mask == "random_spans" and inputs in ("unique_sentinels", "drop")
            and targets in ("unique_sentinels", "noise")):
        extra_in = int(inputs == "unique_sentinels")
        extra_tg = int(targets == "unique_sentinels")
        raw, _ = masks.random_spans_helper(seq_in, noise_density, mean_noise_span_length, extra_in, extra_tg)
        while raw > 1:
            num_noise, num_spans = masks.random_spans_counts(raw, noise_density, mean_noise_span_length)
            if raw - num_noise + num_spans * extra_in + 1 <= seq_in and num_noise + num_spans * extra_tg + 1 <= seq_tg:
                break
            raw -= 1
        return raw
    raw = seq_in - 1
    if targets == "original":
        raw = min(raw, seq_tg - 1)
    return raw


def _denoise_dense(
    tokens: np.ndarray,
    seeds: np.ndarray,
    *,
    vocabulary_size: int,
    noise_mask: str,
    inputs: str,
    targets: str,
    noise_density: float,
    mean_noise_span_length: float,
    mask_prob: float,
    random_prob: float,
    num_sentinels: int | None,
    random_token_range: tuple[int, int] | None,
) -> tuple[Ragged, Ragged]:
    """One group of equal-length windows: ``tokens`` is ``[B, L]``."""
    length = tokens.shape[1]
    mask = masks.noise_mask(noise_mask, length, noise_density, seeds, mean_noise_span_length)
    if num_sentinels is not None and noise_mask != "random_spans" and "unique_sentinels" in (inputs, targets):
        # random spans have a fixed span count, so too many is a configuration error (raised below);
        # an i.i.d. mask's count is random, so a rare overflowing row is merged instead of failing a run.
        # (targets with unique sentinels need one per non-noise run: up to one more than the noise runs)
        mask = masks.cap_noise_spans(mask, max(1, num_sentinels - int(targets == "unique_sentinels")))
    if inputs == "unique_sentinels":
        out_in = transforms.noise_span_to_unique_sentinel(tokens, mask, vocabulary_size, num_sentinels)
    elif inputs == "drop":
        out_in = transforms.drop_noise_tokens(tokens, mask)
    elif inputs == "mask":
        out_in = Ragged.from_dense(transforms.noise_token_to_sentinel(tokens, mask, vocabulary_size))
    elif inputs == "bert":
        low, high = random_token_range or (3, vocabulary_size - (num_sentinels or 0))
        out_in = Ragged.from_dense(
            transforms.noise_token_to_random_token_or_sentinel(
                tokens, mask, seeds, vocabulary_size, mask_prob, random_prob, low, high
            )
        )
    else:  # permute
        out_in = Ragged.from_dense(transforms.permute_noise_tokens(tokens, mask, seeds))
    if targets == "unique_sentinels":
        out_tg = transforms.nonnoise_span_to_unique_sentinel(tokens, mask, vocabulary_size, num_sentinels)
    elif targets == "noise":
        out_tg = transforms.drop_nonnoise_tokens(tokens, mask)
    else:
        out_tg = Ragged.from_dense(tokens)
    return out_in, out_tg


def _as_groups(tokens: Tokens) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
    """Split a batch into ``(row indices, [n, L] array)`` groups of equal length (one group for 2-D input)."""
    if isinstance(tokens, np.ndarray) and tokens.ndim == 2:
        return tokens.shape[0], [(np.arange(tokens.shape[0]), tokens)]
    rows = [np.asarray(r) for r in tokens]
    for i, r in enumerate(rows):
        if r.ndim != 1:
            raise ValueError(f"row {i} of the batch has shape {r.shape}; every raw-token window must be 1-D.")
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    groups = []
    for length in np.unique(lengths):
        index = np.flatnonzero(lengths == length)
        dtype = rows[index[0]].dtype if rows[index[0]].dtype.kind in "iu" else np.int32
        block = np.empty((len(index), int(length)), dtype=dtype)
        for j, i in enumerate(index):
            block[j] = rows[i]
        groups.append((index, block))
    return len(rows), groups


def denoise(
    tokens: Tokens,
    seeds: np.ndarray,
    *,
    vocabulary_size: int,
    noise_mask: str = "random_spans",
    inputs: str = "unique_sentinels",
    targets: str = "unique_sentinels",
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    mask_prob: float = 0.8,
    random_prob: float = 0.1,
    num_sentinels: int | None = DEFAULT_NUM_SENTINELS,
    random_token_range: tuple[int, int] | None = None,
    sequence_length: Mapping[str, int] | None = None,
) -> dict[str, list[np.ndarray]]:
    """T5's ``denoise`` for a whole batch (see the module table for the named objectives).

    Args:
        tokens: ``[B, L]`` int array, or a list of 1-D int arrays (ragged rows are grouped by length).
        seeds: ``[B]`` uint64, one per row.
        vocabulary_size: ids including the extra ids; sentinel ``<extra_id_i>`` is ``vocabulary_size - 1 - i``.
        num_sentinels: how many extra ids the vocabulary has (T5 would silently hand out ordinary token ids
            as sentinels past them). Random spans needing more are an error; an i.i.d. row with more runs
            has its tail merged into its last span (:func:`masks.cap_noise_spans`). ``None``: no limit.
        random_token_range: ``[low, high)`` for BERT's random replacement tokens; default: ids 3 (after pad,
            eos, unk) up to the first sentinel.
        sequence_length: when given, outputs are trimmed to ``length - 1`` (room for EOS).
    """
    _check_kinds(noise_mask, inputs, targets)
    if not 0.0 <= noise_density <= 1.0:
        raise ValueError(f"noise_density must be in [0, 1], got {noise_density}.")
    if mean_noise_span_length <= 0:
        raise ValueError(f"mean_noise_span_length must be > 0, got {mean_noise_span_length}.")
    batch, groups = _as_groups(tokens)
    seeds = rng.as_seeds(seeds, batch)
    max_in = max_tg = None
    if sequence_length is not None:
        max_in, max_tg = int(sequence_length["inputs"]) - 1, int(sequence_length["targets"]) - 1
    out_inputs: list[np.ndarray] = [None] * batch  # type: ignore[list-item]
    out_targets: list[np.ndarray] = [None] * batch  # type: ignore[list-item]
    for index, block in groups:
        r_in, r_tg = _denoise_dense(
            block,
            seeds[index],
            vocabulary_size=vocabulary_size,
            noise_mask=noise_mask,
            inputs=inputs,
            targets=targets,
            noise_density=noise_density,
            mean_noise_span_length=mean_noise_span_length,
            mask_prob=mask_prob,
            random_prob=random_prob,
            num_sentinels=num_sentinels,
            random_token_range=random_token_range,
        )
        if len(groups) == 1:
            return {"inputs": r_in.trim(max_in).rows(), "targets": r_tg.trim(max_tg).rows()}
        for i, a, b in zip(index, r_in.trim(max_in).rows(), r_tg.trim(max_tg).rows()):
            out_inputs[i] = a
            out_targets[i] = b
    return {"inputs": out_inputs, "targets": out_targets}


def span_corruption(
    tokens: Tokens, seeds: np.ndarray, *, vocabulary_size: int, noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0, **kwargs,
) -> dict[str, list[np.ndarray]]:
    """T5's final objective: random spans (15 %, mean length 3), each replaced by a unique sentinel."""
    return denoise(tokens, seeds, vocabulary_size=vocabulary_size, noise_mask="random_spans", inputs="unique_sentinels",
                   targets="unique_sentinels", noise_density=noise_density,
                   mean_noise_span_length=mean_noise_span_length, **kwargs)


def iid_replace_spans(tokens: Tokens, seeds: np.ndarray, *, vocabulary_size: int, noise_density: float = 0.15,
                      **kwargs):
    """"Replace corrupted spans": i.i.d. noise, each run of noise -> a sentinel; targets the runs."""
    return denoise(tokens, seeds, vocabulary_size=vocabulary_size, noise_mask="iid", inputs="unique_sentinels",
                   targets="unique_sentinels", noise_density=noise_density, **kwargs)


def iid_drop(tokens: Tokens, seeds: np.ndarray, *, vocabulary_size: int, noise_density: float = 0.15, **kwargs):
    """"Drop corrupted tokens": i.i.d. noise removed from the inputs; targets are the dropped tokens."""
    return denoise(tokens, seeds, vocabulary_size=vocabulary_size, noise_mask="iid", inputs="drop",
                   targets="noise", noise_density=noise_density, **kwargs)


def mask_tokens(tokens: Tokens, seeds: np.ndarray, *, vocabulary_size: int, noise_density: float = 0.15, **kwargs):
    """"Mask tokens" / T5's MASS-style: every corrupted token -> ``<extra_id_0>``; targets the original."""
    return denoise(tokens, seeds, vocabulary_size=vocabulary_size, noise_mask="iid", inputs="mask",
                   targets="original", noise_density=noise_density, **kwargs)


mass = mask_tokens


def bert_mlm(tokens: Tokens, seeds: np.ndarray, *, vocabulary_size: int, noise_density: float = 0.15,
             mask_prob: float = 0.8, random_prob: float = 0.1, **kwargs):
    """BERT-style MLM: corrupted tokens -> mask (80 %), random ordinary token (10 %), unchanged (10 %);
    targets the original. ``mask_prob=0.9, random_prob=0.1`` is the t5 library's variant."""
    return denoise(tokens, seeds, vocabulary_size=vocabulary_size, noise_mask="iid", inputs="bert",
                   targets="original", noise_density=noise_density, mask_prob=mask_prob,
                   random_prob=random_prob, **kwargs)


def prefix_lm(tokens: Tokens, seeds: np.ndarray, *, vocabulary_size: int, noise_density: float = 0.5, **kwargs):
    """Prefix LM: a uniform split point in ``[1, L - 1]``; inputs the prefix, targets the rest."""
    return denoise(tokens, seeds, vocabulary_size=vocabulary_size, noise_mask="prefix", inputs="drop",
                   targets="noise", noise_density=noise_density, **kwargs)


def deshuffle(tokens: Tokens, seeds: np.ndarray, *, vocabulary_size: int, **kwargs):
    """Deshuffling: the window's tokens in a random order in, the original order out."""
    return denoise(tokens, seeds, vocabulary_size=vocabulary_size, noise_mask="all", inputs="permute",
                   targets="original", noise_density=1.0, **kwargs)
