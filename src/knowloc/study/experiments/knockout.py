"""Experiment `knockout`: how attention carries the subject to the answer (Geva et al. 2023), beside knowledge
synapses and the KN layers (docs/attention.md, "Attention knockout").

Per studied fact, its first query: the attention edges into the last position from the subject's tokens, from the
other tokens and from the last token itself are blocked in every head of a window of ``--knockout-window`` layers
centred on each layer (:func:`knowloc.attention.knockout.knockout_effects`), and the relative drop of the answer's
probability is stored per edge set and layer; so are the attribute-extraction hits (the answer as the top token of
the subject's last-token state and of the attention update at the last position, per layer) and the query's
knowledge-synapse profile: per layer, the attention mass its knowledge synapses (top ``--attention-k`` entries per
head, :func:`knowloc.attention.knowledge_synapses`) put on subject tokens, averaged over heads. Knockout does not
depend on the attribution method: a fact is measured once, in its unit of the study's first method.

Summaries:

* ``knockout``: per model, method (whose K_C / K_I split groups the facts), edge set, layer and group (K_C, K_I,
  all), the mean drop over facts with its 95% bootstrap interval and n;
* ``extraction``: per model, site (``subject_hidden``, ``attention_update``) and layer, the share of facts whose
  answer is the top token there, with its interval and n;
* ``knockout_contrasts``: per model, Geva's contrast in the upper-middle layers (``[n_layers // 2, 3 n_layers //
  4)``): per fact the mean over those layers of drop(subject) - drop(non_subject), averaged over facts;
* ``knockout_vs_synapses``: per model, Spearman's rho between a fact's synapse profile and its subject-knockout
  drop profile, averaged over facts;
* ``knockout_vs_kn``: per model and method, Spearman's rho between the subject-knockout drop profile and the
  query's KN layer profile (as `tracing` compares its MLP profile), averaged over facts.
"""

from __future__ import annotations

import numpy as np

from knowloc.analysis import GROUPS, Estimate
from knowloc.analysis.localization import rank_correlation
from knowloc.attention import attention_rows, knowledge_synapses
from knowloc.attention.knockout import EDGE_SETS, SITES, extraction_hits, knockout_effects
from knowloc.models.spans import subject_span
from knowloc.plots import layer_curves
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.experiments.common import (ALL, in_first_method, kn_profile, layer_means, rho_as_contrast,
                                              rows_once_per_fact)
from knowloc.study.findings import interval, judge_rows, num
from knowloc.study.registry import Experiment, Finding
from knowloc.study.tables import Column, Table

NAME = "knockout"
QUERY = 0  # the fact's first query, as tracing's first traced query


def upper_middle(n_layers: int) -> list[int]:
    """Where Geva et al. see the subject reach the last position: layers ``[n // 2, 3n // 4)`` (at least one)."""
    low = n_layers // 2
    return list(range(low, max(low + 1, (3 * n_layers) // 4)))


def synapse_subject_profile(rows: np.ndarray, synapses, subject: tuple[int, int]) -> list[float]:
    """Per layer, the attention mass the knowledge synapses put on subject tokens, averaged over heads
    (``rows`` [n_layers, n_heads, n_positions] from :func:`knowloc.attention.attention_rows`)."""
    n_layers, n_heads, _ = rows.shape
    mass = np.zeros(n_layers)
    for layer, head, pos in synapses:
        if subject[0] <= pos <= subject[1]:
            mass[layer] += float(rows[layer, head, pos])
    return (mass / n_heads).tolist()


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """The knockout drops, extraction hits and synapse profile of the fact's first query (first method's unit)."""
    cfg = ctx.config
    lm = ctx.model(model)
    prompt = fact.prompts[QUERY]
    if subject_span(lm, prompt, fact.subject) is None:
        return [{"query": QUERY, "skipped": True}]  # the subject does not occur in the query: no edge to block
    result = knockout_effects(lm, prompt, fact.subject, fact.object, window=cfg.knockout.layers(lm.n_layers))
    rows = attention_rows(lm, prompt)  # [n_layers, n_heads, n_positions]
    synapses = knowledge_synapses(rows, k=cfg.attention.k)
    return [{"query": QUERY, "skipped": False, "knockout": result.to_dict(),
             "extraction": extraction_hits(lm, prompt, fact.subject, fact.object),
             "synapse_subject": synapse_subject_profile(rows.numpy(), synapses, result.subject)}]


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    section = Section()
    out: dict[str, list] = {"knockout": [], "extraction": [], "knockout_contrasts": [], "knockout_vs_synapses": [],
                            "knockout_vs_kn": []}
    for model in cfg.models:
        measured = {fid: rows[0] for fid, rows in rows_once_per_fact(ctx, NAME, model, "knockout").items()}
        if not measured:
            continue
        drops = {e: {fid: np.array(r["knockout"]["drop"][e]) for fid, r in measured.items()} for e in EDGE_SETS}
        for method in cfg.methods:
            split = ctx.neurons.groups(model, method)
            panels = {}
            for group in (*GROUPS, ALL):
                fids = [f for f in measured if group == ALL or split.get(f) == group]
                curves = {}
                for edge_set in EDGE_SETS:
                    values = np.array([drops[edge_set][f] for f in fids])
                    if not len(values):
                        continue
                    estimates = layer_means(values, cfg)
                    curves[edge_set] = ([e.value for e in estimates], [e.low for e in estimates],
                                        [e.high for e in estimates])
                    out["knockout"].extend({"model": model, "method": method, "edge_set": edge_set, "layer": layer,
                                            "group": group, "drop_mean": e.value, "drop_low": e.low,
                                            "drop_high": e.high, "n": e.n} for layer, e in enumerate(estimates))
                if curves and group != ALL:
                    panels[f"{group} ({len(fids)} facts)"] = curves
            out["knockout_vs_kn"].append(_versus_kn(ctx, model, method, drops["subject"]))
            if panels:
                section.figures.append(layer_curves(
                    panels, ctx.figures_dir / f"knockout_{slug(model)}_{method}.png",
                    f"attention knockout: relative drop of P(answer) when edges into the last position are blocked "
                    f"— {model} ({method} groups)", "drop of P(answer) (95% CI over facts)"))
        extraction = _extraction(model, measured, cfg)
        out["extraction"] += extraction
        section.figures.append(layer_curves(
            {"attribute extraction": {site: ([r["rate"] for r in extraction if r["site"] == site],
                                             [r["rate_low"] for r in extraction if r["site"] == site],
                                             [r["rate_high"] for r in extraction if r["site"] == site])
                                      for site in SITES}},
            ctx.figures_dir / f"extraction_{slug(model)}.png",
            f"attribute extraction: the answer as the top token (logit lens) — {model}, {len(measured)} facts",
            "share of facts (95% CI)", zero_line=False))
        out["knockout_contrasts"].append(_subject_contrast(model, drops, cfg))
        out["knockout_vs_synapses"].append(_versus_synapses(model, measured, drops["subject"], cfg))
    section.summary = out
    return section


def _extraction(model: str, measured: dict[str, dict], cfg) -> list[dict]:
    rows = []
    for site in SITES:
        hits = np.array([r["extraction"][site] for r in measured.values()], dtype=float)  # [facts, n_layers]
        for layer in range(hits.shape[1]):
            e = Estimate.bootstrap(hits[:, layer], n_boot=cfg.n_boot, seed=cfg.seed)
            rows.append({"model": model, "site": site, "layer": layer, "rate": e.value, "rate_low": e.low,
                         "rate_high": e.high, "n": e.n})
    return rows


def _subject_contrast(model: str, drops: dict[str, dict[str, np.ndarray]], cfg) -> dict:
    """Per fact, the mean over the upper-middle layers of drop(subject) - drop(non_subject); over facts."""
    n_layers = len(next(iter(drops["subject"].values())))
    layers = upper_middle(n_layers)
    diffs = [float(np.mean(drops["subject"][f][layers] - drops["non_subject"][f][layers])) for f in drops["subject"]]
    e = Estimate.bootstrap([d for d in diffs if np.isfinite(d)], n_boot=cfg.n_boot, seed=cfg.seed)
    return {"model": model, "layers": f"{layers[0]}-{layers[-1]}", **e.contrast("diff")}


def _rho_row(values: list[float], cfg, **keys) -> dict:
    kept = [v for v in values if np.isfinite(v)]
    e = Estimate.bootstrap(kept, n_boot=cfg.n_boot, seed=cfg.seed)
    return {**keys, "rank_corr": e.value, "rank_corr_low": e.low, "rank_corr_high": e.high, "n": e.n,
            "n_constant": len(values) - len(kept)}


def _versus_synapses(model: str, measured: dict[str, dict], subject_drops: dict[str, np.ndarray], cfg) -> dict:
    return _rho_row([rank_correlation(np.array(measured[f]["synapse_subject"]), subject_drops[f]) for f in measured],
                    cfg, model=model)


def _versus_kn(ctx: StudyContext, model: str, method: str, subject_drops: dict[str, np.ndarray]) -> dict:
    values = []
    for fid, drop in subject_drops.items():
        mass = kn_profile(ctx, model, method, fid, QUERY)
        values.append(rank_correlation(mass, drop) if mass is not None else float("nan"))
    return _rho_row(values, ctx.config, model=model, method=method)


# --------------------------------------------------------------------------------------------------------
# findings


def judge_carries_subject(summary: dict):
    def describe(r, e):
        return (f"{r['model']}: in layers {r['layers']}, blocking subject -> last minus blocking the other tokens -> "
                f"last drops P(answer) by {num(e.value)} {interval(e)} more ({r['n']} facts).")
    return judge_rows(summary.get("knockout_contrasts", []), {}, describe, support_above=0.0, contradict_below=0.0,
                      label=lambda r: r["model"])


def judge_synapses_agree(summary: dict):
    def describe(r, e):
        return (f"{r['model']}: Spearman's rho of the synapses' subject mass and the subject-knockout drop across "
                f"layers {num(e.value)} {interval(e)} ({r['n']} facts).")
    return judge_rows(rho_as_contrast(summary.get("knockout_vs_synapses", [])), {}, describe, support_above=0.0,
                      contradict_below=0.0, label=lambda r: r["model"])


FINDINGS = (
    Finding("attention-carries-subject", "Does attention carry the subject to the last position?",
            "Geva et al. 2023: blocking the subject's edges into the last position in the upper-middle layers drops "
            "P(answer) more than blocking the other tokens' edges",
            "per fact, the mean over layers [n/2, 3n/4) of drop(subject) - drop(non_subject), averaged over facts: "
            "supports when its interval lies above 0; contradicts when below 0", judge_carries_subject),
    Finding("synapses-agree-with-knockout", "Do knowledge synapses act where the attention knockout hurts?",
            "the layers where the knowledge synapses attend to the subject are the layers where blocking the subject "
            "hurts the answer (Query Localization's attention selects the knowledge)",
            "mean over facts of Spearman's rho between the synapses' subject mass per layer and the subject-knockout "
            "drop per layer: supports when its interval lies above 0; contradicts when below 0", judge_synapses_agree),
)


def _notes(summary: dict) -> list[str]:
    notes = []
    for r in summary.get("knockout_vs_kn", []):
        if r.get("n_constant"):
            notes.append(f"knockout vs KNs ({r['model']}, {r['method']}): {r['n_constant']} facts have no KN set on "
                         "their first query, or a constant profile; they are left out of rho.")
    return notes


EXPERIMENT = Experiment(
    name=NAME, question="does attention carry the subject to the answer where knowledge synapses act? (Geva et al.)",
    heading="Attention knockout", summarize=summarize, fact_work=fact_work, works=in_first_method, per_query=False,
    summary_keys=("knockout", "extraction", "knockout_contrasts", "knockout_vs_synapses", "knockout_vs_kn"),
    intro="Attention knockout (Geva et al. 2023): on each fact's first query the attention edges into the last "
          "position from the subject's tokens, from the other tokens, or from the last token itself are blocked "
          "(their scores set to -inf) in all heads of a window of layers centred on each layer, and the relative "
          "drop of the answer's probability is measured. Attribute extraction: how often the answer is the top "
          "token of the subject's last-token state, or of the attention update at the last position, through the "
          "logit lens. Beside them, where the knowledge synapses (Query Localization's attention entries) put "
          "their mass on the subject, and where the KNs sit. docs/attention.md, 'Attention knockout'.",
    tables=(
        Table("knockout_contrasts", title="Subject vs other tokens: the extra drop in the upper-middle layers",
              columns=(Column("model", "model"), Column("layers", "layers"), Column("n", "n", "int"),
                       Column("subject - other [95% CI]", "diff", "ci", 3, True), Column("", "beyond_ci", "star"))),
        Table("knockout", title="Drop of P(answer) by layer (all facts)", rows=lambda rows: [
            r for r in rows if r["group"] == ALL], columns=(
            Column("model", "model"), Column("method", "method"), Column("edge set", "edge_set"),
            Column("layer", "layer", "int"), Column("n", "n", "int"),
            Column("drop [95% CI]", "drop_mean", "ci", 3, True, lo="drop_low", hi="drop_high"))),
        Table("extraction", title="Attribute extraction rate by layer", columns=(
            Column("model", "model"), Column("site", "site"), Column("layer", "layer", "int"),
            Column("n", "n", "int"), Column("rate [95% CI]", "rate", "ci", 2, lo="rate_low", hi="rate_high"))),
        Table("knockout_vs_synapses", title="Knowledge synapses vs knockout: Spearman's rho across layers", columns=(
            Column("model", "model"), Column("n", "n", "int"),
            Column("rho [95% CI]", "rank_corr", "ci", 2, True, lo="rank_corr_low", hi="rank_corr_high"))),
        Table("knockout_vs_kn", title="KN layers vs knockout: Spearman's rho across layers", columns=(
            Column("model", "model"), Column("method", "method"), Column("n", "n", "int"),
            Column("rho [95% CI]", "rank_corr", "ci", 2, True, lo="rank_corr_low", hi="rank_corr_high")))),
    notes=_notes, findings=FINDINGS)
