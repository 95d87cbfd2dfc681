"""``kn``: knowloc's knowledge-neuron update rule on the query's KN set N_i, as an editor.

``v_n <- v_n + dv_n`` for every n in N_i, ``dv_n`` by the study's update rule (``calibrated`` by default;
:mod:`knowloc.editing.operations` defines dai / signed / calibrated and their lambdas), exactly the update the
``modification`` and ``update-sweep`` experiments measure, behind the editors' interface.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from knowloc.editing.editors.base import AppliedEdit, EditRequest
from knowloc.editing.operations import check_rule, neuron_edit
from knowloc.models.lm import LanguageModel


@dataclass
class KnUpdate:
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
    uses_layer = False
    uses_neurons = True

    def __post_init__(self) -> None:
        check_rule(self.rule)

    @contextmanager
    def apply(self, lm: LanguageModel, request: EditRequest) -> Iterator[AppliedEdit]:
        request = request.checked(lm, needs_neurons=True)
        # the edit a modification / update-sweep trial makes (Baseline.evaluate applies the same NeuronEdit)
        edit = neuron_edit(lm, "update", request.neurons, request.gold, request.new_object, self.rule,
                           self.lambda1, self.lambda2, request.activations)
        with edit.applied(lm):
            yield AppliedEdit(start=edit.start, n_weights=len(edit.neurons) * lm.value_vector(0, 0).numel())
