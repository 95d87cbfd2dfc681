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

import ctypes
import ctypes.util
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import DynamicCache

from knowloc.attribution.methods import MethodConfig, baselines, objective
from knowloc.models.hooks import hook_module
from knowloc.models.lm import Encoding, LanguageModel


@lru_cache(maxsize=1)
def _keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS after every query.

    Each query allocates ~1 GB of short-lived activations; with the default trim/mmap heuristics the pages go
    back to the OS and are faulted in again on the next query (10-15% of a query's time on CPU, more after the
    reference's large allocations). Process-wide and harmless; a no-op off glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 1 << 30) and libc.mallopt(m_mmap_threshold, 32 << 20))
    except (OSError, AttributeError):
        return False


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
                        objective_kind: str, clean_layers: list[int] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients dF/dx [rows, n_neurons] for integration points x [rows, n_neurons], row r patched into layer
    row_layers[r] at the last prompt position; all rows in one staircase batch.

    With `clean_layers`, one extra unpatched row carries a zero additive leaf at each of those layers: its
    gradients are dF/da^l at the clean point (alpha = 1) for all of them at once, which every baseline shares.
    Returns (gradients of the rows, clean gradients [len(clean_layers), n_neurons] or None)."""
    by_layer: dict[int, list[int]] = {}
    for row, layer in enumerate(row_layers):
        by_layer.setdefault(layer, []).append(row)
    clean_at = {layer: torch.zeros(lm.n_neurons, device=x.device, dtype=x.dtype, requires_grad=True)
                for layer in clean_layers}
    replay = _ReplayCache(prep.cache.returned, prep.enc.n_target)
    blocks = lm.blocks
    leaves: list[torch.Tensor] = []
    order: list[int] = []
    hidden = None
    with torch.enable_grad():
        for b in range(min([*by_layer, *clean_at]), lm.n_layers):
            args, kwargs = prep.block_args[b]
            rows = by_layer.get(b, [])
            if hidden is None and clean_at:  # the clean row enters first and stays row 0
                hidden = prep.clean_hidden[b]
            leaf = x[rows].detach().requires_grad_(True) if rows else None
            if rows:
                leaves.append(leaf)
                order += rows
                fresh = prep.clean_hidden[b].expand(len(rows), -1, -1)
                offset = 0 if hidden is None else hidden.shape[0]
                hidden = fresh if hidden is None else torch.cat([hidden, fresh])
            else:
                offset = hidden.shape[0]
            delta = clean_at.get(b)

            def patch(act: torch.Tensor, leaf=leaf, offset=offset, delta=delta) -> torch.Tensor:
                # new rows: last prompt position <- leaf; later (target) positions keep their own values
                parts = []
                if delta is not None:  # clean row: + 0, so dF/d(delta) = dF/da^b with later layers free
                    parts += [torch.cat([act[:1, :1] + delta.to(act.dtype), act[:1, 1:]], dim=1), act[1:offset]]
                else:
                    parts.append(act[:offset])
                if leaf is not None:
                    parts.append(torch.cat([leaf.unsqueeze(1).to(act.dtype), act[offset:, 1:]], dim=1))
                return torch.cat(parts)

            if leaf is None and delta is None:
                hidden = _call_block(blocks[b], args, kwargs, hidden, prep.cache, replay)
                continue
            module, where = lm.site_module(b)
            with hook_module(module, where, patch):
                hidden = _call_block(blocks[b], args, kwargs, hidden, prep.cache, replay)
        grad_hidden = _unembedding_gradient(lm, hidden.detach(), prep.target, objective_kind)
        deltas = list(clean_at.values())
        grads = torch.autograd.grad(hidden, leaves + deltas, grad_outputs=grad_hidden)
    out = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    if leaves:
        out[torch.tensor(order, device=x.device)] = torch.cat(grads[:len(leaves)]).float()
    clean_grads = torch.stack(grads[len(leaves):]).float() if deltas else None
    return out, clean_grads


UNEMBED_CHUNK_BYTES = 256 * 2**20
_SCRATCH: dict[tuple, torch.Tensor] = {}


def _scratch(rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """A reused float32 logits buffer: a fresh 100 MB tensor per query costs page faults on every call."""
    key = (vocab, device.type, device.index)
    buf = _SCRATCH.get(key)
    if buf is None or buf.shape[0] < rows:
        _SCRATCH.clear()
        buf = _SCRATCH[key] = torch.empty(rows, vocab, device=device, dtype=torch.float32)
    return buf[:rows]


def _unembedding_gradient(lm: LanguageModel, hidden: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """dF/d(last block output) for every row, with the unembedding's gradient written out by hand.

    F = mean_t P(o_t) (or log P): dF/dz = c (e_o - p) per target position with c = P(o_t)/T (or 1/T), z the
    logits (times 1 - tanh^2 under Gemma's soft-capping). Logits go into a reused buffer, in row chunks of at
    most UNEMBED_CHUNK_BYTES; only the final norm is differentiated by autograd."""
    rows, n_target, _ = hidden.shape
    head = lm.arch.unembed(lm.model)
    weight, bias = head.weight, getattr(head, "bias", None)
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    vocab = weight.shape[0]
    with torch.enable_grad():
        leaf = hidden.detach().requires_grad_(True)
        normed = lm.arch.final_norm(lm.model)(leaf)
    flat = normed.detach().reshape(rows * n_target, -1)
    gold = target.repeat(rows).view(-1, 1)  # the gold id of each (row, target position)
    grad_flat = torch.empty(flat.shape, device=flat.device, dtype=torch.float32)
    step = max(1, UNEMBED_CHUNK_BYTES // (vocab * 4))
    for start in range(0, flat.shape[0], step):
        part = flat[start:start + step]
        z = _scratch(part.shape[0], vocab, part.device)
        if weight.dtype == torch.float32:
            torch.mm(part, weight.t(), out=z)
        else:
            z.copy_(part @ weight.t())
        if bias is not None:
            z += bias.float()
        squash = None
        if cap:
            squash = torch.tanh(z / cap)
            z.copy_(squash * cap)
        z.sub_(z.amax(dim=-1, keepdim=True)).exp_()
        z.div_(z.sum(dim=-1, keepdim=True))  # z is now the softmax p
        coef = torch.full((part.shape[0], 1), 1.0 / n_target, device=z.device)
        if kind == "prob":
            coef = coef * z.gather(-1, gold[start:start + step])
        z.mul_(-coef).scatter_add_(-1, gold[start:start + step], coef)  # dF/dz = c (e_o - p)
        if squash is not None:
            z.mul_(1 - squash.square())
        grad_flat[start:start + step] = z @ weight.float() if weight.dtype != torch.float32 else torch.mm(z, weight)
    (grad,) = torch.autograd.grad(normed, leaf, grad_outputs=grad_flat.view_as(normed).to(normed.dtype))
    return grad


def attribute_fast(lm: LanguageModel, enc: Encoding, config: MethodConfig, *, layers: list[int] | None = None,
                   max_rows: int | None = None, memory_gb: float = 4.0) -> tuple[torch.Tensor, float]:
    """Scores [n_layers, n_neurons] (float32, CPU) and the clean objective value, by the staircase engine."""
    if lm.device.type == "cpu":
        _keep_freed_memory()
    with lm.fast_attention():
        return _attribute_fast(lm, enc, config, layers, max_rows, memory_gb)


def _attribute_fast(lm: LanguageModel, enc: Encoding, config: MethodConfig, layers: list[int] | None,
                    max_rows: int | None, memory_gb: float) -> tuple[torch.Tensor, float]:
    prep = prepare(lm, enc, config.objective)
    base = baselines(lm, enc, config).float()  # [J, L, N]
    n_base, steps = base.shape[0], config.effective_steps
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(layers))
    max_rows = max_rows or default_max_rows(lm, enc.n_target, memory_gb)
    clean = prep.clean_act.float()
    # Units (baseline j, step k, layer l) for k < m, ordered so that a chunk holds whole staircases where it
    # can. At k = m every baseline's point is the clean activation a, so one clean row (in the first chunk)
    # gives that step's gradient for every layer and baseline.
    grid = torch.cartesian_prod(torch.arange(n_base), torch.arange(1, steps), torch.tensor(layers)).view(-1, 3)
    grad_sum = torch.zeros(n_base * lm.n_layers, lm.n_neurons, device=lm.device, dtype=torch.float32)
    for number, start in enumerate(range(0, max(grid.shape[0], 1), max_rows)):
        j, k, l = grid[start:start + max_rows].to(lm.device).unbind(dim=1)
        alpha = (k.float() / steps).unsqueeze(1)
        x = base[j, l] + alpha * (clean[l] - base[j, l])
        grads, at_clean = staircase_gradients(lm, prep, l.tolist(), x.to(lm.dtype), config.objective,
                                              clean_layers=layers if number == 0 else ())
        grad_sum.index_add_(0, j * lm.n_layers + l, grads)
        if at_clean is not None:
            grad_sum.view(n_base, lm.n_layers, -1)[:, layers] += at_clean
    grad_mean = grad_sum.view(n_base, lm.n_layers, lm.n_neurons) / steps
    scores = ((clean.unsqueeze(0) - base) * grad_mean).mean(dim=0)
    return scores.cpu(), prep.prob
