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

from knowloc.analysis import GROUPS, cas_select
from knowloc.analysis.fact_stats import metric_stats
from knowloc.editing import OPERATIONS
from knowloc.plots import heatmap_grid
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.experiments.common import kn_editors
from knowloc.study.experiments.skips import NO_TARGET, skip_counts
from knowloc.study.groups import grouped_trials
from knowloc.study.registry import Experiment
from knowloc.study.tables import Column, Table, edit_columns

METRICS = ("rel", "gen", "loc", "avg", "dppl", "dlogppl", "n_neurons")


def grid(ctx: StudyContext) -> list[tuple[float, float, float]]:
    cfg = ctx.config
    return list(itertools.product(cfg.cas_sweep.beta1, cfg.cas_sweep.beta2, cfg.cas_sweep.thresholds))


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """Every (grid point, operation, edited query) trial of one fact."""
    session = ctx.edit_session(model, fact)
    queries, stack = ctx.neurons.score_stack(model, method, fact.fact_id)
    editors = kn_editors(ctx.config)
    trials = []
    for beta1, beta2, t in grid(ctx):
        neurons = ctx.neurons.remove_nonspecific(model, method, fact.fact_id,
                                                 cas_select(stack, t, beta1, beta2, ctx.config.cas.top_k))
        for operation in OPERATIONS:
            for q in queries:
                row = {"beta1": beta1, "beta2": beta2, "t": t, "operation": operation, "edited": q,
                       "n_neurons": len(neurons)}
                trials.append((row, (editors[operation], q, neurons)))
    scores = session.measure_many([trial for _, trial in trials])  # the distinct edits in batched replays
    return [{**row, "skipped": s is None, **({m: s[m] for m in METRICS if m in s} if s else {})}
            for (row, _), s in zip(trials, scores)]


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    rows = []
    for model, method, group, fact_trials in grouped_trials(ctx, "cas-sweep"):
        for operation in OPERATIONS:
            for beta1, beta2, t in grid(ctx):
                match = {"operation": operation, "beta1": beta1, "beta2": beta2, "t": t}
                row = {"model": model, "method": method, "operation": operation, "group": group,
                       "beta1": beta1, "beta2": beta2, "t": t}
                row.update(metric_stats(fact_trials, METRICS, "avg", cfg.n_boot, cfg.seed, **match))
                # facts where this point selects nothing are skipped: say how many
                row["n_empty"] = sum(all(r["skipped"] for r in trials if _matches(r, match)) for trials in fact_trials)
                row.update(skip_counts(fact_trials, **match))
                rows.append(row)
    section = Section(summary={"cas_sweep": rows})
    betas = [(b1, b2) for b1 in cfg.cas_sweep.beta1 for b2 in cfg.cas_sweep.beta2]
    for model in cfg.models:
        for method in cfg.methods:
            for operation in OPERATIONS:
                for group in GROUPS:
                    cells = {(r["beta1"], r["beta2"], r["t"]): r["avg"] for r in rows
                             if (r["model"], r["method"], r["operation"], r["group"]) == (model, method, operation, group)}
                    matrix = np.array([[cells.get((b1, b2, t), np.nan) for t in cfg.cas_sweep.thresholds]
                                       for b1, b2 in betas], dtype=float)
                    if np.isnan(matrix).all():
                        continue
                    section.figures.append(heatmap_grid(
                        matrix, [f"β1={b1:g}, β2={b2:g}" for b1, b2 in betas],
                        [f"{t:g}" for t in cfg.cas_sweep.thresholds],
                        ctx.figures_dir / f"cas_sweep_{operation}_{group}_{slug(model)}_{method}.png",
                        f"CAS {operation}, {group}: Avg over the sweep — {model}, {method}",
                        xlabel="t (CAS > t x max CAS)", ylabel="β1, β2"))
    return section


def _matches(row: dict, match: dict) -> bool:
    return all(row.get(k) == v for k, v in match.items())


def _notes(summary: dict) -> list[str]:
    best = _best(summary.get("cas_sweep", []))
    notes = ["Best point by Avg per model, method, operation and group: " + "; ".join(best) + "."] if best else []
    rows = summary.get("cas_sweep", [])
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in rows):
        no_target: dict[str, int] = {}
        for r in rows:
            if (r["model"], r["method"], r["operation"]) == (model, method, "update"):
                no_target[r["group"]] = max(no_target.get(r["group"], 0), r.get("n_no_target_facts", 0))
        if any(no_target.values()):
            counts = ", ".join(f"{g} {n}" for g, n in no_target.items() if n)
            notes.append(f"Updates skipped for facts ({model}, {method}; {counts}): {NO_TARGET}; n_empty counts them "
                         "with the facts where the point selects nothing.")
    return notes


def _best(rows: list[dict]) -> list[str]:
    out = []
    keys = sorted({(r["model"], r["method"], r["operation"], r["group"]) for r in rows})
    for key in keys:
        cand = [r for r in rows if (r["model"], r["method"], r["operation"], r["group"]) == key and r["n"]]
        if cand:
            r = max(cand, key=lambda r: (r["avg"], -r["beta2"], r["t"]))
            out.append(f"{'/'.join(key)}: β1={r['beta1']:g} β2={r['beta2']:g} t={r['t']:g} Avg {r['avg']:.2f}")
    return out


EXPERIMENT = Experiment(
    name="cas-sweep", question="how does CAS editing depend on beta1, beta2 and t?",
    heading="CAS sweep", summarize=summarize, fact_work=fact_work, summary_keys=("cas_sweep",),
    intro="Avg of erase / update with the CAS selection over a grid of beta1, beta2 and t (transductive: CAS from "
          "all neighbor queries, each query edited in turn). Only beta2/beta1 and t change the selection. n: facts "
          "where the point selects at least one neuron; n_empty: facts where it selects none.",
    tables=(Table("cas_sweep", columns=(
        Column("model", "model"), Column("method", "method"), Column("operation", "operation"),
        Column("group", "group", "group"), Column("beta1", "beta1", "num", 2), Column("beta2", "beta2", "num", 2),
        Column("t", "t", "num", 2), Column("n", "n", "int"), Column("n_empty", "n_empty", "int"),
        Column("|S|", "n_neurons", "ci", 1), *edit_columns())),),
    notes=_notes)
