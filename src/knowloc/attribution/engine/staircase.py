"""The staircase: one batch of integration points that grows block by block, and one backward pass.

A row is one integration point x_r, patched into layer l = row_layers[r] at the last prompt position. Nothing
below l differs from the clean run, so the row joins the batch at block l: at the neuron site right after it
(with block l's clean output, its MLP term swapped), at the pre-activation site just before it (it runs
block l itself). The batch therefore grows like a staircase from block to block, and one backward pass from
the unembedding yields every row's gradient with respect to its own patched activation.

Four cases, from two choices: the first chunk of a query carries the unpatched clean row (row 0, entering at
block 0) that computes the clean run every row starts from, later chunks read it (`CleanRun`); and the site
decides whether rows join after their block (neuron) or run it (pre-activation). `_Staircase` holds one
chunk's batch while it is built; each block is one call of `_Staircase.block`.

One staircase carries Q queries of one shape (`Prepared`) at once. They share the row grid, so every query has
the same rows, joining at the same blocks: the batch is laid out query-major, [Q, rows so far, n_new, d_model],
and flattened to [Q * rows, n_new, d_model] for each block call. Each query has its own clean row (its row 0),
baselines, patched activations and gradients; a block is called once for all Q queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from knowloc.attribution.engine.prepare import Prepared
from knowloc.attribution.engine.unembedding import unembedding_gradient
from knowloc.models.hooks import hook_module
from knowloc.models.lm import LanguageModel


@dataclass(frozen=True)
class CleanRun:
    """The unpatched queries' new positions, computed by the first chunk's clean rows and read by every chunk:
    `hidden[b]` the residual stream entering block b ([Q, n_new, d_model]; the last entry is the last block's
    output), `act[b]` the neuron activations at the last prompt position ([Q, n_neurons]), `mlp_residual[b]` r^b
    ([Q, d_model], float32; None at the pre-activation site; see `staircase_gradients`), `values` the clean
    objective of each query."""

    hidden: list[torch.Tensor]
    act: list[torch.Tensor]
    mlp_residual: list[torch.Tensor | None]
    values: list[float]


@dataclass
class StaircaseResult:
    grads: torch.Tensor  # dF/dx of each query's rows [Q, rows, n_neurons], float32
    clean_grads: torch.Tensor | None  # dF/da^l at the clean point per clean layer [Q, n_clean, n_neurons], float32
    clean: CleanRun | None  # the clean rows' run (first chunk only)


def staircase_gradients(lm: LanguageModel, prep: Prepared, row_layers: list[int], base: torch.Tensor,
                        alpha: torch.Tensor, objective_kind: str, clean_layers: list[int] | None = None,
                        clean: CleanRun | None = None) -> StaircaseResult:
    """Gradients dF_q/dx for the integration points x_{q,r} = base_{q,r} + alpha_r (a_q^l - base_{q,r}) of the Q
    queries of `prep` (base [Q, rows, n_neurons], alpha [rows, 1], float32), row r of every query patched into
    layer l = row_layers[r] at the last prompt position; all rows of all queries in one staircase batch.

    At the neuron site (the input of the MLP output projection W_out) a row for layer l joins the batch after
    block l: block l's output there is the clean one with the MLP term swapped, r^l + tail(W_out x) with
    r^l = h^{l+1} - tail(W_out a^l) (tail: the identity, or Gemma-2/3's post-feedforward norm). Its attention and
    first projections would only repeat the clean row's. At the pre-activation site the row runs block l itself.

    With `clean_layers` (the first chunk), one unpatched clean row per query enters at block 0 and stays that
    query's row 0: it computes the clean residual stream, activations and r^l that every row of the query starts
    from (returned as `StaircaseResult.clean`, which later chunks pass back as `clean`), the clean objective value,
    and, through a zero additive leaf at each clean layer, dF/da^l at the clean point (alpha = 1) for all of them
    at once, which every baseline shares."""
    if (clean_layers is not None) == (clean is not None):
        raise ValueError("pass clean_layers (first chunk) or the first chunk's clean run, not both or neither")
    stair = _Staircase(lm, prep, base, alpha, clean_layers, clean)
    by_layer: dict[int, list[int]] = {}  # layer -> the rows patched into it, in row order
    for row, layer in enumerate(row_layers):
        by_layer.setdefault(layer, []).append(row)
    with torch.enable_grad():
        for b in range(0 if stair.with_clean else min(by_layer), lm.n_layers):
            stair.block(b, by_layer.get(b, []))
        grads = stair.backward(objective_kind)
    return stair.result(len(row_layers), grads)


class _Staircase:
    """One chunk's staircase batch while it is built, block by block.

    `hidden` [Q, rows so far, n_new, d_model] is the batch (None until the first row joins): per query, row 0 its
    clean row in the first chunk, then the rows in the order they joined (the same for every query). `leaves`
    [Q, rows joining at one block, n_neurons] are the patched activations (rows listed in `order`) and
    `clean_at` the clean rows' zero leaves [Q, n_neurons] per clean layer; the backward pass differentiates with
    respect to both."""

    def __init__(self, lm: LanguageModel, prep: Prepared, base: torch.Tensor, alpha: torch.Tensor,
                 clean_layers: list[int] | None, clean: CleanRun | None):
        self.lm, self.prep = lm, prep
        self.base, self.alpha = base, alpha  # [Q, rows, n_neurons], [rows, 1] float32
        self.n_query = prep.queries
        self.with_clean = clean_layers is not None
        self.after_block = lm.site == "neuron"  # rows join after their block (else they run it)
        if self.with_clean:  # filled by the clean rows, block by block
            n = lm.n_layers
            self.clean_hidden: list = [prep.embedded] + [None] * n  # each [Q, n_new, d_model]
            self.clean_act: list = [None] * n  # each [Q, n_neurons]
            self.mlp_residual: list = [None] * n  # each [Q, d_model] float32
        else:
            self.clean_hidden, self.clean_act, self.mlp_residual = clean.hidden, clean.act, clean.mlp_residual
        self.clean_at = {layer: torch.zeros(self.n_query, lm.n_neurons, device=lm.device, dtype=lm.dtype,
                                            requires_grad=True)
                         for layer in clean_layers or ()}  # each [Q, n_neurons]
        self.leaves: list[torch.Tensor] = []  # each [Q, rows joining at one block, n_neurons]
        self.order: list[int] = []  # the row of each leaf row, in leaf order
        self.hidden = self.clean_hidden[0].unsqueeze(1) if self.with_clean else None  # [Q, rows, n_new, d_model]

    def block(self, b: int, rows: list[int]) -> None:
        """Advance the batch through block b; `rows` are the rows patched into layer b."""
        self._run_block(b, [] if self.after_block else rows)
        if self.with_clean:
            self._record_clean(b)
        if rows and self.after_block:
            self._join_after(b, rows)

    def _run_block(self, b: int, running: list[int]) -> None:
        """Block b on the batch, `running` rows (pre-activation site) joining it first with their activation
        patched in; the clean rows' activations are recorded and get their zero leaves."""
        lm = self.lm
        offset = 0 if self.hidden is None else self.hidden.shape[1]  # the running rows' first index
        if running:
            fresh = self.clean_hidden[b].unsqueeze(1).expand(-1, len(running), -1, -1)
            # [Q, len(running), n_new, d_model]
            self.hidden = fresh if self.hidden is None else torch.cat([self.hidden, fresh], dim=1)
        delta = self.clean_at.get(b)  # [Q, n_neurons] or None
        if self.hidden is None:  # no row has joined yet (later chunk, neuron site)
            return
        flat = self.hidden.flatten(0, 1)  # [Q * rows, n_new, d_model]
        if running or self.with_clean:
            module, where = lm.site_module(b)
            with hook_module(module, where, partial(self._patch, b, running, offset, delta)):
                flat = self.prep.call_block(lm, b, flat)
        else:
            flat = self.prep.call_block(lm, b, flat)
        self.hidden = flat.unflatten(0, (self.n_query, -1))  # [Q, rows, n_new, d_model]

    def _patch(self, b: int, running: list[int], offset: int, delta: torch.Tensor | None,
               act: torch.Tensor) -> torch.Tensor | None:
        """The site activation of block b [Q * rows, n_new, n_neurons] as the rows need it (None: as is)."""
        act = act.unflatten(0, (self.n_query, -1))  # [Q, rows, n_new, n_neurons]
        if self.with_clean:
            self.clean_act[b] = act[:, 0, 0].detach().clone()  # [Q, n_neurons]
        if running:  # last prompt position <- x; later (target) positions keep their own values
            leaf = self._leaf(b, running, act.dtype)  # [Q, len(running), n_neurons]
            act = torch.cat([act[:, :offset], torch.cat([leaf.unsqueeze(2), act[:, offset:, 1:]], dim=2)], dim=1)
        elif delta is None:
            return None
        else:
            act = act.clone()
        if delta is not None:  # clean rows: + 0, so dF/d(delta) = dF/da^b with later layers free
            act[:, 0, 0] += delta
        return act.flatten(0, 1)  # [Q * rows, n_new, n_neurons]

    def _record_clean(self, b: int) -> None:
        """Keep the clean rows' output of block b, and r^b at the neuron site; +0 leaves do not change it."""
        self.clean_hidden[b + 1] = self.hidden[:, 0].detach().clone()  # [Q, n_new, d_model]
        if self.after_block:
            with torch.no_grad():
                self.mlp_residual[b] = self.clean_hidden[b + 1][:, 0].float() - _mlp_term(
                    self.lm, b, self.clean_act[b]).float()  # [Q, d_model]

    def _join_after(self, b: int, rows: list[int]) -> None:
        """The rows patched into layer b join with block b's clean output, its MLP term swapped (neuron site)."""
        lm = self.lm
        leaf = self._leaf(b, rows, lm.dtype)  # [Q, len(rows), n_neurons]
        first = (self.mlp_residual[b].unsqueeze(1) + _mlp_term(lm, b, leaf).float()).to(lm.dtype)
        # [Q, len(rows), d_model]
        later = self.clean_hidden[b + 1][:, 1:].unsqueeze(1).expand(-1, len(rows), -1, -1)
        # [Q, len(rows), n_new - 1, d_model]
        joined = torch.cat([first.unsqueeze(2), later], dim=2)  # [Q, len(rows), n_new, d_model]
        self.hidden = joined if self.hidden is None else torch.cat([self.hidden, joined], dim=1)

    def _leaf(self, b: int, rows: list[int], dtype: torch.dtype) -> torch.Tensor:
        """The rows' integration points x = base + alpha (a^b - base) [Q, len(rows), n_neurons] as a new leaf."""
        index = torch.tensor(rows, device=self.base.device)  # [len(rows)]
        row_base, row_alpha = self.base[:, index], self.alpha[index]  # [Q, len(rows), n_neurons], [len(rows), 1]
        clean_act = self.clean_act[b].float().unsqueeze(1)  # [Q, 1, n_neurons]
        leaf = (row_base + row_alpha * (clean_act - row_base)).to(dtype).requires_grad_(True)
        self.leaves.append(leaf)
        self.order.extend(rows)
        return leaf

    def backward(self, objective_kind: str) -> tuple[torch.Tensor, ...]:
        """dF/d(each leaf) ([Q, len(rows), n_neurons] each), then dF/d(each clean zero leaf) ([Q, n_neurons]
        each), from the hand-written unembedding gradient; each query's clean objective F goes to `self.values`."""
        flat = self.hidden.flatten(0, 1)  # [Q * rows, n_new, d_model]
        grad_hidden, self.values = unembedding_gradient(self.lm, flat.detach(), self.prep.targets,
                                                        objective_kind)  # [Q * rows, n_new, d_model]
        inputs = self.leaves + list(self.clean_at.values())
        return torch.autograd.grad(flat, inputs, grad_outputs=grad_hidden) if inputs else ()

    def result(self, n_rows: int, grads: tuple[torch.Tensor, ...]) -> StaircaseResult:
        lm, n_leaves = self.lm, len(self.leaves)
        out = torch.empty(self.n_query, n_rows, lm.n_neurons, device=lm.device, dtype=torch.float32)
        # [Q, rows, n_neurons]
        if self.leaves:
            out[:, torch.tensor(self.order, device=lm.device)] = torch.cat(grads[:n_leaves], dim=1).float()
        clean_grads = torch.stack(grads[n_leaves:], dim=1).float() if self.clean_at else None  # [Q, n_clean, n_neurons]
        run = CleanRun(self.clean_hidden, self.clean_act, self.mlp_residual, self.values) if self.with_clean else None
        return StaircaseResult(out, clean_grads, run)


def _mlp_term(lm: LanguageModel, b: int, act: torch.Tensor) -> torch.Tensor:
    """What block b adds to the residual stream for neuron activations `act` [..., n_neurons]:
    tail(W_out act) [..., d_model] (see ArchSpec.mlp_tail)."""
    block = lm.blocks[b]
    out = lm.arch.mlp_out(block)(act)  # [..., d_model]
    return lm.arch.mlp_tail(block)(out) if lm.arch.mlp_tail is not None else out
