"""Model loading, the architecture registry and reversible hooks."""

from knowloc.models.lm import SITES, Encoding, LanguageModel
from knowloc.models.loading import builtin_names, load_model, missing_packages, require_installed
from knowloc.models.registry import REGISTRY, ArchSpec, families, register, resolve

__all__ = ["SITES", "Encoding", "LanguageModel", "load_model", "builtin_names", "missing_packages", "require_installed",
           "REGISTRY", "ArchSpec",
           "families", "register", "resolve"]
