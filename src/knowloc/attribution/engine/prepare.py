"""What the staircase needs about one query before any row: the prefix pass and each block's recorded call."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from knowloc.attribution.cache import engine_cache
from knowloc.attribution.engine.prefix_attention import PrefixCache, prefix_states
from knowloc.models.block_calls import BlockCall, capture_block_calls
from knowloc.models.lm import Encoding, LanguageModel


@dataclass(frozen=True)
class Prepared:
    """Everything the staircase needs about one query that does not depend on the rows, complete when
    `prepare` returns: the prefix keys/values, each block's call and block 0's input and the target."""

    enc: Encoding
    block_calls: list[BlockCall]  # each block's arguments without the hidden states, the cache as a placeholder
    prefix_cache: PrefixCache
    embedded: torch.Tensor  # block 0's input for the new positions [1, n_new, d_model]
    target: torch.Tensor  # gold target ids [n_target]

    def call_block(self, lm: LanguageModel, b: int, hidden: torch.Tensor) -> torch.Tensor:
        """Re-run block b on `hidden` [rows, n_new, d_model] with the arguments the model gave it, the cache
        swapped for the prefix cache; returns [rows, n_new, d_model]."""
        prefix_cache = self.prefix_cache
        served = prefix_cache.served
        out = self.block_calls[b].run(lm.blocks[b], hidden, prefix_cache)  # [rows, n_new, d_model]
        if prefix_cache.split and b in prefix_cache.prefix and prefix_cache.served == served:
            raise RuntimeError(f"block {b} of {type(lm.model).__name__} computed attention without the attention "
                               "interface, so it never saw the prefix keys/values; the fast engine cannot serve it")
        return out


@torch.no_grad()
def prepare(lm: LanguageModel, enc: Encoding) -> Prepared:
    """One prefix pass (keys/values of positions < P-1) and a capture of the arguments the model gives each
    block for the new positions.

    Block arguments (masks, rotary embeddings, cache positions) depend only on the positions, so they are
    recorded by one full pass per (prefix length, new positions, attention implementation) and reused; for
    other queries of that shape the pass stops after the embeddings. Either way the staircase's clean row does
    the real computation of the new positions."""
    ids = torch.tensor([enc.input_ids], device=lm.device)  # [1, n_prompt + n_target - 1]
    cut = enc.last_pos
    cache = DynamicCache(config=lm.model.config)
    backbone = lm.model.base_model  # no unembedding needed here
    if cut > 0:
        backbone(input_ids=ids[:, :cut], cache=cache, use_cache=True)
    prefix_cache = PrefixCache(prefix_states(cache))
    key = (cut, enc.n_target, lm.attention_implementation)
    known = engine_cache(lm).block_calls.get(key)
    with capture_block_calls(lm.blocks, cache=cache, stop_at=None if known is None else 0,
                             feed=lambda hidden, call: call.inputs(hidden, prefix_cache)) as captured:
        backbone(input_ids=ids[:, cut:], cache=cache, use_cache=True)  # the new positions, against the prefix
    calls = known
    if calls is None:
        calls = captured.calls
        engine_cache(lm).remember_block_calls(key, calls)
    target = torch.tensor(enc.target_ids, device=lm.device)  # [n_target]
    return Prepared(enc, calls, prefix_cache, captured.inputs[0], target)  # inputs[0]: [1, n_new, d_model]
