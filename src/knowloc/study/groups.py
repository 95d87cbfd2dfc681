"""K_C / K_I in a study: the stored groups and each group's trials.

The scores and the split themselves are :meth:`knowloc.study.neuron_sets.NeuronSets.cs_scores` and
:meth:`~knowloc.study.neuron_sets.NeuronSets.groups` (``ctx.neurons``). The study stores every fact's scores and
group (:func:`save_groups`), so the report reads them instead of recomputing.
"""

from __future__ import annotations

from knowloc.analysis import GROUPS
from knowloc.study.context import StudyContext, trial_key


def grouped_trials(ctx: StudyContext, experiment: str, every: str | None = None):
    """(model, method, group, [each K_C or K_I fact's stored trials]) for an experiment's summary; with
    ``every``, then (model, method, every, [the trials of both groups]) per model and method."""
    trials = ctx.store.trials(experiment)
    for model in ctx.config.models:
        for method in ctx.config.methods:
            split = ctx.neurons.groups(model, method)
            pooled = []
            for group in GROUPS:
                mine = [trials[trial_key(model, method, f.fact_id)] for f in ctx.facts[model]
                        if split.get(f.fact_id) == group and trial_key(model, method, f.fact_id) in trials]
                pooled.extend(mine)
                yield model, method, group, mine
            if every is not None:
                yield model, method, every, pooled


def save_groups(ctx: StudyContext) -> None:
    """Store, for each model and method of this run, every studied fact's CS1 / CS2 / CS_p, group and the KN
    lists the experiments used (specificity filter applied), so the report reads them instead of recomputing."""
    for model in ctx.config.models:
        for method in ctx.config.methods:
            scores = ctx.neurons.cs_scores(model, method)
            split = ctx.neurons.groups(model, method)
            ctx.store.save_groups(model, method, [
                {"fact_id": f.fact_id, **scores.get(f.fact_id, {}), "group": split.get(f.fact_id),
                 "kn": ctx.neurons.kn_lists(model, method, f.fact_id)} for f in ctx.facts[model]])
