"""The T5 encoder-decoder (original T5 and T5.1.1), packed-batch aware, with HF-identical parameter names.

Parameter names are exactly those of `transformers.T5ForConditionalGeneration` minus the aliases HF ties
(`encoder.embed_tokens`, `decoder.embed_tokens`, and `lm_head` when the output projection is tied), so a HF state dict
loads with no renaming (`lightning_t5.model.hf`). Two calling conventions:

* seqio / packed: `model(encoder_input_tokens=..., decoder_input_tokens=..., encoder_segment_ids=..., ...)` -> logits.
  Segment ids stop attention across packed examples; the relative bias is that of the index difference (T5X's),
  which equals the difference of per-segment positions for every pair the segment mask keeps, so the
  `*_positions` features are accepted and not needed.
* Hugging Face: `model(input_ids=..., attention_mask=..., labels=...)` -> `Seq2SeqLMOutput(loss, logits, ...)`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import KVCache, T5Attention, combine_bias_and_mask, relative_bias, to_autocast_dtype
from .config import T5Config
from .fused import PORTABLE_BACKEND, Dropout, Linear, gelu_tanh_mul, linear, make_rms_norm, resolve_backend
from .losses import LossOutput, hf_cross_entropy, masked_cross_entropy, torch_loss_sums

logger = logging.getLogger("lightning_t5.model")

COMPILE_MODES = ("model", "block")
#: What `model.compile=true` compiles, per device type: the faster of the two in `bench/model.py --compile-modes
#: model,block` (which prints both and says whether this table still names the faster one). CPU, T5.1.1-small
#: 8 x (512 + 114) fp32, one run on the shared 2-core machine: whole stacks 4.90 s/step, per block 5.21 s, eager
#: 5.69 s. CUDA: not measured yet (no GPU was lent to this project's sessions); whole stacks as on CPU until
#: `bench/gpu_check.py --compile-modes model,block` says otherwise. FSDP runs compile per block regardless.
BEST_COMPILE_MODE = {"cpu": "model", "cuda": "model"}


def best_compile_mode(device_type: str) -> str:
    """`BEST_COMPILE_MODE` for `device_type` ("model" for device types that were not measured)."""
    return BEST_COMPILE_MODE.get(device_type, "model")


SEQIO_INPUTS = ("encoder_input_tokens", "decoder_input_tokens", "encoder_segment_ids", "decoder_segment_ids",
                "encoder_positions", "decoder_positions")
SEQIO_EXTRAS = ("decoder_target_tokens", "decoder_loss_weights", "decoder_task_ids")  # accepted by forward

_ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}

LayerCache = tuple[KVCache | None, KVCache | None]  # (self-attention K/V, cross-attention K/V)


@dataclass
class Seq2SeqLMOutput:
    """What the HF-style call returns (the fields transformers users reach for)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


# ---------------------------------------------------------------------------------------------------------------
class T5DenseActDense(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.wi = Linear(cfg.d_model, cfg.d_ff)
        self.wo = Linear(cfg.d_ff, cfg.d_model)
        self.dropout = Dropout(cfg.dropout_rate)
        self.act = _ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(self.act(self.wi(x))))


class T5DenseGatedActDense(nn.Module):
    """wo(act(wi_0 x) * wi_1 x). T5.1.1's tanh-GELU and multiply: `fused.gelu_tanh_mul` (one Liger kernel on the
    liger backend, an exp-based form under torch.compile)."""

    def __init__(self, cfg: T5Config, backend: str = "torch") -> None:
        super().__init__()
        self.wi_0 = Linear(cfg.d_model, cfg.d_ff)
        self.wi_1 = Linear(cfg.d_model, cfg.d_ff)
        self.wo = Linear(cfg.d_ff, cfg.d_model)
        self.dropout = Dropout(cfg.dropout_rate)
        self.act = _ACTIVATIONS[cfg.activation]
        self.gelu_tanh = cfg.activation == "gelu_new"
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_autocast_dtype(x)
        # wi_0 and wi_1 as one GEMM against the concatenated weights (faster than two; parameters stay HF's)
        gate, up = linear(x, torch.cat([self.wi_0.weight, self.wi_1.weight])).chunk(2, dim=-1)
        if self.gelu_tanh:
            return self.wo(self.dropout(gelu_tanh_mul(gate, up, self.backend)))
        return self.wo(self.dropout(self.act(gate) * up))


class T5LayerFF(nn.Module):
    def __init__(self, cfg: T5Config, backend: str) -> None:
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(cfg, backend) if cfg.is_gated else T5DenseActDense(cfg)
        self.layer_norm = make_rms_norm(cfg.d_model, cfg.layer_norm_epsilon, backend)
        self.dropout = Dropout(cfg.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


class T5LayerSelfAttention(nn.Module):
    def __init__(self, cfg: T5Config, backend: str, has_relative_attention_bias: bool) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(cfg, has_relative_attention_bias)
        self.layer_norm = make_rms_norm(cfg.d_model, cfg.layer_norm_epsilon, backend)
        self.dropout = Dropout(cfg.dropout_rate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, past: KVCache | None = None
                ) -> tuple[torch.Tensor, KVCache]:
        out, kv = self.SelfAttention(self.layer_norm(x), mask, past=past)
        return x + self.dropout(out), kv


class T5LayerCrossAttention(nn.Module):
    def __init__(self, cfg: T5Config, backend: str) -> None:
        super().__init__()
        self.EncDecAttention = T5Attention(cfg, False)
        self.layer_norm = make_rms_norm(cfg.d_model, cfg.layer_norm_epsilon, backend)
        self.dropout = Dropout(cfg.dropout_rate)

    def forward(self, x: torch.Tensor, encoder_hidden: torch.Tensor | None, mask: torch.Tensor | None,
                past: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        out, kv = self.EncDecAttention(self.layer_norm(x), mask, key_value_states=encoder_hidden, past=past,
                                       static_past=True)
        return x + self.dropout(out), kv


class T5Block(nn.Module):
    """`layer[0]` self-attention, (`layer[1]` cross-attention,) last: feed-forward - HF's layout."""

    def __init__(self, cfg: T5Config, backend: str, is_decoder: bool, has_relative_attention_bias: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [T5LayerSelfAttention(cfg, backend, has_relative_attention_bias)]
        if is_decoder:
            layers.append(T5LayerCrossAttention(cfg, backend))
        layers.append(T5LayerFF(cfg, backend))
        self.layer = nn.ModuleList(layers)
        self.is_decoder = is_decoder
        self.compiled_body: Any = None  # set by T5.enable_compile("block"); used by training forwards only

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor | None, encoder_hidden: torch.Tensor | None = None,
                cross_mask: torch.Tensor | None = None, cache: LayerCache | None = None
                ) -> tuple[torch.Tensor, LayerCache]:
        if cache is None and self.compiled_body is not None and self.training:
            return self.compiled_body(x, self_mask, encoder_hidden, cross_mask)  # per-block compilation
        return self.body(x, self_mask, encoder_hidden, cross_mask, cache)

    def body(self, x: torch.Tensor, self_mask: torch.Tensor | None, encoder_hidden: torch.Tensor | None = None,
             cross_mask: torch.Tensor | None = None, cache: LayerCache | None = None
             ) -> tuple[torch.Tensor, LayerCache]:
        self_past, cross_past = cache if cache is not None else (None, None)
        x, self_kv = self.layer[0](x, self_mask, past=self_past)
        cross_kv = None
        if self.is_decoder:
            x, cross_kv = self.layer[1](x, encoder_hidden, cross_mask, past=cross_past)
        return self.layer[-1](x), (self_kv, cross_kv)


class T5Stack(nn.Module):
    """A stack of blocks + final norm. Embeddings are looked up by `T5` (shared), so no `embed_tokens` alias here."""

    def __init__(self, cfg: T5Config, backend: str, is_decoder: bool) -> None:
        super().__init__()
        n_layers = cfg.num_decoder_layers if is_decoder else cfg.num_layers
        self.block = nn.ModuleList([T5Block(cfg, backend, is_decoder, i == 0) for i in range(n_layers)])
        self.final_layer_norm = make_rms_norm(cfg.d_model, cfg.layer_norm_epsilon, backend)
        self.dropout = Dropout(cfg.dropout_rate)
        self.is_decoder = is_decoder
        self.gradient_checkpointing = cfg.gradient_checkpointing

    @property
    def relative_attention_bias(self) -> nn.Embedding:
        return self.block[0].layer[0].SelfAttention.relative_attention_bias

    def forward(self, embeds: torch.Tensor, self_mask: torch.Tensor | None,
                encoder_hidden: torch.Tensor | None = None, cross_mask: torch.Tensor | None = None,
                caches: list[LayerCache | None] | None = None) -> tuple[torch.Tensor, list[LayerCache] | None]:
        x = self.dropout(embeds)
        if encoder_hidden is not None:
            encoder_hidden = to_autocast_dtype(encoder_hidden)  # once for every cross-attention layer
        new_caches: list[LayerCache] | None = [] if caches is not None else None
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and caches is None
        for i, block in enumerate(self.block):
            if use_ckpt:
                x = checkpoint(block, x, self_mask, encoder_hidden, cross_mask, use_reentrant=False)[0]
            else:
                x, layer_cache = block(x, self_mask, encoder_hidden, cross_mask,
                                       cache=caches[i] if caches is not None else None)
                if new_caches is not None:
                    new_caches.append(layer_cache)
        return self.dropout(self.final_layer_norm(x)), new_caches


# ---------------------------------------------------------------------------------------------------------------
class T5(nn.Module):
    """T5 encoder-decoder. See the module docstring for the two calling conventions."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.config = cfg
        self.backend = resolve_backend(cfg.fused)
        # One draw from the caller's RNG seeds the whole init (`reset_parameters`), and the submodules' default
        # inits, which it overwrites, draw from a fork: weights and the caller's RNG are the same whether the model
        # is built here or on the meta device and initialised later on its shards (lightning_t5.dist.sharding).
        self.init_seed = int(torch.randint(2**62, (), device="cpu"))
        with torch.random.fork_rng(devices=[]):
            self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.encoder = T5Stack(cfg, self.backend, is_decoder=False)
            self.decoder = T5Stack(cfg, self.backend, is_decoder=True)
            self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.d_model, cfg.vocab_size)
        self.reset_parameters()
        self.compile_mode: str | None = None  # "model" | "block" once compiled (see enable_compile)
        self._compile_request: str | None = None
        self._compiled_stacks: Any = None
        self._compiled_loss_sums: Any = None
        self.compile_count = 0  # graphs compiled so far (each new input shape compiles again)
        if cfg.compile is True:
            self.enable_compile()

    # -- construction -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """T5's own initialisation (mesh-tensorflow / t5x variance scaling), times `initializer_factor`, drawn from
        `generator` (default: a CPU generator seeded with `init_seed`, i.e. the weights the model was built with),
        parameter by parameter in a fixed order.

        Every matrix is drawn with std fan_in^-1/2 so that each layer keeps unit-scale activations: q
        (d_model * d_kv)^-1/2 (T5 does not scale attention logits, so q absorbs the 1/sqrt(d_kv)), k and v
        d_model^-1/2, o (heads * d_kv)^-1/2, wi d_model^-1/2, wo d_ff^-1/2, relative bias d_model^-1/2, norms 1.
        The shared embedding is drawn with std 1. The output projection must give unit-scale initial logits, so
        that the initial loss is about ln V: tied (original T5) it is the embedding and the decoder output is
        scaled by d_model^-1/2; untied (T5.1.1) `lm_head` is drawn with std d_model^-1/2 as in mesh-tf/t5x.
        Hugging Face draws an untied lm_head with std 1 (a known defect, transformers PR #26441): logits of std
        sqrt(d_model) and an initial loss of 40-80 that short from-scratch runs spend their steps undoing.
        Loading weights (HF or checkpoints) overwrites all of this, so parity does not depend on it.
        """
        cfg, f = self.config, self.config.initializer_factor
        g = generator if generator is not None else torch.Generator().manual_seed(self.init_seed)
        nn.init.normal_(self.shared.weight, std=f * 1.0, generator=g)
        if self.lm_head is not None:
            # An untied head behind the d_model^-1/2 output scaling (a v5 config quirk) is already unit-scale at 1.
            nn.init.normal_(self.lm_head.weight, std=f * (1.0 if cfg.scale_outputs else cfg.d_model ** -0.5),
                            generator=g)
        for module in self.modules():
            if isinstance(module, T5Attention):
                nn.init.normal_(module.q.weight, std=f * (cfg.d_model * cfg.d_kv) ** -0.5, generator=g)
                nn.init.normal_(module.k.weight, std=f * cfg.d_model ** -0.5, generator=g)
                nn.init.normal_(module.v.weight, std=f * cfg.d_model ** -0.5, generator=g)
                nn.init.normal_(module.o.weight, std=f * cfg.inner_dim ** -0.5, generator=g)
                if hasattr(module, "relative_attention_bias"):
                    nn.init.normal_(module.relative_attention_bias.weight, std=f * cfg.d_model ** -0.5, generator=g)
            elif isinstance(module, (T5DenseActDense, T5DenseGatedActDense)):
                for name in ("wi", "wi_0", "wi_1"):
                    if hasattr(module, name):
                        nn.init.normal_(getattr(module, name).weight, std=f * cfg.d_model ** -0.5, generator=g)
                nn.init.normal_(module.wo.weight, std=f * cfg.d_ff ** -0.5, generator=g)
            elif hasattr(module, "weight") and module.weight is not None and module.weight.dim() == 1:
                nn.init.ones_(module.weight)  # RMSNorm weights (any backend)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "T5":
        return cls(T5Config.from_preset(name, **overrides))

    @classmethod
    def from_hf(cls, path: str, **overrides: Any) -> "T5":
        """Load a transformers T5 checkpoint directory (or hub id); `overrides` set T5Config fields (e.g. fused)."""
        from .hf import load_hf

        return load_hf(cls, path, **overrides)

    def save_hf(self, path: str) -> None:
        """Write config.json + model.safetensors that `T5ForConditionalGeneration.from_pretrained` loads."""
        from .hf import save_hf

        save_hf(self, path)

    @classmethod
    def from_state_dict(cls, model_config: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                        fused: str = PORTABLE_BACKEND) -> "T5":
        """A model of `model_config` (T5Config fields) holding the full, unsharded weights `state`, in eval mode.

        Built on `fused` (default: the CPU-safe torch kernels): the kernel backend changes no parameter, so a run
        trained with `fused=apex` or `fused=liger` loads and exports on a machine that has neither. Keys of
        compiled blocks (`._orig_mod`) are accepted.
        """
        config = {**dict(model_config), "fused": fused, "compile": False}
        model = cls(T5Config.from_dict(config))
        model.load_state_dict({k.replace("._orig_mod", ""): v for k, v in state.items()})
        return model.eval()

    # -- compilation --------------------------------------------------------------------------------------------
    def enable_compile(self, mode: str | None = None) -> None:
        """torch.compile the training forward: `mode` "model" (embeddings, encoder and decoder as one graph; the
        masks are built eagerly, once per step, and passed in) or "block" (each block on its own; what FSDP2
        shards), None = `best_compile_mode` for the device of the first training batch. Compilation happens at
        that first training forward, and only training forwards (`model.train()`) run compiled code: evaluation
        and generation, whose shapes vary, stay eager, so a run compiles once per distinct training batch shape
        (`compile_count`; one shape for the packed and padded batches of the data pipeline). Parameter names and
        the state dict are unchanged. After the decoder, the gather of the weighted positions (whose count N varies
        from batch to batch) runs eagerly; the output projection and the cross-entropy of those N positions
        (`losses.torch_loss_sums`) are one more graph, compiled with N dynamic, so that a new N does not compile
        again (with the torch cross-entropy kernel; Liger's and Apex's fused kernels run as they are)."""
        if mode is not None and mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r} is not valid: expected one of {list(COMPILE_MODES)}.")
        self._compile_request = mode or "best"

    def _count_compile(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        """The inductor backend, counting (and logging) every graph it compiles."""
        from torch._inductor.compile_fx import compile_fx

        self.compile_count += 1
        shapes = [tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.dim() >= 2][:2]
        logger.info("torch.compile (%s): graph %d compiled (inputs %s)", self.compile_mode, self.compile_count,
                    shapes)
        return compile_fx(gm, example_inputs)

    def _apply_compile(self, device: torch.device) -> None:
        mode = self._compile_request
        self._compile_request = None
        if mode == "best":
            mode = best_compile_mode(device.type)
        self.compile_mode = mode
        if mode == "model":
            self._compiled_stacks = torch.compile(self._stacks, backend=self._count_compile)
        else:
            for block in (*self.encoder.block, *self.decoder.block):
                block.compiled_body = torch.compile(block.body, backend=self._count_compile)
        self._compiled_loss_sums = torch.compile(torch_loss_sums, backend=self._count_compile)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- building blocks ----------------------------------------------------------------------------------------
    def _compute_dtype(self, device: torch.device) -> torch.dtype:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.shared.weight.dtype

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.config.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, self.config.autocast_dtype))

    def encoder_mask(self, length: int, device: torch.device, segment_ids: torch.Tensor | None = None,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's additive self-attention mask with the relative bias folded in, [B|1, H, L, L]."""
        bias = relative_bias(self.encoder.relative_attention_bias, length, length, bidirectional=True,
                             cfg=self.config, device=device)
        keep = None
        if segment_ids is not None:
            keep = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
        elif attention_mask is not None:
            keep = attention_mask.bool()[:, None, None, :]
        return combine_bias_and_mask(bias, keep, self._compute_dtype(device))

    def decoder_masks(self, length: int, device: torch.device, segment_ids: torch.Tensor | None = None,
                      encoder_segment_ids: torch.Tensor | None = None,
                      encoder_attention_mask: torch.Tensor | None = None,
                      decoder_attention_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder's causal, segment-restricted self-attention mask (relative bias folded in) and the
        cross-attention mask."""
        bias = relative_bias(self.decoder.relative_attention_bias, length, length, bidirectional=False,
                             cfg=self.config, device=device)
        keep = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
        if segment_ids is not None:
            keep = keep & (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
        if decoder_attention_mask is not None:
            keep = keep & decoder_attention_mask.bool()[:, None, None, :]
        self_mask = combine_bias_and_mask(bias, keep, self._compute_dtype(device))
        return self_mask, self.cross_attention_mask(device, segment_ids, encoder_segment_ids, encoder_attention_mask)

    def encode(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder hidden states [B, L, d]. Packed rows: `segment_ids` (0 = padding); HF-style: `attention_mask`.

        `positions` (seqio's per-segment positions) are accepted and not needed: the bias is that of the index
        difference, which equals the position difference for every pair the segment mask keeps (module docstring
        of `lightning_t5.model.attention`)."""
        del positions
        mask = self.encoder_mask(input_ids.shape[1], input_ids.device, segment_ids, attention_mask)
        hidden, _ = self.encoder(self.shared(input_ids), mask)
        return hidden

    def cross_attention_mask(self, device: torch.device, decoder_segment_ids: torch.Tensor | None,
                             encoder_segment_ids: torch.Tensor | None,
                             encoder_attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        if decoder_segment_ids is not None and encoder_segment_ids is not None:
            keep = (decoder_segment_ids[:, :, None] == encoder_segment_ids[:, None, :])[:, None]
        elif encoder_attention_mask is not None:
            keep = encoder_attention_mask.bool()[:, None, None, :]
        elif encoder_segment_ids is not None:
            keep = (encoder_segment_ids != 0)[:, None, None, :]
        else:
            return None
        return combine_bias_and_mask(None, keep, self._compute_dtype(device))

    def decode(self, decoder_input_ids: torch.Tensor, encoder_hidden: torch.Tensor,
               segment_ids: torch.Tensor | None = None, positions: torch.Tensor | None = None,
               encoder_segment_ids: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
               decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder hidden states (teacher forcing) [B, Lt, d]: causal, segment-restricted self-attention.
        `positions`: as in `encode`, accepted and not needed."""
        del positions
        self_mask, cross_mask = self.decoder_masks(decoder_input_ids.shape[1], decoder_input_ids.device,
                                                   segment_ids, encoder_segment_ids, encoder_attention_mask,
                                                   decoder_attention_mask)
        hidden, _ = self.decoder(self.shared(decoder_input_ids), self_mask, encoder_hidden, cross_mask)
        return hidden

    def _output_hidden(self, decoder_hidden: torch.Tensor) -> torch.Tensor:
        """The decoder output as the output projection takes it (scaled by d_model^-0.5 for tied embeddings)."""
        if self.config.scale_outputs:
            decoder_hidden = decoder_hidden * (self.config.d_model ** -0.5)
        return decoder_hidden

    def lm_logits(self, decoder_hidden: torch.Tensor) -> torch.Tensor:
        return linear(self._output_hidden(decoder_hidden), self.output_embedding())

    def output_embedding(self) -> torch.Tensor:
        return self.shared.weight if self.lm_head is None else self.lm_head.weight

    # -- calls --------------------------------------------------------------------------------------------------
    def forward(self, encoder_input_tokens: torch.Tensor | None = None,
                decoder_input_tokens: torch.Tensor | None = None,
                encoder_segment_ids: torch.Tensor | None = None, decoder_segment_ids: torch.Tensor | None = None,
                encoder_positions: torch.Tensor | None = None, decoder_positions: torch.Tensor | None = None, *,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, logits_mask: torch.Tensor | None = None,
                decoder_target_tokens: torch.Tensor | None = None, decoder_loss_weights: torch.Tensor | None = None,
                return_loss: bool = False, z_loss: float | None = None,
                **batch_extras: Any) -> torch.Tensor | Seq2SeqLMOutput | LossOutput:
        """seqio names -> logits [B, Lt, V]; HF names (`input_ids`, ...) -> `Seq2SeqLMOutput`;
        seqio names + `return_loss=True` -> the training loss (`LossOutput`, see below).

        `logits_mask` (bool [B, Lt], seqio call only): return the logits of the True positions only, as [N, V] in
        row-major order. Training passes `decoder_loss_weights > 0`: padding rows of a packed or padded batch then
        cost no output projection and no softmax (with an 8k-32k vocabulary that is most of a small model's
        decoder compute when targets are short), and the loss and its gradients are unchanged.

        `return_loss=True` (the training path: `model(**batch, return_loss=True)`): the loss of
        `decoder_target_tokens` weighted by `decoder_loss_weights` (default: targets != pad), computed by
        `lightning_t5.model.losses.masked_cross_entropy` on the positions with weight > 0 only (the logits_mask saving
        above) with the backend's cross-entropy kernel; `z_loss` defaults to `config.z_loss`. The loss is computed
        here, inside forward, because Liger's fused linear cross-entropy reads the output embedding, which FSDP
        unshards only during the wrapped module's forward. Returns sums (`LossOutput.sum`, `.count`) so that
        data-parallel training can normalise by the global token count.

        Other seqio batch keys (decoder_task_ids) are accepted and ignored so that `model(**batch)` works.
        """
        unknown = [k for k in batch_extras if k not in SEQIO_EXTRAS]
        if unknown:
            raise TypeError(f"T5.forward got unexpected argument(s) {unknown}; seqio inputs are {list(SEQIO_INPUTS)}, "
                            "HF-style inputs are input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, "
                            "labels.")
        if input_ids is not None:
            return self._hf_forward(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels)
        if encoder_input_tokens is None or decoder_input_tokens is None:
            raise TypeError("T5.forward needs encoder_input_tokens and decoder_input_tokens (seqio names) or "
                            "input_ids (+ labels or decoder_input_ids) (Hugging Face names).")
        device = encoder_input_tokens.device
        if self._compile_request is not None and self.training:
            self._apply_compile(device)
        with self._autocast(device):
            decoder_hidden = self._encode_decode(encoder_input_tokens, decoder_input_tokens, encoder_segment_ids,
                                                 decoder_segment_ids)
            if return_loss:
                return self._loss(decoder_hidden, decoder_target_tokens, decoder_loss_weights, z_loss)
            if logits_mask is not None:
                decoder_hidden = decoder_hidden[logits_mask.bool()]
            return self.lm_logits(decoder_hidden)

    def _encode_decode(self, encoder_input_tokens: torch.Tensor, decoder_input_tokens: torch.Tensor,
                       encoder_segment_ids: torch.Tensor | None, decoder_segment_ids: torch.Tensor | None
                       ) -> torch.Tensor:
        """Decoder hidden states of a seqio batch: the masks (built once, read by every layer) and the embedding
        lookups, eager, then both stacks (`_stacks`, compiled as one graph by `enable_compile("model")` in
        training)."""
        device = encoder_input_tokens.device
        encoder_mask = self.encoder_mask(encoder_input_tokens.shape[1], device, encoder_segment_ids)
        self_mask, cross_mask = self.decoder_masks(decoder_input_tokens.shape[1], device, decoder_segment_ids,
                                                   encoder_segment_ids)
        stacks = self._stacks
        if self._compiled_stacks is not None and self.training:
            stacks = self._compiled_stacks
        return stacks(self.shared(encoder_input_tokens), self.shared(decoder_input_tokens), encoder_mask, self_mask,
                      cross_mask)

    def _stacks(self, encoder_embeds: torch.Tensor, decoder_embeds: torch.Tensor, encoder_mask: torch.Tensor | None,
                self_mask: torch.Tensor | None, cross_mask: torch.Tensor | None) -> torch.Tensor:
        """Encoder and decoder: every matmul of the forward but the output projection. The embeddings and the
        masks come in as tensors. Compiled, each layer's softmax then reads the one materialised mask (inductor
        would otherwise inline the mask construction, bias gather included, into every layer's softmax passes),
        and the embedding's backward stays torch's (inductor's scatter-add into the [V, d] gradient took ~3x as
        long at the tiny default shape)."""
        encoder_hidden, _ = self.encoder(encoder_embeds, encoder_mask)
        hidden, _ = self.decoder(decoder_embeds, self_mask, encoder_hidden, cross_mask)
        return hidden

    def _loss(self, decoder_hidden: torch.Tensor, targets: torch.Tensor | None, weights: torch.Tensor | None,
              z_loss: float | None) -> LossOutput:
        if targets is None:
            raise TypeError("T5.forward(return_loss=True) needs decoder_target_tokens (and decoder_loss_weights).")
        if weights is None:
            weights = (targets != self.config.pad_token_id).float()
        mask = weights > 0
        hidden, targets, weights = self._output_hidden(decoder_hidden[mask]), targets[mask], weights[mask]
        compiled_sums = self._compiled_loss_sums if self.training else None
        if compiled_sums is not None:
            for t in (hidden, targets, weights):  # N varies from batch to batch: one graph for every N
                torch._dynamo.maybe_mark_dynamic(t, 0)
        return masked_cross_entropy(hidden, self.output_embedding(), targets, weights, mask, backend=self.backend,
                                    project=linear, z_loss=self.config.z_loss if z_loss is None else float(z_loss),
                                    compiled_sums=compiled_sums)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs from labels (HF `_shift_right`): prepend the start token, drop the last, -100 -> pad."""
        shifted = labels.new_full(labels.shape, self.config.decoder_start_token_id)
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    def _hf_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    decoder_input_ids: torch.Tensor | None, decoder_attention_mask: torch.Tensor | None,
                    labels: torch.Tensor | None) -> Seq2SeqLMOutput:
        if decoder_input_ids is None:
            if labels is None:
                raise TypeError("The HF-style call needs decoder_input_ids or labels (decoder inputs are derived from "
                                "labels by shifting them right).")
            decoder_input_ids = self.shift_right(labels)
        with self._autocast(input_ids.device):
            encoder_hidden = self.encode(input_ids, attention_mask=attention_mask)
            decoder_hidden = self.decode(decoder_input_ids, encoder_hidden, encoder_attention_mask=attention_mask,
                                         decoder_attention_mask=decoder_attention_mask)
            logits = self.lm_logits(decoder_hidden)
        loss = hf_cross_entropy(logits, labels) if labels is not None else None
        return Seq2SeqLMOutput(logits=logits, loss=loss, encoder_last_hidden_state=encoder_hidden)

    def loss(self, batch: Mapping[str, torch.Tensor], z_loss: float | None = None) -> LossOutput:
        """Training loss of a seqio batch (`self(**batch, return_loss=True)`); `.loss` is the per-token mean."""
        return self(**{k: batch[k] for k in (*SEQIO_INPUTS, *SEQIO_EXTRAS) if k in batch}, return_loss=True,
                    z_loss=z_loss)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 64, num_beams: int = 1, eos_token_id: int | None = None,
                 length_penalty: float = 1.0) -> torch.Tensor:
        """Greedy (num_beams=1) or beam search with a K/V cache; returns [B, <= max_new_tokens] token ids without
        the start token, padded with pad_token_id after EOS."""
        from .generation import generate

        return generate(self, input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                        num_beams=num_beams, eos_token_id=eos_token_id, length_penalty=length_penalty)
