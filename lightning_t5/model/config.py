"""T5 model configuration and the paper's size presets.

`T5Config` is a plain dataclass whose field names follow Hugging Face's `T5Config` where the two overlap, so a
`config.json` maps onto it almost 1:1 (see `lightning_t5.model.hf`). `PRESETS` below is the one definition of the model
sizes: the YAML files in `configs/model/` (composed by Hydra under the `model` key) are generated from it by
`write_preset_yamls("configs/model")`, and a test fails when a file differs from what PRESETS generates.
`T5Config.from_dict` validates them with errors that name the offending `model.<key>`.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lightning_t5.model.fused import BACKENDS

ATTENTION_CHOICES = ("sdpa", "eager")
ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu")
AUTOCAST_CHOICES = (None, "bfloat16", "float16")
COMPILE_CHOICES = ("auto", True, False)


@dataclass
class T5Config:
    """Hyper-parameters of a T5 encoder-decoder.

    `tie_word_embeddings`: the output projection reuses `shared.weight` (no `lm_head` parameter).
    `scale_decoder_outputs`: multiply the decoder output by d_model**-0.5 before the output projection (original T5);
    None means "same as tie_word_embeddings", which is the rule every T5 checkpoint before transformers v5 followed.
    `fused`: which kernels implement RMSNorm / the fused optimizers / cross-entropy (`lightning_t5.model.fused`).
    `attention`: "sdpa" (torch.nn.functional.scaled_dot_product_attention with the bias as an additive mask) or
    "eager" (explicit softmax(QK^T + bias)V, the readable reference).
    `autocast_dtype`: run forward under torch.autocast with this dtype (None: leave precision to the caller/Lightning).
    `compile`: torch.compile the training forward. `true`: always, as one graph or per block, whichever
    `lightning_t5.model.t5.BEST_COMPILE_MODE` names for the device (the faster in bench/model.py); `false`: never;
    `auto`: the training module compiles when the estimated compile time is below 5 % of the run's estimated time
    (`lightning_t5.model.flops.compile_pays`). State-dict names are unchanged either way.
    `z_loss`: weight of the log(Z)^2 auxiliary loss used by `T5.loss` (0 disables it).
    """

    name: str = "custom"
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool | None = None
    initializer_factor: float = 1.0
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    fused: str = "auto"
    attention: str = "sdpa"
    gradient_checkpointing: bool = False
    compile: bool | str = "auto"
    autocast_dtype: str | None = None
    z_loss: float = 0.0
    extra: dict = field(default_factory=dict, repr=False)  # unknown keys kept from HF configs (round-tripped)

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        self.validate()

    # ----------------------------------------------------------------------------------------------------------
    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        """Activation name as HF resolves it: `gated-gelu` means the tanh approximation (HF's `gelu_new`)."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @property
    def scale_outputs(self) -> bool:
        return self.tie_word_embeddings if self.scale_decoder_outputs is None else bool(self.scale_decoder_outputs)

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    def validate(self) -> None:
        def bad(key: str, value: Any, valid: str) -> ValueError:
            return ValueError(f"model.{key}={value!r} is not valid: expected {valid} (config '{self.name}').")

        for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                    "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(key, value, "a positive integer")
        if self.relative_attention_num_buckets % 2:
            raise bad("relative_attention_num_buckets", self.relative_attention_num_buckets,
                      "an even number (half the buckets are for each direction in the encoder)")
        if not 0.0 <= float(self.dropout_rate) < 1.0:
            raise bad("dropout_rate", self.dropout_rate, "a float in [0, 1)")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or parts[-1] not in ACTIVATIONS:
            raise bad("feed_forward_proj", self.feed_forward_proj,
                      f"one of {list(ACTIVATIONS)} optionally prefixed by 'gated-' (T5: 'relu', T5.1.1: 'gated-gelu')")
        if self.fused not in BACKENDS:
            raise bad("fused", self.fused, f"one of {list(BACKENDS)}")
        if self.attention not in ATTENTION_CHOICES:
            raise bad("attention", self.attention, f"one of {list(ATTENTION_CHOICES)}")
        if not (isinstance(self.compile, bool) or self.compile == "auto"):
            raise bad("compile", self.compile, "one of auto, true, false")
        if self.autocast_dtype not in AUTOCAST_CHOICES:
            raise bad("autocast_dtype", self.autocast_dtype, f"one of {list(AUTOCAST_CHOICES)}")
        if self.z_loss < 0:
            raise bad("z_loss", self.z_loss, "a non-negative float")

    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "T5Config":
        """Build from a mapping (a Hydra `model` node or a YAML file); unknown keys are an error naming valid ones."""
        values = dict(values)
        known = cls.field_names()
        unknown = [k for k in values if k not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=2)
                hint = f" (did you mean {', '.join('model.' + c for c in close)}?)" if close else ""
                hints.append(f"model.{key}{hint}")
            raise ValueError(f"Unknown model config key(s): {'; '.join(hints)}. Valid keys: {', '.join(known)}.")
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "T5Config":
        """A size preset of the paper (`small`, `t5_1_1_base`, ..., or `tiny`), with optional field overrides."""
        if name not in PRESETS:
            close = difflib.get_close_matches(name, list(PRESETS), n=3)
            raise ValueError(f"Unknown model preset {name!r}" + (f" (did you mean {close}?)" if close else "")
                             + f". Available presets: {', '.join(PRESETS)}.")
        return cls.from_dict({**PRESETS[name], "name": name, **overrides})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("extra")
        return out

    def replace(self, **changes: Any) -> "T5Config":
        return dataclasses.replace(self, **changes)


_T5_1_1 = dict(vocab_size=32128, d_kv=64, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1)
_T5 = dict(vocab_size=32128, d_kv=64, feed_forward_proj="relu", tie_word_embeddings=True, dropout_rate=0.1)

#: The paper's sizes (T5 and T5.1.1, as in the released checkpoints) plus `tiny`, the CPU test / default-run model.
#: `configs/model/<name>.yaml` is generated from these (`preset_yaml`; tests/test_model.py checks the files).
PRESETS: dict[str, dict[str, Any]] = {
    # tiny: T5.1.1-style, vocabulary rounded up from the default 8100 ids to a multiple of 64.
    "tiny": dict(vocab_size=8192, d_model=128, d_kv=32, d_ff=512, num_layers=2, num_decoder_layers=2, num_heads=4,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1),
    "small": dict(_T5, d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8),
    "base": dict(_T5, d_model=768, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12),
    "large": dict(_T5, d_model=1024, d_ff=4096, num_layers=24, num_decoder_layers=24, num_heads=16),
    "3B": dict(_T5, d_model=1024, d_kv=128, d_ff=16384, num_layers=24, num_decoder_layers=24, num_heads=32),
    "11B": dict(_T5, d_model=1024, d_kv=128, d_ff=65536, num_layers=24, num_decoder_layers=24, num_heads=128),
    "t5_1_1_small": dict(_T5_1_1, d_model=512, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
    "t5_1_1_base": dict(_T5_1_1, d_model=768, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12),
    "t5_1_1_large": dict(_T5_1_1, d_model=1024, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16),
    "t5_1_1_xl": dict(_T5_1_1, d_model=2048, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32),
    "t5_1_1_xxl": dict(_T5_1_1, d_model=4096, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64),
}


def preset_yaml(name: str) -> str:
    """The text of `configs/model/<name>.yaml`: every T5Config field of the preset, in field order."""
    import yaml

    header = (f"# T5 model preset '{name}': every lightning_t5.T5Config field (Hydra composes this under `model`,\n"
              "# so each field can be overridden on the command line, e.g. model.fused=torch model.dropout_rate=0.0).\n"
              "# Generated from lightning_t5.model.config.PRESETS by write_preset_yamls: edit PRESETS, not this "
              "file.\n")
    fields = T5Config.from_preset(name).to_dict()
    return header + "".join(yaml.safe_dump({key: value}, sort_keys=False) for key, value in fields.items())


def write_preset_yamls(directory: str | Path) -> list[Path]:
    """(Re)write `directory/<name>.yaml` for every preset; returns the paths written."""
    written = []
    for name in PRESETS:
        path = Path(directory) / f"{name}.yaml"
        path.write_text(preset_yaml(name))
        written.append(path)
    return written
