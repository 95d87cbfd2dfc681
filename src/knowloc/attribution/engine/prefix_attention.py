"""The prefix keys/values, kept once at batch 1, and the attention function that reads them for every row.

Every staircase row carries only the new positions (P-1..). What a row's attention needs of the prompt
prefix (positions < P-1) is the same for all rows: every block's keys/values from the prefix pass. A
:class:`PrefixCache` stands in for the model's cache and serves them; under :func:`split_attention` the model
runs :func:`prefix_attention` (registered in transformers' attention interface as :data:`PREFIX_ATTENTION`,
on first use) which scores all rows against the batch-1 prefix in one batched matmul per key/value head, so
expanded per-row copies are never formed. No family-specific attention code: families whose attention is not
sdpa (Gemma-2's soft-capped eager attention) get the concatenated copies from `PrefixCache.update`.
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

PrefixStates = dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (keys, values), each [1, G, n_pre, D]


class PrefixCache:
    """Serves a block the prefix keys/values (batch 1) before the rows' own.

    Normally `update` returns them concatenated, the prefix expanded to the rows. In split mode (see
    `split_attention`) it returns only the rows' own keys/values and `prefix_attention` reads the prefix
    from here, so the expanded copies are never formed."""

    def __init__(self, prefix: PrefixStates):
        self.prefix = prefix
        self.split = False
        self.served = 0  # calls of prefix_attention that used a prefix, to catch attention that bypasses it

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """key_states/value_states [rows, G, n_q, D] -> the keys/values the block attends to."""
        if layer_idx not in self.prefix or self.split:  # no prefix (one-token prompt), or the attention reads it
            return key_states, value_states
        k_prefix, v_prefix = self.prefix[layer_idx]  # [1, G, n_pre, D] each
        rows = key_states.shape[0]
        keys = torch.cat([k_prefix.expand(rows, -1, -1, -1), key_states], dim=2)  # [rows, G, n_pre + n_q, D]
        values = torch.cat([v_prefix.expand(rows, -1, -1, -1), value_states], dim=2)  # [rows, G, n_pre + n_q, D]
        return keys, values


def prefix_states(cache: DynamicCache) -> PrefixStates:
    """The keys/values a cache holds per layer, each [1, G, n_pre, D] (what its next `update` would prepend;
    sliding-window layers hold only their window)."""
    return {i: (layer.keys, layer.values) for i, layer in enumerate(cache.layers)
            if getattr(layer, "is_initialized", False)}


PREFIX_ATTENTION = "knowloc_prefix"
_ACTIVE_PREFIX: ContextVar[PrefixCache | None] = ContextVar("knowloc_active_prefix", default=None)


def prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """sdpa's attention for staircase rows, with the prefix keys/values at batch 1.

    query [B, H, Q, D]; key/value [B, G, Q, D] are the rows' own positions (G key/value heads, query head h
    reads key/value head h // (H/G) as in transformers' repeat_kv). Scores against the prefix are one batched
    matmul per key/value head over all rows, against the own positions a small matmul per row; one softmax
    over both. Returns [B, Q, H, D] like transformers' attention functions."""
    prefix_cache = _ACTIVE_PREFIX.get()
    prefix = prefix_cache.prefix.get(module.layer_idx) if prefix_cache is not None and prefix_cache.split else None
    if prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    prefix_cache.served += 1
    k_pre, v_pre = prefix  # [1, G, P, D] each (P = n_pre)
    rows, heads, n_q, dim = query.shape
    groups, n_pre = key.shape[1], k_pre.shape[2]
    odd_mask = attention_mask is not None and (attention_mask.dim() != 4 or attention_mask.shape[1] != 1
                                               or attention_mask.shape[-1] != n_pre + n_q)
    if odd_mask or dropout or any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "s_aux")):
        keys = torch.cat([k_pre.expand(rows, -1, -1, -1), key], dim=2)  # [B, G, P + Q, D]
        values = torch.cat([v_pre.expand(rows, -1, -1, -1), value], dim=2)  # [B, G, P + Q, D]
        return sdpa_attention_forward(module, query, keys, values, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    per = heads // groups * n_q  # query rows per key/value head
    q = query.reshape(rows, groups, per, dim)  # [B, G, per, D]
    flat = q.transpose(0, 1).reshape(groups, rows * per, dim)  # [G, B * per, D]
    s_pre = torch.bmm(flat, k_pre[0].transpose(1, 2)).view(groups, rows, per, n_pre).transpose(0, 1)  # [B, G, per, P]
    # one own position (the usual single-token target): a broadcast product beats thousands of tiny matmuls
    s_own = (q * key).sum(-1, keepdim=True) if n_q == 1 else torch.matmul(q, key.transpose(-1, -2))  # [B, G, per, Q]
    scores = torch.cat([s_pre, s_own], dim=-1).mul_(dim**-0.5 if scaling is None else scaling)  # [B, G, per, P + Q]
    scores = scores.view(rows, groups, heads // groups, n_q, n_pre + n_q)  # [B, G, H/G, Q, P + Q]
    if attention_mask is None and n_q > 1:  # causal among the own positions; the prefix is visible to all
        attention_mask = torch.ones(n_q, n_pre + n_q, dtype=torch.bool, device=query.device).tril(n_pre)  # [Q, P + Q]
    if attention_mask is not None:  # [batch or 1, 1, Q, P + Q] -> broadcast over the heads of a group
        mask = attention_mask.unsqueeze(-3)  # [batch or 1, 1, 1, Q, P + Q] (or [1, Q, P + Q] from the line above)
        scores = (scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask)
    # [B, G, per, P + Q]
    weights = torch.softmax(scores.float(), dim=-1).to(value.dtype).view(rows, groups, per, n_pre + n_q)
    w_pre = weights[..., :n_pre].transpose(0, 1).reshape(groups, rows * per, n_pre)  # [G, B * per, P]
    out = torch.bmm(w_pre, v_pre[0]).view(groups, rows, per, dim).transpose(0, 1)  # [B, G, per, D]
    w_own = weights[..., n_pre:]  # [B, G, per, Q]
    out = out + (w_own * value if n_q == 1 else torch.matmul(w_own, value))  # [B, G, per, D]
    return out.reshape(rows, heads, n_q, dim).transpose(1, 2).contiguous(), None  # [B, Q, H, D]


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
