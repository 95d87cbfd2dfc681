"""Constrained fine-tuning: ``ft`` (ROME's FT+L baseline) and ``kn-ft`` (the same, restricted to N_i).

``ft`` (Meng et al. 2022, section 4, "FT+L"; Zhu et al. 2020): fine-tune the MLP output projection ``W`` of one
layer so that the edited query predicts o': ``steps`` Adam steps (``lr``) on the mean NLL of o''s tokens
(teacher-forced) on the edited query, the weight change ``dW = W' - W`` projected after every step onto the
L-infinity ball ``|dW_ij| <= bound``. Deterministic (zero initialisation, full-batch Adam: no sampling).

``kn-ft``: the same loss, steps, learning rate and bound, with only the value vectors of the query's filtered KN
set N_i trainable (``dv_n`` for each ``n = (layer, index)`` in N_i, across N_i's layers; every other weight fixed):
does the KN set suffice when the change is learned rather than set by a rule?

Both train a tensor added in activation space (``out += a @ dW^T`` at every position, ``a`` the projection's
input: exactly what the weight change does), re-running only the blocks from the lowest edited layer up; the
weights change once, when the result is applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from knowloc.editing.editors.base import (AppliedEdit, EditRequest, Editor, Teacher, adam_steps, added_to_output,
                                          check_positive, check_steps)
from knowloc.editing.operations import normalize_neurons
from knowloc.models.hooks import edit_weights
from knowloc.errors import KnowlocError
from knowloc.models.lm import LanguageModel
from knowloc.settings import setting


AUTO = "auto"
BOUNDS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2)  # the calibration grid of --ft-bound auto
TARGET_REL = 0.9  # the Rel the calibrated bound reaches


@dataclass
class FtSettings:
    """What a study sets of ``ft`` / ``kn-ft`` (``--ft-*``; the :class:`FineTune` editor's defaults are these).

    ``bound`` ``auto`` (the default): chosen per model by :func:`knowloc.editing.trials.calibrate`, the smallest of
    :data:`BOUNDS` at which ``ft`` reaches Rel >= :data:`TARGET_REL` on ``calibration`` seeded reference queries
    (never the studied facts); a number fixes it."""

    steps: int = setting(25, help="ft / kn-ft: Adam steps (ROME's FT+L: 25)")
    lr: float = setting(1e-2, help="ft / kn-ft: learning rate (the largest bound: Adam's steps reach it in one step)")
    bound: float | str = setting(AUTO, help="ft / kn-ft: L-infinity bound of the weight change, or 'auto': per "
                                 f"model, the smallest of {', '.join(map(str, BOUNDS))} at which ft reaches Rel >= "
                                 f"{TARGET_REL} on --ft-calibration seeded reference queries (docs/editing.md)")
    calibration: int = setting(10, help="ft / kn-ft: reference queries (of the specificity profile, not the "
                               "studied facts) the 'auto' bound is calibrated on")

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise KnowlocError(f"--ft-steps must be an integer >= 0, got {self.steps!r}")
        if isinstance(self.calibration, bool) or not isinstance(self.calibration, int) or self.calibration < 1:
            raise KnowlocError(f"--ft-calibration must be an integer >= 1, got {self.calibration!r}")
        if isinstance(self.bound, str):
            text = self.bound.strip().lower()
            try:
                self.bound = AUTO if text == AUTO else float(text)
            except ValueError:
                raise KnowlocError(f"--ft-bound must be a number > 0 or {AUTO!r}, got {self.bound!r}") from None
        for name in ("lr",) if self.calibrated else ("lr", "bound"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise KnowlocError(f"--ft-{name} must be a number > 0, got {value!r}")

    @property
    def calibrated(self) -> bool:
        """Whether the bound is chosen per model (``auto``)."""
        return self.bound == AUTO

    def editor(self, neurons: bool = False, bound: float | None = None) -> FineTune:
        """``ft`` (``neurons=False``) or ``kn-ft`` with these settings; ``bound``: another bound (a model's
        calibrated one), needed when the setting is ``auto``."""
        if self.calibrated and bound is None:
            raise KnowlocError("--ft-bound is 'auto': the bound is calibrated per model (a study does it); "
                               "pass a model's calibrated bound or set a number")
        return FineTune(steps=self.steps, lr=self.lr, bound=self.bound if bound is None else bound, neurons=neurons)


@dataclass
class FineTune(Editor):
    """``ft`` (``neurons=False``: the whole projection of ``request.layer``) or ``kn-ft`` (``neurons=True``:
    N_i's value vectors); module docstring.

    Args:
        steps, lr: Adam steps and learning rate; bound: the L-infinity bound of the weight change.

    Example:
        >>> request = EditRequest("The capital of France is", "France", "Paris", "Rome", layers=4)
        >>> with FineTune().apply(lm, request) as applied:
        ...     applied.info["max_abs_change"] <= 1e-2
    """

    steps: int = FtSettings.steps
    lr: float = FtSettings.lr
    bound: float = 1e-2  # SmolLM2-135M's calibrated bound (--ft-bound auto; docs/editing.md)
    neurons: bool = False

    def __post_init__(self) -> None:
        check_steps(self.steps, f"{self.name} steps")
        check_positive(self.lr, f"{self.name} lr")
        check_positive(self.bound, f"{self.name} bound")

    @property  # type: ignore[override]
    def uses_neurons(self) -> bool:
        return self.neurons

    @property  # type: ignore[override]
    def name(self) -> str:
        return "kn-ft" if self.neurons else "ft"

    @property  # type: ignore[override]
    def uses_layer(self) -> bool:
        return not self.neurons

    def weight_change(self, lm: LanguageModel, request: EditRequest) -> tuple[dict[int, torch.Tensor], dict]:
        """``{layer: dW [d_model, n_neurons]}`` of the request (dense; kn-ft's is zero outside N_i's columns)
        and ``{"loss", "max_abs_change"}``; the model is unchanged."""
        request = request.checked(lm, needs_layer=not self.neurons, needs_neurons=self.neurons)
        d_model = lm.value_vector(0, 0).shape[0]
        if self.neurons:
            pairs = normalize_neurons(lm, request.neurons)
            by_layer: dict[int, list[int]] = {}
            for layer, index in pairs:
                by_layer.setdefault(layer, []).append(index)
            idx = {layer: torch.tensor(v, dtype=torch.long, device=lm.device) for layer, v in by_layer.items()}
            params = {layer: torch.zeros(len(v), d_model, device=lm.device, requires_grad=True)
                      for layer, v in by_layer.items()}  # dv_n [k_l, d_model]

            def addition(layer):
                return lambda x: x.index_select(-1, idx[layer]).float() @ params[layer]  # fp32 in a bf16 model
        else:
            by_layer = {request.layer: []}  # type: ignore[dict-item]
            params = {request.layer: torch.zeros(d_model, lm.n_neurons, device=lm.device, requires_grad=True)}

            def addition(layer):
                return lambda x: x.float() @ params[layer].T  # the fp32 change, also in a bf16 model
        start = min(params)
        teacher = Teacher(lm, [request.prompt], [request.new_object], start=start)

        def loss() -> torch.Tensor:
            with added_to_output(lm, {layer: addition(layer) for layer in params}):
                hidden = teacher.run()
            return teacher.target_nll(hidden, [0])

        def project() -> None:
            for p in params.values():
                p.clamp_(-self.bound, self.bound)

        last, _ = adam_steps(list(params.values()), loss, self.steps, self.lr, project)
        out: dict[int, torch.Tensor] = {}
        for layer, p in params.items():
            if self.neurons:
                dense = torch.zeros(d_model, lm.n_neurons, device=lm.device)
                dense[:, idx[layer]] = p.detach().T
                out[layer] = dense
            else:
                out[layer] = p.detach().clone()
        max_change = max((float(d.abs().max()) for d in out.values()), default=0.0)
        return out, {"loss": last, "max_abs_change": max_change}

    @contextmanager
    def edit(self, lm: LanguageModel, request: EditRequest) -> Iterator[AppliedEdit]:
        """The model with the learned change applied; restored bit-exactly on exit."""
        change, info = self.weight_change(lm, request)
        changed = {layer: d for layer, d in change.items() if bool(d.abs().max() > 0)}
        with edit_weights(lm) as editor:
            for layer, delta in changed.items():
                editor.add_matrix(layer, delta)
            yield AppliedEdit(start=min(changed) if changed else None,
                              n_weights=sum(int((d != 0).sum()) for d in changed.values()), info=info)
