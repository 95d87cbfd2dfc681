"""What the fast engine keeps between queries, in one owned object: :data:`ENGINE_CACHE`.

* per model: the block calls recorded for each query shape (prefix length, target length, attention
  implementation; at most :data:`BLOCK_CALLS_KEPT`, oldest dropped first) and AMIG's baselines per set of
  reference prompts;
* one reusable float32 logits buffer per device (a fresh 100 MB tensor per query costs page faults on every
  call; it is replaced when a larger one is needed).

Entries are keyed by the model module and vanish with it (weak references). ``ENGINE_CACHE.clear()`` frees
everything, e.g. between models in a long-lived process; results never depend on the cache.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

BLOCK_CALLS_KEPT = 64


@dataclass
class ModelCache:
    # (cut, n_target, attention implementation) -> each block's recorded call (list[models.block_calls.BlockCall])
    block_calls: OrderedDict = field(default_factory=OrderedDict)
    baselines: dict = field(default_factory=dict)  # ("amig", site, prompts) -> [1, L, N] mean activation


class EngineCache:
    """The engine's caches (see the module docstring)."""

    def __init__(self) -> None:
        self._models: weakref.WeakKeyDictionary[nn.Module, ModelCache] = weakref.WeakKeyDictionary()
        self._scratch: dict[tuple, torch.Tensor] = {}

    def model(self, module: nn.Module) -> ModelCache:
        """The cache of one model (created on first use)."""
        if module not in self._models:
            self._models[module] = ModelCache()
        return self._models[module]

    def remember_block_calls(self, module: nn.Module, key: tuple, block_calls: list) -> None:
        cache = self.model(module).block_calls
        if len(cache) >= BLOCK_CALLS_KEPT:
            cache.popitem(last=False)
        cache[key] = block_calls

    def scratch(self, rows: int, vocab: int, device: torch.device) -> torch.Tensor:
        """A float32 ``[rows, vocab]`` view of the device's reused logits buffer."""
        key = (vocab, device.type, device.index)
        buf = self._scratch.get(key)
        if buf is None or buf.shape[0] < rows:
            self._scratch.clear()
            buf = self._scratch[key] = torch.empty(rows, vocab, device=device, dtype=torch.float32)
        return buf[:rows]

    def clear(self) -> None:
        """Drop every cached entry and the logits buffer."""
        self._models = weakref.WeakKeyDictionary()
        self._scratch.clear()


ENGINE_CACHE = EngineCache()
