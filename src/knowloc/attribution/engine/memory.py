"""How many staircase rows fit in one chunk: an estimate of the activations kept for the backward pass, under a
memory budget taken from the device (:func:`memory_budget_gb`) unless the caller gives one."""

from __future__ import annotations

import torch

from knowloc.models.lm import LanguageModel

CPU_BUDGET_GB = 4.0  # on a CPU larger chunks stop paying well before this (docs/performance.md)
FREE_SHARE = 0.5  # of an accelerator's free memory: the estimate's headroom for the allocator and backward temporaries


def memory_budget_gb(device: torch.device | str) -> float:
    """The engine's default activation budget on ``device``: on CUDA, ``FREE_SHARE`` of the memory free on it
    now (at least ``CPU_BUDGET_GB``), so a large card runs whole staircases in one chunk (a fixed 4 GB made a
    LLaMA-2-7B query 4x slower on an H200); elsewhere ``CPU_BUDGET_GB``.

    Example:
        >>> memory_budget_gb("cpu")
        4.0
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(CPU_BUDGET_GB, FREE_SHARE * free / 2**30)
    return CPU_BUDGET_GB


def default_max_rows(lm: LanguageModel, n_new: int, memory_gb: float | None = None, prefix_elements: int = 0) -> int:
    """Rows per chunk so that activations kept for the backward pass stay under `memory_gb` (an estimate; None:
    :func:`memory_budget_gb` of the model's device).

    Per row: the new positions' activations in every block, the logits, and the prefix keys/values of all
    layers of the row's own query (`prefix_elements`, counted for one query), which the row's attention
    concatenates and keeps for the backward pass; counted twice for attention's transient copies. This term
    grows with the prompt length, so long prompts get smaller chunks instead of more memory. A staircase of Q
    queries shares the returned rows among them (:func:`knowloc.attribution.engine.attribute_fast_many`), so the
    bound holds for any Q: each row costs the same whichever query it belongs to."""
    config = lm.model.config
    d = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    vocab = config.vocab_size
    per_row = (lm.n_layers * n_new * (8 * d + 4 * lm.n_neurons) + 3 * n_new * vocab
               + 2 * prefix_elements) * lm.dtype.itemsize
    budget = memory_budget_gb(lm.device) if memory_gb is None else memory_gb
    return max(1, int(budget * 2**30 // per_row))
