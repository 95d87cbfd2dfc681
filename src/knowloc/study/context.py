"""What experiments share during a study: config, store, selected facts, lazily loaded models, outputs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from knowloc.analysis import MIN_N, bootstrap_ci, paired_bootstrap_diff
from knowloc.data import load_neutral_texts
from knowloc.editing.session import EditSession, choose_new_object, locality_sample
from knowloc.models import load_model
from knowloc.models.lm import LanguageModel
from knowloc.study.config import StudyConfig
from knowloc.study.facts import StudyFact, select_facts
from knowloc.study.store import Store


def slug(name: str) -> str:
    """A model name or store key as a safe file-name part."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def trial_key(model: str, method: str, fact_id: str) -> str:
    """Store key of one fact's trials in one experiment."""
    return f"{model}\t{method}\t{fact_id}"


def fact_level_ci(fact_trials: list[list[dict]], metric: str, n_boot: int, seed: int, stat=None,
                  **match: object) -> tuple[int, float, float, float]:
    """(n facts, estimate, CI low, CI high) of a metric: each fact's trials matching `match` are averaged
    (nan left out), then `stat` (default: the mean) over facts with a bootstrap interval that resamples facts
    (facts, not trials, are the independent units). Below MIN_N facts the interval is withheld (nan)."""
    stat = np.mean if stat is None else stat
    per_fact = fact_means(fact_trials, metric, **match)
    per_fact = per_fact[~np.isnan(per_fact)]
    estimate, low, high = bootstrap_ci(per_fact, stat=stat, n_boot=n_boot, seed=seed)
    if len(per_fact) < MIN_N:  # too few facts for an interval: the estimate alone
        low = high = float("nan")
    return len(per_fact), float(estimate), float(low), float(high)


def fact_means(fact_trials: list[list[dict]], metric: str, **match: object) -> np.ndarray:
    """Each fact's mean of `metric` over its trials matching `match` (nan where it has none, e.g. a metric a
    store predates), aligned with `fact_trials` so that two metrics or matches of the same facts can be paired."""
    out = []
    for rows in fact_trials:
        values = [r.get(metric, np.nan) for r in rows if all(r.get(k) == v for k, v in match.items())
                  and not r.get("skipped")]
        values = [v for v in values if v is not None and not np.isnan(v)]
        out.append(float(np.mean(values)) if values else np.nan)
    return np.array(out, dtype=float)


def paired_contrast(fact_trials: list[list[dict]], metric: str, first: dict, second: dict, n_boot: int,
                    seed: int) -> dict:
    """{n, diff, ci_low, ci_high, beyond_ci} of mean over facts of (metric under `first` - under `second`),
    paired within facts, with a paired bootstrap interval (none below MIN_N facts; beyond_ci needs one)."""
    a, b = fact_means(fact_trials, metric, **first), fact_means(fact_trials, metric, **second)
    ok = ~np.isnan(a) & ~np.isnan(b)
    n = int(ok.sum())
    if n == 0:
        return {"n": 0, "diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "beyond_ci": False}
    diff, lo, hi = paired_bootstrap_diff(a[ok], b[ok], n_boot=n_boot, seed=seed)
    if n < MIN_N:
        lo = hi = float("nan")
    return {"n": n, "diff": diff, "ci_low": lo, "ci_high": hi, "beyond_ci": bool(n >= MIN_N and (lo > 0 or hi < 0))}


def dlogppl_stats(fact_trials: list[list[dict]], cfg: StudyConfig, **match) -> dict:
    """dlogppl_mean / dlogppl_median with bootstrap CIs over facts (each fact: the mean over its matching
    trials' dlogPPL = log(PPL_after / PPL_before))."""
    out = {}
    for name, stat in (("mean", np.mean), ("median", np.median)):
        _, est, lo, hi = fact_level_ci(fact_trials, "dlogppl", cfg.n_boot, cfg.seed, stat=stat, **match)
        out.update({f"dlogppl_{name}": est, f"dlogppl_{name}_ci_low": lo, f"dlogppl_{name}_ci_high": hi})
    return out


@dataclass
class Section:
    """An experiment's outputs: summary.json keys, CSV tables (by file name) and figures."""

    summary: dict[str, list[dict]] = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


@dataclass
class StudyContext:
    config: StudyConfig
    store: Store
    out: Path
    echo: Callable[[str], None] = print
    facts: dict[str, list[StudyFact]] = field(default_factory=dict)
    probes: dict[str, list[dict]] = field(default_factory=dict)
    cache: dict = field(default_factory=dict)  # derived views of the store (specificity profile, filtered KN sets)
    _models: dict = field(default_factory=dict)

    def model(self, name: str) -> LanguageModel:
        """Load a model once (and only if some work needs it)."""
        if name not in self._models:
            self._models.clear()  # one model in memory at a time
            self._models[name] = load_model(name, device=self.config.device, dtype=self.config.dtype)
        return self._models[name]

    def edit_session(self, model: str, fact: StudyFact) -> EditSession:
        """A fact's editing trials under the study's settings: a seeded sample of --locality answered queries of
        other relations (other facts when there is no other relation), a seeded new object of the same relation
        for updates, the first --ppl-texts neutral sentences, and the study's update rule and lambdas."""
        cfg, probes = self.config, self.probes[model]
        pool = [(q["text"], row["object"]) for row in probes if row["relation"] != fact.relation
                for q in row["queries"] if q["top1"]]
        if not pool:
            pool = [(q["text"], row["object"]) for row in probes if row["fact_id"] != fact.fact_id
                    for q in row["queries"] if q["top1"]]
        loc_prompts, loc_objects = locality_sample(pool, cfg.locality, self.seed_for("locality", model, fact.fact_id))
        lm = self.model(model)
        target = choose_new_object(lm, fact.object, [r["object"] for r in probes if r["relation"] == fact.relation],
                                   self.seed_for("update", model, fact.fact_id))
        return EditSession(lm, fact.prompts, fact.object, target, loc_prompts, loc_objects,
                           load_neutral_texts()[: cfg.ppl_texts], cfg.lambda1, cfg.lambda2, cfg.update_rule)

    def load_facts(self, model: str) -> None:
        """The model's probe rows and studied facts, from the store (deterministic from the config)."""
        self.probes[model] = self.store.probe(model)
        self.facts[model] = select_facts(self.probes[model], self.config.min_known, self.config.facts,
                                         self.config.seed)

    def refresh(self) -> None:
        """Pick up models whose probe the driver stored since (worker side)."""
        for model in self.config.models:
            if model not in self.facts and self.store.has_probe(model):
                self.load_facts(model)

    def seed_for(self, *parts: object) -> int:
        """A stable per-item seed derived from the study seed (independent of processing order)."""
        text = ":".join([str(self.config.seed), *map(str, parts)])
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")

    @property
    def figures_dir(self) -> Path:
        return self.out / "figures"
