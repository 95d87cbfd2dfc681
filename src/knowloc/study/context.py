"""What experiments share during a study: config, store, selected facts, the loaded model, the derived neuron
sets (:class:`knowloc.study.neuron_sets.NeuronSets`), outputs; and the fact-level statistics every summary uses."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from knowloc.analysis import Estimate
from knowloc.attribution.disk_cache import AttributionCache
from knowloc.data import load_neutral_texts
from knowloc.data.filtering import ProbedFact
from knowloc.editing.session import EditSession, choose_new_object, locality_sample
from knowloc.models import load_model
from knowloc.models.lm import LanguageModel
from knowloc.study.config import StudyConfig
from knowloc.study.facts import StudyFact, select_facts
from knowloc.study.neuron_sets import NeuronSets
from knowloc.study.store import Store


def slug(name: str) -> str:
    """A model name or store key as a safe file-name part."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def trial_key(model: str, method: str, fact_id: str) -> str:
    """Store key of one fact's trials in one experiment."""
    return f"{model}\t{method}\t{fact_id}"


def fact_level_ci(fact_trials: list[list[dict]], metric: str, n_boot: int, seed: int, stat=None,
                  **match: object) -> Estimate:
    """The :class:`Estimate` of a metric over facts: each fact's trials matching `match` are averaged (nan left
    out, :func:`fact_means`), then `stat` (default: the mean) over the facts that have a value, with a bootstrap
    interval that resamples facts (facts, not trials, are the independent units; none below MIN_N facts)."""
    per_fact = fact_means(fact_trials, metric, **match)
    return Estimate.bootstrap(per_fact[~np.isnan(per_fact)], stat=np.mean if stat is None else stat,
                              n_boot=n_boot, seed=seed)


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
                    seed: int) -> Estimate:
    """The :class:`Estimate` of the mean over facts of (metric under `first` - under `second`), paired within
    facts (facts with both), with a paired bootstrap interval (none below MIN_N facts)."""
    a, b = fact_means(fact_trials, metric, **first), fact_means(fact_trials, metric, **second)
    both = ~np.isnan(a) & ~np.isnan(b)
    return Estimate.paired(a[both], b[both], n_boot=n_boot, seed=seed)


def metric_stats(fact_trials: list[list[dict]], metrics: tuple[str, ...], cfg: StudyConfig, n_from: str,
                 **match) -> dict:
    """A summary row's metrics over facts: each metric's estimate with its CI (:func:`fact_level_ci`), ``n`` =
    the facts with a value of ``n_from``, and the dlogPPL mean / median (:func:`dlogppl_stats`)."""
    row: dict = {}
    for metric in metrics:
        estimate = fact_level_ci(fact_trials, metric, cfg.n_boot, cfg.seed, **match)
        row.update(estimate.fields(metric))
        if metric == n_from:
            row["n"] = estimate.n
    return {**row, **dlogppl_stats(fact_trials, cfg, **match)}


def dlogppl_stats(fact_trials: list[list[dict]], cfg: StudyConfig, **match) -> dict:
    """dlogppl_mean / dlogppl_median with bootstrap CIs over facts (each fact: the mean over its matching
    trials' dlogPPL = log(PPL_after / PPL_before))."""
    out = {}
    for name, stat in (("mean", np.mean), ("median", np.median)):
        out.update(fact_level_ci(fact_trials, "dlogppl", cfg.n_boot, cfg.seed, stat=stat, **match)
                   .fields(f"dlogppl_{name}"))
    return out


@dataclass
class Section:
    """An experiment's outputs: its summary.json keys (each also written as ``tables/<key>.csv``), the CSV rows
    of a key where they differ from its summary rows (e.g. flattened lists), and its figures."""

    summary: dict[str, list[dict]] = field(default_factory=dict)
    csv: dict[str, list[dict]] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


class ModelPool:
    """The study's models: loaded lazily, one in memory at a time. Moving to another model is explicit
    (:meth:`switch`), so nothing evicts a model behind its user's back.

    Args:
        device, dtype: what :func:`knowloc.models.load_model` loads them with.
    """

    def __init__(self, device: str | None = None, dtype: str | None = None):
        self.device, self.dtype = device, dtype
        self.focus: str | None = None
        self._loaded: dict[str, LanguageModel] = {}

    def switch(self, name: str) -> None:
        """Make `name` the model in use, releasing any other loaded model and its caches (``lm.caches``, freed
        now even if a reference lingers); `name` is loaded on first :meth:`get`."""
        if self.focus != name:
            for other, lm in self._loaded.items():
                if other != name:
                    lm.clear_caches()
            self._loaded = {k: v for k, v in self._loaded.items() if k == name}
            self.focus = name

    def get(self, name: str) -> LanguageModel:
        """The model in use, loaded once; another model needs :meth:`switch` first."""
        if self.focus is None:
            self.focus = name
        if name != self.focus:
            raise RuntimeError(f"model {name!r} requested while {self.focus!r} is in use; switch to it first")
        if name not in self._loaded:
            self._loaded[name] = load_model(name, device=self.device, dtype=self.dtype)
        return self._loaded[name]

    def loaded(self) -> list[str]:
        return list(self._loaded)


@dataclass
class StudyContext:
    """What the experiments of one study share.

    ``neurons`` (:class:`~knowloc.study.neuron_sets.NeuronSets`) owns every derived view of the store (the
    specificity profile, the filtered KN sets, the groups); ``models`` the loaded model (shared with another
    context by passing it, as the dry run does).
    """

    config: StudyConfig
    store: Store
    out: Path
    echo: Callable[[str], None] = print
    facts: dict[str, list[StudyFact]] = field(default_factory=dict)
    probes: dict[str, list[ProbedFact]] = field(default_factory=dict)
    models: ModelPool | None = None
    neurons: NeuronSets = field(init=False)

    def __post_init__(self) -> None:
        if self.models is None:
            self.models = ModelPool(self.config.device, self.config.compute_dtype)
        self.neurons = NeuronSets(self)

    @functools.cached_property
    def attribution_cache(self) -> AttributionCache | None:
        """The attribution cache studies share (``--attribution-cache``; None when off)."""
        directory = self.config.attribution_cache_dir()
        if directory is None:
            return None
        return AttributionCache(directory, max_bytes=int(self.config.attribution_cache_gb * 2**30))

    def model(self, name: str) -> LanguageModel:
        """The model `name`, loaded once (and only if some work needs it); see :meth:`switch_model`."""
        return self.models.get(name)

    def switch_model(self, name: str) -> None:
        """Move to model `name` (one model in memory at a time: the previous one is released)."""
        self.models.switch(name)

    def edit_session(self, model: str, fact: StudyFact) -> EditSession:
        """A fact's editing trials under the study's settings: a seeded sample of --locality answered queries of
        other relations (other facts when there is no other relation), a seeded new object of the same relation
        for updates, the first --ppl-texts neutral sentences, and the study's update rule and lambdas."""
        cfg, probes = self.config, self.probes[model]
        pool = [(q.text, probe.object) for probe in probes if probe.relation != fact.relation
                for q in probe.known_queries()]
        if not pool:
            pool = [(q.text, probe.object) for probe in probes if probe.fact_id != fact.fact_id
                    for q in probe.known_queries()]
        loc_prompts, loc_objects = locality_sample(pool, cfg.locality, self.seed_for("locality", model, fact.fact_id))
        lm = self.model(model)
        target = choose_new_object(lm, fact.object, [p.object for p in probes if p.relation == fact.relation],
                                   self.seed_for("update", model, fact.fact_id))
        return EditSession(lm, fact.prompts, fact.object, target, loc_prompts, loc_objects,
                           load_neutral_texts()[: cfg.ppl_texts], cfg.lambda1, cfg.lambda2, cfg.update_rule)

    def load_facts(self, model: str) -> None:
        """The model's probed facts and studied facts, from the store (deterministic from the config)."""
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
