"""Recording the calls a model makes to its blocks, and re-running a block with a recorded call.

A block's arguments besides the hidden states (attention masks, rotary embeddings, cache positions,
sliding-window layouts) depend only on the positions of the batch, not on its values. Recording them from one
real forward pass and passing them back lets a block be run alone on other hidden states with exactly the
computation the model would do, with no per-family code. Two users: :class:`knowloc.models.replay.RecordedBatch`
(re-running edited layers) and the attribution engine (re-running blocks on its staircase rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

_CACHE_SLOT = object()  # stands for the cache argument in a recorded call


@dataclass(frozen=True)
class BlockCall:
    """One block's recorded arguments without the hidden states.

    `positional`: the hidden states came as the first positional argument (else as ``hidden_states=``).
    `args` holds the positional arguments after them, `kwargs` the keyword arguments; a cache object the
    model passed is kept as a placeholder, filled in by :meth:`inputs`."""

    positional: bool
    args: tuple
    kwargs: dict

    @classmethod
    def record(cls, args: tuple, kwargs: dict, cache: object | None = None) -> BlockCall:
        """The call a forward pre-hook saw (`args`, `kwargs`), with `cache` (if given) as a placeholder."""
        slot = (lambda v: _CACHE_SLOT if v is cache else v) if cache is not None else (lambda v: v)
        if args:
            return cls(True, tuple(slot(a) for a in args[1:]), {k: slot(v) for k, v in kwargs.items()})
        return cls(False, (), {k: slot(v) for k, v in kwargs.items() if k != "hidden_states"})

    def inputs(self, hidden: torch.Tensor, cache: object | None = None) -> tuple[tuple, dict]:
        """(args, kwargs) for the block: the recorded call with `hidden` [batch, seq, d_model] as the hidden
        states and `cache` in place of the recorded cache."""
        fill = lambda v: cache if v is _CACHE_SLOT else v  # noqa: E731
        if self.positional:
            return (hidden, *(fill(a) for a in self.args)), {k: fill(v) for k, v in self.kwargs.items()}
        return (), {**{k: fill(v) for k, v in self.kwargs.items()}, "hidden_states": hidden}

    def run(self, block: nn.Module, hidden: torch.Tensor, cache: object | None = None) -> torch.Tensor:
        """The block's output hidden states [batch, seq, d_model] for input `hidden` [batch, seq, d_model]."""
        args, kwargs = self.inputs(hidden, cache)
        return first_output(block(*args, **kwargs))


def hidden_states_of(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states [batch, seq, d_model] in a block call seen by a forward pre-hook."""
    return args[0] if args else kwargs["hidden_states"]


def first_output(out) -> torch.Tensor:
    """A block's output hidden states [batch, seq, d_model] (blocks of some families return a tuple)."""
    return out[0] if isinstance(out, tuple) else out


@dataclass
class CapturedCalls:
    """What :func:`capture_block_calls` saw, filled in while the model runs.

    `inputs[b]` block b's input hidden states [batch, seq, d_model], `calls[b]` its recorded call, `output`
    the last block's output [batch, seq, d_model] (None for blocks not reached); `stopped`: the pass was
    stopped at block `stop_at`, whose input (only) is recorded."""

    inputs: list[torch.Tensor | None]
    calls: list[BlockCall | None]
    output: torch.Tensor | None = None
    stopped: bool = False


class _Stop(Exception):
    """Ends a captured forward pass at block `stop_at`."""


Feed = Callable[[torch.Tensor, BlockCall], tuple[tuple, dict]]


@contextmanager
def capture_block_calls(blocks: nn.ModuleList, *, cache: object | None = None, feed: Feed | None = None,
                        stop_at: int | None = None) -> Iterator[CapturedCalls]:
    """Record every block's input and call while the body runs the model (`cache`, if given, recorded as a
    placeholder); yields the :class:`CapturedCalls` being filled.

    `feed(hidden, call)`, if given, returns the (args, kwargs) each block runs on instead (e.g. another cache
    in the placeholder's place). With `stop_at`, the forward pass ends once block `stop_at`'s input is known
    (the exception that ends it is swallowed here). The hooks are removed on exit, also on an exception."""
    captured = CapturedCalls([None] * len(blocks), [None] * len(blocks))

    def before(_module, args, kwargs, i):
        hidden = hidden_states_of(args, kwargs)  # [batch, seq, d_model]
        captured.inputs[i] = hidden
        if i == stop_at:
            raise _Stop
        call = captured.calls[i] = BlockCall.record(args, kwargs, cache)
        return feed(hidden, call) if feed is not None else None

    def after(_module, _args, out):
        captured.output = first_output(out)

    handles = []
    try:
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(partial(before, i=i), with_kwargs=True))
        handles.append(blocks[-1].register_forward_hook(after))
        yield captured
    except _Stop:
        captured.stopped = True
    finally:
        for handle in handles:
            handle.remove()
