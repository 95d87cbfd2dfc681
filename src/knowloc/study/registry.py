"""The experiment registry: one :class:`Experiment` spec per experiment, the single source of what it adds.

Everything that lists experiments is derived from here: the names `--experiments` accepts and its help text,
the validation of their settings, the work units, the dry run (which times one real unit of each experiment),
the sections and tables of summary.md and report.html, the CSV files, the figures of each section and the
findings. The built-in experiments are one module each and one entry of the ordered list in
:mod:`knowloc.study.experiments` (its order is the report's); a plug-in calls :func:`register` (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from knowloc.analysis import Estimate
from knowloc.study.tables import Table


class Part(tuple):
    """(text, (verdict, reason)) of one comparison of a finding (:mod:`knowloc.study.findings`), a 2-tuple that
    may carry the :class:`~knowloc.analysis.Estimate` its verdict read (``estimate``) and a short label of the
    comparison (``label``: its method, group, baseline), shown per model in the findings table; a (verdict,
    reason) from :func:`~knowloc.study.findings.verdict` also carries the lines its rule drew (the findings
    figure's thresholds). A judge may also return plain 2-tuples (text, (verdict, reason)): they carry no estimate."""

    estimate: Estimate | None
    label: str

    def __new__(cls, text: str, decided: tuple[str, str], estimate: Estimate | None = None, label: str = ""):
        part = super().__new__(cls, (text, decided))
        part.estimate, part.label = estimate, label
        return part

    def __getnewargs__(self):  # type: ignore[override]  # pickling: rebuilt with its estimate and label
        return (self[0], self[1], self.estimate, self.label)


@dataclass(frozen=True)
class Finding:
    """One question of the paper, answered from a study's summary (:mod:`knowloc.study.findings`).

    id: stable identifier (summary.json ``findings[].id``; never reused for another question).
    question: the question, one line. claim: the paper's answer to it.
    rule: when the data support or contradict the claim (one sentence; docs/study.md lists them).
    judge(summary) -> [Part] | None: one (text, (verdict, reason)) per comparison (model x method x group),
        from summary.json's content, a :class:`Part` carrying its Estimate where there is one (judge_rows'
        parts do) or a plain 2-tuple; None when the experiment ran but measured nothing for this question.
        The findings call it once on the whole summary and once per model on that model's rows only.
    """

    id: str
    question: str
    claim: str
    rule: str
    judge: Callable[[dict], list[Part] | None]


@dataclass(frozen=True)
class Experiment:
    """One experiment.

    name: the `--experiments` name (also the store's trial key and the report section id).
    question: one line, shown in `knowloc study --help` and the report.
    summarize(ctx) -> Section: pure aggregation from the store into its summary.json keys (each also written as
        ``tables/<key>.csv``) and figures (recorded under its name in summary.json ``figures``).
    summary_keys: the summary.json keys its Section holds (any of them marks it as run); the runner refuses a
        Section with other keys, and :func:`register` tables of other keys.
    fact_work(ctx, model, method, fact) -> rows: the per-fact work that needs the model, stored per fact (None:
        the experiment only reads stored attributions).
    check_model(config, lm): optional check of its settings against a loaded model (e.g. a layer out of range),
        before the model is probed; raises KnowlocError with one line, so a bad setting writes nothing.
    prepare(ctx, model): optional work once per model in the driver before the facts' units run, when some are
        missing (e.g. statistics every unit reads, computed once and stored: the editors experiment's ROME C).
    works(ctx, model, method, fact_id) -> bool: optional, whether a fact unit does the work at all (tracing and
        localization-vs-editing work in the unit of the study's first method only, the latter on a subset of facts);
        a unit that does none is neither run nor stored, so a later setting under which it works (a larger
        --lve-facts) runs it. ``per_query``: whether that work grows with the fact's number of queries; the dry
        run's plan counts only the working units, scaled by query count when ``per_query``.
    finalize(ctx, model): optional work once per model after every fact (e.g. examples that need the groups).
    validate(config): optional check of the settings it owns; raises KnowlocError with one line and changes
        nothing. Runs for every registered experiment whenever a StudyConfig is made.
    requires: the experiments whose stored results it reads (localization-vs-editing reads tracing's maps): a
        study that chooses it runs them too (:func:`with_requirements`; the config's experiment list names them).
    shown_neurons: optional, the summary key whose rows ({model, layer, index, group, ...; "figure" and "fact"
        where the figure's name is not ``kn_heatmap_<group>`` and the fact not ``fact_id``}) list the neurons its
        figures show: the study describes them and the report lists what they write.
    tables: its results tables (rendered to summary.md and report.html); notes(summary) -> extra sentences.
    findings: the questions of the paper it answers, in the report's order.
    heading / intro: its report section. always: run in every study (not chosen by `--experiments`).
    """

    name: str
    question: str
    summarize: Callable
    heading: str
    summary_keys: tuple[str, ...]
    fact_work: Callable | None = None
    check_model: Callable | None = None
    prepare: Callable | None = None
    works: Callable | None = None
    per_query: bool = True
    finalize: Callable | None = None
    validate: Callable | None = None
    requires: tuple[str, ...] = ()
    shown_neurons: str | None = None
    tables: tuple[Table, ...] = ()
    notes: Callable[[dict], list[str]] | None = None
    findings: tuple[Finding, ...] = ()
    intro: str = ""
    always: bool = False

    def ran(self, summary: dict) -> bool:
        """Whether a study summary holds this experiment's results (any of its keys)."""
        return any(key in summary for key in self.summary_keys)


REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add an experiment (replacing one of the same name) and return it; refuses a spec whose tables show keys
    it does not declare, or whose finding ids another experiment uses."""
    if not experiment.summary_keys:
        raise ValueError(f"experiment {experiment.name!r} declares no summary key")
    undeclared = sorted(({t.key for t in experiment.tables} | ({experiment.shown_neurons} - {None}))
                        - set(experiment.summary_keys))
    if undeclared:
        raise ValueError(f"experiment {experiment.name!r}: tables of undeclared summary keys {', '.join(undeclared)}")
    ids = [f.id for f in experiment.findings]
    taken = {f.id for e in REGISTRY.values() if e.name != experiment.name for f in e.findings}
    if len(set(ids)) != len(ids) or taken & set(ids):
        raise ValueError(f"experiment {experiment.name!r}: finding ids must be unique, got {ids}")
    REGISTRY[experiment.name] = experiment
    return experiment


def register_all(experiments: Iterable[Experiment]) -> None:
    """Register experiments in the given order (the built-in list of knowloc.study.experiments)."""
    for experiment in experiments:
        register(experiment)


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The experiments `--experiments` accepts, in registration order."""
    return tuple(name for name, e in REGISTRY.items() if not e.always)


def experiments() -> tuple[Experiment, ...]:
    """Every registered experiment, in registration order (the report's)."""
    return tuple(REGISTRY.values())


def get(name: str) -> Experiment:
    return REGISTRY[name]


def with_requirements(chosen: list[str]) -> list[str]:
    """The chosen experiments, then (appended in the order they are first required) the ones they require that
    were not chosen, and theirs in turn.

    Example:
        >>> with_requirements(["consistency", "localization-vs-editing"])
        ['consistency', 'localization-vs-editing', 'tracing']
    """
    out = list(chosen)
    for name in out:  # grows while it runs: requirements of requirements
        experiment = REGISTRY.get(name)
        for needed in experiment.requires if experiment is not None else ():
            if needed not in REGISTRY:
                raise ValueError(f"experiment {name!r} requires {needed!r}, which is not registered")
            if needed not in out:
                out.append(needed)
    return out


def run_order(chosen: list[str]) -> list[Experiment]:
    """The always-on experiments, then the chosen ones and those they require, in registration order."""
    wanted = set(with_requirements(chosen))
    return [e for e in REGISTRY.values() if e.always or e.name in wanted]
