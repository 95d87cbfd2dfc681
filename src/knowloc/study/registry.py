"""The experiment registry: one :class:`Experiment` spec per experiment, registered in one place.

Everything that lists experiments is derived from here: the names `--experiments` accepts and its help text,
the work units, the dry run (which times one real unit of each experiment), the sections and tables of summary.md and report.html. Adding an
experiment is one module that builds an :class:`Experiment` and calls :func:`register` (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from knowloc.study.tables import Table


@dataclass(frozen=True)
class Experiment:
    """One experiment.

    name: the `--experiments` name (also the store's trial key and the report section id).
    question: one line, shown in `knowloc study --help` and the report.
    summarize(ctx) -> Section: pure aggregation from the store into summary.json keys, CSV tables and figures.
    fact_work(ctx, model, method, fact) -> rows: the per-fact work that needs the model, stored per fact (None:
        the experiment only reads stored attributions).
    finalize(ctx, model): optional work once per model after every fact (e.g. examples that need the groups).
    settings: the StudyConfig fields it owns (shown with its section).
    summary_keys: the summary.json keys it writes (the first one marks it as run).
    tables: its results tables (rendered to summary.md and report.html); notes(summary) -> extra sentences.
    figures: file-name prefixes of its figures; heading / intro: its report section.
    always: run in every study (not chosen by `--experiments`).
    """

    name: str
    question: str
    summarize: Callable
    heading: str
    summary_keys: tuple[str, ...]
    fact_work: Callable | None = None
    finalize: Callable | None = None
    settings: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    notes: Callable[[dict], list[str]] | None = None
    figures: tuple[str, ...] = ()
    intro: str = ""
    always: bool = False


REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add an experiment (replacing one of the same name) and return it."""
    if not experiment.summary_keys:
        raise ValueError(f"experiment {experiment.name!r} declares no summary key")
    REGISTRY[experiment.name] = experiment
    return experiment


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The experiments `--experiments` accepts, in registration order."""
    return tuple(name for name, e in REGISTRY.items() if not e.always)


def get(name: str) -> Experiment:
    return REGISTRY[name]


def run_order(chosen: list[str]) -> list[Experiment]:
    """The always-on experiments, then the chosen ones in registration order."""
    return [e for e in REGISTRY.values() if e.always or e.name in chosen]
