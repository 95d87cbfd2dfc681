"""Study configuration: one source for every setting, as a flag of `knowloc study` and a TOML key alike.

Each :class:`StudyConfig` field carries its help text and its kind (:func:`knowloc.settings.setting`); the settings
a component owns are one section each, its own typed dataclass that validates itself and carries its defaults
(``cfg.rome``: :class:`~knowloc.editing.editors.rome.RomeSettings`; :data:`SECTIONS`):

- ``identity``: determines stored values (probes, attributions, trials). A study directory keeps one set of
  them and refuses another (:data:`IDENTITY_KEYS`).
- ``view``: which models, methods, experiments and how many facts to look at, and thresholds that only split or
  summarize: a later run can reuse and extend an earlier one (add a method, an experiment or more facts
  without recomputing anything).
- ``runtime``: where and how the study runs; changes neither stored values nor the summary.

`knowloc study` has one flag per setting, ``--`` + its flat name with dashes (a section's field: the section and
field names, ``--rome-steps``; plus a few short aliases and older names such as ``--lambda1``), and a TOML file
takes the same flat names (dashes or underscores) or the sections as tables (``[rome] steps = 10``); a test checks
that they agree. ``StudyConfig(rome_steps=10)`` is ``StudyConfig(rome=RomeSettings(steps=10))``; stores and
summaries keep the flat names (:meth:`StudyConfig.flat`), so a study stored before the sections reads the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from knowloc.attribution.disk_cache import default_cache_dir
from knowloc.attribution.methods import METHODS
from knowloc.data import Dataset, load_facts
from knowloc.analysis.cas import CasSettings
from knowloc.editing.editors.finetune import FtSettings
from knowloc.editing.editors.kn import UpdateSettings
from knowloc.editing.editors.rome import RomeSettings
from knowloc.errors import KnowlocError
from knowloc.models import require_installed
from knowloc.settings import setting, settings_fields
from knowloc.study import registry
from knowloc.study.editor_registry import check_editors
from knowloc.study.layers import LayerSpec
from knowloc.study.settings import (LAYER_LIST, AttentionSettings, CasSweepSettings, KnockoutSettings, LveSettings,
                                    MassEditingSettings, UpdateSweepSettings, str_list)
from knowloc.tracing import TraceSettings

CS_SCORES = ("cs1", "cs2", "csp")
DTYPES = ("fp32", "bf16", "fp16")
# Flat names whose values are lists on the command line (comma-separated or repeated)
LIST_FIELDS = ("models", "methods", "experiments", "relations", "editors", "edit_layer", "lve_layers")
# What a store that predates an identity setting was computed with, where that differs from today's default
# (older stores hold unfiltered neuron sets edited by Dai et al.'s rule).
LEGACY_IDENTITY = {"specificity": 1.0, "update_rule": "dai", "specificity_reference": "study"}
# Where the specificity profile's reference queries come from (docs/editing.md): knowloc's own shipped set
# (independent of the study's facts) or, as before it, other studied relations' known facts
SPECIFICITY_REFERENCES = ("shipped", "study")
# Default specificity threshold F, chosen on ParaRel (SmolLM2-135M, 5 relations not tuned on; docs/editing.md):
# the largest F on the locality plateau (Loc 0.77 at F = 0.05 and 0.03, 0.80 at 0.02 removing 9x the neurons,
# 0.62 at 0.1), the builtin set the check
DEFAULT_SPECIFICITY = 0.05


def section(cls: type) -> Any:
    """A StudyConfig field holding a component's settings dataclass (its fields are flags: :data:`FLAT`)."""
    return field(default_factory=cls, metadata={"section": cls})


@dataclass
class StudyConfig:
    """Every setting of a study (see the module docstring); ``StudyConfig(**kwargs)`` validates them."""

    models: list[str] = setting(factory=lambda: ["smollm2-135m"], kind="view", aliases=("--model", "-m"),
                                help="models: built-in names, .gguf paths, HF directories or hub ids")
    data: str = setting("builtin", kind="view", aliases=("-d",), help="facts: builtin, pararel:DIR or a JSONL path "
                        "(a study is tied to the facts' content, not the path)")
    relations: list[str] | None = setting(None, help="relation ids to keep (default: all)")
    relation_limit: int | None = setting(None, help="at most N facts per relation are loaded and probed (the first "
                                         "in file order; default all): bounds the probe of a large set such as "
                                         "ParaRel")
    facts: int | None = setting(None, kind="view", help="at most N known facts per model (a seeded sample; a larger "
                                "N studies a superset)")
    seed: int = setting(0, help="seed of every sampled choice (facts, locality prompts, new objects, bootstrap)")
    methods: list[str] = setting(factory=lambda: ["ig", "amig"], kind="view",
                                 help=f"attribution methods: {', '.join(METHODS)}")
    experiments: list[str] = setting(factory=lambda: ["consistency", "modification"], kind="view",
                                     help="experiments (see below)")
    steps: int = setting(20, help="integration steps m of ig / sig / amig")
    threshold: float = setting(0.2, help="KN set: attribution > threshold x max (Dai et al.)")
    min_known: int = setting(2, help="a fact is studied when the model answers >= this many of its paraphrases")
    candidates: bool = setting(False, help="answered = argmax among the relation's objects (LAMA) instead of the "
                               "vocabulary")
    cs_score: str = setting("cs2", kind="view", help=f"consistency score of the K_C / K_I split: {', '.join(CS_SCORES)}")
    tau: float = setting(0.3, kind="view", help="static K_C / K_I threshold on the CS score")
    p: float = setting(0.5, kind="view", help="CS_p: share of the queries a neuron must be in")
    split: str = setting("static", kind="view", help="groups of the later experiments: static (tau) or otsu")
    specificity: float | str = setting(DEFAULT_SPECIFICITY, help="remove neurons that are KNs of more than this "
                                       "share of the neutral prompts or of the counted reference queries from every "
                                       "neuron set (chosen on ParaRel); 'off' (= 1) keeps them, as the paper")
    specificity_prompts: int = setting(48, help="neutral reference prompts of the specificity profile (48 are "
                                       "shipped)")
    specificity_queries: int = setting(8, help="specificity profile: reference queries per reference relation (the "
                                       "first of each of the shipped set's 29 relations; with --specificity-reference "
                                       "study, seeded known facts of each studied relation)")
    specificity_reference: str = setting("shipped", help="specificity profile's reference queries: shipped "
                                         "(knowloc's own set, whatever the study's facts) or study (other studied "
                                         "relations' known facts, as studies stored before the shipped set)")
    update: UpdateSettings = section(UpdateSettings)
    locality: int = setting(10, help="locality prompts per fact")
    ppl_texts: int = setting(5, help="neutral sentences for dlogPPL")
    attention: AttentionSettings = section(AttentionSettings)
    knockout: KnockoutSettings = section(KnockoutSettings)
    mass_editing: MassEditingSettings = section(MassEditingSettings)
    cas: CasSettings = section(CasSettings)
    cas_sweep: CasSweepSettings = section(CasSweepSettings)
    update_sweep: UpdateSweepSettings = section(UpdateSweepSettings)
    editors: list[str] = setting(factory=lambda: ["kn", "kn-ft", "ft", "rome"], help="editors experiment: kn (the "
                                 "update rule on N_i), kn-ft (fine-tuning of N_i's value vectors), ft (FT+L of one "
                                 "layer's MLP output projection), rome (ROME's rank-one update of it), memit and "
                                 "alphaedit (MEMIT's update over five layers; AlphaEdit's null-space projection of it)")
    edit_layer: list[str] = setting(factory=lambda: ["mid"], help="editors: the layer(s) ft and rome edit (several "
                                    f"sweep layers); {LAYER_LIST}")
    rome: RomeSettings = section(RomeSettings)
    ft: FtSettings = section(FtSettings)
    trace: TraceSettings = section(TraceSettings)
    trace_queries: int = setting(1, help="tracing: queries traced per fact (its first known ones)")
    lve: LveSettings = section(LveSettings)
    compute_dtype: str = setting("fp32", aliases=("--dtype",), help="precision of attribution and editing "
                                 "measurement (the model is loaded in it): fp32 (the reference), bf16 or fp16; "
                                 "bf16 agreement with fp32 and speed in docs/performance.md")
    n_boot: int = setting(1000, kind="view", help="bootstrap resamples of every confidence interval")
    out: str = setting("runs/study", kind="runtime", aliases=("-o",), help="study directory (resumable)")
    force: bool = setting(False, kind="runtime", help="write into an --out directory that holds files but no "
                          "knowloc study (refused otherwise)")
    executor: str = setting("local", kind="runtime", help="local or ray")
    ray_address: str | None = setting(None, kind="runtime", help="Ray cluster address, e.g. auto on a node of a "
                                      "cluster (default: start a local Ray)")
    workers: int = setting(2, kind="runtime", help="Ray workers (actors)")
    gpus_per_worker: float = setting(0.0, kind="runtime", help="GPUs Ray reserves for each worker: 1 = one worker "
                                     "per GPU, 0.5 = two share one; 0: workers run on the CPU unless --device says "
                                     "cuda")
    device: str | None = setting(None, kind="runtime", help="cpu, cuda, cuda:1 (default: cuda if available)")
    attribution_cache: str = setting("default", kind="runtime", help="directory of the attribution cache that "
                                     "studies share (content-addressed by weights, settings, prompt and target): "
                                     "'default' ($KNOWLOC_ATTRIBUTION_CACHE, else ~/.cache/knowloc/attributions), a "
                                     "path, or 'off'")
    attribution_cache_gb: float = setting(4.0, kind="runtime", help="size bound of the attribution cache in GiB "
                                          "(least recently used entries are removed beyond it)")
    progress: bool = setting(True, kind="runtime", help="progress bars")

    def __post_init__(self) -> None:
        self.validate()

    def dataset(self) -> Dataset:
        """The study's facts: --data read with --relations and --relation-limit (KnowlocError when bad)."""
        return load_facts(self.data, relations=self.relations, limit=self.relation_limit)

    def require_models(self) -> None:
        """Refuse (one line with the install command) a built-in model whose weights are not installed."""
        for model in self.models:
            require_installed(model)

    def validate(self) -> None:
        for name in ("models", "methods", "experiments", "relations", "editors", "edit_layer"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str_list(value))
        for f in fields(self):  # a section given as a dict (a TOML table, a stored config) becomes its dataclass
            cls = f.metadata.get("section")
            if cls is not None and not isinstance(getattr(self, f.name), cls):
                setattr(self, f.name, _section(cls, f.name, getattr(self, f.name)))
        if self.relations == []:
            self.relations = None  # no relation named: all of them
        if not self.models:
            raise KnowlocError("at least one --model is required")
        for method in self.methods:
            if method not in METHODS:
                raise KnowlocError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        for experiment in self.experiments:
            if experiment not in registry.names():
                raise KnowlocError(f"unknown experiment {experiment!r}; choose from {', '.join(registry.names())}")
        self.experiments = registry.with_requirements(self.experiments)  # e.g. the tracing its signal needs
        self.editors = check_editors(self.editors)
        self.edit_layer = list(LayerSpec.parse(self.edit_layer, "--edit-layer").items)  # one grammar, checked once
        if not self.methods:
            raise KnowlocError("at least one method is required")
        if self.steps < 1:
            raise KnowlocError(f"--steps must be >= 1, got {self.steps}")
        for name in ("threshold", "tau", "p"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise KnowlocError(f"--{name} must be in [0, 1], got {value}")
        if self.relation_limit is not None and self.relation_limit < 1:
            raise KnowlocError(f"--relation-limit must be >= 1, got {self.relation_limit}")
        if self.specificity_reference not in SPECIFICITY_REFERENCES:
            raise KnowlocError(f"--specificity-reference must be one of {', '.join(SPECIFICITY_REFERENCES)}, got "
                               f"{self.specificity_reference!r}")
        if self.facts is not None and self.facts < 1:
            raise KnowlocError(f"--facts must be >= 1, got {self.facts}")
        if self.min_known < 1:
            raise KnowlocError(f"--min-known must be >= 1, got {self.min_known}")
        if self.cs_score not in CS_SCORES:
            raise KnowlocError(f"unknown --cs-score {self.cs_score!r}; choose from {', '.join(CS_SCORES)}")
        if self.split not in ("static", "otsu"):
            raise KnowlocError(f"--split must be static or otsu, got {self.split!r}")
        self.specificity = _specificity(self.specificity)
        if self.specificity_prompts < 1 or self.specificity_queries < 0:
            raise KnowlocError(f"--specificity-prompts must be >= 1 and --specificity-queries >= 0, got "
                               f"{self.specificity_prompts} and {self.specificity_queries}")
        if isinstance(self.trace_queries, bool) or not isinstance(self.trace_queries, int) or self.trace_queries < 1:
            raise KnowlocError(f"--trace-queries must be an integer >= 1, got {self.trace_queries!r}")
        for experiment in registry.experiments():  # an experiment's checks across settings (pure checks)
            if experiment.validate is not None:
                experiment.validate(self)
        if self.executor not in ("local", "ray"):
            raise KnowlocError(f"--executor must be local or ray, got {self.executor!r}")
        if self.workers < 1 or self.gpus_per_worker < 0:
            raise KnowlocError("--workers must be >= 1 and --gpus-per-worker >= 0")
        if self.executor == "local" and (self.gpus_per_worker or self.ray_address):
            raise KnowlocError("--gpus-per-worker and --ray-address need --executor ray")
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            raise KnowlocError(f"--gpus-per-worker above 1 must be a whole number (a fraction shares one GPU), got "
                               f"{self.gpus_per_worker:g}")
        if self.gpus_per_worker and str(self.device).startswith("cuda:"):
            raise one_gpu_of_a_machine(self.device)
        if self.compute_dtype not in DTYPES:
            raise KnowlocError(f"--compute-dtype must be one of {', '.join(DTYPES)}, got {self.compute_dtype!r}")
        if not self.attribution_cache or not self.attribution_cache_gb > 0:
            raise KnowlocError("--attribution-cache must be a directory, 'default' or 'off', and "
                               "--attribution-cache-gb > 0")
        cache = self.attribution_cache_dir()
        if cache is not None and cache.exists() and not cache.is_dir():
            raise KnowlocError(f"--attribution-cache {cache} exists and is not a directory")
        if self.locality < 1 or self.n_boot < 10 or self.ppl_texts < 1:
            raise KnowlocError("--locality and --ppl-texts must be >= 1 and --n-boot >= 10")

    def attribution_cache_dir(self) -> Path | None:
        """The attribution cache's directory (None with ``off``)."""
        if self.attribution_cache.strip().lower() == "off":
            return None
        return default_cache_dir() if self.attribution_cache == "default" else Path(self.attribution_cache).expanduser()

    def layers(self, name: str) -> LayerSpec | None:
        """The layer list of the setting ``name`` (``edit_layer``, ``lve_layers`` or ``attention_layers``; None
        when it is unset: all layers); :meth:`LayerSpec.resolve` gives a model's layers."""
        if name == "edit_layer":
            return LayerSpec.parse(self.edit_layer, "--edit-layer")
        return {"lve_layers": self.lve.layer_spec, "attention_layers": self.attention.layer_spec}[name]()

    def seed_for(self, *parts: object) -> int:
        """A stable per-item seed derived from the study seed (independent of processing order): the first 8
        bytes, little-endian, of sha256(``"seed:part1:part2:..."``).

        Example:
            >>> cfg = StudyConfig(models=["m"], seed=0)
            >>> cfg.seed_for("locality", "m", "P36-0") == cfg.seed_for("locality", "m", "P36-0") < 2**64
            True
        """
        text = ":".join([str(self.seed), *map(str, parts)])
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")

    def identity(self) -> dict:
        """The settings that determine stored results, by flat name; a resume must match them exactly."""
        flat = self.flat()
        return {k: flat[k] for k in IDENTITY_KEYS}

    def flat(self) -> dict:
        """Every setting by its flat name (:data:`FLAT`: ``rome_steps``, ``lambda1``, ``models``), the values as
        they are (lists copied): what stores, summaries and Ray workers read, and ``StudyConfig(**flat)`` takes."""
        out = {}
        for name, (section_name, field_name) in FLAT.items():
            value = getattr(getattr(self, section_name), field_name) if section_name else getattr(self, field_name)
            out[name] = list(value) if isinstance(value, list) else value
        return out

    @property
    def filtered(self) -> bool:
        """Whether the specificity filter removes anything (F < 1)."""
        return float(self.specificity) < 1.0

    @classmethod
    def defaults(cls) -> dict:
        """What a stored study that predates an identity setting was computed with: its legacy value where one
        is recorded (LEGACY_IDENTITY), else the setting's default."""
        out = {k: v for k, v in cls().flat().items() if k in IDENTITY_KEYS}
        return {**out, **LEGACY_IDENTITY}

    def summary_config(self) -> dict:
        """Everything that shapes summary.json (not where or how it ran), by flat name."""
        return {k: v for k, v in self.flat().items() if k not in RUNTIME_KEYS}

    def as_dict(self) -> dict:
        """:meth:`flat`: ``StudyConfig(**cfg.as_dict())`` is an equal config."""
        return self.flat()

    @classmethod
    def from_toml(cls, path: Path, overrides: dict) -> "StudyConfig":
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise KnowlocError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise KnowlocError(f"config file {path} is not valid TOML: {exc}") from None
        flat: dict = {}
        for key, value in raw.items():
            key = key.replace("-", "_")
            if key in SECTIONS and isinstance(value, dict):  # a table: [rome] steps = 10
                for sub, v in value.items():
                    flat_name = SECTION_FLAT[key].get(sub.replace("-", "_"))
                    if flat_name is None:
                        raise KnowlocError(f"config file {path}: unknown key {sub!r} in table [{key}]")
                    flat[flat_name] = v
            else:
                flat["models" if key == "model" else key] = value
        unknown = sorted(set(flat) - set(FLAT))
        if unknown:
            raise KnowlocError(f"config file {path}: unknown keys {', '.join(unknown)}")
        flat.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**flat)
        except TypeError as exc:
            raise KnowlocError(f"config file {path}: {exc}") from None


def _flat_specs() -> dict[str, tuple[str | None, str, dataclasses.Field]]:
    """{flat name: (section or None, field name, the field)} of every setting, in StudyConfig's order."""
    out: dict[str, tuple[str | None, str, dataclasses.Field]] = {}
    for f in fields(StudyConfig):
        cls = f.metadata.get("section")
        if cls is None:
            out[f.name] = (None, f.name, f)
            continue
        for sub in settings_fields(cls):
            out[sub.metadata.get("flat") or f"{f.name}_{sub.name}"] = (f.name, sub.name, sub)
    return out


SPECS = _flat_specs()  # flat name -> (section, field name, field): what the flags and TOML keys are made of
FLAT = {name: (section, field_name) for name, (section, field_name, _) in SPECS.items()}
SECTIONS = {f.name: f.metadata["section"] for f in fields(StudyConfig) if "section" in f.metadata}
SECTION_FLAT = {name: {field_name: flat for flat, (section, field_name) in FLAT.items() if section == name}
                for name in SECTIONS}
IDENTITY_KEYS = tuple(name for name, (_, _, f) in SPECS.items() if f.metadata["kind"] == "identity")
RUNTIME_KEYS = {name for name, (_, _, f) in SPECS.items() if f.metadata["kind"] == "runtime"}

_dataclass_init = StudyConfig.__init__


def _init(self: StudyConfig, **settings: Any) -> None:
    """``StudyConfig(**settings)``: fields and sections by name, a section's settings also by flat name
    (``rome_steps=10``); an unknown name is a TypeError (the CLI and TOML reader name it in one line)."""
    nested: dict[str, Any] = {}
    parts: dict[str, dict] = {}
    for name, value in settings.items():
        if name in FLAT and FLAT[name][0] is not None:
            section_name, field_name = FLAT[name]
            parts.setdefault(section_name, {})[field_name] = value  # type: ignore[index]
        elif name in FLAT or name in SECTIONS:
            nested[name] = value
        else:
            raise TypeError(f"unknown setting {name!r}")
    for section_name, values in parts.items():
        base = nested.get(section_name)
        if isinstance(base, dict):
            values = {**base, **values}
        elif base is not None:
            values = {**{f.name: getattr(base, f.name) for f in fields(base)}, **values}
        nested[section_name] = values  # made a dataclass (and validated) by validate()
    _dataclass_init(self, **nested)


StudyConfig.__init__ = _init  # type: ignore[method-assign]


def _section(cls: type, name: str, value: Any) -> Any:
    """A section from a dict of its fields (one-line error for an unknown one)."""
    if not isinstance(value, dict):
        raise KnowlocError(f"settings {name!r} must be a table of {', '.join(f.name for f in fields(cls))}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise KnowlocError(f"unknown setting {unknown[0]!r} of [{name}]")
    return cls(**value)


def one_gpu_of_a_machine(device: str) -> KnowlocError:
    """The error of ``--device cuda:N`` with ``--gpus-per-worker``: N names a GPU of the whole machine, while a Ray
    worker with GPUs of its own sees only those (checked with the config and again by the Ray executor)."""
    return KnowlocError(f"--device {device} names one GPU of a machine, but a Ray worker with --gpus-per-worker sees "
                        "only its own; use --device cuda (each worker's own GPU)")


def _specificity(value) -> float:
    """--specificity: a share in [0, 1], or "off" (= 1, nothing removed)."""
    if isinstance(value, str):
        if value.strip().lower() == "off":
            return 1.0
        try:
            value = float(value)
        except ValueError:
            raise KnowlocError(f"--specificity must be a number in [0, 1] or 'off', got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise KnowlocError(f"--specificity must be a number in [0, 1] or 'off', got {value!r}")
    return float(value)
