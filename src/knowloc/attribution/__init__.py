"""Knowledge-neuron attribution: IG, SIG, AMIG and grad x act, by the fast exact engine."""

from knowloc.attribution.api import TargetNotPredicted, attribute, attribute_many, attribute_next_token
from knowloc.attribution.methods import METHODS, MethodConfig
from knowloc.attribution.result import Attribution

__all__ = ["TargetNotPredicted", "attribute", "attribute_many", "attribute_next_token", "Attribution", "METHODS", "MethodConfig"]
