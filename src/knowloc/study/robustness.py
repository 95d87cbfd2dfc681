"""How robust each finding is: its verdict re-derived at every point of a grid of analysis settings
(``knowloc robustness DIR``; docs/study.md, "Robustness").

A finding's headline verdict is the one at the study's own settings; this module asks whether the same data give
the same verdict at the other defensible settings. The grid here is the analysis settings that need no new model
work on any finding, read from the study's store as it is: the K_C / K_I split (``static`` at the study's tau, or
``otsu``) x the consistency score (``cs1``, ``cs2``, ``csp``), six points, one of which is the study's own. At
each point every experiment's summary is recomputed from the stored trials with that setting (nothing is
attributed or edited; figures go to a temporary directory) and every finding judged again, model by model.

Not in this grid yet: the KN threshold, the specificity filter's F and the attribution method's role as a
setting (each finding already reports per method, so the rows carry the method). The threshold and F change the
KN sets, so the findings that edit would need new trials; they stay for a grid with an editing budget.

Outputs (summary.json, tables/*.csv):

* ``robustness``: rows ``finding_id, model, method, label, threshold, split, score, specificity, value, low,
  high, n, verdict, finding_verdict``: one per comparison a finding's verdict read at a grid point (``verdict``
  the comparison's, ``finding_verdict`` the finding's);
* ``robustness_summary``: rows ``finding_id, model, n_settings, same_verdict_share, value_min, value_max, flips,
  headline``: the share of grid points whose verdict is the headline's (the study's own settings'), the range of
  the comparisons' values and the points where the verdict differs ("split=otsu score=cs1: cannot decide").
"""

from __future__ import annotations

import itertools
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

from knowloc.errors import KnowlocError
from knowloc.fileio import atomic_write
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext
from knowloc.study.findings import NOT_RUN, findings, model_view, study_models
from knowloc.study.reader import SUMMARY, StudyReader
from knowloc.study.registry import experiments, run_order
from knowloc.study.runner import _csv, strict_json

SPLITS = ("static", "otsu")
SCORES = ("cs1", "cs2", "csp")


def grid(cfg: StudyConfig) -> list[dict]:
    """The grid's points: ``{"split", "cs_score"}`` for every split x score, the study's own first."""
    own = {"split": cfg.split, "cs_score": cfg.cs_score}
    points = [{"split": s, "cs_score": c} for s, c in itertools.product(SPLITS, SCORES)]
    return [own] + [p for p in points if p != own]


def point_summary(ctx: StudyContext) -> dict:
    """The summary of the study's stored results under ``ctx``'s settings, as summary.json would hold it (the
    findings' input)."""
    cfg = ctx.config
    for model in cfg.models:
        ctx.load_facts(model)
    summary: dict = {"config": cfg.summary_config(), "facts": {m: len(f) for m, f in ctx.facts.items()},
                     "specificity_filter": "on" if cfg.filtered else "off", "figures": {}}
    for experiment in run_order(cfg.experiments):
        summary.update(experiment.summarize(ctx).summary)
    return strict_json(summary)


def _rows(summary: dict, point: dict, cfg: StudyConfig) -> list[dict]:
    """The robustness rows of one grid point: every finding's comparisons, model by model."""
    out = []
    for model in study_models(summary):
        for item in findings(model_view(summary, model), experiments()):
            if item["verdict"] == NOT_RUN:
                continue  # the study did not run its experiment: nothing to vary
            where = {"finding_id": item["id"], "model": model, "threshold": cfg.threshold, "split": point["split"],
                     "score": point["cs_score"], "specificity": cfg.specificity, "finding_verdict": item["verdict"]}
            estimates = item.get("estimates") or [{}]
            for e in estimates:
                out.append({**where, "method": _method(e.get("label", ""), cfg), "label": e.get("label", ""),
                            "value": e.get("value"), "low": e.get("low"), "high": e.get("high"), "n": e.get("n"),
                            "verdict": e.get("verdict", item["verdict"])})
    return out


def _method(label: str, cfg: StudyConfig) -> str:
    """The attribution method a comparison's label names ("" when none: a finding not read per method)."""
    return next((m for m in cfg.methods if label == m or label.startswith(f"{m} ") or f" {m} " in f" {label} "), "")


def summarize_grid(rows: list[dict]) -> list[dict]:
    """``robustness_summary`` (module docstring) from the ``robustness`` rows; the headline is the first grid
    point's (the study's own settings)."""
    out = []
    keys = list(dict.fromkeys((r["finding_id"], r["model"]) for r in rows))
    for finding_id, model in keys:
        mine = [r for r in rows if (r["finding_id"], r["model"]) == (finding_id, model)]
        points = list(dict.fromkeys((r["split"], r["score"]) for r in mine))
        verdicts = {p: next(r["finding_verdict"] for r in mine if (r["split"], r["score"]) == p) for p in points}
        headline = verdicts[points[0]]
        values = [r["value"] for r in mine if r["value"] is not None]
        flips = [f"split={s} score={c}: {v}" for (s, c), v in verdicts.items() if v != headline]
        out.append({"finding_id": finding_id, "model": model, "n_settings": len(points), "headline": headline,
                    "same_verdict_share": sum(v == headline for v in verdicts.values()) / len(points),
                    "value_min": min(values) if values else None, "value_max": max(values) if values else None,
                    "flips": "; ".join(flips)})
    return out


def run_robustness(directory: Path, echo: Callable[[str], None] = print) -> dict:
    """Re-derive every finding of the finished study in ``directory`` at every grid point, add ``robustness`` and
    ``robustness_summary`` to its summary.json and tables, and print one line per finding and model.

    Args:
        directory: a finished study (its results.sqlite and summary.json); echo: where the lines go.

    Returns:
        ``{"robustness": rows, "robustness_summary": rows}``.

    Example:
        >>> run_robustness(Path("runs/study"))["robustness_summary"][0]["same_verdict_share"]
    """
    directory = Path(directory)
    with StudyReader(directory) as study, tempfile.TemporaryDirectory(prefix="knowloc-robustness-") as tmp:
        cfg = study.config()
        store = study.store()
        rows: list[dict] = []
        for point in grid(cfg):
            point_cfg = replace(cfg, split=point["split"], cs_score=point["cs_score"], out=tmp, progress=False)
            ctx = StudyContext(config=point_cfg, store=store, out=Path(tmp), echo=lambda _: None)
            rows += _rows(point_summary(ctx), point, cfg)
        summary_rows = summarize_grid(rows)
        summary = study.summary()
    if not rows:
        raise KnowlocError(f"{directory}: the study has no finding to re-derive")
    summary.update({"robustness": rows, "robustness_summary": summary_rows})
    atomic_write(directory / SUMMARY, json.dumps(strict_json(summary), indent=2, sort_keys=True, allow_nan=False))
    for key, table in (("robustness", rows), ("robustness_summary", summary_rows)):
        atomic_write(directory / "tables" / f"{key}.csv", _csv(table))
    for r in summary_rows:
        echo(f"{r['finding_id']} ({r['model']}): {r['headline']} at {round(r['same_verdict_share'] * r['n_settings'])} "
             f"of {r['n_settings']} settings" + (f"; {r['flips']}" if r["flips"] else ""))
    return {"robustness": rows, "robustness_summary": summary_rows}


def robustness_line(summary_rows: list[dict], finding_id: str) -> str | None:
    """The sentence the report shows beside a finding's verdict: per model, the verdict's share of the grid and
    where it flips (None when the finding has no row)."""
    mine = [r for r in summary_rows if r["finding_id"] == finding_id]
    if not mine:
        return None
    return " ".join(f"[{r['model']}] {r['headline']} at {round(r['same_verdict_share'] * r['n_settings'])} of "
                    f"{r['n_settings']} analysis settings" + (f" ({r['flips']})" if r["flips"] else "") + "."
                    for r in mine)
