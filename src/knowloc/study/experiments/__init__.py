"""The built-in study experiments: one module each, registered here in one explicit ordered list.

The order of :data:`BUILTIN` is the order of the report, summary.md and the findings (the paper's order). Adding
a built-in experiment is one module that defines its :class:`knowloc.study.registry.Experiment` spec and one
entry in this list (docs/extending.md).
"""

from knowloc.study.experiments import (attention, cas, cas_sweep, consistency, editors, knockout, lve, mass_editing,
                                       modification, query_mapping, specificity, tracing, update_sweep)
from knowloc.study.registry import REGISTRY, names, register_all

BUILTIN = (
    specificity.EXPERIMENT,  # always on: the neuron specificity profile
    consistency.EXPERIMENT,
    modification.EXPERIMENT,
    query_mapping.EXPERIMENT,
    attention.EXPERIMENT,
    knockout.EXPERIMENT,
    cas.EXPERIMENT,
    cas_sweep.EXPERIMENT,
    update_sweep.EXPERIMENT,
    editors.EXPERIMENT,
    tracing.EXPERIMENT,
    lve.EXPERIMENT,
    mass_editing.EXPERIMENT,
)
register_all(BUILTIN)

__all__ = ["BUILTIN", "REGISTRY", "names"]
