"""Model loading, the architecture registry and reversible hooks."""

from knowloc.models.lm import SITES, Encoding, LanguageModel
from knowloc.models.loading import builtin_names, load_model
from knowloc.models.registry import REGISTRY, ArchSpec, families, register, resolve

__all__ = ["SITES", "Encoding", "LanguageModel", "load_model", "builtin_names", "REGISTRY", "ArchSpec",
           "families", "register", "resolve"]
