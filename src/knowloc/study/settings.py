"""The settings the study's own experiments own (the components' are theirs: ``RomeSettings``, ``FtSettings``,
``UpdateSettings`` in :mod:`knowloc.editing.editors`, ``TraceSettings`` in :mod:`knowloc.tracing`,
``CasSettings`` in :mod:`knowloc.analysis.cas`); each validates itself once and carries its defaults.

:class:`knowloc.study.config.StudyConfig` composes them all as sections (module :mod:`knowloc.settings`).
"""

from __future__ import annotations

from dataclasses import dataclass

from knowloc.attention.knockout import default_window
from knowloc.editing.operations import UPDATE_RULES
from knowloc.errors import KnowlocError
from knowloc.settings import chosen, setting
from knowloc.study.layers import GRAMMAR, LayerSpec

LAYER_LIST = f"a layer list: {GRAMMAR}"


def float_list(value, flag: str) -> list[float]:
    """A non-empty list of distinct numbers, from a list or a comma-separated string ("0,0.5,1")."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        raise KnowlocError(f"{flag} must be a comma-separated list of numbers, got {value!r}") from None
    if not numbers or len(set(numbers)) != len(numbers) or any(n != n for n in numbers):
        raise KnowlocError(f"{flag} must be a non-empty list of distinct numbers, got {value!r}")
    return numbers


def str_list(value) -> list[str]:
    """A list of distinct names, in first-seen order, from a list or a comma-separated string; list items may hold
    commas too (``--methods ig --methods ig,amig`` is ig, amig: a name given twice is studied once)."""
    items = [value] if isinstance(value, str) else list(value)
    return list(dict.fromkeys(part.strip() for item in items for part in str(item).split(",") if part.strip()))


def _count(value: object, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KnowlocError(f"{flag} must be an integer >= 1, got {value!r}")
    return value


@dataclass
class AttentionSettings:
    """Knowledge synapses (experiment ``attention``): the top-``k`` attention weights per (layer, head) row,
    manipulated in ``layers`` (None: all), rows rescaled to 1 with ``renormalize``."""

    k: int = setting(3, help="knowledge synapses: top-k attention weights per (layer, head) row")
    layers: str | None = setting(None, help="manipulate knowledge synapses in these layers only, e.g. 10-20 (default: "
                                 f"all); {LAYER_LIST}")
    renormalize: bool = setting(False, help="rescale each manipulated attention row to sum to 1")

    def __post_init__(self) -> None:
        if self.k < 1:
            raise KnowlocError(f"--attention-k must be >= 1, got {self.k}")
        if self.layers is not None:
            spec = LayerSpec.parse(self.layers, "--attention-layers")
            if not isinstance(self.layers, str):  # (a string is kept as given, as before)
                self.layers = spec.text

    def layer_spec(self) -> LayerSpec | None:
        """The layer list (None: all layers)."""
        return None if self.layers is None else LayerSpec.parse(self.layers, "--attention-layers")


@dataclass
class KnockoutSettings:
    """Attention knockout (experiment ``knockout``, Geva et al. 2023): the edges into the last position are blocked
    in a ``window`` of layers centred on each layer (0: a fifth of the model's layers,
    :func:`knowloc.attention.knockout.default_window`)."""

    window: int = setting(0, help="knockout: layers blocked together around each layer (0: a fifth of the model's "
                          "layers, as Geva et al.'s 9 of GPT-2 XL's 48)")

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise KnowlocError(f"--knockout-window must be an integer >= 0, got {self.window!r}")

    def layers(self, n_layers: int) -> int:
        """The window for a model of ``n_layers`` layers."""
        return self.window or default_window(n_layers)


@dataclass
class MassEditingSettings:
    """Many edits (experiment ``mass-editing``): the first ``edits`` studied facts, edited in sequence (and as one
    batch by the editors that write a batch at once), measured after 1, 10, 100, ... and ``edits`` edits."""

    edits: int = setting(20, flat="mass_edits", help="mass-editing: facts edited one after another (and as one batch "
                         "by memit / alphaedit), measured after 1, 10, 100, ... and this many edits")
    generate: int = setting(20, flat="mass_generate", help="mass-editing: tokens of the greedy continuation after "
                            "each edited query (generation hit: it names the new object; generation entropy)")

    def __post_init__(self) -> None:
        _count(self.edits, "--mass-edits")
        _count(self.generate, "--mass-generate")

    def checkpoints(self, n: int) -> list[int]:
        """The numbers of edits measured when ``n`` facts can be edited: 1, 10, 100, ... below ``n``, and ``n``."""
        points, k = [], 1
        while k < n:
            points.append(k)
            k *= 10
        return points + [n] if n else []


@dataclass
class CasSweepSettings:
    """The ``cas-sweep`` grid of beta1, beta2 and t (only beta2 / beta1 and t change the selection)."""

    beta1: list[float] = setting(factory=lambda: [1.0], aliases=("--sweep-beta1",), help="cas-sweep grid of beta1")
    beta2: list[float] = setting(factory=lambda: [0.0, 0.5, 1.0, 2.0], aliases=("--sweep-beta2",),
                                 help="cas-sweep grid of beta2 (only beta2 / beta1 and t change the selection)")
    thresholds: list[float] = setting(factory=lambda: [0.1, 0.2, 0.3, 0.5], aliases=("--sweep-thresholds",),
                                      help="cas-sweep grid of t")

    def __post_init__(self) -> None:
        for name in ("beta1", "beta2", "thresholds"):
            setattr(self, name, float_list(getattr(self, name), f"--sweep-{name}"))
        if any(b < 0 for b in self.beta1 + self.beta2):
            raise KnowlocError("--sweep-beta1 and --sweep-beta2 values must be >= 0")
        if any(not 0 <= t <= 1 for t in self.thresholds):
            raise KnowlocError("--sweep-thresholds values must be in [0, 1]")


@dataclass
class UpdateSweepSettings:
    """The ``update-sweep`` grid: ``rules`` x ``lambda2`` on ``queries`` seeded queries per fact (``tied``:
    lambda1 = lambda2 at every point)."""

    lambda2: list[float] = setting(factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0], aliases=("--sweep-lambda2",),
                                   help="update-sweep grid of lambda2")
    rules: list[str] = setting(factory=lambda: list(UPDATE_RULES), aliases=("--sweep-rules",),
                               help="update-sweep rules")
    queries: int = setting(2, aliases=("--sweep-queries",), help="update-sweep: neighbor queries edited per fact "
                           "(seeded)")
    tied: bool = setting(False, aliases=("--sweep-tied",), help="update-sweep: lambda1 = lambda2 at every grid point "
                         "(the edit is then lambda2 (E(o') - E(o)), with no component along the direction all tokens' "
                         "unembeddings share; docs/editing.md)")

    def __post_init__(self) -> None:
        self.lambda2 = float_list(self.lambda2, "--sweep-lambda2")
        if any(v <= 0 for v in self.lambda2):
            raise KnowlocError("--sweep-lambda2 values must be > 0")
        rules = [r.strip() for r in self.rules.split(",")] if isinstance(self.rules, str) else list(self.rules)
        if not rules or any(r not in UPDATE_RULES for r in rules) or len(set(rules)) != len(rules):
            raise KnowlocError(f"--sweep-rules must be distinct rules from {', '.join(UPDATE_RULES)}, got {rules!r}")
        self.rules = rules
        if self.queries < 1:
            raise KnowlocError(f"--sweep-queries must be >= 1, got {self.queries}")

    def lambda1(self, lambda1: float, lambda2: float) -> float:
        """lambda1 at a grid point: lambda2 itself when tied, else the study's ``lambda1``."""
        return lambda2 if self.tied else lambda1


# the editors localization-vs-editing can run at each layer (ROME, Hase et al.'s main editor, and FT)
LVE_EDITORS = ("rome", "ft")


@dataclass
class LveSettings:
    """``localization-vs-editing``: the first ``facts`` studied facts (seeded order) edited by each of ``editors``
    (some of :data:`LVE_EDITORS`) at every layer of ``layers``."""

    facts: int = setting(20, kind="view", help="localization-vs-editing: facts edited at every --lve-layers layer "
                         "(the first of the studied facts in their seeded order: a larger value adds facts and keeps "
                         "the stored edits)")
    layers: list[str] = setting(factory=lambda: ["every3"], help="localization-vs-editing: the layers each "
                                f"--lve-editors editor edits; {LAYER_LIST}")
    editors: list[str] = setting(factory=lambda: list(LVE_EDITORS), help="localization-vs-editing: the editors "
                                 "that edit at each layer: rome and / or ft")

    def __post_init__(self) -> None:
        _count(self.facts, "--lve-facts")
        self.editors = chosen(self.editors, LVE_EDITORS, "--lve-editors")
        self.layers = list(LayerSpec.parse(str_list(self.layers), "--lve-layers").items)

    def layer_spec(self) -> LayerSpec:
        return LayerSpec.parse(self.layers, "--lve-layers")
