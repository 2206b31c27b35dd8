"""The transformers side of every model benchmark: `T5ForConditionalGeneration` with our config and our weights.

One construction for bench/model.py, bench/train.py and bench/gpu_check.py, so the baseline they compare against is
the same model. transformers v5 ties `lm_head` to the input embedding whatever the config says, so an untied model
gets its own `lm_head` parameter (our trained values); a tied one keeps the tie.
"""

from __future__ import annotations

import torch


def hf_from_ours(ours: torch.nn.Module) -> torch.nn.Module:
    """transformers' T5 with `ours.config` and `ours`' weights (on the CPU; move it where it runs)."""
    import transformers

    cfg = ours.config
    hf_cfg = transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff, num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads, dropout_rate=cfg.dropout_rate,
        feed_forward_proj=cfg.feed_forward_proj, tie_word_embeddings=cfg.tie_word_embeddings,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1, scale_decoder_outputs=cfg.scale_outputs)
    model = transformers.T5ForConditionalGeneration(hf_cfg)
    state = {k: v.detach().cpu() for k, v in ours.state_dict().items()}
    if ours.lm_head is not None:
        model.lm_head.weight = torch.nn.Parameter(state["lm_head.weight"].clone())
    else:
        state["lm_head.weight"] = state["shared.weight"]
    missing, _ = model.load_state_dict(state, strict=False)
    assert all("embed_tokens" in k for k in missing), missing  # tied copies of shared.weight only
    return model
