"""Study configuration: flags or a TOML file with the same keys."""

from __future__ import annotations

import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from knowloc.attribution.methods import METHODS
from knowloc.editing.operations import UPDATE_RULES
from knowloc.errors import KnowlocError
from knowloc.study.registry import names as experiment_names

CS_SCORES = ("cs1", "cs2", "csp")

# Settings that determine stored values (probes, attributions, trials): a study directory keeps one set of
# them and refuses another. Everything else (which models, methods, experiments and how many facts to look
# at; thresholds that only split or summarize) selects a view of the store, so a later run can reuse and
# extend an earlier one: e.g. add a method, an experiment or more facts without recomputing anything.
IDENTITY_KEYS = ("data", "relations", "seed", "steps", "threshold", "min_known", "candidates", "lambda1", "lambda2",
                 "locality", "ppl_texts", "cas_beta1", "cas_beta2", "cas_threshold", "cas_top_k", "attention_k", "attention_layers",
                 "attention_renormalize", "cas_sweep_beta1", "cas_sweep_beta2", "cas_sweep_thresholds",
                 "update_rule", "specificity", "specificity_prompts", "update_sweep_lambda2", "update_sweep_rules",
                 "update_sweep_queries")
# What a store that predates an identity setting was computed with, where that differs from today's default
# (older stores hold unfiltered neuron sets edited by Dai et al.'s rule).
LEGACY_IDENTITY = {"specificity": 1.0, "update_rule": "dai"}
# Default lambda2 of each update rule (lambda2 = None in a config means the rule's default). dai / signed add
# lambda2 * E(o'), as Dai et al. (8); calibrated adds lambda2 * |v_n| in the unit direction of E(o'), chosen by
# the update-sweep frontier on SmolLM2-135M (docs/editing.md).
RULE_LAMBDA2 = {"dai": 8.0, "signed": 8.0, "calibrated": 2.0}
# Default specificity threshold F, chosen by measurement on SmolLM2-135M (docs/editing.md)
DEFAULT_SPECIFICITY = 0.1
# settings that change neither stored values nor the summary
RUNTIME_KEYS = {"out", "device", "dtype", "progress", "executor", "ray_address", "workers", "gpus_per_worker"}


@dataclass
class StudyConfig:
    models: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    data: str = "builtin"
    relations: list[str] | None = None
    facts: int | None = None  # at most this many known facts per model (seeded sample)
    seed: int = 0
    methods: list[str] = field(default_factory=lambda: ["ig", "amig"])
    experiments: list[str] = field(default_factory=lambda: ["consistency", "modification"])
    steps: int = 20
    threshold: float = 0.2  # KN set: attribution > threshold x max (Dai et al.)
    min_known: int = 2  # a fact is studied when the model answers >= this many of its queries
    candidates: bool = False  # "answers" = argmax among the relation's objects (LAMA) instead of the vocabulary
    cs_score: str = "cs2"
    tau: float = 0.3  # static K_C / K_I threshold
    p: float = 0.5  # CS_p share
    split: str = "static"  # threshold used for the K_C/K_I groups of later experiments: static | otsu
    # neurons that are knowledge neurons of more than this share of the fact-free reference prompts are removed
    # from every neuron set (1 or "off": nothing is removed, the paper's behaviour); see docs/editing.md
    specificity: float | str = DEFAULT_SPECIFICITY
    specificity_prompts: int = 48  # reference prompts of the specificity profile (at most 48 are shipped)
    update_rule: str = "calibrated"  # dai | signed | calibrated (knowloc.editing.operations)
    lambda1: float = 1.0
    lambda2: float | None = None  # None: the update rule's default (RULE_LAMBDA2)
    locality: int = 10  # locality prompts per fact
    ppl_texts: int = 5  # neutral sentences for dPPL (each distinct edit runs them once)
    attention_k: int = 3  # knowledge synapses: top-k attention weights per (layer, head) row
    attention_layers: str | None = None  # "a-b": manipulate KS only in layers a..b (default: all layers)
    attention_renormalize: bool = False  # rescale each manipulated attention row to sum to 1
    cas_beta1: float = 1.0
    cas_beta2: float = 1.0
    cas_threshold: float = 0.2  # CAS selection: CAS(u) > t x max CAS
    cas_top_k: int | None = None
    # experiment cas-sweep: the grid beta1 x beta2 x t (only beta2 / beta1 and t change the selection)
    cas_sweep_beta1: list[float] = field(default_factory=lambda: [1.0])
    cas_sweep_beta2: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0])
    cas_sweep_thresholds: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.5])
    # experiment update-sweep: update N_i with every rule at every lambda2, on this many queries per fact
    update_sweep_lambda2: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
    update_sweep_rules: list[str] = field(default_factory=lambda: list(UPDATE_RULES))
    update_sweep_queries: int = 2
    n_boot: int = 1000
    out: str = "runs/study"
    executor: str = "local"  # local | ray
    ray_address: str | None = None
    workers: int = 2
    gpus_per_worker: float = 0.0
    device: str | None = None
    dtype: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.models:
            raise KnowlocError("at least one --model is required")
        for method in self.methods:
            if method not in METHODS:
                raise KnowlocError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        for experiment in self.experiments:
            if experiment not in experiment_names():
                raise KnowlocError(f"unknown experiment {experiment!r}; choose from {', '.join(experiment_names())}")
        if not self.methods:
            raise KnowlocError("at least one method is required")
        if self.steps < 1:
            raise KnowlocError(f"--steps must be >= 1, got {self.steps}")
        if self.cas_beta1 < 0 or self.cas_beta2 < 0:
            raise KnowlocError("--cas-beta1 and --cas-beta2 must be >= 0")
        for name in ("threshold", "tau", "p", "cas_threshold"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise KnowlocError(f"--{name} must be in [0, 1], got {value}")
        if self.facts is not None and self.facts < 1:
            raise KnowlocError(f"--facts must be >= 1, got {self.facts}")
        if self.min_known < 1:
            raise KnowlocError(f"--min-known must be >= 1, got {self.min_known}")
        if self.cs_score not in CS_SCORES:
            raise KnowlocError(f"unknown --cs-score {self.cs_score!r}; choose from {', '.join(CS_SCORES)}")
        if self.split not in ("static", "otsu"):
            raise KnowlocError(f"--split must be static or otsu, got {self.split!r}")
        self.specificity = _specificity(self.specificity)
        if self.specificity_prompts < 1:
            raise KnowlocError(f"--specificity-prompts must be >= 1, got {self.specificity_prompts}")
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
        self.update_sweep_lambda2 = _float_list(self.update_sweep_lambda2, "sweep_lambda2")
        if any(v <= 0 for v in self.update_sweep_lambda2):
            raise KnowlocError("--sweep-lambda2 values must be > 0")
        rules = self.update_sweep_rules
        rules = [r.strip() for r in rules.split(",")] if isinstance(rules, str) else list(rules)
        if not rules or any(r not in UPDATE_RULES for r in rules) or len(set(rules)) != len(rules):
            raise KnowlocError(f"--sweep-rules must be distinct rules from {', '.join(UPDATE_RULES)}, got {rules!r}")
        self.update_sweep_rules = rules
        if self.update_sweep_queries < 1:
            raise KnowlocError(f"--sweep-queries must be >= 1, got {self.update_sweep_queries}")
        for name in ("cas_sweep_beta1", "cas_sweep_beta2", "cas_sweep_thresholds"):
            setattr(self, name, _float_list(getattr(self, name), name))
        if any(b < 0 for b in self.cas_sweep_beta1 + self.cas_sweep_beta2):
            raise KnowlocError("--sweep-beta1 and --sweep-beta2 values must be >= 0")
        if any(not 0 <= t <= 1 for t in self.cas_sweep_thresholds):
            raise KnowlocError("--sweep-thresholds values must be in [0, 1]")
        if self.attention_k < 1:
            raise KnowlocError(f"--attention-k must be >= 1, got {self.attention_k}")
        if self.attention_layers is not None:
            self.layer_range()
        if self.executor not in ("local", "ray"):
            raise KnowlocError(f"--executor must be local or ray, got {self.executor!r}")
        if self.workers < 1 or self.gpus_per_worker < 0:
            raise KnowlocError("--workers must be >= 1 and --gpus-per-worker >= 0")
        if self.locality < 1 or self.n_boot < 10 or self.ppl_texts < 1:
            raise KnowlocError("--locality and --ppl-texts must be >= 1 and --n-boot >= 10")

    def layer_range(self) -> tuple[int, int] | None:
        """(first, last) layer of --attention-layers "a-b", inclusive; None for all layers."""
        if self.attention_layers is None:
            return None
        try:
            first, last = (int(part) for part in str(self.attention_layers).split("-"))
        except ValueError:
            raise KnowlocError(f"--attention-layers must look like 10-20, got {self.attention_layers!r}") from None
        if not 0 <= first <= last:
            raise KnowlocError(f"--attention-layers must satisfy 0 <= first <= last, got {self.attention_layers!r}")
        return first, last

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
        for key in ("models", "methods", "experiments", "relations"):
            if isinstance(raw.get(key), str):
                raw[key] = [part.strip() for part in raw[key].split(",") if part.strip()]
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**raw)
        except TypeError as exc:
            raise KnowlocError(f"config file {path}: {exc}") from None


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


def _float_list(value, name: str) -> list[float]:
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
