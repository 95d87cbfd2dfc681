"""`knowloc study`: load facts -> keep the facts each model knows -> attribute every neighbor query with every
method (stored, never computed twice) -> run the experiments -> write summary.json, tables, figures, Markdown."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from knowloc.errors import KnowlocError
from knowloc.fileio import atomic_write
from knowloc.study.config import StudyConfig
from knowloc.study.context import Section, StudyContext
from knowloc.study.executors import LocalExecutor
from knowloc.study.store import Store
from knowloc.study.units import Unit, attribution_units, experiment_module, experiment_units, reference_units, save


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise KnowlocError(f"--out {out} exists and is not a directory")
    probe = out if out.exists() else out.parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise KnowlocError(f"--out {out} is not writable")


def probe_stage(ctx: StudyContext, model: str, dataset) -> None:
    """Probe every fact once per model and store which paraphrases the model answers."""
    if not ctx.store.has_probe(model):
        from knowloc.data.filtering import probe_facts

        probes = probe_facts(ctx.model(model), list(dataset), candidates=ctx.config.candidates,
                             progress=ctx.config.progress)
        ctx.store.save_probe(model, [{
            "fact_id": p.fact.id, "relation": p.fact.relation, "subject": p.fact.subject, "object": p.fact.object,
            "queries": [{"template": q.query.template, "text": q.query.text, "top1": q.top1, "prob": q.prob}
                        for q in p.queries]} for p in probes])
    ctx.load_facts(model)


def run_units(ctx: StudyContext, executor, units: list[Unit], desc: str) -> None:
    """Run units on the executor; the driver stores each result as it arrives (one transaction per unit)."""
    if not units:
        return
    with tqdm(total=len(units), desc=desc, unit="unit", disable=not ctx.config.progress) as bar:
        for unit, result in executor.map(units):
            save(ctx, unit, result)
            bar.update(1)


def worker_context(config: StudyConfig) -> StudyContext:
    """A read-only view of a study for a parallel worker."""
    out = Path(config.out)
    ctx = StudyContext(config=config, store=Store(out / "results.sqlite", readonly=True), out=out,
                       echo=lambda _: None)
    ctx.refresh()
    return ctx


def make_executor(ctx: StudyContext):
    if ctx.config.executor == "ray":
        from knowloc.study.executors import RayExecutor

        return RayExecutor(ctx, address=ctx.config.ray_address, workers=ctx.config.workers,
                           gpus_per_worker=ctx.config.gpus_per_worker)
    return LocalExecutor(ctx)


def run_study(config: StudyConfig, echo: Callable[[str], None] = print) -> Path:
    from knowloc.data import load_facts

    start = time.perf_counter()
    out = Path(config.out)
    _check_out_dir(out)
    dataset = load_facts(config.data, relations=config.relations)  # bad data fails before anything is written
    created = not out.exists()
    try:
        store = Store(out / "results.sqlite")
        store.check_config(config.identity(), defaults=StudyConfig.defaults())
    except KnowlocError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    ctx = StudyContext(config=config, store=store, out=out, echo=echo)
    executor = None
    try:
        for model in config.models:
            try:
                probe_stage(ctx, model, dataset)
            except KnowlocError:
                if created and model == config.models[0]:  # nothing of value stored yet
                    store.close()
                    shutil.rmtree(out, ignore_errors=True)
                raise
            known = sum(sum(q["top1"] for q in row["queries"]) >= config.min_known for row in ctx.probes[model])
            echo(f"{model}: {known} of {len(ctx.probes[model])} facts known in >= {config.min_known} paraphrases; "
                 f"studying {len(ctx.facts[model])}")
            executor = executor or make_executor(ctx)
            run_units(ctx, executor, reference_units(ctx, model) + attribution_units(ctx, model),
                      f"attribution {model}")
            run_units(ctx, executor, experiment_units(ctx, model), f"experiments {model}")
            for name in config.experiments:
                if hasattr(module := experiment_module(name), "finalize"):
                    module.finalize(ctx, model)
        from knowloc.study import specificity

        sections = [specificity.summarize(ctx)] + [experiment_module(name).summarize(ctx) for name in config.experiments]
        summary_path = write_outputs(ctx, sections, wall_s=time.perf_counter() - start)
    finally:
        if executor is not None:
            executor.close()
        store.close()
    return summary_path


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_outputs(ctx: StudyContext, sections: list[Section], wall_s: float) -> Path:
    cfg = ctx.config
    summary: dict = {"config": cfg.summary_config(), "facts": {m: len(f) for m, f in ctx.facts.items()}}
    markdown = [f"# knowloc study — {', '.join(cfg.models)} on {cfg.data}", "",
                f"Methods {', '.join(cfg.methods)}; steps {cfg.steps}; KN threshold {cfg.threshold} x max; "
                f"seed {cfg.seed}. Facts known in >= {cfg.min_known} paraphrases: "
                + ", ".join(f"{m}: {n}" for m, n in summary["facts"].items()), ""]
    for section in sections:
        summary.update(section.summary)
        for name, rows in section.tables.items():
            if rows:
                atomic_write(ctx.out / "tables" / f"{name}.csv", _csv(rows))
        markdown += section.markdown
        markdown += [f"![{p.stem}](figures/{p.name})" for p in section.figures] + [""]
    text = "\n".join(markdown)
    atomic_write(ctx.out / "summary.md", text)
    path = ctx.out / "summary.json"
    atomic_write(path, json.dumps(summary, indent=2, sort_keys=True, allow_nan=True))
    ctx.echo(text)
    ctx.echo(f"study finished in {wall_s:.0f} s; outputs in {ctx.out}")
    return path
