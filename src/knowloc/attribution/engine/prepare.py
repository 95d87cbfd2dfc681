"""What the staircase needs about its queries before any row: the prefix pass and each block's recorded call.

One staircase may carry Q queries of one shape (the same prefix length and target length, so the same recorded
block calls); everything per query here has a leading query dimension Q, in the order the queries were given."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from knowloc.attribution.cache import engine_cache
from knowloc.attribution.engine.prefix_attention import PrefixCache, prefix_states
from knowloc.models.block_calls import BlockCall, capture_block_calls
from knowloc.models.lm import Encoding, LanguageModel


@dataclass(frozen=True)
class Prepared:
    """Everything the staircase needs about its Q queries that does not depend on the rows, complete when
    `prepare` returns: the prefix keys/values, each block's call, block 0's input and the targets."""

    encs: tuple[Encoding, ...]  # the Q queries, all of one shape
    block_calls: list[BlockCall]  # each block's arguments without the hidden states, the cache as a placeholder
    prefix_cache: PrefixCache  # each query's prefix keys/values [Q, G, n_pre, D] per layer
    embedded: torch.Tensor  # block 0's input for the new positions [Q, n_new, d_model]
    targets: torch.Tensor  # gold target ids [Q, n_target]

    @property
    def queries(self) -> int:
        return len(self.encs)

    @property
    def enc(self) -> Encoding:
        """The query of a one-query record."""
        (enc,) = self.encs
        return enc

    @property
    def target(self) -> torch.Tensor:
        """The gold target ids [n_target] of a one-query record."""
        if self.queries != 1:
            raise ValueError(f"a record of {self.queries} queries has one target per query: use `targets`")
        return self.targets[0]

    def call_block(self, lm: LanguageModel, b: int, hidden: torch.Tensor) -> torch.Tensor:
        """Re-run block b on `hidden` [rows, n_new, d_model] (rows query-major: Q runs of rows / Q) with the
        arguments the model gave it, the cache swapped for the prefix cache; returns [rows, n_new, d_model]."""
        prefix_cache = self.prefix_cache
        served = prefix_cache.served
        out = self.block_calls[b].run(lm.blocks[b], hidden, prefix_cache)  # [rows, n_new, d_model]
        if prefix_cache.split and b in prefix_cache.prefix and prefix_cache.served == served:
            raise RuntimeError(f"block {b} of {type(lm.model).__name__} computed attention without the attention "
                               "interface, so it never saw the prefix keys/values; the fast engine cannot serve it")
        return out


def query_shape(enc: Encoding) -> tuple[int, int]:
    """(prefix length, target length): queries of one shape share the recorded block calls and the row grid, so
    one staircase can carry them together."""
    return enc.last_pos, enc.n_target


@torch.no_grad()
def prepare(lm: LanguageModel, encs: Encoding | Sequence[Encoding]) -> Prepared:
    """One prefix pass for all queries (keys/values of positions < P-1, at batch Q) and the arguments the model
    gives each block for the new positions.

    Block arguments (masks, rotary embeddings, cache positions) depend only on the positions, so they are
    recorded by one full pass of the first query at batch 1 per (prefix length, new positions, attention
    implementation) and reused: at batch 1 they broadcast over any number of rows. Otherwise the pass over the
    new positions stops after the embeddings. Either way the staircase's clean rows do the real computation of
    the new positions.

    Args:
        lm: the model; encs: one query, or queries that all have one `query_shape`.

    Returns:
        A :class:`Prepared` with a leading query dimension Q (1 for one query).

    Raises:
        ValueError: queries of different shapes, or none.
    """
    encs = (encs,) if isinstance(encs, Encoding) else tuple(encs)
    if not encs or len({query_shape(enc) for enc in encs}) != 1:
        raise ValueError(f"prepare needs queries of one shape (prefix length, target length), got "
                         f"{sorted({query_shape(enc) for enc in encs})}")
    ids = torch.tensor([enc.input_ids for enc in encs], device=lm.device)  # [Q, n_prompt + n_target - 1]
    cut = encs[0].last_pos
    cache = DynamicCache(config=lm.model.config)
    backbone = lm.model.base_model  # no unembedding needed here
    if cut > 0:
        backbone(input_ids=ids[:, :cut], cache=cache, use_cache=True)
    prefix_cache = PrefixCache(prefix_states(cache))
    key = (cut, encs[0].n_target, lm.attention_implementation)
    calls, embedded = engine_cache(lm).block_calls.get(key), None
    if calls is None:  # record at batch 1, the first query against its own prefix
        first = prefix_cache if len(encs) == 1 else prefix_cache.select(0)
        with capture_block_calls(lm.blocks, cache=cache,
                                 feed=lambda hidden, call: call.inputs(hidden, first)) as captured:
            backbone(input_ids=ids[:1, cut:], cache=cache, use_cache=True)  # the new positions, against the prefix
        calls = captured.calls
        engine_cache(lm).remember_block_calls(key, calls)
        if len(encs) == 1:
            embedded = captured.inputs[0]  # [1, n_new, d_model]
    if embedded is None:  # every query's embeddings: the pass stops at block 0's input
        with capture_block_calls(lm.blocks, cache=cache, stop_at=0) as captured:
            backbone(input_ids=ids[:, cut:], cache=cache, use_cache=True)
        embedded = captured.inputs[0]  # [Q, n_new, d_model]
    targets = torch.tensor([enc.target_ids for enc in encs], device=lm.device)  # [Q, n_target]
    return Prepared(encs, calls, prefix_cache, embedded, targets)
