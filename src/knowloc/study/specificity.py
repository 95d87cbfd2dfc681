"""The neuron specificity profile of a study, and the neuron sets every experiment reads.

Per model and method, the study attributes the model's own top-1 next token after each of the
`--specificity-prompts` fact-free reference prompts (``knowloc/resources/specificity_prompts.txt``; never a
studied fact's queries) with the study's method, steps and KN threshold, and stores each KN set with the
|activations| at the last position (:mod:`knowloc.analysis.specificity` has the formulas). Neurons whose
reference KN frequency exceeds `--specificity F` are *non-specific*: they are zeroed in every attribution map
before any neuron set is selected from it (N_i, N_g, N_cap, CAS, the query-mapping sets, the attention
experiment's KNs). `--specificity off` (F = 1) keeps the stored, unfiltered KN sets: the paper's behaviour.

Every experiment reads its neuron sets through :func:`kn_lists`, :func:`kn_sets` and :func:`score_stack`, so
the filter is applied in one place.
"""

from __future__ import annotations

import numpy as np
import torch

from knowloc.analysis import activation_ratio, kn_frequency, mask_scores, nonspecific_neurons, select_neurons
from knowloc.attribution import attribute_next_token
from knowloc.data import load_specificity_prompts
from knowloc.models.hooks import trace_activations
from knowloc.plots import specificity_scatter
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.registry import Experiment, register
from knowloc.study.tables import Column, Table

TOP_SHOWN = 20  # most frequent fact KNs listed beside the non-specific neurons
LISTED = 30  # rows per model and method in summary.md (summary.json and the CSV keep every row)


def reference_prompts(ctx: StudyContext) -> list[str]:
    return load_specificity_prompts()[: ctx.config.specificity_prompts]


def reference_row(ctx: StudyContext, model: str, method: str, ridx: int) -> dict:
    """One reference prompt's attribution of the model's own next token (a study unit; stored as is)."""
    lm = ctx.model(model)
    prompt = reference_prompts(ctx)[ridx]
    with torch.no_grad(), trace_activations(lm) as acts:
        lm.model(input_ids=torch.tensor([lm.encode(prompt).prompt_ids], device=lm.device))
    activations = torch.stack([acts[layer][0, -1].float().abs().cpu() for layer in range(lm.n_layers)])
    attr = attribute_next_token(lm, prompt, method=method, steps=ctx.config.steps)
    scores = attr.scores.to(torch.float16).float()  # the same fp16 rounding as the stored fact attributions
    return {"prompt": prompt, "token": attr.extra["token_id"], "token_text": attr.target, "prob": attr.prob,
            "kn": select_neurons(scores, threshold=ctx.config.threshold), "activations": activations}


def profile(ctx: StudyContext, model: str, method: str) -> dict:
    """{"ref_frequency", "activation_ratio": [L, N] arrays, "n_ref": R, "excluded": set} from the store."""
    key = ("specificity", model, method)
    if key not in ctx.cache:
        rows = ctx.store.reference(model, method)
        if not rows:
            ctx.cache[key] = {"ref_frequency": None, "activation_ratio": None, "n_ref": 0, "excluded": set()}
        else:
            shape = tuple(rows[0]["activations"].shape)
            freq = kn_frequency([r["kn"] for r in rows], shape)
            ratio = activation_ratio(torch.stack([r["activations"] for r in rows]))
            excluded = nonspecific_neurons(freq, float(ctx.config.specificity))
            ctx.cache[key] = {"ref_frequency": freq, "activation_ratio": ratio, "n_ref": len(rows),
                              "excluded": excluded}
    return ctx.cache[key]


def excluded(ctx: StudyContext, model: str, method: str) -> set[tuple[int, int]]:
    """The non-specific neurons the study removes (empty with --specificity off)."""
    if not ctx.config.filtered:
        return set()
    return profile(ctx, model, method)["excluded"]


def _use_filter(ctx: StudyContext, filtered: bool | None) -> bool:
    return ctx.config.filtered if filtered is None else filtered and ctx.config.filtered


def kn_lists(ctx: StudyContext, model: str, method: str, fact_id: str,
             filtered: bool | None = None) -> dict[int, list[tuple[int, int]]]:
    """A fact's KN list per query in score order: the stored lists, or re-selected from the stored scores with
    the non-specific neurons zeroed (``filtered``: default the study's setting; False: unfiltered)."""
    if not _use_filter(ctx, filtered):
        return ctx.store.kn_lists(model, method, fact_id)
    drop = excluded(ctx, model, method)
    return {q: select_neurons(mask_scores(scores, drop), threshold=ctx.config.threshold)
            for q, scores in ctx.store.scores(model, method, fact_id).items()}


def kn_sets(ctx: StudyContext, model: str, method: str,
            filtered: bool | None = None) -> dict[str, dict[int, set[tuple[int, int]]]]:
    """Every studied fact's KN sets by query (as :func:`kn_lists`); cached per view."""
    use = _use_filter(ctx, filtered)
    if not use:
        return ctx.store.kn_sets(model, method)
    key = ("kn_sets", model, method)
    if key not in ctx.cache:
        ctx.cache[key] = {f.fact_id: {q: set(kn) for q, kn in kn_lists(ctx, model, method, f.fact_id, True).items()}
                          for f in ctx.facts[model]}
    return ctx.cache[key]


def score_stack(ctx: StudyContext, model: str, method: str, fact_id: str) -> tuple[list[int], torch.Tensor]:
    """(query indices, attribution maps [n, L, N]) of a fact, non-specific neurons zeroed when filtering."""
    tensors = ctx.store.scores(model, method, fact_id)
    queries = sorted(tensors)
    stack = torch.stack([tensors[q] for q in queries])
    return queries, mask_scores(stack, excluded(ctx, model, method))


def fact_frequency(ctx: StudyContext, model: str, method: str) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Share of the studied queries whose unfiltered KN set holds each neuron, overall and by relation."""
    prof = profile(ctx, model, method)
    if prof["ref_frequency"] is None:
        return None, {}
    shape = prof["ref_frequency"].shape
    kn = ctx.store.kn_sets(model, method)
    by_relation: dict[str, list[set]] = {}
    for fact in ctx.facts[model]:
        by_relation.setdefault(fact.relation, []).extend(kn.get(fact.fact_id, {}).values())
    every = [s for sets in by_relation.values() for s in sets]
    if not every:
        return None, {}
    return kn_frequency(every, shape), {r: kn_frequency(sets, shape) for r, sets in sorted(by_relation.items())}


def summarize(ctx: StudyContext) -> Section:
    """summary.json `specificity` (the non-specific neurons and the most frequent fact KNs), a figure of
    reference KN frequency against activation ratio per model and method."""
    cfg = ctx.config
    rows, counts = [], []
    for model in cfg.models:
        for method in cfg.methods:
            prof = profile(ctx, model, method)
            if prof["ref_frequency"] is None:
                continue
            ref, ratio = prof["ref_frequency"], prof["activation_ratio"]
            facts_freq, by_relation = fact_frequency(ctx, model, method)
            facts_freq = np.zeros_like(ref) if facts_freq is None else facts_freq
            threshold = float(cfg.specificity)
            above = set(zip(*map(lambda a: a.tolist(), np.nonzero(ref > threshold))))
            top = np.argsort(-facts_freq, axis=None, kind="stable")[:TOP_SHOWN]
            shown = above | {tuple(int(v) for v in np.unravel_index(i, ref.shape)) for i in top
                             if facts_freq.flat[i] > 0}
            for layer, index in sorted(shown, key=lambda n: (-ref[n], -facts_freq[n], n)):
                rows.append({"model": model, "method": method, "layer": int(layer), "index": int(index),
                             "ref_frequency": float(ref[layer, index]),
                             "fact_frequency": float(facts_freq[layer, index]),
                             "activation_ratio": float(ratio[layer, index]),
                             "non_specific": bool(ref[layer, index] > threshold),
                             "fact_frequency_by_relation": {r: float(f[layer, index]) for r, f in by_relation.items()}})
            counts.append({"model": model, "method": method, "n_reference": prof["n_ref"], "threshold": threshold,
                           "n_non_specific": int((ref > threshold).sum()),
                           "n_fact_kn_mass_removed": float(facts_freq[ref > threshold].sum()
                                                           / max(facts_freq.sum(), 1e-12))})
    section = Section(summary={"specificity": rows, "specificity_counts": counts},
                      tables={"specificity": [{k: v for k, v in r.items() if k != "fact_frequency_by_relation"}
                                              for r in rows], "specificity_counts": counts})
    for model in cfg.models:
        for method in cfg.methods:
            prof = profile(ctx, model, method)
            if prof["ref_frequency"] is None:
                continue
            facts_freq, _ = fact_frequency(ctx, model, method)
            section.figures.append(specificity_scatter(
                prof["ref_frequency"], prof["activation_ratio"], facts_freq, float(cfg.specificity),
                ctx.figures_dir / f"specificity_{slug(model)}_{method}.png",
                f"neuron specificity — {model}, {method} ({prof['n_ref']} reference prompts)"))
    return section


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
    settings=("specificity", "specificity_prompts"), always=True,
    intro="Each model's own next token after fact-free reference prompts is attributed with the study's method; a "
          "neuron's reference frequency is the share of those prompts whose KN set holds it, its fact frequency "
          "the share of the studied queries, and its activation ratio its |activation| over its layer's median "
          "(median over reference prompts). Neurons above the threshold (--specificity) fire as knowledge neurons "
          "for anything and are removed from every neuron set (docs/editing.md).",
    tables=(
        Table("specificity_counts", columns=(
            Column("model", "model"), Column("method", "method"), Column("reference prompts", "n_reference", "int"),
            Column("threshold", "threshold", "num", 2), Column("non-specific neurons", "n_non_specific", "int"),
            Column("share of fact KN memberships removed", "n_fact_kn_mass_removed", "num", 2))),
        Table("specificity", title="Non-specific neurons and the most frequent fact KNs", rows=first_rows,
              note=f"Sorted by reference frequency; at most {LISTED} rows per model and method (all of them in "
                   "tables/specificity.csv).", columns=(
                Column("model", "model"), Column("method", "method"),
                Column("neuron", "layer", value=lambda r: f"L{r['layer']}#{r['index']}"),
                Column("reference frequency", "ref_frequency", "num", 2),
                Column("fact frequency", "fact_frequency", "num", 2),
                Column("|a| / layer median", "activation_ratio", "sig"),
                Column("non-specific", "non_specific", "yesno"),
                Column("fact frequency by relation", "fact_frequency_by_relation", value=_by_relation,
                       wrap=True)))),
    figures=("specificity_",)))
