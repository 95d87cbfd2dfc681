"""Which facts a model knows: the foundation filter of every study.

A query is answered when the argmax next token after its prompt is the first token of " " + object
(optionally with the argmax restricted to the first tokens of the relation's objects, as LAMA does).
A fact enters a study when at least `min_known` of its neighbor queries are answered (default 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from knowloc.data.types import Fact, Query
from knowloc.models.lm import LanguageModel
from knowloc.models.scoring import next_token_distributions


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
    return [(p.fact, [q.query for q in p.queries]) for p in probes if p.n_known >= min_known]
