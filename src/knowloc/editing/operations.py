"""Knowledge-neuron edits: erasure and update of value vectors (Dai et al. 2022).

A neuron is ``(layer, index)``; its value vector ``v_n`` is ``lm.value_vector(layer, index)`` (a row of a
GPT-2 ``c_proj`` weight or a column of a LLaMA-style ``down_proj`` weight, see the registry).

* ``erase``:  ``v_n <- 0`` for every neuron ``n`` of the set.
* ``update``: ``v_n <- v_n + dv_n`` for every neuron ``n``, with ``dv_n`` given by the update rule
  (:data:`UPDATE_RULES`, :func:`rule_deltas`). ``E(t)`` is row ``t`` of the unembedding matrix, ``o`` the old
  (gold) first token, ``o'`` the new one, ``a_n`` the neuron's activation at the edited query's last position
  and ``s_n = +1 if a_n >= 0 else -1``:

  - ``dai``:        ``dv_n = -lambda1 * E(o) + lambda2 * E(o')`` (Dai et al. 2022, "Knowledge Neurons in
    Pretrained Transformers", section 5; lambda1 = 1, lambda2 = 8). Written for BERT, whose knowledge neurons
    fire positively: where ``a_n < 0`` the edit ``a_n * dv_n`` moves the residual stream *away* from ``o'``.
  - ``signed``:     ``dv_n = s_n * (-lambda1 * E(o) + lambda2 * E(o'))``: the same change, pointed so that
    ``a_n * dv_n`` adds ``+|a_n| * (lambda2 E(o') - lambda1 E(o))``. Equals ``dai`` when every ``a_n >= 0``.
  - ``calibrated``: ``dv_n = s_n * |v_n| * (-lambda1 * E(o)/|E(o)| + lambda2 * E(o')/|E(o')|)``: sign-aware,
    with unit directions scaled by the norm of the neuron's own value vector, so lambda is relative to it
    (lambda2 = 1 adds a vector as long as v_n itself).

Every change goes through :func:`knowloc.models.hooks.edit_weights`, which restores the weights
bit-exactly when its context exits (also on an exception). Nothing else is touched.

The same edits in activation space (:class:`RowEdit`, :func:`rows_edited`), for measuring several edits in one
batch, each on its own rows. The MLP output at a position is ``sum_n a_n v_n (+ bias)``, ``a_n`` the
neuron's activation there (the input of the down-projection), so

* ``v_n <- 0`` (erase) is ``a_n <- 0`` in the down-projection's input, and
* ``v_n <- v_n + dv_n`` (update) is ``+ sum_n a_n dv_n`` added to its output, ``a_n`` the row's own
  activation at that position,

exactly, at every position; only the order of the float sums differs (agreement up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from knowloc.analysis import Neuron
from knowloc.errors import KnowlocError
from knowloc.models.hooks import WeightEditor, edit_weights, hook_input_output, hook_module
from knowloc.models.lm import LanguageModel

OPERATIONS = ("erase", "update")
UPDATE_RULES = ("dai", "signed", "calibrated")

# the neurons an operation edits: (layer, index) pairs (a plain pair is as good as a Neuron) or {layer: [index, ...]}
Neurons = Mapping[int, Iterable[int]] | Iterable[Neuron]


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
    """``-lambda1 * E(o) + lambda2 * E(o')``: what the ``dai`` rule adds to every value vector."""
    e_old, e_new = _unembedding_pair(lm, old_token, new_token)
    return -_check_lambda(lambda1, "lambda1") * e_old + _check_lambda(lambda2, "lambda2") * e_new


def _unembedding_pair(lm: LanguageModel, old_token: int, new_token: int) -> tuple[torch.Tensor, torch.Tensor]:
    old_token = _check_token(lm, old_token, "old_token")
    new_token = _check_token(lm, new_token, "new_token")
    e_old = unembedding_row(lm, old_token)
    e_new = unembedding_row(lm, new_token)
    width = lm.value_vector(0, 0).shape[0]
    if e_old.shape[0] != width:
        raise KnowlocError(f"unembedding width {e_old.shape[0]} differs from the value-vector width {width}")
    return e_old, e_new


def check_rule(rule: str) -> str:
    if rule not in UPDATE_RULES:
        raise KnowlocError(f"unknown update rule {rule!r}; choose from {', '.join(UPDATE_RULES)}")
    return rule


def rule_deltas(values: torch.Tensor, e_old: torch.Tensor, e_new: torch.Tensor, activations: torch.Tensor | None,
                lambda1: float = 1.0, lambda2: float = 8.0, rule: str = "dai") -> torch.Tensor:
    """The change ``dv_n`` of every value vector under an update rule (module docstring); pure.

    Args:
        values: the value vectors ``v_n`` before the edit, ``[k, d]``.
        e_old, e_new: ``E(o)`` and ``E(o')``, ``[d]``.
        activations: ``a_n`` at the edited query's last position, ``[k]`` (only their signs are used; needed
            by ``signed`` and ``calibrated``, ignored by ``dai``).
        lambda1, lambda2: the coefficients; rule: ``dai``, ``signed`` or ``calibrated``.

    Returns:
        ``[k, d]`` float32 deltas, in the order of ``values``.

    Example:
        >>> v = torch.tensor([[3.0, 4.0]]); e_o = torch.tensor([1.0, 0.0]); e_n = torch.tensor([0.0, 2.0])
        >>> rule_deltas(v, e_o, e_n, torch.tensor([-0.5]), 1.0, 2.0, "calibrated")
        tensor([[  5., -10.]])
    """
    check_rule(rule)
    lambda1, lambda2 = _check_lambda(lambda1, "lambda1"), _check_lambda(lambda2, "lambda2")
    values = values.detach().float()
    e_old, e_new = e_old.detach().float().to(values.device), e_new.detach().float().to(values.device)
    k = values.shape[0]
    if rule == "dai":
        return (-lambda1 * e_old + lambda2 * e_new).expand(k, -1).clone()
    if activations is None or activations.numel() != k:
        raise KnowlocError(f"the {rule!r} update rule needs the activation of each of the {k} neurons")
    signs = torch.where(activations.detach().float().to(values.device) >= 0, 1.0, -1.0).view(k, 1)
    if rule == "signed":
        return signs * (-lambda1 * e_old + lambda2 * e_new)
    direction = -lambda1 * e_old / e_old.norm().clamp_min(1e-12) + lambda2 * e_new / e_new.norm().clamp_min(1e-12)
    return signs * values.norm(dim=1, keepdim=True) * direction


def erase(editor: WeightEditor, neurons: Neurons) -> list[tuple[int, int]]:
    """Set the value vectors of ``neurons`` to zero (inside ``edit_weights``); returns the neurons edited."""
    pairs = normalize_neurons(editor.lm, neurons)
    if pairs:
        editor.zero_values(pairs)
    return pairs


def update(editor: WeightEditor, lm: LanguageModel, neurons: Neurons, old_token: int, new_token: int,
           lambda1: float = 1.0, lambda2: float = 8.0, rule: str = "dai",
           activations: Mapping[tuple[int, int], float] | None = None) -> list[tuple[int, int]]:
    """``v_n <- v_n + dv_n`` for every neuron of the (deduplicated) set, ``dv_n`` by ``rule``
    (:func:`rule_deltas`); ``activations`` maps each neuron to its activation at the edited query's last
    position (needed by ``signed`` and ``calibrated``). Returns the neurons edited."""
    if editor.lm is not lm:
        raise KnowlocError("the editor belongs to a different model")
    check_rule(rule)
    e_old, e_new = _unembedding_pair(lm, old_token, new_token)
    pairs = normalize_neurons(lm, neurons)
    if not pairs:
        return pairs
    deltas = _pair_deltas(lm, pairs, e_old, e_new, lambda1, lambda2, rule, activations)
    for (layer, index), delta in zip(pairs, deltas):
        editor.add_value(layer, index, delta)
    return pairs


def _pair_deltas(lm: LanguageModel, pairs: list[tuple[int, int]], e_old: torch.Tensor, e_new: torch.Tensor,
                 lambda1: float, lambda2: float, rule: str,
                 activations: Mapping[tuple[int, int], float] | None) -> torch.Tensor:
    """``dv_n`` [len(pairs), d] of the (normalized, non-empty) neurons under ``rule``, from the current value
    vectors (one computation for the weight edit and the activation-space edit, so both add the same deltas)."""
    values = torch.stack([lm.value_vector(layer, index) for layer, index in pairs])
    acts = None
    if rule != "dai":
        missing = [n for n in pairs if activations is None or n not in activations]
        if missing:
            raise KnowlocError(f"the {rule!r} update rule needs the activations of the edited neurons "
                               f"(missing for {missing[0]})")
        acts = torch.tensor([float(activations[n]) for n in pairs], device=values.device)  # type: ignore[index]
    return rule_deltas(values, e_old, e_new, acts, lambda1, lambda2, rule)


@contextmanager
def modified(lm: LanguageModel, operation: str, neurons: Neurons, old_token: int | None = None,
             new_token: int | None = None, lambda1: float = 1.0, lambda2: float = 8.0, rule: str = "dai",
             activations: Mapping[tuple[int, int], float] | None = None) -> Iterator[WeightEditor]:
    """Run the body with the edit applied; the weights are restored bit-exactly on exit.

    ``operation`` is ``"erase"`` (token arguments ignored) or ``"update"`` (needs ``old_token`` and
    ``new_token``; ``rule`` and ``activations`` as in :func:`update`). Yields the ``WeightEditor``.
    """
    if operation not in OPERATIONS:
        raise KnowlocError(f"operation must be one of {', '.join(OPERATIONS)}, not {operation!r}")
    if operation == "update":
        # validate before touching the weights
        old_token = _check_token(lm, old_token, "old_token")
        new_token = _check_token(lm, new_token, "new_token")
        check_rule(rule)
    with edit_weights(lm) as editor:
        if operation == "erase":
            erase(editor, neurons)
        else:
            update(editor, lm, neurons, old_token, new_token, lambda1, lambda2, rule, activations)
        yield editor


def target_tokens(lm: LanguageModel, operation: str, gold: str, new_object: str | None) -> tuple[int, int | None]:
    """``(o, o')``: the first tokens of ``gold`` and (an update) of ``new_object`` (None for an erasure); an update
    whose new object starts with gold's token is refused (one line)."""
    old = lm.first_target_token(gold)
    if operation != "update":
        return old, None
    new = lm.first_target_token(new_object)  # type: ignore[arg-type]
    if new == old:
        raise KnowlocError(f"new object {new_object!r} starts with the same token as {gold!r}")
    return old, new


@dataclass(frozen=True)
class NeuronEdit:
    """One checked edit of value vectors (:func:`neuron_edit`): the operation, its normalized neurons, the gold
    and new first tokens, the update rule with its lambdas and the neurons' activations (sign-aware rules). It
    is applied to the weights (:meth:`applied`, i.e. :func:`modified`) or to rows of a batch (:meth:`rows`, i.e.
    :func:`row_edit`) with the same deltas."""

    operation: str
    neurons: list[tuple[int, int]]
    old_token: int
    new_token: int | None = None
    lambda1: float = 1.0
    lambda2: float = 8.0
    rule: str = "dai"
    activations: dict[tuple[int, int], float] | None = None

    @property
    def start(self) -> int | None:
        """The lowest edited layer (None: no neuron)."""
        return min(layer for layer, _ in self.neurons) if self.neurons else None

    def _arguments(self) -> dict:
        return dict(old_token=self.old_token, new_token=self.new_token, lambda1=self.lambda1, lambda2=self.lambda2,
                    rule=self.rule, activations=self.activations)

    def applied(self, lm: LanguageModel):
        """:func:`modified` with this edit: a context manager, the weights restored bit-exactly on exit."""
        return modified(lm, self.operation, self.neurons, **self._arguments())

    def rows(self, lm: LanguageModel) -> RowEdit:
        """:func:`row_edit` with this edit (the same deltas, in activation space)."""
        return row_edit(lm, self.operation, self.neurons, **self._arguments())


def neuron_edit(lm: LanguageModel, operation: str, neurons: Neurons, gold: str, new_object: str | None = None,
                rule: str = "dai", lambda1: float = 1.0, lambda2: float = 8.0, activations=None) -> NeuronEdit:
    """The edit of ``neurons`` (erase, or update of ``gold`` to ``new_object`` by ``rule``), checked: first
    tokens (:func:`target_tokens`), normalized neurons, and for a sign-aware rule each neuron's activation at the
    edited query's last position, read as ``activations[layer, index]`` (a ``{(layer, index): a}`` mapping or a
    ``[n_layers, n_neurons]`` tensor).

    Example:
        >>> with neuron_edit(lm, "update", [(12, 345)], "Paris", "Rome", "calibrated", 1.0, 1.0,
        ...                  {(12, 345): 0.7}).applied(lm): ...
    """
    old, new = target_tokens(lm, operation, gold, new_object)
    pairs = normalize_neurons(lm, neurons)
    acts = None  # a sign-aware rule without them is refused where the deltas are made (_pair_deltas)
    if operation == "update" and rule != "dai" and activations is not None:
        acts = {(layer, index): float(activations[layer, index]) for layer, index in pairs
                if not isinstance(activations, Mapping) or (layer, index) in activations}
    return NeuronEdit(operation, pairs, old, new, lambda1, lambda2, rule, acts)


# --------------------------------------------------------------------------------------------------------
# the same edits in activation space, one edit per group of rows


@dataclass(frozen=True)
class RowEdit:
    """One edit as an activation-space edit (module docstring), for :func:`rows_edited`.

    erase: ``{layer: neuron indices}`` whose activation is set to 0 (their value vectors zeroed);
    update: ``{layer: (neuron indices [k], deltas [k, d_model])}``: ``a_n * dv_n`` added to the layer's MLP
    output for each neuron (its value vector plus ``dv_n``). Tensors on the model's device, deltas in its dtype.
    """

    erase: Mapping[int, torch.Tensor]
    update: Mapping[int, tuple[torch.Tensor, torch.Tensor]]

    @property
    def layers(self) -> list[int]:
        return sorted({*self.erase, *self.update})

    @property
    def start(self) -> int | None:
        """The lowest edited layer (None: the edit changes nothing)."""
        layers = self.layers
        return layers[0] if layers else None


def row_edit(lm: LanguageModel, operation: str, neurons: Neurons, old_token: int | None = None,
             new_token: int | None = None, lambda1: float = 1.0, lambda2: float = 8.0, rule: str = "dai",
             activations: Mapping[tuple[int, int], float] | None = None) -> RowEdit:
    """The edit :func:`modified` makes with these arguments, as a :class:`RowEdit` (same validation; the update
    deltas are computed exactly as :func:`update` computes them, from the current value vectors)."""
    if operation not in OPERATIONS:
        raise KnowlocError(f"operation must be one of {', '.join(OPERATIONS)}, not {operation!r}")
    device = lm.device
    if operation == "erase":
        by_layer: dict[int, list[int]] = {}
        for layer, index in normalize_neurons(lm, neurons):
            by_layer.setdefault(layer, []).append(index)
        return RowEdit({layer: torch.tensor(idx, dtype=torch.long, device=device)
                        for layer, idx in by_layer.items()}, {})
    old_token = _check_token(lm, old_token, "old_token")
    new_token = _check_token(lm, new_token, "new_token")
    check_rule(rule)
    e_old, e_new = _unembedding_pair(lm, old_token, new_token)
    pairs = normalize_neurons(lm, neurons)
    if not pairs:
        return RowEdit({}, {})
    deltas = _pair_deltas(lm, pairs, e_old, e_new, lambda1, lambda2, rule, activations).to(lm.dtype)  # [k, d]
    rows: dict[int, list[int]] = {}
    for k, (layer, _) in enumerate(pairs):
        rows.setdefault(layer, []).append(k)
    update = {}
    for layer, ks in rows.items():
        idx = torch.tensor([pairs[k][1] for k in ks], dtype=torch.long, device=device)  # [k_l]
        update[layer] = (idx, deltas[ks].to(device))  # [k_l], [k_l, d]
    return RowEdit({}, update)


@contextmanager
def rows_edited(lm: LanguageModel, edits: Sequence[RowEdit], batch: int) -> Iterator[None]:
    """Run the body with ``edits[c]`` applied to rows ``[c * batch, (c + 1) * batch)`` of every forward pass
    through an edited layer's MLP output projection (rows past the tensor's end: that copy is not running), as
    activation-space edits (module docstring); the weights are never touched and the hooks are removed on exit,
    also on an exception.

    Per edited layer: a pre-hook on the down-projection zeroes the erased neurons' activations in their copy's
    rows, and a forward hook adds ``x[rows][..., idx] @ deltas`` (``x`` the projection's input) to the output of
    the updated copies' rows.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise KnowlocError(f"batch must be an integer >= 1, got {batch!r}")
    layers = sorted({layer for edit in edits for layer in edit.layers})
    with ExitStack() as stack:
        for layer in layers:
            erased = [(c, e.erase[layer]) for c, e in enumerate(edits) if layer in e.erase]
            updated = [(c, *e.update[layer]) for c, e in enumerate(edits) if layer in e.update]
            module = lm.mlp_out(layer)
            if erased:
                stack.enter_context(hook_module(module, "input", _eraser(erased, batch)))
            if updated:
                stack.enter_context(hook_input_output(module, _updater(updated, batch)))
        yield


def _eraser(erased: list[tuple[int, torch.Tensor]], batch: int):
    def erase_rows(x: torch.Tensor) -> torch.Tensor | None:  # x [n_active * batch, seq, n_neurons]
        targets = [(c, idx) for c, idx in erased if c * batch < x.shape[0]]
        if not targets:
            return None
        x = x.clone()
        for c, idx in targets:
            x[c * batch:(c + 1) * batch].index_fill_(-1, idx, 0)
        return x
    return erase_rows


def _updater(updated: list[tuple[int, torch.Tensor, torch.Tensor]], batch: int):
    def update_rows(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # x [.., n_neurons], out [.., d_model]
        for c, idx, deltas in updated:
            if c * batch >= x.shape[0]:
                continue
            rows = slice(c * batch, (c + 1) * batch)
            out[rows] += x[rows].index_select(-1, idx) @ deltas  # [batch, seq, k] @ [k, d] -> [batch, seq, d]
        return out
    return update_rows
