"""Experiment `consistency`: do a fact's neighbor queries share their knowledge neurons?

Per model x method: CS of every fact (docs/analysis.md), the K_C / K_I split under the static tau and Otsu's
threshold, Welch's t-test between the groups, and a null baseline the paper lacks: the same score on
pseudo-facts whose queries come from different facts of the same relation (same templates, other subjects).
With the specificity filter on, every row is given twice, with the filtered KN sets ("on") and the stored,
unfiltered ones ("off"), side by side; the groups of later experiments come from the study's own setting.
"""

from __future__ import annotations

import random

import numpy as np

from knowloc.analysis import (bootstrap_ci, consistency_scores, otsu_threshold, permutation_test_diff,
                              split_groups, welch_t)
from knowloc.study import specificity as spec
from knowloc.study.context import Section, StudyContext, slug


def fact_scores(ctx: StudyContext, model: str, method: str, filtered: bool | None = None) -> dict[str, float]:
    """The selected CS of each studied fact (facts with >= 2 attributed queries), from the KN sets the study
    uses (``filtered=False``: the unfiltered ones)."""
    kn = spec.kn_sets(ctx, model, method, filtered)
    out = {}
    for fact in ctx.facts[model]:
        sets = [kn[fact.fact_id][q] for q in sorted(kn.get(fact.fact_id, {}))]
        if len(sets) >= 2:
            out[fact.fact_id] = consistency_scores(sets, p=ctx.config.p)[ctx.config.cs_score]
    return out


def thresholds(ctx: StudyContext, values: list[float]) -> dict[str, float]:
    return {"static": ctx.config.tau, "otsu": otsu_threshold(values) if values else float("nan")}


def groups(ctx: StudyContext, model: str, method: str) -> dict[str, str]:
    """K_C / K_I of each fact under the study's `split` threshold (used by the later experiments)."""
    scores = fact_scores(ctx, model, method)
    tau = thresholds(ctx, list(scores.values()))[ctx.config.split]
    return {fid: ("K_C" if cs >= tau else "K_I") for fid, cs in scores.items()}


def grouped_trials(ctx: StudyContext, experiment: str):
    """(model, method, group, [each K_C or K_I fact's stored trials]) for an experiment's summary."""
    from knowloc.study.context import trial_key

    trials = ctx.store.trials(experiment)
    for model in ctx.config.models:
        for method in ctx.config.methods:
            split = groups(ctx, model, method)
            for group in ("K_C", "K_I"):
                yield model, method, group, [trials[trial_key(model, method, f.fact_id)] for f in ctx.facts[model]
                                             if split.get(f.fact_id) == group
                                             and trial_key(model, method, f.fact_id) in trials]


def null_scores(ctx: StudyContext, model: str, method: str, filtered: bool | None = None) -> list[float]:
    """CS of pseudo-facts: for each real fact, each of its templates is filled by another fact of the same
    relation (seeded), so template words are shared but the fact is not."""
    kn = spec.kn_sets(ctx, model, method, filtered)
    by_template: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for fact in ctx.facts[model]:
        for q, template in enumerate(fact.templates):
            if q in kn.get(fact.fact_id, {}):
                by_template.setdefault((fact.relation, template), []).append((fact.fact_id, q))
    values = []
    for fact in ctx.facts[model]:
        rng = random.Random(ctx.seed_for("null", model, method, fact.fact_id))
        sets = []
        for template in fact.templates:
            others = [item for item in by_template.get((fact.relation, template), []) if item[0] != fact.fact_id]
            if others:
                fid, q = rng.choice(others)
                sets.append(kn[fid][q])
        if len(sets) >= 2:
            values.append(consistency_scores(sets, p=ctx.config.p)[ctx.config.cs_score])
    return values


def summarize(ctx: StudyContext) -> Section:
    from knowloc.plots.figures import violin_cs

    section = Section(summary={"consistency": [], "consistency_relations": [], "consistency_all_methods": []})
    cfg = ctx.config
    for model in cfg.models:
        in_k_i: dict[str, dict[str, list[bool]]] = {"static": {}, "otsu": {}}
        views = [("on", True), ("off", False)] if cfg.filtered else [("off", False)]
        for method, (view, filtered) in ((m, v) for m in cfg.methods for v in views):
            scores = fact_scores(ctx, model, method, filtered)
            if not scores:
                continue
            ids = list(scores)
            values = np.array([scores[f] for f in ids])
            null = null_scores(ctx, model, method, filtered)
            null_gap, null_p = permutation_test_diff(values, null, seed=cfg.seed) if len(null) else (np.nan, np.nan)
            relation_of = {f.fact_id: f.relation for f in ctx.facts[model]}
            for kind, tau in thresholds(ctx, list(values)).items():
                k_c = split_groups(values, tau)
                k_i = (~k_c).astype(float)
                estimate, low, high = bootstrap_ci(k_i, n_boot=cfg.n_boot, seed=cfg.seed)
                section.summary["consistency"].append({
                    "model": model, "method": method, "n_facts": len(ids), "threshold_kind": kind,
                    "threshold": float(tau), "k_i_fraction": float(estimate), "k_i_ci_low": float(low),
                    "k_i_ci_high": float(high), "welch_p": float(welch_t(values[k_c], values[~k_c])),
                    "cs_mean": float(values.mean()), "null_mean": float(np.mean(null)) if null else float("nan"),
                    "null_gap": float(null_gap), "null_p": float(null_p), "n_null": len(null),
                    "score": cfg.cs_score, "specificity": view})
                if view != "on" and cfg.filtered:
                    continue  # the relation and all-method views follow the study's setting
                for fid, flag in zip(ids, k_i):
                    in_k_i[kind].setdefault(fid, []).append(bool(flag))
                for relation in sorted({relation_of[f] for f in ids}):
                    mask = np.array([relation_of[f] == relation for f in ids])
                    est, lo, hi = bootstrap_ci(k_i[mask], n_boot=cfg.n_boot, seed=cfg.seed)
                    section.summary["consistency_relations"].append({
                        "model": model, "method": method, "relation": relation, "threshold_kind": kind,
                        "n": int(mask.sum()), "k_i_fraction": float(est), "ci_low": float(lo), "ci_high": float(hi)})
            if view != "on" and cfg.filtered:
                continue
            by_relation: dict[str, list[float]] = {}
            for fid in ids:
                by_relation.setdefault(relation_of[fid], []).append(scores[fid])
            tau_otsu = thresholds(ctx, list(values))["otsu"]
            section.figures.append(violin_cs(
                by_relation, cfg.tau, tau_otsu, ctx.figures_dir / f"cs_violin_{slug(model)}_{method}.png",
                f"{cfg.cs_score.upper()} per relation — {model}, {method}"))
        for kind, flags in in_k_i.items():
            complete = [all(v) for v in flags.values() if len(v) == len(cfg.methods)]
            if complete:
                section.summary["consistency_all_methods"].append({
                    "model": model, "threshold_kind": kind, "n_facts": len(complete),
                    "k_i_fraction_all_methods": float(np.mean(complete))})
    section.tables["consistency"] = section.summary["consistency"]
    section.tables["consistency_relations"] = section.summary["consistency_relations"]
    section.figures += heatmap_figures(ctx)
    section.markdown += _markdown(section.summary)
    return section


def heatmap_figures(ctx: StudyContext) -> list:
    """Attribution heatmaps (layers x top neurons) of two neighbor queries of a K_C and of a K_I fact."""
    from knowloc.plots.figures import activation_heatmaps

    paths = []
    model, method = ctx.config.models[0], ctx.config.methods[0]
    scores = fact_scores(ctx, model, method)
    if not scores:
        return paths
    split = groups(ctx, model, method)
    facts = {f.fact_id: f for f in ctx.facts[model]}
    for group in ("K_C", "K_I"):
        members = [fid for fid, g in split.items() if g == group]
        if not members:
            continue
        # the most typical member: highest CS for K_C, lowest for K_I
        fid = (max if group == "K_C" else min)(members, key=lambda f: scores[f])
        tensors = ctx.store.scores(model, method, fid)
        first, second = sorted(tensors)[:2]
        a, b = tensors[first], tensors[second]
        kn = spec.kn_lists(ctx, model, method, fid)
        neurons = list(dict.fromkeys(kn[first][:8] + kn[second][:8]))[:16]
        layers = sorted({l for l, _ in neurons})
        cols = [f"L{l}#{i}" for l, i in neurons]
        panels = []
        for q, t in ((first, a), (second, b)):
            matrix = np.zeros((len(layers), len(neurons)))
            for c, (l, i) in enumerate(neurons):
                matrix[layers.index(l), c] = float(t[l, i])
            panels.append({"title": facts[fid].prompts[q], "matrix": matrix, "row_labels": layers,
                           "col_labels": cols})
        paths.append(activation_heatmaps(panels, ctx.figures_dir / f"kn_heatmap_{group}.png",
                                         f"{group} example: {facts[fid].subject} -> {facts[fid].object} "
                                         f"(CS={scores[fid]:.2f}, {method})"))
    return paths


def _markdown(summary: dict) -> list[str]:
    lines = ["## Consistency (statistical evidence)", "",
             "specificity on: non-specific neurons removed from the KN sets; off: the unfiltered KN sets.", "",
             "| model | method | specificity | facts | threshold | tau | K_I fraction [95% CI] | Welch p | CS mean | null mean | null gap (p) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["consistency"]:
        lines.append(f"| {r['model']} | {r['method']} | {r['specificity']} | {r['n_facts']} | {r['threshold_kind']} | {r['threshold']:.3f} | "
                     f"{r['k_i_fraction']:.2f} [{r['k_i_ci_low']:.2f}, {r['k_i_ci_high']:.2f}] | {r['welch_p']:.2g} | "
                     f"{r['cs_mean']:.3f} | {r['null_mean']:.3f} | {r['null_gap']:+.3f} ({r['null_p']:.3g}) |")
    for r in summary["consistency_all_methods"]:
        lines.append(f"\nFacts every method puts in K_I ({r['model']}, {r['threshold_kind']}): "
                     f"{r['k_i_fraction_all_methods']:.2f} of {r['n_facts']}")
    return lines + [""]
