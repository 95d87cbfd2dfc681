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

Models side by side (:func:`findings_by_model`, summary.json ``findings_by_model``, only for a study of 2+
models): each question is answered once per model, by the same judges over that model's rows only
(:func:`model_view`: every list of summary rows is filtered to the rows whose "model" is that model, everything
else kept), so a model's verdict follows the rules above; each cell lists the estimates the judge read (number,
95% interval, n, with the comparison's method / group label). The question's "across models" verdict
(:func:`across`): "agree: supports" (or "agree: contradicts") when every model has that same decided verdict,
"disagree" when some model supports and another contradicts, "not run" when no model ran the experiment, else
"cannot decide" (some model cannot decide, is mixed or partly decided, or did not run the experiment).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from knowloc.analysis import MIN_N, Estimate
from knowloc.study import registry
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


class Decision(tuple):
    """(verdict, reason) of :func:`verdict`, carrying the lines its rule drew: ``support`` (the claim's threshold)
    and ``contradict`` (None where the rule has none); what the findings figure draws against the estimate."""

    support: float | None
    contradict: float | None

    def __new__(cls, chosen: str, reason: str, support: float | None = None, contradict: float | None = None):
        decision = super().__new__(cls, (chosen, reason))
        decision.support, decision.contradict = support, contradict
        return decision

    def __getnewargs__(self):  # type: ignore[override]  # pickling: rebuilt with its lines
        return (self[0], self[1], self.support, self.contradict)


def verdict(e: Estimate, support_above: float | None = None, support_below: float | None = None,
            contradict_above: float | None = None, contradict_below: float | None = None) -> Decision:
    """(verdict, reason) from an estimate's interval: supports when it lies entirely above `support_above` (or
    below `support_below`), contradicts when it lies entirely above `contradict_above` (or below
    `contradict_below`), else cannot decide (fewer than MIN_N facts, no interval, or one too wide); a
    :class:`Decision` that carries the two lines."""
    lines = (support_above if support_above is not None else support_below,
             contradict_below if contradict_below is not None else contradict_above)
    if e.withheld:
        return Decision(UNDECIDED, f"fewer than {MIN_N} facts (n = {e.n})", *lines)
    if not e.has_interval:
        return Decision(UNDECIDED, "no interval", *lines)
    if support_above is not None and e.above(support_above) or support_below is not None and e.below(support_below):
        return Decision(SUPPORTS, "", *lines)
    if contradict_above is not None and e.above(contradict_above) \
            or contradict_below is not None and e.below(contradict_below):
        return Decision(CONTRADICTS, "", *lines)
    return Decision(UNDECIDED, "the interval is too wide for either rule", *lines)


def row_label(row: dict) -> str:
    """A comparison's short label from its summary row: method and group, and the baseline it is compared
    with ("ig K_C vs N_i"); "" when the row has none of them."""
    words = [str(row[k]) for k in ("method", "group") if row.get(k) not in (None, "")]
    if row.get("baseline") not in (None, ""):
        words.append(f"vs {row['baseline']}")
    return " ".join(words)


def judge_rows(rows: Iterable[dict], where: dict, describe: Callable[[dict, Estimate], str], key: str = "diff",
               n: str | Callable[[dict], int] = "n", label: Callable[[dict], str] = row_label,
               **rule: float) -> list[Part]:
    """One comparison per summary row matching ``where``: the row's :class:`Estimate` (``key`` with its
    ``ci_low`` / ``ci_high`` and ``n``, a row key or a function of the row), the sentence ``describe(row,
    estimate)`` and :func:`verdict` under ``rule`` (``support_above=0.0`` etc.); each :class:`Part` carries
    its estimate and ``label(row)`` (:func:`row_label`)."""
    parts = []
    for r in rows:
        if all(r.get(k) == v for k, v in where.items()):
            e = Estimate.from_row(r, key, n=n(r) if callable(n) else n)
            parts.append(Part(describe(r, e), verdict(e, **rule), e, label(r)))
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


def _judged(summary: dict, experiments: Iterable[Experiment]) -> list[tuple[dict, list]]:
    """Each finding of :func:`findings` with the parts its judge returned (none when not run or nothing
    measured)."""
    out: list[tuple[dict, list]] = []
    for experiment in experiments:
        for finding in experiment.findings:
            item = {"id": finding.id, "question": finding.question, "claim": finding.claim}
            parts = finding.judge(summary) if experiment.ran(summary) else None
            if parts is None:
                out.append(({**item, "verdict": NOT_RUN, "reason": NOT_RUN,
                             "text": f"Not measured: the study has no {experiment.name} results."}, []))
                continue
            if not parts:
                why = nothing_measured(summary)
                out.append(({**item, "verdict": UNDECIDED, "reason": why, "text": f"Nothing measured: {why}."}, []))
                continue
            chosen, reason = combine([v for _, v in parts])
            out.append(({**item, "verdict": chosen, "reason": reason,
                         "text": " ".join(text for text, _ in parts)}, list(parts)))
    return out


def findings(summary: dict, experiments: Iterable[Experiment]) -> list[dict]:
    """The findings of a study summary (summary.json's content), in the experiments' order; each
    ``{"id", "question", "claim", "verdict", "text", "reason", "estimates"}`` (the estimates as
    :func:`findings_by_model` lists them; in a study of several models each model's, its name in the label) with
    verdict supports / contradicts / cannot decide / mixed / partly supports / partly contradicts (see
    :func:`combine`) / not run (the experiment is not in the study; one that ran with nothing to measure cannot
    decide, and the reason says why).

    In a study of 2+ models the verdict pools every model's comparisons, and the text names the model of each
    (``"[model] ig: ..."``, :func:`_named_text`); a single model's text is its comparisons' sentences alone."""
    experiments = list(experiments)
    judged = [({**item, "estimates": _estimates(parts)}, parts) for item, parts in _judged(summary, experiments)]
    models = study_models(summary)
    if len(models) < 2:
        return [item for item, _ in judged]
    per_model = {m: _judged(model_view(summary, m), experiments) for m in models}
    out = []
    for k, (item, parts) in enumerate(judged):
        text = _named_text(parts, [(m, per_model[m][k][1]) for m in models])
        named = [{**e, "label": e["label"] if (e["label"] + " ").startswith(f"{m} ") else f"{m} {e['label']}".strip()}
                 for m in models for e in _estimates(per_model[m][k][1])]
        out.append({**item, "estimates": named or item["estimates"], **({} if text is None else {"text": text})})
    return out


def _named_text(parts: list, by_model: list[tuple[str, list]]) -> str | None:
    """The pooled text of a finding with each comparison's model named, model by model: ``"[a] ig: ... [b] ig:
    ..."``, from each model's own comparisons (``by_model``: (model, the parts of its :func:`model_view`)); None
    when there are none, or when they are not exactly the pooled `parts` (a judge that reads several models'
    rows together: its text is left as it is)."""
    def key(part) -> tuple:
        return part[0], tuple(part[1])
    if not parts or Counter(map(key, parts)) != Counter(key(p) for _, own in by_model for p in own):
        return None
    return " ".join(f"[{model}] {part[0]}" for model, own in by_model for part in own)


AGREE, DISAGREE = "agree", "disagree"


def across(verdicts: Iterable[str]) -> str:
    """The across-models verdict of one question from each model's verdict: "agree: supports" / "agree:
    contradicts" when every model has that same decided verdict, "disagree" when some model supports and
    another contradicts, "not run" when the experiment ran for no model, else "cannot decide" (a model undecided,
    mixed, partly decided or not run; no model)."""
    verdicts = list(verdicts)
    if verdicts and all(v == NOT_RUN for v in verdicts):
        return NOT_RUN
    if verdicts and verdicts[0] in (SUPPORTS, CONTRADICTS) and all(v == verdicts[0] for v in verdicts):
        return f"{AGREE}: {verdicts[0]}"
    if SUPPORTS in verdicts and CONTRADICTS in verdicts:
        return DISAGREE
    return UNDECIDED


def model_view(summary: dict, model: str) -> dict:
    """The summary as if the study had only `model`: in every list of rows, the dict rows carrying a "model"
    key keep only that model's; everything else (rows without a model, config, facts, figures, ...) as is."""
    def keep(value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [r for r in value if not (isinstance(r, dict) and "model" in r) or r["model"] == model]
    return {key: keep(value) for key, value in summary.items()}


def study_models(summary: dict) -> list[str]:
    """The models of a study summary: its config's, else those its ``facts`` counts."""
    models = (summary.get("config") or {}).get("models")
    return list(models) if models else list(summary.get("facts") or {})


def _clean(x: Any) -> float | None:
    return float(x) if ok(x) else None


def _estimates(parts: list) -> list[dict]:
    """The estimates the parts carry (a hand-built 2-tuple carries none), each with its comparison's verdict and
    the lines its rule drew (``support``, ``contradict``: None where the judge did not say)."""
    out = []
    for part in parts:
        e = getattr(part, "estimate", None)
        if e is not None:
            decided = part[1]
            out.append({"label": getattr(part, "label", ""), "value": _clean(e.value), "low": _clean(e.low),
                        "high": _clean(e.high), "n": e.n, "verdict": decided[0],
                        "support": getattr(decided, "support", None),
                        "contradict": getattr(decided, "contradict", None)})
    return out


def findings_by_model(summary: dict, experiments: Iterable[Experiment],
                      models: Iterable[str] | None = None) -> dict | None:
    """The findings per model side by side, for a study of 2+ models (None for fewer): ``{"models": [...],
    "rows": [{"id", "question", "claim", "per_model": {model: {"verdict", "reason", "text", "estimates":
    [{"label", "value", "low", "high", "n"}]}}, "across"}]}``, one row per finding in :func:`findings`' order;
    each model's cell is :func:`findings` of :func:`model_view` (the same judges over that model's rows), its
    estimates those the judge's parts carry (JSON null for nan); ``across`` is :func:`across` of the verdicts."""
    models = study_models(summary) if models is None else list(models)
    if len(models) < 2:
        return None
    experiments = list(experiments)
    judged = {m: _judged(model_view(summary, m), experiments) for m in models}
    rows = []
    for k, (item, _) in enumerate(judged[models[0]]):
        per_model = {}
        for m in models:
            cell, parts = judged[m][k]
            per_model[m] = {"verdict": cell["verdict"], "reason": cell["reason"], "text": cell["text"],
                            "estimates": _estimates(parts)}
        rows.append({"id": item["id"], "question": item["question"], "claim": item["claim"], "per_model": per_model,
                     "across": across(c["verdict"] for c in per_model.values())})
    return {"models": models, "rows": rows}


def shown_reason(item: dict) -> str:
    """A finding's reason as its verdict is shown with it: none for supports / contradicts, nor when it only
    repeats the verdict ("not run")."""
    reason = item.get("reason") or ""
    return "" if item["verdict"] in (SUPPORTS, CONTRADICTS) or reason == item["verdict"] else reason


BY_MODEL_TITLE = "Models side by side"
BY_MODEL_INTRO = ("Each model's verdict from its own rows only (number [95% interval], n of each comparison the "
                  "verdict read); across models: \"agree\" when every model supports the claim (or every model "
                  "contradicts it), \"disagree\" when one model supports and another contradicts, \"not run\" "
                  "when no model ran the experiment, else \"cannot decide\".")
POOLED_TITLE = "All models together"
POOLED_INTRO = "One verdict per question from the comparisons of every model."


def estimate_text(e: dict, labelled: bool = True) -> str:
    """One estimate of a findings_by_model cell, compactly: ``label value [low, high], n N``."""
    est = Estimate(e.get("n") or 0, e.get("value"), e.get("low"), e.get("high"))
    label = f"{e['label']} " if labelled and e.get("label") else ""
    return f"{label}{num(est.value, 3)} {interval(est, 3)}, n {est.n}"


def cell_details(cell: dict) -> list[str]:
    """What a findings_by_model cell shows after its verdict: its estimates (labelled when there are several),
    else the sentences of comparisons without an interval estimate (none, or one the judge decided by another
    test, e.g. a permutation p: an estimate without an interval over enough facts); nothing for an experiment not
    run."""
    if cell["verdict"] == NOT_RUN:
        return []
    estimates = cell.get("estimates") or []
    tested = any(e.get("low") is None and (e.get("n") or 0) >= MIN_N for e in estimates)
    if estimates and not tested:
        return [estimate_text(e, labelled=len(estimates) > 1) for e in estimates]
    return [cell["text"]] if cell.get("text") else []


def markdown_by_model(table: dict) -> list[str]:
    """findings_by_model as a Markdown table: one row per question, one column per model, then across."""
    def cell(c: dict) -> str:
        why = f" ({shown_reason(c)})" if shown_reason(c) else ""
        details = "; ".join(cell_details(c))
        return (f"**{c['verdict']}**{why}" + (f": {details}" if details else "")).replace("|", "\\|")
    models = table["models"]
    lines = [f"### {BY_MODEL_TITLE}", "", BY_MODEL_INTRO, "",
             "| Question | " + " | ".join(m.replace("|", "\\|") for m in models) + " | Across models |",
             "|" + "---|" * (len(models) + 2)]
    for row in table["rows"]:
        question = f"{row['question']} (`{row['id']}`)".replace("|", "\\|")
        lines.append(f"| {question} | " + " | ".join(cell(row["per_model"][m]) for m in models)
                     + f" | **{row['across']}** |")
    return lines + [""]


def markdown(items: list[dict], by_model: dict | None = None) -> list[str]:
    """The findings as a Markdown section; with `by_model` (findings_by_model) its table first."""
    lines = ["## Findings", "", "Each question of the paper, answered from this study (95% bootstrap intervals "
             f"over facts; none below {MIN_N} facts); the verdict is about the paper's claim.", ""]
    if by_model is not None:
        lines += markdown_by_model(by_model) + [f"### {POOLED_TITLE}", "", POOLED_INTRO, ""]
    for k, f in enumerate(items, start=1):
        why = f" ({shown_reason(f)})" if shown_reason(f) else ""
        lines.append(f"{k}. **{f['question']}** Paper: {f['claim']}. Verdict: **{f['verdict']}**{why}. {f['text']}")
    return lines + [""]


PAPER_METHODS = ("ig", "sig", "amig")  # the paper's attribution methods (Dai et al., Sundararajan et al., Chen et al.)


def scope_note(models: list[str], data: str, methods: list[str], ran: Iterable[str]) -> tuple[str, str] | None:
    """What a study left out of the paper's methods and of the experiments `--experiments` accepts (`ran`: the
    ones it ran; experiments without a finding are marked as sweeps that feed none), as (sentence, the command
    that runs everything); None when it left nothing out.

    Example:
        >>> scope_note(["smollm2-135m"], "builtin", ["ig"], ["consistency", "modification"])[0]
        'Left out of this study: methods sig, amig; experiments query-mapping, ... Everything, on every ...:'
    """
    ran = set(ran)
    skipped = [e for e in registry.experiments() if e.name in registry.names() and e.name not in ran]
    other_methods = [m for m in PAPER_METHODS if m not in methods]
    if not skipped and not other_methods:
        return None
    parts = [f"methods {', '.join(other_methods)}"] if other_methods else []
    if skipped:
        parts.append("experiments " + ", ".join(
            e.name + ("" if e.findings else " (a sweep: it feeds no finding)") for e in skipped))
    everything = (f"knowloc study --models {','.join(models)} --data {data} --methods "
                  f"{','.join(dict.fromkeys([*methods, *PAPER_METHODS]))} --experiments {','.join(registry.names())} "
                  "--out runs/full")
    return (f"Left out of this study: {'; '.join(parts)}. Everything, on every known fact (hours on 2 CPU cores; "
            "--dry-run estimates it first):", everything)
