"""Re-running a fixed batch from a middle block: exact evaluation of edits to layers >= L.

An edit that changes only blocks >= L (a knowledge-neuron edit changes MLP value vectors) leaves every block
below L, and the input of block L, as they were. A batch that is measured under many such edits is therefore
run once in full while the input and the arguments (masks, rotary embeddings) of every block are recorded;
under an edit it restarts at block L from the recorded input with the recorded arguments, which is the
computation the full forward pass would do from there on (the recording and re-running of block calls:
:mod:`knowloc.models.block_calls`, shared with the attribution engine).
"""

from __future__ import annotations

import torch

from knowloc.models.block_calls import CapturedCalls, capture_block_calls
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

    @torch.no_grad()
    def run(self, start: int) -> torch.Tensor:
        """Output of the last block [batch, width, d_model] with blocks >= `start` re-run on the current weights."""
        hidden = self._inputs[start]  # [batch, width, d_model]
        for b in range(start, len(self._inputs)):
            hidden = self._calls[b].run(self.lm.blocks[b], hidden)
        return hidden

    def last_positions(self, hidden: torch.Tensor) -> torch.Tensor:
        """Each sequence's hidden state at its last token [batch, d_model] (`hidden` [batch, width, d_model])."""
        rows = torch.arange(len(self.lengths), device=hidden.device)  # [batch]
        return hidden[rows, torch.tensor(self.lengths, device=hidden.device) - 1]
