"""lightning-t5: the T5 model, Lightning training and the T5 paper's experiments.

Rooms (docs/CONTRACTS.md "Rooms"; imports point one way, checked by tests/test_layout.py):
`model/` (plain torch T5) <- `dist/` (checkpoints, sharding) and `eval/` (scoring) <- `train/` (Lightning, `fit`)
<- `experiments/`; the commands `export.py` and `evaluate.py` sit on top. This façade is for users; no module of
the package imports it.
"""

from lightning_t5.model.config import T5Config
from lightning_t5.model.t5 import T5

__all__ = ["T5", "T5Config", "fit", "T5LightningModule", "MixtureDataModule"]


def __getattr__(name: str):  # lazy: training pulls in Lightning, which plain model users do not need
    if name == "fit":
        from lightning_t5.train.fit import fit

        return fit
    if name == "T5LightningModule":
        from lightning_t5.train.module import T5LightningModule

        return T5LightningModule
    if name == "MixtureDataModule":
        from lightning_t5.train.data import MixtureDataModule

        return MixtureDataModule
    raise AttributeError(f"module 'lightning_t5' has no attribute {name!r}")
