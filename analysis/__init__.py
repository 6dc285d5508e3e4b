"""Agora's analysis: policy diversity, niche, market and concentration metrics (declared in
:mod:`analysis.metrics`), plots and the self-contained HTML report of a run
(:func:`write_report`)."""

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
from analysis.population import population_analysis
from analysis.report import NotARunError, write_report

__all__ = [
    "NotARunError",
    "population_analysis",
    "write_report",
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
