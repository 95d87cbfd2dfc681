"""The one editing path: an editor's edit of a fact's query, applied and measured against the fact's baseline.

Every trial, whatever the editor (a KN erasure or update, CAS's neurons, ``kn-ft``, ``ft``, ``rome``), is an
:class:`~knowloc.editing.editors.base.Editor` with an :class:`~knowloc.editing.editors.base.EditRequest` for the
baseline's query ``index``:

* :func:`measure_edit`: apply the edit to the weights, measure (:meth:`Baseline.measure`, re-running only the
  blocks from the edit's lowest layer up), score (:meth:`Baseline.score`), restore;
* :func:`measure_edits`: many trials of one fact; the editors that offer an activation-space row edit
  (:meth:`Editor.rows`: the KN editors) are measured in batched replays (:meth:`Baseline.measure_rows`), the
  others one by one;
* :func:`measure_sequence`: sequential editing, edit after edit on top of each other, measured as it goes;
* :func:`calibrate`: the smallest step size / bound of a grid at which an editor's edits reach a target Rel on a
  calibration set (how a study sets ``ft``'s bound per model, docs/editing.md).

Equivalence of the batched replay: the MLP output at a position is ``sum_n a_n v_n (+ bias)``. Erasing neuron n
(``v_n <- 0``) is the same as ``a_n <- 0`` in the down-projection's input of the trial's rows; an update
``v_n <- v_n + dv_n`` is the same as adding ``a_n * dv_n`` to the down-projection's output of those rows, ``a_n``
the row's own activation at each position (the deltas ``dv_n`` are computed by the same code as the weight
edit's). Only the order of float sums differs, and the batch is larger, so the results agree with
:func:`measure_edit` up to float rounding. Tolerance in float32: ``dprob*`` and ``dlogppl`` within ``atol=1e-6,
rtol=1e-5``, ``ppl_after`` and ``dppl`` within ``1e-6 x ppl_before`` (tested on tiny GPT-2, LLaMA and Gemma-2;
measured on SmolLM2: at most 4e-6 on dprob, 1e-6 on dlogppl; erasures came out bit-identical); the thresholded
metrics (``success``, rel, gen, loc, avg) are identical unless a probability lies within that rounding of a
threshold. In bf16 / fp16 an update agrees only up to that dtype's rounding (the weight path rounds
``v_n + dv_n`` to it): about 1e-3 absolute on dprob on the tiny models.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from knowloc.editing.editors.base import AppliedEdit, EditRequest, Editor
from knowloc.editing.editors.kn import KnErase, KnUpdate
from knowloc.editing.evaluate import Baseline, TrialResult, check_index
from knowloc.editing.operations import OPERATIONS, check_rule, normalize_neurons, target_tokens
from knowloc.errors import KnowlocError
from knowloc.models.lm import LanguageModel
from knowloc.models.scoring import next_token_distributions

__all__ = ["Calibration", "Trial", "calibrate", "kn_trial", "measure_edit", "measure_edits", "measure_sequence"]

Trial = tuple[Editor, int, EditRequest]  # an editor, the baseline's query it edits, the request


def _prepared(baseline: Baseline, editor: Editor, index: int, request: EditRequest) -> EditRequest:
    """The request checked against the baseline's query; a KN request without activations gets the neurons'
    activations at the query's last position from the baseline (what the sign-aware rules read)."""
    if not isinstance(request, EditRequest):
        raise KnowlocError(f"an edit needs an EditRequest, got {type(request).__name__}")
    baseline.check_query(index, request.prompt)
    if editor.uses_neurons and request.activations is None and baseline.activations is not None:
        pairs = normalize_neurons(baseline.model(), request.neurons)
        acts = baseline.activations[index]
        request = dataclasses.replace(request, activations={(l, i): float(acts[l, i]) for l, i in pairs})
    return request


def _tokens(baseline: Baseline, editor: Editor, request: EditRequest) -> tuple[int, int | None]:
    if editor.operation not in OPERATIONS:
        raise KnowlocError(f"editor {editor.name!r}: operation must be one of {', '.join(OPERATIONS)}")
    request.checked(baseline.model(), operation=editor.operation)
    return target_tokens(baseline.model(), editor.operation, request.gold, request.new_object)


def _n_neurons(baseline: Baseline, editor: Editor, request: EditRequest) -> int:
    return len(normalize_neurons(baseline.model(), request.neurons)) if editor.uses_neurons else 0


def measure_edit(baseline: Baseline, editor: Editor, index: int, request: EditRequest,
                 locality_gold_tokens: Sequence[int] | None = None) -> tuple[TrialResult, AppliedEdit, float]:
    """Apply ``editor``'s edit of ``request`` (the baseline's query ``index``) to the weights, measure it, restore
    the weights (bit-exactly, also on an exception).

    Args:
        baseline: the fact's :class:`Baseline` (its model is the one edited).
        editor: any editor; request: its request for query ``index`` (``request.prompt`` must be that query).
        locality_gold_tokens: optional, one token id per locality prompt; only feeds ``dprob_locality``.

    Returns:
        ``(result, applied, seconds)``: the trial's scores (:class:`TrialResult`), what the editor changed, and the
        seconds the edit took to compute and apply (measurement not included).

    Example:
        >>> base = compute_baseline(lm, prompts, loc_prompts, texts)
        >>> result, applied, s = measure_edit(base, Rome(), 0, EditRequest(prompts[0], "France", "Paris", "Rome",
        ...                                   layers=4))
        >>> result.rel
    """
    lm = baseline.model()
    request = _prepared(baseline, editor, index, request)
    old, new = _tokens(baseline, editor, request)
    locality_gold_tokens = baseline.locality_tokens(locality_gold_tokens)
    start = time.perf_counter()
    with editor.apply(lm, request) as applied:
        seconds = time.perf_counter() - start
        # blocks below the lowest edited layer are untouched: restart there (exact, see models.replay)
        measured = baseline.measure(applied.start)
    result = baseline.score(measured, index, editor.operation, old, new, _n_neurons(baseline, editor, request),
                            locality_gold_tokens)
    return result, applied, seconds


def measure_edits(baseline: Baseline, trials: Sequence[Trial], locality_gold_tokens: Sequence[int] | None = None,
                  *, max_rows: int = 256, schedule: str = "join") -> list[TrialResult]:
    """``[measure_edit(baseline, *t, locality_gold_tokens)[0] for t in trials]``, with the trials of editors that
    offer a row edit (the KN editors) measured in batched replays (:meth:`Baseline.measure_rows`; equal up to
    float rounding, module docstring) and the others one by one.

    Every trial is checked before anything runs; a baseline without recorded batches measures every trial on
    the weights. The model is unchanged afterwards, also when an exception is raised.

    Args:
        trials: ``(editor, index, request)`` triples of this baseline's fact (any mix of editors, rules, lambdas).
        locality_gold_tokens: as in :func:`measure_edit`.
        max_rows, schedule: the replay's chunking (:meth:`Baseline.measure_rows`).

    Returns:
        one :class:`TrialResult` per trial, in order.

    Example:
        >>> results = measure_edits(base, [kn_trial(prompts, 0, "Paris", [(12, 345)]),
        ...                                kn_trial(prompts, 1, "Paris", [(20, 7)], "update", "Rome")])
    """
    lm = baseline.model()
    locality_gold_tokens = baseline.locality_tokens(locality_gold_tokens)
    prepared = []
    for editor, index, request in trials:  # every trial checked before anything runs
        request = _prepared(baseline, editor, index, request)
        prepared.append((editor, index, request, _tokens(baseline, editor, request)))
    rows = [(k, editor.rows(lm, request)) for k, (editor, _, request, _) in enumerate(prepared)]
    batched = [(k, row) for k, row in rows if row is not None] if baseline.replayable() else []
    measured: dict[int, tuple] = {}
    if batched:
        replayed = baseline.measure_rows([row for _, row in batched], max_rows=max_rows, schedule=schedule)
        measured = {k: m for (k, _), m in zip(batched, replayed)}
    out = []
    for k, (editor, index, request, (old, new)) in enumerate(prepared):
        if k not in measured:
            out.append(measure_edit(baseline, editor, index, request, locality_gold_tokens)[0])
            continue
        out.append(baseline.score(measured[k], index, editor.operation, old, new,
                                  _n_neurons(baseline, editor, request), locality_gold_tokens))
    return out


def measure_sequence(baseline: Baseline, editor: Editor, trials: Sequence[tuple[int, EditRequest]],
                     locality_gold_tokens: Sequence[int] | None = None) -> list[TrialResult]:
    """Sequential editing (:meth:`Editor.sequential`): the requests edited one after another, each on the model
    the ones before left, the k-th result measured with the first k + 1 edits in the weights (scored for the k-th
    request's query); every edit undone at the end.

    Returns:
        one :class:`TrialResult` per request, in order.

    Example:
        >>> results = measure_sequence(base, Rome(), [(0, request_a), (1, request_b)])
        >>> results[-1].rel  # the last edit, with both in the weights
    """
    locality_gold_tokens = baseline.locality_tokens(locality_gold_tokens)
    prepared = [(index, _prepared(baseline, editor, index, request)) for index, request in trials]
    tokens = [_tokens(baseline, editor, request) for _, request in prepared]

    def measured(k: int, applied: AppliedEdit) -> TrialResult:
        index, request = prepared[k]
        return baseline.score(baseline.measure(applied.start), index, editor.operation, *tokens[k],
                              _n_neurons(baseline, editor, request), locality_gold_tokens)
    return editor.sequential(baseline.model(), [request for _, request in prepared], measured)


def kn_trial(prompts: Sequence[str], index: int, gold: str, neurons, operation: str = "erase",
             new_object: str | None = None, lambda1: float = 1.0, lambda2: float = 8.0, update_rule: str = "dai",
             subject: str = "") -> Trial:
    """A KN trial: erase (``kn-erase``) or update (``kn`` with ``update_rule`` and the lambdas) of ``neurons``
    (``[(layer, index), ...]``) for query ``index`` of ``prompts`` (the baseline's), as an ``(editor, index,
    request)`` triple for :func:`measure_edit` / :func:`measure_edits`.

    Example:
        >>> measure_edit(base, *kn_trial(prompts, 0, "Paris", [(12, 345)], "update", "Rome", lambda2=2.0,
        ...                              update_rule="calibrated"))[0].rel
    """
    if isinstance(prompts, str) or not prompts:
        raise KnowlocError("a trial needs a non-empty list of prompts")
    check_index(index, len(prompts))
    if operation not in OPERATIONS:
        raise KnowlocError(f"operation must be one of {', '.join(OPERATIONS)}, not {operation!r}")
    if not isinstance(gold, str) or not gold.strip():
        raise KnowlocError("empty gold object")
    if operation == "update" and (not isinstance(new_object, str) or not new_object.strip()):
        raise KnowlocError("an update trial needs a non-empty new_object")
    if isinstance(neurons, dict):
        neurons = [(layer, i) for layer, indices in neurons.items() for i in indices]
    editor: Editor = KnErase() if operation == "erase" else KnUpdate(check_rule(update_rule), lambda1, lambda2)
    request = EditRequest(prompts[index], subject, gold, new_object if operation == "update" else None,
                          neurons=tuple(neurons))
    return editor, index, request


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` chose: ``value`` and the Rel measured at each value it tried (``rel``, in grid
    order); ``reached``: whether ``value`` reaches the target (False: no value does, the largest is chosen)."""

    value: float
    rel: dict[float, float]
    reached: bool

    def rows(self) -> list[dict]:
        """One row per tried value: ``value, rel, chosen``."""
        return [{"value": v, "rel": r, "chosen": v == self.value} for v, r in self.rel.items()]


def calibrate(lm: LanguageModel, requests: Sequence[EditRequest], editor_at: Callable[[float], Editor],
              grid: Sequence[float], target: float = 0.9) -> Calibration:
    """The smallest value of ``grid`` (ascending) at which ``editor_at(value)`` reaches Rel >= ``target`` on
    ``requests``: Rel is the share of requests, each edited alone, after which the new object's first token is more
    probable than the old one's on the request's prompt (the update rule). Rel grows with a step size or bound, so
    the grid is bisected (about log2(len(grid)) values measured); when no value reaches the target the largest is
    chosen and ``reached`` is False.

    Args:
        lm: the model (restored after each edit); requests: updates with a new object; editor_at: the editor at a
            value (e.g. ``lambda b: FineTune(bound=b)``); grid: candidate values, ascending; target: the Rel to reach.

    Returns:
        A :class:`Calibration`.

    Example:
        >>> calibrate(lm, requests, lambda b: FineTune(bound=b), (1e-3, 1e-2, 1e-1)).value
        0.01
    """
    grid = [float(v) for v in grid]
    if not grid or grid != sorted(set(grid)):
        raise KnowlocError(f"a calibration grid must be distinct values in ascending order, got {grid}")
    if not requests:
        raise KnowlocError("a calibration needs at least one request")
    if not 0 < target <= 1:
        raise KnowlocError(f"the calibration target must be in (0, 1], got {target!r}")
    rel: dict[float, float] = {}

    def measured(value: float) -> float:
        editor, hits = editor_at(value), 0
        for request in requests:
            new, gold = (lm.first_target_token(o) for o in (request.new_object, request.gold))
            with editor.apply(lm, request):
                probs = next_token_distributions(lm, [request.prompt], top_k=1)[0].probs
            hits += bool(probs[new] > probs[gold])
        rel[value] = hits / len(requests)
        return rel[value]
    lo, hi = 0, len(grid) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if measured(grid[mid]) >= target:
            hi = mid
        else:
            lo = mid + 1
    reached = (rel[grid[lo]] if grid[lo] in rel else measured(grid[lo])) >= target
    return Calibration(grid[lo], dict(sorted(rel.items())), reached)
