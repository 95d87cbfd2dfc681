"""Experiment `query-mapping` (Query Localization, claim 1: KNs belong to the query, not the fact).

For each fact and neighbor query q_i, the activations at q_i's last position are scaled (suppress x0,
enhance x2) on four neuron sets: own (N_i), neighbor (N_j, averaged over j != i), intersection (N_cap; skipped
when empty) and a random control of |N_i| neurons drawn from the same layers as N_i (seeded). Measured: the
relative change of the gold first-token probability on q_i. All interventions of one query run as rows of one
batch, each row with its own per-neuron multipliers.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from knowloc.analysis import relative_change
from knowloc.analysis.fact_stats import fact_level_ci, paired_contrast
from knowloc.models.hooks import hook_sites
from knowloc.plots import grouped_bars
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.findings import interval, judge_rows, num
from knowloc.study.groups import grouped_trials
from knowloc.study.registry import Experiment, Finding, Part
from knowloc.study.tables import Column, Table

INTERVENTIONS = {"suppress": 0.0, "enhance": 2.0}
SETS = ("own", "neighbor", "intersection", "random")


def random_control(neurons: list[tuple[int, int]], n_neurons: int, seed: int) -> list[tuple[int, int]]:
    """As many neurons as `neurons`, from the same layers (same count per layer), none of them in `neurons`."""
    rng = random.Random(seed)
    taken = set(neurons)
    out = []
    for layer in sorted({l for l, _ in neurons}):
        count = sum(1 for l, _ in neurons if l == layer)
        pool = [i for i in range(n_neurons) if (layer, i) not in taken]
        out += [(layer, i) for i in sorted(rng.sample(pool, min(count, len(pool))))]
    return out


@torch.no_grad()
def scaled_gold_probs(lm, prompt: str, gold: int, variants: list[tuple[list[tuple[int, int]], float]]) -> list[float]:
    """Gold first-token probability of `prompt` under each (neurons, factor) variant, plus the clean one first."""
    enc = lm.encode(prompt)
    rows = len(variants) + 1
    multipliers: dict[int, torch.Tensor] = {}
    for r, (neurons, factor) in enumerate(variants, start=1):
        for layer, index in neurons:
            mult = multipliers.setdefault(layer, torch.ones(rows, lm.n_neurons, dtype=lm.dtype, device=lm.device))
            mult[r, index] = factor

    def scaler(mult: torch.Tensor):
        def scale(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[:, enc.last_pos] = x[:, enc.last_pos] * mult
            return x
        return scale

    ids = torch.tensor([enc.prompt_ids] * rows, device=lm.device)
    with hook_sites(lm, {layer: scaler(mult) for layer, mult in multipliers.items()}):
        logits = lm.model(input_ids=ids).logits[:, -1].float()
    return torch.softmax(logits, dim=-1)[:, gold].tolist()


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """Every intervention of every neighbor query of one fact."""
    lm = ctx.model(model)
    kn = ctx.neurons.kn_lists(model, method, fact.fact_id)
    cap = sorted(set.intersection(*map(set, kn.values())))
    gold = lm.first_target_token(fact.object)
    rows = []
    for i in sorted(kn):
        sets: list[tuple[str, list[tuple[int, int]]]] = [("own", kn[i])]
        sets += [("neighbor", kn[j]) for j in sorted(kn) if j != i]
        if cap:
            sets.append(("intersection", cap))
        sets.append(("random", random_control(kn[i], lm.n_neurons, ctx.seed_for("qm-random", model, method,
                                                                                 fact.fact_id, i))))
        variants = [(neurons, factor) for _, neurons in sets for factor in INTERVENTIONS.values()]
        probs = scaled_gold_probs(lm, fact.prompts[i], gold, variants)
        clean, changed = probs[0], probs[1:]
        results: dict[tuple[str, str], list[float]] = {}
        for v, ((name, _), (intervention, _)) in enumerate(
                ((s, iv) for s in sets for iv in INTERVENTIONS.items())):
            results.setdefault((name, intervention), []).append(float(relative_change(clean, changed[v])))
        for (name, intervention), values in results.items():
            rows.append({"qidx": i, "neurons": name, "intervention": intervention, "dprob": float(np.mean(values))})
    return rows


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    rows = []
    for model, method, group, fact_trials in grouped_trials(ctx, "query-mapping"):
        for intervention in INTERVENTIONS:
            for neurons in SETS:
                estimate = fact_level_ci(fact_trials, "dprob", cfg.n_boot, cfg.seed, neurons=neurons,
                                         intervention=intervention)
                rows.append({"model": model, "method": method, "group": group, "intervention": intervention,
                             "neurons": neurons, "n": estimate.n, **estimate.fields("dprob", "ci_low", "ci_high")})
    contrasts = [{"model": model, "method": method, "group": group, "intervention": intervention,
                  **paired_contrast(fact_trials, "dprob", {"neurons": "own", "intervention": intervention},
                                    {"neurons": "neighbor", "intervention": intervention}, cfg.n_boot,
                                    cfg.seed).contrast()}
                 for model, method, group, fact_trials in grouped_trials(ctx, "query-mapping")
                 for intervention in INTERVENTIONS]
    section = Section(summary={"query_mapping": rows, "query_mapping_contrasts": contrasts})
    for model in cfg.models:
        for method in cfg.methods:
            for intervention in INTERVENTIONS:
                subset = [r for r in rows if r["model"] == model and r["method"] == method
                          and r["intervention"] == intervention]
                if any(r["n"] for r in subset):
                    section.figures.append(grouped_bars(
                        subset, ctx.figures_dir / f"query_mapping_{intervention}_{slug(model)}_{method}.png",
                        f"{intervention} KNs at q_i's last position — {model}, {method}", x="neurons", hue="group",
                        value="dprob", low="ci_low", high="ci_high", ylabel="relative change of P(gold) on q_i"))
    return section


def judge_mapping(summary: dict) -> list[Part]:
    if not any(r.get("n") for r in summary.get("query_mapping_contrasts", [])):
        return []  # no fact in any group: nothing measured (the finding says why)
    return judge_rows(summary["query_mapping_contrasts"], {"intervention": "suppress"}, lambda r, diff: (
        f"{r['method']} {r['group']}: suppressing the own KNs changes P(gold) by {num(diff.value, 3)} "
        f"{interval(diff, 3)} relative to a neighbor's KNs (n {diff.n})."), support_below=0.0, contradict_above=0.0)


FINDINGS = (Finding(
    "query-kn-mapping", "Do a query's own KNs matter more than its neighbors'?",
    "KNs belong to the query (Query-KN mapping)",
    "suppressing a query's own KNs minus a neighbor query's (P(gold) change, paired within facts): supports when "
    "the interval lies below 0; contradicts when it lies above 0", judge_mapping),)


EXPERIMENT = Experiment(
    name="query-mapping", question="do a query's own KNs matter more than a neighbor's (Query-KN mapping)?",
    heading="Query-KN mapping", summarize=summarize, fact_work=fact_work,
    summary_keys=("query_mapping", "query_mapping_contrasts"), findings=FINDINGS,
    intro="Activations at q_i's last position are suppressed (x0) or enhanced (x2) on its own KNs, a neighbor "
          "query's KNs, their intersection, or a random control from the same layers; the value is the relative "
          "change of P(gold) on q_i (mean over facts, 95% CI).",
    tables=(Table("query_mapping", columns=(
        Column("model", "model"), Column("method", "method"), Column("group", "group", "group"),
        Column("intervention", "intervention"), Column("neurons", "neurons"), Column("n", "n", "int"),
        Column("dP(gold) rel. [95% CI]", "dprob", "ci", 3, True, "ci_low", "ci_high"))),
        Table("query_mapping_contrasts", title="Own KNs minus a neighbor's KNs (paired within facts; negative under "
              "suppression: the own KNs matter more)", columns=(
                  Column("model", "model"), Column("method", "method"), Column("group", "group", "group"),
                  Column("intervention", "intervention"), Column("n", "n", "int"),
                  Column("own - neighbor dP(gold) [95% CI]", "diff", "ci", 3, True, "ci_low", "ci_high"),
                  Column("", "beyond_ci", "star")))))
