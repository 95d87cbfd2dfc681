"""How robust each finding is: its verdict re-derived at every point of a grid of analysis settings
(``knowloc robustness DIR``; docs/study.md, "Robustness").

A finding's headline verdict is the one at the study's own settings; this module asks whether the same data give
the same verdict at the other defensible settings (:func:`grid`): KN threshold x specificity F x the K_C / K_I
split (``static`` at the study's tau, or ``otsu``) x the consistency score (``cs1``, ``cs2``, ``csp``), the
study's own point first. At each point every experiment's summary is recomputed from the stored results with that
setting (nothing is attributed; no figure is written: :func:`knowloc.plots.not_written`) and every finding judged
again, model by model:

* at the study's threshold and F every finding (the split and the score only regroup facts: every stored trial
  holds);
* at another threshold or F the findings of the experiments that read nothing but the attribution maps
  (:func:`reads_only_maps`: consistency, specificity), and, with an editing budget, those of the experiments of
  :data:`REDONE` on the first ``budget`` facts, whose trials are measured anew there (:func:`measure_point`, one
  editing session per fact for the whole grid: :class:`GridContext`). The KN lists at another threshold are
  selected from the stored maps (:class:`StoreAtThreshold`).

Outputs (summary.json, tables/*.csv):

* ``robustness``: rows ``finding_id, model, method, label, threshold, split, score, specificity, value, low,
  high, n, verdict, finding_verdict, budget_facts``: one per comparison a finding's verdict read at a grid point
  (``verdict`` the comparison's, ``finding_verdict`` the finding's; ``budget_facts`` N where the point was
  measured on the first N facts only, the editing budget, else None);
* ``robustness_summary``: rows ``finding_id, model, n_settings, same_verdict_share, value_min, value_max, flips,
  headline, budget_points``: the share of grid points whose verdict is the headline's (the study's own
  settings'), the range of the comparisons' values, where the verdict differs (:func:`flip_text`: "cannot decide
  whenever F=off") and how many points were measured on the budget's facts only (few facts: a "cannot decide"
  there may be the budget's, not the setting's).

Figures: each finding's specification curve, ``figures/robustness_<finding>[_<model>].png``
(:func:`knowloc.plots.specification_curve`), recorded in summary.json ``figures["robustness"]``.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from knowloc.analysis import KnSet, select_neurons
from knowloc.errors import KnowlocError
from knowloc.fileio import atomic_write
from knowloc.plots import not_written, specification_curve
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext, trial_key
from knowloc.study.findings import NOT_RUN, findings, model_view, study_models
from knowloc.study.reader import SUMMARY, StudyReader
from knowloc.study.registry import experiments, run_order
from knowloc.study.runner import _csv, strict_json
from knowloc.study.store import Store

SPLITS = ("static", "otsu")
SCORES = ("cs1", "cs2", "csp")
THRESHOLDS = (0.1, 0.2, 0.3)  # the KN threshold (x max score)
SPECIFICITIES = (1.0, 0.02, 0.05, 0.1)  # the specificity filter's F; 1.0 is "off"
# the grid's axes: (a point's key, a robustness row's key, the label the text and the curves use)
AXES = (("threshold", "threshold", "threshold"), ("specificity", "specificity", "F"), ("split", "split", "split"),
        ("cs_score", "score", "score"))


def grid(cfg: StudyConfig, profiled: bool = True) -> list[dict]:
    """The grid's points ``{"threshold", "specificity", "split", "cs_score"}``: the study's own first, then the
    other split x score points at the study's threshold and F (every finding is re-derived there), then every
    other threshold x F x split x score (the findings of the experiments that only read attribution maps).
    ``profiled``: whether the study stored a specificity profile (without one F has only the study's value)."""
    own = {"threshold": float(cfg.threshold), "specificity": float(cfg.specificity), "split": cfg.split,
           "cs_score": cfg.cs_score}
    thresholds = sorted({own["threshold"], *THRESHOLDS})
    fs = sorted({own["specificity"], *SPECIFICITIES}) if profiled else [own["specificity"]]
    points = [{"threshold": t, "specificity": f, "split": s, "cs_score": c}
              for t, f, s, c in itertools.product(thresholds, fs, SPLITS, SCORES)]
    return [own] + sorted((p for p in points if p != own), key=lambda p: not reuses_trials(p, cfg))


def reuses_trials(point: dict, cfg: StudyConfig) -> bool:
    """Whether the study's stored trials hold at ``point``: its KN sets are the study's (same threshold and F; the
    split and the score only regroup the facts)."""
    return point["threshold"] == float(cfg.threshold) and point["specificity"] == float(cfg.specificity)


def reads_only_maps(experiment) -> bool:
    """Whether an experiment's summary comes from the stored attribution maps alone (no per-fact or per-model
    work on the model: it can be re-derived at any KN threshold and F)."""
    return experiment.fact_work is None and experiment.finalize is None and experiment.prepare is None


def setting_text(point: dict, own: dict | None = None) -> str:
    """``"threshold=0.1 F=off split=otsu"``: the point's settings (those that differ from ``own`` when given)."""
    return " ".join(f"{label}={shown_value(key, point[key])}" for key, _, label in AXES
                    if key in point and (own is None or point[key] != own.get(key))) or "the study's settings"


def shown_value(key: str, value: object) -> str:
    """A setting as the report writes it (F = 1 is "off")."""
    return "off" if key == "specificity" and value == 1.0 else str(value)


class StoreAtThreshold:
    """A study's store read as if its KN lists had been selected at another KN ``threshold``: each query's list is
    :func:`knowloc.analysis.select_neurons` of its stored attribution map (stored fp16), computed once; the trials
    of an experiment re-measured at a grid point (``measured``) replace the stored ones; everything else (the maps,
    the specificity profile's reference KN lists, which are stored without their maps and so stay at the study's
    threshold) is the store's own."""

    def __init__(self, store: Store, threshold: float | None):
        self._store, self._threshold = store, threshold  # None: the stored lists (the study's own threshold)
        self._lists: dict[tuple[str, str, str], dict[int, list]] = {}
        self.measured: dict[str, dict[str, list[dict]]] = {}  # experiment -> trials measured at this grid point

    def trials(self, experiment: str) -> dict[str, list[dict]]:
        """The trials measured for this grid point (:func:`measure_point`) where there are, else the store's."""
        return self.measured[experiment] if experiment in self.measured else self._store.trials(experiment)

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def kn_lists(self, model: str, method: str, fact_id: str) -> dict[int, list]:
        if self._threshold is None:
            return self._store.kn_lists(model, method, fact_id)
        key = (model, method, fact_id)
        if key not in self._lists:
            self._lists[key] = {q: select_neurons(scores, threshold=self._threshold)
                                for q, scores in self._store.scores(model, method, fact_id).items()}
        return self._lists[key]

    def kn_lists_all(self, model: str, method: str) -> dict[str, dict[int, list]]:
        return {fact_id: self.kn_lists(model, method, fact_id) for fact_id in self._store.kn_lists_all(model, method)}

    def kn_sets(self, model: str, method: str) -> dict[str, dict[int, KnSet]]:
        return {fact_id: {q: KnSet(kn) for q, kn in lists.items()}
                for fact_id, lists in self.kn_lists_all(model, method).items()}


# the experiments whose per-fact trials are measured on the KN sets and feed findings: re-measured at another KN
# threshold or F for the first --robustness-budget facts (the others keep the study's KN sets' 6 points: the
# edit sequences of mass-editing are a study of their own; the sweeps feed no finding; tracing, knockout and
# localization-vs-editing do not edit KN sets)
REDONE = ("modification", "query-mapping", "attention", "cas", "editors")


class GridContext(StudyContext):
    """A study context at one grid point whose editing sessions are shared with the other points' (``sessions``):
    a session memoizes each distinct edited model (:class:`~knowloc.editing.session.EditSession`), so a neuron
    set two grid points share is edited and measured once."""

    def __init__(self, *args, sessions: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.sessions = sessions

    def edit_session(self, model: str, fact):
        key = (model, fact.fact_id)
        if key not in self.sessions:
            self.sessions[key] = super().edit_session(model, fact)
        return self.sessions[key]


def measure_point(ctx: GridContext, redone: list, budget: int) -> int:
    """Measure every ``redone`` experiment's trials of the first ``budget`` studied facts of each model at ``ctx``'s
    KN threshold and F into ``ctx.store.measured``; returns the number of fact units run."""
    view: StoreAtThreshold = ctx.store  # type: ignore[assignment]
    units = 0
    for experiment in redone:
        view.measured[experiment.name] = {}
    for model in ctx.config.models:
        for experiment in redone:
            if experiment.prepare is not None:
                experiment.prepare(ctx, model)
        for fact in ctx.facts[model][:budget]:
            for method in ctx.config.methods:
                for experiment in redone:
                    if experiment.works is None or experiment.works(ctx, model, method, fact.fact_id):
                        key = trial_key(model, method, fact.fact_id)
                        view.measured[experiment.name][key] = experiment.fact_work(ctx, model, method, fact)
                        units += 1
    return units


def remeasured(cfg: StudyConfig, budget: int, findings: Sequence[str] | None = None) -> list:
    """The experiments a grid with an editing ``budget`` measures anew: those of :data:`REDONE` the study ran, or,
    with ``findings`` (``--findings``), only those whose findings are named (an editing finding's curve over the
    whole grid on every fact costs a fraction of all of them: docs/study.md). A name that is no finding, or
    whose trials this study cannot re-measure, is a one-line error; so are ``findings`` without a budget."""
    if findings is not None and not budget:
        raise KnowlocError("--findings needs --budget (without one nothing is measured anew)")
    candidates = [e for e in run_order(cfg.experiments) if e.name in REDONE] if budget else []
    if findings is None:
        return candidates
    known = [f.id for e in experiments() for f in e.findings]
    editing = [f.id for e in candidates for f in e.findings]
    for name in findings:
        if name not in known:
            raise KnowlocError(f"--findings: no finding {name!r} (findings: {', '.join(known)})")
        if name not in editing:
            raise KnowlocError(f"--findings: {name} has no editing trials this study re-measures "
                               f"(those that do: {', '.join(editing) or 'none'})")
    return [e for e in candidates if any(f.id in findings for f in e.findings)]


def robustness_plan(cfg: StudyConfig, budget: int = 0, findings: Sequence[str] | None = None) -> str:
    """What the grid of a study with ``cfg`` costs, in one line (the dry run's): its points and, with a ``budget``,
    the fact units of editing it adds (an upper bound: the study may store no specificity profile, and units
    whose neuron sets repeat another point's are measured once); ``findings``: only theirs (:func:`remeasured`)."""
    points = grid(cfg)
    line = f"robustness: then up to {len(points)} grid points of analysis settings, each re-derived from the store"
    redone = [e.name for e in remeasured(cfg, budget, findings)]
    if not budget or not redone:
        return line + " (nothing attributed or edited; seconds per point, mostly figures)"
    pairs = len({(p["threshold"], p["specificity"]) for p in points if not reuses_trials(p, cfg)})
    units = pairs * budget * len(cfg.models) * len(cfg.methods) * len(redone)
    return (line + f"; --robustness-budget {budget}: up to {units} fact units edited anew ({', '.join(redone)} x "
            f"{budget} facts x {len(cfg.methods)} methods x {pairs} other KN threshold x F, per model), each about "
            "as long as the study's own unit of that experiment")


def point_summary(ctx: StudyContext, only: list | None = None) -> dict:
    """The summary of the study's stored results under ``ctx``'s settings, as summary.json would hold it (the
    findings' input; ``ctx`` has its models' facts loaded); ``only``: the experiments to summarize (default: the
    study's)."""
    cfg = ctx.config
    summary: dict = {"config": cfg.summary_config(), "facts": {m: len(f) for m, f in ctx.facts.items()},
                     "specificity_filter": "on" if cfg.filtered else "off", "figures": {}}
    for experiment in run_order(cfg.experiments) if only is None else only:
        summary.update(experiment.summarize(ctx).summary)
    return strict_json(summary)


def _rows(summary: dict, point: dict, cfg: StudyConfig, subset: dict[str, int] | None = None) -> list[dict]:
    """The robustness rows of one grid point: every finding's comparisons, model by model; ``subset`` maps the ids
    of findings measured there on the first N facts only (the editing budget) to N (``budget_facts``; None: the
    study's facts)."""
    subset = subset or {}
    out = []
    for model in study_models(summary):
        for item in findings(model_view(summary, model), experiments()):
            if item["verdict"] == NOT_RUN:
                continue  # not run by the study, or not re-derivable at this point: nothing to vary
            where = {"finding_id": item["id"], "model": model, "finding_verdict": item["verdict"],
                     "budget_facts": subset.get(item["id"]), **{row_key: point[key] for key, row_key, _ in AXES}}
            estimates = item.get("estimates") or [{}]
            for e in estimates:
                out.append({**where, "method": _method(e.get("label", ""), cfg), "label": e.get("label", ""),
                            "value": e.get("value"), "low": e.get("low"), "high": e.get("high"), "n": e.get("n"),
                            "verdict": e.get("verdict", item["verdict"])})
    return out


def _method(label: str, cfg: StudyConfig) -> str:
    """The attribution method a comparison's label names ("" when none: a finding not read per method)."""
    return next((m for m in cfg.methods if label == m or label.startswith(f"{m} ") or f" {m} " in f" {label} "), "")


def _point(row: dict) -> tuple:
    """A robustness row's grid point, as ``((point key, value), ...)``."""
    return tuple((key, row.get(row_key)) for key, row_key, _ in AXES)


def summarize_grid(rows: list[dict]) -> list[dict]:
    """``robustness_summary`` (module docstring) from the ``robustness`` rows; the headline is the first grid
    point's (the study's own settings); ``flips`` names each point whose verdict differs by the settings in which
    it differs from the headline's."""
    out = []
    keys = list(dict.fromkeys((r["finding_id"], r["model"]) for r in rows))
    for finding_id, model in keys:
        mine = [r for r in rows if (r["finding_id"], r["model"]) == (finding_id, model)]
        verdicts: dict[tuple, str] = {}  # point -> the finding's verdict there, in grid order
        for r in mine:
            verdicts.setdefault(_point(r), r["finding_verdict"])
        points = list(verdicts)
        headline = verdicts[points[0]]
        values = [r["value"] for r in mine if r["value"] is not None]
        budget_points = len({_point(r) for r in mine if r.get("budget_facts") is not None})
        out.append({"finding_id": finding_id, "model": model, "n_settings": len(points), "headline": headline,
                    "budget_points": budget_points,
                    "same_verdict_share": sum(v == headline for v in verdicts.values()) / len(points),
                    "value_min": min(values) if values else None, "value_max": max(values) if values else None,
                    "flips": flip_text(verdicts, points[0])})
    return out


def flip_text(verdicts: dict[tuple, str], own: tuple, listed: int = 3) -> str:
    """Where the verdict differs from the headline (``verdicts[own]``), per other verdict: the settings at which
    it always does (every point with ``F=off`` gives it, say) and the other points; else the settings at which it
    mostly does (at least 3 of 4 of their points), else up to ``listed`` points by what differs from the study's
    settings; "" when it never differs.

    Example:
        >>> flip_text({(("split", "static"),): "supports", (("split", "otsu"),): "cannot decide"},
        ...           (("split", "static"),))
        'cannot decide whenever split=otsu'
    """
    headline, parts = verdicts[own], []
    for verdict in dict.fromkeys(v for v in verdicts.values() if v != headline):
        mine = [p for p, v in verdicts.items() if v == verdict]
        always = [(key, value) for key, value in dict.fromkeys(kv for p in mine for kv in p if kv not in own)
                  if all(verdicts[p] == verdict for p in verdicts if (key, value) in p)]
        rest = [p for p in mine if not any(kv in p for kv in always)]
        if always:
            text = f"{verdict} whenever " + " or ".join(setting_text({k: v}) for k, v in always)
            parts.append(text + (f" (and at {_points(len(rest))} more)" if rest else ""))
            continue
        mostly = []  # the settings most of whose points give it (at least 3 of 4)
        for key, value in dict.fromkeys(kv for p in mine for kv in p if kv not in own):
            having = [p for p in verdicts if (key, value) in p]
            hits = sum(verdicts[p] == verdict for p in having)
            if 4 * hits >= 3 * len(having):
                mostly.append(f"{setting_text({key: value})} ({hits} of {len(having)})")
        if mostly:
            parts.append(f"{verdict} at {_points(len(rest))}, mostly with " + ", ".join(mostly))
        else:
            shown = ", ".join(setting_text(dict(p), dict(own)) for p in rest[:listed])
            parts.append(f"{verdict} at {_points(len(rest))} ({shown}{', ...' if len(rest) > listed else ''})")
    return "; ".join(parts)


def _points(n: int) -> str:
    return f"{n} point" + ("" if n == 1 else "s")


def run_robustness(directory: Path, echo: Callable[[str], None] = print, budget: int = 0,
                   findings: Sequence[str] | None = None) -> dict:
    """Re-derive every finding of the finished study in ``directory`` at every grid point (:func:`grid`), add
    ``robustness`` and ``robustness_summary`` to its summary.json and tables, draw each finding's specification
    curve (``figures/robustness_<finding>[_<model>].png``), and print one line per finding and model and the
    grid's cost. Nothing is attributed; with ``budget`` 0 nothing is edited either: every point is read from the
    store.

    Args:
        directory: a finished study (its results.sqlite and summary.json); echo: where the lines go.
        budget: ``--robustness-budget``: at every other KN threshold x F, the editing experiments' trials
            (:data:`REDONE`) of the first ``budget`` studied facts are measured anew (each distinct neuron set of
            a fact once over the grid: :class:`GridContext`), so their findings vary over the whole grid too, on
            those facts; 0: they keep the study's KN sets' points.
        findings: with a budget, re-measure only the experiments these findings read (:func:`remeasured`; None:
            every editing finding's); the other editing findings keep the study's KN sets' points.

    Returns:
        ``{"robustness": rows, "robustness_summary": rows, "seconds": the grid's wall time, "points": n,
        "units": fact units measured, "edits": distinct edits measured}``.

    Example:
        >>> run_robustness(Path("runs/study"))["robustness_summary"][0]["same_verdict_share"]
    """
    directory = Path(directory)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise KnowlocError(f"--robustness-budget must be an integer >= 0, got {budget!r}")
    start = time.perf_counter()
    with StudyReader(directory) as study, tempfile.TemporaryDirectory(prefix="knowloc-robustness-") as tmp:
        cfg = study.config()
        store = study.store()
        profiled = any(store.reference(m, method) for m in cfg.models for method in cfg.methods)
        map_only = [e for e in run_order(cfg.experiments) if reads_only_maps(e)]
        redone = remeasured(cfg, budget, findings)
        on_budget = {f.id: budget for e in redone for f in e.findings}  # measured on the first `budget` facts only
        rows: list[dict] = []
        points = grid(cfg, profiled)
        views: dict[tuple[float, float], Store | StoreAtThreshold] = {}
        sessions: dict = {}
        facts: dict = {}  # every point's context shares the studied facts and probes, read from the store once
        probes: dict = {}
        pool = None
        units = 0
        with not_written():  # every point's summaries for their numbers; the figures are the study's own
            for point in points:
                point_cfg = replace(cfg, threshold=point["threshold"], specificity=point["specificity"],
                                    split=point["split"], cs_score=point["cs_score"], out=tmp, progress=False)
                pair = (point["threshold"], point["specificity"])
                fresh = pair not in views
                if fresh:
                    views[pair] = store if reuses_trials(point, cfg) else StoreAtThreshold(
                        store, None if point["threshold"] == float(cfg.threshold) else point["threshold"])
                ctx = GridContext(config=point_cfg, store=views[pair], out=Path(tmp),  # type: ignore[arg-type]
                                  echo=lambda _: None, models=pool, sessions=sessions, facts=facts, probes=probes)
                pool = ctx.models
                for model in cfg.models:
                    if model not in facts:
                        ctx.load_facts(model)
                if on_budget and all(len(facts[m]) <= budget for m in cfg.models):
                    on_budget = {}  # the budget covers every studied fact: its points are measured on all of them
                only = None
                if not reuses_trials(point, cfg):
                    only = map_only + redone
                    if fresh and redone:
                        echo(f"robustness: measuring {', '.join(e.name for e in redone)} at "
                             f"{setting_text({'threshold': pair[0], 'specificity': pair[1]})} on the first {budget} "
                             "facts")
                        units += measure_point(ctx, redone, budget)
                rows += _rows(point_summary(ctx, only), point, cfg, None if only is None else on_budget)
        summary_rows = summarize_grid(rows)
        summary = study.summary()
    if not rows:
        raise KnowlocError(f"{directory}: the study has no finding to re-derive")
    seconds = time.perf_counter() - start
    edits = sum(session.n_edits for session in sessions.values())
    figures = _curves(directory / "figures", rows, summary_rows)
    summary.update({"robustness": rows, "robustness_summary": summary_rows})
    summary.setdefault("figures", {})["robustness"] = figures
    atomic_write(directory / SUMMARY, json.dumps(strict_json(summary), indent=2, sort_keys=True, allow_nan=False))
    for key, table in (("robustness", rows), ("robustness_summary", summary_rows)):
        atomic_write(directory / "tables" / f"{key}.csv", _csv(table))
    for r in summary_rows:
        echo(f"{r['finding_id']} ({r['model']}): {r['headline']} at {round(r['same_verdict_share'] * r['n_settings'])} "
             f"of {r['n_settings']} settings" + (f"; {r['flips']}" if r["flips"] else "")
             + (f" ({r['budget_points']} points measured on the first {budget} facts only: --budget)"
                if r["budget_points"] else ""))
    work = (f"{units} fact units edited anew ({edits} distinct edits)" if budget else
            "all from the store (nothing attributed or edited)")
    echo(f"robustness: {len(points)} grid points in {seconds:.1f} s, {work}; {len(figures)} specification curves "
         f"in {directory / 'figures'}")
    return {"robustness": rows, "robustness_summary": summary_rows, "seconds": seconds, "points": len(points),
            "units": units, "edits": edits}


def _curves(figures_dir: Path, rows: list[dict], summary_rows: list[dict]) -> list[str]:
    """Each finding's specification curve per model (:func:`knowloc.plots.specification_curve`); the file names."""
    models = {r["model"] for r in summary_rows}
    names = []
    for r in summary_rows:
        mine = [row for row in rows if (row["finding_id"], row["model"]) == (r["finding_id"], r["model"])]
        if not any(row["value"] is not None for row in mine):
            continue  # a finding read without numbers (e.g. a count below its minimum) has no curve
        name = f"robustness_{r['finding_id']}" + (f"_{r['model']}" if len(models) > 1 else "") + ".png"
        shown = [{**row, "specificity": shown_value("specificity", row["specificity"])} for row in mine]
        specification_curve(shown, figures_dir / name, [(row_key, label) for _, row_key, label in AXES],
                            title=f"{r['finding_id']} ({r['model']}): {r['headline']} at "
                                  f"{round(r['same_verdict_share'] * r['n_settings'])} of {r['n_settings']} settings")
        names.append(name)
    return names


def robustness_line(summary_rows: list[dict], finding_id: str) -> str | None:
    """The sentence the report shows beside a finding's verdict: per model, the verdict's share of the grid and
    where it flips (None when the finding has no row)."""
    mine = [r for r in summary_rows if r["finding_id"] == finding_id]
    if not mine:
        return None
    return " ".join(f"[{r['model']}] {r['headline']} at {round(r['same_verdict_share'] * r['n_settings'])} of "
                    f"{r['n_settings']} analysis settings" + (f" ({r['flips']})" if r["flips"] else "")
                    + (f"; {r['budget_points']} of them measured on the editing budget's facts only"
                       if r.get("budget_points") else "") + "."
                    for r in mine)
