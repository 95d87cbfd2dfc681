"""`knowloc study --dry-run`: what a study would do and roughly how long it would take, without running it.

The estimate times one attribution per method and one batched forward pass on the real model, then multiplies
by the number of units each stage needs (facts the model knows come from a quick probe, or from the store of a
study being resumed). It is a rough guide (+-50%), printed before anything is written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from knowloc.attribution import attribute
from knowloc.data import load_facts, load_neutral_texts
from knowloc.data.filtering import known_facts, probe_facts
from knowloc.editing import EditTrial, compute_baseline, evaluate_trial
from knowloc.models import load_model
from knowloc.models.scoring import next_token_distributions
from knowloc.study.config import StudyConfig
from knowloc.study.registry import run_order


def print_plan(config: StudyConfig, echo: Callable[[str], None] = print) -> dict:
    """Print what a study would do and an estimated time (each experiment's registered cost per fact, times
    one timed attribution, forward pass and edit on this machine); writes nothing. Returns {"estimated_s"}."""
    dataset = load_facts(config.data, relations=config.relations)
    echo(f"plan: {len(dataset)} facts ({len(dataset.queries)} queries) from {config.data}, relations "
         f"{', '.join(dataset.relations)}; methods {', '.join(config.methods)}; experiments "
         f"{', '.join(config.experiments)}; out {Path(config.out)}")
    total = 0.0
    for model in config.models:
        start = time.perf_counter()
        lm = load_model(model, device=config.device, dtype=config.dtype)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        probes = probe_facts(lm, list(dataset), candidates=config.candidates, progress=False)
        probe_s = time.perf_counter() - start
        known = [(f, [q for q, p in zip(qs, next(pp for pp in probes if pp.fact.id == f.id).queries) if p.top1])
                 for f, qs in known_facts(probes, config.min_known)]
        if config.facts is not None:
            known = known[: config.facts]
        n_queries = sum(len(qs) for _, qs in known)
        estimate = load_s + probe_s
        lines = [f"{model}: load {load_s:.0f} s, probe {probe_s:.0f} s; {len(known)} facts known, {n_queries} queries"]
        if known:
            fact, queries = known[0]
            for method in config.methods:
                start = time.perf_counter()
                attribute(lm, queries[0], method=method, steps=config.steps)
                per_query = time.perf_counter() - start
                n_attr = n_queries + config.specificity_prompts  # the facts' queries and the reference prompts
                estimate += per_query * n_attr
                lines.append(f"  attribution {method}: {per_query:.2f} s/query x ({n_queries} queries + "
                             f"{config.specificity_prompts} reference prompts) = {per_query * n_attr:.0f} s")
            start = time.perf_counter()
            next_token_distributions(lm, [q.text for q in queries] * 3)
            forward = time.perf_counter() - start
            edit = _edit_seconds(lm, config, [q.text for q in queries])
            avg_q = round(n_queries / len(known))
            for experiment in run_order(config.experiments):
                if experiment.cost is None:
                    continue
                cost = experiment.cost(config, avg_q)
                seconds = len(known) * len(config.methods) * (cost.forwards * forward + cost.edits * edit)
                estimate += seconds
                lines.append(f"  {experiment.name}: ~{seconds:.0f} s")
        lines.append(f"  estimated total for {model}: ~{estimate / 60:.1f} min")
        total += estimate
        for line in lines:
            echo(line)
    echo(f"estimated total: ~{total / 60:.1f} min on {config.device or 'the default device'} "
         f"(executor {config.executor}); nothing was written")
    return {"estimated_s": total}


def _edit_seconds(lm, config: StudyConfig, prompts: list[str]) -> float:
    """Time of one editing trial (an erase in the middle layer: trials re-run the blocks from the lowest edited
    layer up, so this is about the average cost)."""
    texts = load_neutral_texts()[: config.ppl_texts]
    locality = (prompts * config.locality)[: config.locality]
    baseline = compute_baseline(lm, prompts, locality, texts)
    trial = EditTrial(prompts, 0, "x", [(lm.n_layers // 2, 0)], "erase")
    start = time.perf_counter()
    evaluate_trial(lm, trial, baseline, locality, None, texts)
    return time.perf_counter() - start
