"""The knowledge-neuron edits as editors: ``kn`` (the update rule on the query's KN set N_i) and ``kn-erase``.

``kn``: ``v_n <- v_n + dv_n`` for every n in N_i, ``dv_n`` by the update rule (``calibrated`` by default;
:mod:`knowloc.editing.operations` defines dai / signed / calibrated and their lambdas). ``kn-erase``:
``v_n <- 0`` (Dai et al. 2022). These are the edits the ``modification``, ``cas``, ``cas-sweep`` and
``update-sweep`` experiments measure, and ``kn`` is the one the ``editors`` experiment sets beside ROME.

Both offer :meth:`~knowloc.editing.editors.base.Editor.rows`: the same edit in activation space, so that many
of a fact's KN edits are measured in one batched replay (:func:`knowloc.editing.trials.measure_edits`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from knowloc.editing.editors.base import AppliedEdit, EditRequest, Editor
from knowloc.editing.operations import UPDATE_RULES, NeuronEdit, RowEdit, check_rule, neuron_edit
from knowloc.errors import KnowlocError
from knowloc.models.lm import LanguageModel
from knowloc.settings import setting


class _NeuronEditor(Editor):
    """An editor whose edit is one :class:`~knowloc.editing.operations.NeuronEdit` of the request's neurons."""

    uses_neurons = True

    def neuron_edit(self, lm: LanguageModel, request: EditRequest) -> NeuronEdit:
        """The checked edit of ``request.neurons`` (:func:`knowloc.editing.operations.neuron_edit`)."""
        raise NotImplementedError

    @contextmanager
    def edit(self, lm: LanguageModel, request: EditRequest) -> Iterator[AppliedEdit]:
        edit = self.neuron_edit(lm, request)
        with edit.applied(lm):
            yield AppliedEdit(start=edit.start, n_weights=len(edit.neurons) * lm.value_vector(0, 0).numel())

    def rows(self, lm: LanguageModel, request: EditRequest) -> RowEdit:
        return self.neuron_edit(lm, request).rows(lm)

    def model_key(self, lm: LanguageModel, request: EditRequest) -> Hashable:
        """The edited model depends on the neurons and (an update) the tokens, rule, lambdas and, for a
        sign-aware rule, the signs of the neurons' activations on the edited query: the same key whichever query
        chose the neurons (an erasure of N_g edits one model for every query)."""
        edit = self.neuron_edit(lm, request)
        signs = None
        if edit.operation == "update" and edit.rule != "dai" and edit.activations is not None:
            signs = tuple(edit.activations[n] >= 0 for n in edit.neurons)
        return (edit.operation, tuple(edit.neurons), edit.old_token, edit.new_token, edit.rule, edit.lambda1,
                edit.lambda2, signs)


# Default lambda2 of each update rule (lambda2 = None in a study's settings means the rule's default). dai / signed
# add lambda2 * E(o'), as Dai et al. (8); calibrated adds lambda2 * |v_n| in the unit direction of E(o'), chosen by
# the update-sweep frontier on SmolLM2-135M (docs/editing.md).
RULE_LAMBDA2 = {"dai": 8.0, "signed": 8.0, "calibrated": 1.0}


@dataclass
class UpdateSettings:
    """The KN update a study makes (``--update-rule``, ``--lambda1``, ``--lambda2``): the rule and its lambdas
    (``lambda2`` None: the rule's default, :data:`RULE_LAMBDA2`)."""

    rule: str = setting("calibrated", help=f"update rule: {', '.join(UPDATE_RULES)} (docs/editing.md)")
    lambda1: float = setting(1.0, flat="lambda1", help="update: weight of the old object's direction")
    lambda2: float | None = setting(None, flat="lambda2", help="update: weight of the new object's direction "
                                    "(default: the rule's, dai / signed 8, calibrated 1)")

    def __post_init__(self) -> None:
        if self.rule not in UPDATE_RULES:
            raise KnowlocError(f"unknown --update-rule {self.rule!r}; choose from {', '.join(UPDATE_RULES)}")
        if self.lambda2 is None:
            self.lambda2 = RULE_LAMBDA2[self.rule]
        for name in ("lambda1", "lambda2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
                    or abs(value) == float("inf"):
                raise KnowlocError(f"--{name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))

    def editor(self) -> KnUpdate:
        """The ``kn`` editor with this rule and lambdas."""
        return KnUpdate(self.rule, self.lambda1, self.lambda2)  # type: ignore[arg-type]


@dataclass
class KnUpdate(_NeuronEditor):
    """The ``kn`` editor: the update rule ``rule`` with ``lambda1`` / ``lambda2`` on ``request.neurons``.

    Example:
        >>> request = EditRequest(prompt, subject, "Paris", "Rome", neurons=((12, 345),),
        ...                       activations={(12, 345): 0.7})
        >>> with KnUpdate("calibrated", 1.0, 1.0).apply(lm, request) as applied: ...
    """

    rule: str = "calibrated"
    lambda1: float = 1.0
    lambda2: float = 1.0

    name = "kn"
    operation = "update"

    def __post_init__(self) -> None:
        check_rule(self.rule)

    def neuron_edit(self, lm: LanguageModel, request: EditRequest) -> NeuronEdit:
        request = request.checked(lm)  # no neuron: an edit that changes nothing
        return neuron_edit(lm, "update", request.neurons, request.gold, request.new_object, self.rule,
                           self.lambda1, self.lambda2, request.activations)


@dataclass
class KnErase(_NeuronEditor):
    """The ``kn-erase`` editor: ``v_n <- 0`` for every neuron of ``request.neurons`` (scored as an erasure: the
    gold answer is gone; ``request.new_object`` is not read).

    Example:
        >>> with KnErase().apply(lm, EditRequest(prompt, subject, "Paris", neurons=((12, 345),))): ...
    """

    name = "kn-erase"
    operation = "erase"

    def neuron_edit(self, lm: LanguageModel, request: EditRequest) -> NeuronEdit:
        request = request.checked(lm, operation="erase")
        return neuron_edit(lm, "erase", request.neurons, request.gold)
