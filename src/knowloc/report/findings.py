"""The report's first section: the study's answer to each question of the paper, with its verdict."""

from __future__ import annotations

from knowloc.analysis import MIN_N
from knowloc.report.tables import esc
from knowloc.study.findings import findings, shown_reason
from knowloc.study.registry import experiments

VERDICT_CLASS = {"supports": "v-yes", "contradicts": "v-no"}  # any other verdict is shown as open ("v-open")


def findings_section(summary: dict) -> str:
    """The study's findings (summary.json `findings`; computed here for a summary written before them)."""
    items = summary.get("findings")
    if items is None:
        items = findings(summary, experiments())
    parts = [f'<p class="muted">Each question of the paper, answered from this study (95% bootstrap intervals over '
             f"facts; none below {MIN_N} facts). The verdict is about the paper's claim.</p>",
             '<ol class="findings">']
    for f in items:
        why = f' <span class="muted">({esc(shown_reason(f))})</span>' if shown_reason(f) else ""
        parts.append(f'<li><b>{esc(f["question"])}</b> <span class="muted">Paper: {esc(f["claim"])}.</span> '
                     f'Verdict: <span class="verdict {VERDICT_CLASS.get(f["verdict"], "v-open")}">'
                     f'{esc(f["verdict"])}</span>{why}<br>{esc(f["text"])}</li>')
    return "\n".join(parts + ["</ol>"])
