"""Experiment `modification`: erase / update a query's knowledge neurons and see who notices.

For each studied fact, each neighbor query q_i, operation (erase, update) and neuron set S in
{N_i (own KNs: the KL way), N_g (union over the neighbors), N_cap (intersection; skipped when empty)}, the
model is edited reversibly and Rel (on q_i), Gen (on q_j, j != i), Loc (other relations' answers unchanged),
Avg and the fluency change dlogPPL = log(PPL_after / PPL_before) on neutral text are measured (docs/editing.md).
Updates use the study's --update-rule, --lambda1 and --lambda2; the neuron sets are the study's (specificity
filter applied). Trials are stored per (model, method, fact).
"""

from __future__ import annotations

from knowloc.analysis import GROUPS
from knowloc.analysis.fact_stats import metric_stats
from knowloc.editing import OPERATIONS
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.context import trial_key as _key
from knowloc.study.experiments.common import gap_columns, group_contrast, kn_editors, rate_figure
from knowloc.study.experiments.skips import NO_TARGET, facts, skip_counts, trials as n_trials
from knowloc.study.findings import interval, judge_rows, num
from knowloc.study.registry import Experiment, Finding, Part
from knowloc.study.tables import Column, Table, edit_columns

NEURON_SETS = ("N_i", "N_g", "N_cap")
METRICS = ("rel", "gen", "loc", "avg", "dppl", "dprob_self", "dprob_neighbors")  # plus dlogppl mean / median


def neuron_sets(kn: dict[int, list[tuple[int, int]]], i: int) -> dict[str, list[tuple[int, int]]]:
    union = sorted(set().union(*map(set, kn.values())))
    cap = sorted(set.intersection(*map(set, kn.values())))
    return {"N_i": list(kn[i]), "N_g": union, "N_cap": cap}


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """All trials of one fact: every query x neuron set x operation."""
    session = ctx.edit_session(model, fact)
    kn = ctx.neurons.kn_lists(model, method, fact.fact_id)
    editors = kn_editors(ctx.config)
    plan = [({"qidx": i, "operation": operation, "neurons": name, "n_neurons": len(neurons)},
             (editors[operation], i, neurons))
            for i in sorted(kn) for name, neurons in neuron_sets(kn, i).items() for operation in OPERATIONS]
    scores = session.measure_many([trial for _, trial in plan])  # the distinct edits in batched replays
    return [{**row, "skipped": s is None, **(s or {})} for (row, _), s in zip(plan, scores)]


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    trials = ctx.store.trials("modification")
    section = Section(summary={"modification": [], "modification_counts": [], "modification_contrasts": []})
    for model in cfg.models:
        for method in cfg.methods:
            split = ctx.neurons.groups(model, method)
            facts = [f for f in ctx.facts[model] if _key(model, method, f.fact_id) in trials and f.fact_id in split]
            empty_cap = sum(all(r["skipped"] for r in trials[_key(model, method, f.fact_id)]
                                if r["neurons"] == "N_cap") for f in facts)
            section.summary["modification_counts"].append({"model": model, "method": method, "n_facts": len(facts),
                                                           "n_cap_empty_facts": empty_cap})
            for operation in OPERATIONS:
                for group in GROUPS:
                    for neurons in NEURON_SETS:
                        fact_trials = [trials[_key(model, method, f.fact_id)] for f in facts
                                       if split[f.fact_id] == group]
                        row = {"model": model, "method": method, "operation": operation, "group": group,
                               "neurons": neurons, "update_rule": cfg.update.rule if operation == "update" else None}
                        # Rel is defined for every trial that ran: n = facts with trials
                        row.update(metric_stats(fact_trials, METRICS, "rel", cfg.n_boot, cfg.seed,
                                                operation=operation, neurons=neurons))
                        row.update(skip_counts(fact_trials, operation=operation, neurons=neurons))
                        section.summary["modification"].append(row)
                by_group = {g: [trials[_key(model, method, f.fact_id)] for f in facts if split[f.fact_id] == g]
                            for g in GROUPS}
                section.summary["modification_contrasts"].append(
                    group_contrast(by_group, "gen", cfg, model=model, method=method, operation=operation,
                                   neurons="N_i"))
    rows = section.summary["modification"]
    for model in cfg.models:
        for method in cfg.methods:
            for operation in OPERATIONS:
                mine = [r for r in rows if (r["model"], r["method"], r["operation"]) == (model, method, operation)]
                figure = rate_figure(mine, ("rel", "gen", "loc", "avg"), "neurons", lambda r: r["neurons"],
                                     ctx.figures_dir / f"modification_{operation}_{slug(model)}_{method}.png",
                                     f"{operation}: success rates by neuron set — {model}, {method}")
                if figure is not None:
                    section.figures.append(figure)
    return section


def _notes(summary: dict) -> list[str]:
    notes = [f"N_cap empty for {c['n_cap_empty_facts']} of {c['n_facts']} facts ({c['model']}, {c['method']})."
             for c in summary.get("modification_counts", [])]
    for c in summary.get("modification_counts", []):
        mine = [r for r in summary.get("modification", []) if (r["model"], r["method"]) == (c["model"], c["method"])]
        # facts of each group whose updates found no new object (the most over the neuron sets: an empty set
        # skips a trial before the missing object shows)
        no_target = sum(max((r.get("n_no_target_facts", 0) for r in mine if r["operation"] == "update"
                             and r["group"] == group), default=0) for group in GROUPS)
        if no_target:
            notes.append(f"Updates skipped for {no_target} of {facts(c['n_facts'])} ({c['model']}, {c['method']}): "
                         f"{NO_TARGET}; the update rows' n counts only the other facts.")
        empty = sum(r.get("n_skipped", 0) - r.get("n_no_target", 0) for r in summary.get("modification", [])
                    if (r["model"], r["method"], r["operation"]) == (c["model"], c["method"], "erase")
                    and r["neurons"] in ("N_i", "N_g"))
        if empty:
            notes.append(f"{n_trials(empty)} of N_i / N_g skipped ({c['model']}, {c['method']}): the query's KN set "
                         "is empty (no neuron above --threshold x max, or the specificity filter removed them all).")
    return notes


def judge_generalization(summary: dict) -> list[Part]:
    rows = [r for r in summary.get("modification_contrasts", []) if r.get("operation") == "erase"]
    if not any(r["n_k_c"] + r["n_k_i"] for r in rows):
        return []  # no fact in either group: nothing measured (the finding says why)
    return judge_rows(rows, {}, lambda r, gap: (
        f"{r['method']}: Gen after erasing N_i is {num(r['k_c'], 2, False)} for K_C and {num(r['k_i'], 2, False)} "
        f"for K_I, a difference of {num(gap.value)} {interval(gap)} ({r['n_k_c']} / {r['n_k_i']} facts)."),
        n=lambda r: min(r["n_k_c"], r["n_k_i"]), support_above=0.0, contradict_below=0.05)


FINDINGS = (Finding(
    "kc-ki-generalization", "Do edits of one query's KNs generalize to its paraphrases, K_C vs K_I?",
    "K_C generalizes, K_I does not (Gen K_C > Gen K_I)",
    "Gen of erasing N_i, K_C minus K_I: supports when the interval lies above 0; contradicts when it lies below "
    "0.05 (it rules out a gap of 5 points or more)", judge_generalization),)


EXPERIMENT = Experiment(
    name="modification", question="erase / update N_i, N_g, N_cap: does editing a query's KNs generalize?",
    heading="Modification", summarize=summarize, fact_work=fact_work,
    summary_keys=("modification", "modification_counts", "modification_contrasts"),
    intro="Each neighbor query q_i's knowledge neurons are erased or updated with the neuron set N_i (its own "
          "KNs), N_g (union over the neighbors) or N_cap (intersection); Rel is measured on q_i, Gen on the other "
          "neighbor queries, Loc on other relations' facts, Avg is their mean, dlogPPL = log(PPL after / PPL "
          "before) on neutral text (median over facts; 0 = unchanged, +0.69 = doubled). Means over facts with "
          "95% bootstrap CIs; raw dPPL is in tables/modification.csv.",
    tables=(
        Table("modification", columns=(
            Column("model", "model"), Column("method", "method"), Column("operation", "operation"),
            Column("group", "group", "group"), Column("neurons", "neurons"), Column("rule", "update_rule"),
            Column("n", "n", "int"), *edit_columns(),
            Column("dprob self", "dprob_self", "num", 2, signed=True),
            Column("dprob neighbors", "dprob_neighbors", "num", 2, signed=True))),
        Table("modification_contrasts", title="Does editing a query's own KNs generalize less for K_I? Gen of N_i, "
              "K_C minus K_I", columns=(
                  Column("model", "model"), Column("method", "method"), Column("operation", "operation"),
                  *gap_columns())),
        Table("modification_counts", title="Facts with an empty N_cap", columns=(
            Column("model", "model"), Column("method", "method"), Column("facts", "n_facts", "int"),
            Column("N_cap empty", "n_cap_empty_facts", "int")))),
    notes=_notes, findings=FINDINGS)
