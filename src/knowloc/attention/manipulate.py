"""Suppress / enhance attention entries (knowledge synapses) during a forward pass.

Mechanism, the same for every registered family: a forward pre-hook on the self-attention module
(``lm.arch.attn(block)``) enters a `torch.overrides.TorchFunctionMode` for the duration of that module's forward
only, and a forward hook (``always_call=True``, so it also runs when the forward raises) leaves it. The mode
passes every torch call through unchanged except the attention softmax, i.e. the one call to
``torch.nn.functional.softmax`` / ``torch.softmax`` / ``Tensor.softmax`` whose result is the
``[batch, n_heads, q_len, k_len]`` probability tensor. Its result is multiplied by the per-entry factors (and
optionally renormalised) and handed back to the family's own eager code, which then casts, applies dropout and
multiplies by the values exactly as it always does. So each family keeps its own math (GPT-2's scaling options
and its upcast/reordered path, Gemma-2/3 logit soft-capping, GQA's repeated key/value heads, GPT-J's fp32
scores, NeoX's fp32 softmax...), nothing is re-implemented, no module or config is replaced, and an untouched
layer is not hooked at all. Scaling is per QUERY head (the softmax is over query heads, after GQA's repeat_kv).

Requires eager attention (fused SDPA / flash kernels never expose a softmax): `knowloc.models.load_model` loads
models with ``attn_implementation="eager"`` by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from knowloc.errors import KnowlocError
from knowloc.models.lm import LanguageModel

_SOFTMAXES = (torch.nn.functional.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax)


def n_heads(lm: LanguageModel) -> int:
    """Number of query heads per layer."""
    heads = getattr(lm.model.config, "num_attention_heads", None)
    if not isinstance(heads, int):
        raise KnowlocError(f"model config of {lm.name!r} has no integer num_attention_heads")
    return heads


class _ScaledSoftmax(TorchFunctionMode):
    """Active during one attention forward: rescales the attention probabilities of one query row."""

    def __init__(self, layer: int, heads: int, factors: dict[int, dict[int, float]], renormalize: bool,
                 query_position: int):
        super().__init__()
        self.layer = layer
        self.heads = heads
        self.factors = factors  # head -> {key position: factor}
        self.renormalize = renormalize
        self.query_position = query_position
        self.hits = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _SOFTMAXES and isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[1] == self.heads:
            self.hits += 1
            out = self._scale(out)
        return out

    def _scale(self, weights: torch.Tensor) -> torch.Tensor:
        q_len, k_len = weights.shape[-2:]
        q = self.query_position + q_len if self.query_position < 0 else self.query_position
        if not 0 <= q < q_len:
            raise KnowlocError(f"query_position {self.query_position} is outside the {q_len} query positions")
        heads = sorted(self.factors)
        factor = torch.ones(len(heads), k_len, dtype=weights.dtype, device=weights.device)
        for row, head in enumerate(heads):
            for pos, alpha in self.factors[head].items():
                if pos >= k_len:
                    raise KnowlocError(f"entry ({self.layer}, {head}, {pos}) is outside the {k_len} key positions")
                factor[row, pos] = alpha
        index = torch.tensor(heads, device=weights.device)
        rows = weights[:, index, q, :] * factor  # [batch, len(heads), k_len]; x * 1.0 == x exactly
        if self.renormalize:
            total = rows.sum(dim=-1, keepdim=True)
            rows = torch.where(total > 0, rows / torch.where(total > 0, total, torch.ones_like(total)), rows)
        weights = weights.clone()
        weights[:, index, q, :] = rows
        return weights


@contextmanager
def scale_attention(lm: LanguageModel, entries: Iterable[Sequence[int]], alpha: float,
                    renormalize: bool = False, query_position: int = -1) -> Iterator[None]:
    """Multiply attention probabilities at ``entries`` = ``[(layer, head, key_position), ...]`` by ``alpha``.

    Only the row of query position ``query_position`` changes (default -1: the last position of each forward's
    input; key positions are absolute, so with a KV cache they index cache + new tokens). ``alpha = 0``
    suppresses, ``alpha = 2`` enhances, ``alpha = 1`` changes nothing (bit-identical outputs). Without
    ``renormalize`` the modified rows no longer sum to 1 (the paper's manipulation); with it, each modified
    (layer, head) row is divided by its new sum (a row scaled to all zeros stays zero). The model is untouched
    on exit, also when the body raises.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha != alpha or abs(alpha) == float("inf"):
        raise KnowlocError(f"alpha must be a finite number, not {alpha!r}")
    if isinstance(query_position, bool) or not isinstance(query_position, int):
        raise KnowlocError(f"query_position must be an integer, not {query_position!r}")
    implementation = lm.attention_implementation
    if implementation not in (None, "eager"):
        raise KnowlocError(f"scale_attention needs eager attention, but {lm.name!r} uses {implementation!r}; "
                           "load it with attn_implementation='eager'")
    heads = n_heads(lm)
    plan: dict[int, dict[int, dict[int, float]]] = {}
    for entry in entries:
        try:
            layer, head, pos = (int(x) for x in entry)
        except (TypeError, ValueError):
            raise KnowlocError(f"an entry must be (layer, head, position), not {entry!r}") from None
        if not 0 <= layer < lm.n_layers:
            raise KnowlocError(f"layer {layer} is out of range (model has {lm.n_layers})")
        if not 0 <= head < heads:
            raise KnowlocError(f"head {head} is out of range (model has {heads} query heads)")
        if pos < 0:
            raise KnowlocError(f"key position {pos} must be >= 0")
        plan.setdefault(layer, {}).setdefault(head, {})[pos] = float(alpha)

    with ExitStack() as stack:
        for layer, factors in sorted(plan.items()):
            stack.enter_context(_scaled_layer(lm.arch.attn(lm.blocks[layer]), layer, heads, factors,
                                              renormalize, query_position))
        yield


@contextmanager
def _scaled_layer(attn: nn.Module, layer: int, heads: int, factors: dict[int, dict[int, float]],
                  renormalize: bool, query_position: int) -> Iterator[None]:
    def check(mode: _ScaledSoftmax) -> None:
        if mode.hits != 1:
            raise KnowlocError(
                f"layer {layer}: expected one attention softmax with {heads} heads, saw {mode.hits}; "
                "scale_attention needs eager attention (attn_implementation='eager')")
    with mode_during_forward(attn, lambda: _ScaledSoftmax(layer, heads, factors, renormalize, query_position),
                             check):
        yield


@contextmanager
def mode_during_forward(module: nn.Module, make_mode: Callable[[], TorchFunctionMode],
                        check: Callable[[TorchFunctionMode], None]) -> Iterator[None]:
    """Run every forward of ``module`` inside a fresh ``make_mode()`` (a :class:`TorchFunctionMode` that sees
    the forward's torch calls), ``check(mode)`` once a forward returned (not when it raised); hooks removed on
    exit, also on an exception (the mechanism of the module docstring)."""
    active: list[TorchFunctionMode] = []

    def enter(_module, _args, _kwargs):
        mode = make_mode()
        mode.__enter__()
        active.append(mode)
        return None

    def leave(_module, _args, output):
        if not active:  # an earlier pre-hook raised before ours ran
            return None
        mode = active.pop()
        mode.__exit__(None, None, None)
        if output is not None:  # output is None when the forward raised
            check(mode)
        return None

    # Our pre-hook runs last (just before forward) and our forward hook first, so other hooks stay outside the mode.
    pre = module.register_forward_pre_hook(enter, with_kwargs=True)
    post = module.register_forward_hook(leave, prepend=True, always_call=True)
    try:
        yield
    finally:
        pre.remove()
        post.remove()
        while active:  # only if a forward never reached its forward hook
            active.pop().__exit__(None, None, None)
