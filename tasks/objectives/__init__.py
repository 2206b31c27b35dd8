"""The T5 paper's unsupervised pretraining objectives (issue 3).

Two layers:

* pure, batch-vectorized numpy functions of ``(tokens, seeds, hyper-parameters)``: :func:`span_corruption`,
  :func:`iid_replace_spans`, :func:`iid_drop`, :func:`mask_tokens` / :func:`mass`, :func:`bert_mlm`,
  :func:`prefix_lm`, :func:`deshuffle`, all instances of :func:`denoise`; the noise masks
  (:func:`random_spans_noise_mask`, ...), T5's :func:`random_spans_helper`, and corpus chunking
  (:func:`concat_and_split`). Row ``i`` of every output depends only on row ``i`` and ``seeds[i]``.
* :class:`tasks.Task` token preprocessors (frozen dataclasses, docs/CONTRACTS.md): :class:`Denoise` and its
  named subclasses (:class:`SpanCorruption`, ...), the cacheable :class:`ChunkCorpus`, and
  :func:`objective_preprocessors` that builds the pair a corpus task needs.
"""

from tasks.objectives.chunking import concat_and_split, select_random_chunk
from tasks.objectives.functional import (
    DEFAULT_NUM_SENTINELS, INPUTS_FNS, TARGETS_FNS, bert_mlm, denoise, deshuffle, iid_drop, iid_replace_spans,
    mask_tokens, mass, prefix_lm, raw_window_length, span_corruption,
)
from tasks.objectives.masks import (
    NOISE_MASKS, all_noise_mask, iid_noise_mask, noise_mask, random_prefix_noise_mask, random_segmentation,
    random_spans_counts, random_spans_helper, random_spans_noise_mask,
)
from tasks.objectives.preprocessors import (
    DEFAULT_SEQUENCE_LENGTH, OBJECTIVES, BertMLM, ChunkCorpus, Denoise, Deshuffle, IidDrop, IidReplaceSpans, Mass,
    MaskTokens, PrefixLM, SpanCorruption, objective_preprocessors,
)
from tasks.objectives.transforms import (
    Ragged, drop_noise_tokens, drop_nonnoise_tokens, noise_span_to_unique_sentinel,
    noise_token_to_random_token_or_sentinel, noise_token_to_sentinel, nonnoise_span_to_unique_sentinel,
    permute_noise_tokens,
)

__all__ = [
    "DEFAULT_NUM_SENTINELS", "DEFAULT_SEQUENCE_LENGTH", "INPUTS_FNS", "NOISE_MASKS", "OBJECTIVES", "TARGETS_FNS",
    "BertMLM", "ChunkCorpus", "Denoise", "Deshuffle", "IidDrop", "IidReplaceSpans", "Mass", "MaskTokens", "PrefixLM",
    "Ragged", "SpanCorruption",
    "all_noise_mask", "bert_mlm", "concat_and_split", "denoise", "deshuffle", "drop_noise_tokens",
    "drop_nonnoise_tokens", "iid_drop", "iid_noise_mask", "iid_replace_spans", "mask_tokens", "mass", "noise_mask",
    "noise_span_to_unique_sentinel", "noise_token_to_random_token_or_sentinel", "noise_token_to_sentinel",
    "nonnoise_span_to_unique_sentinel", "objective_preprocessors", "permute_noise_tokens", "prefix_lm",
    "random_prefix_noise_mask", "random_segmentation", "random_spans_counts", "random_spans_helper",
    "random_spans_noise_mask", "raw_window_length", "select_random_chunk", "span_corruption",
]
