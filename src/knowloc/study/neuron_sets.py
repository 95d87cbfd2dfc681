"""The neuron sets every experiment reads: the specificity profile, the filtered KN sets, the K_C / K_I groups.

One :class:`NeuronSets` per study context (``ctx.neurons``) owns these derived views of the store and caches
them; nothing else keeps a copy, so the filter and the split are decided in one place. It is a stage of its own:
it reads the config's values, the store's rows and the probed and studied facts it is given, and never the study
context (which holds it) nor a model (the reference items' attributions are study units,
:mod:`knowloc.study.units`).

**Specificity profile.** Two reference sets, both independent of any studied fact's own queries, are attributed
with the study's method, steps and KN threshold (:mod:`knowloc.analysis.specificity` has the formulas):

* **neutral prompts**: the model's own top-1 next token after each of `--specificity-prompts` fact-free
  prompts (``knowloc/resources/specificity_prompts.txt``);
* **reference queries** (`--specificity-reference shipped`, the default): the first `--specificity-queries` of
  each relation of knowloc's own query set (``knowloc/resources/specificity_queries.jsonl``: 29 relations,
  written for knowloc, none of the builtin set's), the model's own next token as target. The set is the same
  whatever the study's facts, so a one-relation study is filtered as a seven-relation one; a reference query
  whose text equals a studied query is left out. (`--specificity-reference study`, the behaviour of studies
  stored before the shipped set: per studied relation, `--specificity-queries` seeded known facts, one answered
  paraphrase each, attributed for their gold object.)

For a fact of relation R, a neuron is *non-specific* when its KN frequency exceeds `--specificity F` on the
neutral prompts or on the reference queries that are not R's own: R's own are those of a relation with R's id
or with an answer type of R (:func:`knowloc.analysis.excluded_reference_relations`: e.g. no query answered by a
language counts for a relation whose objects are languages). The fact's own queries never count: it is a
"knowledge neuron" of anything, or of every query format, not of this fact. Non-specific
neurons are removed from every neuron set the study uses, after it is selected by its usual rule (N_i, N_g,
N_cap, CAS, the query-mapping sets, the attention experiment's KNs). `--specificity off` (F = 1) removes
nothing: the paper's behaviour; the profile is then not computed (no reference attribution is a study unit).

Every experiment reads its neuron sets through :meth:`NeuronSets.kn_lists` / :meth:`NeuronSets.kn_sets`, or
filters a selection it makes from :meth:`NeuronSets.score_stack` with :meth:`NeuronSets.remove_nonspecific`.

**Groups.** A fact's CS1, CS2 and CS_p come from the KN sets of its neighbor queries (the sets the study uses,
i.e. with the filter applied; docs/analysis.md). Its group is K_C when the selected score (`--cs-score`) is at
least the study's `--split` threshold (static `--tau`, or Otsu's threshold over the model's and method's facts),
else K_I. A fact has no score, and so no group, when it has fewer than two attributed queries, or when every one
of its KN sets is empty (e.g. `--threshold 1`, or the filter removed them all): the CS of empty sets is 0 by
definition, which would count the fact as K_I without any neuron to disagree on. :meth:`NeuronSets.unscored`
names these facts; the summaries count them instead of counting them as evidence.
"""

from __future__ import annotations

import functools
import random
from typing import Any, Callable

import numpy as np
import torch

from knowloc.analysis import (K_C, K_I, KnSet, Neuron, activation_ratio, consistency_scores,
                              excluded_reference_relations, kn_frequency, nonspecific_neurons, normalized_prompt,
                              otsu_threshold)
from knowloc.data import load_answer_types, load_specificity_prompts, load_specificity_queries
from knowloc.data.filtering import ProbedFact
from knowloc.study.config import StudyConfig
from knowloc.study.facts import StudyFact
from knowloc.study.store import Store

ONE_QUERY, EMPTY_KN = "one_query", "empty_kn"  # why a studied fact has no consistency score (NeuronSets.unscored)


def _cached(method: Callable) -> Callable:
    """Cache a method's result per argument tuple on its instance (not on the class: a context and its models
    are released with it)."""
    @functools.wraps(method)
    def wrapper(self: "NeuronSets", *args: Any) -> Any:
        key = (method.__name__, *args)
        if key not in self._cache:
            self._cache[key] = method(self, *args)
        return self._cache[key]
    return wrapper


class NeuronSets:
    """The derived views of one study context (see the module docstring), each computed once.

    Args:
        config: the study's settings (specificity, threshold, p, cs_score, split, tau, min_known, seed).
        store: the results store the KN lists, attribution maps and reference attributions are read from.
        probes: {model: its probed facts}, facts: {model: its studied facts}; read when a view is first asked
            for (the context fills them per model, :meth:`knowloc.study.context.StudyContext.load_facts`).

    Example:
        >>> kn = ctx.neurons.kn_lists("smollm2-135m", "ig", "P36-0")   # {query: [(layer, index), ...]}
        >>> ctx.neurons.groups("smollm2-135m", "ig")["P36-0"]
        'K_I'
    """

    def __init__(self, config: StudyConfig, store: Store, probes: dict[str, list[ProbedFact]],
                 facts: dict[str, list[StudyFact]]):
        self.config, self.store, self.probes, self.facts = config, store, probes, facts
        self._cache: dict[tuple, Any] = {}

    # --- the specificity profile -------------------------------------------------------------------------------

    @_cached
    def reference_items(self, model: str) -> list[dict]:
        """The reference set of a model: the neutral prompts, then the reference queries (see the module
        docstring); each ``{"prompt", "target" (None: the model's own next token), "relation" (None: neutral)}``.
        Deterministic from the shipped files (shipped) or from the probe and the seed (study)."""
        cfg = self.config
        items = [{"prompt": p, "target": None, "relation": None}
                 for p in load_specificity_prompts()[: cfg.specificity_prompts]]
        if cfg.specificity_reference == "shipped":
            studied = {normalized_prompt(q.text) for probe in self.probes[model] for q in probe.queries}
            taken: dict[str, int] = {}
            for query in load_specificity_queries():
                if normalized_prompt(query["prompt"]) in studied \
                        or taken.get(query["relation"], 0) >= cfg.specificity_queries:
                    continue
                taken[query["relation"]] = taken.get(query["relation"], 0) + 1
                items.append({"prompt": query["prompt"], "target": None, "relation": query["relation"]})
            return items
        by_relation: dict[str, list[ProbedFact]] = {}
        for probe in self.probes[model]:
            if probe.known(cfg.min_known):
                by_relation.setdefault(probe.relation, []).append(probe)
        for relation in sorted(by_relation):
            rng = random.Random(cfg.seed_for("specificity", model, relation))
            probes = by_relation[relation]
            for probe in rng.sample(probes, min(cfg.specificity_queries, len(probes))):
                query = rng.choice(probe.known_queries())
                items.append({"prompt": query.text, "target": probe.object, "relation": relation})
        return items

    @_cached
    def excluded_reference(self, model: str, relation: str | None) -> set[str]:
        """The reference relations whose queries do not count for facts of `relation`: its own id, and
        (shipped reference) the reference relations of an answer type of its objects (all of the model's facts
        of `relation` in the data, known or not); none for `relation` None."""
        if relation is None:
            return set()
        if self.config.specificity_reference != "shipped":
            return {relation}
        types = {q["relation"]: q["answer_type"] for q in load_specificity_queries()}
        return excluded_reference_relations(relation, self.relation_objects(model, relation), types,
                                            load_answer_types())

    def relation_objects(self, model: str, relation: str) -> list[str]:
        """The objects of every fact of `relation` in the model's probe (known or not), in data order."""
        return [probe.object for probe in self.probes.get(model, []) if probe.relation == relation]

    @_cached
    def profile(self, model: str, method: str) -> dict:
        """The stored reference attributions of a model and method, summarized (None arrays when none is stored):

        neutral_frequency [L, N] (KN frequency over the neutral prompts), counts / sizes of the reference queries
        per relation (KN counts [L, N] and number of queries), query_frequency [L, N] (over every reference
        query), activation_ratio [L, N] (over the neutral prompts), n_neutral, n_queries."""
        rows = self.store.reference(model, method)
        if not rows:
            return {"neutral_frequency": None, "n_neutral": 0, "n_queries": 0}
        shape = tuple(rows[0]["activations"].shape)
        neutral = [r for r in rows if r["relation"] is None]
        counts: dict[str, np.ndarray] = {}
        sizes: dict[str, int] = {}
        for r in rows:
            if r["relation"] is not None:
                counts[r["relation"]] = counts.get(r["relation"], np.zeros(shape)) + kn_frequency([r["kn"]], shape)
                sizes[r["relation"]] = sizes.get(r["relation"], 0) + 1
        n_queries = sum(sizes.values())
        return {
            "neutral_frequency": kn_frequency([r["kn"] for r in neutral], shape),
            "query_counts": counts, "query_sizes": sizes,
            "query_frequency": sum(counts.values()) / n_queries if n_queries else np.zeros(shape),
            "activation_ratio": activation_ratio(torch.stack([r["activations"] for r in neutral or rows])),
            "n_neutral": len(neutral), "n_queries": n_queries}

    def reference_frequency(self, model: str, method: str, relation: str | None) -> np.ndarray | None:
        """max(KN frequency on the neutral prompts, KN frequency on the reference queries that are not
        `relation`'s own, :meth:`excluded_reference`) per neuron, [L, N] (`relation` None: of every relation)."""
        prof = self.profile(model, method)
        if prof["neutral_frequency"] is None:
            return None
        own = self.excluded_reference(model, relation)
        others = [r for r in prof["query_counts"] if r not in own]
        n = sum(prof["query_sizes"][r] for r in others)
        queries = sum(prof["query_counts"][r] for r in others) / n if n else np.zeros_like(prof["neutral_frequency"])
        return np.maximum(prof["neutral_frequency"], queries)

    def excluded(self, model: str, method: str, relation: str | None) -> set[Neuron]:
        """The non-specific neurons the study removes for facts of `relation` (empty with --specificity off)."""
        if not self.config.filtered:
            return set()
        return self._excluded(model, method, relation)

    @_cached
    def _excluded(self, model: str, method: str, relation: str | None) -> set[Neuron]:
        freq = self.reference_frequency(model, method, relation)
        return set() if freq is None else nonspecific_neurons(freq, float(self.config.specificity))

    @_cached
    def relations(self, model: str) -> dict[str, str]:
        """{fact_id: relation} of every probed fact of a model."""
        return {probe.fact_id: probe.relation for probe in self.probes.get(model, [])}

    # --- the neuron sets ---------------------------------------------------------------------------------------

    def _use_filter(self, filtered: bool | None) -> bool:
        return self.config.filtered if filtered is None else filtered and self.config.filtered

    def kn_lists(self, model: str, method: str, fact_id: str,
                 filtered: bool | None = None) -> dict[int, list[Neuron]]:
        """A fact's KN list per query in score order, as stored, with the non-specific neurons removed
        (``filtered``: default the study's setting; False: the unfiltered lists)."""
        lists = self.store.kn_lists(model, method, fact_id)
        if not self._use_filter(filtered):
            return lists
        return {q: self.remove_nonspecific(model, method, fact_id, kn) for q, kn in lists.items()}

    def remove_nonspecific(self, model: str, method: str, fact_id: str, neurons: list[Neuron]) -> list[Neuron]:
        """A neuron set of a fact (any selection: N_i, N_g, CAS, ...) without the neurons that are non-specific
        for the fact's relation, order kept; unchanged with --specificity off."""
        drop = self.excluded(model, method, self.relations(model).get(fact_id))
        return [n for n in neurons if n not in drop] if drop else list(neurons)

    def kn_sets(self, model: str, method: str, filtered: bool | None = None) -> dict[str, dict[int, KnSet]]:
        """Every studied fact's KN sets by query (as :meth:`kn_lists`); the filtered view is cached."""
        if not self._use_filter(filtered):
            return self.store.kn_sets(model, method)
        return self._filtered_kn_sets(model, method)

    @_cached
    def _filtered_kn_sets(self, model: str, method: str) -> dict[str, dict[int, KnSet]]:
        return {f.fact_id: {q: KnSet(kn) for q, kn in self.kn_lists(model, method, f.fact_id, True).items()}
                for f in self.facts[model]}

    def score_stack(self, model: str, method: str, fact_id: str) -> tuple[list[int], torch.Tensor]:
        """(query indices, the stored attribution maps [n_queries, L, N]) of a fact; selections made from them
        go through :meth:`remove_nonspecific`."""
        tensors = self.store.scores(model, method, fact_id)
        queries = sorted(tensors)
        return queries, torch.stack([tensors[q] for q in queries])

    # --- consistency scores and groups -------------------------------------------------------------------------

    def cs_scores(self, model: str, method: str, filtered: bool | None = None) -> dict[str, dict]:
        """{fact_id: {"cs1", "cs2", "csp"}} of the studied facts with >= 2 attributed queries and at least one
        non-empty KN set (:meth:`unscored` names the others)."""
        kn = self.kn_sets(model, method, filtered)
        out = {}
        for fact in self.facts[model]:
            sets = [kn[fact.fact_id][q] for q in sorted(kn.get(fact.fact_id, {}))]
            if len(sets) >= 2 and any(sets):
                out[fact.fact_id] = consistency_scores(sets, p=self.config.p)
        return out

    def unscored(self, model: str, method: str, filtered: bool | None = None) -> dict[str, str]:
        """{fact_id: why} of the studied facts without a consistency score (so without a group): ONE_QUERY
        (fewer than 2 attributed queries: nothing to compare) or EMPTY_KN (every KN set empty: no neuron to
        compare; their CS would be 0 by definition and count them as K_I)."""
        kn = self.kn_sets(model, method, filtered)
        out = {}
        for fact in self.facts[model]:
            sets = list(kn.get(fact.fact_id, {}).values())
            if len(sets) < 2:
                out[fact.fact_id] = ONE_QUERY
            elif not any(sets):
                out[fact.fact_id] = EMPTY_KN
        return out

    def fact_scores(self, model: str, method: str, filtered: bool | None = None) -> dict[str, float]:
        """The selected CS (`--cs-score`) of each studied fact with a score (:meth:`cs_scores`), from the KN sets
        the study uses (``filtered=False``: the unfiltered ones)."""
        return {fid: s[self.config.cs_score] for fid, s in self.cs_scores(model, method, filtered).items()}

    def thresholds(self, values: list[float]) -> dict[str, float]:
        """The static threshold tau and Otsu's threshold of `values` (nan without values)."""
        return {"static": self.config.tau, "otsu": otsu_threshold(values) if values else float("nan")}

    @_cached
    def groups(self, model: str, method: str) -> dict[str, str]:
        """K_C / K_I of each fact under the study's `split` threshold (used by the later experiments)."""
        scores = self.fact_scores(model, method)
        tau = self.thresholds(list(scores.values()))[self.config.split]
        return {fid: (K_C if cs >= tau else K_I) for fid, cs in scores.items()}
