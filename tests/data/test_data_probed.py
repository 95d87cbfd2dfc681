"""What a study stores of a model's probe (ProbedFact / ProbedQuery) and the known-fact rule (is_known)."""

from __future__ import annotations

import itertools
import json

import pytest

from knowloc.data import Fact, make_query
from knowloc.data.filtering import FactProbe, ProbedFact, ProbedQuery, QueryProbe, is_known

FACT = Fact("P36:0", "P36", "France", "Paris")
TEMPLATES = ("The capital of [X] is [Y].", "[X]'s capital is [Y].", "[X] has the capital [Y].")


def _probe(answered: tuple[bool, ...]) -> FactProbe:
    return FactProbe(FACT, [QueryProbe(make_query(FACT, t), 0 if a else 3, 0.5 - k / 10, a, True, gold_token=" Paris",
                                       predictions=[(" Paris", 0.5), (" Lyon", 0.2), (" the", 0.1), (" a", 0.05)])
                            for k, (t, a) in enumerate(zip(TEMPLATES, answered))])


def test_a_probed_fact_is_stored_in_the_json_layout_of_before():
    """The row a study stored before ProbedFact (the runner's dict, built from the probe), byte for byte."""
    probe = _probe((True, False, True))
    before = {"fact_id": probe.fact.id, "relation": probe.fact.relation, "subject": probe.fact.subject,
              "object": probe.fact.object,
              "queries": [{"template": q.query.template, "text": q.query.text, "top1": q.top1, "prob": q.prob,
                           "gold_token": q.gold_token, "predictions": [[t, pr] for t, pr in q.predictions[:3]]}
                          for q in probe.queries]}
    stored = ProbedFact.from_probe(probe)
    assert json.dumps(stored.to_json()) == json.dumps(before)
    assert ProbedFact.from_json(json.loads(json.dumps(before))) == stored


def test_a_probe_stored_before_gold_tokens_and_predictions_reads_with_defaults():
    row = {"fact_id": "f1", "relation": "P1", "subject": "S", "object": "O",
           "queries": [{"template": "[X] t1", "text": "S t1", "top1": True, "prob": 0.4},
                       {"template": "[X] t2", "text": "S t2", "top1": False, "prob": 0.1}]}
    fact = ProbedFact.from_json(row)
    assert fact.queries == (ProbedQuery("[X] t1", "S t1", True, 0.4), ProbedQuery("[X] t2", "S t2", False, 0.1))
    assert fact.queries[0].gold_token == "" and fact.queries[0].predictions == ()
    assert [q.text for q in fact.known_queries()] == ["S t1"]
    assert fact.known(1) and not fact.known(2)


@pytest.mark.parametrize("min_known", [1, 2, 3, 4])
def test_the_known_rule_is_the_one_every_copy_wrote(min_known):
    """is_known is what data/filtering (n_known >= k), the study (sum of top1 >= k; len(answered) >= k) and the CLI
    (n_known >= k) each wrote: the same count of answered queries against the same bound."""
    for answered in itertools.product((True, False), repeat=3):
        probe = _probe(answered)
        stored = ProbedFact.from_probe(probe)
        rows = stored.to_json()["queries"]
        expected = sum(q["top1"] for q in rows) >= min_known
        assert expected == (len([q for q in rows if q["top1"]]) >= min_known) == (probe.n_known >= min_known)
        assert is_known(answered, min_known) == probe.known(min_known) == stored.known(min_known) == expected
