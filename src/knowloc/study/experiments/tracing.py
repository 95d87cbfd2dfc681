"""Experiment `tracing`: causal tracing of each fact (Meng et al. 2022), beside the KN sets' layers.

Per studied fact, its first ``--trace-queries`` known queries are traced (:func:`knowloc.tracing.trace`:
``--trace-samples`` seeded noise draws of ``--trace-noise`` x the embeddings' standard deviation on the subject's
tokens; the residual stream, the MLP outputs and the attention outputs restored at each (token, layer), the last
two in windows of ``--trace-window`` layers); the three token x layer maps of each query are stored. Tracing does
not depend on the attribution method: a fact is traced once, in its unit of the study's first method.

Summaries (docs/tracing.md):

* ``tracing``: per model, kind and ROME token class, the indirect effect per layer averaged over facts (a fact:
  the mean over its traced queries), with its 95% bootstrap interval and n;
* ``tracing_totals``: P_clean, P_corrupted and the total effect TE, averaged over facts;
* ``tracing_vs_kn``: per model and method, Spearman's rho between a fact's KN layer profile (the share of its
  filtered KN set's attribution mass per layer, :func:`knowloc.analysis.localization.layer_mass`) and its MLP
  tracing profile at the last subject token (the IE per layer, ROME's storage site), averaged over facts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from knowloc.analysis import Estimate
from knowloc.analysis.localization import TOKEN_CLASSES, class_profiles, rank_correlation
from knowloc.plots import tracing_panels
from knowloc.study.config import StudyConfig
from knowloc.study.context import Section, StudyContext, slug
from knowloc.study.experiments.common import (fact_traces, in_first_method, kn_profile, layer_means, mlp_profile,
                                              rho_as_contrast)
from knowloc.study.findings import interval, judge_rows, num
from knowloc.study.registry import Experiment, Finding
from knowloc.study.tables import Column, Table
from knowloc.tracing import KINDS, TraceSettings, trace

MLP_SITE = "last subject"  # the token class whose MLP profile is compared with the KN layers


def settings(cfg: StudyConfig) -> TraceSettings:
    """The study's tracing settings, its noise draws seeded by the study's seed."""
    return dataclasses.replace(cfg.trace, seed=cfg.seed)


def traced_queries(cfg: StudyConfig, fact) -> list[int]:
    """The fact's traced queries: its first --trace-queries known ones."""
    return list(range(min(cfg.trace_queries, len(fact.prompts))))


def fact_work(ctx: StudyContext, model: str, method: str, fact) -> list[dict]:
    """The tracing maps of the fact's traced queries (run in the unit of the study's first method only)."""
    cfg = ctx.config
    queries = traced_queries(cfg, fact)
    lm = ctx.model(model)
    rows = []
    for q in queries:
        result = trace(lm, fact.prompts[q], fact.subject, fact.object, settings=settings(cfg))
        rows.append({"query": q, "trace": result.to_dict()})
    return rows


def fact_class_profiles(traces: list[dict], kind: str) -> dict[str, np.ndarray]:
    """A fact's class profiles of one kind: each class's IE per layer, averaged over its traced queries."""
    per_class: dict[str, list[np.ndarray]] = {}
    for t in traces:
        first, last = t["subject"]
        for name, profile in class_profiles(np.array(t["ie"][kind]), first, last).items():
            per_class.setdefault(name, []).append(profile)
    return {name: np.mean(profiles, axis=0) for name, profiles in per_class.items()}


def summarize(ctx: StudyContext) -> Section:
    cfg = ctx.config
    rows, totals, versus = [], [], []
    section = Section()
    for model in cfg.models:
        traces = fact_traces(ctx, model)
        if not traces:
            continue
        panels = {}
        for kind in KINDS:
            profiles = {fid: fact_class_profiles(t, kind) for fid, t in traces.items()}
            grid = []
            for name in TOKEN_CLASSES:
                values = np.array([p[name] for p in profiles.values() if name in p])
                if not len(values):
                    grid.append(None)
                    continue
                estimates = layer_means(values, cfg)
                grid.append([e.value for e in estimates])
                rows.extend({"model": model, "kind": kind, "token_class": name, "layer": layer, "ie_mean": e.value,
                             "ie_low": e.low, "ie_high": e.high, "n": e.n} for layer, e in enumerate(estimates))
            width = max(len(g) for g in grid if g is not None)
            panels[kind] = np.array([g if g is not None else [np.nan] * width for g in grid])
        totals.append(_totals(model, traces, cfg))
        for method in cfg.methods:
            versus.append(_versus_kn(ctx, model, method, traces))
        figure = tracing_panels(panels, TOKEN_CLASSES, ctx.figures_dir / f"tracing_{slug(model)}.png",
                                f"causal tracing, average indirect effect over {len(traces)} facts — {model}")
        section.figures.append(figure)
    section.summary = {"tracing": rows, "tracing_totals": totals, "tracing_vs_kn": versus}
    return section


def _totals(model: str, traces: dict[str, list[dict]], cfg: StudyConfig) -> dict:
    row = {"model": model, "n": len(traces)}
    for key in ("p_clean", "p_corrupted", "te"):
        e = Estimate.bootstrap([np.mean([t[key] for t in ts]) for ts in traces.values()], n_boot=cfg.n_boot,
                               seed=cfg.seed)
        row.update(e.fields(key))
    row["sigma"] = float(np.mean([t["sigma"] for ts in traces.values() for t in ts]))
    return row


def fact_agreement(ctx: StudyContext, model: str, method: str, fact_id: str, traces: list[dict]
                   ) -> tuple[float, float, float]:
    """(Spearman's rho of the KN and the MLP tracing layer profiles, the KN profile's peak layer, the tracing
    profile's peak layer), each averaged over the fact's traced queries with a KN set (nan without one)."""
    found = []
    for t in traces:
        mass = kn_profile(ctx, model, method, fact_id, t["query"])
        if mass is not None:
            mlp = mlp_profile(t)
            found.append((rank_correlation(mass, mlp), float(np.argmax(mass)), float(np.argmax(mlp))))
    found = [f for f in found if not np.isnan(f[0])]
    return tuple(float(np.mean(x)) for x in zip(*found)) if found else (float("nan"),) * 3


def _versus_kn(ctx: StudyContext, model: str, method: str, traces: dict[str, list[dict]]) -> dict:
    cfg = ctx.config
    agreement = [fact_agreement(ctx, model, method, fid, ts) for fid, ts in traces.items()]
    kept = [a for a in agreement if not np.isnan(a[0])]
    e = Estimate.bootstrap([a[0] for a in kept], n_boot=cfg.n_boot, seed=cfg.seed)
    peaks = np.array([a[1:] for a in kept]).reshape(-1, 2)
    return {"model": model, "method": method, "rank_corr": e.value, "rank_corr_low": e.low,
            "rank_corr_high": e.high, "n": e.n, "n_without_kn": len(agreement) - len(kept),
            "kn_peak_layer": float(peaks[:, 0].mean()) if len(kept) else float("nan"),
            "mlp_peak_layer": float(peaks[:, 1].mean()) if len(kept) else float("nan")}


# --------------------------------------------------------------------------------------------------------
# findings


def judge_agreement(summary: dict):
    rows = rho_as_contrast(summary.get("tracing_vs_kn", []))

    def describe(r, e):
        return (f"{r['model']}, {r['method']}: Spearman's rho of the KN layer profile and the MLP tracing profile "
                f"at the last subject token {num(e.value)} {interval(e)} ({r['n']} facts).")
    return judge_rows(rows, {}, describe, support_above=0.0, contradict_below=0.0,
                      label=lambda r: f"{r['model']} {r['method']}")


FINDINGS = (
    Finding("tracing-agrees-with-kns", "Does KN attribution localize facts where causal tracing does?",
            "the two localizations agree (KNs sit in the layers whose MLPs carry the fact, ROME's mid-layer site)",
            "mean over facts of Spearman's rho between the KN layer profile and the MLP tracing profile at the last "
            "subject token: supports when its interval lies above 0; contradicts when below 0", judge_agreement),
)


def _notes(summary: dict) -> list[str]:
    notes = []
    for r in summary.get("tracing_vs_kn", []):
        if r.get("n_without_kn"):
            notes.append(f"tracing vs KNs ({r['model']}, {r['method']}): {r['n_without_kn']} facts have no traced "
                         "query with a non-empty KN set, or a constant profile; they are left out of rho.")
    return notes


EXPERIMENT = Experiment(
    name="tracing", question="where does causal tracing localize facts, and do the KN sets sit there?",
    heading="Causal tracing", summarize=summarize, fact_work=fact_work, works=in_first_method, per_query=False,
    summary_keys=("tracing", "tracing_totals", "tracing_vs_kn"),
    intro="Causal tracing (Meng et al. 2022): the subject's input embeddings are corrupted with seeded Gaussian "
          "noise, and the clean state of the residual stream, of the MLP outputs or of the attention outputs is "
          "restored at one token and layer (MLP and attention in windows of layers). The indirect effect IE = "
          "P_restored(o) - P_corrupted(o) says how much of the answer that state carries. Maps are averaged over "
          "facts in ROME's token classes; the KN comparison is Spearman's rho between the share of a fact's KN "
          "attribution mass per layer and its MLP IE per layer at the last subject token. docs/tracing.md.",
    tables=(
        Table("tracing_totals", title="Total effect of the noise", columns=(
            Column("model", "model"), Column("facts", "n", "int"),
            Column("P clean", "p_clean", "num", 3), Column("P corrupted", "p_corrupted", "num", 3),
            Column("TE [95% CI]", "te", "ci", 3, lo="te_ci_low", hi="te_ci_high"),
            Column("sigma", "sigma", "num", 3))),
        Table("tracing_vs_kn", title="Do KN layers follow the MLP tracing profile? Spearman's rho per fact",
              columns=(
                  Column("model", "model"), Column("method", "method"), Column("facts", "n", "int"),
                  Column("rho [95% CI]", "rank_corr", "ci", 2, True, lo="rank_corr_low", hi="rank_corr_high"),
                  Column("KN peak layer", "kn_peak_layer", "num", 1),
                  Column("MLP IE peak layer", "mlp_peak_layer", "num", 1),
                  Column("facts without KN", "n_without_kn", "int")))),
    notes=_notes, findings=FINDINGS)

__all__ = ["EXPERIMENT", "settings", "traced_queries"]
