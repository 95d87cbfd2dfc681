"""What experiments share during a study: config, store, selected facts, the loaded model, the derived neuron
sets (:class:`knowloc.study.neuron_sets.NeuronSets`, built from the config, the store and the facts), outputs.
The statistics over facts that the summaries use are :mod:`knowloc.analysis.fact_stats`."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
        self.neurons = NeuronSets(self.config, self.store, self.probes, self.facts)

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
        for updates and the first --ppl-texts neutral sentences (the editors carry their own settings)."""
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
                           load_neutral_texts()[: cfg.ppl_texts], subject=fact.subject)

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
        """A stable per-item seed derived from the study seed (:meth:`StudyConfig.seed_for`)."""
        return self.config.seed_for(*parts)

    @property
    def figures_dir(self) -> Path:
        return self.out / "figures"
