"""What the fast engine keeps between queries about one loaded model: :func:`engine_cache`.

* the block calls recorded for each query shape (prefix length, target length, attention implementation; at most
  :data:`BLOCK_CALLS_KEPT`, oldest dropped first) and AMIG's baselines per set of reference prompts;
* one reusable float32 logits buffer per device (a fresh 100 MB tensor per query costs page faults on every
  call; it is replaced when a larger one is needed).

It is owned by the model (one entry of ``lm.caches``, :class:`knowloc.models.lm.LanguageModel`) and goes with
it: dropping the model drops it, ``lm.clear_caches()`` frees it at once (the study's model pool does when it moves
to another model); results never depend on it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from knowloc.models.lm import LanguageModel

BLOCK_CALLS_KEPT = 64


class EngineCache:
    """The engine's caches of one model (see the module docstring)."""

    def __init__(self) -> None:
        # (cut, n_target, attention implementation) -> each block's recorded call (list[models.block_calls.BlockCall])
        self.block_calls: OrderedDict = OrderedDict()
        self.baselines: dict = {}  # ("amig", site, prompts) -> [1, L, N] mean activation
        self._scratch: dict[tuple, torch.Tensor] = {}

    def remember_block_calls(self, key: tuple, block_calls: list) -> None:
        if len(self.block_calls) >= BLOCK_CALLS_KEPT:
            self.block_calls.popitem(last=False)
        self.block_calls[key] = block_calls

    def scratch(self, rows: int, vocab: int, device: torch.device) -> torch.Tensor:
        """A float32 ``[rows, vocab]`` view of the device's reused logits buffer."""
        key = (vocab, device.type, device.index)
        buf = self._scratch.get(key)
        if buf is None or buf.shape[0] < rows:
            self._scratch.clear()
            buf = self._scratch[key] = torch.empty(rows, vocab, device=device, dtype=torch.float32)
        return buf[:rows]


def engine_cache(lm: LanguageModel) -> EngineCache:
    """The engine's cache of ``lm`` (created on first use, kept in ``lm.caches``).

    Example:
        >>> len(engine_cache(lm).block_calls)  # query shapes recorded so far
        1
    """
    return lm.cache(__name__, EngineCache)
