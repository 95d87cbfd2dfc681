"""Experiment `cas`: Consistency-Aware KN modification against the single-query and union baselines.

Selections per fact (docs/analysis.md): CAS (strong AND consistent across neighbor queries), N_i (the edited
query's own KNs) and N_g (union over the neighbors). Operations and metrics are those of `modification`.
Protocols: `transductive` (CAS from all neighbor queries, as in the paper; every q_i is edited) and
`held_out` (for each paraphrase h, CAS / N_g are computed without h, the query after h is edited, and
Generalization is measured on h alone). Budgets: `free` (each selection as it comes) and `matched` (N_i and
N_g cut to the |CAS| strongest neurons; N_g ranks neurons by their best per-query normalised score).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from knowloc.analysis import MIN_N, bootstrap_ci, cas_select, paired_bootstrap_diff, select_neurons
from knowloc.editing import OPERATIONS
from knowloc.plots import grouped_bars
from knowloc.study import specificity as spec
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.context import trial_key as _key
from knowloc.study.registry import Experiment, register
from knowloc.study.groups import groups
from knowloc.study.tables import Column, Table, edit_columns

SELECTIONS = ("CAS", "N_i", "N_g")
METRICS = ("rel", "gen", "loc", "avg", "dppl", "dlogppl")


def _normalised(stack: torch.Tensor) -> torch.Tensor:
    peaks = stack.flatten(1).amax(dim=1).clamp_min(torch.finfo(stack.dtype).tiny)
    return stack / peaks.view(-1, 1, 1)


def selections(ctx: StudyContext, stack: torch.Tensor, edited: int, members: list[int],
               keep=lambda neurons: neurons) -> dict[str, dict]:
    """{budget: {selection: neurons}} for editing query `edited`, with CAS and N_g built from `members`; `keep`
    filters each selection (the specificity filter) before the matched budget is taken."""
    cfg = ctx.config
    sub = stack[members]
    cas = keep(cas_select(sub, cfg.cas_threshold, cfg.cas_beta1, cfg.cas_beta2, cfg.cas_top_k))
    own = keep(select_neurons(stack[edited], cfg.threshold))
    union_scores = _normalised(sub).amax(dim=0)
    union = keep(sorted({n for m in members for n in select_neurons(stack[m], cfg.threshold)},
                        key=lambda n: (-float(union_scores[n]), n)))
    k = len(cas)
    return {"free": {"CAS": cas, "N_i": own, "N_g": union},
            "matched": {"CAS": cas, "N_i": own[:k], "N_g": union[:k]}}


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """Every (protocol, edited query, budget, selection, operation) trial of one fact."""
    session = ctx.edit_session(model, fact)
    queries, stack = spec.score_stack(ctx, model, method, fact.fact_id)
    n = len(queries)
    plans = [("transductive", i, list(range(n)), None) for i in range(n)]
    plans += [("held_out", (h + 1) % n, [m for m in range(n) if m != h], h) for h in range(n)]
    rows = []
    for protocol, edited, members, held in plans:
        keep = partial(spec.remove_nonspecific, ctx, model, method, fact.fact_id)
        for budget, chosen in selections(ctx, stack, edited, members, keep).items():
            for selection, neurons in chosen.items():
                if budget == "matched" and selection == "CAS":
                    continue  # identical to the free CAS trial
                for operation in OPERATIONS:
                    row = {"protocol": protocol, "edited": edited, "held_out": held, "budget": budget,
                           "selection": selection, "operation": operation, "n_neurons": len(neurons)}
                    scores = session.measure(operation, neurons, queries[edited],
                                             generalize_on=None if held is None else [queries[held]])
                    if scores is None:
                        rows.append({**row, "skipped": True})
                    else:
                        rows.append({**row, "skipped": False, **{m: scores[m] for m in METRICS}})
    return rows


def _ci(result: tuple, n: int) -> tuple[float, float, float]:
    """(estimate, low, high) with the interval withheld below MIN_N facts."""
    est, lo, hi = result
    return (float(est), float("nan"), float("nan")) if n < MIN_N else (float(est), float(lo), float(hi))


def _fact_mean(rows: list[dict], metric: str, **match) -> float:
    values = [r.get(metric, np.nan) for r in rows if not r["skipped"] and all(r[k] == v for k, v in match.items())]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    trials = ctx.store.trials("cas")
    rows, comparisons = [], []
    for model in cfg.models:
        for method in cfg.methods:
            split = groups(ctx, model, method)
            for operation in OPERATIONS:
                for group in ("K_C", "K_I"):
                    facts = [f for f in ctx.facts[model] if split.get(f.fact_id) == group
                             and _key(model, method, f.fact_id) in trials]
                    for protocol in ("transductive", "held_out"):
                        for budget in ("free", "matched"):
                            per_sel = {}
                            for selection in SELECTIONS:
                                match = {"operation": operation, "protocol": protocol, "selection": selection}
                                if selection != "CAS":
                                    match["budget"] = budget
                                fact_rows_ = [trials[_key(model, method, f.fact_id)] for f in facts]
                                table = {m: np.array([_fact_mean(fr, m, **match) for fr in fact_rows_]) for m in
                                         METRICS + ("n_neurons",)}
                                per_sel[selection] = table
                                row = {"model": model, "method": method, "operation": operation, "group": group,
                                       "selection": selection, "protocol": protocol, "budget": budget}
                                avg = table["avg"][~np.isnan(table["avg"])]
                                row["n"] = int(avg.size)
                                row["n_neurons"] = float(np.nanmean(table["n_neurons"])) if avg.size else float("nan")
                                for metric in METRICS:
                                    values = table[metric][~np.isnan(table[metric])]
                                    est, lo, hi = _ci(bootstrap_ci(values, n_boot=cfg.n_boot, seed=cfg.seed),
                                                      values.size)
                                    name = "dlogppl_mean" if metric == "dlogppl" else metric
                                    row.update({name: float(est), f"{name}_ci_low": float(lo),
                                                f"{name}_ci_high": float(hi)})
                                    if metric == "dlogppl":
                                        est, lo, hi = _ci(bootstrap_ci(values, stat=np.median, n_boot=cfg.n_boot,
                                                                       seed=cfg.seed), values.size)
                                        row.update({"dlogppl_median": float(est),
                                                    "dlogppl_median_ci_low": float(lo),
                                                    "dlogppl_median_ci_high": float(hi)})
                                rows.append(row)
                            for baseline in ("N_i", "N_g"):
                                a, b = per_sel["CAS"]["avg"], per_sel[baseline]["avg"]
                                ok = ~np.isnan(a) & ~np.isnan(b)
                                if ok.sum() == 0:
                                    continue
                                diff, lo, hi = _ci(paired_bootstrap_diff(a[ok], b[ok], n_boot=cfg.n_boot,
                                                                         seed=cfg.seed), int(ok.sum()))
                                comparisons.append({
                                    "model": model, "method": method, "operation": operation, "group": group,
                                    "protocol": protocol, "budget": budget, "baseline": baseline, "n": int(ok.sum()),
                                    "avg_diff": float(diff), "ci_low": float(lo), "ci_high": float(hi),
                                    "beyond_ci": bool(ok.sum() >= MIN_N and (lo > 0 or hi < 0))})
    section = Section(summary={"cas": rows, "cas_comparison": comparisons},
                      tables={"cas": rows, "cas_comparison": comparisons})
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


EXPERIMENT = register(Experiment(
    name="cas", question="do strong-and-consistent neurons (CAS) edit better than N_i and N_g?",
    heading="CAS", summarize=summarize, fact_work=fact_work, summary_keys=("cas", "cas_comparison"),
    settings=("cas_beta1", "cas_beta2", "cas_threshold", "cas_top_k"),
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
            *edit_columns()))),
    figures=("cas_erase", "cas_update")))
