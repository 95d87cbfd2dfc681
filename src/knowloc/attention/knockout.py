"""Attention knockout and attribute extraction (Geva et al. 2023, "Dissecting Recall of Factual Associations in
Auto-Regressive Language Models"; docs/attention.md, "Attention knockout").

**Knockout.** Block the attention edges from a set of source positions ``S`` to the last position ``N`` in every
head of a window of layers: at those layers the last position's attention is

    A'[N, j] = exp(s_Nj) / sum_{j' not in S} exp(s_Nj')  for j not in S,   A'[N, j] = 0  for j in S,

i.e. the scores of the blocked edges set to -inf before the softmax. The same mechanism as
:mod:`knowloc.attention.manipulate` (a ``TorchFunctionMode`` active during one attention forward), for both
attention implementations: under ``eager`` the softmax's probabilities of the blocked edges are zeroed and the
row renormalized (exactly the -inf softmax above), under ``sdpa`` the blocked edges get ``-inf`` in the additive
mask of ``scaled_dot_product_attention`` (the causal mask made explicit). Each batch row has its own blocked
edges, so one forward measures many knockouts (:func:`knockout_effects`). Rows that block nothing are left as
they are (bit-identical outputs).

The edge sets (Geva et al., section 5): ``subject`` (the subject's tokens), ``non_subject`` (the other prompt
tokens but the last and the first: position 0 is the attention sink every head leans on, with or without a BOS
token, and blocking it is another intervention; the knowledge synapses leave it out too) and ``last`` (the last
position to itself). The effect of a knockout at layer ``l``
(the window of ``window`` layers centred on it) is the relative drop of the answer's first-token probability
at the last position, ``drop = (p_clean - p_knocked) / p_clean``.

**Attribute extraction** (Geva et al., section 6): the share of facts whose answer is the top token of the
subject's last-token residual stream after block ``l``, and of block ``l``'s attention output at the last
position, each read through the model's final norm and unembedding (the logit lens).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from knowloc.attention.manipulate import _SOFTMAXES, mode_during_forward, n_heads
from knowloc.errors import KnowlocError
from knowloc.models.hooks import hook_module
from knowloc.models.lm import LanguageModel
from knowloc.models.spans import subject_span

EDGE_SETS = ("subject", "non_subject", "last")
SITES = ("subject_hidden", "attention_update")
IMPLEMENTATIONS = ("eager", "sdpa")


def default_window(n_layers: int) -> int:
    """Geva et al. block 9 of GPT-2 XL's 48 layers: about a fifth of the model's layers (at least 1)."""
    return max(1, round(n_layers / 5))


def window_layers(layer: int, window: int, n_layers: int) -> list[int]:
    """The ``window`` layers centred on ``layer`` (``(window - 1) // 2`` below it), cut at the model's ends."""
    start = layer - (window - 1) // 2
    return [b for b in range(start, start + window) if 0 <= b < n_layers]


def source_positions(n_positions: int, subject: tuple[int, int], edge_set: str) -> list[int]:
    """The key positions an edge set blocks into the last position of a prompt of ``n_positions`` tokens whose
    subject spans ``subject = (first, last)`` token positions (module docstring)."""
    last = n_positions - 1
    first_sub, last_sub = subject
    if edge_set == "subject":
        return [p for p in range(first_sub, last_sub + 1) if p != last]
    if edge_set == "non_subject":
        return [p for p in range(1, last) if not first_sub <= p <= last_sub]
    if edge_set == "last":
        return [last]
    raise KnowlocError(f"unknown edge set {edge_set!r}; choose from {', '.join(EDGE_SETS)}")


class _KnockedOut(TorchFunctionMode):
    """Active during one attention forward: blocks, per batch row, the edges from ``blocked[row]`` (a bool mask
    over key positions) into the query position."""

    def __init__(self, blocked: torch.Tensor, heads: int, query_position: int):
        super().__init__()
        self.blocked = blocked  # [batch, n_positions] bool
        self.any = blocked.any(dim=1)  # [batch]
        self.heads, self.query_position = heads, query_position
        self.hits = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention:
            self.hits += 1
            positional, named = self._sdpa_arguments(args, kwargs)
            return func(*positional, **named)
        out = func(*args, **kwargs)
        if func in _SOFTMAXES and isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[1] == self.heads:
            self.hits += 1
            out = self._renormalized(out)
        return out

    def _row(self, q_len: int, batch: int) -> int:
        if batch != self.blocked.shape[0]:
            raise KnowlocError(f"a knockout of {self.blocked.shape[0]} rows ran on a batch of {batch}")
        q = self.query_position + q_len if self.query_position < 0 else self.query_position
        if not 0 <= q < q_len:
            raise KnowlocError(f"query_position {self.query_position} is outside the {q_len} query positions")
        return q

    def _mask(self, k_len: int, device: torch.device) -> torch.Tensor:
        """The blocked key positions as [batch, k_len] (the prompt's positions first)."""
        blocked = self.blocked.to(device)
        if blocked.shape[1] > k_len:
            raise KnowlocError(f"a knockout of {blocked.shape[1]} positions on {k_len} key positions")
        pad = torch.zeros(blocked.shape[0], k_len - blocked.shape[1], dtype=torch.bool, device=device)
        return torch.cat([blocked, pad], dim=1)

    def _renormalized(self, weights: torch.Tensor) -> torch.Tensor:
        """eager: the query row's probabilities of the blocked edges zeroed, the rest renormalized (= -inf scores
        before the softmax); rows that block nothing untouched."""
        batch, _, q_len, k_len = weights.shape
        q = self._row(q_len, batch)
        keep = ~self._mask(k_len, weights.device)[:, None, :]  # [batch, 1, k_len]
        row = weights[:, :, q, :]  # [batch, heads, k_len]
        kept = row * keep
        total = kept.sum(dim=-1, keepdim=True)
        new = kept / torch.where(total > 0, total, torch.ones_like(total))
        weights = weights.clone()
        weights[:, :, q, :] = torch.where(self.any.to(weights.device)[:, None, None], new, row)
        return weights

    def _sdpa_arguments(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """sdpa: the call's arguments with -inf added to the blocked edges of its (explicit) additive mask."""
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        call = dict(zip(names, args), **kwargs)
        query, key = call["query"], call["key"]
        batch, q_len, k_len = query.shape[0], query.shape[-2], key.shape[-2]
        q = self._row(q_len, batch)
        if bool(self.any.any()):
            mask = call.get("attn_mask")
            if mask is None:
                base = torch.zeros(q_len, k_len, dtype=query.dtype, device=query.device)
                if call.get("is_causal"):
                    base = base.masked_fill(torch.ones(q_len, k_len, dtype=torch.bool, device=query.device)
                                            .triu(1 + k_len - q_len), float("-inf"))
                mask = base[None, None]
            elif mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(~mask, float("-inf"))
            mask = mask.expand(batch, mask.shape[1], q_len, k_len).clone()  # [batch, 1 or heads, q_len, k_len]
            mask[:, :, q, :] = mask[:, :, q, :].masked_fill(self._mask(k_len, query.device)[:, None, :],
                                                            float("-inf"))
            call["attn_mask"], call["is_causal"] = mask, False
        return tuple(call.pop(name) for name in names[:3]), call


@contextmanager
def knocked_out(lm: LanguageModel, blocks: Sequence[Mapping[int, Sequence[int]]],
                query_position: int = -1) -> Iterator[None]:
    """Run the body with the attention edges from key positions ``blocks[r][layer]`` into ``query_position``
    blocked in every head of that layer, for batch row ``r`` of every forward (module docstring); the forwards'
    batch must have ``len(blocks)`` rows. A row that would block every key its query sees is refused (its
    attention would have nothing to attend to). Hooks removed on exit, also on an exception.

    Example:
        >>> ids = torch.tensor([prompt_ids] * 2, device=lm.device)
        >>> with knocked_out(lm, [{}, {4: [1, 2], 5: [1, 2]}]):  # row 1: subject tokens 1-2 blocked at layers 4-5
        ...     logits = lm.model(input_ids=ids).logits
    """
    implementation = lm.attention_implementation
    if implementation not in IMPLEMENTATIONS:
        raise KnowlocError(f"attention knockout needs eager or sdpa attention, but {lm.name!r} uses "
                           f"{implementation!r}")
    blocks = list(blocks)
    if not blocks:
        raise KnowlocError("a knockout needs at least one row")
    width = 1 + max((p for row in blocks for positions in row.values() for p in positions), default=0)
    layers = sorted({layer for row in blocks for layer in row})
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < lm.n_layers:
            raise KnowlocError(f"layer {layer!r} is out of range (model has {lm.n_layers})")
    heads = n_heads(lm)
    with ExitStack() as stack:
        for layer in layers:
            blocked = torch.zeros(len(blocks), width, dtype=torch.bool, device=lm.device)  # [rows, positions]
            for r, row in enumerate(blocks):
                for p in row.get(layer, ()):
                    if isinstance(p, bool) or not isinstance(p, int) or p < 0:
                        raise KnowlocError(f"a blocked position must be an integer >= 0, got {p!r}")
                    blocked[r, p] = True
            stack.enter_context(_knocked_out_layer(lm, layer, blocked, heads, query_position))
        yield


@contextmanager
def _knocked_out_layer(lm: LanguageModel, layer: int, blocked: torch.Tensor, heads: int,
                       query_position: int) -> Iterator[None]:
    def check(mode: _KnockedOut) -> None:
        if mode.hits != 1:
            raise KnowlocError(f"layer {layer}: expected one attention softmax or sdpa call, saw {mode.hits}")
    with mode_during_forward(lm.arch.attn(lm.blocks[layer]), lambda: _KnockedOut(blocked, heads, query_position),
                             check):
        yield


@dataclass(frozen=True)
class KnockoutResult:
    """One query's knockout: ``p_clean`` (the answer's first-token probability at the last position), ``drop``
    {edge set: [n_layers] relative drops, module docstring}, ``subject`` (first, last) token positions,
    ``window`` the layers blocked around each layer."""

    p_clean: float
    drop: dict[str, list[float]]
    subject: tuple[int, int]
    window: int

    def to_dict(self) -> dict:
        return {"p_clean": self.p_clean, "drop": self.drop, "subject": list(self.subject), "window": self.window}


def _prompt(lm: LanguageModel, prompt: str, subject: str, answer: str) -> tuple[list[int], tuple[int, int], int]:
    """(prompt ids, the subject's token span, the answer's first token); one line when the subject is absent."""
    enc = lm.encode(prompt, answer)
    span = subject_span(lm, prompt, subject)
    if span is None:
        raise KnowlocError(f"subject {subject!r} does not occur in {prompt!r}")
    return list(enc.prompt_ids), span, enc.target_ids[0]


@torch.no_grad()
def knockout_effects(lm: LanguageModel, prompt: str, subject: str, answer: str, *, window: int | None = None,
                     edge_sets: Sequence[str] = EDGE_SETS, max_rows: int = 64) -> KnockoutResult:
    """The relative drop of P(answer) at the last position when each edge set is blocked into it at the window of
    ``window`` layers (default :func:`default_window`) centred on each layer: ``len(edge_sets) x n_layers``
    knockouts, ``max_rows`` of them per forward.

    Example:
        >>> r = knockout_effects(lm, "The Eiffel Tower is located in", "Eiffel Tower", "Paris")
        >>> r.drop["subject"][12]  # blocking subject -> last at layers 10-14
    """
    ids, span, target = _prompt(lm, prompt, subject, answer)
    n_layers = lm.n_layers
    window = default_window(n_layers) if window is None else window
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise KnowlocError(f"the knockout window must be an integer >= 1, got {window!r}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise KnowlocError(f"max_rows must be an integer >= 1, got {max_rows!r}")
    sources = {e: source_positions(len(ids), span, e) for e in edge_sets}
    plans = [(e, layer) for e in edge_sets for layer in range(n_layers)]
    clean = _answer_probs(lm, ids, target, [{}])[0]
    probs: list[float] = []
    for start in range(0, len(plans), max_rows):
        chunk = plans[start:start + max_rows]
        blocks = [{b: sources[e] for b in window_layers(layer, window, n_layers)} if sources[e] else {}
                  for e, layer in chunk]
        probs += _answer_probs(lm, ids, target, blocks)
    drop = {e: [] for e in edge_sets}
    for (e, _), p in zip(plans, probs):
        drop[e].append((clean - p) / clean if clean > 0 else float("nan"))
    return KnockoutResult(clean, drop, span, window)


def _answer_probs(lm: LanguageModel, ids: list[int], target: int, blocks: list[dict]) -> list[float]:
    batch = torch.tensor([ids] * len(blocks), device=lm.device)
    with knocked_out(lm, blocks):
        logits = lm.model(input_ids=batch).logits[:, -1].float()  # [rows, vocab]
    return torch.softmax(logits, dim=-1)[:, target].cpu().tolist()  # results on the CPU


@torch.no_grad()
def extraction_hits(lm: LanguageModel, prompt: str, subject: str, answer: str) -> dict[str, list[bool]]:
    """Per layer, whether the answer's first token is the top token of the subject's last-token residual stream
    after the block (``subject_hidden``) and of the block's attention output at the last position
    (``attention_update``), each through the final norm and the unembedding (module docstring).

    Example:
        >>> extraction_hits(lm, "The Eiffel Tower is located in", "Eiffel Tower", "Paris")["attention_update"]
    """
    ids, (_, last_sub), target = _prompt(lm, prompt, subject, answer)
    hidden: dict[int, torch.Tensor] = {}
    update: dict[int, torch.Tensor] = {}

    def keep(store: dict, layer: int, position: int):
        def record(output) -> None:
            out = output[0] if isinstance(output, tuple) else output
            store[layer] = out[0, position].detach()
        return record

    with ExitStack() as stack:
        for layer, block in enumerate(lm.blocks):
            stack.enter_context(hook_module(block, "output", keep(hidden, layer, last_sub)))
            stack.enter_context(hook_module(lm.arch.attn(block), "output", keep(update, layer, len(ids) - 1)))
        lm.model(input_ids=torch.tensor([ids], device=lm.device))
    out = {}
    for site, store in (("subject_hidden", hidden), ("attention_update", update)):
        states = torch.stack([store[layer] for layer in range(lm.n_layers)])  # [n_layers, d_model]
        top = lm.logits(states[:, None]).float()[:, 0].argmax(dim=-1)  # [n_layers]
        out[site] = [bool(t == target) for t in top.tolist()]
    return out
