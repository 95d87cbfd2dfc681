"""Experiment `cas`: Consistency-Aware KN modification against the single-query and union baselines.

Selections per fact (docs/analysis.md): CAS (strong AND consistent across neighbor queries), N_i (the edited
query's own KNs) and N_g (union over the neighbors). Operations and metrics are those of `modification`.
Protocols: `transductive` (CAS from all neighbor queries, as in the paper; every q_i is edited) and
`held_out` (for each paraphrase h, CAS / N_g are computed without h, the query after h is edited, and
Generalization is measured on h alone). Budgets: `free` (each selection as it comes) and `matched` (N_i and
N_g cut to the |CAS| strongest neurons; N_g ranks neurons by their best per-query normalised score).
"""

from __future__ import annotations

import itertools
from functools import partial

import numpy as np

from knowloc.analysis import GROUPS
from knowloc.analysis.cas import CAS_BUDGETS
from knowloc.analysis.fact_stats import dlogppl_stats, fact_level_ci, fact_means, paired_contrast
from knowloc.editing import OPERATIONS
from knowloc.plots import grouped_bars
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.context import trial_key as _key
from knowloc.study.experiments.common import kn_editors, selections
from knowloc.study.experiments.skips import skip_counts, trials as n_trials
from knowloc.study.findings import interval, judge_rows, num
from knowloc.study.registry import Experiment, Finding, Part
from knowloc.study.tables import Column, Table, edit_columns

SELECTIONS = ("CAS", "N_i", "N_g")
METRICS = ("rel", "gen", "loc", "avg", "dppl", "dlogppl")


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """Every (protocol, edited query, budget, selection, operation) trial of one fact, for the protocols of
    --cas-protocols and the budgets of --cas-budgets."""
    session = ctx.edit_session(model, fact)
    queries, stack = ctx.neurons.score_stack(model, method, fact.fact_id)
    n = len(queries)
    protocols = ctx.config.cas.protocols
    plans = [("transductive", i, list(range(n)), None) for i in range(n)] if "transductive" in protocols else []
    if "held_out" in protocols:
        plans += [("held_out", (h + 1) % n, [m for m in range(n) if m != h], h) for h in range(n)]
    editors = kn_editors(ctx.config)
    trials = []
    budgets = ctx.config.cas.budgets
    for protocol, edited, members, held in plans:
        keep = partial(ctx.neurons.remove_nonspecific, model, method, fact.fact_id)
        for budget, chosen in selections(ctx, stack, edited, members, keep).items():
            if budget not in budgets:
                continue
            for selection, neurons in chosen.items():
                if selection == "CAS" and budget != budgets[0]:
                    continue  # identical to the first budget's CAS trial (CAS is never cut)
                for operation in OPERATIONS:
                    row = {"protocol": protocol, "edited": edited, "held_out": held, "budget": budget,
                           "selection": selection, "operation": operation, "n_neurons": len(neurons)}
                    trials.append((row, (editors[operation], queries[edited], neurons),
                                   None if held is None else [queries[held]]))
    scores = session.measure_many([trial for _, trial, _ in trials],  # the distinct edits in batched replays
                                  [generalize_on for _, _, generalize_on in trials])
    return [{**row, "skipped": s is None, **({m: s[m] for m in METRICS} if s else {})}
            for (row, _, _), s in zip(trials, scores)]


def _selection_row(fact_trials: list[list[dict]], cfg, match: dict) -> dict:
    """A selection's metrics over facts (each fact: the mean over its matching trials) with bootstrap CIs; n is
    the number of facts with an Avg, |S| the mean over those facts of their mean selection size."""
    row = {"n": fact_level_ci(fact_trials, "avg", cfg.n_boot, cfg.seed, **match).n}
    sizes = fact_means(fact_trials, "n_neurons", **match)
    row["n_neurons"] = float(np.nanmean(sizes)) if row["n"] else float("nan")
    for metric in METRICS:
        if metric != "dlogppl":
            row.update(fact_level_ci(fact_trials, metric, cfg.n_boot, cfg.seed, **match).fields(metric))
    row.update(dlogppl_stats(fact_trials, cfg.n_boot, cfg.seed, **match))
    row.update(skip_counts(fact_trials, **match))
    return row


def _notes(summary: dict) -> list[str]:
    """The trials that could not be made, per model and method (each trial once: a later budget's CAS rows repeat
    the first budget's)."""
    notes = []
    rows = summary.get("cas", [])
    first = next((b for b in CAS_BUDGETS if any(r["budget"] == b for r in rows)), None)
    rows = [r for r in rows if r["budget"] == first or r["selection"] != "CAS"]
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["method"]) == (model, method)]
        skipped, no_target = (sum(r.get(k, 0) for r in mine) for k in ("n_skipped", "n_no_target"))
        if skipped:
            why = [f"{skipped - no_target} with an empty selection"] if skipped > no_target else []
            why += [f"{no_target} updates of facts whose relation has no other object to update to"] if no_target else []
            notes.append(f"{n_trials(skipped)} skipped ({model}, {method}): {', '.join(why)}; each row's n counts "
                         "only facts with a measured trial.")
    return notes


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    trials = ctx.store.trials("cas")
    rows, comparisons = [], []
    for model, method, operation, group, protocol, budget in itertools.product(
            cfg.models, cfg.methods, OPERATIONS, GROUPS, cfg.cas.protocols, cfg.cas.budgets):
        split = ctx.neurons.groups(model, method)
        fact_trials = [trials[_key(model, method, f.fact_id)] for f in ctx.facts[model]
                       if split.get(f.fact_id) == group and _key(model, method, f.fact_id) in trials]
        where = {"model": model, "method": method, "operation": operation, "group": group}
        matches = {selection: {"operation": operation, "protocol": protocol, "selection": selection,
                               **({} if selection == "CAS" else {"budget": budget})} for selection in SELECTIONS}
        for selection, match in matches.items():
            rows.append({**where, "selection": selection, "protocol": protocol, "budget": budget,
                         **_selection_row(fact_trials, cfg, match)})
        for baseline in ("N_i", "N_g"):
            diff = paired_contrast(fact_trials, "avg", matches["CAS"], matches[baseline], cfg.n_boot, cfg.seed)
            if diff.n:
                comparisons.append({**where, "protocol": protocol, "budget": budget, "baseline": baseline,
                                    **diff.contrast("avg_diff")})
    section = Section(summary={"cas": rows, "cas_comparison": comparisons})
    for model in cfg.models:
        for method in cfg.methods:
            for operation in OPERATIONS:
                subset = [r for r in rows if r["model"] == model and r["method"] == method
                          and r["operation"] == operation and r["protocol"] == "transductive" and r["budget"] == "free"]
                if any(r["n"] for r in subset):
                    section.figures.append(grouped_bars(
                        subset, ctx.figures_dir / f"cas_{operation}_{slug(model)}_{method}.png",
                        f"{operation}: Avg by neuron selection (transductive) — {model}, {method}", x="group",
                        hue="selection", value="avg", low="avg_ci_low", high="avg_ci_high",
                        ylabel="Avg of Rel, Gen, Loc (95% CI)"))
    return section


def judge_cas(summary: dict) -> list[Part]:
    return judge_rows(summary.get("cas_comparison", []),
                      {"operation": "erase", "protocol": "transductive", "budget": "free"}, lambda r, diff: (
                          f"{r['method']} {r['group']}: Avg of CAS minus {r['baseline']} is {num(diff.value, 3)} "
                          f"{interval(diff, 3)} (n {diff.n})."), key="avg_diff", support_above=0.0,
                      contradict_below=0.0)


FINDINGS = (Finding(
    "cas-beats-baselines", "Does CAS beat N_i and N_g?", "CAS edits better (about +8% over N_i, +9% over N_g Avg)",
    "Avg of CAS minus each baseline (erase, transductive, free budget, paired over facts): supports when the "
    "interval lies above 0; contradicts when it lies below 0", judge_cas),)


EXPERIMENT = Experiment(
    name="cas", question="do strong-and-consistent neurons (CAS) edit better than N_i and N_g?",
    heading="CAS", summarize=summarize, fact_work=fact_work, summary_keys=("cas", "cas_comparison"),
    findings=FINDINGS, notes=_notes,
    intro="Consistency-aware KN modification: CAS selects neurons that are strong and consistent across neighbor "
          "queries; it is compared with each query's own KNs (N_i) and the union (N_g). Protocols: transductive "
          "(CAS from all neighbor queries) and held-out (one paraphrase left out and used for Gen). Budgets: free, "
          "or matched (baselines cut to |CAS| neurons). Updates use the study's update rule.",
    tables=(
        Table("cas_comparison", title="CAS vs. baselines",
              note="* the paired-bootstrap interval excludes 0 (stars and intervals need at least 5 facts).",
              columns=(
                  Column("model", "model"), Column("method", "method"), Column("operation", "operation"),
                  Column("group", "group", "group"), Column("protocol", "protocol"), Column("budget", "budget"),
                  Column("baseline", "baseline"), Column("n", "n", "int"),
                  Column("Avg(CAS) - Avg(baseline) [95% CI]", "avg_diff", "ci", 3, True, "ci_low", "ci_high"),
                  Column("", "beyond_ci", "star"))),
        Table("cas", title="Scores per selection", columns=(
            Column("model", "model"), Column("method", "method"), Column("operation", "operation"),
            Column("group", "group", "group"), Column("selection", "selection"), Column("protocol", "protocol"),
            Column("budget", "budget"), Column("n", "n", "int"), Column("|S|", "n_neurons", "num", 1),
            *edit_columns()))))
