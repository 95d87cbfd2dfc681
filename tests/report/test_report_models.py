"""Models side by side: the findings table per model (summary.json findings_by_model, summary.md, report.html) and
the figures of each experiment in one column per model."""

import json
import re
from pathlib import Path

import pytest

from knowloc.report.figures import figure_model, figures_html
from knowloc.report.findings import findings_section
from knowloc.study.findings import across
from knowloc.study.registry import experiments

N_FINDINGS = sum(len(e.findings) for e in experiments())  # every registered question gets a row, run or not

VERDICTS = {"supports", "contradicts", "cannot decide", "mixed", "partly supports", "partly contradicts", "not run"}


def _cas_row(model: str, lo: float, hi: float) -> dict:
    return {"model": model, "method": "ig", "operation": "erase", "group": "K_C", "protocol": "transductive",
            "budget": "free", "baseline": "N_i", "n": 20, "avg_diff": (lo + hi) / 2, "ci_low": lo, "ci_high": hi}


def _section(text: str, sid: str) -> str:
    return text.split(f'<section id="{sid}">')[1].split("</section>")[0]


def test_findings_section_of_a_summary_without_the_table_computes_it():
    """A two-model summary.json written before findings_by_model: the report computes the table (one column per
    model, the across verdict) above the pooled list; markup in model names is escaped."""
    model = "m<b>2</b>"
    summary = {"config": {"models": ["m1", model]},
               "cas_comparison": [_cas_row("m1", 0.05, 0.2), _cas_row(model, -0.2, -0.05)]}
    html = findings_section(summary)
    table = html.split('<table class="by-model">')[1].split("</table>")[0]
    assert "<th>Question</th><th>m1</th><th>m&lt;b&gt;2&lt;/b&gt;</th><th>Across models</th>" in table
    assert "<b>2</b>" not in html
    rows = table.split("<tbody>")[1].split("<tr>")[1:]
    assert len(rows) == N_FINDINGS and all(row.count("<td") == 4 for row in rows)
    cas = next(row for row in rows if "cas-beats-baselines" in row)
    assert re.search(r'<td><span class="verdict v-yes">supports</span><span class="est">\+0\.125 \[\+0\.050, '
                     r'\+0\.200\], n 20</span></td><td><span class="verdict v-no">contradicts</span>.*'
                     r'<td><span class="verdict v-split">disagree</span></td></tr>', cas)
    assert html.index('<table class="by-model">') < html.index('<ol class="findings">')
    assert '<span class="verdict v-open">mixed</span>' in html.split('<ol class="findings">')[1]  # pooled list


def test_single_model_findings_and_figures_are_unchanged(tmp_path):
    summary = {"config": {"models": ["m1"]}, "cas_comparison": [_cas_row("m1", 0.05, 0.2)]}
    html = findings_section(summary)
    assert "by-model" not in html and "<h3>" not in html and html.count("<li>") == N_FINDINGS
    paths = [_png(tmp_path, "cas_erase_m1_ig.png"), _png(tmp_path, "kn_heatmap_K_C.png")]
    assert figures_html(paths, ["m1"]) == figures_html(paths) == figures_html(paths, None)
    assert figures_html(paths).startswith('<div class="figs">') and "model-figs" not in figures_html(paths)


def _png(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + name.encode())
    return path


def test_figures_are_laid_out_per_model(tmp_path):
    models = ["tiny-llama", "tiny-llama-2", "org/m"]
    names = ["cas_erase_tiny-llama-2_ig.png", "cas_erase_tiny-llama_ig.png", "cs_violin_org_m_ig.png",
             "kn_heatmap_K_C.png", "attention_heatmap_K_I_tiny-llama_ig.png", "tiny-llama.png"]
    paths = [_png(tmp_path, n) for n in names]
    assert [figure_model(n, models) for n in names] == ["tiny-llama-2", "tiny-llama", "org/m", None, "tiny-llama",
                                                        "tiny-llama"]
    html = figures_html(paths, models)
    columns = html.split('<div class="figs-by-model">')[1].split("Figures of no one model")[0]
    columns = columns.split('<div class="model-figs">')[1:]
    assert [re.match(r"<h4>(.*?)</h4>", c).group(1) for c in columns] == ["tiny-llama", "tiny-llama-2", "org/m"]
    captions = [re.findall(r"<figcaption>(.*?)</figcaption>", c) for c in columns]
    assert captions == [["cas_erase_tiny-llama_ig.png", "attention_heatmap_K_I_tiny-llama_ig.png", "tiny-llama.png"],
                        ["cas_erase_tiny-llama-2_ig.png"], ["cs_violin_org_m_ig.png"]]
    shared = html.split("Figures of no one model:</p>")[1]
    assert re.findall(r"<figcaption>(.*?)</figcaption>", shared) == ["kn_heatmap_K_C.png"]
    # a model without figures keeps its column; figures of no one model alone stay one row
    alone = figures_html([paths[0]], ["tiny-llama", "tiny-llama-2"])
    assert alone.count('<div class="model-figs">') == 2 and '<p class="muted">No figures.</p>' in alone
    assert figures_html([paths[3]], models) == figures_html([paths[3]])


@pytest.fixture(scope="module")
def two_model_study(tmp_path_factory, tiny_facts):
    """A tiny real study of two models (tiny-llama and tiny-gpt2 on a few facts) and its report."""
    import torch

    from knowloc.report import build_report
    from knowloc.study.config import StudyConfig
    from knowloc.study.runner import run_study

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("two_models")
    facts = tiny_facts
    out = root / "study"
    run_study(StudyConfig(models=["tiny-llama", "tiny-gpt2"], data=str(facts), methods=["ig"], steps=2,
                          candidates=True, experiments=["consistency", "modification"], n_boot=20, locality=2,
                          facts=6, seed=1, out=str(out), progress=False), echo=lambda _: None)
    build_report(out)
    return out


def test_two_model_study_shows_the_models_side_by_side(two_model_study):
    out = two_model_study
    summary = json.loads((out / "summary.json").read_text())
    table = summary["findings_by_model"]
    models = ["tiny-llama", "tiny-gpt2"]
    assert table["models"] == models
    assert [r["id"] for r in table["rows"]] == [f["id"] for f in summary["findings"]]  # the pooled list stays
    for row in table["rows"]:
        assert set(row["per_model"]) == set(models)
        assert {c["verdict"] for c in row["per_model"].values()} <= VERDICTS
        assert row["across"] == across(row["per_model"][m]["verdict"] for m in models)
    # each model's K_I share is read from its own consistency row only
    share = next(r for r in table["rows"] if r["id"] == "k-i-share")
    for model in models:
        own = next(r for r in summary["consistency"] if r["model"] == model and r["threshold_kind"] == "static"
                   and r["specificity"] == summary["specificity_filter"])
        (estimate,) = share["per_model"][model]["estimates"]
        assert estimate == {"label": "ig", "value": own["k_i_fraction"], "low": own["k_i_ci_low"],
                            "high": own["k_i_ci_high"], "n": own["n_facts"], "verdict": estimate["verdict"],
                            "support": 0.2, "contradict": 0.1}  # k-i-share's rule: above 0.2, below 0.1
    pooled = next(f for f in summary["findings"] if f["id"] == "k-i-share")
    assert [e["label"] for e in pooled["estimates"]] == ["tiny-llama ig", "tiny-gpt2 ig"]
    assert next(r for r in table["rows"] if r["id"] == "cas-beats-baselines")["per_model"]["tiny-gpt2"]["verdict"] \
        == "not run"

    md = (out / "summary.md").read_text()
    lines = md.splitlines()
    header = lines.index("| Question | tiny-llama | tiny-gpt2 | Across models |")
    assert header < lines.index("### All models together") < md.count("\n")
    rows = lines[header + 2:header + 2 + len(table["rows"])]
    for row, expected in zip(rows, table["rows"]):
        assert f"(`{expected['id']}`)" in row and row.endswith(f"| **{expected['across']}** |")

    # the findings at a glance open summary.md's findings and the report's
    assert summary["figures"]["findings"] == ["findings.png"] and (out / "figures" / "findings.png").is_file()
    assert md.index("![findings at a glance](figures/findings.png)") < md.index("| Question |")
    report = (out / "report.html").read_text()
    findings = _section(report, "findings")
    assert findings.index('alt="findings.png"') < findings.index('<table class="by-model">')
    assert "<th>Question</th><th>tiny-llama</th><th>tiny-gpt2</th><th>Across models</th>" in findings
    assert findings.split('<table class="by-model">')[1].count("<tr>") == 1 + len(table["rows"])
    assert ".figs-by-model{" in report.split("</style>")[0]
    consistency = _section(report, "consistency")
    columns = consistency.split('<div class="figs-by-model">')[1].split("Figures of no one model")[0]
    llama, gpt2 = columns.split('<div class="model-figs">')[1:]
    assert llama.startswith("<h4>tiny-llama</h4>") and "cs_violin_tiny-llama_ig.png" in llama
    assert gpt2.startswith("<h4>tiny-gpt2</h4>") and "cs_violin_tiny-gpt2_ig.png" in gpt2
    assert "tiny-gpt2_ig.png" not in llama and "tiny-llama_ig.png" not in gpt2
    modification = _section(report, "modification")
    assert modification.count('<div class="model-figs">') == 2


def test_report_of_a_two_model_summary_written_before_the_table(two_model_study, tmp_path):
    """Without summary.json findings_by_model the report computes the same table."""
    import shutil

    from knowloc.report import build_report

    copy = tmp_path / "study"
    shutil.copytree(two_model_study, copy)
    summary = json.loads((copy / "summary.json").read_text())
    del summary["findings_by_model"]
    (copy / "summary.json").write_text(json.dumps(summary))
    again = build_report(copy).read_text()
    assert _section(again, "findings") == _section((two_model_study / "report.html").read_text(), "findings")
    assert '<table class="by-model">' in _section(again, "findings")
