"""Reversible model side effects, in the style of ROME's `nethook.Trace`.

Every hook or weight edit lives inside a context manager whose `finally` removes the hooks / restores the
original weights, also when the body raises. Nothing here replaces modules.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from knowloc.models.lm import LanguageModel

TensorFn = Callable[[torch.Tensor], torch.Tensor | None]
SaveObserver = Callable[[int, torch.Tensor], None]  # (layer, the saved original weight)
# the observers of observe_saved_weights' bodies (this thread / task), innermost last; empty outside them
_SAVE_OBSERVERS: ContextVar[tuple[SaveObserver, ...]] = ContextVar("knowloc_save_observers", default=())


@contextmanager
def hook_module(module: nn.Module, where: str, fn: TensorFn) -> Iterator[None]:
    """Call `fn` on a module's first input (`where="input"`) or its output (`"output"`).

    If `fn` returns a tensor it replaces that input/output. The hook is removed on exit.
    """
    if where == "input":
        def pre_hook(_module, args, kwargs):
            new = fn(args[0])
            if new is not None:
                return (new, *args[1:]), kwargs
            return None
        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    elif where == "output":
        def post_hook(_module, _args, output):
            return fn(output)
        handle = module.register_forward_hook(post_hook)
    else:
        raise ValueError(f"where must be 'input' or 'output', not {where!r}")
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def hook_input_output(module: nn.Module, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]
                      ) -> Iterator[None]:
    """Call `fn(input, output)` after the module ran (`input`: its first input, as any pre-hook left it); a
    returned tensor replaces the output. The hook is removed on exit, also on an exception."""
    def post_hook(_module, args, output):
        return fn(args[0], output)
    handle = module.register_forward_hook(post_hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def hook_sites(lm: LanguageModel, fns: Mapping[int, TensorFn]) -> Iterator[None]:
    """Hook the neuron activation site of each layer in `fns` (see `LanguageModel.site_module`)."""
    with ExitStack() as stack:
        for layer, fn in fns.items():
            module, where = lm.site_module(layer)
            stack.enter_context(hook_module(module, where, fn))
        yield


@contextmanager
def trace_activations(lm: LanguageModel, layers: list[int] | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Record the neuron activations [batch, seq, n_neurons] of `layers` (default all) during the body."""
    records: dict[int, torch.Tensor] = {}

    def recorder(layer: int) -> TensorFn:
        def record(x: torch.Tensor) -> None:
            records[layer] = x.detach()
        return record

    layers = list(range(lm.n_layers)) if layers is None else layers
    with hook_sites(lm, {layer: recorder(layer) for layer in layers}):
        yield records


@contextmanager
def scale_neurons(lm: LanguageModel, neurons: Mapping[int, list[int]] | list[tuple[int, int]],
                  factor: float, position: int) -> Iterator[None]:
    """Multiply the activations of the given neurons at one sequence position by `factor` (0 = suppress)."""
    by_layer = _group(neurons)

    def scaler(indices: list[int]) -> TensorFn:
        idx = torch.tensor(indices, dtype=torch.long, device=lm.device)

        def scale(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[:, position, idx.to(x.device)] *= factor
            return x
        return scale

    with hook_sites(lm, {layer: scaler(indices) for layer, indices in by_layer.items()}):
        yield


def _group(neurons: Mapping[int, list[int]] | list[tuple[int, int]]) -> dict[int, list[int]]:
    if isinstance(neurons, Mapping):
        return {int(k): sorted(set(v)) for k, v in neurons.items() if v}
    grouped: dict[int, list[int]] = {}
    for layer, index in neurons:
        grouped.setdefault(int(layer), []).append(int(index))
    return {layer: sorted(set(indices)) for layer, indices in grouped.items()}


class WeightEditor:
    """Changes value vectors in place and remembers the originals (restored by `edit_weights` on exit)."""

    def __init__(self, lm: LanguageModel):
        self.lm = lm
        self._saved: dict[int, torch.Tensor] = {}

    def _touch(self, layer: int) -> None:
        if layer not in self._saved:
            self._saved[layer] = saved = self.lm.mlp_out(layer).weight.detach().clone()
            for observe in _SAVE_OBSERVERS.get():
                observe(layer, saved)

    @torch.no_grad()
    def set_value(self, layer: int, index: int, vector: torch.Tensor) -> None:
        self._touch(layer)
        self.lm.value_vector(layer, index).copy_(vector)

    @torch.no_grad()
    def add_value(self, layer: int, index: int, delta: torch.Tensor) -> None:
        self._touch(layer)
        value = self.lm.value_vector(layer, index)
        value.add_(delta.to(device=value.device, dtype=value.dtype))

    @torch.no_grad()
    def add_matrix(self, layer: int, delta: torch.Tensor) -> None:
        """``W <- W + delta`` for the layer's MLP output projection as a matrix ``W [d_model, n_neurons]``
        (``output = W a (+ bias)``, ``a`` the neuron activations): added to a Linear weight as it is and to a
        Conv1D weight ``[n_neurons, d_model]`` transposed."""
        self._touch(layer)
        weight = self.lm.mlp_out(layer).weight
        delta = delta.to(device=weight.device, dtype=weight.dtype)
        weight.add_(delta if self.lm.arch.value_layout == "col" else delta.T)

    @torch.no_grad()
    def zero_values(self, neurons: list[tuple[int, int]]) -> None:
        for layer, indices in _group(neurons).items():
            self._touch(layer)
            weight = self.lm.mlp_out(layer).weight
            if self.lm.arch.value_layout == "row":
                weight[indices] = 0
            else:
                weight[:, indices] = 0

    @torch.no_grad()
    def restore(self) -> None:
        for layer, original in self._saved.items():
            self.lm.mlp_out(layer).weight.copy_(original)
        self._saved.clear()


@contextmanager
def edit_weights(lm: LanguageModel) -> Iterator[WeightEditor]:
    """Yield a `WeightEditor`; every value vector it changed is restored bit-exactly on exit."""
    editor = WeightEditor(lm)
    try:
        yield editor
    finally:
        editor.restore()


@contextmanager
def observe_saved_weights(fn: SaveObserver) -> Iterator[None]:
    """Call ``fn(layer, original)`` whenever a `WeightEditor` (of any `edit_weights`, e.g. inside an editor) saves
    a layer's original MLP output weight to restore it, during the body (this thread or task); for measurements,
    e.g. the bytes an editor keeps to restore (``knowloc bench editors``). Removed on exit, also on an exception.

    Example:
        >>> kept = []
        >>> with observe_saved_weights(lambda layer, w: kept.append(w.numel() * w.element_size())):
        ...     with Rome().apply(lm, request):
        ...         pass
    """
    token = _SAVE_OBSERVERS.set((*_SAVE_OBSERVERS.get(), fn))
    try:
        yield
    finally:
        _SAVE_OBSERVERS.reset(token)
