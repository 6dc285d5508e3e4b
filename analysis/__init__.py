"""Agora's analysis: policy diversity, niche and market metrics, dashboards (issue 4)."""

# Importing economy first sets the XLA:CPU scheduler flag (see economy/__init__.py)
# before any computation, as importing any Agora package does.
import economy as _economy  # noqa: F401

from analysis.diversity import (
    effective_policies,
    js_matrix,
    kl_matrix,
    mean_offdiag,
    niche_profile_distance,
)
from analysis.niches import (
    gini,
    herfindahl,
    lorenz,
    occupancy_entropy,
    price_dispersion,
    specialisation_index,
)

__all__ = [
    "effective_policies",
    "gini",
    "herfindahl",
    "js_matrix",
    "kl_matrix",
    "lorenz",
    "mean_offdiag",
    "niche_profile_distance",
    "occupancy_entropy",
    "price_dispersion",
    "specialisation_index",
]
