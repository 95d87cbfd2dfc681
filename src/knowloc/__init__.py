"""knowloc: knowledge-neuron localization and query localization for Hugging Face causal LMs."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy, so that `knowloc --version` and `import knowloc` stay fast
    if name in ("attribute", "attribute_many", "Attribution"):
        from knowloc import attribution

        return getattr(attribution, name)
    if name == "load_model":
        from knowloc.models import load_model

        return load_model
    raise AttributeError(f"module 'knowloc' has no attribute {name!r}")
