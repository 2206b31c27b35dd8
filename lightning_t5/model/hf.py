"""Hugging Face transformers T5 checkpoints: load into `T5`, save what `T5ForConditionalGeneration` loads.

Weights are read only with safetensors or `torch.load(weights_only=True)` - never an unrestricted unpickle.
Parameter names are identical to HF's; the only differences are HF's tied aliases (`encoder/decoder.embed_tokens`,
`lm_head` when tied), which are dropped on load (after checking they really are copies) and not written on save.

Output-projection rules (transformers v5 changed them): scale = `scale_decoder_outputs` if present, else
`tie_word_embeddings` (default True); `lm_head` is tied to `shared` when the checkpoint has no `lm_head.weight`.
On save, an unscaled model (T5.1.1) always writes `lm_head.weight` and `tie_word_embeddings: false`, which every
transformers version reads as "untied, unscaled"; the original T5 writes no `lm_head` and `tie_word_embeddings: true`.

Loading an untied export (the `tiny` and `t5_1_1_*` presets) in transformers 5.23 logs "The tied weights mapping and
config for this model specifies to tie shared.weight to lm_head.weight, but both are present in the checkpoints with
different values, so we will NOT tie them". No config key silences it there: `T5Config.__post_init__` pops
`tie_word_embeddings` (it only sets `scale_decoder_outputs`) and then sets `tie_word_embeddings = True` for every T5,
so `from_pretrained` always tries to tie `lm_head` to `shared` and warns when the checkpoint's values differ. The
warning is harmless: transformers keeps the loaded `lm_head` untied (tests/test_hf_parity.py checks the logits). Its
advice (`tie_word_embeddings=False`) is wrong for T5 in 5.23: passed to `from_pretrained`, it unties the input
embeddings too, and they are then newly initialised.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from .config import T5Config

if TYPE_CHECKING:  # the class is passed in by `T5.from_hf`: t5.py imports this module, not the reverse
    from .t5 import T5

CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
_HF_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
              "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
              "layer_norm_epsilon", "initializer_factor", "feed_forward_proj", "pad_token_id", "eos_token_id",
              "decoder_start_token_id")


class HFCheckpointError(ValueError):
    """A checkpoint directory that cannot be read as a T5 checkpoint."""


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A local directory as is; anything else is treated as a hub repo id and downloaded (config + weights)."""
    local = Path(path)
    if local.is_dir():
        return local
    if local.exists():
        raise HFCheckpointError(f"{path} is a file; expected a checkpoint directory with {CONFIG_NAME} and weights.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path), allow_patterns=["config.json", "*.safetensors", "*.json", "*.bin"]))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, missing package: one clear message
        raise HFCheckpointError(f"{path!s} is not a local directory and could not be fetched from the Hugging Face "
                                f"Hub ({type(err).__name__}: {err}).") from err


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> T5Config:
    """Map a transformers T5 config.json onto T5Config (tying decided later from the weights)."""
    if hf.get("model_type", "t5") not in ("t5", "mt5"):  # umt5 has per-layer relative biases: not this model
        raise HFCheckpointError(f"config.json has model_type={hf.get('model_type')!r}; expected a T5 checkpoint.")
    values = {k: hf[k] for k in _HF_FIELDS if k in hf and hf[k] is not None}
    if isinstance(values.get("eos_token_id"), list):
        values["eos_token_id"] = values["eos_token_id"][0]
    values["tie_word_embeddings"] = bool(hf.get("tie_word_embeddings", True))
    values["scale_decoder_outputs"] = bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))
    values["name"] = str(hf.get("_name_or_path") or "hf")
    values.update(overrides)
    cfg = T5Config.from_dict(values)
    cfg.extra = {k: v for k, v in hf.items() if k not in values and not k.startswith("_")}
    return cfg


def config_to_hf(cfg: T5Config, write_lm_head: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"}
    out.update({k: v for k, v in cfg.extra.items() if k not in ("architectures", "model_type")})
    out.update({k: getattr(cfg, k) for k in _HF_FIELDS})
    out["dense_act_fn"] = cfg.activation
    out["is_gated_act"] = cfg.is_gated
    out["is_encoder_decoder"] = True
    out["tie_word_embeddings"] = not write_lm_head
    out["scale_decoder_outputs"] = cfg.scale_outputs
    return out


def load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors or PyTorch checkpoint in `directory`."""
    from safetensors.torch import load_file

    def shards(index_name: str) -> list[Path]:
        index = json.loads((directory / index_name).read_text())
        return [directory / f for f in sorted(set(index["weight_map"].values()))]

    if (directory / SAFE_WEIGHTS).exists():
        files, loader = [directory / SAFE_WEIGHTS], "safetensors"
    elif (directory / SAFE_INDEX).exists():
        files, loader = shards(SAFE_INDEX), "safetensors"
    elif (directory / TORCH_WEIGHTS).exists():
        files, loader = [directory / TORCH_WEIGHTS], "torch"
    elif (directory / TORCH_INDEX).exists():
        files, loader = shards(TORCH_INDEX), "torch"
    else:
        raise HFCheckpointError(f"No weights in {directory}: expected {SAFE_WEIGHTS}, {SAFE_INDEX}, {TORCH_WEIGHTS} "
                                f"or {TORCH_INDEX}.")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if loader == "safetensors":
            state.update(load_file(str(file)))
        else:
            state.update(torch.load(str(file), map_location="cpu", weights_only=True))
    return state


def load_hf(cls: type[T5], path: str | os.PathLike, **overrides: Any) -> T5:
    """`T5.from_hf`: build a `cls` from config.json and load the weights (strict, after alias handling)."""
    directory = resolve_checkpoint_dir(path)
    config_file = directory / CONFIG_NAME
    if not config_file.exists():
        raise HFCheckpointError(f"{directory} has no {CONFIG_NAME}; not a transformers checkpoint directory.")
    hf_config = json.loads(config_file.read_text())
    state = load_state_dict(directory)
    prefix = "model."  # some exporters wrap the model; strip a uniform prefix
    if "shared.weight" not in state and f"{prefix}shared.weight" in state:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if "shared.weight" not in state:
        alias = next((a for a in _ALIASES if a in state), None)
        if alias is None:
            raise HFCheckpointError(f"{directory}: no shared.weight (nor an embed_tokens alias) in the checkpoint.")
        state["shared.weight"] = state[alias]
    for alias in _ALIASES:
        if alias in state and not torch.equal(state.pop(alias), state["shared.weight"]):
            raise HFCheckpointError(f"{directory}: {alias} differs from shared.weight; untied input embeddings are "
                                    "not supported by this T5.")
    for key in _IGNORED:
        state.pop(key, None)
    tied = "lm_head.weight" not in state
    cfg = config_from_hf(hf_config, **overrides)
    cfg.tie_word_embeddings = tied
    with torch.device("meta"):  # no random init of weights that are about to be replaced (matters at 11B)
        model = cls(cfg)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise HFCheckpointError(f"{directory}: checkpoint does not match the T5 built from its config.json "
                                f"(missing: {missing[:8]}{'...' if len(missing) > 8 else ''}; unexpected: "
                                f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}).")
    dtype = state["shared.weight"].dtype
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model


def save_hf(model: T5, path: str | os.PathLike) -> None:
    """Write `path/config.json` + `path/model.safetensors` for `T5ForConditionalGeneration.from_pretrained`."""
    from safetensors.torch import save_file

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    write_lm_head = model.lm_head is not None or not cfg.scale_outputs
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if not k.startswith("_")}
    state = {k.replace("._orig_mod", ""): v for k, v in state.items()}  # torch.compile'd blocks
    if write_lm_head and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["shared.weight"].clone()
    hf_config = config_to_hf(cfg, write_lm_head)
    hf_config["dtype"] = str(state["shared.weight"].dtype).replace("torch.", "")
    # weights first, config.json last (what makes the directory a model), each durably
    _write_durably(directory / SAFE_WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    text = json.dumps(hf_config, indent=2, sort_keys=True) + "\n"
    _write_durably(directory / CONFIG_NAME, lambda tmp: tmp.write_text(text))


def _write_durably(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` to a temp file beside `path`, fsync, rename over `path`, fsync the directory: a killed export
    leaves the previous file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seqio_features(batch: dict[str, torch.Tensor], start_token: int = 0) -> dict[str, torch.Tensor]:
    """A padded Hugging Face batch (`input_ids`, `attention_mask`, `labels` with -100 on padding) as the seqio
    features our training path takes: the same tokens, masks and loss weights, decoder inputs = labels shifted
    right with `start_token` first. Benchmarks use it to give both implementations identical work."""
    weights = batch["labels"] != -100
    targets = batch["labels"].masked_fill(~weights, 0)
    decoder_inputs = torch.cat([torch.full_like(targets[:, :1], start_token), targets[:, :-1]], dim=1)
    return {"encoder_input_tokens": batch["input_ids"], "encoder_segment_ids": batch["attention_mask"],
            "decoder_input_tokens": decoder_inputs, "decoder_target_tokens": targets,
            "decoder_loss_weights": weights.float()}
