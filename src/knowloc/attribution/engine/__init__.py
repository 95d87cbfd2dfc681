"""The fast attribution engine: exact integrated gradients without recomputing the prompt.

Why it is exact: in a causal model, replacing the activation at the last prompt position P-1 changes nothing
at positions < P-1. So the prompt prefix is run once, and every block's key/value states for it are kept.
The integration points (layers x baselines x steps) are then packed into one batch of "rows" that carry
only the positions P-1.. (last prompt token + teacher-forced target tokens), and each row for layer l
joins the stack after block l, from the clean run (nothing below l differs; see `staircase_gradients`).
The batch therefore grows like a staircase from block to block, the unembedding runs once for all rows,
and one backward pass yields every row's gradient with respect to its own patched activation. Parameters
are frozen, so no parameter gradient is ever formed.

Blocks are re-run with the exact positional/keyword arguments the model itself passed them in a capture
pass (masks, rotary embeddings, sliding-window layouts), with the cache argument swapped for a `_PrefixCache`
that holds the prefix keys/values at batch 1 and a registered attention function (`_prefix_attention`) that
reads them from there. This keeps the engine family-agnostic: no per-family attention code. An unpatched clean
row, entering at block 0 in a query's first chunk, computes the clean residual stream and activations the other
rows start from and returns them (`CleanRun`) for the later chunks.

What the engine keeps between queries lives in :data:`knowloc.attribution.cache.ENGINE_CACHE`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from knowloc.attribution.cache import ENGINE_CACHE
from knowloc.attribution.methods import MethodConfig, baselines
from knowloc.models.hooks import hook_module
from knowloc.models.lm import Encoding, LanguageModel


class _PrefixCache:
    """Serves a block the prefix keys/values (batch 1) before the rows' own.

    Normally `update` returns them concatenated, the prefix expanded to the rows. In split mode (see
    `_split_attention`) it returns only the rows' own keys/values and `_prefix_attention` reads the prefix
    from here, so the expanded copies are never formed."""

    def __init__(self, prefix: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        self.prefix = prefix
        self.split = False
        self.served = 0  # calls of _prefix_attention that used a prefix, to catch attention that bypasses it

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx not in self.prefix or self.split:  # no prefix (one-token prompt), or the attention reads it
            return key_states, value_states
        k_prefix, v_prefix = self.prefix[layer_idx]
        rows = key_states.shape[0]
        keys = torch.cat([k_prefix.expand(rows, -1, -1, -1), key_states], dim=2)
        values = torch.cat([v_prefix.expand(rows, -1, -1, -1), value_states], dim=2)
        return keys, values


_PREFIX_ATTENTION = "knowloc_prefix"
_ACTIVE_PREFIX: ContextVar[_PrefixCache | None] = ContextVar("knowloc_active_prefix", default=None)


def _prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
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
    k_pre, v_pre = prefix
    rows, heads, n_q, dim = query.shape
    groups, n_pre = key.shape[1], k_pre.shape[2]
    odd_mask = attention_mask is not None and (attention_mask.dim() != 4 or attention_mask.shape[1] != 1
                                               or attention_mask.shape[-1] != n_pre + n_q)
    if odd_mask or dropout or any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "s_aux")):
        keys = torch.cat([k_pre.expand(rows, -1, -1, -1), key], dim=2)
        values = torch.cat([v_pre.expand(rows, -1, -1, -1), value], dim=2)
        return sdpa_attention_forward(module, query, keys, values, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    per = heads // groups * n_q  # query rows per key/value head
    q = query.reshape(rows, groups, per, dim)
    flat = q.transpose(0, 1).reshape(groups, rows * per, dim)
    s_pre = torch.bmm(flat, k_pre[0].transpose(1, 2)).view(groups, rows, per, n_pre).transpose(0, 1)
    # one own position (the usual single-token target): a broadcast product beats thousands of tiny matmuls
    s_own = (q * key).sum(-1, keepdim=True) if n_q == 1 else torch.matmul(q, key.transpose(-1, -2))
    scores = torch.cat([s_pre, s_own], dim=-1).mul_(dim**-0.5 if scaling is None else scaling)
    scores = scores.view(rows, groups, heads // groups, n_q, n_pre + n_q)
    if attention_mask is None and n_q > 1:  # causal among the own positions; the prefix is visible to all
        attention_mask = torch.ones(n_q, n_pre + n_q, dtype=torch.bool, device=query.device).tril(n_pre)
    if attention_mask is not None:  # [batch or 1, 1, Q, P + Q] -> broadcast over the heads of a group
        mask = attention_mask.unsqueeze(-3)
        scores = (scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask)
    weights = torch.softmax(scores.float(), dim=-1).to(value.dtype).view(rows, groups, per, n_pre + n_q)
    w_pre = weights[..., :n_pre].transpose(0, 1).reshape(groups, rows * per, n_pre)
    out = torch.bmm(w_pre, v_pre[0]).view(groups, rows, per, dim).transpose(0, 1)
    w_own = weights[..., n_pre:]
    out = out + (w_own * value if n_q == 1 else torch.matmul(w_own, value))
    return out.reshape(rows, heads, n_q, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(_PREFIX_ATTENTION, _prefix_attention)
AttentionMaskInterface.register(_PREFIX_ATTENTION, sdpa_mask)


@contextmanager
def _split_attention(lm: LanguageModel, prefix_cache: _PrefixCache) -> Iterator[None]:
    """Run the staircase's blocks with `_prefix_attention` where the model runs sdpa attention (inside
    `LanguageModel.fast_attention`); otherwise (e.g. Gemma-2's soft-capped eager attention) leave it as is."""
    if lm.attention_implementation != "sdpa":
        yield
        return
    token = _ACTIVE_PREFIX.set(prefix_cache)
    prefix_cache.split = True
    try:
        with lm.use_attention(_PREFIX_ATTENTION):
            yield
    finally:
        prefix_cache.split = False
        _ACTIVE_PREFIX.reset(token)


def _prefix_states(cache: DynamicCache) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The keys/values a cache holds per layer (what its next `update` would prepend; sliding-window layers
    hold only their window)."""
    return {i: (layer.keys, layer.values) for i, layer in enumerate(cache.layers)
            if getattr(layer, "is_initialized", False)}


@dataclass(frozen=True)
class Prepared:
    """Everything the staircase needs about one query that does not depend on the rows, complete when
    `prepare` returns: the prefix keys/values, each block's arguments, block 0's input and the target."""

    enc: Encoding
    block_args: list[tuple[tuple, dict]]  # each block's arguments, hidden states removed, cache as _CACHE_SLOT
    prefix_cache: _PrefixCache
    embedded: torch.Tensor  # block 0's input for the new positions [1, n_new, d]
    target: torch.Tensor  # gold target ids [n_target]


@dataclass(frozen=True)
class CleanRun:
    """The unpatched query's new positions, computed by the first chunk's clean row and read by every chunk:
    `hidden[b]` the residual stream entering block b ([1, n_new, d]; the last entry is the last block's output),
    `act[b]` the neuron activations at the last prompt position, `mlp_residual[b]` r^b (see
    `staircase_gradients`), `value` the clean objective."""

    hidden: list[torch.Tensor]
    act: list[torch.Tensor]
    mlp_residual: list[torch.Tensor | None]
    value: float


_CACHE_SLOT = object()  # stands for the cache argument in recorded block arguments


class _EmbeddingsDone(Exception):
    """Stops a forward pass once block 0's input is known."""


@torch.no_grad()
def prepare(lm: LanguageModel, enc: Encoding) -> Prepared:
    """One prefix pass (keys/values of positions < P-1) and a capture of the arguments the model gives each
    block for the new positions.

    Block arguments (masks, rotary embeddings, cache positions) depend only on the positions, so they are
    recorded by one full pass per (prefix length, new positions, attention implementation) and reused; for
    other queries of that shape the pass stops after the embeddings. Either way the staircase's clean row does
    the real computation of the new positions."""
    ids = torch.tensor([enc.input_ids], device=lm.device)
    cut = enc.last_pos
    cache = DynamicCache(config=lm.model.config)
    backbone = lm.model.base_model  # no unembedding needed here
    if cut > 0:
        backbone(input_ids=ids[:, :cut], cache=cache, use_cache=True)
    prefix_cache = _PrefixCache(_prefix_states(cache))
    key = (cut, enc.n_target, lm.attention_implementation)
    known = ENGINE_CACHE.model(lm.model).block_args.get(key)
    blocks = lm.blocks
    block_args: list = [None] * len(blocks)
    embedded: list = []
    handles = []

    def capture(_m, args, kwargs, i):
        if i == 0:
            embedded.append(_hidden_arg(args, kwargs))
            if known is not None:
                raise _EmbeddingsDone
        block_args[i] = _strip(args, kwargs, cache)
        return _block_inputs(*block_args[i], _hidden_arg(args, kwargs), prefix_cache)

    try:
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(partial(capture, i=i), with_kwargs=True))
        backbone(input_ids=ids[:, cut:], cache=cache, use_cache=True)
    except _EmbeddingsDone:
        block_args = known
    finally:
        for handle in handles:
            handle.remove()
    if known is None:
        ENGINE_CACHE.remember_block_args(lm.model, key, block_args)
    target = torch.tensor(enc.target_ids, device=lm.device)
    return Prepared(enc, block_args, prefix_cache, embedded[0], target)


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _strip(args: tuple, kwargs: dict, cache) -> tuple[tuple, dict]:
    """Recorded block arguments without the hidden states (per query) and with the cache as a placeholder."""
    slot = lambda v: _CACHE_SLOT if v is cache else v  # noqa: E731
    if args:
        return (None, *(slot(a) for a in args[1:])), {k: slot(v) for k, v in kwargs.items()}
    return (), {k: slot(v) for k, v in kwargs.items() if k != "hidden_states"}


def _block_inputs(args: tuple, kwargs: dict, hidden: torch.Tensor, cache) -> tuple[tuple, dict]:
    """Recorded block arguments filled in with the hidden states and the cache."""
    fill = lambda v: cache if v is _CACHE_SLOT else v  # noqa: E731
    if args:
        return (hidden, *(fill(a) for a in args[1:])), {k: fill(v) for k, v in kwargs.items()}
    return (), {**{k: fill(v) for k, v in kwargs.items()}, "hidden_states": hidden}


def _call_block(lm: LanguageModel, prep: Prepared, b: int, hidden: torch.Tensor) -> torch.Tensor:
    """Re-run block b on `hidden` with the arguments the model gave it, the cache swapped for the prefix cache."""
    prefix_cache = prep.prefix_cache
    args, kwargs = _block_inputs(*prep.block_args[b], hidden, prefix_cache)
    served = prefix_cache.served
    out = lm.blocks[b](*args, **kwargs)
    if prefix_cache.split and b in prefix_cache.prefix and prefix_cache.served == served:
        raise RuntimeError(f"block {b} of {type(lm.model).__name__} computed attention without the attention "
                           "interface, so it never saw the prefix keys/values; the fast engine cannot serve it")
    return out[0] if isinstance(out, tuple) else out


def default_max_rows(lm: LanguageModel, n_new: int, memory_gb: float, prefix_elements: int = 0) -> int:
    """Rows per chunk so that activations kept for the backward pass stay under `memory_gb` (an estimate).

    Per row: the new positions' activations in every block, the logits, and the prefix keys/values of all
    layers (`prefix_elements`), which each row's attention concatenates and keeps for the backward pass; counted
    twice for attention's transient copies. This term grows with the prompt length, so long prompts get
    smaller chunks instead of more memory."""
    config = lm.model.config
    d = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    vocab = config.vocab_size
    per_row = (lm.n_layers * n_new * (8 * d + 4 * lm.n_neurons) + 3 * n_new * vocab
               + 2 * prefix_elements) * lm.dtype.itemsize
    return max(1, int(memory_gb * 2**30 // per_row))


@dataclass
class StaircaseResult:
    grads: torch.Tensor  # dF/dx of each row [rows, n_neurons], float32
    clean_grads: torch.Tensor | None  # dF/da^l at the clean point for each clean layer, float32
    clean: CleanRun | None  # the clean row's run (first chunk only)


def staircase_gradients(lm: LanguageModel, prep: Prepared, row_layers: list[int], base: torch.Tensor,
                        alpha: torch.Tensor, objective_kind: str, clean_layers: list[int] | None = None,
                        clean: CleanRun | None = None) -> StaircaseResult:
    """Gradients dF/dx for the integration points x_r = base_r + alpha_r (a^l - base_r) (base [rows, n_neurons],
    alpha [rows, 1], float32), row r patched into layer l = row_layers[r] at the last prompt position; all rows
    in one staircase batch.

    At the neuron site (the input of the MLP output projection W_out) a row for layer l joins the batch after
    block l: block l's output there is the clean one with the MLP term swapped, r^l + tail(W_out x) with
    r^l = h^{l+1} - tail(W_out a^l) (tail: the identity, or Gemma-2/3's post-feedforward norm). Its attention and
    first projections would only repeat the clean row's. At the pre-activation site the row runs block l itself.

    With `clean_layers` (the first chunk of a query), one unpatched clean row enters at block 0 and stays
    row 0: it computes the clean residual stream, activations and r^l that every row starts from (returned as
    `StaircaseResult.clean`, which later chunks pass back as `clean`), the clean objective value, and, through a
    zero additive leaf at each clean layer, dF/da^l at the clean point (alpha = 1) for all of them at once,
    which every baseline shares."""
    by_layer: dict[int, list[int]] = {}
    for row, layer in enumerate(row_layers):
        by_layer.setdefault(layer, []).append(row)
    with_clean = clean_layers is not None
    if with_clean == (clean is not None):
        raise ValueError("pass clean_layers (first chunk) or the first chunk's clean run, not both or neither")
    after_block = lm.site == "neuron"
    if with_clean:
        n = lm.n_layers
        clean_hidden: list = [prep.embedded] + [None] * n
        clean_act: list = [None] * n
        mlp_residual: list = [None] * n
    else:
        clean_hidden, clean_act, mlp_residual = clean.hidden, clean.act, clean.mlp_residual
    clean_at = {layer: torch.zeros(lm.n_neurons, device=lm.device, dtype=lm.dtype, requires_grad=True)
                for layer in clean_layers or ()}
    leaves: list[torch.Tensor] = []
    order: list[int] = []
    hidden = clean_hidden[0] if with_clean else None

    def leaf_for(b: int, rows: list[int], dtype: torch.dtype) -> torch.Tensor:
        index = torch.tensor(rows, device=base.device)
        row_base, row_alpha = base[index], alpha[index]
        leaf = (row_base + row_alpha * (clean_act[b].float() - row_base)).to(dtype).requires_grad_(True)
        leaves.append(leaf)
        order.extend(rows)
        return leaf

    with torch.enable_grad():
        for b in range(0 if with_clean else min(by_layer), lm.n_layers):
            rows = by_layer.get(b, [])
            running = [] if after_block else rows  # rows that run block b themselves
            offset = 0 if hidden is None else hidden.shape[0]
            if running:
                fresh = clean_hidden[b].expand(len(running), -1, -1)
                hidden = fresh if hidden is None else torch.cat([hidden, fresh])
            delta = clean_at.get(b)

            def patch(act: torch.Tensor, b=b, running=running, offset=offset, delta=delta) -> torch.Tensor | None:
                if with_clean:
                    clean_act[b] = act[0, 0].detach().clone()
                if running:  # last prompt position <- x; later (target) positions keep their own values
                    leaf = leaf_for(b, running, act.dtype)
                    act = torch.cat([act[:offset], torch.cat([leaf.unsqueeze(1), act[offset:, 1:]], dim=1)])
                elif delta is None:
                    return None
                else:
                    act = act.clone()
                if delta is not None:  # clean row: + 0, so dF/d(delta) = dF/da^b with later layers free
                    act[0, 0] += delta
                return act

            if hidden is not None:
                if running or with_clean:
                    module, where = lm.site_module(b)
                    with hook_module(module, where, patch):
                        hidden = _call_block(lm, prep, b, hidden)
                else:
                    hidden = _call_block(lm, prep, b, hidden)
            if with_clean:  # row 0 is the clean row; +0 leaves do not change its value
                clean_hidden[b + 1] = hidden[:1].detach().clone()
                if after_block:
                    with torch.no_grad():
                        mlp_residual[b] = clean_hidden[b + 1][0, 0].float() - _mlp_term(
                            lm, b, clean_act[b].unsqueeze(0))[0].float()
            if rows and after_block:
                leaf = leaf_for(b, rows, lm.dtype)
                first = (mlp_residual[b] + _mlp_term(lm, b, leaf).float()).to(lm.dtype)
                later = clean_hidden[b + 1][:, 1:].expand(len(rows), -1, -1)
                joined = torch.cat([first.unsqueeze(1), later], dim=1)
                hidden = joined if hidden is None else torch.cat([hidden, joined])
        grad_hidden, value = _unembedding_gradient(lm, hidden.detach(), prep.target, objective_kind)
        deltas = list(clean_at.values())
        grads = torch.autograd.grad(hidden, leaves + deltas, grad_outputs=grad_hidden) if leaves or deltas else ()
    out = torch.empty(len(row_layers), lm.n_neurons, device=lm.device, dtype=torch.float32)
    if leaves:
        out[torch.tensor(order, device=lm.device)] = torch.cat(grads[:len(leaves)]).float()
    clean_grads = torch.stack(grads[len(leaves):]).float() if deltas else None
    run = CleanRun(clean_hidden, clean_act, mlp_residual, value) if with_clean else None
    return StaircaseResult(out, clean_grads, run)


def _mlp_term(lm: LanguageModel, b: int, act: torch.Tensor) -> torch.Tensor:
    """What block b adds to the residual stream for neuron activations `act` [rows, n_neurons]:
    tail(W_out act) (see ArchSpec.mlp_tail)."""
    block = lm.blocks[b]
    out = lm.arch.mlp_out(block)(act)
    return lm.arch.mlp_tail(block)(out) if lm.arch.mlp_tail is not None else out


UNEMBED_CHUNK_BYTES = 256 * 2**20


def _unembedding_gradient(lm: LanguageModel, hidden: torch.Tensor, target: torch.Tensor,
                         kind: str) -> tuple[torch.Tensor, float]:
    """dF/d(last block output) for every row, with the unembedding's gradient written out by hand, and F of
    row 0.

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
    step = max(n_target, UNEMBED_CHUNK_BYTES // (vocab * 4))
    value = None
    for start in range(0, flat.shape[0], step):
        part = flat[start:start + step]
        z = ENGINE_CACHE.scratch(part.shape[0], vocab, part.device)
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
        z.sub_(z.amax(dim=-1, keepdim=True))
        if start == 0:  # row 0's objective: mean_t of P(o_t) or of log P(o_t) = z_o - logsumexp(z)
            gold_logit = z[:n_target].gather(-1, gold[:n_target]).squeeze(-1)
        z.exp_()
        total = z.sum(dim=-1, keepdim=True)
        if start == 0:
            log_p = gold_logit - total[:n_target, 0].log()
            value = float((log_p if kind == "logprob" else log_p.exp()).mean())
        z.div_(total)  # z is now the softmax p
        coef = torch.full((part.shape[0], 1), 1.0 / n_target, device=z.device)
        if kind == "prob":
            coef = coef * z.gather(-1, gold[start:start + step])
        z.mul_(-coef).scatter_add_(-1, gold[start:start + step], coef)  # dF/dz = c (e_o - p)
        if squash is not None:
            z.mul_(1 - squash.square())
        grad_flat[start:start + step] = z @ weight.float() if weight.dtype != torch.float32 else torch.mm(z, weight)
    (grad,) = torch.autograd.grad(normed, leaf, grad_outputs=grad_flat.view_as(normed).to(normed.dtype))
    return grad, value


def attribute_fast(lm: LanguageModel, enc: Encoding, config: MethodConfig, *, layers: list[int] | None = None,
                   max_rows: int | None = None, memory_gb: float = 4.0) -> tuple[torch.Tensor, float]:
    """Scores [n_layers, n_neurons] (float32, CPU) and the clean objective value, by the staircase engine."""
    with lm.fast_attention():
        return _attribute_fast(lm, enc, config, layers, max_rows, memory_gb)


def _attribute_fast(lm: LanguageModel, enc: Encoding, config: MethodConfig, layers: list[int] | None,
                    max_rows: int | None, memory_gb: float) -> tuple[torch.Tensor, float]:
    prep = prepare(lm, enc)
    base = baselines(lm, enc, config).float()  # [J, L, N]
    n_base, steps = base.shape[0], config.effective_steps
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(layers))
    prefix_elements = sum(k.numel() + v.numel() for k, v in prep.prefix_cache.prefix.values())
    max_rows = max_rows or default_max_rows(lm, enc.n_target, memory_gb, prefix_elements)
    # Units (baseline j, step k, layer l) for k < m, ordered so that a chunk holds whole staircases where it
    # can. At k = m every baseline's point is the clean activation a, so the clean row (in the first chunk)
    # gives that step's gradient for every layer and baseline.
    grid = torch.cartesian_prod(torch.arange(n_base), torch.arange(1, steps), torch.tensor(layers)).view(-1, 3)
    grad_sum = torch.zeros(n_base * lm.n_layers, lm.n_neurons, device=lm.device, dtype=torch.float32)
    clean: CleanRun | None = None
    with _split_attention(lm, prep.prefix_cache):
        for start in range(0, max(grid.shape[0], 1), max_rows):
            j, k, l = grid[start:start + max_rows].to(lm.device).unbind(dim=1)
            alpha = (k.float() / steps).unsqueeze(1)
            result = staircase_gradients(lm, prep, l.tolist(), base[j, l], alpha, config.objective,
                                         clean_layers=layers if clean is None else None, clean=clean)
            grad_sum.index_add_(0, j * lm.n_layers + l, result.grads)
            if clean is None:
                clean = result.clean
                grad_sum.view(n_base, lm.n_layers, -1)[:, layers] += result.clean_grads
    assert clean is not None
    prob = clean.value
    clean_acts = torch.stack(clean.act).float()
    grad_mean = grad_sum.view(n_base, lm.n_layers, lm.n_neurons) / steps
    scores = ((clean_acts.unsqueeze(0) - base) * grad_mean).mean(dim=0)
    return scores.cpu(), prob
