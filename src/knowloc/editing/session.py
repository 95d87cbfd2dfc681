"""One fact's editing trials, each distinct edited model measured once (docs/editing.md).

:class:`EditSession` holds what every trial of a fact shares (the fact's prompts, its locality prompts and
neutral texts, the new object of an update and the unedited baseline) and memoizes each distinct edit's result
by (editor settings, request).
:func:`locality_sample` and :func:`choose_new_object` are the seeded choices a study makes for it.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Sequence

from knowloc.editing.editors.base import EditRequest, Editor
from knowloc.editing.evaluate import compute_baseline
from knowloc.editing.trials import Trial, measure_edit, measure_edits
from knowloc.models.lm import LanguageModel

__all__ = ["EditSession", "choose_new_object", "locality_sample"]


def locality_sample(pool: Sequence[tuple[str, str]], n: int, seed: int) -> tuple[list[str], list[str]]:
    """A seeded sample of ``n`` (prompt, object) pairs (all of them when fewer): (prompts, objects)."""
    chosen = random.Random(seed).sample(list(pool), min(n, len(pool)))
    return [p for p, _ in chosen], [o for _, o in chosen]


def choose_new_object(lm: LanguageModel, gold: str, objects: Sequence[str], seed: int) -> str | None:
    """A seeded choice among ``objects`` (sorted, distinct) other than ``gold`` whose first token differs from
    gold's; None when there is none."""
    first = lm.first_target_token(gold)
    candidates = [o for o in sorted(set(objects)) if o != gold and lm.first_target_token(o) != first]
    return random.Random(seed).choice(candidates) if candidates else None


class EditSession:
    """One fact's editing trials, each distinct edited model measured once.

    Each trial is an editor and a request for one of the fact's queries (:meth:`request`); a session memoizes
    the measured result by :meth:`Editor.model_key <knowloc.editing.editors.base.Editor.model_key>`: a KN edit
    gives the same model whichever query chose it (an erasure or a ``dai`` update: the same neurons; a sign-aware
    update: the same neurons and the same activation signs on the edited query), so it is applied and measured
    once and the per-query scores are read off it: Rel = success on q_i, Gen = mean success on the other queries
    (or on held-out ones).

    Args:
        lm: the model; prompts: the fact's neighbor queries; gold: its object; new_object: the update target
            (None: updates are skipped); locality_prompts / locality_objects: unrelated answered queries;
        texts: neutral sentences for dlogPPL; subject: the fact's subject (what ``rome`` locates).

    Example:
        >>> session = EditSession(lm, prompts, "Paris", "Rome", loc_prompts, loc_objects, texts)
        >>> session.measure(KnErase(), 0, [(12, 345), (20, 7)])["rel"]
    """

    def __init__(self, lm: LanguageModel, prompts: Sequence[str], gold: str, new_object: str | None,
                 locality_prompts: Sequence[str], locality_objects: Sequence[str], texts: Sequence[str],
                 subject: str = ""):
        self.lm, self.gold, self.target, self.subject = lm, gold, new_object, subject
        self.prompts = list(prompts)
        self.texts = list(texts)
        self.loc_prompts = list(locality_prompts)
        self.loc_gold = [lm.first_target_token(o) for o in locality_objects]
        self.baseline = compute_baseline(lm, self.prompts, self.loc_prompts, self.texts)
        self._results: dict = {}

    @property
    def n_edits(self) -> int:
        """How many distinct edited models the session has measured."""
        return len(self._results)

    def request(self, index: int, neurons=(), layers=()) -> EditRequest:
        """The request that query ``index`` answer the session's new object (``neurons``: its KN set, with their
        activations on the query from the baseline, what the sign-aware update rules read; ``layers``: an
        editor's chosen layers)."""
        neurons = tuple(map(tuple, neurons))
        acts = self.baseline.activations
        try:
            read = None if acts is None else {n: float(acts[index][n]) for n in neurons}
        except (IndexError, TypeError):  # a neuron the model does not have: the edit's own check names it
            read = None
        return EditRequest(self.prompts[index], self.subject, self.gold, self.target, layers=layers, neurons=neurons,
                           activations=read)

    def measure(self, editor: Editor, index: int, neurons=(), layers=(),
                generalize_on: list[int] | None = None) -> dict | None:
        """Scores of ``editor``'s edit of query ``index`` (:meth:`request` with ``neurons`` / ``layers``); None
        when the edit cannot be made (an editor of neurons and an empty set, or an update without a new object).
        Gen is measured on ``generalize_on`` (default: every other query).

        Returns:
            ``{rel, gen, loc, avg, dppl, dlogppl, dprob_self, dprob_neighbors}``
            (:meth:`~knowloc.editing.evaluate.TrialResult.as_row`).
        """
        edit = self._edit(editor, index, neurons, layers)
        if edit is None:
            return None
        key, trial = edit
        if key not in self._results:
            self._results[key] = measure_edit(self.baseline, *trial, self.loc_gold)[0]
        return self._results[key].as_row(index, generalize_on)

    def prefetch(self, trials: Iterable[tuple[Editor, int, Sequence]]) -> int:
        """Measure the distinct edits of ``trials`` (``(editor, index, neurons)``) that are not cached yet, in
        batched replays where the editor offers them (:func:`~knowloc.editing.trials.measure_edits`), so that
        :meth:`measure` of each of them is a cache hit (equal to the one-trial measurement up to float rounding).
        Trials :meth:`measure` would answer with None are skipped. Returns the number of edits measured.

        Example:
            >>> trials = [(editor, i, kn[i]) for i in kn for editor in (KnErase(), KnUpdate())]
            >>> session.prefetch(trials)
            >>> rows = [session.measure(*t) for t in trials]  # cache hits
        """
        missing: dict = {}
        for editor, index, neurons in trials:
            edit = self._edit(editor, index, neurons, ())
            if edit is not None and edit[0] not in self._results and edit[0] not in missing:
                missing[edit[0]] = edit[1]
        if missing:
            results = measure_edits(self.baseline, list(missing.values()), self.loc_gold)
            self._results.update(zip(missing, results))
        return len(missing)

    def measure_many(self, trials: Sequence[tuple[Editor, int, Sequence]],
                     generalize_on: Sequence[list[int] | None] | None = None) -> list[dict | None]:
        """:meth:`measure` of each ``(editor, index, neurons)`` trial (Gen on ``generalize_on[k]``, default every
        other query), the distinct edits measured first in batched replays (:meth:`prefetch`).

        Example:
            >>> scores = session.measure_many([(KnErase(), i, kn[i]) for i in kn])
        """
        trials = list(trials)
        self.prefetch(trials)
        on = list(generalize_on) if generalize_on is not None else [None] * len(trials)
        return [self.measure(*trial, generalize_on=g) for trial, g in zip(trials, on)]

    def _edit(self, editor: Editor, index: int, neurons, layers) -> tuple[Hashable, Trial] | None:
        """(the edited model's key, the trial) of a request; None when the edit cannot be made."""
        if (editor.uses_neurons and not neurons) or (editor.operation == "update" and self.target is None):
            return None
        request = self.request(index, neurons, layers)  # with the neurons' activations (the key reads their signs)
        return editor.model_key(self.lm, request), (editor, index, request)
