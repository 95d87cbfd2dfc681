"""The neuron specificity profile of a study, and the neuron sets every experiment reads.

Two reference sets, both independent of any studied fact's own queries, are attributed with the study's
method, steps and KN threshold (:mod:`knowloc.analysis.specificity` has the formulas):

* **neutral prompts**: the model's own top-1 next token after each of `--specificity-prompts` fact-free
  prompts (``knowloc/resources/specificity_prompts.txt``);
* **other relations' queries**: per relation, `--specificity-queries` known facts (seeded), one answered
  paraphrase each, attributed for their gold object like any study query.

For a fact of relation R, a neuron is *non-specific* when its KN frequency exceeds `--specificity F` on the
neutral prompts or on the reference queries of the relations other than R (never R's own, so never the fact's
own queries): it is a "knowledge neuron" of anything, or of every query format, not of this fact. Non-specific
neurons are removed from every neuron set the study uses, after it is selected by its usual rule (N_i, N_g,
N_cap, CAS, the query-mapping sets, the attention experiment's KNs). `--specificity off` (F = 1) removes
nothing: the paper's behaviour.

Every experiment reads its neuron sets through :func:`kn_lists` / :func:`kn_sets`, or filters a selection it
makes from :func:`score_stack` with :func:`remove_nonspecific`, so the filter is decided in one place.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from knowloc import attribution
from knowloc.analysis import activation_ratio, kn_frequency, nonspecific_neurons, select_neurons
from knowloc.data import load_specificity_prompts
from knowloc.models.hooks import trace_activations
from knowloc.plots import specificity_scatter
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.registry import Experiment, register
from knowloc.study.tables import Column, Table

TOP_SHOWN = 20  # most frequent fact KNs listed beside the non-specific neurons
LISTED = 30  # rows per model and method in summary.md (summary.json and the CSV keep every row)


def reference_items(ctx: StudyContext, model: str) -> list[dict]:
    """The reference set of a model: the neutral prompts, then per relation (sorted) `--specificity-queries`
    seeded known facts with one seeded answered paraphrase each. Deterministic from the probe and the seed."""
    key = ("reference", model)
    if key not in ctx.cache:
        items = [{"prompt": p, "target": None, "relation": None}
                 for p in load_specificity_prompts()[: ctx.config.specificity_prompts]]
        by_relation: dict[str, list[dict]] = {}
        for row in ctx.probes[model]:
            if sum(q["top1"] for q in row["queries"]) >= ctx.config.min_known:
                by_relation.setdefault(row["relation"], []).append(row)
        for relation in sorted(by_relation):
            rng = random.Random(ctx.seed_for("specificity", model, relation))
            rows = by_relation[relation]
            for row in rng.sample(rows, min(ctx.config.specificity_queries, len(rows))):
                query = rng.choice([q for q in row["queries"] if q["top1"]])
                items.append({"prompt": query["text"], "target": row["object"], "relation": relation})
        ctx.cache[key] = items
    return ctx.cache[key]


def reference_row(ctx: StudyContext, model: str, method: str, ridx: int) -> dict:
    """One reference item's attribution (a study unit; stored as is): the model's own next token after a
    neutral prompt, or a reference query's gold object; its KN list and |activations| at the last position."""
    lm = ctx.model(model)
    item = reference_items(ctx, model)[ridx]
    with torch.no_grad(), trace_activations(lm) as acts:
        lm.model(input_ids=torch.tensor([lm.encode(item["prompt"]).prompt_ids], device=lm.device))
    activations = torch.stack([acts[layer][0, -1].float().abs().cpu() for layer in range(lm.n_layers)])
    if item["target"] is None:
        attr = attribution.attribute_next_token(lm, item["prompt"], method=method, steps=ctx.config.steps)
        token = attr.extra["token_id"]
    else:
        attr = attribution.attribute(lm, item["prompt"], item["target"], method=method, steps=ctx.config.steps,
                                     warn=False)
        token = lm.first_target_token(item["target"])
    scores = attr.scores.to(torch.float16).float()  # the same fp16 rounding as the stored fact attributions
    return {"prompt": item["prompt"], "relation": item["relation"], "token": token, "token_text": attr.target,
            "prob": attr.prob, "kn": select_neurons(scores, threshold=ctx.config.threshold),
            "activations": activations}


def profile(ctx: StudyContext, model: str, method: str) -> dict:
    """The stored reference attributions of a model and method, summarized (None arrays when none is stored):

    neutral_frequency [L, N] (KN frequency over the neutral prompts), counts / sizes of the reference queries
    per relation (KN counts [L, N] and number of queries), query_frequency [L, N] (over every reference query),
    activation_ratio [L, N] (over the neutral prompts), n_neutral, n_queries."""
    key = ("specificity", model, method)
    if key not in ctx.cache:
        rows = ctx.store.reference(model, method)
        if not rows:
            ctx.cache[key] = {"neutral_frequency": None, "n_neutral": 0, "n_queries": 0}
            return ctx.cache[key]
        shape = tuple(rows[0]["activations"].shape)
        neutral = [r for r in rows if r["relation"] is None]
        counts: dict[str, np.ndarray] = {}
        sizes: dict[str, int] = {}
        for r in rows:
            if r["relation"] is not None:
                counts[r["relation"]] = counts.get(r["relation"], np.zeros(shape)) + kn_frequency([r["kn"]], shape)
                sizes[r["relation"]] = sizes.get(r["relation"], 0) + 1
        n_queries = sum(sizes.values())
        ctx.cache[key] = {
            "neutral_frequency": kn_frequency([r["kn"] for r in neutral], shape),
            "query_counts": counts, "query_sizes": sizes,
            "query_frequency": sum(counts.values()) / n_queries if n_queries else np.zeros(shape),
            "activation_ratio": activation_ratio(torch.stack([r["activations"] for r in neutral or rows])),
            "n_neutral": len(neutral), "n_queries": n_queries}
    return ctx.cache[key]


def reference_frequency(ctx: StudyContext, model: str, method: str, relation: str | None) -> np.ndarray | None:
    """max(KN frequency on the neutral prompts, KN frequency on the reference queries of relations other than
    `relation`) per neuron (`relation` None: of every relation)."""
    prof = profile(ctx, model, method)
    if prof["neutral_frequency"] is None:
        return None
    others = [r for r in prof["query_counts"] if r != relation]
    n = sum(prof["query_sizes"][r] for r in others)
    queries = sum(prof["query_counts"][r] for r in others) / n if n else np.zeros_like(prof["neutral_frequency"])
    return np.maximum(prof["neutral_frequency"], queries)


def excluded(ctx: StudyContext, model: str, method: str, relation: str | None) -> set[tuple[int, int]]:
    """The non-specific neurons the study removes for facts of `relation` (empty with --specificity off)."""
    if not ctx.config.filtered:
        return set()
    key = ("excluded", model, method, relation)
    if key not in ctx.cache:
        freq = reference_frequency(ctx, model, method, relation)
        ctx.cache[key] = set() if freq is None else nonspecific_neurons(freq, float(ctx.config.specificity))
    return ctx.cache[key]


def _relation(ctx: StudyContext, model: str, fact_id: str) -> str | None:
    key = ("relations", model)
    if key not in ctx.cache:
        ctx.cache[key] = {row["fact_id"]: row["relation"] for row in ctx.probes.get(model, [])}
    return ctx.cache[key].get(fact_id)


def _use_filter(ctx: StudyContext, filtered: bool | None) -> bool:
    return ctx.config.filtered if filtered is None else filtered and ctx.config.filtered


def kn_lists(ctx: StudyContext, model: str, method: str, fact_id: str,
             filtered: bool | None = None) -> dict[int, list[tuple[int, int]]]:
    """A fact's KN list per query in score order, as stored, with the non-specific neurons removed
    (``filtered``: default the study's setting; False: the unfiltered lists)."""
    lists = ctx.store.kn_lists(model, method, fact_id)
    if not _use_filter(ctx, filtered):
        return lists
    return {q: remove_nonspecific(ctx, model, method, fact_id, kn) for q, kn in lists.items()}


def remove_nonspecific(ctx: StudyContext, model: str, method: str, fact_id: str,
                       neurons: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """A neuron set of a fact (any selection: N_i, N_g, CAS, ...) without the neurons that are non-specific for
    the fact's relation, order kept; unchanged with --specificity off."""
    drop = excluded(ctx, model, method, _relation(ctx, model, fact_id))
    return [n for n in neurons if tuple(n) not in drop] if drop else list(neurons)


def kn_sets(ctx: StudyContext, model: str, method: str,
            filtered: bool | None = None) -> dict[str, dict[int, set[tuple[int, int]]]]:
    """Every studied fact's KN sets by query (as :func:`kn_lists`); cached per view."""
    if not _use_filter(ctx, filtered):
        return ctx.store.kn_sets(model, method)
    key = ("kn_sets", model, method)
    if key not in ctx.cache:
        ctx.cache[key] = {f.fact_id: {q: set(kn) for q, kn in kn_lists(ctx, model, method, f.fact_id, True).items()}
                          for f in ctx.facts[model]}
    return ctx.cache[key]


def score_stack(ctx: StudyContext, model: str, method: str, fact_id: str) -> tuple[list[int], torch.Tensor]:
    """(query indices, the stored attribution maps [n, L, N]) of a fact; selections made from them go through
    :func:`remove_nonspecific`."""
    tensors = ctx.store.scores(model, method, fact_id)
    queries = sorted(tensors)
    return queries, torch.stack([tensors[q] for q in queries])


def fact_frequency(ctx: StudyContext, model: str, method: str, shape: tuple[int, int]
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Share of the studied queries whose unfiltered KN set holds each neuron, overall and by relation."""
    kn = ctx.store.kn_sets(model, method)
    by_relation: dict[str, list[set]] = {}
    for fact in ctx.facts[model]:
        by_relation.setdefault(fact.relation, []).extend(kn.get(fact.fact_id, {}).values())
    every = [s for sets in by_relation.values() for s in sets]
    return kn_frequency(every, shape), {r: kn_frequency(sets, shape) for r, sets in sorted(by_relation.items())}


def summarize(ctx: StudyContext) -> Section:
    """summary.json `specificity` (the non-specific neurons and the most frequent fact KNs) and
    `specificity_counts`, a figure of reference KN frequency against activation ratio per model and method."""
    cfg = ctx.config
    threshold = float(cfg.specificity)
    rows, counts, figures = [], [], []
    for model in cfg.models:
        relations = sorted({f.relation for f in ctx.facts.get(model, [])})
        for method in cfg.methods:
            prof = profile(ctx, model, method)
            if prof["neutral_frequency"] is None:
                continue
            ref = reference_frequency(ctx, model, method, None)
            removed_for = {r: nonspecific_neurons(reference_frequency(ctx, model, method, r), threshold)
                           for r in relations}
            union = set().union(*removed_for.values()) if removed_for else nonspecific_neurons(ref, threshold)
            facts_freq, by_relation = fact_frequency(ctx, model, method, ref.shape)
            top = np.argsort(-facts_freq, axis=None, kind="stable")[:TOP_SHOWN]
            shown = union | {tuple(int(v) for v in np.unravel_index(i, ref.shape)) for i in top
                             if facts_freq.flat[i] > 0}
            for n in sorted(shown, key=lambda n: (-ref[n], -facts_freq[n], n)):
                rows.append({"model": model, "method": method, "layer": int(n[0]), "index": int(n[1]),
                             "ref_frequency": float(ref[n]), "ref_frequency_neutral": float(prof["neutral_frequency"][n]),
                             "ref_frequency_queries": float(prof["query_frequency"][n]),
                             "fact_frequency": float(facts_freq[n]),
                             "activation_ratio": float(prof["activation_ratio"][n]),
                             "non_specific": n in union,
                             "removed_for": [r for r in relations if n in removed_for[r]],
                             "fact_frequency_by_relation": {r: float(f[n]) for r, f in by_relation.items()}})
            kn = ctx.store.kn_sets(model, method)
            members = [(len(s & removed_for[f.relation]), len(s)) for f in ctx.facts[model]
                       for s in kn.get(f.fact_id, {}).values()]
            mass, total = sum(m for m, _ in members), sum(t for _, t in members)
            counts.append({"model": model, "method": method, "n_reference_prompts": prof["n_neutral"],
                           "n_reference_queries": prof["n_queries"], "threshold": threshold,
                           "n_non_specific": len(union),
                           "n_non_specific_per_relation": float(np.mean([len(v) for v in removed_for.values()]))
                           if removed_for else float("nan"),
                           "kn_memberships_removed": mass / total if total else float("nan")})
            figures.append(specificity_scatter(
                ref, prof["activation_ratio"], facts_freq, threshold,
                ctx.figures_dir / f"specificity_{slug(model)}_{method}.png",
                f"neuron specificity — {model}, {method} ({prof['n_neutral']} neutral prompts, "
                f"{prof['n_queries']} reference queries)"))
    table_rows = [{k: (", ".join(v) if isinstance(v, list) else v) for k, v in r.items()
                   if k != "fact_frequency_by_relation"} for r in rows]
    return Section(summary={"specificity": rows, "specificity_counts": counts},
                   tables={"specificity": table_rows, "specificity_counts": counts}, figures=figures)


def first_rows(rows: list[dict]) -> list[dict]:
    """At most LISTED rows per model and method (they come sorted by reference frequency)."""
    seen: dict[tuple[str, str], int] = {}
    shown = []
    for r in rows:
        seen[(r["model"], r["method"])] = seen.get((r["model"], r["method"]), 0) + 1
        if seen[(r["model"], r["method"])] <= LISTED:
            shown.append(r)
    return shown


def _by_relation(row: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in (row.get("fact_frequency_by_relation") or {}).items() if v > 0)


EXPERIMENT = register(Experiment(
    name="specificity", question="which neurons are knowledge neurons of anything (non-specific)?",
    heading="Neuron specificity", summarize=summarize, summary_keys=("specificity", "specificity_counts"),
    settings=("specificity", "specificity_prompts", "specificity_queries"), always=True,
    intro="Two reference sets are attributed with the study's method: the model's own next token after fact-free "
          "prompts, and per relation a few known facts' queries. For a fact of relation R, a neuron is non-specific "
          "when it is a knowledge neuron of more than --specificity of the neutral prompts or of the other "
          "relations' reference queries (never R's own): it fires as a KN for anything, or for every query format. "
          "Non-specific neurons are removed from every neuron set (docs/editing.md). Reference frequency: the larger "
          "of the two shares (over every relation); fact frequency: the share of the studied queries; activation "
          "ratio: |activation| over its layer's median on the neutral prompts.",
    tables=(
        Table("specificity_counts", columns=(
            Column("model", "model"), Column("method", "method"),
            Column("neutral prompts", "n_reference_prompts", "int"),
            Column("reference queries", "n_reference_queries", "int"), Column("threshold", "threshold", "num", 2),
            Column("non-specific (any relation)", "n_non_specific", "int"),
            Column("non-specific per relation (mean)", "n_non_specific_per_relation", "num", 1),
            Column("share of fact KN memberships removed", "kn_memberships_removed", "num", 2))),
        Table("specificity", title="Non-specific neurons and the most frequent fact KNs", rows=first_rows,
              note=f"Sorted by reference frequency; at most {LISTED} rows per model and method (all of them in "
                   "tables/specificity.csv).", columns=(
                Column("model", "model"), Column("method", "method"),
                Column("neuron", "layer", value=lambda r: f"L{r['layer']}#{r['index']}"),
                Column("reference frequency", "ref_frequency", "num", 2),
                Column("neutral", "ref_frequency_neutral", "num", 2),
                Column("queries", "ref_frequency_queries", "num", 2),
                Column("fact frequency", "fact_frequency", "num", 2),
                Column("|a| / layer median", "activation_ratio", "sig"),
                Column("removed for", "removed_for", value=lambda r: ", ".join(r.get("removed_for") or []) or "-",
                       wrap=True),
                Column("fact frequency by relation", "fact_frequency_by_relation", value=_by_relation,
                       wrap=True)))),
    figures=("specificity_",)))
