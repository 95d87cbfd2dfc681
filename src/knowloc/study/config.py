"""Study configuration: one source for every setting, as a flag of `knowloc study` and a TOML key alike.

Each :class:`StudyConfig` field carries its help text and its kind (:func:`setting`):

- ``identity``: determines stored values (probes, attributions, trials). A study directory keeps one set of
  them and refuses another (:data:`IDENTITY_KEYS`).
- ``view``: which models, methods, experiments and how many facts to look at, and thresholds that only split or
  summarize: a later run can reuse and extend an earlier one (add a method, an experiment or more facts
  without recomputing anything).
- ``runtime``: where and how the study runs; changes neither stored values nor the summary.

`knowloc study` has one flag per field, ``--`` + the field name with dashes (plus a few short aliases), and a
TOML file takes the same names (dashes or underscores); a test checks that they agree.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from knowloc.attribution.disk_cache import default_cache_dir
from knowloc.attribution.methods import METHODS
from knowloc.data import Dataset, load_facts
from knowloc.editing.editors import FineTune, Rome, check_editors
from knowloc.editing.operations import UPDATE_RULES
from knowloc.errors import KnowlocError
from knowloc.models import require_installed
from knowloc.study import registry
from knowloc.study.layers import GRAMMAR, LayerSpec
from knowloc.tracing import TraceSettings

CS_SCORES = ("cs1", "cs2", "csp")
DTYPES = ("fp32", "bf16", "fp16")
KINDS = ("identity", "view", "runtime")
LIST_FIELDS = ("models", "methods", "experiments", "relations", "editors", "edit_layer",
               "lve_layers")  # comma-separated or repeated on the command line
# The settings that name layers, one grammar (knowloc.study.layers), and their flags
LAYER_FIELDS = {"edit_layer": "--edit-layer", "lve_layers": "--lve-layers", "attention_layers": "--attention-layers"}
LAYER_LIST = f"a layer list: {GRAMMAR}"
# The settings that are lists of numbers (a list or a comma-separated string, "0,0.5,1"), each with the name its
# flag is spelled from (float_list)
FLOAT_LIST_FIELDS = {"cas_sweep_beta1": "cas_sweep_beta1", "cas_sweep_beta2": "cas_sweep_beta2",
                     "cas_sweep_thresholds": "cas_sweep_thresholds", "update_sweep_lambda2": "sweep_lambda2"}
# What a store that predates an identity setting was computed with, where that differs from today's default
# (older stores hold unfiltered neuron sets edited by Dai et al.'s rule).
LEGACY_IDENTITY = {"specificity": 1.0, "update_rule": "dai", "specificity_reference": "study"}
# Where the specificity profile's reference queries come from (docs/editing.md): knowloc's own shipped set
# (independent of the study's facts) or, as before it, other studied relations' known facts
SPECIFICITY_REFERENCES = ("shipped", "study")
# Default lambda2 of each update rule (lambda2 = None in a config means the rule's default). dai / signed add
# lambda2 * E(o'), as Dai et al. (8); calibrated adds lambda2 * |v_n| in the unit direction of E(o'), chosen by
# the update-sweep frontier on SmolLM2-135M (docs/editing.md).
RULE_LAMBDA2 = {"dai": 8.0, "signed": 8.0, "calibrated": 1.0}
# Default specificity threshold F, chosen on ParaRel (SmolLM2-135M, 5 relations not tuned on; docs/editing.md):
# the largest F on the locality plateau (Loc 0.77 at F = 0.05 and 0.03, 0.80 at 0.02 removing 9x the neurons,
# 0.62 at 0.1), the builtin set the check
DEFAULT_SPECIFICITY = 0.05


def component_default(cls: type, name: str) -> Any:
    """The default of a component's settings dataclass field (its factory's value where it has one): a study
    setting that a component also takes (ROME's steps, tracing's noise draws) reads its default from the
    component, so the two cannot disagree."""
    spec = next(f for f in fields(cls) if f.name == name)
    return spec.default if spec.default is not MISSING else spec.default_factory()


def setting(default: Any = MISSING, *, help: str, kind: str = "identity", factory: Any = MISSING,
            aliases: tuple[str, ...] = ()) -> Any:
    """A StudyConfig field with its help text, kind (identity / view / runtime) and extra flag spellings."""
    if kind not in KINDS:
        raise ValueError(f"setting kind must be one of {KINDS}, got {kind!r}")
    metadata = {"help": help, "kind": kind, "aliases": aliases}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


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
    update_rule: str = setting("calibrated", help=f"update rule: {', '.join(UPDATE_RULES)} (docs/editing.md)")
    lambda1: float = setting(1.0, help="update: weight of the old object's direction")
    lambda2: float | None = setting(None, help="update: weight of the new object's direction (default: the "
                                    "rule's, dai / signed 8, calibrated 1)")
    locality: int = setting(10, help="locality prompts per fact")
    ppl_texts: int = setting(5, help="neutral sentences for dlogPPL")
    attention_k: int = setting(3, help="knowledge synapses: top-k attention weights per (layer, head) row")
    attention_layers: str | None = setting(None, help="manipulate knowledge synapses in these layers only, e.g. "
                                           f"10-20 (default: all); {LAYER_LIST}")
    attention_renormalize: bool = setting(False, help="rescale each manipulated attention row to sum to 1")
    cas_beta1: float = setting(1.0, help="CAS = beta1 mean - beta2 std")
    cas_beta2: float = setting(1.0, help="CAS = beta1 mean - beta2 std")
    cas_threshold: float = setting(0.2, help="CAS selection: CAS > t x max CAS")
    cas_top_k: int | None = setting(None, help="cap the CAS selection at k neurons")
    cas_sweep_beta1: list[float] = setting(factory=lambda: [1.0], aliases=("--sweep-beta1",),
                                           help="cas-sweep grid of beta1")
    cas_sweep_beta2: list[float] = setting(factory=lambda: [0.0, 0.5, 1.0, 2.0], aliases=("--sweep-beta2",),
                                           help="cas-sweep grid of beta2 (only beta2 / beta1 and t change the "
                                           "selection)")
    cas_sweep_thresholds: list[float] = setting(factory=lambda: [0.1, 0.2, 0.3, 0.5],
                                                aliases=("--sweep-thresholds",), help="cas-sweep grid of t")
    update_sweep_lambda2: list[float] = setting(factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
                                                aliases=("--sweep-lambda2",), help="update-sweep grid of lambda2")
    update_sweep_rules: list[str] = setting(factory=lambda: list(UPDATE_RULES), aliases=("--sweep-rules",),
                                            help="update-sweep rules")
    update_sweep_queries: int = setting(2, aliases=("--sweep-queries",),
                                        help="update-sweep: neighbor queries edited per fact (seeded)")
    update_sweep_tied: bool = setting(False, aliases=("--sweep-tied",),
                                      help="update-sweep: lambda1 = lambda2 at every grid point (the edit is then "
                                      "lambda2 (E(o') - E(o)), with no component along the direction all tokens' "
                                      "unembeddings share; docs/editing.md)")
    editors: list[str] = setting(factory=lambda: ["kn", "kn-ft", "ft", "rome"], help="editors experiment: kn (the "
                                 "update rule on N_i), kn-ft (fine-tuning of N_i's value vectors), ft (FT+L of one "
                                 "layer's MLP output projection), rome (ROME's rank-one update of it)")
    edit_layer: list[str] = setting(factory=lambda: ["mid"], help="editors: the layer(s) ft and rome edit (several "
                                    f"sweep layers); {LAYER_LIST}")
    # rome's, ft's and tracing's defaults are the components' own (component_default), so `knowloc bench` times
    # what a study runs
    rome_steps: int = setting(component_default(Rome, "steps"), help="rome: Adam steps of the value vector v* "
                              "(ROME: 20)")
    rome_lr: float = setting(component_default(Rome, "lr"), help="rome: learning rate of v* (ROME: 0.5)")
    rome_stop: float = setting(component_default(Rome, "stop"), help="rome: v*'s steps end once its loss is below "
                               "this (ROME's code: 5e-2; 0, the default the measurements used: every --rome-steps "
                               "step)")
    rome_prefixes: int = setting(component_default(Rome, "prefixes"), help="rome: seeded context prefixes of the "
                                 "model's own text besides the query (key k* and v* are fitted over them)")
    rome_samples: int = setting(component_default(Rome, "sample").n, help="rome: samples of 64 tokens of the "
                                "model's own seeded text over which the key statistics C = E[k k^T] are computed "
                                "(once per model and layer, stored)")
    ft_steps: int = setting(component_default(FineTune, "steps"), help="ft / kn-ft: Adam steps (ROME's FT+L: 25)")
    ft_lr: float = setting(component_default(FineTune, "lr"), help="ft / kn-ft: learning rate (the bound: Adam's "
                           "steps reach it in one step)")
    ft_bound: float = setting(component_default(FineTune, "bound"), help="ft / kn-ft: L-infinity bound of the weight "
                              "change; the smallest of 5e-4 (ROME's FT+L on GPT-2 XL) .. 1e-2 at which ft reaches "
                              "Rel >= 0.9 on ParaRel (SmolLM2-135M; docs/editing.md)")
    trace_samples: int = setting(component_default(TraceSettings, "samples"), help="tracing: seeded noise draws per "
                                 "query (ROME: 10)")
    trace_noise: float = setting(component_default(TraceSettings, "noise"), help="tracing: noise sigma in standard "
                                 "deviations of the token embeddings (ROME: 3)")
    trace_window: int = setting(component_default(TraceSettings, "window"), help="tracing: layers restored together "
                                "around each layer for mlp / attn (ROME: 10 of 48 layers; 6 keeps that share of a "
                                "30-layer model)")
    trace_queries: int = setting(1, help="tracing: queries traced per fact (its first known ones)")
    lve_facts: int = setting(20, kind="view", help="localization-vs-editing: facts edited at every --lve-layers "
                             "layer (the first of the studied facts in their seeded order: a larger value adds "
                             "facts and keeps the stored edits)")
    lve_layers: list[str] = setting(factory=lambda: ["every3"], help="localization-vs-editing: layers rome and ft "
                                    f"edit; {LAYER_LIST}")
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
        for name in LIST_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _str_list(value))
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
        for name, flag in LAYER_FIELDS.items():  # one grammar, checked here once; kept in canonical spelling
            value = getattr(self, name)
            if value is None:
                continue
            spec = LayerSpec.parse(value, flag)
            if name in LIST_FIELDS:
                setattr(self, name, list(spec.items))
            elif not isinstance(value, str):  # (a string of --attention-layers is kept as given, as before)
                setattr(self, name, spec.text)
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
        if self.update_rule not in UPDATE_RULES:
            raise KnowlocError(f"unknown --update-rule {self.update_rule!r}; choose from {', '.join(UPDATE_RULES)}")
        if self.lambda2 is None:
            self.lambda2 = RULE_LAMBDA2[self.update_rule]
        for name in ("lambda1", "lambda2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
                    or abs(value) == float("inf"):
                raise KnowlocError(f"--{name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        for name, flag_name in FLOAT_LIST_FIELDS.items():  # lists of floats; each experiment checks their values
            setattr(self, name, float_list(getattr(self, name), flag_name))
        if isinstance(self.update_sweep_rules, str):
            self.update_sweep_rules = [r.strip() for r in self.update_sweep_rules.split(",")]
        else:
            self.update_sweep_rules = list(self.update_sweep_rules)
        for experiment in registry.experiments():  # each experiment checks the settings it owns (pure checks)
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
        """The layer list of the setting ``name`` (one of :data:`LAYER_FIELDS`; None when it is unset: all
        layers); :meth:`LayerSpec.resolve` gives a model's layers."""
        value = getattr(self, name)
        return None if value is None else LayerSpec.parse(value, LAYER_FIELDS[name])

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
        """The settings that determine stored results; a resume must match them exactly."""
        return {k: getattr(self, k) for k in IDENTITY_KEYS}

    @property
    def filtered(self) -> bool:
        """Whether the specificity filter removes anything (F < 1)."""
        return float(self.specificity) < 1.0

    @classmethod
    def defaults(cls) -> dict:
        """What a stored study that predates an identity setting was computed with: its legacy value where one
        is recorded (LEGACY_IDENTITY), else the setting's default."""
        out = {f.name: f.default if f.default is not MISSING else f.default_factory()
               for f in fields(cls) if f.name in IDENTITY_KEYS
               and (f.default is not MISSING or f.default_factory is not MISSING)}
        return {**out, **LEGACY_IDENTITY}

    def summary_config(self) -> dict:
        """Everything that shapes summary.json (not where or how it ran)."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_KEYS}

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_toml(cls, path: Path, overrides: dict) -> "StudyConfig":
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise KnowlocError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise KnowlocError(f"config file {path} is not valid TOML: {exc}") from None
        known = {f.name for f in fields(cls)}
        raw = {k.replace("-", "_"): v for k, v in raw.items()}
        if "model" in raw:
            raw["models"] = raw.pop("model")
        unknown = sorted(set(raw) - known)
        if unknown:
            raise KnowlocError(f"config file {path}: unknown keys {', '.join(unknown)}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**raw)
        except TypeError as exc:
            raise KnowlocError(f"config file {path}: {exc}") from None


IDENTITY_KEYS = tuple(f.name for f in fields(StudyConfig) if f.metadata["kind"] == "identity")
RUNTIME_KEYS = {f.name for f in fields(StudyConfig) if f.metadata["kind"] == "runtime"}


def one_gpu_of_a_machine(device: str) -> KnowlocError:
    """The error of ``--device cuda:N`` with ``--gpus-per-worker``: N names a GPU of the whole machine, while a Ray
    worker with GPUs of its own sees only those (checked with the config and again by the Ray executor)."""
    return KnowlocError(f"--device {device} names one GPU of a machine, but a Ray worker with --gpus-per-worker sees "
                        "only its own; use --device cuda (each worker's own GPU)")


def _str_list(value) -> list[str]:
    """A list of distinct names, in first-seen order, from a list or a comma-separated string; list items may hold
    commas too (``--methods ig --methods ig,amig`` is ig, amig: a name given twice is studied once)."""
    items = [value] if isinstance(value, str) else list(value)
    return list(dict.fromkeys(part.strip() for item in items for part in str(item).split(",") if part.strip()))


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


def float_list(value, name: str) -> list[float]:
    """A non-empty list of distinct numbers, from a list or a comma-separated string ("0,0.5,1")."""
    flag = "--" + name.replace("cas_", "").replace("_", "-")
    items = value.split(",") if isinstance(value, str) else value
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        raise KnowlocError(f"{flag} must be a comma-separated list of numbers, got {value!r}") from None
    if not numbers or len(set(numbers)) != len(numbers) or any(n != n for n in numbers):
        raise KnowlocError(f"{flag} must be a non-empty list of distinct numbers, got {value!r}")
    return numbers
