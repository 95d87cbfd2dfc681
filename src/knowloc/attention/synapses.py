"""Knowledge synapses (Chen et al., ICLR 2025, *Knowledge Localization: Mission Not Accomplished? Enter Query
Localization!*): the high-attention entries through which the attention module selects which knowledge neurons
fire (the "dynamic KN selection" half of the Query Localization assumption).

An *entry* is a triple ``(layer, head, position)``: the attention probability that the LAST prompt position
(where the neurons are read) puts on key ``position`` in query head ``head`` of block ``layer``. See
docs/attention.md for the definitions.

Only `attention_rows` and `subject_token_positions` touch the model/tokenizer; the rest is pure.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from contextlib import ExitStack

import torch

from knowloc.errors import KnowlocError
from knowloc.models.hooks import hook_module
from knowloc.models.lm import LanguageModel

Entry = tuple[int, int, int]  # (layer, head, key position)


@torch.no_grad()
def attention_rows(lm: LanguageModel, prompt: str) -> torch.Tensor:
    """Attention probabilities of the last prompt position over every prompt position.

    Returns a float32 CPU tensor ``[n_layers, n_heads, n_positions]`` (``n_positions`` = prompt length in tokens,
    BOS included where the tokenizer adds one): entry ``[l, h, p]`` is the weight query head ``h`` of block
    ``l`` puts on key position ``p`` when reading at position ``n_positions - 1``. Captured from the weights the
    (eager) attention modules return, so it also reflects an active `scale_attention`.
    """
    encoding = lm.encode(prompt)
    ids = torch.tensor([encoding.prompt_ids], device=lm.device)
    rows: dict[int, torch.Tensor] = {}

    def recorder(layer: int):
        def record(output) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if not isinstance(weights, torch.Tensor):
                raise KnowlocError(
                    f"layer {layer}'s attention returned no weights; load the model with attn_implementation='eager'")
            rows[layer] = weights[0, :, -1, :].detach().float().cpu()
        return record

    with ExitStack() as stack:
        for layer, block in enumerate(lm.blocks):
            stack.enter_context(hook_module(lm.arch.attn(block), "output", recorder(layer)))
        lm.model(input_ids=ids)
    return torch.stack([rows[layer] for layer in range(lm.n_layers)])


def knowledge_synapses(rows: torch.Tensor, k: int = 3, include_first: bool = False) -> list[Entry]:
    """Top-``k`` key positions of every (layer, head) row of `attention_rows` output: the knowledge synapses.

    Position 0 (the first token, usually an attention sink) is skipped unless ``include_first``. Ties go to the
    lower position. Returned ordered by layer, head, then decreasing weight; fewer than ``k`` per row only when
    the row has fewer eligible positions.
    """
    if not isinstance(rows, torch.Tensor) or rows.dim() != 3:
        raise KnowlocError("rows must be a [n_layers, n_heads, n_positions] tensor (see attention_rows)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise KnowlocError(f"k must be a positive integer, not {k!r}")
    n_layers, n_heads, n_positions = rows.shape
    first = 0 if include_first else 1
    if n_positions <= first:
        return []
    eligible = rows[:, :, first:].double()
    order = torch.sort(eligible, dim=-1, descending=True, stable=True).indices[:, :, :k]
    return [(layer, head, int(pos) + first)
            for layer in range(n_layers) for head in range(n_heads) for pos in order[layer, head].tolist()]


def subject_token_positions(lm: LanguageModel, prompt: str, char_span: tuple[int, int]) -> list[int]:
    """Token positions (in ``lm.encode(prompt).prompt_ids``) whose characters overlap ``char_span``.

    ``char_span = (start, end)`` are character offsets of the subject in ``prompt`` (``Query.subject_span``).
    Uses the fast tokenizer's offset mapping; special tokens such as an added BOS (offsets ``(0, 0)``) never
    count. A token with a leading space (``" France"``) counts when its non-space characters overlap.
    """
    text = prompt.rstrip()
    try:
        start, end = (int(x) for x in char_span)
    except (TypeError, ValueError):
        raise KnowlocError(f"char_span must be a (start, end) pair, not {char_span!r}") from None
    if not 0 <= start < end <= len(text):
        raise KnowlocError(f"char_span {(start, end)} is not a non-empty span of the {len(text)}-character prompt")
    try:
        encoded = lm.tokenizer(text, return_offsets_mapping=True)
    except NotImplementedError:
        encoded = None
    offsets = None if encoded is None else encoded.get("offset_mapping")
    if offsets is None:
        raise KnowlocError("the tokenizer gives no offset mapping (a fast tokenizer is needed for subject positions)")
    ids = list(encoded["input_ids"])
    if tuple(ids) != lm.encode(prompt).prompt_ids:
        raise KnowlocError("tokenizing with offsets gave different ids than LanguageModel.encode")
    special = set(lm.tokenizer.all_special_ids)
    positions = [pos for pos, ((s, e), tok) in enumerate(zip(offsets, ids))
                 if e > s and tok not in special and s < end and e > start
                 and text[max(s, start):min(e, end)].strip()]
    if not positions:
        raise KnowlocError(f"no token of the prompt overlaps characters {start}..{end} ({text[start:end]!r})")
    return positions


class NotEnoughControls(KnowlocError):
    """A layer has fewer non-subject entries than the matched irrelevant control needs (a short prompt whose
    subject takes most positions)."""


def subject_related(synapses: Iterable[Entry], subject_positions: Iterable[int]) -> list[Entry]:
    """The synapses whose key position is a subject token position, in input order."""
    subject = {int(p) for p in subject_positions}
    return [e for e in (_entry(e) for e in synapses) if e[2] in subject]


def related_and_irrelevant(synapses: Iterable[Entry], subject_positions: Iterable[int], seed: int, *,
                           n_positions: int | None = None,
                           include_first: bool = False) -> tuple[list[Entry], list[Entry]]:
    """Split knowledge synapses into the subject-related ones and draw a matched irrelevant control.

    related: the synapses whose key position is a subject token position (input order kept).
    irrelevant: for each layer, as many entries as that layer has related synapses (so the same number in
    total), drawn without replacement with ``random.Random(seed)`` from that layer's heads (every head that
    appears in ``synapses`` for the layer) at non-subject positions ``< n_positions``, position 0 excluded unless
    ``include_first``. They never overlap the related ones. ``n_positions`` defaults to one past the largest
    position in ``synapses``/``subject_positions``; pass ``rows.shape[-1]`` to use the whole prompt.
    Returned sorted.

    Raises:
        NotEnoughControls: a layer has fewer non-subject entries than related ones (no matched control).
    """
    entries = [_entry(e) for e in synapses]
    subject = {int(p) for p in subject_positions}
    if not subject:
        raise KnowlocError("no subject positions given")
    if min(subject) < 0:
        raise KnowlocError("subject positions must be >= 0")
    if n_positions is None:
        n_positions = 1 + max([p for _, _, p in entries] + list(subject))
    elif isinstance(n_positions, bool) or not isinstance(n_positions, int) or n_positions < 1:
        raise KnowlocError(f"n_positions must be a positive integer, not {n_positions!r}")
    if any(p >= n_positions for _, _, p in entries):
        raise KnowlocError(f"a synapse position is >= n_positions={n_positions}")

    related = subject_related(entries, subject)
    heads_by_layer: dict[int, set[int]] = {}
    for layer, head, _ in entries:
        heads_by_layer.setdefault(layer, set()).add(head)
    need: dict[int, int] = {}
    for layer, _, _ in related:
        need[layer] = need.get(layer, 0) + 1

    first = 0 if include_first else 1
    free_positions = [p for p in range(first, n_positions) if p not in subject]
    taken = set(related)
    rng = random.Random(seed)
    irrelevant: list[Entry] = []
    for layer in sorted(need):
        pool = [(layer, head, p) for head in sorted(heads_by_layer[layer]) for p in free_positions
                if (layer, head, p) not in taken]
        if len(pool) < need[layer]:
            raise NotEnoughControls(f"layer {layer} has only {len(pool)} non-subject entries to draw "
                               f"{need[layer]} irrelevant ones from")
        irrelevant.extend(rng.sample(pool, need[layer]))
    return related, sorted(irrelevant)


def _entry(entry: Sequence[int]) -> Entry:
    try:
        layer, head, pos = (int(x) for x in entry)
    except (TypeError, ValueError):
        raise KnowlocError(f"an entry must be (layer, head, position), not {entry!r}") from None
    if min(layer, head, pos) < 0:
        raise KnowlocError(f"entry {(layer, head, pos)} has a negative index")
    return layer, head, pos
