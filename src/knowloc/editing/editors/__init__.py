"""Editors behind one interface: ``kn`` (the KN update rule on N_i), ``kn-ft`` (fine-tuning of N_i's value
vectors), ``ft`` (FT+L: L-infinity-bounded fine-tuning of one layer's MLP output projection) and ``rome``
(ROME's rank-one update of it); docs/editing.md, "Editors".

Each editor's ``apply(lm, request)`` is a context manager with the edit in the weights, restored bit-exactly on
exit (also on an exception); :func:`measure_edit` applies one and measures it with the fact's
:class:`~knowloc.editing.evaluate.Baseline` (Rel, Gen, Loc, Avg, dlogPPL, dprob) exactly as the KN trials are.
"""

from __future__ import annotations

import time

from knowloc.editing.editors.base import AppliedEdit, Editor, EditRequest, check_layer
from knowloc.editing.editors.covariance import CovarianceStore, TextSample, model_samples, shared_store
from knowloc.editing.editors.finetune import FineTune
from knowloc.editing.editors.kn import KnUpdate
from knowloc.editing.editors.rome import Rome, rank_one_update
from knowloc.editing.evaluate import Baseline, TrialResult
from knowloc.errors import KnowlocError
from knowloc.models.lm import LanguageModel

EDITORS = ("kn", "kn-ft", "ft", "rome")

__all__ = ["EDITORS", "AppliedEdit", "CovarianceStore", "EditRequest", "Editor", "FineTune", "KnUpdate", "Rome",
           "TextSample", "check_editors", "check_layer", "measure_edit", "model_samples", "rank_one_update",
           "shared_store"]


def check_editors(names) -> list[str]:
    """Distinct editor names from a list or a comma-separated string (one-line error for an unknown one)."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    items = [n for n in items if n]
    unknown = [n for n in items if n not in EDITORS]
    if unknown:
        raise KnowlocError(f"unknown editor {unknown[0]!r}; choose from {', '.join(EDITORS)}")
    if not items or len(set(items)) != len(items):
        raise KnowlocError(f"--editors must be distinct editors from {', '.join(EDITORS)}, got {names!r}")
    return items


def measure_edit(lm: LanguageModel, baseline: Baseline, editor: Editor, index: int, request: EditRequest,
                 locality_gold_tokens=None) -> tuple[TrialResult, AppliedEdit, float]:
    """Apply ``editor``'s edit of ``request`` (the baseline's query ``index`` to ``request.new_object``),
    measure it as an update trial (:meth:`Baseline.evaluate_current`), restore the weights.

    Returns:
        ``(result, applied, seconds)``: the trial's scores, what the editor changed, and the seconds the edit
        took to compute and apply (measurement not included).

    Example:
        >>> base = compute_baseline(lm, prompts, loc_prompts, texts)
        >>> result, applied, s = measure_edit(lm, base, Rome(), 0, EditRequest(prompts[0], "France", "Paris",
        ...                                   "Rome", layer=4))
    """
    if baseline.prompts[index].rstrip() != request.prompt.rstrip():
        raise KnowlocError("the request's prompt is not the baseline's query at that index")
    start = time.perf_counter()
    with editor.apply(lm, request) as applied:
        seconds = time.perf_counter() - start
        result = baseline.evaluate_current(index, request.gold, request.new_object, applied.start,
                                           n_neurons=len(request.neurons) if editor.uses_neurons else 0,
                                           locality_gold_tokens=locality_gold_tokens)
    return result, applied, seconds
