"""Findings: one plain sentence per question of the paper, from a study's summary, with its number, interval
and n, and whether the data support, contradict or cannot decide the paper's claim (and why).

Each experiment declares the questions it answers (:class:`knowloc.study.registry.Finding`: a stable id, the
question, the paper's claim, the rule and a ``judge`` that reads summary.json); this module holds what they
share: the verdict of one interval (:func:`verdict`, 95% bootstrap intervals over facts, none below MIN_N facts;
:class:`knowloc.analysis.Estimate`), the one verdict of several comparisons (:func:`combine`), the filter view
the findings read (:func:`filter_view`), the number formats, and the assembly of the list (:func:`findings`) in
the registry's order. docs/study.md lists every finding's rule.

Anything else (an interval that includes the boundary, too few facts, an experiment not run) cannot decide,
and the sentence says why. An experiment that ran but had nothing to measure (every studied fact without a
consistency score, so without a K_C / K_I group; no update target; ...) cannot decide either, with that reason:
"not run" is only for an experiment the study did not run. A question answered per method (and group) gets one verdict: the common one when all
agree, "mixed" when some comparisons support and others contradict, and "partly supports" / "partly
contradicts" when the rest cannot decide; the reason counts each kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from knowloc.analysis import MIN_N, Estimate
from knowloc.study.registry import Experiment, Part

SUPPORTS, CONTRADICTS, UNDECIDED = "supports", "contradicts", "cannot decide"
MIXED, PARTLY_SUPPORTS, PARTLY_CONTRADICTS = "mixed", "partly supports", "partly contradicts"
NOT_RUN = "not run"


def ok(x: Any) -> bool:
    """A number to show: not None and not nan."""
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def num(x: Any, digits: int = 2, signed: bool = True) -> str:
    return "n/a" if not ok(x) else (f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}")


def interval(e: Estimate, digits: int = 2, signed: bool = True) -> str:
    """``[low, high]`` of an estimate, or "(no interval)"."""
    return f"[{num(e.low, digits, signed)}, {num(e.high, digits, signed)}]" if e.has_interval else "(no interval)"


def verdict(e: Estimate, support_above: float | None = None, support_below: float | None = None,
            contradict_above: float | None = None, contradict_below: float | None = None) -> tuple[str, str]:
    """(verdict, reason) from an estimate's interval: supports when it lies entirely above `support_above` (or
    below `support_below`), contradicts when it lies entirely above `contradict_above` (or below
    `contradict_below`), else cannot decide (fewer than MIN_N facts, no interval, or one too wide)."""
    if e.withheld:
        return UNDECIDED, f"fewer than {MIN_N} facts (n = {e.n})"
    if not e.has_interval:
        return UNDECIDED, "no interval"
    if support_above is not None and e.above(support_above) or support_below is not None and e.below(support_below):
        return SUPPORTS, ""
    if contradict_above is not None and e.above(contradict_above) \
            or contradict_below is not None and e.below(contradict_below):
        return CONTRADICTS, ""
    return UNDECIDED, "the interval is too wide for either rule"


def judge_rows(rows: Iterable[dict], where: dict, describe: Callable[[dict, Estimate], str], key: str = "diff",
               n: str | Callable[[dict], int] = "n", **rule: float) -> list[Part]:
    """One comparison per summary row matching ``where``: the row's :class:`Estimate` (``key`` with its
    ``ci_low`` / ``ci_high`` and ``n``, a row key or a function of the row), the sentence ``describe(row,
    estimate)`` and :func:`verdict` under ``rule`` (``support_above=0.0`` etc.)."""
    parts = []
    for r in rows:
        if all(r.get(k) == v for k, v in where.items()):
            e = Estimate.from_row(r, key, n=n(r) if callable(n) else n)
            parts.append((describe(r, e), verdict(e, **rule)))
    return parts


def combine(parts: list[tuple[str, str]]) -> tuple[str, str]:
    """One verdict from the (verdict, reason) of each method / group: the common verdict when they agree;
    "mixed" when some support and some contradict; "partly supports" / "partly contradicts" when the others
    cannot decide. The reason counts the comparisons of each kind."""
    verdicts = [v for v, _ in parts]
    if len(set(verdicts)) == 1:
        return parts[0][0], "; ".join(sorted({r for _, r in parts if r}))
    n_yes, n_no, n_open = (verdicts.count(v) for v in (SUPPORTS, CONTRADICTS, UNDECIDED))
    counts = ", ".join(f"{k} {word}" for k, word in ((n_yes, "support"), (n_no, "contradict"),
                                                     (n_open, "cannot decide")) if k)
    if n_yes and n_no:
        return MIXED, f"the methods or groups disagree: {counts} of {len(parts)}"
    return (PARTLY_SUPPORTS if n_yes else PARTLY_CONTRADICTS), f"{counts} of {len(parts)}"


def filter_view(summary: dict) -> str:
    """"on" when the study's specificity filter removed neurons, else "off": summary.json's
    ``specificity_filter``, or for a summary written before it, its config (F < 1; a missing F is a legacy
    unfiltered study)."""
    stored = summary.get("specificity_filter")
    if stored in ("on", "off"):
        return stored
    value = (summary.get("config") or {}).get("specificity")
    return "on" if value is not None and float(value) < 1 else "off"


def nothing_measured(summary: dict) -> str:
    """Why an experiment that ran measured nothing for a question: no studied fact has a consistency score
    (so none has a K_C / K_I group) when the consistency experiment says so, else no comparison had facts."""
    rows = [r for r in summary.get("consistency_unscored", []) if r.get("specificity", "off") == filter_view(summary)]
    if rows and not any(r.get("n_scored") for r in rows):
        if not any(r.get("n_studied") for r in rows):
            return "no fact was studied"
        return "no studied fact has a consistency score, so none has a K_C / K_I group"
    return "no comparison had facts to measure"


def findings(summary: dict, experiments: Iterable[Experiment]) -> list[dict]:
    """The findings of a study summary (summary.json's content), in the experiments' order; each
    ``{"id", "question", "claim", "verdict", "text", "reason"}`` with verdict supports / contradicts / cannot
    decide / mixed / partly supports / partly contradicts (see :func:`combine`) / not run (the experiment is not
    in the study; one that ran with nothing to measure cannot decide, and the reason says why)."""
    out = []
    for experiment in experiments:
        for finding in experiment.findings:
            item = {"id": finding.id, "question": finding.question, "claim": finding.claim}
            parts = finding.judge(summary) if experiment.ran(summary) else None
            if parts is None:
                out.append({**item, "verdict": NOT_RUN, "reason": NOT_RUN,
                            "text": f"Not measured: the study has no {experiment.name} results."})
                continue
            if not parts:
                why = nothing_measured(summary)
                out.append({**item, "verdict": UNDECIDED, "reason": why, "text": f"Nothing measured: {why}."})
                continue
            chosen, reason = combine([v for _, v in parts])
            out.append({**item, "verdict": chosen, "reason": reason, "text": " ".join(text for text, _ in parts)})
    return out


def shown_reason(item: dict) -> str:
    """A finding's reason as its verdict is shown with it: none for supports / contradicts, nor when it only
    repeats the verdict ("not run")."""
    reason = item.get("reason") or ""
    return "" if item["verdict"] in (SUPPORTS, CONTRADICTS) or reason == item["verdict"] else reason


def markdown(items: list[dict]) -> list[str]:
    """The findings as a Markdown section."""
    lines = ["## Findings", "", "Each question of the paper, answered from this study (95% bootstrap intervals "
             f"over facts; none below {MIN_N} facts); the verdict is about the paper's claim.", ""]
    for k, f in enumerate(items, start=1):
        why = f" ({shown_reason(f)})" if shown_reason(f) else ""
        lines.append(f"{k}. **{f['question']}** Paper: {f['claim']}. Verdict: **{f['verdict']}**{why}. {f['text']}")
    return lines + [""]
