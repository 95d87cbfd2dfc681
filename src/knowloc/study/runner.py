"""`knowloc study`: load facts -> keep the facts each model knows -> attribute every neighbor query with every
method (stored, never computed twice) -> run the experiments -> write summary.json, tables, figures, Markdown."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from knowloc.analysis import Neuron
from knowloc.data.filtering import ProbedFact, probe_facts
from knowloc.errors import Interrupted, KnowlocError
from knowloc.fileio import atomic_write
from knowloc.models.neuron import describe_neurons
from knowloc.plots import findings_forest
from knowloc.study.calibration import calibrate_model, described
from knowloc.study.calibration import rows as calibration_rows
from knowloc.study.config import StudyConfig
from knowloc.study.context import Section, StudyContext
from knowloc.study.executors import LocalExecutor, make_executor
from knowloc.study.findings import findings, findings_by_model, scope_note
from knowloc.study.findings import markdown as findings_markdown
from knowloc.study.groups import save_groups
from knowloc.study.registry import Experiment, experiments, run_order
from knowloc.study.store import Store, StudyLock, is_study_dir
from knowloc.study.tables import markdown_table
from knowloc.study.units import Unit, attribution_units, experiment_units, reference_units, save, take_cached

FINDINGS_FIGURE = "findings.png"  # the findings at a glance (a forest plot), which summary.md and the report open with


def check_out_dir(out: Path, force: bool = False) -> None:
    """A study writes only into a new or empty directory or one holding a knowloc study (its marker, or a
    results.sqlite of a study from before the marker); anything else is refused unless ``force``."""
    if out.exists() and not out.is_dir():
        raise KnowlocError(f"--out {out} exists and is not a directory")
    probe = out if out.exists() else out.parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise KnowlocError(f"--out {out} is not writable")
    if out.is_dir() and not force and not is_study_dir(out):
        names = sorted(p.name for p in out.iterdir())
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise KnowlocError(f"--out {out} holds files that are not a knowloc study ({shown}); use a new or empty "
                               "directory, or --force to write into it")


@dataclass
class UnitProgress:
    """The units a study run has planned so far (per model, once it is probed) and those it has stored."""

    planned: int = 0
    stored: int = 0


def _discard(out: Path, created: Path | None, store_created: bool, lock: StudyLock) -> None:
    """Remove what a run that stored nothing made: the directories it made (``created``: the topmost), else its
    store and marker."""
    if created is not None:
        lock.release(remove=True)
        shutil.rmtree(created, ignore_errors=True)
        return
    if store_created:
        for suffix in ("", "-wal", "-shm", "-journal"):
            (out / f"results.sqlite{suffix}").unlink(missing_ok=True)
    lock.release(remove=lock.created)


@dataclass
class _Resources:
    """What :func:`run_study` holds after taking its lock, and its one cleanup (each part registered on its
    ExitStack; run in reverse: :meth:`count_interrupt`, :meth:`close_executor`, :meth:`close_store`, the lock)."""

    out: Path
    created: Path | None  # the topmost directory the run created
    store_created: bool  # whether the run found no results store
    lock: StudyLock
    progress: UnitProgress
    store: Store | None = None  # once opened
    executor: object = None  # once made (after the first model's probe)
    finished: bool = False  # the run wrote its outputs

    def count_interrupt(self, exc_type, exc, tb) -> bool:
        """An interrupt (:class:`~knowloc.errors.Interrupted`) carries the run's (stored, planned) units."""
        if isinstance(exc, Interrupted):
            exc.units = (self.progress.stored, self.progress.planned)
        return False  # the exception goes on

    def close_executor(self) -> None:
        if self.executor is not None:
            self.executor.close()

    def close_store(self) -> None:
        """Close the store. A run that failed before its end and stored nothing (or opened no store) removes what
        it made (:func:`_discard`), so nothing may block the next run (another setting, another model); a damaged
        store is left as it is."""
        empty = False
        if not self.finished:
            try:
                empty = self.store is None or self.store.is_empty()
            except KnowlocError:  # a damaged store: leave it as it is
                empty = False
        if self.store is not None:
            self.store.close()
        if empty:
            _discard(self.out, self.created, self.store_created and self.store is not None, self.lock)


def data_changes(store: Store, dataset) -> list[str]:
    """How the facts differ from those a store probed (added, removed, or with another relation, subject,
    object or templates), as short phrases."""
    new = {fact.id: (fact, [q.template for q in queries]) for fact, queries in dataset}
    changes: list[str] = []
    for model in store.probed_models()[:1]:
        stored = {probe.fact_id: probe for probe in store.probe(model)}
        for fid, probe in stored.items():
            if fid not in new:
                changes.append(f"fact {fid} removed")
                continue
            fact, templates = new[fid]
            for name in ("relation", "subject", "object"):
                if getattr(probe, name) != getattr(fact, name):
                    changes.append(f"fact {fid}: {name} {getattr(probe, name)!r} -> {getattr(fact, name)!r}")
            if [q.template for q in probe.queries] != templates:
                changes.append(f"fact {fid}: templates changed")
        changes += [f"fact {fid} added" for fid in new if fid not in stored]
    return changes


def check_data(store: Store, dataset, out: Path) -> None:
    """Refuse a study directory whose facts differ from the data given now (a study is tied to the content of
    its data, not to the path: the same file under another path spelling is the same study)."""
    stored = store.config_value("data_hash")
    if stored == dataset.content_hash():
        return
    changes = data_changes(store, dataset)
    if stored is None and not changes:
        return  # a new store, or one written before the content hash was recorded, with the same facts
    detail = "; ".join(changes[:3]) + (f" (+{len(changes) - 3} more)" if len(changes) > 3 else "") if changes \
        else "the facts or templates differ"
    raise KnowlocError(f"{out} holds a study of other facts than {dataset.source or 'the data given'}: {detail}; "
                       "use another --out (or the data the study was run on)")


def probe_stage(ctx: StudyContext, model: str, dataset) -> None:
    """Check the experiments' settings against the model, then probe every fact once per model and store which
    paraphrases the model answers."""
    ctx.switch_model(model)
    for experiment in run_order(ctx.config.experiments):
        if experiment.check_model is not None:
            experiment.check_model(ctx.config, ctx.model(model))
    if not ctx.store.has_probe(model):
        probes = probe_facts(ctx.model(model), list(dataset), candidates=ctx.config.candidates,
                             progress=ctx.config.progress)
        ctx.store.save_probe(model, [ProbedFact.from_probe(p) for p in probes])
    ctx.load_facts(model)


def run_units(ctx: StudyContext, executor, units: list[Unit], desc: str,
              progress: UnitProgress | None = None) -> None:
    """Run units on the executor; the driver stores each result as it arrives (one transaction per unit) and
    counts it in ``progress``."""
    if not units:
        return
    with tqdm(total=len(units), desc=desc, unit="unit", disable=not ctx.config.progress) as bar:
        for unit, result in executor.map(units):
            save(ctx, unit, result)
            if progress is not None:
                progress.stored += 1
            bar.update(1)


def prepare_experiments(ctx: StudyContext, model: str, trials: list[Unit]) -> None:
    """Each experiment's ``prepare`` step for a model, in the driver, when some of its fact units are missing."""
    kinds = {unit.kind for unit in trials}
    for experiment in run_order(ctx.config.experiments):
        if experiment.prepare is not None and experiment.name in kinds:
            ctx.switch_model(model)
            experiment.prepare(ctx, model)


def run_study(config: StudyConfig, echo: Callable[[str], None] = print) -> Path:
    """Run (or resume) a study and write its outputs; see the module docstring and docs/study.md.

    Args:
        config: the settings (:class:`knowloc.study.config.StudyConfig`; ``config.out`` is the study directory,
            created if needed; a directory holding another configuration's study is refused).
        echo: where progress lines and the printed summary go.

    Returns:
        The path of ``summary.json``. The directory also gets ``results.sqlite`` (every stored unit),
        ``tables/*.csv``, ``figures/*.png`` and ``summary.md``; ``knowloc study`` then writes ``report.html``.

    Raises:
        KnowlocError: bad data, an unusable directory (a file, unwritable, holding files but no study without
            ``config.force``, a damaged results store), a directory another process is running a study in (its
            lock, :class:`~knowloc.study.store.StudyLock`), a conflicting stored configuration or a failed write
            (one line; nothing half-written is left).
        Interrupted: SIGINT / SIGTERM (the CLI's handlers); its ``units`` are (stored, planned) of this run. The
            transaction in flight is rolled back and no summary is written; a rerun resumes.

    A run that stores nothing (a bad model, an interrupt during the probe) removes what it made, so nothing
    blocks the next run; the Ray executor is shut down on every way out.

    Example:
        >>> run_study(StudyConfig(models=["smollm2-135m"], data="builtin", facts=10, out="runs/s1"))
        PosixPath('runs/s1/summary.json')
    """
    start = time.perf_counter()
    out = Path(config.out)
    check_out_dir(out, force=config.force)
    config.require_models()
    dataset = config.dataset()  # bad data fails before anything is written
    created = None if out.exists() else out  # the topmost directory this run creates (removed if it stores nothing)
    while created is not None and not created.parent.exists():
        created = created.parent
    store_created = not (out / "results.sqlite").exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KnowlocError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    lock = StudyLock(out).acquire()  # refuses a second process; released when this one ends, however it ends
    progress = UnitProgress()
    held = _Resources(out, created, store_created, lock, progress)
    with ExitStack() as cleanup:  # one cleanup, on success, failure and interrupt alike, last registered first:
        cleanup.callback(lock.release)  # 4. the lock
        cleanup.callback(held.close_store)  # 3. the store (after a failure, an empty one is discarded)
        cleanup.callback(held.close_executor)  # 2. the executor (a Ray one is shut down)
        cleanup.push(held.count_interrupt)  # 1. an interrupt carries (stored, planned)
        store = held.store = Store(out / "results.sqlite")
        check_data(store, dataset, out)
        store.check_config({**config.identity(), "data_hash": dataset.content_hash()},
                           defaults=StudyConfig.defaults())  # recorded with the first stored unit
        ctx = StudyContext(config=config, store=store, out=out, echo=echo)
        for model in config.models:
            probe_stage(ctx, model, dataset)
            known = sum(probe.known(config.min_known) for probe in ctx.probes[model])
            echo(f"{model}: {known} of {len(ctx.probes[model])} facts known in >= {config.min_known} paraphrases; "
                 f"studying {len(ctx.facts[model])}")
            cached, attributions = take_cached(ctx, reference_units(ctx, model) + attribution_units(ctx, model))
            trials = experiment_units(ctx, model)  # the facts' trials still missing (attributions don't change it)
            progress.planned += len(cached) + len(attributions) + len(trials)
            if cached:
                where = f" ({ctx.attribution_cache.directory})" if ctx.attribution_cache is not None else ""
                echo(f"{model}: {len(cached)} attributions read from the attribution cache{where} or the shipped "
                     "reference (not computed)")
                run_units(ctx, LocalExecutor(ctx), cached, f"cached attribution {model}", progress)
            executor = held.executor = held.executor or make_executor(ctx)
            run_units(ctx, executor, attributions, f"attribution {model}", progress)
            calibrate_model(ctx, model)
            prepare_experiments(ctx, model, trials)
            run_units(ctx, executor, trials, f"experiments {model}", progress)
            for experiment in run_order(config.experiments):
                if experiment.finalize is not None:
                    experiment.finalize(ctx, model)
        save_groups(ctx)
        sections = [(experiment, experiment.summarize(ctx)) for experiment in run_order(config.experiments)]
        describe_used_neurons(ctx, sections)
        summary_path = write_outputs(ctx, sections, wall_s=time.perf_counter() - start)
        held.finished = True
    return summary_path


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def strict_json(value):
    """A copy with every nan / ±inf float (and numpy scalar) replaced so that the result is strict JSON: nan and
    inf become null (JavaScript's JSON.parse rejects NaN and Infinity tokens)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def section_markdown(experiment: Experiment, summary: dict) -> list[str]:
    """An experiment's part of summary.md: heading, intro, its tables and notes (from its spec)."""
    lines = [f"## {experiment.heading}", "", experiment.intro, ""] if experiment.intro else [
        f"## {experiment.heading}", ""]
    for table in experiment.tables:
        lines += markdown_table(table, summary.get(table.key, []))
    if experiment.notes is not None:
        lines += [*experiment.notes(summary), ""]
    return lines


def describe_used_neurons(ctx: StudyContext, sections: list[tuple[Experiment, Section]], k: int = 8) -> None:
    """Store what every neuron of the studied facts' KN lists (as the experiments used them) and of the
    experiments' figures (their ``shown_neurons`` rows) writes to the vocabulary (knowloc.models.neuron), for the
    report; each neuron once."""
    shown = [row for experiment, section in sections if experiment.shown_neurons
             for row in section.summary.get(experiment.shown_neurons, [])]
    for model in ctx.config.models:
        wanted: set[Neuron] = set()
        for method in ctx.config.methods:
            for row in ctx.store.groups(model, method).values():
                for kn in row["kn"].values():
                    wanted.update(kn)
        wanted.update((r["layer"], r["index"]) for r in shown if r["model"] == model)
        missing = sorted(wanted - ctx.store.described_neurons(model))
        if missing:
            ctx.switch_model(model)
            ctx.store.save_neuron_descriptions(model, describe_neurons(ctx.model(model), missing, k=k))


def _check_section(experiment: Experiment, section: Section) -> None:
    """An experiment's Section holds exactly the summary keys its spec declares (CSV overrides among them)."""
    keys, declared = set(section.summary), set(experiment.summary_keys)
    if keys != declared or not set(section.csv) <= declared:
        raise KnowlocError(f"experiment {experiment.name!r} returned summary keys {sorted(keys | set(section.csv))}, "
                           f"declared {sorted(declared)}")


def write_outputs(ctx: StudyContext, sections: list[tuple[Experiment, Section]], wall_s: float) -> Path:
    """Write summary.json (each experiment's keys, its figures under ``figures`` and the findings' forest plot under
    ``figures.findings``, which summary.md opens with, the filter state under
    ``specificity_filter``, the calibrated editor settings under ``calibration``, the findings and, for 2+ models, ``findings_by_model``), one CSV per summary key and
    summary.md."""
    cfg = ctx.config
    summary: dict = {"config": cfg.summary_config(), "facts": {m: len(f) for m, f in ctx.facts.items()},
                     "specificity_filter": "on" if cfg.filtered else "off", "figures": {},
                     "calibration": calibration_rows(ctx)}
    markdown = [f"# knowloc study — {', '.join(cfg.models)} on {cfg.data}", "",
                f"Methods {', '.join(cfg.methods)}; steps {cfg.steps}; KN threshold {cfg.threshold} x max; "
                f"seed {cfg.seed}. Facts known in >= {cfg.min_known} paraphrases: "
                + ", ".join(f"{m}: {n}" for m, n in summary["facts"].items()), "",
                *described(summary["calibration"])]
    body: list[str] = []
    for experiment, section in sections:
        _check_section(experiment, section)
        summary.update(section.summary)
        summary["figures"][experiment.name] = [p.name for p in section.figures]
        for key, rows in section.summary.items():
            rows = section.csv.get(key, rows)
            if rows:
                atomic_write(ctx.out / "tables" / f"{key}.csv", _csv(rows))
        body += section_markdown(experiment, section.summary)
        body += [f"![{p.stem}](figures/{p.name})" for p in section.figures] + [""]
    judged = strict_json(summary)  # the findings read the summary as summary.json will hold it
    summary["findings"] = findings(judged, experiments())
    by_model = findings_by_model(judged, experiments())  # None for a single-model study
    if by_model is not None:
        summary["findings_by_model"] = by_model
    glance = findings_forest(strict_json(summary["findings"]), ctx.figures_dir / FINDINGS_FIGURE)
    summary["figures"]["findings"] = [glance.name]
    opening = [f"![findings at a glance](figures/{glance.name})", ""]
    scope = scope_note(cfg.models, cfg.data, cfg.methods, cfg.experiments)
    if scope is not None:
        opening += [f"{scope[0]} `{scope[1]}`", ""]
    text = "\n".join(markdown + opening + findings_markdown(summary["findings"], by_model) + body)
    atomic_write(ctx.out / "summary.md", text)
    path = ctx.out / "summary.json"
    atomic_write(path, json.dumps(strict_json(summary), indent=2, sort_keys=True, allow_nan=False))
    ctx.echo(text)
    ctx.echo(f"study finished in {wall_s:.0f} s; outputs in {ctx.out}")
    return path
