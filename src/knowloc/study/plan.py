"""`knowloc study --dry-run`: what a study would do and how long it would take, without writing anything.

The dry run works on a temporary copy of the study's store (or an empty one), so it reuses whatever the real run
would reuse: the stored probe (no probing when the model was probed before) and the stored attributions, reference
attributions and trials. It counts the units still missing at each stage and times real units on this machine: one
reference attribution and one query attribution per method, and every experiment's unit (its `fact_work`) on
TIMED_FACTS facts (:func:`timing_sample`: the one with the median number of neighbor queries and a seeded sample of
the others, whose attributions are then in the temporary store). The estimate is the missing units times these
times, an experiment's fact unit at a fixed part plus a part per query fitted to the timed facts (:func:`unit_cost`:
update-sweep and the editors edit `--sweep-queries` queries of a fact whatever its number). Units are timed as a
worker runs them after its first: the first attribution of the process runs untimed (it pays one-off costs:
SmolLM2's first IG attribution took 4.3 s against 2.4 s after it), and the method's specificity profile, which a
worker derives once, is derived before the experiments are timed.

The wall time (:func:`wall_estimate`) is the driver's own work (model load and probe, ft's calibration, the
experiments' preparation) plus the units' CPU seconds; with `--executor ray --workers N` the units are divided by N
and made SIDE_BY_SIDE times longer (measured: a 116-fact study's units against the same units alone), and Ray's
start and the workers' model loads are added. The copy is deleted at the end; `--out` is never touched.

When the study has no reference attributions yet (computing them all would cost as much as the real run), the
timed experiment unit uses an approximate specificity profile of the first method: PROFILE_NEUTRAL neutral
prompts and one reference query of each other relation, a neuron counting as non-specific when it is a KN of
more than max(--specificity, 1 / PROFILE_NEUTRAL) of the neutral prompts or of the queries. The filter
matters for the cost: unfiltered neuron sets usually include a layer-0 neuron, and an edit re-runs every
block from its lowest edited layer, so timing an unfiltered unit overestimated the demo's editing experiments
about twofold.
"""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.optimize import nnls

from knowloc.attribution.disk_cache import AttributionCache
from knowloc.attribution.engine.memory import default_max_rows
from knowloc.study.calibration import calibrate_model, needed
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext
from knowloc.study.registry import run_order
from knowloc.study.runner import probe_stage
from knowloc.study.store import Store
from knowloc.study.units import (Unit, attribution_units, execute, experiment_units, reference_units, save,
                                take_cached)

GiB = 2**30
ENGINE_BUDGET_GB = 4.0  # the attribution engine's default batch budget (knowloc.attribution.api.attribute)
PROFILE_NEUTRAL = 4  # neutral prompts of the dry run's approximate specificity profile
PROFILE_QUERIES = 6  # reference queries (one per reference relation) of the same
RAY_START_S = 10.0  # an allowance for Ray's start and the creation of its actors (seconds on a 2-core machine)
TIMED_FACTS = 3  # facts whose experiment units the dry run times (timing_sample)
SIDE_BY_SIDE = 1.1  # a Ray worker's unit against the same unit timed alone (docs/performance.md, issue 35)


def _approximate_profile(ctx: StudyContext, model: str, method: str, relation: str, missing: list[Unit]) -> float:
    """Attribute up to PROFILE_NEUTRAL neutral prompts and one reference query of up to PROFILE_QUERIES reference
    relations that count for ``relation`` into the (temporary) store; return the threshold max(--specificity,
    1 / neutral prompts): a neuron is then non-specific when it is a KN of more than that share of the neutral
    prompts or of the queries (two of four neutral prompts; two of six queries)."""
    items = ctx.neurons.reference_items(model)
    stored = ctx.store.reference(model, method)
    own = ctx.neurons.excluded_reference(model, relation)
    n_neutral = sum(r["relation"] is None for r in stored)
    relations = {r["relation"] for r in stored if r["relation"] is not None and r["relation"] not in own}
    for unit in missing:
        other = items[unit.qidx]["relation"]
        if other is None and n_neutral < PROFILE_NEUTRAL:
            n_neutral += 1
        elif other is not None and other not in own and other not in relations \
                and len(relations) < PROFILE_QUERIES:
            relations.add(other)
        else:
            continue
        save(ctx, unit, execute(ctx, unit))
    return max(float(ctx.config.specificity), 1 / max(n_neutral, 1))


def memory_needs(n_params: int, param_bytes: int, d_model: int, n_neurons: int, rome_layers: int,
                 ft: bool, engine_bytes: float = ENGINE_BUDGET_GB * GiB) -> dict[str, float]:
    """What a study holds at its peak, in bytes (an estimate; pure).

    * device: ``weights = n_params x param_bytes``; the attribution engine's batches (``engine_bytes``: its
      staircase rows times their activations, at most its budget); FT+L / kn-ft's working set on one layer's MLP output projection, fp32 weight change, gradient
      and Adam's two moments: ``4 x 4 x d_model x n_neurons``.
    * host: ROME's ``C = E[k k^T]`` in float64, ``8 x n_neurons^2`` per edited layer, every layer a study edits
      computed in one pass and kept (:class:`~knowloc.editing.editors.covariance.CovarianceStore`).

    Args:
        n_params, param_bytes: the model's parameters and bytes per parameter (2 in bf16); d_model, n_neurons:
            the MLP output projection's shape; rome_layers: layers ROME edits (0 without ROME); ft: ft or kn-ft
            runs; engine_bytes: the attribution engine's largest batch.

    Returns:
        ``{"weights", "engine", "ft", "device", "rome_c", "host"}`` in bytes.

    Example:
        >>> needs = memory_needs(8_030_261_248, 2, 4096, 14336, rome_layers=1, ft=True)
        >>> round(needs["weights"] / 2**30, 1), round(needs["rome_c"] / 2**30, 2)
        (15.0, 1.53)
    """
    weights = float(n_params * param_bytes)
    engine = float(engine_bytes)
    ft_bytes = 16.0 * d_model * n_neurons if ft else 0.0
    rome_c = 8.0 * n_neurons ** 2 * rome_layers
    return {"weights": weights, "engine": engine, "ft": ft_bytes, "device": weights + engine + ft_bytes,
            "rome_c": rome_c, "host": rome_c}


def _free_bytes(device: torch.device) -> float | None:
    """Free memory of a cuda device, or the host's available memory for the CPU (None where unknown)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return None


def _size(n_bytes: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} B"


def memory_lines(lm, config: StudyConfig) -> tuple[list[str], dict[str, float]]:
    """The dry run's memory lines for one loaded model and :func:`memory_needs` with the study's settings."""
    rome_layers: set[int] = set()  # the layers whose C rome keeps (LayerSpec.resolve: a bad layer is one line)
    if "editors" in config.experiments and "rome" in config.editors:
        rome_layers |= set(config.layers("edit_layer").resolve(lm.n_layers))
    lve = "localization-vs-editing" in config.experiments
    if lve and "rome" in config.lve.editors:
        rome_layers |= set(config.layers("lve_layers").resolve(lm.n_layers))
    ft = ("editors" in config.experiments and bool({"ft", "kn-ft"} & set(config.editors))) \
        or (lve and "ft" in config.lve.editors)
    n_params = sum(p.numel() for p in lm.model.parameters())  # parameters() yields tied embeddings once
    weight = lm.mlp_out(0).weight
    d_model = weight.shape[1] if lm.arch.value_layout == "row" else weight.shape[0]
    # the engine's largest chunk for a one-token target: steps x layers staircase rows, at most its budget
    per_budget = default_max_rows(lm, 1, ENGINE_BUDGET_GB)
    engine = ENGINE_BUDGET_GB * GiB * min(config.steps * lm.n_layers, per_budget) / per_budget
    needs = memory_needs(n_params, lm.dtype.itemsize, d_model, lm.n_neurons, len(rome_layers), ft, engine)
    free = _free_bytes(lm.device)
    lines = [f"  memory on {lm.device}: ~{_size(needs['device'])} at the peak (weights {_size(needs['weights'])}, "
             f"{n_params:,} parameters in {str(lm.dtype).split('.')[-1]}; attribution batches "
             f"~{_size(needs['engine'])}" + (f"; ft's working set {_size(needs['ft'])}" if needs["ft"] else "") + ")"
             + (f"; {_size(free)} free" if free is not None else "")]
    if needs["rome_c"]:
        lines.append(f"  host memory: ROME's C {_size(needs['rome_c'])} (float64, {len(rome_layers)} "
                     f"layer{'s' if len(rome_layers) != 1 else ''} x {_size(8 * lm.n_neurons ** 2)}), "
                     f"computed once per layer and stored on disk")
    if free is not None and lm.device.type == "cuda" and needs["device"] > free + needs["weights"]:
        lines.append("  warning: the peak is above this device's free memory (the weights already loaded)")
    return lines, needs


def timing_sample(facts: list, n: int, seed: int, size: Callable = lambda f: len(f.prompts),
                  relation: Callable = lambda f: f.relation) -> list:
    """The facts whose experiment units the dry run times (pure): the one with the median number of queries,
    then a seeded sample of the others, one of each other relation first, ``n`` in all (all facts when there are
    fewer). An editing unit's cost depends on the lowest layer its neuron sets reach (an edit re-runs every block
    from there): a fact with a layer-0 KN took 24-35 s for its cas unit where one without took 2-4 s, so one fact
    times a study badly.

    Example:
        >>> timing_sample(["a", "bb", "ccc"], 1, seed=0, size=len, relation=len)
        ['bb']
    """
    first = sorted(facts, key=size)[(len(facts) - 1) // 2]
    others = [f for f in facts if f is not first]
    random.Random(seed).shuffle(others)
    # one fact of each other relation first (the relations' KN layers differ), then any
    seen = {relation(first)}
    spread = [f for f in others if relation(f) not in seen and not seen.add(relation(f))]
    rest = [f for f in others if f not in spread]
    return [first, *(spread + rest)[: max(0, n - 1)]]


def unit_cost(sizes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """An experiment unit's cost model from the timed facts (pure): ``seconds ~ fixed + per_query x queries``,
    fitted by non-negative least squares (scipy.optimize.nnls), so that work that does not grow with the fact's
    queries (update-sweep and the editors edit ``--sweep-queries`` of them) is not charged per query. Where the
    unconstrained fit would be negative the fit is the nearer bound: through the origin (proportional to the
    queries) or flat (the mean). Timed facts that all have the same number of queries cannot
    tell the parts apart: the cost is then proportional to the queries.

    Returns:
        (fixed seconds per unit, seconds per query).

    Example:
        >>> [round(x, 6) for x in unit_cost([4, 8, 12], [5.0, 6.0, 7.0])]
        [4.0, 0.25]
        >>> unit_cost([6, 6], [3.0, 5.0])
        (0.0, 0.6666666666666666)
    """
    n = np.asarray(sizes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    if len(n) != len(t) or not len(n) or (n <= 0).any():
        raise ValueError("unit_cost needs one positive query count per timed second")
    if np.ptp(n) == 0:
        return 0.0, float(t.sum() / n.sum())
    (fixed, per_query), _ = nnls(np.stack([np.ones_like(n), n], axis=1), t)
    return float(fixed), float(per_query)


def _timed(ctx: StudyContext, unit: Unit) -> float:
    start = time.perf_counter()
    save(ctx, unit, execute(ctx, unit))
    return time.perf_counter() - start


class _threads:
    """Time units with the threads one worker will have (1 for a Ray worker; torch's default otherwise)."""

    def __init__(self, config: StudyConfig):
        self.n = 1 if config.executor == "ray" else None

    def __enter__(self):
        self.saved = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def wall_estimate(serial: float, units: float, workers: int, slowdown: float = 1.0, loads: float = 0.0) -> float:
    """A study's wall time from the dry run's timings (pure): the driver's own work (model load, probe,
    calibration, preparation) in sequence, plus the units' CPU seconds spread over the workers and made
    ``slowdown`` times longer than alone (SIDE_BY_SIDE for a Ray study: the driver's writes and Ray's transfers
    share the cores), plus with Ray its start and the workers' model loads (``loads``: the slowest model load, as
    the workers load at once).

    ``wall = serial + units x slowdown / workers (+ RAY_START_S + loads with workers > 1 and units to run)``

    Example:
        >>> wall_estimate(30.0, 1000.0, 2, slowdown=1.2, loads=5.0) == 30 + 600 + RAY_START_S + 5
        True
    """
    if workers <= 1 or not units:
        return serial + units
    return serial + units * slowdown / workers + RAY_START_S + loads


def print_plan(config: StudyConfig, echo: Callable[[str], None] = print, every_fact_known: bool = False) -> dict:
    """Print the plan and the estimated time (see the module docstring); writes nothing.

    ``every_fact_known`` (a benchmark switch, never a study setting: `knowloc bench study`): after the probe,
    every query counts as answered, so that a random-init model of a paper's shape, which knows no fact, is timed
    on the facts a trained one would study.

    Returns:
        ``{"estimated_s": CPU seconds of the missing work, "wall_s": :func:`wall_estimate`, "serial_s" / "units_s":
        the driver's part and the units' part of estimated_s, "units": {...},
        "memory": {model: memory_needs(...) in bytes}}``.
    """
    start_all = time.perf_counter()
    config.require_models()
    dataset = config.dataset()
    echo(f"plan: {len(dataset)} facts ({len(dataset.queries)} quer{'y' if len(dataset.queries) == 1 else 'ies'}) from {config.data}, relations "
         f"{', '.join(dataset.relations)}; methods {', '.join(config.methods)}; experiments "
         f"{', '.join(config.experiments)}; out {Path(config.out)}")
    # serial: the driver's own work (model load and probe, calibration, prepare); units: the executor's, spread
    # over the workers; loads: the slowest model load (each worker loads its models once)
    serial, units_total, loads, units_count, memory_needed = 0.0, 0.0, 0.0, {}, {}
    workers = config.workers if config.executor == "ray" else 1
    warm = False  # the first unit a process runs pays one-off costs: time units after one untimed unit
    with tempfile.TemporaryDirectory(prefix="knowloc-plan-") as tmp, _threads(config):
        stored = Path(config.out) / "results.sqlite"
        if stored.is_file():
            source = sqlite3.connect(f"file:{stored}?mode=ro", uri=True)
            target = sqlite3.connect(Path(tmp) / "results.sqlite")
            source.backup(target)  # a consistent copy, WAL included
            source.close()
            target.close()
        # units are timed without the cache (a hit would time a read); the cache is only looked up
        directory = config.attribution_cache_dir()
        cache = AttributionCache(directory) if directory is not None else None
        cfg = replace(config, out=tmp, progress=False, attribution_cache="off")
        ctx = StudyContext(config=cfg, store=Store(Path(tmp) / "results.sqlite"), out=Path(tmp), echo=lambda _: None)
        try:
            for model in cfg.models:
                start = time.perf_counter()
                was_probed = ctx.store.has_probe(model)
                ctx.models.get(model)
                load_s = time.perf_counter() - start
                loads = max(loads, load_s)
                probe_stage(ctx, model, dataset)
                if every_fact_known:
                    ctx.store.save_probe(model, [replace(fact, queries=tuple(replace(q, top1=True) for q in fact.queries))
                                                 for fact in ctx.store.probe(model)])
                    ctx.load_facts(model)
                probe_s = time.perf_counter() - start
                facts = ctx.facts[model]
                memory, memory_needed[model] = memory_lines(ctx.models.get(model), cfg)
                lines = [f"{model}: {len(facts)} facts studied; "
                         + ("probe stored" if was_probed else f"probe and model load {probe_s:.0f} s"), *memory]
                if not was_probed:
                    serial += probe_s
                estimate = driver = 0.0  # the executor's units; the driver's own work
                ref_cached, references = take_cached(ctx, reference_units(ctx, model), cache)
                attr_cached, attributions = take_cached(ctx, attribution_units(ctx, model), cache)
                for kind, pending, cached in (("reference attributions", references, ref_cached),
                                              ("attributions", attributions, attr_cached)):
                    for method in cfg.methods:
                        mine = [u for u in pending if u.method == method]
                        hits = sum(u.method == method for u in cached)
                        from_cache = (f" ({hits} more from the attribution cache or the shipped reference)"
                                      if hits else "")
                        if not mine:
                            if hits:
                                lines.append(f"  {kind} {method}: 0 to compute{from_cache}")
                            continue
                        if not warm and len(mine) > 1:
                            save(ctx, mine[0], execute(ctx, mine[0]))
                        per_unit = _timed(ctx, mine[1] if len(mine) > 1 else mine[0])
                        warm = True
                        estimate += per_unit * len(mine)
                        lines.append(f"  {kind} {method}: {len(mine)} missing x {per_unit:.1f} s = "
                                     f"{per_unit * len(mine):.0f} s{from_cache}")
                units_count[model] = {"reference": len(references), "attribution": len(attributions),
                                      "cached": len(ref_cached) + len(attr_cached)}
                if ref_cached or attr_cached:  # read into the temporary store, as the run will (no compute)
                    lookup = StudyContext(config=replace(cfg, attribution_cache=config.attribution_cache),
                                          store=ctx.store, out=ctx.out, echo=lambda _: None, models=ctx.models)
                    lookup.load_facts(model)
                    for unit in ref_cached + attr_cached:
                        save(ctx, unit, execute(lookup, unit))
                pending = experiment_units(ctx, model)
                if pending and facts:
                    # time a seeded sample of facts (the one with the median number of queries first); an
                    # experiment's unit costs a fixed part plus a part per query, fitted to them (unit_cost)
                    sample = timing_sample(facts, TIMED_FACTS, cfg.seed)
                    sizes = {f.fact_id: len(f.prompts) for f in facts}
                    # the timed facts need their attributions in the temporary store
                    chosen = {f.fact_id for f in sample}
                    for unit in attribution_units(ctx, model):
                        if unit.fact_id in chosen:
                            save(ctx, unit, execute(ctx, unit))
                    timing_ctx = ctx
                    missing = [u for u in reference_units(ctx, model) if u.method == cfg.methods[0]]
                    if cfg.filtered and missing:
                        # an approximate profile, so that the timed units edit filtered neuron sets as the real
                        # run will (see the module docstring)
                        approx = 0.0
                        for relation in dict.fromkeys(f.relation for f in sample):
                            approx = _approximate_profile(ctx, model, cfg.methods[0], relation, missing)
                        timing_ctx = StudyContext(config=replace(cfg, specificity=approx), store=ctx.store,
                                                  out=ctx.out, echo=lambda _: None, models=ctx.models)
                        timing_ctx.load_facts(model)
                    if needed(cfg):
                        begin = time.perf_counter()
                        calibrate_model(timing_ctx, model)
                        calibrated_s = time.perf_counter() - begin
                        driver += calibrated_s
                        lines.append(f"  ft's bound calibrated once per model in {calibrated_s:.1f} s")
                    # a worker derives a method's specificity profile once (NeuronSets caches it): not per unit
                    for f in sample:
                        timing_ctx.neurons.kn_lists(model, cfg.methods[0], f.fact_id)
                    for experiment in run_order(cfg.experiments):
                        mine = [u for u in pending if u.kind == experiment.name]
                        if not mine:
                            continue
                        if experiment.prepare is not None:
                            begin = time.perf_counter()
                            experiment.prepare(timing_ctx, model)
                            prepared = time.perf_counter() - begin
                            driver += prepared
                            lines.append(f"  {experiment.name}: prepared once per model in {prepared:.1f} s")
                        # the sampled facts that have a unit (else the first that has: tracing and
                        # localization-vs-editing work on some facts only, and need no attribution)
                        with_unit = {u.fact_id for u in mine}
                        timed = [f for f in sample if f.fact_id in with_unit] \
                            or [next(f for f in facts if f.fact_id == mine[0].fact_id)]
                        seconds = []
                        for f in timed:
                            begin = time.perf_counter()
                            execute(timing_ctx, Unit(experiment.name, model, cfg.methods[0], f.fact_id))
                            seconds.append(time.perf_counter() - begin)
                        each = ", ".join(f"{s:.1f}" for s in seconds)
                        if experiment.per_query:
                            fixed, per_query = unit_cost([sizes[f.fact_id] for f in timed], seconds)
                            cost = sum(fixed + per_query * sizes[u.fact_id] for u in mine)
                            how = (f"{fixed:.1f} s + {per_query:.2f} s per query ({each} s for {len(timed)} timed "
                                   f"facts of {'/'.join(str(sizes[f.fact_id]) for f in timed)} queries)")
                        else:
                            cost = sum(seconds) / len(seconds) * len(mine)
                            how = f"{cost / len(mine):.1f} s each ({each} s timed)"
                        estimate += cost
                        units_count[model][experiment.name] = len(mine)
                        lines.append(f"  {experiment.name}: {len(mine)} fact units missing, {how} = {cost:.0f} s")
                lines.append(f"  estimated for {model}: ~{(estimate + driver) / 60:.1f} min of CPU")
                units_total += estimate
                serial += driver
                for line in lines:
                    echo(line)
        finally:
            ctx.store.close()
    total = serial + units_total
    wall = wall_estimate(serial, units_total, workers, SIDE_BY_SIDE, loads)
    side = (f" (about {wall / 60:.1f} min on {workers} Ray workers: units {SIDE_BY_SIDE:g}x as long as alone, "
            f"Ray's start and the workers' model loads {RAY_START_S + loads:.0f} s)" if workers > 1 else "")
    echo(f"estimated total: ~{total / 60:.1f} min of CPU{side} on {config.device or 'the default device'}; "
         f"the dry run took {time.perf_counter() - start_all:.0f} s and wrote nothing")
    return {"estimated_s": total, "wall_s": wall, "serial_s": serial, "units_s": units_total, "units": units_count,
            "memory": memory_needed}
