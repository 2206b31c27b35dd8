"""Mixtures of tasks, mixing rates, the mixing sampler and feature conversion (packing).

``from mixtures import Mixture, MixtureRegistry, MixingConfig, MixtureDataset, FeatureConverter``.
Importing this package registers the catalog mixtures (task names are resolved lazily, when a mixture is used).
"""

from .adaptive import AdaptiveMethod, AdaptiveRegistry, OnlineDataMixing
from .errors import MixtureError
from .mixture import Mixture, MixtureRegistry
from .objective import with_objective
from .packing import FeatureConverter, FirstFitPacker, packing_efficiency
from .rates import MixingConfig, RateSchedule, Scaled, rate_num_examples
from .sampler import MixtureDataset
from .shares import task_shares
from .stages import Stages, read_run_stages

from . import catalog as _catalog  # noqa: E402,F401  (registers the catalog mixtures)

__all__ = [
    "AdaptiveMethod", "AdaptiveRegistry", "OnlineDataMixing", "Stages", "read_run_stages", "task_shares",
    "FeatureConverter", "FirstFitPacker", "MixingConfig", "Mixture", "MixtureDataset", "MixtureError",
    "MixtureRegistry", "RateSchedule", "Scaled", "packing_efficiency", "rate_num_examples", "with_objective",
]
