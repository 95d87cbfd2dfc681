"""How many staircase rows fit in one chunk: an estimate of the activations kept for the backward pass."""

from __future__ import annotations

from knowloc.models.lm import LanguageModel


def default_max_rows(lm: LanguageModel, n_new: int, memory_gb: float, prefix_elements: int = 0) -> int:
    """Rows per chunk so that activations kept for the backward pass stay under `memory_gb` (an estimate).

    Per row: the new positions' activations in every block, the logits, and the prefix keys/values of all
    layers (`prefix_elements`), which each row's attention concatenates and keeps for the backward pass; counted
    twice for attention's transient copies. This term grows with the prompt length, so long prompts get
    smaller chunks instead of more memory."""
    config = lm.model.config
    d = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    vocab = config.vocab_size
    per_row = (lm.n_layers * n_new * (8 * d + 4 * lm.n_neurons) + 3 * n_new * vocab
               + 2 * prefix_elements) * lm.dtype.itemsize
    return max(1, int(memory_gb * 2**30 // per_row))
