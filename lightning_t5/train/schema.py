"""Structured run configuration: the schema `configs/config.yaml` is composed into and validated against.

Why a schema: Hydra/OmegaConf only stop an unknown key or a wrongly typed value when the config is *structured*
(backed by dataclasses). `RunConfig` is registered in Hydra's ConfigStore as `run_schema` and is the first entry of
`configs/config.yaml`'s defaults list, so `python train.py data.batchsize=8` fails at composition time. Values with a
fixed set of choices (`mixing.rate`, `optim.name`, `trainer.precision`, ...) are plain strings checked by
`validate_config`, which names the key and lists the valid choices in one sentence.

The `model` and `mixing` sections are generated from `lightning_t5.model.config.T5Config` and
`mixtures.MixingConfig`, and every list of choices is imported from the module that implements the choices, so the
schema never drifts from the code that consumes it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from lightning_t5.errors import ConfigError
from lightning_t5.model.config import ATTENTION_CHOICES, T5Config
from lightning_t5.model.fused import BACKENDS, OPTIMIZERS
from lightning_t5.train.experiment_options import ExperimentOptions
from lightning_t5.train.schedules import SCHEDULES
from mixtures.rates import RATE_NAMES, SIZE_SOURCES, MixingConfig
from mixtures.sampler import GRANULARITIES

__all__ = [
    "RunConfig",
    "CHOICES",
    "add_mapping_keys",
    "check_overrides",
    "register_schema",
    "to_run_config",
    "validate_config",
]


# ---------------------------------------------------------------------------------------------------------------
# Generating schema sections from the consuming dataclasses
_PRIMITIVES: dict[str, Any] = {"int": int, "float": float, "str": str, "bool": bool}


def _annotation_to_type(annotation: Any) -> Any:
    """Map a dataclass annotation (often a string under `from __future__ import annotations`) to an OmegaConf type.

    OmegaConf 2.3 accepts primitives, Optional[primitive], Dict/List of Any and Any; anything richer becomes Any so the
    generated schema still rejects unknown keys without rejecting legitimate values.
    """
    if isinstance(annotation, str):
        text = annotation
    elif isinstance(annotation, type):
        text = annotation.__name__
    else:
        text = repr(annotation).replace("typing.", "")
    parts = [p.strip() for p in re.split(r"\|", text)]
    optional = "None" in parts or text.startswith("Optional[")
    core = [p for p in parts if p != "None"]
    name = core[0] if len(core) == 1 else ""
    name = re.sub(r"^Optional\[(.*)\]$", r"\1", name)
    if name in _PRIMITIVES:
        base = _PRIMITIVES[name]
    elif name.startswith(("dict", "Dict", "Mapping")):
        if optional:  # e.g. mixing.weights
            # Any, not Optional[Dict]: OmegaConf 2.3 cannot merge a command-line override into a None-valued typed
            # Dict node (`mixing.weights={a:2,b:1}` and `mixing.weights.a=2` both fail inside OmegaConf.update); the
            # consuming dataclass checks that the value is a mapping.
            return Any
        base = Dict[str, Any]
    elif name.startswith(("list", "List", "Sequence", "tuple", "Tuple")):
        base = List[Any]
    else:
        return Any
    return Optional[base] if optional else base


def _schema_from_dataclass(cls: type, name: str, skip: tuple[str, ...] = ()) -> type:
    """A new OmegaConf-friendly dataclass with the same field names and defaults as `cls`."""
    specs = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        typ = _annotation_to_type(f.type)
        if f.default is not dataclasses.MISSING:
            default = f.default
            if default is None and typ is not Any and typing.get_origin(typ) is not typing.Union:
                typ = Optional[typ]
            specs.append((f.name, typ, field(default=default)))
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            specs.append((f.name, typ, field(default_factory=f.default_factory)))  # type: ignore[misc]
        else:
            specs.append((f.name, typ, field(default=None)))
    return dataclasses.make_dataclass(name, specs)


def _model_schema() -> type:
    return _schema_from_dataclass(T5Config, "ModelSchema", skip=("extra",))


def _mixing_schema() -> type:
    return _schema_from_dataclass(MixingConfig, "MixingSchema")


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SequenceLength:
    inputs: int = 128
    targets: int = 32


@dataclass
class DataConfig:
    """How the training batches are built (`mixtures.MixtureDataset` arguments)."""

    sequence_length: SequenceLength = field(default_factory=SequenceLength)
    batch_size: int = 32  # per process (rank); the global batch is batch_size * world_size * accumulate
    pack: bool = True
    granularity: str = "example"
    num_workers: int = 0


@dataclass
class EvalConfig:
    """Evaluation on each task's validation split: generation -> postprocess -> metrics (+ rank classification)."""

    tasks: Optional[List[str]] = None  # None: the supervised tasks of the mixture
    split: str = "validation"
    max_examples: Optional[int] = None  # per task; None = the whole split (scores with the narrowest intervals)
    batch_size: int = 64
    # None: each task's longest eval target (capped by data.sequence_length.targets)
    max_new_tokens: Optional[int] = None
    num_beams: int = 1
    rank_classification: bool = True  # also score each label string by likelihood (classification tasks)
    before_training: bool = True  # evaluate the initial model (step 0) for a before/after comparison
    every_n_steps: Optional[int] = None  # also evaluate during training


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule. Total steps come from here or trainer.max_steps (never Lightning's
    estimated_stepping_batches, which breaks dataloader-state restore: Lightning issue 20550)."""

    name: str = "adafactor"
    lr: float = 0.01
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: Optional[int] = None
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class FSDPConfig:
    """`trainer.fsdp`: knobs of sharded runs (`trainer=fsdp`; lightning_t5/dist/sharding.py explains them)."""

    meta_init: Optional[bool] = None  # null: build on the meta device when the model has >= 500M parameters


@dataclass
class TrainerConfig:
    """The subset of `pytorch_lightning.Trainer` arguments a run may set, plus checkpointing/logging cadence."""

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = 500
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 250
    keep_checkpoints: int = -1  # step checkpoints kept besides last.ckpt (-1: all)
    deterministic: bool = False
    enable_progress_bar: bool = True
    matmul_precision: Optional[str] = None  # torch.set_float32_matmul_precision on GPU ("high" enables TF32)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)


@dataclass
class DoReMiConfig:
    """`doremi`: with a `reference` checkpoint the run trains a DoReMi proxy (lightning_t5/train/doremi.py: Group DRO
    against the reference, per-task excess loss, the averaged weights written as the run's weights.json)."""

    reference: Optional[str] = None  # checkpoint (file, directory or run folder) of the reference model; null: off
    eta: float = 1.0  # step size of the weight update (the code's default; 0.1 against near one-hot weights)
    eps: float = 1e-4  # smoothing towards uniform: alpha = (1 - eps) alpha + eps / K


@dataclass
class RunConfig:
    """Top level of the composed config (docs/CONTRACTS.md "Run configuration")."""

    seed: int = 42
    imports: List[str] = field(default_factory=list)
    mixture: str = "default"
    mixing: Any = None  # replaced by the generated MixingSchema in build_schema()
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: Any = None  # replaced by the generated ModelSchema
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    init_from: Optional[str] = None
    resume: Optional[str] = None
    export_hf: Optional[str] = None
    output_dir: str = "runs"
    run_name: Optional[str] = None  # None: a timestamp
    run_dir: Optional[str] = None  # None: ${output_dir}/${run_name}
    experiment: Optional[str] = None
    experiment_options: Any = None  # replaced by lightning_t5.train.experiment_options.ExperimentOptions
    # configs/objective/*.yaml: the pretraining objective of the mixture's corpus tasks, e.g.
    # `objective=span_corruption objective.noise_density=0.5 objective.mean_noise_span_length=10`
    objective: Optional[Dict[str, Any]] = None
    doremi: DoReMiConfig = field(default_factory=DoReMiConfig)
    # Free-form values for a sweeper (configs/tuning/*.yaml): `tuning.objective` names the score train.py returns to it
    # (a benchmark average or a task, `tuning.rank` for rank classification), `tuning.u.<task>` uniforms that
    # `${neg_log:...}` turns into mixing weights uniform on the simplex.
    tuning: Optional[Dict[str, Any]] = None


_SCHEMA: type | None = None


def build_schema() -> type:
    """`RunConfig` with its `model` and `mixing` sections generated from the consuming dataclasses (cached)."""
    global _SCHEMA
    if _SCHEMA is None:
        model, mixing = _model_schema(), _mixing_schema()
        _SCHEMA = dataclasses.make_dataclass(
            "RunConfigSchema",
            [("model", model, field(default_factory=model)), ("mixing", mixing, field(default_factory=mixing)),
             ("experiment_options", ExperimentOptions, field(default_factory=ExperimentOptions))],
            bases=(RunConfig,),
        )
    return _SCHEMA


def neg_log(u: Any) -> float:
    """`${neg_log:u}` = -ln(u) for u in (0, 1]: K uniforms through it, normalised, are uniform on the simplex (the
    explicit mixing rates are normalised by the sampler), the way to put a sweeper over mixing weights."""
    value = float(u)
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"neg_log needs a number in (0, 1], got {u!r}")
    return -math.log(value)


def register_schema() -> None:
    """Register the schema as `run_schema` in Hydra's ConfigStore (config.yaml lists it first in its defaults) and
    the config resolvers the shipped configs use (`neg_log`)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=build_schema())
    OmegaConf.register_new_resolver("neg_log", neg_log, replace=True)


# ---------------------------------------------------------------------------------------------------------------
#: Every config value with a fixed set of choices, each list taken from the code that implements the choices.
#: The trainer lists are Lightning's own names, which Lightning only rejects after it has started.
CHOICES: dict[str, tuple[Any, ...]] = {
    "mixing.rate": RATE_NAMES,
    "mixing.size_source": SIZE_SOURCES,
    "data.granularity": GRANULARITIES,
    "optim.name": OPTIMIZERS,
    "optim.schedule": SCHEDULES,
    "model.fused": BACKENDS,
    "model.attention": ATTENTION_CHOICES,
    "trainer.precision": ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"),
    "trainer.accelerator": ("cpu", "gpu", "cuda", "mps", "auto"),
    "trainer.strategy": ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "single_device"),
}

_POSITIVE = ("data.batch_size", "data.sequence_length.inputs", "data.sequence_length.targets", "trainer.max_steps",
             "trainer.accumulate_grad_batches", "trainer.log_every_n_steps", "trainer.checkpoint_every_n_steps",
             "eval.batch_size", "eval.num_beams")


def to_run_config(cfg: Any) -> DictConfig:
    """Merge a plain dict / DictConfig onto the structured schema (unknown keys and bad types raise ConfigError)."""
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.structured(build_schema())
    if OmegaConf.is_config(cfg):  # a typed DictConfig merges without key checks: compare as plain data
        cfg = OmegaConf.to_container(cfg, resolve=False)
    try:
        merged = OmegaConf.merge(schema, cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain_omegaconf_error(err)) from None
    assert isinstance(merged, DictConfig)
    return merged


def _explain_omegaconf_error(err: Exception) -> str:
    key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0]
    if "not in struct" in str(err) or "Key '" in msg and "not" in msg:
        return unknown_key_message(key) or f"Unknown config key '{key}'."
    return f"Invalid config value for '{key}': {msg}"


def _schema_node_keys(path: str) -> list[str] | None:
    """The valid keys of the schema node at dotted `path` ("" = root); None when the node is free-form or a leaf."""
    cls: Any = build_schema()
    for part in [p for p in path.split(".") if p]:
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else None


def unknown_key_message(key: str) -> str | None:
    """None when dotted `key` exists in the schema (or lies under a free-form mapping); else an error paragraph
    with "did you mean" and every valid key of the node where the path left the schema."""
    parts = key.split(".")
    for depth in range(len(parts)):
        parent = ".".join(parts[:depth])
        valid = _schema_node_keys(parent)
        if valid is None:
            return None  # under a free-form mapping (objective, experiment_options, mixing.weights...) or a leaf
        if parts[depth] not in valid:
            close = difflib.get_close_matches(parts[depth], valid, n=3, cutoff=0.6)
            prefix = parent + "." if parent else ""
            hint = f" Did you mean {' or '.join(repr(prefix + c) for c in close)}?" if close else ""
            return (f"Unknown config key '{prefix + parts[depth]}'.{hint} Valid keys under "
                    f"'{parent or '<top level>'}': {', '.join(valid)}.")
    return None


def choice_message(key: str, value: Any) -> str | None:
    """None when `key` has no fixed choices or `value` is one of them; else the error naming the valid choices."""
    valid = CHOICES.get(key)
    if valid is None or value is None or value in valid:
        return None
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{key}={value!r} is not valid{hint}; choose one of: {', '.join(map(str, valid))}."


def check_overrides(overrides: Sequence[str], groups: Sequence[str] = ()) -> None:
    """Check command-line `key=value` overrides against the schema before Hydra composes anything.

    Why here and not only in Hydra: Hydra's own error for a misspelt key names the dataclass, with no suggestion and
    no list of valid keys. `groups` are the config-group names (`model=small` selects a file, it is not a value).
    Sweeps (`a=1,2`) and interpolations are checked by key only; values are checked later by `validate_config`.
    """
    for override in overrides:
        if override.startswith("-") or "=" not in override:
            continue
        key, value = override.split("=", 1)
        key = key.lstrip("+~")
        if not key or key.split(".")[0].split("/")[0] == "hydra" or "/" in key or key in groups:
            continue  # Hydra's own settings, group paths (hydra/launcher=...) and group selections (model=small)
        message = unknown_key_message(key)
        if message is None and "," not in value and "$" not in value:
            message = choice_message(key, value)
        if message is not None:
            raise ConfigError(message)


#: Mappings keyed by the user's own names (`mixing.weights.<task>`). A name is a key the composed config does not
#: have yet, which Hydra accepts only as `++key=value`; `add_mapping_keys` adds the prefix so that the plain spelling
#: works as well as the whole mapping (`mixing.weights={glue_rte:2,my_task:1}`, needed for task names with dots).
NAME_KEYED_MAPPINGS = ("mixing.weights",)


def add_mapping_keys(overrides: Sequence[str]) -> list[str]:
    """`mixing.weights.glue_rte=2` -> `++mixing.weights.glue_rte=2` (see NAME_KEYED_MAPPINGS); others unchanged."""
    out = []
    for override in overrides:
        key = override.split("=", 1)[0]
        if "=" in override and any(key.startswith(m + ".") for m in NAME_KEYED_MAPPINGS):
            override = "++" + override
        out.append(override)
    return out


def validate_config(cfg: DictConfig) -> DictConfig:
    """Check the values with fixed choices and ranges; returns `cfg` (structured) or raises ConfigError."""
    cfg = to_run_config(cfg)
    for key in CHOICES:
        message = choice_message(key, OmegaConf.select(cfg, key))
        if message is not None:
            raise ConfigError(message)
    for key in _POSITIVE:
        value = OmegaConf.select(cfg, key)
        if value is None or value <= 0:
            raise ConfigError(f"{key}={value!r} is not valid: it must be a positive integer.")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr!r} is not valid: it must be positive.")
    if cfg.optim.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={cfg.optim.warmup_steps!r} must be >= 0.")
    if cfg.eval.max_new_tokens is not None and cfg.eval.max_new_tokens <= 0:
        raise ConfigError(f"eval.max_new_tokens={cfg.eval.max_new_tokens!r} must be positive or null (derived from "
                          "each task's target lengths).")
    if cfg.eval.max_examples is not None and cfg.eval.max_examples <= 0:
        raise ConfigError(f"eval.max_examples={cfg.eval.max_examples!r} must be positive or null (whole split).")
    if cfg.doremi.eta <= 0:
        raise ConfigError(f"doremi.eta={cfg.doremi.eta!r} must be positive (the step size of the weight update).")
    if not 0 <= cfg.doremi.eps < 1:
        raise ConfigError(f"doremi.eps={cfg.doremi.eps!r} must be in [0, 1) (the share of uniform weights).")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers={cfg.data.num_workers!r} must be >= 0.")
    return cfg
