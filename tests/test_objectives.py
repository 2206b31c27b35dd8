"""Tests for the pure numpy objectives (tasks/objectives): exact T5 lengths, reconstruction properties,
statistics over >= 10,000 examples, determinism and independence from batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from tasks import objectives as obj
from tasks.objectives import masks, rng

VOCAB = 8100  # 8000 SentencePiece pieces + 100 extra ids: <extra_id_0> = 8099
NUM_SENTINELS = 100
FIRST_SENTINEL = VOCAB - NUM_SENTINELS  # 8000: ids >= this are sentinels


def _windows(batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, FIRST_SENTINEL, size=(batch, length), dtype=np.int32)


def _split_at_sentinels(row: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
    """(sentinel ids in order, non-empty runs of ordinary tokens in order)."""
    is_sentinel = row >= FIRST_SENTINEL
    sentinels = row[is_sentinel].tolist()
    cuts = np.flatnonzero(is_sentinel)
    pieces = np.split(row, cuts)
    runs = [p[1:] if len(p) and p[0] >= FIRST_SENTINEL else p for p in pieces]
    return sentinels, [r for r in runs if len(r)]


def _reconstruct(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Interleave inputs and targets at the sentinels: each input sentinel takes the next noise run."""
    _, noise_runs = _split_at_sentinels(targets)
    out, k = [], 0
    for token in inputs.tolist():
        if token >= FIRST_SENTINEL:
            out.extend(noise_runs[k].tolist())
            k += 1
        else:
            out.append(token)
    assert k == len(noise_runs), "targets hold more noise runs than the inputs have sentinels"
    return np.asarray(out, dtype=inputs.dtype)


# --------------------------------------------------------------------------------------------------
# Exact T5 numbers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs_length, expected",
    [(512, (568, 114)), (1024, (1137, 229)), (128, (141, 29))],
)
def test_random_spans_helper_matches_t5(inputs_length, expected):
    assert obj.random_spans_helper(inputs_length, 0.15, 3.0) == expected


@pytest.mark.parametrize(
    "mean_span, expected", [(2.0, (552, 126)), (3.0, (568, 114)), (5.0, (581, 105)), (10.0, (591, 99))]
)
def test_random_spans_helper_paper_span_lengths(mean_span, expected):
    """The T5 paper's mean-span-length sweep (REFERENCE.md): raw/targets for 512 inputs."""
    assert obj.random_spans_helper(512, 0.15, mean_span) == expected


def test_span_corruption_lengths_are_exact_for_512():
    raw, targets_length = obj.random_spans_helper(512)
    out = obj.span_corruption(_windows(16, raw), np.arange(16, dtype=np.uint64), vocabulary_size=VOCAB)
    # + EOS (appended by Task.finalize) gives exactly 512 / 114
    assert {len(r) + 1 for r in out["inputs"]} == {512}
    assert {len(r) + 1 for r in out["targets"]} == {targets_length}


def test_sentinels_count_down_from_the_top_id():
    out = obj.span_corruption(_windows(4, 568), np.arange(4, dtype=np.uint64), vocabulary_size=VOCAB)
    for inputs, targets in zip(out["inputs"], out["targets"]):
        sentinels = inputs[inputs >= FIRST_SENTINEL]
        assert sentinels[0] == VOCAB - 1  # <extra_id_0>
        np.testing.assert_array_equal(sentinels, VOCAB - 1 - np.arange(len(sentinels)))
        assert targets[0] == VOCAB - 1  # targets start with the sentinel of the first (non-noise) run


def test_noise_mask_starts_with_nonnoise_and_ends_with_noise():
    m = masks.random_spans_noise_mask(568, 0.15, np.arange(500, dtype=np.uint64), 3.0)
    assert not m[:, 0].any() and m[:, -1].all()
    assert (m.sum(1) == 85).all()  # round(568 * 0.15)
    runs = (m[:, 1:] & ~m[:, :-1]).sum(1) + m[:, 0]
    assert (runs == 28).all()  # round(85 / 3)


@pytest.mark.parametrize(
    "raw, density, span, expected",
    [(10, 0.15, 3.0, (2, 1)), (1, 0.15, 3.0, (1, 1)), (100, 0.95, 1.0, (95, 5)), (20, 0.0001, 3.0, (1, 1))],
)
def test_random_spans_counts_degenerate_cases(raw, density, span, expected):
    assert masks.random_spans_counts(raw, density, span) == expected


def test_raw_window_length_per_objective():
    seq = {"inputs": 512, "targets": 114}
    assert obj.raw_window_length(seq) == 568
    assert obj.raw_window_length({"inputs": 512, "targets": 100}) < 568  # shortened so targets fit
    assert obj.raw_window_length(seq, noise_mask="prefix", inputs="drop", targets="noise") == 114
    assert obj.raw_window_length({"inputs": 512, "targets": 512}, noise_mask="prefix", inputs="drop",
                                 targets="noise") == 512
    assert obj.raw_window_length(seq, noise_mask="iid", inputs="mask", targets="original") == 113
    assert obj.raw_window_length(seq, noise_mask="iid") == 511


# --------------------------------------------------------------------------------------------------
# Property tests (hypothesis)
# --------------------------------------------------------------------------------------------------

_lengths = st.integers(min_value=1, max_value=300)
_densities = st.floats(min_value=0.01, max_value=0.95)
_spans = st.floats(min_value=1.0, max_value=12.0)
_seeds = st.integers(min_value=0, max_value=2**64 - 1)
_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(length=_lengths, density=_densities, span=_spans, seed=_seeds,
       mask_kind=st.sampled_from(["random_spans", "iid"]))
def test_sentinel_objectives_reconstruct_the_original(length, density, span, seed, mask_kind):
    tokens = _windows(3, length, seed % 1000)
    seeds = np.array([seed, seed ^ 1, seed // 3], dtype=np.uint64)
    try:
        out = obj.denoise(tokens, seeds, vocabulary_size=VOCAB, noise_mask=mask_kind, noise_density=density,
                          mean_noise_span_length=span, num_sentinels=NUM_SENTINELS)
    except ValueError as err:  # only legitimate failure: random spans needing more than the 100 sentinels
        assert "sentinel ids" in str(err) and mask_kind == "random_spans"
        assert masks.random_spans_counts(length, density, span)[1] > NUM_SENTINELS
        return
    for row, inputs, targets in zip(tokens, out["inputs"], out["targets"]):
        np.testing.assert_array_equal(_reconstruct(inputs, targets), row)
        for part in (inputs, targets):
            sentinels = part[part >= FIRST_SENTINEL]
            # in order, unique, starting at <extra_id_0>
            np.testing.assert_array_equal(sentinels, VOCAB - 1 - np.arange(len(sentinels)))
        assert len(inputs) <= length and len(targets) <= length + 1


@_settings
@given(length=_lengths, density=_densities, span=_spans, seed=_seeds,
       mask_kind=st.sampled_from(["random_spans", "iid"]))
def test_drop_objective_partitions_the_tokens(length, density, span, seed, mask_kind):
    tokens = _windows(2, length, seed % 997)
    seeds = np.array([seed, ~np.uint64(seed)], dtype=np.uint64)
    mask = masks.noise_mask(mask_kind, length, density, seeds, span)
    out = obj.denoise(tokens, seeds, vocabulary_size=VOCAB, noise_mask=mask_kind, inputs="drop", targets="noise",
                      noise_density=density, mean_noise_span_length=span)
    for row, m, inputs, targets in zip(tokens, mask, out["inputs"], out["targets"]):
        np.testing.assert_array_equal(inputs, row[~m])
        np.testing.assert_array_equal(targets, row[m])
        merged = np.empty(length, dtype=row.dtype)
        merged[~m], merged[m] = inputs, targets
        np.testing.assert_array_equal(merged, row)


@_settings
@given(length=_lengths, density=_densities, seed=_seeds, kind=st.sampled_from(["mask", "bert"]))
def test_token_masking_objectives_keep_length_and_targets(length, density, seed, kind):
    tokens = _windows(2, length, seed % 991)
    seeds = np.array([seed, seed // 7], dtype=np.uint64)
    mask = masks.iid_noise_mask(length, density, seeds)
    out = obj.denoise(tokens, seeds, vocabulary_size=VOCAB, noise_mask="iid", inputs=kind, targets="original",
                      noise_density=density)
    for row, m, inputs, targets in zip(tokens, mask, out["inputs"], out["targets"]):
        np.testing.assert_array_equal(targets, row)
        assert len(inputs) == length
        np.testing.assert_array_equal(inputs[~m], row[~m])  # untouched outside the noise
        if kind == "mask":
            assert (inputs[m] == VOCAB - 1).all()
        else:  # mask sentinel, or an ordinary token (never another sentinel, never pad/eos/unk)
            changed = inputs[m]
            assert ((changed == VOCAB - 1) | ((changed >= 3) & (changed < FIRST_SENTINEL))).all()


@_settings
@given(length=st.integers(min_value=2, max_value=300), seed=_seeds)
def test_prefix_lm_splits_the_window(length, seed):
    tokens = _windows(2, length, seed % 983)
    out = obj.prefix_lm(tokens, np.array([seed, seed // 5], dtype=np.uint64), vocabulary_size=VOCAB)
    for row, inputs, targets in zip(tokens, out["inputs"], out["targets"]):
        assert 1 <= len(inputs) <= length - 1
        np.testing.assert_array_equal(np.concatenate([inputs, targets]), row)


@_settings
@given(length=_lengths, seed=_seeds)
def test_deshuffle_is_a_permutation(length, seed):
    tokens = _windows(2, length, seed % 977)
    out = obj.deshuffle(tokens, np.array([seed, seed // 11], dtype=np.uint64), vocabulary_size=VOCAB)
    for row, inputs, targets in zip(tokens, out["inputs"], out["targets"]):
        np.testing.assert_array_equal(targets, row)
        np.testing.assert_array_equal(np.sort(inputs), np.sort(row))


@_settings
@given(
    seq_in=st.integers(min_value=8, max_value=600),
    seq_tg=st.integers(min_value=8, max_value=600),
    objective=st.sampled_from(["span_corruption", "iid_replace_spans", "iid_drop", "mask_tokens", "bert_mlm",
                               "prefix_lm", "deshuffle"]),
    seed=_seeds,
)
def test_outputs_never_exceed_the_requested_lengths(seq_in, seq_tg, objective, seed):
    from tasks.objectives.preprocessors import OBJECTIVES
    o = OBJECTIVES[objective]()
    sequence_length = {"inputs": seq_in, "targets": seq_tg}
    raw = o.raw_length(sequence_length)
    assert raw >= 1
    fn = getattr(obj, objective)
    try:
        out = fn(_windows(4, raw, seed % 89), np.arange(4, dtype=np.uint64) + np.uint64(seed % 2**60),
                 vocabulary_size=VOCAB, sequence_length=sequence_length)
    except ValueError as err:  # random spans needing more than 100 sentinels (a long window, short spans)
        assert "sentinel ids" in str(err) and objective == "span_corruption"
        return
    assert max(len(r) for r in out["inputs"]) + 1 <= seq_in
    assert max(len(r) for r in out["targets"]) + 1 <= seq_tg


def test_iid_rows_with_more_runs_than_sentinels_are_merged_not_failed():
    tokens = _windows(3000, 511, 8)
    seeds = np.arange(3000, dtype=np.uint64)
    out = obj.iid_replace_spans(tokens, seeds, vocabulary_size=VOCAB, noise_density=0.25)
    mask = masks.iid_noise_mask(511, 0.25, seeds)
    runs = (mask & ~np.pad(mask, ((0, 0), (1, 0)))[:, :-1]).sum(1)
    assert (runs >= NUM_SENTINELS).sum() > 10  # the situation does occur at the paper's 25 % rate
    for row, inputs, targets in zip(tokens, out["inputs"], out["targets"]):
        assert (inputs >= FIRST_SENTINEL).sum() <= NUM_SENTINELS and (targets >= FIRST_SENTINEL).sum() <= NUM_SENTINELS
        np.testing.assert_array_equal(_reconstruct(inputs, targets), row)
    untouched = runs < NUM_SENTINELS - 1
    for i in np.flatnonzero(untouched)[:50]:  # rows within the limit are exactly T5's
        np.testing.assert_array_equal(
            out["inputs"][i], obj.noise_span_to_unique_sentinel(tokens[i : i + 1], mask[i : i + 1], VOCAB).values
        )


def test_more_spans_than_sentinels_is_a_clear_error():
    with pytest.raises(ValueError, match="sentinel ids"):
        obj.span_corruption(_windows(1, 2000), np.zeros(1, np.uint64), vocabulary_size=VOCAB, noise_density=0.5,
                            mean_noise_span_length=2.0)


def test_sentencepiece_never_produces_a_sentinel_id():
    import sentencepiece as spm

    from tasks.utils import DATA_DIR

    sp = spm.SentencePieceProcessor(model_file=str(DATA_DIR / "vocab" / "spiece.model"))
    assert sp.get_piece_size() == FIRST_SENTINEL
    texts = [line for line in (DATA_DIR / "english_corpus" / "validation.jsonl").read_text().splitlines()[:40]]
    texts += ["<extra_id_0> <extra_id_99> ünïcödé ☃ 12345 \t\n", "".join(chr(c) for c in range(32, 2000, 7))]
    ids = np.concatenate([np.asarray(x) for x in sp.encode(texts)])
    assert ids.max() < FIRST_SENTINEL


# --------------------------------------------------------------------------------------------------
# Statistics over >= 10,000 examples
# --------------------------------------------------------------------------------------------------

N_STATS = 10_000


@pytest.mark.parametrize("density, span", [(0.15, 3.0), (0.5, 10.0), (0.1, 2.0), (0.25, 5.0)])
def test_random_spans_statistics(density, span):
    raw, _ = obj.random_spans_helper(512, density, span)
    m = masks.random_spans_noise_mask(raw, density, np.arange(N_STATS, dtype=np.uint64) * np.uint64(7919), span)
    starts = m & ~np.pad(m, ((0, 0), (1, 0)))[:, :-1]
    rate = m.sum() / m.size
    mean_span = m.sum() / starts.sum()
    assert abs(rate - density) <= 0.005
    assert abs(mean_span - span) <= 0.03 * span
    # Span lengths of a uniform random composition of n into k parts: P(first = j) = C(n-j-1, k-2) / C(n-1, k-1).
    n, k = masks.random_spans_counts(raw, density, span)
    first_start = np.argmax(m, axis=1)
    idx = first_start[:, None] + np.arange(n + 1)[None, :]
    padded = np.pad(m, ((0, 0), (0, n + 1)))
    first_len = np.argmin(np.take_along_axis(padded, idx, axis=1), axis=1)
    if k >= 2:
        js = np.arange(1, n - k + 2)
        probs = np.array([math.comb(n - j - 1, k - 2) for j in js], dtype=float) / math.comb(n - 1, k - 1)
        observed = np.bincount(first_len, minlength=n + 2)[js]
        keep = probs * N_STATS >= 5
        exp = np.append(probs[keep] * N_STATS, N_STATS - (probs[keep] * N_STATS).sum())
        obs = np.append(observed[keep], N_STATS - observed[keep].sum())
        assert stats.chisquare(obs, exp).pvalue > 1e-4


@pytest.mark.parametrize("density", [0.1, 0.15, 0.25, 0.5])
def test_iid_statistics(density):
    m = masks.iid_noise_mask(511, density, np.arange(N_STATS, dtype=np.uint64))
    assert abs(m.mean() - density) <= 0.005
    # independent positions: the correlation of neighbours is ~0
    a, b = m[:, :-1].ravel().astype(float), m[:, 1:].ravel().astype(float)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01


def test_bert_80_10_10_statistics():
    tokens = _windows(N_STATS, 200, 3)
    seeds = np.arange(N_STATS, dtype=np.uint64)
    mask = masks.iid_noise_mask(200, 0.15, seeds)
    out = np.stack(obj.bert_mlm(tokens, seeds, vocabulary_size=VOCAB)["inputs"])
    noise = mask.sum()
    masked = (out[mask] == VOCAB - 1).mean()
    changed_to_other = ((out[mask] != VOCAB - 1) & (out[mask] != tokens[mask])).mean()
    assert abs(masked - 0.8) < 0.01 and abs(changed_to_other - 0.1 * (1 - 1 / 7997)) < 0.01
    assert abs(noise / mask.size - 0.15) <= 0.005
    t5 = np.stack(obj.bert_mlm(tokens, seeds, vocabulary_size=VOCAB, mask_prob=0.9, random_prob=0.1)["inputs"])
    assert abs((t5[mask] == VOCAB - 1).mean() - 0.9) < 0.01


def test_prefix_split_point_is_uniform():
    length = 50
    m = masks.random_prefix_noise_mask(length, 0.5, np.arange(N_STATS, dtype=np.uint64))
    prefix = length - m.sum(1)
    assert prefix.min() == 1 and prefix.max() == length - 1
    counts = np.bincount(prefix, minlength=length)[1:length]
    assert stats.chisquare(counts).pvalue > 1e-4


def test_deshuffle_positions_are_uniform():
    tokens = np.tile(np.arange(10, dtype=np.int32), (N_STATS, 1))
    out = np.stack(obj.deshuffle(tokens, np.arange(N_STATS, dtype=np.uint64), vocabulary_size=VOCAB)["inputs"])
    counts = np.stack([(out == v).sum(0) for v in range(10)])  # value x position
    assert stats.chisquare(counts.ravel()).pvalue > 1e-4


def test_rng_uniforms_are_uniform_and_streams_independent():
    seeds = np.arange(2000, dtype=np.uint64)
    u = rng.uniform(seeds, 1, 50).ravel()
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    v = rng.uniform(seeds, 2, 50).ravel()
    assert abs(np.corrcoef(u, v)[0, 1]) < 0.01
    ints = rng.integers(seeds, 3, 50, 3, 10).ravel()
    assert ints.min() == 3 and ints.max() == 9


# --------------------------------------------------------------------------------------------------
# Determinism and independence from batching / workers
# --------------------------------------------------------------------------------------------------

ALL = ["span_corruption", "iid_replace_spans", "iid_drop", "mask_tokens", "bert_mlm", "prefix_lm", "deshuffle"]


def _run(name, tokens, seeds):
    return getattr(obj, name)(tokens, seeds, vocabulary_size=VOCAB)


def _equal(a, b):
    return all(len(x) == len(y) and np.array_equal(x, y) for k in ("inputs", "targets") for x, y in zip(a[k], b[k]))


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_output_different_seed_different(name):
    tokens = _windows(32, 141, 1)
    seeds = np.arange(32, dtype=np.uint64) + np.uint64(12345)
    assert _equal(_run(name, tokens, seeds), _run(name, tokens.copy(), seeds.copy()))
    assert not _equal(_run(name, tokens, seeds), _run(name, tokens, seeds + np.uint64(1)))


@pytest.mark.parametrize("name", ALL)
def test_results_do_not_depend_on_batching(name):
    rows = [np.random.default_rng(i).integers(3, FIRST_SENTINEL, size=100 + 37 * (i % 3)).astype(np.int32)
            for i in range(64)]
    seeds = (np.arange(64, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(99)
    whole = _run(name, rows, seeds)
    for batch in (1, 7, 64):
        parts = {"inputs": [], "targets": []}
        for start in range(0, 64, batch):
            out = _run(name, rows[start : start + batch], seeds[start : start + batch])
            parts["inputs"] += out["inputs"]
            parts["targets"] += out["targets"]
        assert _equal(parts, whole), f"batch size {batch} changed {name}"
    # a row processed alone as a 2-D array equals the ragged-batch result
    equal_rows = np.stack([r for r in rows if len(r) == 100])
    idx = [i for i, r in enumerate(rows) if len(r) == 100]
    dense = _run(name, equal_rows, seeds[idx])
    assert _equal(dense, {k: [whole[k][i] for i in idx] for k in whole})


class _Windows:
    """A map-style dataset whose item i is span-corrupted with seed i (a dataloader-worker check)."""

    def __init__(self, n):
        self.tokens = _windows(n, 141, 5)

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        out = obj.span_corruption(self.tokens[i : i + 1], np.array([i], dtype=np.uint64), vocabulary_size=VOCAB)
        return np.concatenate([out["inputs"][0], out["targets"][0]])


def test_results_do_not_depend_on_dataloader_workers():
    import torch

    def collect(workers):
        loader = torch.utils.data.DataLoader(_Windows(48), batch_size=5, num_workers=workers,
                                             multiprocessing_context="fork" if workers else None)
        return torch.cat([b.reshape(-1) for b in loader])

    assert torch.equal(collect(0), collect(2))


@pytest.mark.parametrize("name", ALL)
def test_degenerate_windows_and_dtypes(name):
    rows = [np.array([5], np.int32), np.array([], np.int32), np.array([7, 8], np.int32),
            np.arange(3, 40, dtype=np.int32)]
    out = _run(name, rows, np.arange(4, dtype=np.uint64))
    assert len(out["inputs"]) == len(out["targets"]) == 4
    assert all(x.dtype == np.int32 for k in ("inputs", "targets") for x in out[k])
    assert len(out["inputs"][1]) == 0
    empty = _run(name, np.zeros((0, 12), np.int32), np.zeros(0, np.uint64))
    assert empty == {"inputs": [], "targets": []}
    with pytest.raises(ValueError, match="one seed per example"):
        _run(name, rows, np.arange(3, dtype=np.uint64))


# --------------------------------------------------------------------------------------------------
# Exactness against literal one-row transcriptions of the t5 library's functions
# --------------------------------------------------------------------------------------------------


def _t5_noise_span_to_unique_sentinel(tokens, noise_mask, vocab_size):
    prev_token_is_noise = np.pad(noise_mask[:-1], [[1, 0]])
    first_noise_tokens = noise_mask & ~prev_token_is_noise
    subsequent_noise_tokens = noise_mask & prev_token_is_noise
    sentinel = (vocab_size - 1) + 1 - np.cumsum(first_noise_tokens.astype(tokens.dtype))
    tokens = np.where(first_noise_tokens, sentinel, tokens)
    return tokens[~subsequent_noise_tokens]


def _t5_mask_from_lengths(noise_lengths, nonnoise_lengths, length):
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    indicator = np.zeros(length, dtype=np.int32)
    np.add.at(indicator, span_starts, 1)
    return np.cumsum(indicator) % 2 == 1


@_settings
@given(length=st.integers(min_value=1, max_value=200), density=_densities, seed=_seeds)
def test_transforms_match_t5_row_by_row(length, density, seed):
    tokens = _windows(4, length, seed % 101)
    seeds = np.arange(4, dtype=np.uint64) ^ np.uint64(seed)
    mask = masks.iid_noise_mask(length, density, seeds)
    ours_in = obj.noise_span_to_unique_sentinel(tokens, mask, VOCAB).rows()
    ours_tg = obj.nonnoise_span_to_unique_sentinel(tokens, mask, VOCAB).rows()
    for i in range(4):
        np.testing.assert_array_equal(ours_in[i], _t5_noise_span_to_unique_sentinel(tokens[i], mask[i], VOCAB))
        np.testing.assert_array_equal(ours_tg[i], _t5_noise_span_to_unique_sentinel(tokens[i], ~mask[i], VOCAB))
    np.testing.assert_array_equal(obj.noise_token_to_sentinel(tokens, mask, VOCAB), np.where(mask, VOCAB - 1, tokens))


@_settings
@given(length=st.integers(min_value=2, max_value=700), density=_densities, span=_spans, seed=_seeds)
def test_random_spans_mask_matches_t5_construction(length, density, span, seed):
    seeds = np.array([seed, seed ^ 0xABCDEF], dtype=np.uint64)
    num_noise, num_spans = masks.random_spans_counts(length, density, span)
    noise = masks.random_segmentation(num_noise, num_spans, seeds, rng.STREAM_NOISE_SPANS)
    nonnoise = masks.random_segmentation(length - num_noise, num_spans, seeds, rng.STREAM_NONNOISE_SPANS)
    assert (noise >= 1).all() and (nonnoise >= 1).all()
    assert (noise.sum(1) == num_noise).all() and (nonnoise.sum(1) == length - num_noise).all()
    ours = masks.random_spans_noise_mask(length, density, seeds, span)
    for i in range(2):
        np.testing.assert_array_equal(ours[i], _t5_mask_from_lengths(noise[i], nonnoise[i], length))
