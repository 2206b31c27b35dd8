"""lightning-t5: the T5 model, Lightning training and the T5 paper's experiments."""

from .config import T5Config
from .model import T5

__all__ = ["T5", "T5Config", "fit", "T5LightningModule", "MixtureDataModule"]


def __getattr__(name: str):  # lazy: training pulls in Lightning, which plain model users do not need
    if name == "fit":
        from .training import fit

        return fit
    if name in ("T5LightningModule", "MixtureDataModule"):
        from . import data, module

        return getattr(module if name == "T5LightningModule" else data, name)
    raise AttributeError(f"module 'lightning_t5' has no attribute {name!r}")
