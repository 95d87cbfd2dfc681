"""The report's first section: the study's answer to each question of the paper, with its verdict; for a study
of 2+ models, first the models side by side (one column per model and the across-models verdict)."""

from __future__ import annotations

from knowloc.analysis import MIN_N
from knowloc.report.tables import esc
from knowloc.study.findings import (BY_MODEL_INTRO, BY_MODEL_TITLE, POOLED_INTRO, POOLED_TITLE,
                                    cell_details, findings, findings_by_model, shown_reason)
from knowloc.study.registry import experiments
from knowloc.study.robustness import robustness_line

VERDICT_CLASS = {"supports": "v-yes", "contradicts": "v-no"}  # any other verdict is shown as open ("v-open")
ACROSS_CLASS = {"disagree": "v-split"}  # "agree: <verdict>" takes its verdict's class; "cannot decide" is open


def _verdict(verdict: str, css: str | None = None) -> str:
    return f'<span class="verdict {css or VERDICT_CLASS.get(verdict, "v-open")}">{esc(verdict)}</span>'


def _across(across: str) -> str:
    agreed = across.split(": ", 1)[1] if across.startswith("agree: ") else None
    return _verdict(across, VERDICT_CLASS.get(agreed) if agreed else ACROSS_CLASS.get(across))


def _cell(cell: dict) -> str:
    why = f' <span class="muted">({esc(shown_reason(cell))})</span>' if shown_reason(cell) else ""
    css = "est" if cell.get("estimates") else "est-text"  # a number on one line; a sentence wraps
    details = "".join(f'<span class="{css}">{esc(line)}</span>' for line in cell_details(cell))
    return _verdict(cell["verdict"]) + why + details


def by_model_table(table: dict) -> str:
    """findings_by_model as an HTML table: one row per question, one column per model, then across models."""
    models = table["models"]
    head = "<th>Question</th>" + "".join(f"<th>{esc(m)}</th>" for m in models) + "<th>Across models</th>"
    body = []
    for row in table["rows"]:
        cells = "".join(f"<td>{_cell(row['per_model'][m])}</td>" for m in models)
        body.append(f'<tr><td class="wrap"><b>{esc(row["question"])}</b> <code>{esc(row["id"])}</code></td>{cells}'
                    f"<td>{_across(row['across'])}</td></tr>")
    return (f'<div class="tablewrap"><table class="by-model"><thead><tr>{head}</tr></thead><tbody>\n'
            + "\n".join(body) + "\n</tbody></table></div>")


def findings_section(summary: dict) -> str:
    """The study's findings (summary.json `findings` and, for 2+ models, `findings_by_model`; computed here for
    a summary written before them)."""
    items = summary.get("findings")
    if items is None:
        items = findings(summary, experiments())
    by_model = summary.get("findings_by_model")
    if by_model is None:
        by_model = findings_by_model(summary, experiments())  # None for a single-model study
    parts = [f'<p class="muted">Each question of the paper, answered from this study (95% bootstrap intervals over '
             f"facts; none below {MIN_N} facts). The verdict is about the paper's claim.</p>"]
    if by_model is not None:
        parts += [f"<h3>{esc(BY_MODEL_TITLE)}</h3>", f'<p class="muted">{esc(BY_MODEL_INTRO)}</p>',
                  by_model_table(by_model), f"<h3>{esc(POOLED_TITLE)}</h3>", f'<p class="muted">{esc(POOLED_INTRO)}</p>']
    parts.append('<ol class="findings">')
    for f in items:
        why = f' <span class="muted">({esc(shown_reason(f))})</span>' if shown_reason(f) else ""
        robust = robustness_line(summary.get("robustness_summary") or [], f["id"])
        robust = f'<br><span class="muted">Robustness (knowloc robustness): {esc(robust)}</span>' if robust else ""
        parts.append(f'<li><b>{esc(f["question"])}</b> <span class="muted">Paper: {esc(f["claim"])}.</span> '
                     f'Verdict: {_verdict(f["verdict"])}{why}<br>{esc(f["text"])}{robust}</li>')
    return "\n".join(parts + ["</ol>"])
