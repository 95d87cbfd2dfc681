"""Shared by the focused summary tests (test_summary_*.py): a real Store in tmp_path holding hand-made facts,
K_C / K_I groups and trials, and the study context around it.

Everything that depends on how a study context is built (its constructor, how facts are loaded, how a trial is
keyed, how summary.json is serialized, the bootstrap used for an expected interval) is written here once, so a
change of those only needs editing this file; the tests themselves only read summary rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from knowloc.analysis import MIN_N, bootstrap_ci, unpaired_bootstrap_diff
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext, trial_key
from knowloc.study.runner import strict_json
from knowloc.study.store import Store

MODEL, METHOD = "toy-model", "ig"
N_BOOT = 200

# KN sets of the two attributed queries of a fact: identical for K_C (CS1 = CS2 = CS_p = 1 >= tau 0.3),
# disjoint for K_I (every CS is 0). A fact with None has one attributed query only, so it has no CS and no group.
_KN = {"K_C": ([(0, 1), (1, 2)], [(0, 1), (1, 2)]), "K_I": ([(0, 1)], [(1, 3)]), None: ([(0, 1)],)}


def study_context(tmp_path: Path, groups: dict[str, str | None], trials: dict[str, dict[str, list[dict]]],
                  **settings) -> StudyContext:
    """A study context over a real Store in `tmp_path`: one model and method, one fact per entry of `groups`
    (in that order; "K_C", "K_I" or None = no group) known in two paraphrases, its stored KN sets making it
    that group under the default split (static tau 0.3 on CS2, specificity filter off), and the trials
    {experiment: {fact_id: rows}}. `settings` override StudyConfig fields."""
    config = StudyConfig(models=[MODEL], methods=[METHOD], specificity="off", seed=0, n_boot=N_BOOT,
                         progress=False, out=str(tmp_path / "study"), **settings)
    store = Store(tmp_path / "study" / "results.sqlite")
    store.save_probe(MODEL, [
        {"fact_id": fid, "relation": "R1", "subject": f"S{k}", "object": f"O{k}",
         "queries": [{"template": t, "text": t.replace("[X]", f"S{k}").split(" [Y]")[0], "top1": True, "prob": 0.9,
                      "gold_token": 1, "predictions": []} for t in ("[X] is in [Y].", "[X] lies in [Y].")]}
        for k, fid in enumerate(groups)])
    for fid, group in groups.items():
        for q, kn in enumerate(_KN[group]):
            store.save_attribution(MODEL, METHOD, fid, q, 0.9, kn, torch.zeros(2, 4))  # cpu: stored scores
    for experiment, by_fact in trials.items():
        for fid, rows in by_fact.items():
            store.save_trials(experiment, trial_key(MODEL, METHOD, fid), rows)
    ctx = StudyContext(config=config, store=store, out=tmp_path / "study", echo=lambda _: None)
    ctx.load_facts(MODEL)
    return ctx


def summarize(summarize_fn, tmp_path: Path, groups: dict[str, str | None],
              trials: dict[str, dict[str, list[dict]]], **settings) -> dict:
    """`summarize_fn(ctx)` (an experiment's summarize) over :func:`study_context`, as summary.json holds it."""
    ctx = study_context(tmp_path, groups, trials, **settings)
    try:
        return summary_json(summarize_fn(ctx))
    finally:
        ctx.store.close()


def summary_json(section) -> dict:
    """A Section's summary keys as summary.json holds them (strict JSON: nan -> None)."""
    return json.loads(json.dumps(strict_json(section.summary), allow_nan=False))


def expected_ci(per_fact: list[float], stat=np.mean) -> tuple[float, float]:
    """The percentile interval of `stat` over the given per-fact values (in the study's fact order), resampling
    facts with the study's seed and n_boot (the helper the tests use: seed 0, N_BOOT)."""
    _, low, high = bootstrap_ci(np.asarray(per_fact, dtype=float), stat=stat, n_boot=N_BOOT, seed=0)
    return float(low), float(high)


def expected_unpaired_ci(a: list[float], b: list[float]) -> tuple[float, float]:
    """The interval of mean(a) - mean(b), each group of facts resampled within itself (seed 0, N_BOOT)."""
    _, low, high = unpaired_bootstrap_diff(np.asarray(a, float), np.asarray(b, float), n_boot=N_BOOT, seed=0)
    return float(low), float(high)


def one(rows: list[dict], **match) -> dict:
    """The single row of `rows` matching every key of `match` (fails when there are none or several)."""
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} rows match {match}"
    return found[0]


__all__ = ["MIN_N", "MODEL", "METHOD", "N_BOOT", "study_context", "summarize", "summary_json", "expected_ci",
           "expected_unpaired_ci", "one"]
