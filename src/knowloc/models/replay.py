"""Re-running a fixed batch from a middle block: exact evaluation of edits to layers >= L.

An edit that changes only blocks >= L (a knowledge-neuron edit changes MLP value vectors) leaves every block
below L, and the input of block L, as they were. A batch that is measured under many such edits is therefore
run once in full while the input and the arguments (masks, rotary embeddings) of every block are recorded;
under an edit it restarts at block L from the recorded input with the recorded arguments, which is the
computation the full forward pass would do from there on (the recording and re-running of block calls:
:mod:`knowloc.models.block_calls`, shared with the attribution engine).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from knowloc.models.block_calls import BlockCall, CapturedCalls, capture_block_calls
from knowloc.models.lm import LanguageModel
from knowloc.models.scoring import pad_right


class RecordedBatch:
    """A right-padded batch of token sequences with every block's recorded input and arguments."""

    def __init__(self, lm: LanguageModel, seqs: list[list[int]]):
        self.lm = lm
        self.lengths = [len(s) for s in seqs]
        self.ids, self.mask = pad_right(lm, seqs)  # [batch, width] each
        captured = self._record()
        self._inputs = captured.inputs  # block b's input [batch, width, d_model]
        self._calls = captured.calls
        self.output = captured.output  # the last block's output [batch, width, d_model]

    @torch.no_grad()
    def _record(self) -> CapturedCalls:
        with capture_block_calls(self.lm.blocks) as captured:
            # the backbone only (no unembedding of every position); no cache, so blocks can be re-run alone
            self.lm.model.base_model(input_ids=self.ids, attention_mask=self.mask, use_cache=False)
        return captured

    def run(self, start: int, *, grad: bool = False) -> torch.Tensor:
        """Output of the last block [batch, width, d_model] with blocks >= `start` re-run on the current weights;
        ``grad=True`` records the autograd graph of the re-run blocks (for optimizing an edit of them, e.g. a
        hook that adds a trainable tensor: :mod:`knowloc.editing.editors`)."""
        with torch.set_grad_enabled(grad):
            hidden = self._inputs[start]  # [batch, width, d_model]
            for b in range(start, len(self._inputs)):
                hidden = self._calls[b].run(self.lm.blocks[b], hidden)
        return hidden

    @torch.no_grad()
    def run_copies(self, starts: Sequence[int]) -> torch.Tensor:
        """Output of the last block [len(starts) * batch, width, d_model] for ``len(starts)`` copies of the batch
        stacked along the batch dimension, copy ``c`` in rows ``[c * batch, (c + 1) * batch)`` re-running the
        blocks >= ``starts[c]`` on the current weights (``starts`` non-decreasing).

        The copies join the pass at their own start block: block ``b`` runs on the copies with ``start <= b``,
        which are the leading ones, so a copy's rows never move and each copy runs exactly the blocks
        :meth:`run` would. Forward hooks that edit rows (e.g. per-copy activation edits) see
        ``[n_active * batch, ...]`` tensors, copy ``c`` at rows ``[c * batch, (c + 1) * batch)``. The recorded
        block arguments that carry the batch dimension (attention masks, per-row positions) are repeated to the
        active rows; one copy computes what :meth:`run` computes, up to the float rounding of the larger batch.
        """
        starts = [int(s) for s in starts]
        if not starts:
            raise ValueError("run_copies needs at least one copy")
        if any(b < a for a, b in zip(starts, starts[1:])) or not 0 <= starts[0] <= starts[-1] < len(self._inputs):
            raise ValueError(f"starts must be non-decreasing block indices, got {starts}")
        expanded: dict[tuple[int, int], object] = {}
        hidden = None  # [n_active * batch, width, d_model]
        active = 0
        for b in range(starts[0], len(self._inputs)):
            joining = sum(1 for s in starts if s == b)
            if joining:
                fresh = self._inputs[b].repeat(joining, 1, 1)  # [joining * batch, width, d_model]
                hidden = fresh if hidden is None else torch.cat([hidden, fresh])
                active += joining
            hidden = self._copied_call(self._calls[b], active, expanded).run(self.lm.blocks[b], hidden)
        return hidden

    def _copied_call(self, call: BlockCall, copies: int, memo: dict) -> BlockCall:
        """`call` with every tensor argument of batch size ``batch`` (ndim >= 2, dim 0) repeated ``copies`` times
        along dim 0; tensors of batch size 1 broadcast as they are, 1-d tensors (cache positions) have no batch
        dimension. `memo` keeps one repeated copy per (tensor, copies): blocks share their mask."""
        if copies == 1:
            return call
        batch = len(self.lengths)

        def expand(v):
            if isinstance(v, torch.Tensor):
                if v.ndim < 2 or v.shape[0] != batch or batch == 1:
                    return v
                key = (id(v), copies)
                if key not in memo:
                    memo[key] = (v, v.repeat(copies, *([1] * (v.ndim - 1))))  # keeps v alive: ids stay unique
                return memo[key][1]
            if isinstance(v, tuple):
                return tuple(expand(x) for x in v)
            if isinstance(v, list):
                return [expand(x) for x in v]
            if isinstance(v, dict):
                return {k: expand(x) for k, x in v.items()}
            return v

        return BlockCall(call.positional, tuple(expand(a) for a in call.args),
                         {k: expand(v) for k, v in call.kwargs.items()})

    def last_positions(self, hidden: torch.Tensor) -> torch.Tensor:
        """Each sequence's hidden state at its last token [batch, d_model] (`hidden` [batch, width, d_model])."""
        rows = torch.arange(len(self.lengths), device=hidden.device)  # [batch]
        return hidden[rows, torch.tensor(self.lengths, device=hidden.device) - 1]
