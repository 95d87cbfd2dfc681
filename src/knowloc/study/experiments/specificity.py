"""Experiment `specificity` (always on): which neurons are knowledge neurons of anything?

It reports the profile :mod:`knowloc.study.neuron_sets` builds and the filter removes from every neuron set:
the non-specific neurons (reference KN frequency above `--specificity`) beside the most frequent fact KNs, with
their reference frequency (neutral prompts, other relations' queries), fact frequency and activation ratio.
"""

from __future__ import annotations

import numpy as np

from knowloc.analysis import answer_types, kn_frequency, nonspecific_neurons
from knowloc.data import load_answer_types
from knowloc.plots import specificity_scatter
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.findings import filter_view
from knowloc.study.registry import Experiment
from knowloc.study.tables import Column, Table

TOP_SHOWN = 20  # most frequent fact KNs listed beside the non-specific neurons
LISTED = 30  # rows per model and method in summary.md (summary.json and the CSV keep every row)


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
    for model in cfg.models if cfg.filtered else ():  # --specificity off: no profile (reference_units)
        relations = sorted({f.relation for f in ctx.facts.get(model, [])})
        for method in cfg.methods:
            prof = ctx.neurons.profile(model, method)
            if prof["neutral_frequency"] is None:
                continue
            ref = ctx.neurons.reference_frequency(model, method, None)
            removed_for = {r: nonspecific_neurons(ctx.neurons.reference_frequency(model, method, r), threshold)
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
    exclusions = exclusion_rows(ctx)
    return Section(summary={"specificity": rows, "specificity_counts": counts, "specificity_exclusions": exclusions},
                   csv={"specificity": table_rows,
                        "specificity_exclusions": [{k: (", ".join(v) if isinstance(v, list) else v)
                                                    for k, v in r.items()} for r in exclusions]},
                   figures=figures)


def exclusion_rows(ctx: StudyContext) -> list[dict]:
    """Per model and studied relation: the answer types of its objects, the reference relations that do not
    count for it (its own, by id and by answer type) and how many reference queries do (of the first method)."""
    cfg, out = ctx.config, []
    vocabularies = load_answer_types()
    for model in cfg.models if cfg.filtered else ():
        stored = ctx.store.reference(model, cfg.methods[0])
        if not stored:
            continue
        for relation in sorted({f.relation for f in ctx.facts.get(model, [])}):
            own = ctx.neurons.excluded_reference(model, relation)
            out.append({"model": model, "relation": relation,
                        "answer_types": sorted(answer_types(ctx.neurons.relation_objects(model, relation),
                                                            vocabularies)),
                        "not_counted": sorted(own),
                        "reference_queries_counted": sum(r["relation"] is not None and r["relation"] not in own
                                                         for r in stored)})
    return out


def first_rows(rows: list[dict]) -> list[dict]:
    """At most LISTED rows per model and method (they come sorted by reference frequency)."""
    seen: dict[tuple[str, str], int] = {}
    shown = []
    for r in rows:
        seen[(r["model"], r["method"])] = seen.get((r["model"], r["method"]), 0) + 1
        if seen[(r["model"], r["method"])] <= LISTED:
            shown.append(r)
    return shown


def _notes(summary: dict) -> list[str]:
    if summary.get("specificity_counts"):
        return []
    if filter_view(summary) == "off":
        return ["No specificity profile was computed: with --specificity off the filter removes nothing, so the "
                "study skips the reference attributions (set --specificity F < 1 to compute the profile and "
                "apply it)."]
    return ["No specificity profile: no reference attribution is stored."]


def _by_relation(row: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in (row.get("fact_frequency_by_relation") or {}).items() if v > 0)


EXPERIMENT = Experiment(
    name="specificity", question="which neurons are knowledge neurons of anything (non-specific)?",
    heading="Neuron specificity", summarize=summarize,
    summary_keys=("specificity", "specificity_counts", "specificity_exclusions"),
    always=True, notes=_notes,
    intro="Two reference sets are attributed with the study's method, both with the model's own next token as "
          "target: fact-free prompts, and knowloc's shipped reference queries (29 relations, the same whatever the "
          "study's facts). For a fact of relation R, a neuron is non-specific when it is a knowledge neuron of more "
          "than --specificity of the neutral prompts or of the reference queries that are not R's own (R's own: a "
          "reference relation with R's id or whose answers have the type of R's objects): it fires as a KN for "
          "anything, or for every query format. "
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
        Table("specificity_exclusions", title="Reference queries that do not count, per studied relation", columns=(
            Column("model", "model"), Column("relation", "relation"),
            Column("answer types", "answer_types", value=lambda r: ", ".join(r["answer_types"]) or "-", wrap=True),
            Column("reference relations not counted", "not_counted", value=lambda r: ", ".join(r["not_counted"]),
                   wrap=True),
            Column("reference queries counted", "reference_queries_counted", "int"))),
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
                       wrap=True)))))
