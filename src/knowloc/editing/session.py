"""One fact's editing trials, each distinct edit applied and measured once (docs/editing.md).

:class:`EditSession` holds what every trial of a fact shares (the fact's prompts, its locality prompts and
neutral texts, the new object of an update and the unedited baseline) and caches each distinct edit's result.
:func:`locality_sample` and :func:`choose_new_object` are the seeded choices a study makes for it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence

from knowloc.editing.evaluate import EditTrial, compute_baseline
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
    """One fact's editing trials.

    An edit gives the same model whichever query it was chosen for (an erase or a ``dai`` update: the same
    neurons; a sign-aware update: the same neurons and the same activation signs on the edited query), so each
    distinct edit is applied and measured once and the per-query scores are read off it: Rel = success on q_i,
    Gen = mean success on the other queries (or on held-out ones).

    Args:
        lm: the model; prompts: the fact's neighbor queries; gold: its object; new_object: the update target
            (None: updates are skipped); locality_prompts / locality_objects: unrelated answered queries;
        texts: neutral sentences for dlogPPL; lambda1, lambda2, rule: the default update.

    Example:
        >>> session = EditSession(lm, prompts, "Paris", "Rome", loc_prompts, loc_objects, texts)
        >>> session.measure("erase", [(12, 345), (20, 7)], index=0)["rel"]
    """

    def __init__(self, lm: LanguageModel, prompts: Sequence[str], gold: str, new_object: str | None,
                 locality_prompts: Sequence[str], locality_objects: Sequence[str], texts: Sequence[str],
                 lambda1: float = 1.0, lambda2: float = 8.0, rule: str = "dai"):
        self.lm, self.gold, self.target = lm, gold, new_object
        self.prompts = list(prompts)
        self.texts = list(texts)
        self.loc_prompts = list(locality_prompts)
        self.loc_gold = [lm.first_target_token(o) for o in locality_objects]
        self.lambda1, self.lambda2, self.rule = lambda1, lambda2, rule
        self.baseline = compute_baseline(lm, self.prompts, self.loc_prompts, self.texts)
        self._results: dict = {}

    def measure(self, operation: str, neurons: list, index: int, generalize_on: list[int] | None = None,
                rule: str | None = None, lambda2: float | None = None, lambda1: float | None = None) -> dict | None:
        """Scores of editing ``neurons`` for query ``index``; None when the edit cannot be made (empty set, or no
        new object to update to). Gen is measured on ``generalize_on`` (default: every other query). Updates use
        ``rule``, ``lambda1`` and ``lambda2`` (default: the session's).

        Returns:
            ``{rel, gen, loc, avg, dppl, dlogppl, dprob_self, dprob_neighbors}``.
        """
        edit = self._edit(operation, neurons, index, rule, lambda2, lambda1)
        if edit is None:
            return None
        key, trial = edit
        if key not in self._results:
            self._results[key] = self.baseline.evaluate(trial(), self.loc_gold)
        return self._results[key].as_row(index, generalize_on)

    def prefetch(self, requests: Iterable[Mapping]) -> int:
        """Measure the distinct edits of ``requests`` that are not cached yet in batched replays
        (:meth:`Baseline.evaluate_many`), so that ``measure(**request)`` for each of them is a cache hit.

        Each request holds :meth:`measure`'s keyword arguments (``operation``, ``neurons``, ``index`` and
        optionally ``rule``, ``lambda2``, ``lambda1``; ``generalize_on`` is accepted and does not matter here).
        Requests :meth:`measure` would answer with None are skipped. ``measure`` is unchanged: it reads the
        cached result, which equals the one-trial measurement up to float rounding (see ``evaluate_many``).
        Returns the number of edits measured.

        Example:
            >>> requests = [{"operation": op, "neurons": kn[i], "index": i} for i in kn for op in OPERATIONS]
            >>> session.prefetch(requests)
            >>> rows = [session.measure(**r) for r in requests]  # cache hits
        """
        missing: dict = {}
        for request in requests:
            args = {k: v for k, v in request.items() if k != "generalize_on"}
            edit = self._edit(**args)
            if edit is not None and edit[0] not in self._results and edit[0] not in missing:
                missing[edit[0]] = edit[1]()
        if missing:
            results = self.baseline.evaluate_many(list(missing.values()), self.loc_gold)
            self._results.update(zip(missing, results))
        return len(missing)

    def _edit(self, operation: str, neurons: list, index: int, rule: str | None = None,
              lambda2: float | None = None, lambda1: float | None = None
              ) -> tuple[tuple, Callable[[], EditTrial]] | None:
        """(cache key, the trial's constructor) of a measure request; None when the edit cannot be made. The key
        identifies the edited model: the operation and neurons, and for an update the rule, lambdas and (for the
        sign-aware rules) the activation signs on the edited query."""
        if not neurons or (operation == "update" and self.target is None):
            return None
        rule = rule or self.rule
        lambda2 = self.lambda2 if lambda2 is None else lambda2
        lambda1 = self.lambda1 if lambda1 is None else lambda1
        pairs = tuple(sorted(map(tuple, neurons)))
        key: tuple = (operation, pairs)
        if operation == "update":
            acts = self.baseline.activations[index]
            signs = tuple(bool(acts[l, i] >= 0) for l, i in pairs) if rule != "dai" else None
            key += (rule, lambda1, lambda2, signs)

        def trial() -> EditTrial:
            return EditTrial(prompts=self.prompts, index=index, gold=self.gold, neurons=neurons,
                             operation=operation, new_object=self.target, lambda1=lambda1, lambda2=lambda2,
                             update_rule=rule)
        return key, trial
