"""knowloc: knowledge-neuron localization and query localization for Hugging Face causal LMs."""

__version__ = "0.1.0"
