"""K_C / K_I: each studied fact's consistency scores and group, computed once and stored.

A fact's CS1, CS2 and CS_p come from the KN sets of its neighbor queries (the sets the study uses, i.e. with
the specificity filter applied; docs/analysis.md). Its group is K_C when the selected score (`--cs-score`) is
at least the study's `--split` threshold (static `--tau`, or Otsu's threshold over the model's and method's
facts), else K_I. The study stores every fact's scores and group (:func:`save_groups`), so the report reads
them instead of recomputing.
"""

from __future__ import annotations

from knowloc.analysis import consistency_scores, otsu_threshold
from knowloc.study import specificity as spec
from knowloc.study.context import StudyContext, trial_key

GROUPS = ("K_C", "K_I")


def all_scores(ctx: StudyContext, model: str, method: str, filtered: bool | None = None) -> dict[str, dict]:
    """{fact_id: {"cs1", "cs2", "csp"}} of the studied facts with >= 2 attributed queries."""
    kn = spec.kn_sets(ctx, model, method, filtered)
    out = {}
    for fact in ctx.facts[model]:
        sets = [kn[fact.fact_id][q] for q in sorted(kn.get(fact.fact_id, {}))]
        if len(sets) >= 2:
            out[fact.fact_id] = consistency_scores(sets, p=ctx.config.p)
    return out


def fact_scores(ctx: StudyContext, model: str, method: str, filtered: bool | None = None) -> dict[str, float]:
    """The selected CS (`--cs-score`) of each studied fact with >= 2 attributed queries, from the KN sets the
    study uses (``filtered=False``: the unfiltered ones)."""
    return {fid: s[ctx.config.cs_score] for fid, s in all_scores(ctx, model, method, filtered).items()}


def thresholds(ctx: StudyContext, values: list[float]) -> dict[str, float]:
    """The static threshold tau and Otsu's threshold of `values` (nan without values)."""
    return {"static": ctx.config.tau, "otsu": otsu_threshold(values) if values else float("nan")}


def groups(ctx: StudyContext, model: str, method: str) -> dict[str, str]:
    """K_C / K_I of each fact under the study's `split` threshold (used by the later experiments)."""
    key = ("groups", model, method)
    if key not in ctx.cache:
        scores = fact_scores(ctx, model, method)
        tau = thresholds(ctx, list(scores.values()))[ctx.config.split]
        ctx.cache[key] = {fid: ("K_C" if cs >= tau else "K_I") for fid, cs in scores.items()}
    return ctx.cache[key]


def grouped_trials(ctx: StudyContext, experiment: str):
    """(model, method, group, [each K_C or K_I fact's stored trials]) for an experiment's summary."""
    trials = ctx.store.trials(experiment)
    for model in ctx.config.models:
        for method in ctx.config.methods:
            split = groups(ctx, model, method)
            for group in GROUPS:
                yield model, method, group, [trials[trial_key(model, method, f.fact_id)] for f in ctx.facts[model]
                                             if split.get(f.fact_id) == group
                                             and trial_key(model, method, f.fact_id) in trials]


def save_groups(ctx: StudyContext) -> None:
    """Store, for each model and method of this run, every studied fact's CS1 / CS2 / CS_p, group and the KN
    lists the experiments used (specificity filter applied), so the report reads them instead of recomputing."""
    for model in ctx.config.models:
        for method in ctx.config.methods:
            scores = all_scores(ctx, model, method)
            split = groups(ctx, model, method)
            ctx.store.save_groups(model, method, [
                {"fact_id": f.fact_id, **scores.get(f.fact_id, {}), "group": split.get(f.fact_id),
                 "kn": spec.kn_lists(ctx, model, method, f.fact_id)} for f in ctx.facts[model]])
