"""Experiment `cas-sweep`: how CAS editing depends on its knobs beta1, beta2 and t.

For every grid point (beta1, beta2, t) of the study's `cas_sweep_beta1` x `cas_sweep_beta2` x
`cas_sweep_thresholds`, CAS is computed from all of a fact's neighbor queries (the transductive protocol of
`cas`), its selection is erased / updated, and Rel / Gen / Loc / Avg / dPPL are measured as in `modification`
with each query in turn as the edited one. Only beta2 / beta1 and t change the selection (scaling both betas
scales CAS and its maximum alike); the grid keeps both betas so the table reads in the paper's terms. Points
that select the same neurons share one edit (EditSession), so a finer grid costs little where it changes
nothing.
"""

from __future__ import annotations

import itertools

import numpy as np

from knowloc.analysis import cas_select
from knowloc.study import specificity as spec
from knowloc.study.context import Section, StudyContext, fact_level_ci, slug
from knowloc.study.experiments.modification import OPERATIONS, EditSession, dlogppl_stats

METRICS = ("rel", "gen", "loc", "avg", "dppl", "dlogppl", "n_neurons")


def grid(ctx: StudyContext) -> list[tuple[float, float, float]]:
    cfg = ctx.config
    return list(itertools.product(cfg.cas_sweep_beta1, cfg.cas_sweep_beta2, cfg.cas_sweep_thresholds))


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """Every (grid point, operation, edited query) trial of one fact."""
    session = EditSession(ctx, model, fact, ctx.model(model))
    queries, stack = spec.score_stack(ctx, model, method, fact.fact_id)
    rows = []
    for beta1, beta2, t in grid(ctx):
        neurons = cas_select(stack, t, beta1, beta2, ctx.config.cas_top_k)
        for operation in OPERATIONS:
            for q in queries:
                row = {"beta1": beta1, "beta2": beta2, "t": t, "operation": operation, "edited": q,
                       "n_neurons": len(neurons)}
                scores = session.measure(operation, neurons, q)
                rows.append({**row, "skipped": scores is None,
                             **({m: scores[m] for m in METRICS if m in scores} if scores else {})})
    return rows


def summarize(ctx: StudyContext) -> Section:
    from knowloc.plots.figures import heatmap_grid
    from knowloc.study.experiments.consistency import grouped_trials

    cfg = ctx.config
    rows = []
    for model, method, group, fact_trials in grouped_trials(ctx, "cas-sweep"):
        for operation in OPERATIONS:
            for beta1, beta2, t in grid(ctx):
                match = {"operation": operation, "beta1": beta1, "beta2": beta2, "t": t}
                row = {"model": model, "method": method, "operation": operation, "group": group,
                       "beta1": beta1, "beta2": beta2, "t": t}
                for metric in METRICS:
                    n, est, lo, hi = fact_level_ci(fact_trials, metric, cfg.n_boot, cfg.seed, **match)
                    row.update({metric: est, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi})
                    if metric == "avg":
                        row["n"] = n
                row.update(dlogppl_stats(fact_trials, cfg, **match))
                # facts where this point selects nothing are skipped: say how many
                row["n_empty"] = sum(all(r["skipped"] for r in trials if _matches(r, match)) for trials in fact_trials)
                rows.append(row)
    section = Section(summary={"cas_sweep": rows}, tables={"cas_sweep": rows})
    betas = [(b1, b2) for b1 in cfg.cas_sweep_beta1 for b2 in cfg.cas_sweep_beta2]
    for model in cfg.models:
        for method in cfg.methods:
            for operation in OPERATIONS:
                for group in ("K_C", "K_I"):
                    cells = {(r["beta1"], r["beta2"], r["t"]): r["avg"] for r in rows
                             if (r["model"], r["method"], r["operation"], r["group"]) == (model, method, operation, group)}
                    matrix = np.array([[cells.get((b1, b2, t), np.nan) for t in cfg.cas_sweep_thresholds]
                                       for b1, b2 in betas], dtype=float)
                    if np.isnan(matrix).all():
                        continue
                    section.figures.append(heatmap_grid(
                        matrix, [f"β1={b1:g}, β2={b2:g}" for b1, b2 in betas],
                        [f"{t:g}" for t in cfg.cas_sweep_thresholds],
                        ctx.figures_dir / f"cas_sweep_{operation}_{group}_{slug(model)}_{method}.png",
                        f"CAS {operation}, {group}: Avg over the sweep — {model}, {method}",
                        xlabel="t (CAS > t x max CAS)", ylabel="β1, β2"))
    section.markdown += _markdown(rows)
    return section


def _matches(row: dict, match: dict) -> bool:
    return all(row.get(k) == v for k, v in match.items())


def _markdown(rows: list[dict]) -> list[str]:
    lines = ["## CAS sweep (Avg over beta1, beta2, t; transductive)", "",
             "| model | method | op | group | β1 | β2 | t | n | |S| | Avg [95% CI] | Rel | Gen | Loc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['operation']} | {r['group']} | {r['beta1']:g} | "
                     f"{r['beta2']:g} | {r['t']:g} | {r['n']} | {r['n_neurons']:.1f} | {r['avg']:.2f} "
                     f"[{r['avg_ci_low']:.2f}, {r['avg_ci_high']:.2f}] | {r['rel']:.2f} | {r['gen']:.2f} | "
                     f"{r['loc']:.2f} |")
    best = _best(rows)
    if best:
        lines += ["", "Best point by Avg per model, method, operation and group: " + "; ".join(best)]
    return lines + [""]


def _best(rows: list[dict]) -> list[str]:
    out = []
    keys = sorted({(r["model"], r["method"], r["operation"], r["group"]) for r in rows})
    for key in keys:
        cand = [r for r in rows if (r["model"], r["method"], r["operation"], r["group"]) == key and r["n"]]
        if cand:
            r = max(cand, key=lambda r: (r["avg"], -r["beta2"], r["t"]))
            out.append(f"{'/'.join(key)}: β1={r['beta1']:g} β2={r['beta2']:g} t={r['t']:g} Avg {r['avg']:.2f}")
    return out
