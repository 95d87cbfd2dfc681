"""Experiment `attention` (Query Localization, claim 2: dynamic KN selection through attention).

For each studied query: its knowledge synapses (KS: per layer and head, the top-k attention weights of the last
position, first token excluded), split into query-related KS (at subject tokens) and an equally large seeded
irrelevant control at other positions. The chosen attention weights are multiplied by alpha (0 = suppress,
2 = enhance; no renormalisation by default, docs/attention.md) and we measure the relative change of the
query's KN activations (mean over N_i of (after - before) / |before|) and of the gold first-token probability.
"""

from __future__ import annotations

import numpy as np
import torch

from knowloc.analysis import GROUPS, K_C, kn_list, relative_change
from knowloc.analysis.fact_stats import fact_level_ci, paired_contrast
from knowloc.attention import (NotEnoughControls, attention_rows, knowledge_synapses, related_and_irrelevant,
                               scale_attention, subject_related, subject_token_positions)
from knowloc.models.hooks import trace_activations
from knowloc.plots import activation_heatmaps, grouped_bars
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.findings import interval, judge_rows, num
from knowloc.study.groups import grouped_trials
from knowloc.study.registry import Experiment, Finding, Part
from knowloc.study.tables import Column, Table

ALPHAS = (0.0, 2.0)
HEATMAP_TRIALS = "attention-heatmap"  # the store key of the per-model before / after examples


def manipulated_layers(cfg, n_layers: int) -> set[int] | None:
    """The layers of --attention-layers (a layer list, :mod:`knowloc.study.layers`; e.g. 10-20, cut at the
    model's last layer) for a model of ``n_layers`` layers; None for all layers."""
    spec = cfg.layers("attention_layers")
    return None if spec is None else set(spec.resolve(n_layers))


def check_model(cfg, lm) -> None:
    """--attention-layers against the model's layers (one line otherwise)."""
    manipulated_layers(cfg, lm.n_layers)


def in_layer_range(ctx: StudyContext, synapses: list, n_layers: int) -> list:
    """The synapses (layer, head, position) inside --attention-layers (all of them by default)."""
    layers = manipulated_layers(ctx.config, n_layers)
    return synapses if layers is None else [s for s in synapses if s[0] in layers]


def subject_span(fact, q: int) -> tuple[int, int]:
    """Character span of the subject in prompt q: the prompt is the template up to [Y] with [X] filled."""
    start = fact.templates[q].index("[X]")
    return start, start + len(fact.subject)


@torch.no_grad()
def _measure(lm, ids: torch.Tensor, neurons: list[tuple[int, int]], gold: int) -> tuple[torch.Tensor, float]:
    layers = sorted({l for l, _ in neurons})
    with trace_activations(lm, layers) as acts:
        logits = lm.model(input_ids=ids).logits[0, -1].float()
    values = torch.stack([acts[l][0, -1, i].float() for l, i in neurons])
    return values, float(torch.softmax(logits, -1)[gold])


def kn_relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    """Mean over neurons of (after - before) / |before| (neurons with before == 0 are left out)."""
    ok = before != 0
    return float(((after[ok] - before[ok]) / before[ok].abs()).mean()) if ok.any() else float("nan")


def query_rows(ctx: StudyContext, model: str, method: str, fact, q: int, neurons, lm) -> list[dict]:
    """Query q's rows: its KNs' activation change when its subject-related synapses, or as many irrelevant ones,
    are scaled by each alpha; none when no matched irrelevant control exists (NotEnoughControls)."""
    prompt = fact.prompts[q]
    ids = torch.tensor([lm.encode(prompt).prompt_ids], device=lm.device)
    gold = lm.first_target_token(fact.object)
    rows_att = attention_rows(lm, prompt)
    synapses = in_layer_range(ctx, knowledge_synapses(rows_att, k=ctx.config.attention.k), lm.n_layers)
    positions = subject_token_positions(lm, prompt, subject_span(fact, q))
    try:
        related, irrelevant = related_and_irrelevant(synapses, positions, ctx.seed_for("ks", model, fact.fact_id, q),
                                                     n_positions=rows_att.shape[-1])
    except NotEnoughControls:  # a short prompt, mostly subject: no matched control, so no paired comparison
        return []
    before, p_before = _measure(lm, ids, neurons, gold)
    out = []
    for name, entries in (("related", related), ("irrelevant", irrelevant)):
        for alpha in ALPHAS:
            if not entries:
                continue
            with scale_attention(lm, entries, alpha, renormalize=ctx.config.attention.renormalize):
                after, p_after = _measure(lm, ids, neurons, gold)
            out.append({"qidx": q, "synapses": name, "alpha": alpha, "n_synapses": len(entries),
                        "dkn_activation": kn_relative_change(before, after),
                        "dprob": float(relative_change(p_before, p_after))})
    return out


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """KS manipulations of every neighbor query of one fact."""
    lm = ctx.model(model)
    kn = ctx.neurons.kn_lists(model, method, fact.fact_id)
    return [r for q in sorted(kn) if kn[q] for r in query_rows(ctx, model, method, fact, q, kn[q], lm)]


def finalize(ctx: StudyContext, model: str) -> None:
    """Once per model, after every fact: the before/after heatmap examples (need the K_C/K_I split)."""
    if model not in ctx.store.done_trials(HEATMAP_TRIALS):
        ctx.store.save_trials(HEATMAP_TRIALS, model, heatmap_data(ctx, model))


def heatmap_neurons(ctx: StudyContext) -> list[dict]:
    """The neurons of every before / after heatmap, one row each (the study describes them for the report)."""
    return [{"figure": f"attention_heatmap_{ex['group']}", "fact": ex["subject"], "model": model,
             "method": ex["method"], "group": ex["group"], "layer": l, "index": i}
            for model, examples in ctx.store.trials(HEATMAP_TRIALS).items() for ex in examples
            for l, i in ex["neurons"]]


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    rows = []
    for model, method, group, fact_trials in grouped_trials(ctx, "attention"):
        for synapses in ("related", "irrelevant"):
            for alpha in ALPHAS:
                row = {"model": model, "method": method, "group": group, "synapses": synapses, "alpha": alpha}
                for metric, n_key in (("dkn_activation", "n"), ("dprob", "n_dprob")):  # each its own facts
                    estimate = fact_level_ci(fact_trials, metric, cfg.n_boot, cfg.seed, synapses=synapses, alpha=alpha)
                    row.update({n_key: estimate.n, **estimate.fields(metric)})
                rows.append(row)
    contrasts = [{"model": model, "method": method, "group": group, "alpha": alpha, "metric": metric,
                  **paired_contrast(fact_trials, metric, {"synapses": "related", "alpha": alpha},
                                    {"synapses": "irrelevant", "alpha": alpha}, cfg.n_boot, cfg.seed).contrast()}
                 for model, method, group, fact_trials in grouped_trials(ctx, "attention")
                 for alpha in ALPHAS for metric in ("dkn_activation", "dprob")]
    section = Section(summary={"attention": rows, "attention_contrasts": contrasts,
                               "attention_heatmap_neurons": heatmap_neurons(ctx)})
    for model in cfg.models:
        for method in cfg.methods:
            for alpha in ALPHAS:
                subset = [r for r in rows if r["model"] == model and r["method"] == method and r["alpha"] == alpha]
                if any(r["n"] for r in subset):
                    section.figures.append(grouped_bars(
                        subset, ctx.figures_dir / f"attention_alpha{alpha:g}_{slug(model)}_{method}.png",
                        f"attention x{alpha:g} on knowledge synapses — {model}, {method}", x="group", hue="synapses",
                        value="dkn_activation", low="dkn_activation_ci_low", high="dkn_activation_ci_high",
                        ylabel="relative change of KN activation"))
    section.figures += heatmaps(ctx)
    return section


def heatmap_data(ctx: StudyContext, model: str) -> list[dict]:
    """KN activations before / after suppressing query-related KS for a K_C and a K_I example (first method)."""
    method = ctx.config.methods[0]
    scores = ctx.neurons.fact_scores(model, method)
    split = ctx.neurons.groups(model, method)
    out = []
    for group in GROUPS:
        members = [f for f in ctx.facts[model] if split.get(f.fact_id) == group]
        if not members:
            continue
        fact = (max if group == K_C else min)(members, key=lambda f: scores[f.fact_id])
        kn = ctx.neurons.kn_lists(model, method, fact.fact_id)
        q = min(kn)
        neurons = kn[q][:16]
        if not neurons:
            continue
        lm = ctx.model(model)
        prompt = fact.prompts[q]
        ids = torch.tensor([lm.encode(prompt).prompt_ids], device=lm.device)
        rows_att = attention_rows(lm, prompt)
        synapses = in_layer_range(ctx, knowledge_synapses(rows_att, k=ctx.config.attention.k), lm.n_layers)
        related = subject_related(synapses, subject_token_positions(lm, prompt, subject_span(fact, q)))
        gold = lm.first_target_token(fact.object)
        before, _ = _measure(lm, ids, neurons, gold)
        with scale_attention(lm, related, 0.0, renormalize=ctx.config.attention.renormalize):
            after, _ = _measure(lm, ids, neurons, gold)
        out.append({"group": group, "method": method, "prompt": prompt, "subject": fact.subject,
                    "object": fact.object, "neurons": [list(n) for n in neurons], "before": before.tolist(),
                    "after": after.tolist()})
    return out


def heatmaps(ctx: StudyContext) -> list:
    paths = []
    for key, examples in ctx.store.trials(HEATMAP_TRIALS).items():
        for ex in examples:
            neurons = kn_list(ex["neurons"])
            layers = sorted({l for l, _ in neurons})
            panels = []
            for title, values in (("before", ex["before"]), ("after suppressing query-related KS", ex["after"])):
                matrix = np.full((len(layers), len(neurons)), np.nan)
                for c, (l, _i) in enumerate(neurons):
                    matrix[layers.index(l), c] = values[c]
                panels.append({"title": f"{title}: {ex['prompt']}", "matrix": matrix, "row_labels": layers,
                               "col_labels": [f"L{l}#{i}" for l, i in neurons]})
            paths.append(activation_heatmaps(
                panels, ctx.figures_dir / f"attention_heatmap_{ex['group']}_{slug(key)}.png",
                f"{ex['group']}: KN activations of {ex['subject']} -> {ex['object']} ({key}, {ex['method']})"))
    return paths


def judge_synapses(summary: dict) -> list[Part]:
    if not any(r.get("n") for r in summary.get("attention_contrasts", [])):
        return []  # no fact in any group: nothing measured (the finding says why)
    return judge_rows(summary["attention_contrasts"], {"alpha": 0.0, "metric": "dkn_activation"}, lambda r, diff: (
        f"{r['method']} {r['group']}: suppressing subject-related synapses changes the KN activations by "
        f"{num(diff.value, 3)} {interval(diff, 3)} relative to irrelevant ones (n {diff.n})."),
        support_below=0.0, contradict_above=0.0)


FINDINGS = (Finding(
    "knowledge-synapses", "Does attention to the subject select the KNs?", "knowledge synapses select the KNs",
    "suppressing subject-related synapses minus as many irrelevant ones (KN activation change, paired within "
    "facts): supports when the interval lies below 0; contradicts when it lies above 0", judge_synapses),)


EXPERIMENT = Experiment(
    name="attention", question="does attention to the subject (knowledge synapses) select the KNs?",
    heading="Attention (knowledge synapses)", summarize=summarize, fact_work=fact_work, finalize=finalize,
    summary_keys=("attention", "attention_contrasts", "attention_heatmap_neurons"), check_model=check_model,
    shown_neurons="attention_heatmap_neurons",
    findings=FINDINGS,
    intro="Knowledge synapses (high-attention entries at the last prompt position) whose key position is the "
          "subject (related) or a matched random control (irrelevant) are scaled by alpha; measured are the change "
          "of the query's KN activations and of P(gold) (mean over facts, 95% CI).",
    tables=(Table("attention", columns=(
        Column("model", "model"), Column("method", "method"), Column("group", "group", "group"),
        Column("synapses", "synapses"), Column("alpha", "alpha", "num", 2), Column("n", "n", "int"),
        Column("d KN activation", "dkn_activation", "ci", 3, True),
        Column("dP(gold)", "dprob", "ci", 3, True, n_key="n_dprob"))),
        Table("attention_contrasts", title="Subject-related minus irrelevant synapses (paired within facts)", columns=(
            Column("model", "model"), Column("method", "method"), Column("group", "group", "group"),
            Column("alpha", "alpha", "num", 2), Column("measure", "metric"), Column("n", "n", "int"),
            Column("related - irrelevant [95% CI]", "diff", "ci", 3, True, "ci_low", "ci_high"),
            Column("", "beyond_ci", "star")))))
