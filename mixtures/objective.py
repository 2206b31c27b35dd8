"""`with_objective`: a mixture whose corpus tasks use another pre-training objective (`objective=...` of a run).

A mixture rewrite, so it lives with the mixtures: `train.py objective=span_corruption objective.noise_density=0.5`
gives the run's mixture with each top-level corpus task replaced by that objective's registered variant.
"""

from __future__ import annotations

from typing import Any, Mapping

from tasks.catalog.corpus import objective_options, register_variant, task_for_objective

from .errors import MixtureError
from .mixture import Mixture

__all__ = ["with_objective"]


def with_objective(mixture: Mixture, objective: Mapping[str, Any]) -> Mixture:
    """The mixture with each top-level corpus (unsupervised) task replaced by the configured objective's variant.

    ``objective`` is a ``configs/objective/*.yaml`` mapping (``task`` + hyper-parameters); the variant is
    registered under its own name (``corpus_span_corruption_msl10``...) so its cache and logs are distinct.
    """
    base = task_for_objective(objective)
    options = objective_options(objective)
    variant = register_variant(base.name, **options) if options else base
    members, replaced = [], 0
    for member, rate in mixture.members():
        if getattr(member, "supervised", True) is False and not isinstance(member, Mixture):
            member, replaced = variant.name, replaced + 1
        members.append(member if rate is None else (member, rate))
    if not replaced:
        raise MixtureError(f"objective={objective!r} is set but mixture={mixture.name!r} has no corpus task to apply "
                          f"it to.")
    return Mixture(f"{mixture.name}+{variant.name}", members, defaults=mixture.defaults, sizes=mixture.sizes,
                   description=mixture.description, default_rate=mixture.default_rate)
