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
from knowloc.editing.operations import check_rule, modified, normalize_neurons
from knowloc.errors import KnowlocError
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
        pairs = normalize_neurons(lm, request.neurons)
        if self.rule != "dai" and (request.activations is None
                                   or any(n not in request.activations for n in pairs)):
            raise KnowlocError(f"the {self.rule!r} update rule needs the activations of the edited neurons")
        with modified(lm, "update", pairs, old_token=lm.first_target_token(request.gold),
                      new_token=lm.first_target_token(request.new_object), lambda1=self.lambda1,
                      lambda2=self.lambda2, rule=self.rule, activations=request.activations):
            yield AppliedEdit(start=min(layer for layer, _ in pairs), n_weights=len(pairs) * lm.value_vector(0, 0).numel())
