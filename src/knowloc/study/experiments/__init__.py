"""The built-in study experiments. Each module declares one :class:`knowloc.study.registry.Experiment` and
registers it on import; importing this package registers them all. Registration order is the order of the
report and summary.md, so the imports below are in the paper's order, not alphabetical (docs/extending.md)."""

# isort: skip_file
from knowloc.study import specificity  # noqa: F401  (always on: the neuron specificity profile)
from knowloc.study.experiments import consistency  # noqa: F401
from knowloc.study.experiments import modification  # noqa: F401
from knowloc.study.experiments import query_mapping  # noqa: F401
from knowloc.study.experiments import attention  # noqa: F401
from knowloc.study.experiments import cas  # noqa: F401
from knowloc.study.experiments import cas_sweep  # noqa: F401
from knowloc.study.experiments import update_sweep  # noqa: F401
from knowloc.study.registry import REGISTRY, names

__all__ = ["REGISTRY", "names"]
