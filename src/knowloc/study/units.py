"""Units of study work: what an executor runs (anywhere) and what the single writer stores.

A unit is one query's attribution with one method, one reference prompt's attribution (the specificity
profile), or one fact's trials in one experiment. `execute` needs only
a (read-only) view of the store; `save` runs in the driver, in one transaction per unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from knowloc.analysis import select_neurons
from knowloc import attribution
from knowloc.attribution.disk_cache import AttributionCache, attribution_key
from knowloc.attribution.shipped import shipped_entry
from knowloc.models.hooks import trace_activations
from knowloc.study.context import StudyContext, trial_key
from knowloc.study.registry import get as experiment


@dataclass(frozen=True)
class Unit:
    kind: str  # "attribution", "reference" or an experiment name
    model: str
    method: str
    fact_id: str
    qidx: int = -1

    def describe(self) -> str:
        return f"{self.kind} {self.model} {self.method} {self.fact_id}" + (f" q{self.qidx}" if self.qidx >= 0 else "")


def reference_units(ctx: StudyContext, model: str) -> list[Unit]:
    """The specificity profile's missing reference attributions; none with `--specificity off`, whose filter
    removes nothing (the profile is not computed, and the specificity experiment says so)."""
    if not ctx.config.filtered:
        return []
    n = len(ctx.neurons.reference_items(model))
    units = []
    for method in ctx.config.methods:
        done = ctx.store.done_reference(model, method)
        units += [Unit("reference", model, method, "", r) for r in range(n) if r not in done]
    return units


def attribution_units(ctx: StudyContext, model: str) -> list[Unit]:
    units = []
    for method in ctx.config.methods:
        done = ctx.store.done_attributions(model, method)
        units += [Unit("attribution", model, method, f.fact_id, q) for f in ctx.facts[model]
                  for q in range(len(f.prompts)) if (f.fact_id, q) not in done]
    return units


def experiment_units(ctx: StudyContext, model: str) -> list[Unit]:
    units = []
    for name in ctx.config.experiments:
        if experiment(name).fact_work is None:
            continue
        done = ctx.store.done_trials(name)
        works = experiment(name).works  # a unit that does no work is neither run nor stored
        units += [Unit(name, model, method, f.fact_id) for method in ctx.config.methods for f in ctx.facts[model]
                  if trial_key(model, method, f.fact_id) not in done
                  and (works is None or works(ctx, model, method, f.fact_id))]
    return units


def execute(ctx: StudyContext, unit: Unit):
    """Run one unit (on any executor) and return what :func:`save` stores."""
    ctx.switch_model(unit.model)
    if unit.kind == "reference":
        return reference_row(ctx, unit.model, unit.method, unit.qidx)
    fact = next(f for f in ctx.facts[unit.model] if f.fact_id == unit.fact_id)
    if unit.kind == "attribution":
        # a studied query is answered by the study's rule (which --candidates may restrict): no warning
        result = attribution.attribute(ctx.model(unit.model), fact.prompts[unit.qidx], fact.object,
                                       method=unit.method, steps=ctx.config.steps, warn=False,
                                       cache=ctx.attribution_cache)
        # KN sets come from the fp16-rounded scores that the store keeps, so every experiment (and CAS, which
        # reads the stored tensors) sees one and the same attribution
        scores = result.scores.to(torch.float16)
        return result.prob, select_neurons(scores.float(), threshold=ctx.config.threshold), scores
    return experiment(unit.kind).fact_work(ctx, unit.model, unit.method, fact)


def reference_row(ctx: StudyContext, model: str, method: str, ridx: int) -> dict:
    """One reference item's attribution (a unit of the specificity profile, stored as is): the model's own next
    token after a neutral prompt, or a reference query's gold object (:meth:`NeuronSets.reference_items`); its KN
    list and |activations| at the last position."""
    lm = ctx.model(model)
    cfg = ctx.config
    item = ctx.neurons.reference_items(model)[ridx]
    with torch.no_grad(), trace_activations(lm) as acts:
        lm.model(input_ids=torch.tensor([lm.encode(item["prompt"]).prompt_ids], device=lm.device))
    activations = torch.stack([acts[layer][0, -1].float().abs().cpu() for layer in range(lm.n_layers)])  # [L, N]
    shipped = shipped_entry(lm, method, cfg.steps, item["prompt"], item["target"], cfg.threshold)
    if shipped is not None:  # the built-in model's packaged reference (knowloc.attribution.shipped)
        return {"prompt": item["prompt"], "relation": item["relation"], "token": shipped["token"],
                "token_text": shipped["token_text"], "prob": shipped["prob"],
                "kn": select_neurons(shipped.scores(), threshold=cfg.threshold),
                "activations": activations}
    if item["target"] is None:
        attr = attribution.attribute_next_token(lm, item["prompt"], method=method, steps=cfg.steps,
                                                cache=ctx.attribution_cache)
        token = attr.extra["token_id"]
    else:
        attr = attribution.attribute(lm, item["prompt"], item["target"], method=method, steps=cfg.steps,
                                     warn=False, cache=ctx.attribution_cache)
        token = lm.first_target_token(item["target"])
    scores = attr.scores.to(torch.float16).float()  # [L, N], the same fp16 rounding as the fact attributions
    return {"prompt": item["prompt"], "relation": item["relation"], "token": token, "token_text": attr.target,
            "prob": attr.prob, "kn": select_neurons(scores, threshold=cfg.threshold),
            "activations": activations}


def _prompt_target(ctx: StudyContext, unit: Unit) -> tuple[str, str | None]:
    if unit.kind == "reference":
        item = ctx.neurons.reference_items(unit.model)[unit.qidx]
        return item["prompt"], item["target"]
    fact = next(f for f in ctx.facts[unit.model] if f.fact_id == unit.fact_id)
    return fact.prompts[unit.qidx], fact.object


def in_cache(ctx: StudyContext, unit: Unit, cache: AttributionCache | None) -> bool:
    """Whether ``cache`` holds an attribution or reference unit's attribution, or a reference unit's is shipped
    (knowloc.attribution.shipped); executing it then costs a read and, for a reference item, one forward pass."""
    if unit.kind not in ("attribution", "reference"):
        return False
    ctx.switch_model(unit.model)
    lm = ctx.model(unit.model)
    prompt, target = _prompt_target(ctx, unit)
    if unit.kind == "reference" and shipped_entry(lm, unit.method, ctx.config.steps, prompt, target,
                                                  ctx.config.threshold) is not None:
        return True
    config = attribution.MethodConfig(unit.method, ctx.config.steps)
    return cache is not None and attribution_key(lm, config, prompt, target) in cache


def take_cached(ctx: StudyContext, units: list[Unit],
                cache: AttributionCache | None = None) -> tuple[list[Unit], list[Unit]]:
    """Split attribution / reference units into (those the attribution cache holds, the others); ``cache``
    defaults to the study's."""
    cache = ctx.attribution_cache if cache is None else cache
    hits = [u for u in units if in_cache(ctx, u, cache)]
    chosen = set(hits)
    return hits, [u for u in units if u not in chosen]


def save(ctx: StudyContext, unit: Unit, result) -> None:
    """Store a unit's result (in the driver, one transaction)."""
    if unit.kind == "attribution":
        prob, kn, scores = result
        ctx.store.save_attribution(unit.model, unit.method, unit.fact_id, unit.qidx, prob, kn, scores)
    elif unit.kind == "reference":
        ctx.store.save_reference(unit.model, unit.method, unit.qidx, result)
    else:
        ctx.store.save_trials(unit.kind, trial_key(unit.model, unit.method, unit.fact_id), result)
