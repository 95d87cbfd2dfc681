"""What experiments share during a study: config, store, selected facts, lazily loaded models, outputs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from knowloc.study.config import StudyConfig
from knowloc.study.facts import StudyFact
from knowloc.study.store import Store


def slug(name: str) -> str:
    """A model name or store key as a safe file-name part."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def trial_key(model: str, method: str, fact_id: str) -> str:
    """Store key of one fact's trials in one experiment."""
    return f"{model}\t{method}\t{fact_id}"


WRECKED_LOG = 6.907755278982137  # log(1000): a perplexity ratio above 1000x is shown as "> 1000x"


def fmt_dlogppl(value: float, digits: int = 3) -> str:
    """dlogPPL as text: signed, nan as "–", a ratio above 1000x (or an overflow) as "> 1000x"."""
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    if value > WRECKED_LOG:
        return "> 1000x"
    if value < -WRECKED_LOG:
        return "< 0.001x"
    return f"{value:+.{digits}f}"


def fact_level_ci(fact_trials: list[list[dict]], metric: str, n_boot: int, seed: int, stat=None,
                  **match: object) -> tuple[int, float, float, float]:
    """(n facts, estimate, CI low, CI high) of a metric: each fact's trials matching `match` are averaged
    (nan left out), then `stat` (default: the mean) over facts with a bootstrap interval that resamples facts
    (facts, not trials, are the independent units)."""
    import numpy as np

    from knowloc.analysis import bootstrap_ci

    stat = np.mean if stat is None else stat

    per_fact = []
    for rows in fact_trials:
        values = [r.get(metric, np.nan) for r in rows if all(r.get(k) == v for k, v in match.items())
                  and not r.get("skipped")]  # a metric a store predates counts as missing
        values = [v for v in values if not np.isnan(v)]
        if values:
            per_fact.append(float(np.mean(values)))
    estimate, low, high = bootstrap_ci(np.array(per_fact), stat=stat, n_boot=n_boot, seed=seed)
    return len(per_fact), float(estimate), float(low), float(high)


@dataclass
class Section:
    """An experiment's outputs: summary.json keys, CSV tables, figures and Markdown lines."""

    summary: dict[str, list[dict]] = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)


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

    def model(self, name: str):
        """Load a model once (and only if some work needs it)."""
        if name not in self._models:
            from knowloc.models import load_model

            self._models.clear()  # one model in memory at a time
            self._models[name] = load_model(name, device=self.config.device, dtype=self.config.dtype)
        return self._models[name]

    def load_facts(self, model: str) -> None:
        """The model's probe rows and studied facts, from the store (deterministic from the config)."""
        from knowloc.study.facts import select_facts

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
