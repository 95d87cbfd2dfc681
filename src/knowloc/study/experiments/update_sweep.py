"""Experiment `update-sweep`: the Rel-vs-Loc frontier of the update rules.

For each studied fact, a seeded sample of `--sweep-queries` of its neighbor queries q_i, each update rule of
`--sweep-rules` (dai, signed, calibrated; docs/editing.md) and each lambda2 of `--sweep-lambda2`, the query's own
KNs N_i (specificity filter applied) are updated from the gold object o to another object o' of the relation
with lambda1 = `--lambda1` (or lambda1 = lambda2 with `--sweep-tied`), and Rel (P(o') > P(o) on q_i), Gen (on
the other neighbor queries), Loc (other relations' answers unchanged), Avg and dlogPPL = log(PPL_after /
PPL_before) on neutral text are measured.
Summaries per model x method x rule x lambda2 x group (K_C, K_I, all) carry n facts and bootstrap CIs over
facts; a frontier figure per model x method x rule draws Rel against Loc as lambda2 grows.

The best frontier point of a rule is its highest Rel among the lambda2 with Loc >= 0.8 (LOC_FLOOR).

With a fixed lambda1, Loc peaks near lambda2 = lambda1: ``lambda2 e' - lambda1 e = (lambda1 + lambda2) / 2
(e' - e) + (lambda2 - lambda1) / 2 (e' + e)``, and the unembedding rows of different tokens share a large common
direction, which ``e' - e`` cancels and ``e' + e`` does not (benchmarks/unembedding_geometry.py). `--sweep-tied`
sweeps the edit's size alone (docs/editing.md, "Why locality peaks at lambda2 = lambda1").
"""

from __future__ import annotations

from knowloc.analysis import GROUPS
from knowloc.analysis.fact_stats import metric_stats
from knowloc.editing.editors import KnUpdate
from knowloc.plots import frontier_plot
from knowloc.study.config import StudyConfig
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.experiments.common import ALL, edited_queries
from knowloc.study.experiments.skips import NO_TARGET, facts, skip_counts
from knowloc.study.groups import grouped_trials
from knowloc.study.registry import Experiment
from knowloc.study.tables import Column, Table, edit_columns, missing

METRICS = ("rel", "gen", "loc", "avg", "dprob_self", "n_neurons")
LOC_FLOOR = 0.8
SWEEP_GROUPS = (*GROUPS, ALL)


def sweep_lambda1(cfg: StudyConfig, lambda2: float) -> float:
    """lambda1 at a grid point: lambda2 itself with --sweep-tied, else --lambda1."""
    return cfg.update_sweep.lambda1(cfg.update.lambda1, lambda2)


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """Every (rule, lambda2, edited query) update of one fact's N_i."""
    session = ctx.edit_session(model, fact)
    kn = ctx.neurons.kn_lists(model, method, fact.fact_id)
    trials = []
    for rule in ctx.config.update_sweep.rules:
        for lambda2 in ctx.config.update_sweep.lambda2:
            lambda1 = sweep_lambda1(ctx.config, lambda2)
            for q in edited_queries(ctx, model, method, fact.fact_id, list(kn)):
                row = {"rule": rule, "lambda1": lambda1, "lambda2": lambda2, "edited": q, "n_neurons": len(kn[q])}
                trials.append((row, (KnUpdate(rule, lambda1, lambda2), q, kn[q])))
    scores = session.measure_many([trial for _, trial in trials])  # the distinct edits in batched replays
    return [{**row, "skipped": s is None, **(s or {})} for (row, _), s in zip(trials, scores)]


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    rows = []
    for model, method, group, fact_trials in grouped_trials(ctx, "update-sweep", every=ALL):
        for rule in cfg.update_sweep.rules:
            for lambda2 in cfg.update_sweep.lambda2:
                match = {"rule": rule, "lambda2": lambda2}
                row = {"model": model, "method": method, "rule": rule, "lambda1": sweep_lambda1(cfg, lambda2),
                       "lambda2": lambda2, "group": group}
                row.update(metric_stats(fact_trials, METRICS, "rel", cfg.n_boot, cfg.seed, **match))
                row.update(skip_counts(fact_trials, **match))
                rows.append(row)
    section = Section(summary={"update_sweep": rows})
    grown = "lambda1 = lambda2" if cfg.update_sweep.tied else f"lambda2 (lambda1 = {cfg.update.lambda1:g})"
    for model in cfg.models:
        for method in cfg.methods:
            for rule in cfg.update_sweep.rules:
                series = {}
                for group in SWEEP_GROUPS:
                    points = sorted((r for r in rows if (r["model"], r["method"], r["rule"], r["group"])
                                     == (model, method, rule, group) and r["n"]), key=lambda r: r["lambda2"])
                    if points:
                        series[f"{group} (n={max(r['n'] for r in points)})"] = [
                            (r["loc"], r["rel"], f"{r['lambda2']:g}") for r in points]
                if series:
                    section.figures.append(frontier_plot(
                        series, ctx.figures_dir / f"update_frontier_{slug(model)}_{method}_{rule}.png",
                        f"update rule {rule}: Rel vs Loc as {grown} grows (labels) — {model}, {method}",
                        guide=(LOC_FLOOR, 0.5)))
    return section


def best_points(rows: list[dict], group: str = ALL) -> list[dict]:
    """Per model x method x rule: the lambda2 with the highest Rel among those with Loc >= LOC_FLOOR (None
    when no lambda2 keeps Loc that high)."""
    out = []
    keys = list(dict.fromkeys((r["model"], r["method"], r["rule"]) for r in rows if r["group"] == group))
    for model, method, rule in keys:
        cand = [r for r in rows if (r["model"], r["method"], r["rule"], r["group"]) == (model, method, rule, group)
                and r["n"] and not missing(r["loc"]) and r["loc"] >= LOC_FLOOR]
        best = max(cand, key=lambda r: (r["rel"], r["loc"], -r["lambda2"])) if cand else None
        out.append({"model": model, "method": method, "rule": rule, "group": group, "best": best})
    return out


def best_rows(rows: list[dict]) -> list[dict]:
    """The best frontier point of each rule as a table row (its metrics, or a note when there is none)."""
    out = []
    for b in best_points(rows):
        r = b["best"] or {}
        out.append({"model": b["model"], "method": b["method"], "rule": b["rule"], **r,
                    "note": "" if b["best"] else f"no lambda2 keeps Loc >= {LOC_FLOOR}"})
    return out


def _notes(summary: dict) -> list[str]:
    """The facts whose sweep updates were skipped, per model and method (all facts; the same at every point)."""
    notes = []
    rows = [r for r in summary.get("update_sweep", []) if r.get("group") == ALL]
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["method"]) == (model, method)]
        skipped = max(r.get("n_skipped_facts", 0) for r in mine)
        if not skipped:
            continue
        no_target = max(r.get("n_no_target_facts", 0) for r in mine)
        total = max(r["n"] + r.get("n_skipped_facts", 0) for r in mine)
        why = [f"{facts(no_target)}: {NO_TARGET}"] if no_target else []
        if skipped > no_target:
            why.append(f"{facts(skipped - no_target)}: every edited query's N_i is empty")
        notes.append(f"No update made for {skipped} of {facts(total)} ({model}, {method}; "
                     f"{'; '.join(why)}): n counts only the other facts.")
    return notes


EXPERIMENT = Experiment(
    name="update-sweep", question="which update rule changes the answer without damage (Rel vs Loc frontier)?",
    heading="Update frontier", summarize=summarize, fact_work=fact_work, summary_keys=("update_sweep",),
    intro="Each fact's own KNs N_i are updated to another object with each update rule over a grid of lambda2 "
          "(lambda1 fixed, or equal to lambda2 in a --sweep-tied study; dai: Dai et al.'s raw rule; signed: the "
          "same change times the sign of the neuron's activation; calibrated: sign-aware unit directions scaled "
          "by |v_n|; docs/editing.md). Rel: the new object beats the old on the edited query; Loc: unrelated "
          "answers kept. Means over facts with 95% CIs.",
    tables=(
        Table("update_sweep", title=f"Best frontier point per rule (all facts; highest Rel with Loc >= {LOC_FLOOR})",
              rows=best_rows, columns=(
                  Column("model", "model"), Column("method", "method"), Column("rule", "rule"),
                  Column("lambda1", "lambda1", "num", 2), Column("lambda2", "lambda2", "num", 2),
                  Column("n", "n", "int"), *edit_columns(),
                  Column("", "note"))),
        Table("update_sweep", title="All points", columns=(
            Column("model", "model"), Column("method", "method"), Column("rule", "rule"),
            Column("lambda1", "lambda1", "num", 2), Column("lambda2", "lambda2", "num", 2),
            Column("group", "group", "group"), Column("n", "n", "int"),
            *edit_columns()))),
    notes=_notes)
