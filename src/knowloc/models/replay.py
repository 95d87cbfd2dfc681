"""Re-running a fixed batch from a middle block: exact evaluation of edits to layers >= L.

An edit that changes only blocks >= L (a knowledge-neuron edit changes MLP value vectors) leaves every block
below L, and the input of block L, as they were. A batch that is measured under many such edits is therefore
run once in full while the input and the arguments (masks, rotary embeddings) of every block are recorded;
under an edit it restarts at block L from the recorded input with the recorded arguments, which is the
computation the full forward pass would do from there on.
"""

from __future__ import annotations

import torch

from knowloc.models.lm import LanguageModel
from knowloc.models.scoring import pad_right


class RecordedBatch:
    """A right-padded batch of token sequences with every block's recorded input and arguments."""

    def __init__(self, lm: LanguageModel, seqs: list[list[int]]):
        self.lm = lm
        self.lengths = [len(s) for s in seqs]
        self.ids, self.mask = pad_right(lm, seqs)
        blocks = lm.blocks
        self._inputs: list[torch.Tensor | None] = [None] * len(blocks)
        self._args: list[tuple[tuple, dict] | None] = [None] * len(blocks)
        self.output = self._record(blocks)

    @torch.no_grad()
    def _record(self, blocks) -> torch.Tensor:
        last: list[torch.Tensor] = []

        def capture(_module, args, kwargs, i):
            if args:
                self._inputs[i], self._args[i] = args[0], ((None, *args[1:]), kwargs)
            else:
                self._inputs[i] = kwargs["hidden_states"]
                self._args[i] = ((), {k: v for k, v in kwargs.items() if k != "hidden_states"})

        handles = [block.register_forward_pre_hook(lambda m, a, k, i=i: capture(m, a, k, i), with_kwargs=True)
                   for i, block in enumerate(blocks)]
        handles.append(blocks[-1].register_forward_hook(lambda _m, _a, out: last.append(_first(out))))
        try:
            # the backbone only (no unembedding of every position); no cache, so blocks can be re-run alone
            self.lm.model.base_model(input_ids=self.ids, attention_mask=self.mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        return last[0]

    @torch.no_grad()
    def run(self, start: int) -> torch.Tensor:
        """Output of the last block [batch, width, d] with blocks >= `start` re-run on the current weights."""
        hidden = self._inputs[start]
        for b in range(start, len(self._inputs)):
            args, kwargs = self._args[b]
            if args:
                out = self.lm.blocks[b](hidden, *args[1:], **kwargs)
            else:
                out = self.lm.blocks[b](hidden_states=hidden, **kwargs)
            hidden = _first(out)
        return hidden

    def last_positions(self, hidden: torch.Tensor) -> torch.Tensor:
        """Each sequence's hidden state at its last token [batch, d]."""
        rows = torch.arange(len(self.lengths), device=hidden.device)
        return hidden[rows, torch.tensor(self.lengths, device=hidden.device) - 1]


def _first(out):
    return out[0] if isinstance(out, tuple) else out
