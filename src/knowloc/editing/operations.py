"""Knowledge-neuron edits: erasure and update of value vectors (Dai et al. 2022).

A neuron is ``(layer, index)``; its value vector ``v_n`` is ``lm.value_vector(layer, index)`` (a row of a
GPT-2 ``c_proj`` weight or a column of a LLaMA-style ``down_proj`` weight, see the registry).

* ``erase``:  ``v_n <- 0`` for every neuron ``n`` of the set.
* ``update``: ``v_n <- v_n - lambda1 * E(o) + lambda2 * E(o')`` for every neuron ``n``, where ``E(t)`` is
  row ``t`` of the unembedding matrix, ``o`` the old (gold) first token and ``o'`` the new one
  (Dai et al. 2022, "Knowledge Neurons in Pretrained Transformers", section 5; lambda1 = 1, lambda2 = 8).

Every change goes through :func:`knowloc.models.hooks.edit_weights`, which restores the weights
bit-exactly when its context exits (also on an exception). Nothing else is touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

from knowloc.errors import KnowlocError
from knowloc.models.hooks import WeightEditor, edit_weights
from knowloc.models.lm import LanguageModel

OPERATIONS = ("erase", "update")

Neurons = Mapping[int, Iterable[int]] | Iterable[tuple[int, int]]


def normalize_neurons(lm: LanguageModel, neurons: Neurons) -> list[tuple[int, int]]:
    """The neurons as a sorted list of distinct ``(layer, index)`` pairs, checked against the model.

    Accepts ``[(layer, index), ...]`` or ``{layer: [index, ...]}``. Out-of-range or negative layers /
    indices raise :class:`KnowlocError` (negative indices would silently wrap around in torch).
    """
    pairs: list[tuple[int, int]] = []
    try:
        if isinstance(neurons, Mapping):
            for layer, indices in neurons.items():
                pairs.extend((layer, index) for index in indices)
        else:
            for item in neurons:
                layer, index = item
                pairs.append((layer, index))
    except (TypeError, ValueError) as exc:
        raise KnowlocError(f"neurons must be (layer, index) pairs or {{layer: [index, ...]}}: {exc}") from None
    out: set[tuple[int, int]] = set()
    n_layers, n_neurons = lm.n_layers, lm.n_neurons
    for layer, index in pairs:
        for value, name in ((layer, "layer"), (index, "neuron index")):
            if isinstance(value, bool) or not hasattr(value, "__index__"):
                raise KnowlocError(f"{name} must be an integer, got {value!r}")
        layer, index = int(layer.__index__()), int(index.__index__())
        if not 0 <= layer < n_layers:
            raise KnowlocError(f"layer {layer} out of range: the model has {n_layers} layers")
        if not 0 <= index < n_neurons:
            raise KnowlocError(f"neuron index {index} out of range: layers have {n_neurons} neurons")
        out.add((layer, index))
    return sorted(out)


def _check_token(lm: LanguageModel, token: object, name: str) -> int:
    if token is None or isinstance(token, bool) or not hasattr(token, "__index__"):
        raise KnowlocError(f"{name} must be a token id (int), got {token!r}")
    token = int(token)
    vocab = lm.arch.unembed(lm.model).weight.shape[0]
    if not 0 <= token < vocab:
        raise KnowlocError(f"{name} {token} out of range: the vocabulary has {vocab} tokens")
    return token


def _check_lambda(value: object, name: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise KnowlocError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise KnowlocError(f"{name} must be a finite number, got {value!r}")
    return v


def unembedding_row(lm: LanguageModel, token: int) -> torch.Tensor:
    """``E(t)``: a copy of row ``t`` of the unembedding (LM head) weight, width d_model."""
    token = _check_token(lm, token, "token")
    return lm.arch.unembed(lm.model).weight[token].detach().clone()


def update_delta(lm: LanguageModel, old_token: int, new_token: int,
                 lambda1: float = 1.0, lambda2: float = 8.0) -> torch.Tensor:
    """``-lambda1 * E(o) + lambda2 * E(o')``: what :func:`update` adds to every value vector."""
    old_token = _check_token(lm, old_token, "old_token")
    new_token = _check_token(lm, new_token, "new_token")
    lambda1 = _check_lambda(lambda1, "lambda1")
    lambda2 = _check_lambda(lambda2, "lambda2")
    e_old = unembedding_row(lm, old_token)
    e_new = unembedding_row(lm, new_token)
    width = lm.value_vector(0, 0).shape[0]
    if e_old.shape[0] != width:
        raise KnowlocError(f"unembedding width {e_old.shape[0]} differs from the value-vector width {width}")
    return -lambda1 * e_old + lambda2 * e_new


def erase(editor: WeightEditor, neurons: Neurons) -> list[tuple[int, int]]:
    """Set the value vectors of ``neurons`` to zero (inside ``edit_weights``); returns the neurons edited."""
    pairs = normalize_neurons(editor.lm, neurons)
    if pairs:
        editor.zero_values(pairs)
    return pairs


def update(editor: WeightEditor, lm: LanguageModel, neurons: Neurons, old_token: int, new_token: int,
           lambda1: float = 1.0, lambda2: float = 8.0) -> list[tuple[int, int]]:
    """``v_n <- v_n - lambda1 * E(old_token) + lambda2 * E(new_token)`` for every neuron (Dai et al. 2022).

    Every neuron of the (deduplicated) set receives the same delta once; returns the neurons edited.
    """
    if editor.lm is not lm:
        raise KnowlocError("the editor belongs to a different model")
    delta = update_delta(lm, old_token, new_token, lambda1, lambda2)
    pairs = normalize_neurons(lm, neurons)
    for layer, index in pairs:
        editor.add_value(layer, index, delta)
    return pairs


@contextmanager
def modified(lm: LanguageModel, operation: str, neurons: Neurons, old_token: int | None = None,
             new_token: int | None = None, lambda1: float = 1.0, lambda2: float = 8.0) -> Iterator[WeightEditor]:
    """Run the body with the edit applied; the weights are restored bit-exactly on exit.

    ``operation`` is ``"erase"`` (token arguments ignored) or ``"update"`` (needs ``old_token`` and
    ``new_token``). Yields the ``WeightEditor``.
    """
    if operation not in OPERATIONS:
        raise KnowlocError(f"operation must be one of {', '.join(OPERATIONS)}, not {operation!r}")
    if operation == "update":
        # validate before touching the weights
        old_token = _check_token(lm, old_token, "old_token")
        new_token = _check_token(lm, new_token, "new_token")
    with edit_weights(lm) as editor:
        if operation == "erase":
            erase(editor, neurons)
        else:
            update(editor, lm, neurons, old_token, new_token, lambda1, lambda2)
        yield editor
