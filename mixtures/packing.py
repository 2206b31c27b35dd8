"""Feature conversion: examples -> fixed-shape encoder-decoder batches (seqio's EncDecFeatureConverter names).

Two steps, so that the sampler can plan batches from lengths alone (cheap metadata, computed identically in
every dataloader worker) and materialize tokens only for the batches a worker owns:

1. :class:`FirstFitPacker` decides where each example goes (row, encoder offset, decoder offset) from its
   lengths. Packing is first-fit over the ``B`` rows of a batch; an example is never split; the batch is closed
   at the first example that fits in no row (that example opens the next batch, so none is lost).
2. :func:`assemble` writes all tokens of a batch at once with vectorized numpy (no per-token Python loop):
   segment ids, per-segment positions, decoder inputs shifted right *within each segment* (0 = start token),
   loss weights and per-token task ids.

Truncation follows seqio's ``trim_and_pack``/``trim_and_pad``: a feature longer than its sequence length is cut
to that length (a truncated target therefore loses its EOS, as in seqio). :func:`truncate` counts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

FEATURES = {
    "encoder_input_tokens": torch.int64,
    "encoder_segment_ids": torch.int32,
    "encoder_positions": torch.int32,
    "decoder_target_tokens": torch.int64,
    "decoder_input_tokens": torch.int64,
    "decoder_segment_ids": torch.int32,
    "decoder_positions": torch.int32,
    "decoder_loss_weights": torch.float32,
    "decoder_task_ids": torch.int32,
}


class FirstFitPacker:
    """Places examples into ``batch_size`` rows of ``(inputs_length, targets_length)`` tokens, first fit.

    With ``pack=False`` every example gets its own row (padding mode).
    """

    def __init__(self, batch_size: int, inputs_length: int, targets_length: int, pack: bool = True) -> None:
        self.batch_size = batch_size
        self.inputs_length = inputs_length
        self.targets_length = targets_length
        self.pack = pack
        self.reset()

    def reset(self) -> None:
        # plain lists: for the few dozen rows of a batch a Python scan beats numpy's per-call overhead
        self.enc_used = [0] * self.batch_size
        self.dec_used = [0] * self.batch_size
        self.segments = [0] * self.batch_size
        self.rows_used = 0

    def add(self, enc_len: int, dec_len: int) -> tuple[int, int, int, int] | None:
        """Place one (already truncated) example; returns (row, enc_offset, dec_offset, segment_id) or None if full."""
        if not self.pack:
            if self.rows_used >= self.batch_size:
                return None
            row = self.rows_used
        else:
            enc_room, dec_room = self.inputs_length - enc_len, self.targets_length - dec_len
            enc, dec = self.enc_used, self.dec_used
            # first fit over the rows opened so far plus one fresh row (rows are opened in order)
            for row in range(min(self.rows_used + 1, self.batch_size)):
                if enc[row] <= enc_room and dec[row] <= dec_room:
                    break
            else:
                return None
        out = (row, self.enc_used[row], self.dec_used[row], self.segments[row] + 1)
        self.enc_used[row] += enc_len
        self.dec_used[row] += dec_len
        self.segments[row] += 1
        self.rows_used = max(self.rows_used, row + 1)
        return out


def compact_offsets(rows: np.ndarray, segment_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Offsets that lay examples end to end within each row, in segment order (vectorized).

    The planner places examples by length bounds; the actual (shorter or equal) lengths then close up the gaps.
    """
    rows = np.asarray(rows, np.int64)
    n = len(rows)
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((np.asarray(segment_ids), rows))
    lens = np.asarray(lengths, np.int64)[order]
    start = np.cumsum(lens) - lens
    r = rows[order]
    first = np.searchsorted(r, r, side="left")
    out = np.empty(n, np.int64)
    out[order] = start - start[first]
    return out


def truncate(features: Sequence[np.ndarray], length: int) -> tuple[list[np.ndarray], int]:
    """Cut each array to ``length`` (seqio trim); returns the arrays and how many were cut."""
    out, cut = [], 0
    for x in features:
        if len(x) > length:
            x = x[:length]
            cut += 1
        out.append(x)
    return out, cut


def _scatter(values: list[np.ndarray], rows: np.ndarray, offsets: np.ndarray, segment_ids: np.ndarray,
             batch_size: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write variable-length ``values`` into a [batch_size, length] grid at (row, offset).

    Returns tokens, segment ids, positions, the flat destination index of every token and each token's position.
    """
    lens = np.fromiter((len(v) for v in values), np.int64, len(values))
    total = int(lens.sum())
    flat = np.concatenate(values).astype(np.int64) if total else np.zeros(0, np.int64)
    starts_in_flat = np.cumsum(lens) - lens
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts_in_flat, lens)
    dest = np.repeat(rows.astype(np.int64) * length + offsets.astype(np.int64), lens) + pos
    tokens = np.zeros(batch_size * length, np.int64)
    seg = np.zeros(batch_size * length, np.int32)
    positions = np.zeros(batch_size * length, np.int32)
    tokens[dest] = flat
    seg[dest] = np.repeat(segment_ids.astype(np.int32), lens)
    positions[dest] = pos
    shape = (batch_size, length)
    return tokens.reshape(shape), seg.reshape(shape), positions.reshape(shape), dest, flat


def assemble(inputs: list[np.ndarray], targets: list[np.ndarray], rows: np.ndarray, enc_offsets: np.ndarray,
             dec_offsets: np.ndarray, segment_ids: np.ndarray, task_ids: np.ndarray, batch_size: int,
             inputs_length: int, targets_length: int) -> dict[str, np.ndarray]:
    """Build one batch (numpy) from placed, truncated examples. See the module doc for the layout."""
    enc_tok, enc_seg, enc_pos, _, _ = _scatter(inputs, rows, enc_offsets, segment_ids, batch_size, inputs_length)
    dec_tok, dec_seg, dec_pos, dest, flat = _scatter(targets, rows, dec_offsets, segment_ids, batch_size,
                                                     targets_length)
    # decoder inputs: the previous target token of the same segment; 0 (start) at each segment's first position
    shifted = np.empty_like(flat)
    if len(flat):
        shifted[0] = 0
        shifted[1:] = flat[:-1]
        shifted[dec_pos.reshape(-1)[dest] == 0] = 0
    dec_in = np.zeros(batch_size * targets_length, np.int64)
    dec_in[dest] = shifted
    tids = np.full(batch_size * targets_length, -1, np.int32)
    tlens = np.fromiter((len(t) for t in targets), np.int64, len(targets))
    tids[dest] = np.repeat(task_ids.astype(np.int32), tlens)
    return {
        "encoder_input_tokens": enc_tok,
        "encoder_segment_ids": enc_seg,
        "encoder_positions": enc_pos,
        "decoder_target_tokens": dec_tok,
        "decoder_input_tokens": dec_in.reshape(batch_size, targets_length),
        "decoder_segment_ids": dec_seg,
        "decoder_positions": dec_pos,
        "decoder_loss_weights": (dec_seg > 0).astype(np.float32),
        "decoder_task_ids": tids.reshape(batch_size, targets_length),
    }


def to_torch(batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """numpy batch -> tensors with exactly the contract's dtypes."""
    return {k: torch.from_numpy(np.ascontiguousarray(batch[k])).to(dtype) for k, dtype in FEATURES.items()}


def packing_efficiency(batch: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, float]:
    """Non-padding share of encoder and decoder tokens (and of both together)."""
    enc = np.asarray(batch["encoder_segment_ids"]) > 0
    dec = np.asarray(batch["decoder_segment_ids"]) > 0
    return {"encoder": float(enc.mean()), "decoder": float(dec.mean()),
            "total": float((enc.sum() + dec.sum()) / (enc.size + dec.size))}


class FeatureConverter:
    """Convenience wrapper: turn a list of examples into batches (packing or padding), outside the sampler.

    ``FeatureConverter({"inputs": 512, "targets": 114}, pack=True)(examples, batch_size)`` returns the list of
    batches (dicts of tensors) those examples fill, in stream order; the last batch may have empty rows.
    """

    def __init__(self, sequence_length: Mapping[str, int], pack: bool = True) -> None:
        self.inputs_length = int(sequence_length["inputs"])
        self.targets_length = int(sequence_length["targets"])
        self.pack = pack
        self.truncated = 0

    def __call__(self, examples: Sequence[Mapping[str, np.ndarray]], batch_size: int,
                 task_ids: Sequence[int] | None = None) -> list[dict[str, torch.Tensor]]:
        inputs, _ = truncate([np.asarray(e["inputs"]) for e in examples], self.inputs_length)
        targets, _ = truncate([np.asarray(e["targets"]) for e in examples], self.targets_length)
        self.truncated += sum(1 for e in examples
                              if len(e["inputs"]) > self.inputs_length or len(e["targets"]) > self.targets_length)
        tids = np.zeros(len(examples), np.int32) if task_ids is None else np.asarray(task_ids, np.int32)
        packer = FirstFitPacker(batch_size, self.inputs_length, self.targets_length, self.pack)
        batches, cur = [], []
        for i, (x, y) in enumerate(zip(inputs, targets)):
            place = packer.add(len(x), len(y))
            if place is None:
                batches.append(self._build(cur, inputs, targets, tids, batch_size))
                packer.reset()
                cur = []
                place = packer.add(len(x), len(y))
            cur.append((i, *place))
        if cur:
            batches.append(self._build(cur, inputs, targets, tids, batch_size))
        return batches

    def _build(self, cur, inputs, targets, tids, batch_size):
        idx = np.array([c[0] for c in cur])
        p = np.array([c[1:] for c in cur]).reshape(-1, 4)
        return to_torch(assemble([inputs[i] for i in idx], [targets[i] for i in idx], p[:, 0], p[:, 1], p[:, 2],
                                 p[:, 3], tids[idx], batch_size, self.inputs_length, self.targets_length))
