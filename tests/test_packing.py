"""Packing / padding invariants, checked from segment ids (property tests)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixtures import FeatureConverter, packing_efficiency
from mixtures.packing import FEATURES


def _examples(data):
    n = data.draw(st.integers(1, 30))
    out = []
    for i in range(n):
        li = data.draw(st.integers(0, 14))
        lt = data.draw(st.integers(1, 9))
        # tokens encode the example index so that examples can be recovered from the packed rows
        out.append({"inputs": np.full(li, 10 + i, np.int32), "targets": np.arange(lt, dtype=np.int32) + 100 * (i + 1)})
    return out


def _check_row_invariants(b, L_in, L_t):
    for prefix, L in (("encoder", L_in), ("decoder", L_t)):
        seg = b[f"{prefix}_segment_ids"].numpy()
        pos = b[f"{prefix}_positions"].numpy()
        for row_seg, row_pos in zip(seg, pos):
            nz = row_seg[row_seg > 0]
            # segments are contiguous, numbered in order, padding only at the end of the row (an example with
            # empty inputs has no encoder tokens, so encoder ids may skip a number; decoder ids never do)
            assert np.all(np.diff(nz) >= 0) and (prefix == "encoder" or np.all(np.diff(nz) <= 1))
            assert np.all(row_seg[len(nz):] == 0)
            # positions restart at 0 with each segment and count up inside it
            starts = np.r_[True, nz[1:] != nz[:-1]]
            expected = np.arange(len(nz)) - np.maximum.accumulate(np.where(starts, np.arange(len(nz)), 0))
            assert np.array_equal(row_pos[: len(nz)], expected)
            assert np.all(row_pos[len(nz):] == 0)
    tgt, dinp = b["decoder_target_tokens"].numpy(), b["decoder_input_tokens"].numpy()
    dseg, dpos = b["decoder_segment_ids"].numpy(), b["decoder_positions"].numpy()
    # decoder inputs = targets shifted right inside each segment; 0 at each segment start
    assert np.all(dinp[(dpos == 0)] == 0)
    inner = (dpos > 0)
    assert np.array_equal(dinp[:, 1:][inner[:, 1:]], tgt[:, :-1][inner[:, 1:]])
    assert np.array_equal(b["decoder_loss_weights"].numpy(), (dseg > 0).astype(np.float32))
    assert np.array_equal(b["decoder_task_ids"].numpy() == -1, dseg == 0)
    for r in range(dseg.shape[0]):
        assert set(b["encoder_segment_ids"][r].unique().tolist()) - {0} <= set(dseg[r].tolist()) - {0}
    # attention from segment ids is block diagonal: no token attends across segments of its row
    eseg = b["encoder_segment_ids"].numpy()
    for r in range(eseg.shape[0]):
        mask = (eseg[r][:, None] == eseg[r][None, :]) & (eseg[r][:, None] > 0)
        for s in np.unique(eseg[r][eseg[r] > 0]):
            idx = np.nonzero(eseg[r] == s)[0]
            assert mask[np.ix_(idx, idx)].all() and mask[idx].sum() == len(idx) ** 2


@settings(max_examples=60, deadline=None)
@given(data=st.data(), pack=st.booleans(), batch_size=st.integers(1, 5))
def test_packing_invariants_and_no_split_or_loss(data, pack, batch_size):
    L_in, L_t = 16, 10
    examples = _examples(data)
    fc = FeatureConverter({"inputs": L_in, "targets": L_t}, pack=pack)
    batches = fc(examples, batch_size)
    recovered = []
    for b in batches:
        assert {k: v.dtype for k, v in b.items()} == FEATURES
        _check_row_invariants(b, L_in, L_t)
        tgt, dseg = b["decoder_target_tokens"].numpy(), b["decoder_segment_ids"].numpy()
        enc, eseg = b["encoder_input_tokens"].numpy(), b["encoder_segment_ids"].numpy()
        for r in range(batch_size):
            for s in np.unique(dseg[r][dseg[r] > 0]):
                recovered.append((enc[r][eseg[r] == s], tgt[r][dseg[r] == s]))
    # every example appears exactly once, whole (truncated to the lengths), in stream order
    assert len(recovered) == len(examples)
    for (x, y), e in zip(sorted(recovered, key=lambda p: p[1][0]), examples):
        assert np.array_equal(x, e["inputs"][:L_in]) and np.array_equal(y, e["targets"][:L_t])
    if not pack:
        assert all(int(b["decoder_segment_ids"].max()) <= 1 for b in batches)
    assert fc.truncated == sum(len(e["inputs"]) > L_in or len(e["targets"]) > L_t for e in examples)


def test_packing_beats_padding_on_short_examples():
    rng = np.random.default_rng(0)
    ex = [{"inputs": rng.integers(3, 50, rng.integers(2, 12)).astype(np.int32),
           "targets": rng.integers(3, 50, rng.integers(1, 4)).astype(np.int32)} for _ in range(200)]
    packed = FeatureConverter({"inputs": 64, "targets": 16}, pack=True)(ex, 8)
    padded = FeatureConverter({"inputs": 64, "targets": 16}, pack=False)(ex, 8)
    assert len(packed) < len(padded) / 4
    assert packing_efficiency(packed[0])["total"] > 0.7
    assert packing_efficiency(padded[0])["encoder"] < 0.2


def test_decoder_inputs_shift_within_segments_example():
    ex = [{"inputs": np.array([5, 6], np.int32), "targets": np.array([7, 8, 1], np.int32)},
          {"inputs": np.array([9], np.int32), "targets": np.array([10, 1], np.int32)}]
    b = FeatureConverter({"inputs": 4, "targets": 6}, pack=True)(ex, 1)[0]
    assert b["encoder_input_tokens"].tolist() == [[5, 6, 9, 0]]
    assert b["encoder_segment_ids"].tolist() == [[1, 1, 2, 0]]
    assert b["encoder_positions"].tolist() == [[0, 1, 0, 0]]
    assert b["decoder_target_tokens"].tolist() == [[7, 8, 1, 10, 1, 0]]
    assert b["decoder_input_tokens"].tolist() == [[0, 7, 8, 0, 10, 0]]
    assert b["decoder_positions"].tolist() == [[0, 1, 2, 0, 1, 0]]
    assert b["decoder_loss_weights"].dtype == torch.float32
