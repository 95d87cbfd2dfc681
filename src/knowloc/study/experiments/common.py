"""What several experiments share, in one place (no experiment module imports another):

* **editors**: the KN edits of the trials (:func:`kn_editors`; the study's other editors come from
  :mod:`knowloc.study.editor_registry`) and ROME's text sample of its key statistics C (:func:`sample`), used by
  `modification`, `cas`, `cas-sweep`, `editors` and `localization-vs-editing`;
* **neuron selections**: CAS, N_i and N_g of an edited query (:func:`selections`), used by `cas` and
  `mass-editing`;
* **edited queries**: the seeded queries of a fact that `update-sweep` and `editors` edit (:func:`edited_queries`);
* **K_C vs K_I**: the K_C - K_I contrast of a metric over facts (:func:`group_contrast`), its table columns
  (:func:`gap_columns`) and the rates figure (:func:`rate_figure`), used by `modification` and `editors`;
* **stored traces**: the rows of work done once per fact (:func:`rows_once_per_fact`), the facts' stored traces
  (:func:`fact_traces`), a query's KN and MLP layer profiles (:func:`kn_profile`, :func:`mlp_profile`), used by
  `tracing` and `localization-vs-editing`.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from knowloc.analysis import K_C, K_I, Estimate, select_neurons
from knowloc.analysis.fact_stats import fact_means
from knowloc.analysis.localization import layer_mass
from knowloc.analysis.stats import bootstrap_ci
from knowloc.editing.editors import Editor, KnErase, TextSample
from knowloc.plots import grouped_bars
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext, trial_key
from knowloc.study.editor_registry import SAMPLE_LENGTH
from knowloc.study.facts import known_facts, seeded_order
from knowloc.study.tables import Column

ALL = "all"  # the group of every studied fact, beside K_C and K_I


# --------------------------------------------------------------------------------------------------------
# editors


def sample(cfg: StudyConfig) -> TextSample:
    """The text sample of ROME's key statistics C: --rome-samples samples of SAMPLE_LENGTH tokens, seeded."""
    return TextSample(n=cfg.rome.samples, length=SAMPLE_LENGTH, seed=cfg.seed)


def first_studied(ctx: StudyContext, model: str, n: int) -> list[str]:
    """The first ``n`` studied facts' ids in the study's seeded order (the same for every method; a study grown
    with a larger --facts keeps them): the subsets of `localization-vs-editing` and `mass-editing`."""
    studied = {f.fact_id for f in ctx.facts.get(model, [])}
    known = known_facts(ctx.probes.get(model, []), ctx.config.min_known)
    return [f.fact_id for f in seeded_order(known, ctx.config.seed) if f.fact_id in studied][:n]


def kn_editors(cfg: StudyConfig) -> dict[str, Editor]:
    """The KN edits of the study's trials by operation: ``erase`` (kn-erase) and ``update`` (kn with the study's
    update rule and lambdas)."""
    return {"erase": KnErase(), "update": cfg.update.editor()}


# --------------------------------------------------------------------------------------------------------
# neuron selections


def _normalised(stack: torch.Tensor) -> torch.Tensor:
    peaks = stack.flatten(1).amax(dim=1).clamp_min(torch.finfo(stack.dtype).tiny)
    return stack / peaks.view(-1, 1, 1)


def selections(ctx: StudyContext, stack: torch.Tensor, edited: int, members: list[int],
               keep=lambda neurons: neurons) -> dict[str, dict]:
    """{budget: {selection: neurons}} for editing query `edited`, with CAS and N_g built from `members`; `keep`
    filters each selection (the specificity filter) before the matched budget is taken."""
    cfg = ctx.config
    sub = stack[members]
    cas = keep(cfg.cas.select(sub))
    own = keep(select_neurons(stack[edited], cfg.threshold))
    union_scores = _normalised(sub).amax(dim=0)
    union = keep(sorted({n for m in members for n in select_neurons(stack[m], cfg.threshold)},
                        key=lambda n: (-float(union_scores[n]), n)))
    k = len(cas)
    return {"free": {"CAS": cas, "N_i": own, "N_g": union},
            "matched": {"CAS": cas, "N_i": own[:k], "N_g": union[:k]}}


# --------------------------------------------------------------------------------------------------------
# edited queries


def edited_queries(ctx: StudyContext, model: str, method: str, fact_id: str, queries: list[int]) -> list[int]:
    """A seeded sample of at most --sweep-queries of the fact's queries (sorted)."""
    k = min(ctx.config.update_sweep.queries, len(queries))
    rng = random.Random(ctx.seed_for("update-sweep", model, method, fact_id))
    return sorted(rng.sample(sorted(queries), k))


# --------------------------------------------------------------------------------------------------------
# K_C vs K_I


def rate_figure(rows: list[dict], metrics: tuple[str, ...], hue: str, hue_of, path, title: str):
    """Grouped bars of each row's ``metrics`` with their 95% CIs over facts, one bar per ``hue_of(row)`` (legend
    ``hue``), one panel per group; None when there is no row to draw."""
    long = [{"metric": metric, hue: hue_of(r), "group": r["group"], "value": r[metric],
             "low": r[f"{metric}_ci_low"], "high": r[f"{metric}_ci_high"]} for r in rows for metric in metrics]
    if not long:
        return None
    return grouped_bars(long, path, title, x="metric", hue=hue, value="value", low="low", high="high", facet="group",
                        ylabel="rate (95% CI over facts)")


def group_contrast(by_group: dict[str, list[list[dict]]], metric: str, cfg: StudyConfig, **match) -> dict:
    """K_C minus K_I of a metric (each fact: the mean over its matching trials), with an unpaired bootstrap
    interval over facts (none when a group has fewer than MIN_N facts)."""
    keys = {k: v for k, v in match.items() if k not in ("model", "method")}
    kc, ki = (fact_means(by_group[g], metric, **keys) for g in (K_C, K_I))
    kc, ki = kc[~np.isnan(kc)], ki[~np.isnan(ki)]
    gap = Estimate.unpaired(kc, ki, n_boot=cfg.n_boot, seed=cfg.seed)
    contrast = gap.contrast("diff")
    del contrast["n"]  # the row counts each group
    return {**match, "metric": metric, "n_k_c": int(kc.size), "n_k_i": int(ki.size),
            "k_c": float(kc.mean()) if kc.size else float("nan"), "k_i": float(ki.mean()) if ki.size else float("nan"),
            **contrast}


def gap_columns() -> tuple[Column, ...]:
    """The columns of a K_C - K_I Gen contrast row (:func:`group_contrast`): each group's Gen, their facts, the
    difference with its 95% CI and the star."""
    return (Column("Gen K_C", "k_c", "num", 2), Column("Gen K_I", "k_i", "num", 2),
            Column("facts K_C / K_I", "n_k_c", value=lambda r: f"{r['n_k_c']} / {r['n_k_i']}"),
            Column("K_C - K_I [95% CI]", "diff", "ci", 2, True, n_key="n_k_i"), Column("", "beyond_ci", "star"))


# --------------------------------------------------------------------------------------------------------
# stored traces


def rows_once_per_fact(ctx: StudyContext, experiment: str, model: str, key: str) -> dict[str, list[dict]]:
    """{fact_id: its stored rows that hold ``key``} of the model's studied facts, from whichever method's unit
    holds them (for work done once per fact, in one method's unit: tracing, localization-vs-editing)."""
    trials = ctx.store.trials(experiment)
    out = {}
    for fact in ctx.facts.get(model, []):
        for method in ctx.config.methods:
            rows = [r for r in trials.get(trial_key(model, method, fact.fact_id), []) if key in r]
            if rows:
                out[fact.fact_id] = rows
                break
    return out


def fact_traces(ctx: StudyContext, model: str) -> dict[str, list[dict]]:
    """{fact_id: [stored trace dicts, each with its ``query``]} of the model's studied facts."""
    return {fid: [{**r["trace"], "query": r["query"]} for r in rows]
            for fid, rows in rows_once_per_fact(ctx, "tracing", model, "trace").items()}


def kn_profile(ctx: StudyContext, model: str, method: str, fact_id: str, query: int) -> np.ndarray | None:
    """The query's KN layer profile [n_layers]: the share of its filtered KN set's attribution mass per layer
    (None without a KN set with mass)."""
    kn = ctx.neurons.kn_lists(model, method, fact_id)
    queries, scores = ctx.neurons.score_stack(model, method, fact_id)
    if query not in kn or query not in queries:
        return None
    return layer_mass(scores[queries.index(query)].numpy(), kn[query])


def layer_means(values: np.ndarray, cfg: StudyConfig) -> list[Estimate]:
    """Per column of ``values`` [facts, layers], the mean over facts with its 95% bootstrap interval (one
    resampling of facts for every layer)."""
    mean, low, high = bootstrap_ci(values, stat=lambda a: a.mean(axis=0), n_boot=cfg.n_boot, seed=cfg.seed)
    mean, low, high = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (mean, low, high))
    return [Estimate(len(values), m, lo, hi) for m, lo, hi in zip(mean, low, high)]


def in_first_method(ctx: StudyContext, model: str, method: str, fact_id: str) -> bool:
    """An experiment's ``works`` for work done once per fact (tracing, knockout): in the fact's unit of the
    study's first method."""
    return method == ctx.config.methods[0]


def rho_as_contrast(rows: list[dict]) -> list[dict]:
    """Rows of a mean rank correlation (``rank_corr`` with ``_low`` / ``_high``) as the ``diff`` / ``ci_low`` /
    ``ci_high`` rows a finding judges (:func:`knowloc.study.findings.judge_rows`)."""
    return [{**r, "diff": r["rank_corr"], "ci_low": r["rank_corr_low"], "ci_high": r["rank_corr_high"]} for r in rows]


def mlp_profile(trace: dict) -> np.ndarray:
    """A traced query's MLP IE per layer at its last subject token [n_layers] (ROME's storage site)."""
    return np.array(trace["ie"]["mlp"])[trace["subject"][1]]
