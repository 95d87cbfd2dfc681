"""knowloc: knowledge-neuron localization and query localization for Hugging Face causal LMs.

``knowloc.attribute``, ``knowloc.attribute_many``, ``knowloc.Attribution`` and ``knowloc.load_model`` are the
entry points for interactive use; the packages below hold everything else (README: Layout).
"""

__version__ = "0.1.0"

from knowloc.attribution import Attribution, attribute, attribute_many  # noqa: E402
from knowloc.models import load_model  # noqa: E402

__all__ = ["Attribution", "__version__", "attribute", "attribute_many", "load_model"]
