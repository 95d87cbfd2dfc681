"""Experiment `modification`: erase / update a query's knowledge neurons and see who notices.

For each studied fact, each neighbor query q_i, operation (erase, update) and neuron set S in
{N_i (own KNs: the KL way), N_g (union over the neighbors), N_cap (intersection; skipped when empty)}, the
model is edited reversibly and Rel (on q_i), Gen (on q_j, j != i), Loc (other relations' answers unchanged),
Avg and the fluency change dlogPPL = log(PPL_after / PPL_before) on neutral text are measured (docs/editing.md).
Updates use the study's --update-rule, --lambda1 and --lambda2; the neuron sets are the study's (specificity
filter applied). Trials are stored per (model, method, fact).
"""

from __future__ import annotations

import random

import numpy as np


from knowloc.study import specificity as spec
from knowloc.study.context import Section, StudyContext, fact_level_ci, fmt_dlogppl, slug
from knowloc.study.context import trial_key as _key

OPERATIONS = ("erase", "update")
NEURON_SETS = ("N_i", "N_g", "N_cap")
METRICS = ("rel", "gen", "loc", "avg", "dppl", "dprob_self", "dprob_neighbors")  # plus dlogppl mean / median


def locality_prompts(ctx: StudyContext, model: str, fact) -> tuple[list[str], list[str]]:
    """A seeded sample of answered queries of facts from other relations (other facts if there are none)."""
    pool = [(q["text"], row["object"]) for row in ctx.probes[model] if row["relation"] != fact.relation
            for q in row["queries"] if q["top1"]]
    if not pool:
        pool = [(q["text"], row["object"]) for row in ctx.probes[model] if row["fact_id"] != fact.fact_id
                for q in row["queries"] if q["top1"]]
    rng = random.Random(ctx.seed_for("locality", model, fact.fact_id))
    chosen = rng.sample(pool, min(ctx.config.locality, len(pool)))
    return [p for p, _ in chosen], [o for _, o in chosen]


def new_object(ctx: StudyContext, model: str, fact, lm) -> str | None:
    """Another object of the same relation (seeded) whose first token differs from the gold one."""
    gold = lm.first_target_token(fact.object)
    objects = sorted({row["object"] for row in ctx.probes[model] if row["relation"] == fact.relation})
    candidates = [o for o in objects if o != fact.object and lm.first_target_token(o) != gold]
    if not candidates:
        return None
    return random.Random(ctx.seed_for("update", model, fact.fact_id)).choice(candidates)


def neuron_sets(kn: dict[int, list[tuple[int, int]]], i: int) -> dict[str, list[tuple[int, int]]]:
    union = sorted(set().union(*map(set, kn.values())))
    cap = sorted(set.intersection(*map(set, kn.values())))
    return {"N_i": list(kn[i]), "N_g": union, "N_cap": cap}


class EditSession:
    """One fact's editing trials. An edit gives the same model whichever query it was chosen for (an erase or a
    dai update: same neurons; a sign-aware update: same neurons and the same activation signs on the edited
    query), so each distinct edit is applied and measured once and the per-query scores are read off it:
    Rel = success on q_i, Gen = mean success on the other queries (or on one held-out query)."""

    def __init__(self, ctx: StudyContext, model: str, fact, lm):
        from knowloc.data import load_neutral_texts
        from knowloc.editing import compute_baseline

        self.ctx, self.lm, self.fact = ctx, lm, fact
        self.prompts = list(fact.prompts)
        self.texts = load_neutral_texts()[: ctx.config.ppl_texts]
        self.loc_prompts, loc_objects = locality_prompts(ctx, model, fact)
        self.loc_gold = [lm.first_target_token(o) for o in loc_objects]
        self.baseline = compute_baseline(lm, self.prompts, self.loc_prompts, self.texts)
        self.target = new_object(ctx, model, fact, lm)
        self._results: dict = {}

    def measure(self, operation: str, neurons: list, index: int, generalize_on: list[int] | None = None,
                rule: str | None = None, lambda2: float | None = None) -> dict | None:
        """Scores of editing `neurons` for query `index`; None when the edit cannot be made (empty set, or no
        other object to update to). Gen is measured on `generalize_on` (default: every other query). Updates
        use `rule` and `lambda2` (default: the study's --update-rule and --lambda2)."""
        from knowloc.editing import EditTrial, evaluate_trial

        if not neurons or (operation == "update" and self.target is None):
            return None
        cfg = self.ctx.config
        rule = rule or cfg.update_rule
        lambda2 = cfg.lambda2 if lambda2 is None else lambda2
        pairs = tuple(sorted(map(tuple, neurons)))
        key: tuple = (operation, pairs)
        if operation == "update":
            acts = self.baseline.activations[index]
            signs = tuple(bool(acts[l, i] >= 0) for l, i in pairs) if rule != "dai" else None
            key += (rule, cfg.lambda1, lambda2, signs)
        if key not in self._results:
            trial = EditTrial(prompts=self.prompts, index=index, gold=self.fact.object, neurons=neurons,
                              operation=operation, new_object=self.target, lambda1=cfg.lambda1, lambda2=lambda2,
                              update_rule=rule)
            self._results[key] = evaluate_trial(self.lm, trial, self.baseline, self.loc_prompts, self.loc_gold,
                                                self.texts)
        result = self._results[key]
        others = [j for j in range(len(self.prompts)) if j != index] if generalize_on is None else generalize_on
        rel = float(result.success[index])
        gen = float(np.mean([result.success[j] for j in others])) if others else float("nan")
        loc = float(result.loc)
        parts = [v for v in (rel, gen, loc) if not np.isnan(v)]
        neighbors = [result.dprob[j] for j in others if not np.isnan(result.dprob[j])]
        return {"rel": rel, "gen": gen, "loc": loc, "avg": float(np.mean(parts)), "dppl": float(result.dppl),
                "dlogppl": float(result.dlogppl),
                "dprob_self": float(result.dprob[index]),
                "dprob_neighbors": float(np.mean(neighbors)) if neighbors else float("nan")}


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """All trials of one fact: every query x neuron set x operation."""
    session = EditSession(ctx, model, fact, ctx.model(model))
    kn = spec.kn_lists(ctx, model, method, fact.fact_id)
    rows = []
    for i in sorted(kn):
        for name, neurons in neuron_sets(kn, i).items():
            for operation in OPERATIONS:
                row = {"qidx": i, "operation": operation, "neurons": name, "n_neurons": len(neurons)}
                scores = session.measure(operation, neurons, i)
                rows.append({**row, "skipped": scores is None, **(scores or {})})
    return rows


def summarize(ctx: StudyContext) -> Section:
    from knowloc.plots.figures import grouped_bars
    from knowloc.study.experiments.consistency import groups

    cfg = ctx.config
    trials = ctx.store.trials("modification")
    section = Section(summary={"modification": [], "modification_counts": []})
    for model in cfg.models:
        for method in cfg.methods:
            split = groups(ctx, model, method)
            facts = [f for f in ctx.facts[model] if _key(model, method, f.fact_id) in trials and f.fact_id in split]
            empty_cap = sum(all(r["skipped"] for r in trials[_key(model, method, f.fact_id)]
                                if r["neurons"] == "N_cap") for f in facts)
            section.summary["modification_counts"].append({"model": model, "method": method, "n_facts": len(facts),
                                                           "n_cap_empty_facts": empty_cap})
            for operation in OPERATIONS:
                for group in ("K_C", "K_I"):
                    for neurons in NEURON_SETS:
                        fact_trials = [trials[_key(model, method, f.fact_id)] for f in facts
                                       if split[f.fact_id] == group]
                        row = {"model": model, "method": method, "operation": operation, "group": group,
                               "neurons": neurons, "update_rule": cfg.update_rule if operation == "update" else None}
                        for metric in METRICS:
                            n, est, lo, hi = fact_level_ci(fact_trials, metric, cfg.n_boot, cfg.seed,
                                                           operation=operation, neurons=neurons)
                            row.update({metric: est, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi})
                            if metric == "rel":  # Rel is defined for every trial that ran: n = facts with trials
                                row["n"] = n
                        row.update(dlogppl_stats(fact_trials, cfg, operation=operation, neurons=neurons))
                        section.summary["modification"].append(row)
    rows = section.summary["modification"]
    section.tables["modification"] = rows
    for model in cfg.models:
        for method in cfg.methods:
            for operation in OPERATIONS:
                long = [{"metric": metric, "neurons": r["neurons"], "group": r["group"], "value": r[metric],
                         "low": r[f"{metric}_ci_low"], "high": r[f"{metric}_ci_high"]}
                        for r in rows if r["model"] == model and r["method"] == method and r["operation"] == operation
                        for metric in ("rel", "gen", "loc", "avg")]
                if long:
                    section.figures.append(grouped_bars(
                        long, ctx.figures_dir / f"modification_{operation}_{slug(model)}_{method}.png",
                        f"{operation}: success rates by neuron set — {model}, {method}", x="metric", hue="neurons",
                        value="value", low="low", high="high", facet="group", ylabel="rate (95% CI over facts)"))
    section.markdown += _markdown(rows, section.summary["modification_counts"])
    return section


def dlogppl_stats(fact_trials: list[list[dict]], cfg, **match) -> dict:
    """dlogppl_mean / dlogppl_median with bootstrap CIs over facts (each fact: the mean over its matching
    trials' dlogPPL = log(PPL_after / PPL_before))."""
    out = {}
    for name, stat in (("mean", np.mean), ("median", np.median)):
        _, est, lo, hi = fact_level_ci(fact_trials, "dlogppl", cfg.n_boot, cfg.seed, stat=stat, **match)
        out.update({f"dlogppl_{name}": est, f"dlogppl_{name}_ci_low": lo, f"dlogppl_{name}_ci_high": hi})
    return out


def _markdown(rows: list[dict], counts: list[dict]) -> list[str]:
    lines = ["## Modification (erase / update knowledge neurons)", "",
             "dlogPPL = log(PPL after / PPL before) on neutral text (median over facts; 0 = unchanged).", "",
             "| model | method | op | rule | group | neurons | n | Rel | Gen | Loc | Avg | dlogPPL median | dprob self | dprob neighbors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['operation']} | {r['update_rule'] or '-'} | {r['group']} | "
                     f"{r['neurons']} | {r['n']} | "
                     + " | ".join(f"{r[m]:.2f} [{r[m + '_ci_low']:.2f}, {r[m + '_ci_high']:.2f}]"
                                  for m in ("rel", "gen", "loc", "avg"))
                     + f" | {fmt_dlogppl(r['dlogppl_median'])} | {r['dprob_self']:+.2f} | {r['dprob_neighbors']:+.2f} |")
    for c in counts:
        lines.append(f"\nN_cap empty for {c['n_cap_empty_facts']} of {c['n_facts']} facts ({c['model']}, {c['method']}).")
    return lines + [""]
