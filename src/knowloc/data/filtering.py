"""Which facts a model knows: the foundation filter of every study.

A query is answered when the argmax next token after its prompt is the first token of " " + object
(optionally with the argmax restricted to the first tokens of the relation's objects, as LAMA does).
A fact enters a study when at least `min_known` of its neighbor queries are answered (default 2): the rule is
written once, :func:`is_known`, and used by the study, its report and ``knowloc probe``.

A study stores each fact's probe as a :class:`ProbedFact` (its :class:`ProbedQuery` per paraphrase: the answer,
the gold token's probability, the model's top-3 next tokens), in the JSON layout ``ProbedFact.to_json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from knowloc.data.types import Fact, Query
from knowloc.models.lm import LanguageModel
from knowloc.models.scoring import next_token_distributions


def is_known(answered: Iterable[bool], min_known: int) -> bool:
    """The known-fact rule: a fact is known when at least `min_known` of its neighbor queries are answered.

    Args:
        answered: per neighbor query, whether the model answers it (top-1: the argmax next token is the gold first
            token).
        min_known: the least number of answered queries (``--min-known``, default 2).

    Returns:
        ``#{answered queries} >= min_known``.

    Example:
        >>> is_known([True, False, True], 2), is_known([True, False, False], 2)
        (True, False)
    """
    return sum(1 for a in answered if a) >= min_known


@dataclass
class QueryProbe:
    """One query's probe: the gold first token's rank and probability, and what the model predicts instead.

    rank: 0-based rank of the gold first token (among all tokens, or among the relation's candidates);
    prob: its probability; gold_token: the scored token (the first token of " " + object, e.g. ' y' for "yen");
    predictions: the model's top next tokens over the whole vocabulary, ``[(token text, prob), ...]``.
    """

    query: Query
    rank: int
    prob: float
    top1: bool
    top5: bool
    gold_token: str = ""
    predictions: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class FactProbe:
    fact: Fact
    queries: list[QueryProbe] = field(default_factory=list)

    @property
    def n_known(self) -> int:
        return sum(q.top1 for q in self.queries)

    def known(self, min_known: int) -> bool:
        """Whether the model knows the fact (:func:`is_known` of its queries)."""
        return is_known((q.top1 for q in self.queries), min_known)


@dataclass(frozen=True)
class ProbedQuery:
    """One neighbor query of a :class:`ProbedFact`, as a study stores it.

    template, text: the query's template and prompt; top1: whether the model answers it; prob: the gold first
    token's probability; gold_token: that token's text (e.g. ``' P'``; ``""`` in stores written before it was
    kept); predictions: the model's top next tokens ``((token text, prob), ...)`` (a study keeps 3; empty in
    stores written before they were kept).
    """

    template: str
    text: str
    top1: bool
    prob: float
    gold_token: str = ""
    predictions: tuple[tuple[str, float], ...] = ()

    def to_json(self) -> dict:
        """The stored JSON object: ``{"template", "text", "top1", "prob", "gold_token", "predictions": [[token,
        prob], ...]}``."""
        return {"template": self.template, "text": self.text, "top1": self.top1, "prob": self.prob,
                "gold_token": self.gold_token, "predictions": [[t, pr] for t, pr in self.predictions]}

    @classmethod
    def from_json(cls, row: Mapping) -> "ProbedQuery":
        """A query from its stored JSON object (:meth:`to_json`; keys a store predates get their defaults)."""
        return cls(row["template"], row["text"], row["top1"], row.get("prob", math.nan), row.get("gold_token", ""),
                   tuple((t, pr) for t, pr in row.get("predictions") or ()))


@dataclass(frozen=True)
class ProbedFact:
    """A fact and the model's answers to its neighbor queries (in template order), as a study stores it.

    Example:
        >>> fact = ProbedFact.from_json({"fact_id": "P36:0", "relation": "P36", "subject": "France",
        ...     "object": "Paris", "queries": [{"template": "[X]'s capital is [Y].", "text": "France's capital is",
        ...     "top1": True, "prob": 0.4}, {"template": "[X] has the capital [Y].", "text": "France has the capital",
        ...     "top1": False, "prob": 0.1}]})
        >>> fact.known(2), [q.text for q in fact.known_queries()]
        (False, ["France's capital is"])
    """

    fact_id: str
    relation: str
    subject: str
    object: str
    queries: tuple[ProbedQuery, ...] = ()

    def known(self, min_known: int) -> bool:
        """Whether the model knows the fact (:func:`is_known`: at least `min_known` answered queries)."""
        return is_known((q.top1 for q in self.queries), min_known)

    def known_queries(self) -> tuple[ProbedQuery, ...]:
        """The queries the model answers (top-1), in template order."""
        return tuple(q for q in self.queries if q.top1)

    def to_json(self) -> dict:
        """``{"fact_id", "relation", "subject", "object", "queries": [ProbedQuery.to_json(), ...]}``."""
        return {"fact_id": self.fact_id, "relation": self.relation, "subject": self.subject, "object": self.object,
                "queries": [q.to_json() for q in self.queries]}

    @classmethod
    def from_json(cls, row: Mapping) -> "ProbedFact":
        """A probed fact from its JSON form (:meth:`to_json`)."""
        return cls(row["fact_id"], row["relation"], row["subject"], row["object"],
                   tuple(ProbedQuery.from_json(q) for q in row["queries"]))

    @classmethod
    def from_probe(cls, probe: FactProbe, predictions: int = 3) -> "ProbedFact":
        """What a study stores of a :class:`FactProbe`: each query's answer, gold token and probability, and
        its first `predictions` top next tokens."""
        fact = probe.fact
        return cls(fact.id, fact.relation, fact.subject, fact.object, tuple(
            ProbedQuery(q.query.template, q.query.text, q.top1, q.prob, q.gold_token,
                        tuple((t, pr) for t, pr in q.predictions[:predictions])) for q in probe.queries))


def probe_facts(lm: LanguageModel, items: list[tuple[Fact, list[Query]]], *, candidates: bool = False,
                batch_size: int = 32, progress: bool = True) -> list[FactProbe]:
    """Rank of each query's gold first token (among all tokens, or among the relation's candidates)."""
    queries = [q for _, qs in items for q in qs]
    gold = {q.fact.object: lm.first_target_token(q.fact.object) for q in queries}
    allowed: dict[str, torch.Tensor] = {}
    if candidates:
        for fact, _ in items:
            allowed.setdefault(fact.relation, set()).add(gold[fact.object])
        # on the CPU: they index the CPU probabilities of next_token_distributions
        allowed = {rel: torch.tensor(sorted(ids)) for rel, ids in allowed.items()}  # cpu
    results: list[QueryProbe] = []
    for start in tqdm(range(0, len(queries), batch_size), desc="probing", unit="batch", disable=not progress):
        batch = queries[start:start + batch_size]
        # ranks are taken batch by batch: keeping every full distribution would grow memory with the fact count
        dists = next_token_distributions(lm, [q.text for q in batch], batch_size=batch_size)
        for query, dist in zip(batch, dists):
            probs = dist.probs
            if candidates:
                masked = torch.zeros_like(probs)
                ids = allowed[query.fact.relation]
                masked[ids] = probs[ids]
                probs = masked
            target = gold[query.fact.object]
            rank = int((probs > probs[target]).sum())
            results.append(QueryProbe(query, rank, float(dist.probs[target]), rank == 0, rank < 5,
                                      gold_token=lm.tokenizer.decode([target]),
                                      predictions=[(lm.tokenizer.decode([i]), float(dist.probs[i]))
                                                   for i in dist.top_ids]))
    by_fact: dict[str, FactProbe] = {}
    for fact, _ in items:
        by_fact[fact.id] = FactProbe(fact)
    for result in results:
        by_fact[result.query.fact.id].queries.append(result)
    return list(by_fact.values())


def known_facts(probes: list[FactProbe], min_known: int = 2) -> list[tuple[Fact, list[Query]]]:
    """Facts answered in at least `min_known` neighbor queries, with ALL their queries (answered or not)."""
    return [(p.fact, [q.query for q in p.queries]) for p in probes if p.known(min_known)]
