"""The fast attribution engine: exact integrated gradients without recomputing the prompt.

Why it is exact: in a causal model, replacing the activation at the last prompt position P-1 changes nothing
at positions < P-1. So the prompt prefix is run once, and every block's key/value states for it are kept.
The integration points (layers x baselines x steps) are then packed into one batch of "rows" that carry
only the positions P-1.. (last prompt token + teacher-forced target tokens), and each row for layer l
enters the stack at block l with the clean residual stream (nothing below l differs from the clean run).
The batch therefore grows like a staircase from block to block, the unembedding runs once for all rows,
and one backward pass yields every row's gradient with respect to its own patched activation. Parameters
are frozen, so no parameter gradient is ever formed.

Blocks are re-run with the exact positional/keyword arguments the model itself passed them in a one-row
capture pass (masks, rotary embeddings, sliding-window layouts), with the cache argument swapped for a
`_ReplayCache` that serves the recorded prefix keys/values expanded to the batch. This keeps the engine
family-agnostic: no per-family attention code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from knowloc.attribution.methods import MethodConfig, baselines, objective
from knowloc.models.hooks import hook_module
from knowloc.models.lm import Encoding, LanguageModel


class _RecordingCache(DynamicCache):
    """A DynamicCache that remembers the full key/value states it returns to each layer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.returned: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        self.returned[layer_idx] = (keys, values)
        return keys, values


class _ReplayCache:
    """Serves a block the recorded prefix keys/values (batch 1, expanded) followed by the rows' own."""

    def __init__(self, returned: dict[int, tuple[torch.Tensor, torch.Tensor]], n_new: int):
        self.prefix = {layer: (k[:, :, : k.shape[2] - n_new], v[:, :, : v.shape[2] - n_new])
                       for layer, (k, v) in returned.items()}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k_prefix, v_prefix = self.prefix[layer_idx]
        rows = key_states.shape[0]
        keys = torch.cat([k_prefix.expand(rows, -1, -1, -1), key_states], dim=2)
        values = torch.cat([v_prefix.expand(rows, -1, -1, -1), value_states], dim=2)
        return keys, values


@dataclass
class Prepared:
    """Everything the staircase needs about one query, from one prefix pass and one capture pass."""

    enc: Encoding
    block_args: list[tuple[tuple, dict]]  # positional / keyword arguments each block received
    cache: _RecordingCache
    clean_hidden: list[torch.Tensor]  # residual stream entering each block [1, n_new, d]
    clean_act: torch.Tensor  # neuron activations at the last prompt position [n_layers, n_neurons]
    target: torch.Tensor  # gold target ids [n_target]
    prob: float  # objective value of the unmodified query


@torch.no_grad()
def prepare(lm: LanguageModel, enc: Encoding, objective_kind: str = "prob") -> Prepared:
    ids = torch.tensor([enc.input_ids], device=lm.device)
    cut = enc.last_pos
    cache = _RecordingCache(config=lm.model.config)
    if cut > 0:
        lm.model(input_ids=ids[:, :cut], cache=cache, use_cache=True, logits_to_keep=1)
    blocks = lm.blocks
    block_args: list = [None] * len(blocks)
    acts: list = [None] * len(blocks)
    handles = []
    try:
        for i, block in enumerate(blocks):
            def capture(_m, args, kwargs, i=i):
                block_args[i] = (args, kwargs)
            handles.append(block.register_forward_pre_hook(capture, with_kwargs=True))
            module, where = lm.site_module(i)
            def record(x, i=i):
                acts[i] = x[0, 0].clone()
            handles.append(_register(module, where, record))
        cache.returned.clear()
        out = lm.model(input_ids=ids[:, cut:], cache=cache, use_cache=True)
    finally:
        for handle in handles:
            handle.remove()
    target = torch.tensor(enc.target_ids, device=lm.device)
    prob = float(objective(out.logits, target, objective_kind)[0])
    clean_hidden = [_hidden_arg(args, kwargs) for args, kwargs in block_args]
    return Prepared(enc, block_args, cache, clean_hidden, torch.stack(acts), target, prob)


def _register(module, where, fn):
    if where == "input":
        return module.register_forward_pre_hook(lambda _m, args: fn(args[0]))
    return module.register_forward_hook(lambda _m, _a, out: fn(out))


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _call_block(block, args: tuple, kwargs: dict, hidden: torch.Tensor, old_cache, new_cache):
    """Re-run a block on `hidden` with the arguments the model gave it, cache swapped for the replay cache."""
    swap = lambda v: new_cache if v is old_cache else v  # noqa: E731
    if args:
        args = (hidden, *(swap(a) for a in args[1:]))
    else:
        kwargs = {**kwargs, "hidden_states": hidden}
    kwargs = {k: swap(v) for k, v in kwargs.items()}
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def default_max_rows(lm: LanguageModel, n_new: int, memory_gb: float) -> int:
    """Rows per chunk so that activations kept for the backward pass stay under `memory_gb` (an estimate)."""
    config = lm.model.config
    d = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    vocab = config.vocab_size
    per_row = (lm.n_layers * n_new * (8 * d + 4 * lm.n_neurons) + 3 * n_new * vocab) * lm.dtype.itemsize
    return max(1, int(memory_gb * 2**30 // per_row))


def staircase_gradients(lm: LanguageModel, prep: Prepared, row_layers: list[int], x: torch.Tensor,
                        objective_kind: str) -> torch.Tensor:
    """Gradients dF/dx [rows, n_neurons] for integration points x [rows, n_neurons], row r patched into layer
    row_layers[r] at the last prompt position; all rows in one staircase batch."""
    by_layer: dict[int, list[int]] = {}
    for row, layer in enumerate(row_layers):
        by_layer.setdefault(layer, []).append(row)
    replay = _ReplayCache(prep.cache.returned, prep.enc.n_target)
    blocks = lm.blocks
    leaves: list[torch.Tensor] = []
    order: list[int] = []
    hidden = None
    with torch.enable_grad():
        for b in range(min(by_layer), lm.n_layers):
            args, kwargs = prep.block_args[b]
            rows = by_layer.get(b)
            if not rows:
                hidden = _call_block(blocks[b], args, kwargs, hidden, prep.cache, replay)
                continue
            leaf = x[rows].detach().requires_grad_(True)
            leaves.append(leaf)
            order += rows
            fresh = prep.clean_hidden[b].expand(len(rows), -1, -1)
            offset = 0 if hidden is None else hidden.shape[0]
            hidden = fresh if hidden is None else torch.cat([hidden, fresh])

            def patch(act: torch.Tensor, leaf=leaf, offset=offset) -> torch.Tensor:
                # new rows: last prompt position <- leaf; later (target) positions keep their own values
                new_rows = torch.cat([leaf.unsqueeze(1).to(act.dtype), act[offset:, 1:]], dim=1)
                return torch.cat([act[:offset], new_rows]) if offset else new_rows

            module, where = lm.site_module(b)
            with hook_module(module, where, patch):
                hidden = _call_block(blocks[b], args, kwargs, hidden, prep.cache, replay)
        grad_hidden = _unembedding_gradient(lm, hidden.detach(), prep.target, objective_kind)
        grads = torch.autograd.grad(hidden, leaves, grad_outputs=grad_hidden)
    out = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    out[torch.tensor(order, device=x.device)] = torch.cat(grads).float()
    return out


UNEMBED_CHUNK_BYTES = 16 * 2**20


def _unembedding_gradient(lm: LanguageModel, hidden: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """dF/d(last block output), computed over row chunks whose logits stay under UNEMBED_CHUNK_BYTES.

    Small chunks keep peak memory flat and let the allocator reuse the logits buffers instead of mapping
    fresh pages for every query (a measurable cost on CPU with a 50k vocabulary)."""
    rows_per_chunk = max(1, UNEMBED_CHUNK_BYTES // (hidden.shape[1] * lm.model.config.vocab_size * 4))
    grad = torch.empty_like(hidden)
    with torch.enable_grad():
        for start in range(0, hidden.shape[0], rows_per_chunk):
            part = hidden[start:start + rows_per_chunk].requires_grad_(True)
            value = objective(lm.logits(part), target, kind).sum()
            (grad[start:start + rows_per_chunk],) = torch.autograd.grad(value, part)
    return grad


def attribute_fast(lm: LanguageModel, enc: Encoding, config: MethodConfig, *, layers: list[int] | None = None,
                   max_rows: int | None = None, memory_gb: float = 4.0) -> tuple[torch.Tensor, float]:
    """Scores [n_layers, n_neurons] (float32, CPU) and the clean objective value, by the staircase engine."""
    prep = prepare(lm, enc, config.objective)
    base = baselines(lm, enc, config).float()  # [J, L, N]
    n_base, steps = base.shape[0], config.effective_steps
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(layers))
    max_rows = max_rows or default_max_rows(lm, enc.n_target, memory_gb)
    clean = prep.clean_act.float()
    # units (baseline j, step k, layer l), ordered so that a chunk holds whole staircases where it can
    grid = torch.cartesian_prod(torch.arange(n_base), torch.arange(1, steps + 1), torch.tensor(layers))
    grad_sum = torch.zeros(n_base * lm.n_layers, lm.n_neurons, device=lm.device, dtype=torch.float32)
    for start in range(0, grid.shape[0], max_rows):
        j, k, l = grid[start:start + max_rows].to(lm.device).unbind(dim=1)
        alpha = (k.float() / steps).unsqueeze(1)
        x = base[j, l] + alpha * (clean[l] - base[j, l])
        grads = staircase_gradients(lm, prep, l.tolist(), x.to(lm.dtype), config.objective)
        grad_sum.index_add_(0, j * lm.n_layers + l, grads)
    grad_mean = grad_sum.view(n_base, lm.n_layers, lm.n_neurons) / steps
    scores = ((clean.unsqueeze(0) - base) * grad_mean).mean(dim=0)
    return scores.cpu(), prep.prob
