"""The facts a study works on, as read back from the store."""

from __future__ import annotations

import random
from dataclasses import dataclass

from knowloc.data.filtering import ProbedFact


@dataclass(frozen=True)
class StudyFact:
    """A known fact and its neighbor queries: the paraphrases the model answers (top-1), in template order."""

    fact_id: str
    relation: str
    subject: str
    object: str
    prompts: tuple[str, ...]
    templates: tuple[str, ...]


def known_facts(probes: list[ProbedFact], min_known: int) -> list[StudyFact]:
    """Facts answered (top-1) in at least `min_known` paraphrases (:meth:`ProbedFact.known`), in file order."""
    known = []
    for probe in probes:
        if probe.known(min_known):
            answered = probe.known_queries()
            known.append(StudyFact(probe.fact_id, probe.relation, probe.subject, probe.object,
                                   tuple(q.text for q in answered), tuple(q.template for q in answered)))
    return known


def seeded_order(facts: list[StudyFact], seed: int) -> list[StudyFact]:
    """The facts in the study's one seeded permutation: `--facts N` studies its first N."""
    order = list(range(len(facts)))
    random.Random(seed).shuffle(order)
    return [facts[i] for i in order]


def select_facts(probes: list[ProbedFact], min_known: int, limit: int | None, seed: int) -> list[StudyFact]:
    """Facts answered in at least `min_known` paraphrases; a seeded sample of `limit` of them (file order kept)."""
    known = known_facts(probes, min_known)
    if limit is not None and limit < len(known):
        # a prefix of one seeded permutation: a larger limit studies a superset (and reuses stored work)
        keep = {f.fact_id for f in seeded_order(known, seed)[:limit]}
        known = [fact for fact in known if fact.fact_id in keep]
    return known
