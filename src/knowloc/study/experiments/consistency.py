"""Experiment `consistency`: do a fact's neighbor queries share their knowledge neurons?

Per model x method: CS of every fact (docs/analysis.md), the K_C / K_I split under the static tau and Otsu's
threshold, Welch's t-test between the groups, and a null baseline the paper lacks: the same score on
pseudo-facts whose queries come from different facts of the same relation (same templates, other subjects).
With the specificity filter on, every row is given twice, with the filtered KN sets ("on") and the stored,
unfiltered ones ("off"), side by side; the groups of later experiments come from the study's own setting.
"""

from __future__ import annotations

import math
import random

import numpy as np

from knowloc.analysis import (GROUPS, K_C, MIN_N, Estimate, consistency_scores, permutation_test_diff,
                              split_groups, welch_t)
from knowloc.plots import activation_heatmaps, violin_cs
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.findings import (CONTRADICTS, SUPPORTS, UNDECIDED, Decision, filter_view, interval, num, ok,
                                    verdict)
from knowloc.study.neuron_sets import EMPTY_KN, ONE_QUERY
from knowloc.study.registry import Experiment, Finding, Part
from knowloc.study.tables import Column, Table


NO_NULL_BY_CONSTRUCTION = "no null baseline"


def null_scores(ctx: StudyContext, model: str, method: str, filtered: bool | None = None) -> list[float]:
    """CS of pseudo-facts: for each real fact, each of its templates is filled by another fact of the same
    relation (seeded), so template words are shared but the fact is not."""
    return null_baseline(ctx, model, method, filtered)[0]


def null_baseline(ctx: StudyContext, model: str, method: str, filtered: bool | None = None
                  ) -> tuple[list[float], bool]:
    """(:func:`null_scores`, whether the null is real facts again by construction): True when every
    pseudo-fact's queries come from one single other fact, as with two studied facts per relation, where the
    pseudo-facts of A and B are B's and A's own KN sets, so the null repeats the real scores and the gap is 0 by
    construction. A pseudo-fact whose KN sets are all empty has no score, like a real one (NeuronSets.unscored)."""
    kn = ctx.neurons.kn_sets(model, method, filtered)
    by_template: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for fact in ctx.facts[model]:
        for q, template in enumerate(fact.templates):
            if q in kn.get(fact.fact_id, {}):
                by_template.setdefault((fact.relation, template), []).append((fact.fact_id, q))
    values, single_source = [], True
    for fact in ctx.facts[model]:
        rng = random.Random(ctx.seed_for("null", model, method, fact.fact_id))
        sets, sources = [], set()
        for template in fact.templates:
            others = [item for item in by_template.get((fact.relation, template), []) if item[0] != fact.fact_id]
            if others:
                fid, q = rng.choice(others)
                sets.append(kn[fid][q])
                sources.add(fid)
        if len(sets) >= 2 and any(sets):
            values.append(consistency_scores(sets, p=ctx.config.p)[ctx.config.cs_score])
            single_source = single_source and len(sources) == 1
    return values, bool(values) and single_source


def unscored_note(n_empty: int, n_one: int) -> str:
    """The row note naming the studied facts left out of the split ("" when none)."""
    parts = [f"{n} {'fact' if n == 1 else 'facts'} {why}" for n, why in (
        (n_empty, "with every KN set empty"), (n_one, "with fewer than 2 attributed queries")) if n]
    return f"left out (no consistency score): {' and '.join(parts)}" if parts else ""


def summarize(ctx: StudyContext) -> Section:
    section = Section(summary={"consistency": [], "consistency_relations": [], "consistency_all_methods": [],
                               "consistency_unscored": []})
    cfg = ctx.config
    for model in cfg.models:
        in_k_i: dict[str, dict[str, list[bool]]] = {"static": {}, "otsu": {}}
        views = [("on", True), ("off", False)] if cfg.filtered else [("off", False)]
        for method, (view, filtered) in ((m, v) for m in cfg.methods for v in views):
            scores = ctx.neurons.fact_scores(model, method, filtered)
            unscored = list(ctx.neurons.unscored(model, method, filtered).values())
            n_empty, n_one = unscored.count(EMPTY_KN), unscored.count(ONE_QUERY)
            if unscored or not scores:  # facts that are not evidence, named (and counted) instead
                section.summary["consistency_unscored"].append({
                    "model": model, "method": method, "specificity": view, "n_studied": len(ctx.facts[model]),
                    "n_scored": len(scores), "n_empty_kn": n_empty, "n_one_query": n_one})
            if not scores:
                continue
            ids = list(scores)
            values = np.array([scores[f] for f in ids])
            null, by_construction = null_baseline(ctx, model, method, filtered)
            null_gap, null_p = permutation_test_diff(values, null, seed=cfg.seed) if len(null) else (np.nan, np.nan)
            null_mean = float(np.mean(null)) if null else float("nan")
            notes = [unscored_note(n_empty, n_one)] if unscored else []
            if not null:
                notes.append("no null baseline: no relation has two studied facts to swap templates between")
            elif by_construction:
                null_gap = null_p = null_mean = np.nan
                notes.append(f"{NO_NULL_BY_CONSTRUCTION}: every pseudo-fact's queries come from one other studied "
                             "fact (two per relation), so the null repeats the real scores and the gap is 0 by "
                             "construction")
            elif len(values) < MIN_N or len(null) < MIN_N:
                null_p = np.nan
                notes.append(f"no null-baseline test: fewer than {MIN_N} facts or pseudo-facts")
            relation_of = {f.fact_id: f.relation for f in ctx.facts[model]}
            for kind, tau in ctx.neurons.thresholds(list(values)).items():
                k_c = split_groups(values, tau)
                k_i = (~k_c).astype(float)
                k_i_share = Estimate.bootstrap(k_i, n_boot=cfg.n_boot, seed=cfg.seed)
                row_notes = list(notes)
                welch = welch_t(values[k_c], values[~k_c])
                if min(int(k_c.sum()), int((~k_c).sum())) < MIN_N:
                    welch = np.nan
                    row_notes.append(f"no Welch test: K_C or K_I has fewer than {MIN_N} facts")
                section.summary["consistency"].append({
                    "model": model, "method": method, "n_facts": len(ids), "threshold_kind": kind,
                    "n_two_queries": sum(len(f.prompts) == 2 for f in ctx.facts[model] if f.fact_id in scores),
                    "threshold": float(tau), **k_i_share.fields("k_i_fraction", "k_i_ci_low", "k_i_ci_high"),
                    "welch_p": float(welch),
                    "cs_mean": float(values.mean()), "null_mean": null_mean,
                    "null_gap": float(null_gap), "null_p": float(null_p), "n_null": len(null),
                    "score": cfg.cs_score, "specificity": view, "n_empty_kn": n_empty, "n_one_query": n_one,
                    "note": "; ".join(row_notes)})
                if view != "on" and cfg.filtered:
                    continue  # the relation and all-method views follow the study's setting
                for fid, flag in zip(ids, k_i):
                    in_k_i[kind].setdefault(fid, []).append(bool(flag))
                for relation in sorted({relation_of[f] for f in ids}):
                    mask = np.array([relation_of[f] == relation for f in ids])
                    share = Estimate.bootstrap(k_i[mask], n_boot=cfg.n_boot, seed=cfg.seed)
                    section.summary["consistency_relations"].append({
                        "model": model, "method": method, "relation": relation, "threshold_kind": kind,
                        "n": share.n, **share.fields("k_i_fraction", "ci_low", "ci_high")})
            if view != "on" and cfg.filtered:
                continue
            by_relation: dict[str, list[float]] = {}
            for fid in ids:
                by_relation.setdefault(relation_of[fid], []).append(scores[fid])
            tau_otsu = ctx.neurons.thresholds(list(values))["otsu"]
            section.figures.append(violin_cs(
                by_relation, cfg.tau, tau_otsu, ctx.figures_dir / f"cs_violin_{slug(model)}_{method}.png",
                f"{cfg.cs_score.upper()} per relation — {model}, {method}"))
        for kind, flags in in_k_i.items():
            complete = [all(v) for v in flags.values() if len(v) == len(cfg.methods)]
            if complete:
                section.summary["consistency_all_methods"].append({
                    "model": model, "threshold_kind": kind, "n_facts": len(complete),
                    "k_i_fraction_all_methods": float(np.mean(complete))})
    paths, shown = heatmap_figures(ctx)
    section.figures += paths
    section.summary["kn_heatmap_neurons"] = shown
    return section


def heatmap_figures(ctx: StudyContext) -> tuple[list, list[dict]]:
    """Attribution heatmaps (layers x top neurons) of two neighbor queries of a K_C and of a K_I fact, and the
    neurons they show ({model, method, group, fact_id, layer, index})."""
    paths, shown = [], []
    model, method = ctx.config.models[0], ctx.config.methods[0]
    scores = ctx.neurons.fact_scores(model, method)
    if not scores:
        return paths, shown
    split = ctx.neurons.groups(model, method)
    facts = {f.fact_id: f for f in ctx.facts[model]}
    for group in GROUPS:
        members = [fid for fid, g in split.items() if g == group]
        if not members:
            continue
        # the most typical member with a neuron to show: highest CS for K_C, lowest for K_I (the filter can
        # leave a fact's first two queries without KNs); the sort is stable, so ties keep the facts' order
        for fid in sorted(members, key=lambda f: -scores[f] if group == K_C else scores[f]):
            tensors = ctx.store.scores(model, method, fid)
            first, second = sorted(tensors)[:2]
            kn = ctx.neurons.kn_lists(model, method, fid)
            neurons = list(dict.fromkeys(kn[first][:8] + kn[second][:8]))[:16]
            if neurons:
                break
        else:
            continue
        a, b = tensors[first], tensors[second]
        shown += [{"model": model, "method": method, "group": group, "fact_id": fid, "layer": l, "index": i}
                  for l, i in neurons]
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
    return paths, shown


def unscored_reason(row: dict, summary: dict) -> str:
    """Why a model and method have facts without a consistency score (a consistency_unscored row), one phrase."""
    n, n_scored, n_empty, n_one = row["n_studied"], row["n_scored"], row["n_empty_kn"], row["n_one_query"]
    if not n:
        min_known = (summary.get("config") or {}).get("min_known", 2)
        return f"no fact was studied: none is answered in >= {min_known} paraphrases"
    if n_one == n:
        return "every studied fact has fewer than 2 answered paraphrases: no CS to compute"
    if n_empty == n:
        return ("every studied fact's KN sets are empty (no neuron above --threshold x max, or the specificity "
                "filter removed them all): no CS to compute")
    left = f"{n - n_scored} of {n} studied facts have no CS ({n_empty} with only empty KN sets, {n_one} with fewer " \
           "than 2 answered paraphrases)"
    return left if n_scored else f"{left}: none is left"


def _unscored_rows(summary: dict) -> list[dict]:
    view = filter_view(summary)
    return [r for r in summary.get("consistency_unscored", []) if r.get("specificity", "off") == view]


def _nothing_scored(summary: dict) -> list[Part]:
    """One undecided part per model and method whose studied facts have no consistency score at all."""
    return [(f"{r['method']}: nothing to measure: {unscored_reason(r, summary)}.",
             (UNDECIDED, unscored_reason(r, summary))) for r in _unscored_rows(summary) if not r["n_scored"]]


def _notes(summary: dict) -> list[str]:
    notes = [f"Facts every method puts in K_I ({r['model']}, {r['threshold_kind']}): "
             f"{r['k_i_fraction_all_methods']:.2f} of {r['n_facts']}." for r in summary.get("consistency_all_methods", [])]
    for r in _unscored_rows(summary):
        notes.append(f"Not counted ({r['model']}, {r['method']}): {unscored_reason(r, summary)}. A fact without a "
                     "consistency score has no K_C / K_I group: it is left out of these tables and of every later "
                     "table that splits by group (the CS of empty KN sets would be 0 by definition, counting the "
                     "fact as K_I without any neuron to disagree on).")
    p = (summary.get("config") or {}).get("p", 0.5)
    view = filter_view(summary)
    for r in summary.get("consistency", []):
        if r.get("n_two_queries") and r["threshold_kind"] == "static" and r.get("specificity") == view and p <= 0.5:
            notes.append(f"{r['n_two_queries']} of {r['n_facts']} facts ({r['model']}, {r['method']}) have only two "
                         f"neighbor queries: their CS_p is 1 by construction (with p = {p}, a neuron in either set "
                         "is in p x 2 sets), so CS_p cannot tell them apart; CS1 and CS2 can.")
    return notes


def _static_rows(summary: dict) -> list[dict]:
    """The consistency rows the findings read: the static threshold, in the study's filter view."""
    view = filter_view(summary)
    return [r for r in summary.get("consistency", []) if r.get("threshold_kind") == "static"
            and r.get("specificity", "off") == view]


def _null_note(row: dict) -> str:
    """The part of a row's note that says why it has no null gap or test."""
    notes = (row.get("note") or "").split("; ")
    return next((n for n in notes if n.startswith("no null")), row.get("note") or "")


def judge_sharing(summary: dict) -> list[Part] | None:
    rows = _static_rows(summary)
    if not rows:
        return _nothing_scored(summary) or None
    parts = []
    for r in rows:
        if not ok(r.get("null_gap")):
            why = _null_note(r)
            said = why if why.startswith("no null baseline") else f"no null baseline ({why or 'no pseudo-fact'})"
            parts.append((f"{r['method']}: {said}.",
                          (UNDECIDED, why or "no null baseline")))
            continue
        p = r.get("null_p")
        decided = (UNDECIDED, _null_note(r) or "no test") if not ok(p) else \
            (SUPPORTS, "") if r["null_gap"] > 0 and p < 0.05 else \
            (CONTRADICTS, "") if r["null_gap"] <= 0 and p >= 0.05 else (UNDECIDED, "gap and test disagree")
        # the gap has a permutation test, not an interval: the figure shows it against 0 without one
        parts.append(Part(f"{r['method']}: mean CS exceeds the template-matched null by {num(r['null_gap'], 3)} "
                          f"(permutation p = {p:.2g}, {r['n_facts']} facts, {r['n_null']} pseudo-facts)."
                          if ok(p) else f"{r['method']}: gap {num(r['null_gap'], 3)}, no test.",
                          Decision(*decided, support=0.0, contradict=0.0),
                          Estimate(int(r["n_facts"]), r["null_gap"], math.nan, math.nan), r["method"]))
    return parts


def judge_k_i_share(summary: dict) -> list[Part] | None:
    rows = _static_rows(summary)
    if not rows:
        return _nothing_scored(summary) or None
    parts = []
    for r in rows:
        share = Estimate.from_row(r, "k_i_fraction", "k_i_ci_low", "k_i_ci_high", n="n_facts")
        left = unscored_note(r.get("n_empty_kn", 0), r.get("n_one_query", 0))
        parts.append(Part(f"{r['method']}: {num(share.value, 2, False)} {interval(share, 2, False)} of {share.n} "
                          f"facts are K_I (static tau {r['threshold']:.2f}{'; ' + left if left else ''}).",
                          verdict(share, support_above=0.2, contradict_below=0.1), share, r["method"]))
    return parts


FINDINGS = (
    Finding("paraphrases-share-kns", "Do a fact's paraphrases share knowledge neurons beyond chance?",
            "paraphrases share KNs (the premise of knowledge localization)",
            "supports: real facts' CS exceeds the template-matched null (gap > 0, permutation p < 0.05); "
            "contradicts: gap <= 0 with p >= 0.05 (the null baseline is knowloc's addition to the paper)",
            judge_sharing),
    Finding("k-i-share", "What share of facts is inconsistent (K_I)?", "K_I is a substantial share of facts (> 20%)",
            "supports: the K_I fraction's interval (static tau) lies above 0.2; contradicts: below 0.1",
            judge_k_i_share),
)


EXPERIMENT = Experiment(
    name="consistency", question="do a fact's neighbor queries share knowledge neurons (K_C / K_I)?",
    heading="Consistency", summarize=summarize,
    summary_keys=("consistency", "consistency_relations", "consistency_all_methods", "kn_heatmap_neurons",
                  "consistency_unscored"),
    intro="Consistency score of each fact's knowledge-neuron sets across its neighbor queries (CS1, CS2, CS_p; "
          "docs/analysis.md); facts below the threshold are inconsistent knowledge K_I. The static threshold is "
          "--tau; Otsu's threshold is fitted per model and method. Welch's t-test compares the CS of K_C and K_I; "
          "the null baseline scores pseudo-facts whose queries come from other facts of the same relation "
          "(gap = CS mean - null mean, permutation p). Specificity on: non-specific neurons removed from the KN "
          "sets; off: the unfiltered sets. Later experiments use the groups of the --split threshold.",
    tables=(
        Table("consistency", title="K_I fraction per model and method", columns=(
            Column("model", "model"), Column("method", "method"), Column("specificity filter", "specificity"),
            Column("facts", "n_facts", "int"), Column("threshold", "threshold_kind"),
            Column("tau", "threshold", "num", 3),
            Column("K_I fraction [95% CI]", "k_i_fraction", "ci", lo="k_i_ci_low", hi="k_i_ci_high", n_key="n_facts"),
            Column("Welch p", "welch_p", "p"), Column("CS mean", "cs_mean", "num", 3),
            Column("null mean", "null_mean", "num", 3), Column("null gap", "null_gap", "num", 3, signed=True),
            Column("null p", "null_p", "p"), Column("null facts", "n_null", "int"), Column("score", "score"),
            Column("note", "note", wrap=True))),
        Table("consistency_all_methods", title="Facts in K_I under every method", columns=(
            Column("model", "model"), Column("threshold", "threshold_kind"), Column("facts", "n_facts", "int"),
            Column("K_I under all methods", "k_i_fraction_all_methods", "num"))),
        Table("consistency_relations", title="K_I fraction per relation", columns=(
            Column("model", "model"), Column("method", "method"), Column("relation", "relation"),
            Column("threshold", "threshold_kind"), Column("facts", "n", "int"),
            Column("K_I fraction [95% CI]", "k_i_fraction", "ci", lo="ci_low", hi="ci_high")))),
    notes=_notes, findings=FINDINGS, shown_neurons="kn_heatmap_neurons")
