"""The prefix keys/values, kept once per query, and the attention function that reads them for every row.

Every staircase row carries only the new positions (P-1..). What a row's attention needs of the prompt
prefix (positions < P-1) is the same for all rows of one query: every block's keys/values from the prefix pass.
A staircase may carry Q queries of one shape (same prefix length P and target length), laid out query-major:
the batch's B rows are Q runs of R = B / Q rows, and rows q*R .. (q+1)*R - 1 belong to query q. A
:class:`PrefixCache` stands in for the model's cache and serves the prefixes ([Q, G, P, D] per layer); under
:func:`split_attention` the model runs :func:`prefix_attention` (registered in transformers' attention interface
as :data:`PREFIX_ATTENTION`, on first use) which scores all rows against their own query's prefix in one batched
matmul over (query, key/value head), so expanded per-row copies are never formed. No family-specific attention
code: families whose attention is not sdpa (Gemma-2's soft-capped eager attention) get the concatenated copies
from `PrefixCache.update`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from knowloc.models.lm import LanguageModel

PrefixStates = dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (keys, values), each [Q, G, n_pre, D]


class PrefixCache:
    """Serves a block each query's prefix keys/values ([Q, G, n_pre, D] per layer) before the rows' own.

    Normally `update` returns them concatenated, each query's prefix repeated over its own rows (a view for one
    query). In split mode (see `split_attention`) it returns only the rows' own keys/values and
    `prefix_attention` reads the prefixes from here, so the per-row copies are never formed."""

    def __init__(self, prefix: PrefixStates):
        self.prefix = prefix
        self.split = False
        self.served = 0  # calls of prefix_attention that used a prefix, to catch attention that bypasses it

    @property
    def queries(self) -> int | None:
        """Q, the queries whose prefixes this holds (None without a prefix: a one-token prompt)."""
        return next((k.shape[0] for k, _ in self.prefix.values()), None)

    def select(self, query: int) -> PrefixCache:
        """The prefix of one query alone ([1, G, n_pre, D] per layer, views)."""
        return PrefixCache({i: (k[query:query + 1], v[query:query + 1]) for i, (k, v) in self.prefix.items()})

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """key_states/value_states [rows, G, n_q, D] (rows query-major) -> the keys/values the block attends to."""
        if layer_idx not in self.prefix or self.split:  # no prefix (one-token prompt), or the attention reads it
            return key_states, value_states
        k_prefix, v_prefix = self.prefix[layer_idx]  # [Q, G, n_pre, D] each
        rows = key_states.shape[0]
        keys = torch.cat([per_row(k_prefix, rows), key_states], dim=2)  # [rows, G, n_pre + n_q, D]
        values = torch.cat([per_row(v_prefix, rows), value_states], dim=2)  # [rows, G, n_pre + n_q, D]
        return keys, values


def per_row(prefix: torch.Tensor, rows: int) -> torch.Tensor:
    """Each query's prefix over its own rows: [Q, G, n_pre, D] -> [rows, G, n_pre, D], row r reading query
    r // (rows / Q) (repeat_interleave; a stride-0 view, no copy, for one query)."""
    n_query = prefix.shape[0]
    if rows % n_query:
        raise ValueError(f"{rows} rows cannot be split evenly among {n_query} queries")
    return prefix.unsqueeze(1).expand(-1, rows // n_query, -1, -1, -1).reshape(rows, *prefix.shape[1:])


def prefix_states(cache: DynamicCache) -> PrefixStates:
    """The keys/values a cache holds per layer, each [Q, G, n_pre, D] for a prefix pass at batch Q (what its
    next `update` would prepend; sliding-window layers hold only their window), contiguous so that
    `prefix_attention` folds (query, head) into one batch dimension without a copy per call."""
    return {i: (layer.keys.contiguous(), layer.values.contiguous()) for i, layer in enumerate(cache.layers)
            if getattr(layer, "is_initialized", False)}


PREFIX_ATTENTION = "knowloc_prefix"
_ACTIVE_PREFIX: ContextVar[PrefixCache | None] = ContextVar("knowloc_active_prefix", default=None)


def prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """sdpa's attention for staircase rows, with each query's prefix keys/values kept once.

    query [B, H, n_q, D]; key/value [B, G, n_q, D] are the rows' own positions (G key/value heads, query head h
    reads key/value head h // (H/G) as in transformers' repeat_kv). The B rows are Q queries' runs of R = B / Q
    rows each (query-major), the prefix [Q, G, P, D]. Scores against the prefix are one batched matmul over
    (query, key/value head): [Q*G, R*per, D] x [Q*G, D, P] with per = (H/G) * n_q; against the own positions a
    small matmul per row; one softmax over both. Returns [B, n_q, H, D] like transformers' attention functions."""
    prefix_cache = _ACTIVE_PREFIX.get()
    prefix = prefix_cache.prefix.get(module.layer_idx) if prefix_cache is not None and prefix_cache.split else None
    if prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    prefix_cache.served += 1
    k_pre, v_pre = prefix  # [Q, G, P, D] each (P = n_pre)
    rows, heads, n_q, dim = query.shape
    n_query, groups, n_pre = k_pre.shape[0], key.shape[1], k_pre.shape[2]
    odd_mask = attention_mask is not None and (attention_mask.dim() != 4 or attention_mask.shape[1] != 1
                                               or attention_mask.shape[-1] != n_pre + n_q)
    if odd_mask or dropout or any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "s_aux")):
        keys = torch.cat([per_row(k_pre, rows), key], dim=2)  # [B, G, P + n_q, D]
        values = torch.cat([per_row(v_pre, rows), value], dim=2)  # [B, G, P + n_q, D]
        return sdpa_attention_forward(module, query, keys, values, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if rows % n_query:
        raise ValueError(f"{rows} rows cannot be split evenly among {n_query} queries")
    per_query, per = rows // n_query, heads // groups * n_q  # R; query rows per key/value head
    q = query.reshape(rows, groups, per, dim)  # [B, G, per, D]
    flat = q.view(n_query, per_query, groups, per, dim).transpose(1, 2).reshape(
        n_query * groups, per_query * per, dim)  # [Q*G, R*per, D]
    s_pre = torch.bmm(flat, k_pre.reshape(n_query * groups, n_pre, dim).transpose(1, 2)).view(
        n_query, groups, per_query, per, n_pre).transpose(1, 2)  # [Q, R, G, per, P]
    # one own position (the usual single-token target): a broadcast product beats thousands of tiny matmuls
    s_own = (q * key).sum(-1, keepdim=True) if n_q == 1 else torch.matmul(q, key.transpose(-1, -2))  # [B, G, per, n_q]
    scores = torch.cat([s_pre, s_own.view(n_query, per_query, groups, per, n_q)], dim=-1).mul_(
        dim**-0.5 if scaling is None else scaling)  # [Q, R, G, per, P + n_q]
    scores = scores.view(rows, groups, heads // groups, n_q, n_pre + n_q)  # [B, G, H/G, n_q, P + n_q]
    if attention_mask is None and n_q > 1:  # causal among the own positions; the prefix is visible to all
        attention_mask = torch.ones(n_q, n_pre + n_q, dtype=torch.bool, device=query.device).tril(n_pre)  # [n_q, P+n_q]
    if attention_mask is not None:  # [batch or 1, 1, n_q, P + n_q] -> broadcast over the heads of a group
        mask = attention_mask.unsqueeze(-3)  # [batch or 1, 1, 1, n_q, P + n_q] (or [1, n_q, P + n_q] from above)
        scores = (scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask)
    weights = torch.softmax(scores.float(), dim=-1).to(value.dtype).view(
        n_query, per_query, groups, per, n_pre + n_q)  # [Q, R, G, per, P + n_q]
    w_pre = weights[..., :n_pre].transpose(1, 2).reshape(n_query * groups, per_query * per, n_pre)  # [Q*G, R*per, P]
    out = torch.bmm(w_pre, v_pre.reshape(n_query * groups, n_pre, dim)).view(
        n_query, groups, per_query, per, dim).transpose(1, 2)  # [Q, R, G, per, D]
    w_own = weights[..., n_pre:].reshape(rows, groups, per, n_q)  # [B, G, per, n_q]
    own = w_own * value if n_q == 1 else torch.matmul(w_own, value)  # [B, G, per, D]
    out = out + own.view(n_query, per_query, groups, per, dim)  # [Q, R, G, per, D]
    return out.reshape(rows, heads, n_q, dim).transpose(1, 2).contiguous(), None  # [B, n_q, H, D]


def register_prefix_attention() -> bool:
    """Register :func:`prefix_attention` (and sdpa's mask layout) under :data:`PREFIX_ATTENTION` in
    transformers' global attention registries, unless the name is there already. Called on first use (not at
    import), so importing knowloc leaves transformers' registries untouched; idempotent. Returns whether it
    registered anything now."""
    registered = False
    if PREFIX_ATTENTION not in AttentionInterface():
        AttentionInterface.register(PREFIX_ATTENTION, prefix_attention)
        registered = True
    if PREFIX_ATTENTION not in AttentionMaskInterface():
        AttentionMaskInterface.register(PREFIX_ATTENTION, sdpa_mask)
        registered = True
    return registered


@contextmanager
def split_attention(lm: LanguageModel, prefix_cache: PrefixCache) -> Iterator[None]:
    """Run the staircase's blocks with `prefix_attention` where the model runs sdpa attention (inside
    `LanguageModel.fast_attention`); otherwise (e.g. Gemma-2's soft-capped eager attention) leave it as is."""
    if lm.attention_implementation != "sdpa":
        yield
        return
    register_prefix_attention()
    token = _ACTIVE_PREFIX.set(prefix_cache)
    prefix_cache.split = True
    try:
        with lm.use_attention(PREFIX_ATTENTION):
            yield
    finally:
        prefix_cache.split = False
        _ACTIVE_PREFIX.reset(token)
