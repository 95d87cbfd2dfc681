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
    """The unpatched query's new positions, computed by the first chunk's clean row and read by every chunk:
    `hidden[b]` the residual stream entering block b ([1, n_new, d_model]; the last entry is the last block's
    output), `act[b]` the neuron activations at the last prompt position ([n_neurons]), `mlp_residual[b]` r^b
    ([d_model], float32; None at the pre-activation site; see `staircase_gradients`), `value` the clean
    objective."""

    hidden: list[torch.Tensor]
    act: list[torch.Tensor]
    mlp_residual: list[torch.Tensor | None]
    value: float


@dataclass
class StaircaseResult:
    grads: torch.Tensor  # dF/dx of each row [rows, n_neurons], float32
    clean_grads: torch.Tensor | None  # dF/da^l at the clean point for each clean layer [n_clean, n_neurons], float32
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

    `hidden` [rows so far, n_new, d_model] is the batch (None until the first row joins): row 0 the clean row
    in the first chunk, then the rows in the order they joined. `leaves` [rows joining at one block,
    n_neurons] are the patched activations (rows listed in `order`) and `clean_at` the clean row's zero leaves
    [n_neurons] per clean layer; the backward pass differentiates with respect to both."""

    def __init__(self, lm: LanguageModel, prep: Prepared, base: torch.Tensor, alpha: torch.Tensor,
                 clean_layers: list[int] | None, clean: CleanRun | None):
        self.lm, self.prep = lm, prep
        self.base, self.alpha = base, alpha  # [rows, n_neurons], [rows, 1] float32
        self.with_clean = clean_layers is not None
        self.after_block = lm.site == "neuron"  # rows join after their block (else they run it)
        if self.with_clean:  # filled by the clean row, block by block
            n = lm.n_layers
            self.clean_hidden: list = [prep.embedded] + [None] * n  # each [1, n_new, d_model]
            self.clean_act: list = [None] * n  # each [n_neurons]
            self.mlp_residual: list = [None] * n  # each [d_model] float32
        else:
            self.clean_hidden, self.clean_act, self.mlp_residual = clean.hidden, clean.act, clean.mlp_residual
        self.clean_at = {layer: torch.zeros(lm.n_neurons, device=lm.device, dtype=lm.dtype, requires_grad=True)
                         for layer in clean_layers or ()}  # each [n_neurons]
        self.leaves: list[torch.Tensor] = []  # each [rows joining at one block, n_neurons]
        self.order: list[int] = []  # the row of each leaf row, in leaf order
        self.hidden = self.clean_hidden[0] if self.with_clean else None  # [rows so far, n_new, d_model]

    def block(self, b: int, rows: list[int]) -> None:
        """Advance the batch through block b; `rows` are the rows patched into layer b."""
        self._run_block(b, [] if self.after_block else rows)
        if self.with_clean:
            self._record_clean(b)
        if rows and self.after_block:
            self._join_after(b, rows)

    def _run_block(self, b: int, running: list[int]) -> None:
        """Block b on the batch, `running` rows (pre-activation site) joining it first with their activation
        patched in; the clean row's activation is recorded and gets its zero leaf."""
        lm = self.lm
        offset = 0 if self.hidden is None else self.hidden.shape[0]  # the running rows' first index
        if running:
            fresh = self.clean_hidden[b].expand(len(running), -1, -1)  # [len(running), n_new, d_model]
            self.hidden = fresh if self.hidden is None else torch.cat([self.hidden, fresh])
        delta = self.clean_at.get(b)  # [n_neurons] or None
        if self.hidden is None:  # no row has joined yet (later chunk, neuron site)
            return
        if running or self.with_clean:
            module, where = lm.site_module(b)
            with hook_module(module, where, partial(self._patch, b, running, offset, delta)):
                self.hidden = self.prep.call_block(lm, b, self.hidden)
        else:
            self.hidden = self.prep.call_block(lm, b, self.hidden)

    def _patch(self, b: int, running: list[int], offset: int, delta: torch.Tensor | None,
               act: torch.Tensor) -> torch.Tensor | None:
        """The site activation of block b [batch rows, n_new, n_neurons] as the rows need it (None: as is)."""
        if self.with_clean:
            self.clean_act[b] = act[0, 0].detach().clone()  # [n_neurons]
        if running:  # last prompt position <- x; later (target) positions keep their own values
            leaf = self._leaf(b, running, act.dtype)  # [len(running), n_neurons]
            act = torch.cat([act[:offset], torch.cat([leaf.unsqueeze(1), act[offset:, 1:]], dim=1)])
        elif delta is None:
            return None
        else:
            act = act.clone()
        if delta is not None:  # clean row: + 0, so dF/d(delta) = dF/da^b with later layers free
            act[0, 0] += delta
        return act

    def _record_clean(self, b: int) -> None:
        """Keep the clean row's output of block b, and r^b at the neuron site; +0 leaves do not change it."""
        self.clean_hidden[b + 1] = self.hidden[:1].detach().clone()  # [1, n_new, d_model]
        if self.after_block:
            with torch.no_grad():
                self.mlp_residual[b] = self.clean_hidden[b + 1][0, 0].float() - _mlp_term(
                    self.lm, b, self.clean_act[b].unsqueeze(0))[0].float()  # [d_model]

    def _join_after(self, b: int, rows: list[int]) -> None:
        """The rows patched into layer b join with block b's clean output, its MLP term swapped (neuron site)."""
        lm = self.lm
        leaf = self._leaf(b, rows, lm.dtype)  # [len(rows), n_neurons]
        first = (self.mlp_residual[b] + _mlp_term(lm, b, leaf).float()).to(lm.dtype)  # [len(rows), d_model]
        later = self.clean_hidden[b + 1][:, 1:].expand(len(rows), -1, -1)  # [len(rows), n_new - 1, d_model]
        joined = torch.cat([first.unsqueeze(1), later], dim=1)  # [len(rows), n_new, d_model]
        self.hidden = joined if self.hidden is None else torch.cat([self.hidden, joined])

    def _leaf(self, b: int, rows: list[int], dtype: torch.dtype) -> torch.Tensor:
        """The rows' integration points x = base + alpha (a^b - base) [len(rows), n_neurons] as a new leaf."""
        index = torch.tensor(rows, device=self.base.device)  # [len(rows)]
        row_base, row_alpha = self.base[index], self.alpha[index]  # [len(rows), n_neurons], [len(rows), 1]
        leaf = (row_base + row_alpha * (self.clean_act[b].float() - row_base)).to(dtype).requires_grad_(True)
        self.leaves.append(leaf)
        self.order.extend(rows)
        return leaf

    def backward(self, objective_kind: str) -> tuple[torch.Tensor, ...]:
        """dF/d(each leaf) ([len(rows), n_neurons] each), then dF/d(each clean zero leaf) ([n_neurons] each),
        from the hand-written unembedding gradient; the clean objective F goes to `self.value`."""
        grad_hidden, self.value = unembedding_gradient(self.lm, self.hidden.detach(), self.prep.target,
                                                       objective_kind)  # [rows, n_new, d_model]
        inputs = self.leaves + list(self.clean_at.values())
        return torch.autograd.grad(self.hidden, inputs, grad_outputs=grad_hidden) if inputs else ()

    def result(self, n_rows: int, grads: tuple[torch.Tensor, ...]) -> StaircaseResult:
        lm, n_leaves = self.lm, len(self.leaves)
        out = torch.empty(n_rows, lm.n_neurons, device=lm.device, dtype=torch.float32)  # [rows, n_neurons]
        if self.leaves:
            out[torch.tensor(self.order, device=lm.device)] = torch.cat(grads[:n_leaves]).float()
        clean_grads = torch.stack(grads[n_leaves:]).float() if self.clean_at else None  # [n_clean, n_neurons]
        run = CleanRun(self.clean_hidden, self.clean_act, self.mlp_residual, self.value) if self.with_clean else None
        return StaircaseResult(out, clean_grads, run)


def _mlp_term(lm: LanguageModel, b: int, act: torch.Tensor) -> torch.Tensor:
    """What block b adds to the residual stream for neuron activations `act` [rows, n_neurons]:
    tail(W_out act) [rows, d_model] (see ArchSpec.mlp_tail)."""
    block = lm.blocks[b]
    out = lm.arch.mlp_out(block)(act)  # [rows, d_model]
    return lm.arch.mlp_tail(block)(out) if lm.arch.mlp_tail is not None else out
