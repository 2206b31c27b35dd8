"""The T5 model in plain torch: config and presets, modules, attention, kernels, the one loss, generation, Hugging
Face weights, FLOPs. Imports nothing else of the project and no Lightning."""

from lightning_t5.model.config import PRESETS, T5Config
from lightning_t5.model.t5 import SEQIO_INPUTS, T5

__all__ = ["PRESETS", "SEQIO_INPUTS", "T5", "T5Config"]
