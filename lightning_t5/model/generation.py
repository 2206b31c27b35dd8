"""Greedy and beam-search decoding with a key/value cache, batched, stopping at EOS.

The encoder runs once; each decoder step feeds one token per sequence, appends its self-attention K/V to the cache
and reuses the cross-attention K/V computed at the first step. The relative bias of a step is the single row
(query position t against keys 0..t). Beam search follows Hugging Face's semantics (2*K candidates per step,
finished hypotheses scored by sum(log p) / generated_length**length_penalty, stop when no running beam can beat the
worst kept hypothesis), vectorised over the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .attention import combine_bias_and_mask, position_bias

if TYPE_CHECKING:
    from .t5 import LayerCache, T5


class _Decoder:
    """One-token-at-a-time decoder state for `model` over encoder outputs (rows may be repeated for beams)."""

    def __init__(self, model: "T5", encoder_hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        self.model = model
        self.encoder_hidden = encoder_hidden
        device = encoder_hidden.device
        self.dtype = model._compute_dtype(device)
        self.cross_mask = model.cross_attention_mask(device, None, None, attention_mask)
        self.caches: list[LayerCache | None] = [None] * len(model.decoder.block)

    def step(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        """Log-probabilities [N, V] (fp32) of the next token after feeding `tokens` [N] at position t."""
        model, device = self.model, tokens.device
        q_pos = torch.full((1, 1), t, device=device)
        k_pos = torch.arange(t + 1, device=device)[None]
        bias = position_bias(model.decoder.relative_attention_bias, q_pos, k_pos, bidirectional=False,
                             cfg=model.config)
        mask = combine_bias_and_mask(bias, None, self.dtype)
        hidden, self.caches = model.decoder(model.shared(tokens[:, None]), mask, self.encoder_hidden,
                                            self.cross_mask, caches=self.caches)
        return torch.log_softmax(model.lm_logits(hidden)[:, -1].float(), dim=-1)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep self-attention cache rows `index` (beam search). `index` never leaves an example's own beams and
        every beam of an example has the same cross-attention K/V, so those need no reordering."""
        self.caches = [((s[0].index_select(0, index), s[1].index_select(0, index)), c) for s, c in self.caches]


@torch.no_grad()
def generate(model: "T5", input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             max_new_tokens: int = 64, num_beams: int = 1, eos_token_id: int | None = None,
             length_penalty: float = 1.0) -> torch.Tensor:
    """Decode `input_ids` [B, L]; returns [B, T<=max_new_tokens] (no start token; pad after EOS)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}.")
    cfg = model.config
    eos = cfg.eos_token_id if eos_token_id is None else eos_token_id
    was_training = model.training
    model.eval()
    try:
        with model._autocast(input_ids.device):
            encoder_hidden = model.encode(input_ids, attention_mask=attention_mask)
            if num_beams == 1:
                return _greedy(model, encoder_hidden, attention_mask, max_new_tokens, eos)
            return _beam_search(model, encoder_hidden, attention_mask, max_new_tokens, eos, num_beams,
                                length_penalty)
    finally:
        model.train(was_training)


def _greedy(model: "T5", encoder_hidden: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int,
            eos: int) -> torch.Tensor:
    batch, device = encoder_hidden.shape[0], encoder_hidden.device
    pad = model.config.pad_token_id
    decoder = _Decoder(model, encoder_hidden, attention_mask)
    tokens = torch.full((batch,), model.config.decoder_start_token_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    out = []
    for t in range(max_new_tokens):
        next_tokens = decoder.step(tokens, t).argmax(dim=-1)
        next_tokens = torch.where(finished, torch.full_like(next_tokens, pad), next_tokens)
        out.append(next_tokens)
        finished |= next_tokens == eos
        tokens = next_tokens
        if bool(finished.all()):
            break
    return torch.stack(out, dim=1)


def _beam_search(model: "T5", encoder_hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                 max_new_tokens: int, eos: int, k: int, length_penalty: float) -> torch.Tensor:
    batch, device = encoder_hidden.shape[0], encoder_hidden.device
    pad = model.config.pad_token_id
    rows = torch.arange(batch, device=device)
    encoder_hidden = encoder_hidden.repeat_interleave(k, dim=0)
    if attention_mask is not None:
        attention_mask = attention_mask.repeat_interleave(k, dim=0)
    decoder = _Decoder(model, encoder_hidden, attention_mask)
    tokens = torch.full((batch * k,), model.config.decoder_start_token_id, dtype=torch.long, device=device)
    # Running beams: cumulative log-prob; only beam 0 is live at the start so the first step has no duplicates.
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    sequences = torch.full((batch, k, max_new_tokens), pad, dtype=torch.long, device=device)
    fin_scores = torch.full((batch, k), float("-inf"), device=device)
    fin_seqs = torch.full((batch, k, max_new_tokens), pad, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    neg_inf = torch.tensor(float("-inf"), device=device)
    for t in range(max_new_tokens):
        logp = decoder.step(tokens, t)                                    # [B*K, V]
        vocab = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(batch, k * vocab)
        top_scores, top_idx = cand.topk(2 * k, dim=-1)                    # [B, 2K]
        top_beam, top_token = top_idx // vocab, top_idx % vocab
        prev = sequences[rows[:, None], top_beam]                          # [B, 2K, T]
        prev[:, :, t] = top_token
        length = float(t + 1) ** length_penalty
        # Finished hypotheses: EOS among the top K ranks (HF ignores EOS ranked below K), merged into the kept set.
        is_eos = top_token == eos
        rank_ok = torch.arange(2 * k, device=device)[None] < k
        new_fin = torch.where(is_eos & rank_ok & ~done[:, None], top_scores / length, neg_inf)
        merged_scores = torch.cat([fin_scores, new_fin], dim=1)
        merged_seqs = torch.cat([fin_seqs, prev], dim=1)
        fin_scores, keep = merged_scores.topk(k, dim=-1)
        fin_seqs = merged_seqs[rows[:, None], keep]
        # Running beams: the best K non-EOS candidates.
        run_scores = torch.where(is_eos, neg_inf, top_scores)
        scores, pick = run_scores.topk(k, dim=-1)
        sequences = prev[rows[:, None], pick]
        beam_index = (rows[:, None] * k + top_beam.gather(1, pick)).view(-1)
        tokens = top_token.gather(1, pick).view(-1)
        decoder.reorder(beam_index)
        # An example is done when it holds K hypotheses and its best running beam cannot beat the worst of them.
        full = torch.isfinite(fin_scores[:, -1])
        done |= full & (scores[:, 0] / length <= fin_scores[:, -1])
        if bool(done.all()):
            break
    else:
        # Out of length: running beams become hypotheses too (HF's finalize).
        last = torch.where(done[:, None], neg_inf, scores / float(max_new_tokens) ** length_penalty)
        merged_scores = torch.cat([fin_scores, last], dim=1)
        merged_seqs = torch.cat([fin_seqs, sequences], dim=1)
        fin_scores, keep = merged_scores.topk(k, dim=-1)
        fin_seqs = merged_seqs[rows[:, None], keep]
    best = fin_seqs[:, 0]                                                  # topk output is sorted: 0 is the best
    # Pad after the first EOS and trim trailing all-pad columns.
    after_eos = (best == eos).long().cumsum(-1) - (best == eos).long() > 0
    best = best.masked_fill(after_eos, pad)
    nonpad = (best != pad).any(0).nonzero()
    length = int(nonpad.max()) + 1 if nonpad.numel() else 1
    return best[:, :length]
