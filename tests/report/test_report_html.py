"""The HTML study report (knowloc.report): self-contained, complete, escaped, deterministic."""

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from knowloc.errors import KnowlocError
from knowloc.report import build_report, environment_info

SUBJECTS = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Brazil", "Canada"]
TEMPLATES = {
    "R1": ["The capital of [X] is [Y].", "[X]'s capital city is [Y].", "The seat of government of [X] is [Y].",
           "In [X], the capital is [Y]."],
    "R2": ["[X] is located in [Y].", "[X] lies on the continent of [Y].", "The continent of [X] is [Y].",
           "[X] is a country in [Y]."],
}
OBJECTS = {"R1": ["Paris", "Rome"], "R2": ["Europe", "Africa"]}
SECTION_IDS = {"consistency": "Consistency", "modification": "Modification", "query-mapping": "Query-KN mapping",
               "attention": "Attention (knowledge synapses)", "cas": "CAS"}
XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A tiny real study (tiny-llama knows part of a small fact set with candidates=True)."""
    from knowloc.study.config import StudyConfig
    from knowloc.study.runner import run_study

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report_study")
    facts = root / "facts.jsonl"
    lines = [{"id": f"{relation}-{k}", "relation": relation, "subject": subject,
              "object": OBJECTS[relation][k % 2], "templates": templates}
             for relation, templates in TEMPLATES.items() for k, subject in enumerate(SUBJECTS)]
    facts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = root / "study"
    run_study(StudyConfig(models=["tiny-llama"], data=str(facts), methods=["ig"], steps=2, candidates=True,
                          experiments=["consistency", "modification", "query-mapping", "cas"], n_boot=20,
                          locality=2, facts=4, seed=1, out=str(out), progress=False), echo=lambda _: None)
    return out


@pytest.fixture(scope="module")
def report(study) -> str:
    path = build_report(study, environment_info(device="cpu", wall_s=12.5, peak_rss_mb=700.0))
    assert path == study / "report.html"
    return path.read_text(encoding="utf-8")


def test_report_has_every_section(study, report):
    for sid, heading in SECTION_IDS.items():
        assert f'<section id="{sid}"><h2>{heading}</h2>' in report
        assert f'href="#{sid}"' in report  # table of contents
    assert '<section id="config"><h2>Configuration &amp; environment</h2>' in report
    # attention was not run; the others were
    attention = report.split('<section id="attention">')[1].split("</section>")[0]
    assert "not run" in attention
    for sid in ("consistency", "modification", "query-mapping", "cas"):
        assert "not run" not in report.split(f'<section id="{sid}">')[1].split("</section>")[0]
    for text in ("K_I fraction [95% CI]", "Welch p", "null gap", "Facts in K_I under every method",
                 "K_I fraction per relation", "Rel", "dlogPPL (median)", "CAS vs. baselines", "Scores per selection",
                 "Non-specific neurons and the most frequent fact KNs"):
        assert text in report
    # environment: versions, device, wall time
    for text in ("torch version", "transformers version", "numpy version", "python version", "knowloc version",
                 "12.5 s", "700 MB", "<td>cpu</td>"):
        assert text in report


def test_findings_come_first_and_configuration_last(study, report):
    """Each question of the paper is answered with its number and a CI or a reason, before any table."""
    summary = json.loads((study / "summary.json").read_text())
    assert report.index('<section id="findings"><h2>Findings</h2>') < report.index("<table")
    assert report.index('<section id="config">') > report.index('<section id="facts">')
    findings = report.split('<section id="findings">')[1].split("</section>")[0]
    from knowloc.study.registry import experiments

    every = [f.id for e in experiments() for f in e.findings]  # one item per registered question, run or not
    assert findings.count("<li>") == len(summary["findings"]) == len(every)
    assert {"kc-ki-generalization", "kn-vs-editors", "tracing-agrees-with-kns"} <= set(every)
    for item in summary["findings"]:
        assert html.escape(item["question"]) in findings
        assert item["verdict"] in ("supports", "contradicts", "cannot decide", "mixed", "partly supports",
                                   "partly contradicts", "not run")
        if item["verdict"] == "not run":
            assert "Not measured" in item["text"]
        else:  # a number with an interval or n, or the reason it cannot decide
            assert re.search(r"\d", item["text"]) and ("[" in item["text"] or "n " in item["text"]
                                                        or "facts" in item["text"] or item["reason"])
            if item["verdict"] not in ("supports", "contradicts"):
                assert item["reason"]
    md = (study / "summary.md").read_text()
    assert md.index("## Findings") < md.index("|")
    # what the study left out, and the command that runs everything, open the findings of both
    left = "Left out of this study: methods sig, amig; experiments attention, knockout, cas-sweep (a sweep: it "
    assert findings.index(html.escape(left)) < findings.index("<li>") and md.index(left) < md.index("1. **")
    assert "<code>knowloc study --models tiny-llama --data " in findings and "--methods ig,sig,amig " in md


def test_heatmap_neurons_are_described(study, report):
    section = report.split('<section id="figure-neurons">')[1].split("</section>")[0]
    summary = json.loads((study / "summary.json").read_text())
    assert summary["kn_heatmap_neurons"]
    for r in summary["kn_heatmap_neurons"]:
        assert f"L{r['layer']}#{r['index']}" in section
    assert section.count("<tr>") >= len(summary["kn_heatmap_neurons"])


def test_every_figure_is_embedded(study, report):
    pngs = sorted((study / "figures").glob("*.png"))
    assert len(pngs) >= 5
    for png in pngs:
        assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" in report
        assert png.name in report
    # each under its own section
    mod = report.split('<section id="modification">')[1].split("</section>")[0]
    assert "modification_erase_tiny-llama_ig.png" in mod and "cs_violin" not in mod
    cons = report.split('<section id="consistency">')[1].split("</section>")[0]
    assert "cs_violin_tiny-llama_ig.png" in cons and "kn_heatmap_K_" in cons


def test_self_contained(report):
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", report, re.I)
    assert "http://" not in report and "https://" not in report
    assert "@import" not in report and "<link" not in report
    assert not re.search(r"<script[^>]*\bsrc\s*=", report, re.I)
    assert re.findall(r"""<img[^>]*src="([^"]{0,30})""", report)
    assert all(src.startswith("data:image/png;base64,")
               for src in re.findall(r"""<img[^>]*src="([^"]*)\"""", report))


def test_drill_down_lists_every_studied_fact(study, report):
    summary = json.loads((study / "summary.json").read_text())
    assert report.count('<details class="fact">') == summary["facts"]["tiny-llama"] == 4
    drill = report.split('<section id="facts">')[1]
    assert re.search(r"CS1 \d\.\d{3} · CS2 \d\.\d{3} · CS<sub>p</sub> \d\.\d{3} · group", drill)
    assert re.search(r"L\d+#\d+", drill)
    assert "recomputed here" not in drill
    # the groups and KN lists shown are the ones the study used (recomputed here from the store)
    from knowloc.study.config import StudyConfig
    from knowloc.study.context import StudyContext
    from knowloc.study.store import Store

    cfg = StudyConfig(**summary["config"])
    store = Store(study / "results.sqlite", readonly=True)
    try:
        ctx = StudyContext(config=cfg, store=store, out=study)
        ctx.load_facts("tiny-llama")
        expected = ctx.neurons.groups("tiny-llama", "ig")
        facts = ctx.facts["tiny-llama"]
        used = {f.fact_id: ctx.neurons.kn_lists("tiny-llama", "ig", f.fact_id) for f in facts}
    finally:
        store.close()
    for fact in facts:
        block = drill.split(f"<code>{fact.fact_id}</code>")[1].split("</details>")[0]
        assert f'ig: <span class="g-{expected[fact.fact_id]}">' in block.split("</summary>")[0]
        for prompt in fact.prompts:
            assert html.escape(prompt) in block
        assert "model&#x27;s top-3" in block and block.count("&#x27;") >= 6  # top-3 tokens of every paraphrase
        assert '<span title="promotes ' in block  # every KN says what its value vector writes
        first = used[fact.fact_id][0][:3]
        assert all(f"L{l}#{i}</span>" in block for l, i in first)


def test_rebuild_is_deterministic(study, report):
    again = build_report(study, environment_info(device="cpu", wall_s=12.5, peak_rss_mb=700.0))
    assert again.read_text(encoding="utf-8") == report
    first = build_report(study).read_bytes()
    assert build_report(study).read_bytes() == first
    assert not list(study.glob("*.tmp"))


def test_environment_info():
    env = environment_info()
    assert set(env) == {"versions"}
    assert set(env["versions"]) == {"knowloc", "torch", "transformers", "numpy", "python"}
    assert env["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    full = environment_info(device="cuda:0", wall_s=3.0, peak_rss_mb=1.5)
    assert (full["device"], full["wall_s"], full["peak_rss_mb"]) == ("cuda:0", 3.0, 1.5)


def _hand_made_study(out: Path, groups: bool = True) -> Path:
    """A store and summary.json written directly, with markup in every data-derived string; with ``groups``, the
    facts' scores and groups (static split) stored as a study stores them (without: a store of an older knowloc)."""
    from knowloc.analysis import consistency_scores
    from knowloc.study.config import StudyConfig
    from knowloc.study.store import Store

    model = "tiny<b>model</b>"
    cfg = StudyConfig(models=[model], data=f"facts{XSS}.jsonl", methods=["ig"], experiments=["consistency"])
    store = Store(out / "results.sqlite")
    store.check_config(cfg.identity())
    rows = []
    for k in range(3):
        rows.append({"fact_id": f"f{k}<i>", "relation": "R<1>&", "subject": XSS if k == 0 else f"S{k}",
                     "object": 'Paris"\'', "queries": [
                         {"template": "[X] t1", "text": f"{XSS} is in" if k == 0 else f"S{k} t1", "top1": True,
                          "prob": 0.5},
                         {"template": "[X] t2", "text": "second <img src=x onerror=alert(2)>", "top1": True,
                          "prob": 0.25},
                         {"template": "[X] t3", "text": "third", "top1": False, "prob": float("nan")}]})
    store.save_probe(model, rows)
    for k in range(3):
        for q in range(2):
            kn = [(0, 1), (1, 2 + k + q)] + [(2, i) for i in range(40 if k == 0 else 3)]
            store.save_attribution(model, "ig", f"f{k}<i>", q, 0.5, kn, torch.zeros(3, 64))
    if groups:
        stored = []
        for fact_id, lists in store.kn_lists_all(model, "ig").items():
            scores = consistency_scores([set(lists[q]) for q in sorted(lists)], p=cfg.p)
            stored.append({"fact_id": fact_id, **scores, "kn": lists,
                           "group": "K_C" if scores[cfg.cs_score] >= cfg.tau else "K_I"})
        store.save_groups(model, "ig", stored)
    store.close()
    nan = float("nan")
    summary = {"config": cfg.summary_config(), "facts": {model: 3},
               "consistency": [{"model": model, "method": "ig", "n_facts": 3, "threshold_kind": "static",
                                "threshold": 0.3, "k_i_fraction": 1 / 3, "k_i_ci_low": 0.0, "k_i_ci_high": 1.0,
                                "welch_p": nan, "cs_mean": 0.25, "null_mean": nan, "null_gap": nan, "null_p": nan,
                                "n_null": 0, "score": "cs2", "note<script>": XSS}],
               "consistency_relations": [{"model": model, "method": "ig", "relation": "R<1>&",
                                          "threshold_kind": "static", "n": 3, "k_i_fraction": 0.333333,
                                          "ci_low": 0.0, "ci_high": 1.0}],
               "consistency_all_methods": []}
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "figures").mkdir()
    (out / "figures" / "custom_plot.png").write_bytes(b"\x89PNG\r\n\x1a\n-not-really-a-png")
    (out / "figures" / "attention_old.png").write_bytes(b"\x89PNG\r\n\x1a\n-stale")
    return out


def test_data_text_is_escaped(tmp_path):
    out = _hand_made_study(tmp_path)
    text = build_report(out, {"device": XSS, "extra<key>": "v<al>"}).read_text(encoding="utf-8")
    assert XSS not in text
    assert XSS_ESCAPED in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(2)&gt;" in text
    assert "<b>model</b>" not in text and "tiny&lt;b&gt;model&lt;/b&gt;" in text
    assert "R&lt;1&gt;&amp;" in text and "R<1>" not in text
    assert "f0&lt;i&gt;" in text and "f0<i>" not in text
    assert "Paris&quot;&#x27;" in text
    assert "extra&lt;key&gt;" in text and "v&lt;al&gt;" in text
    # the only script is the report's own print helper
    assert text.count("<script>") == 1
    # nan is a dash; p-values in 2 significant digits; CIs as [lo, hi]
    assert '<td class="num">–</td>' in text
    assert '0.33 <span class="ci">[0.00, 1.00]</span>' in text
    # KN lists are truncated with a count
    assert "(+12 more)" in text  # 42 neurons, 30 shown
    assert text.count('<details class="fact">') == 3
    # sections not run; figures summary.json does not record for an experiment are still shown, under "Other"
    for sid in ("modification", "query-mapping", "attention", "cas"):
        assert "not run" in text.split(f'<section id="{sid}">')[1].split("</section>")[0]
    other = text.split('<section id="other-figures">')[1].split("</section>")[0]
    assert "attention_old.png" in other and "custom_plot.png" in other
    # a figure is shown in the section of the experiment that recorded it, whatever its name
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "figures": {"attention": ["custom_plot.png"]}}))
    text = build_report(out).read_text(encoding="utf-8")
    assert "custom_plot.png" in text.split('<section id="attention">')[1].split("</section>")[0]
    assert "attention_old.png" in text.split('<section id="other-figures">')[1].split("</section>")[0]


def test_attention_rows_render_with_their_intervals(tmp_path):
    out = _hand_made_study(tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    base = {"model": "m", "method": "ig", "group": "K_C", "synapses": "related", "alpha": 0.0, "n": 3}
    (out / "summary.json").write_text(json.dumps({**summary, "figures": {"attention": ["attention_old.png"]},
                                                  "attention": [
        {**base, "dkn_activation": -0.25, "dkn_activation_ci_low": -0.5, "dkn_activation_ci_high": -0.125,
         "dprob": -0.0625, "dprob_ci_low": -0.125, "dprob_ci_high": 0.0},
        {**base, "synapses": "irrelevant", "alpha": 2.0, "dkn_activation": 0.5, "dprob": 0.25}]}))
    text = build_report(out).read_text(encoding="utf-8")
    section = text.split('<section id="attention">')[1].split("</section>")[0]
    assert "not run" not in section and "attention_old.png" in section
    assert '-0.250 <span class="ci">[-0.500, -0.125]</span>' in section
    assert '-0.062 <span class="ci">[-0.125, +0.000]</span>' in section
    # no interval given for n = 3 facts: the cell says why
    assert '<td class="num">+0.500 <span class="ci">(n=3 &lt; 5: no CI)</span></td>' in section
    assert '<span class="g-K_C">K_C</span>' in section


def test_drill_down_of_a_store_without_stored_groups_says_rerun(tmp_path):
    """A store written before the study stored its groups: the drill-down recomputes nothing; it is one line that
    says to rerun the study (issue 33), and the rest of the report is built as usual."""
    out = _hand_made_study(tmp_path, groups=False)
    text = build_report(out).read_text(encoding="utf-8")
    drill = text.split('<section id="facts">')[1].split("</section>")[0]
    assert "predates stored groups" in drill and "rerun the study" in drill
    assert drill.count('<p class="notrun">') == 1 and '<details class="fact">' not in drill
    assert "recomputed here" not in text
    assert '0.33 <span class="ci">[0.00, 1.00]</span>' in text  # the consistency section as before


def test_report_of_a_summary_whose_config_lacks_settings(tmp_path):
    """An old summary.json without the split settings: the report takes them from StudyConfig's defaults."""
    from knowloc.analysis import consistency_scores
    from knowloc.study.config import StudyConfig

    out = _hand_made_study(tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("tau", "p", "cs_score", "split", "min_known", "specificity", "update_rule", "lambda2"):
        del summary["config"][key]
    (out / "summary.json").write_text(json.dumps(summary))
    text = build_report(out).read_text(encoding="utf-8")
    default = StudyConfig(models=["m"])
    assert f"Facts a model answers in at least {default.min_known} paraphrases" in text
    assert f"<b>{default.split}</b> split of {default.cs_score.upper()}" in text
    for k in range(3):
        sets = [{(0, 1), (1, 2 + k + q)} | {(2, i) for i in range(40 if k == 0 else 3)} for q in range(2)]
        group = "K_C" if consistency_scores(sets, p=default.p)[default.cs_score] >= default.tau else "K_I"
        block = text.split(f"<code>f{k}&lt;i&gt;</code>")[1].split("</summary>")[0]
        assert f'ig: <span class="g-{group}">{group}</span>' in block
    # the configuration table shows what summary.json holds, not the defaults filled in
    config_table = text.split("<h3>Study configuration</h3>")[1].split("</table>")[0]
    assert '<td class="k">tau</td>' not in config_table and '<td class="k">seed</td>' in config_table


def test_invalid_stored_config_is_an_error(tmp_path):
    out = _hand_made_study(tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "config": {**summary["config"], "tau": 2.0}}))
    with pytest.raises(KnowlocError, match="stored configuration.*tau"):
        build_report(out)
    assert not (out / "report.html").exists()


def test_missing_summary_is_an_error(tmp_path):
    with pytest.raises(KnowlocError, match="summary.json"):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


@pytest.mark.skipif(not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None, reason="no /usr/bin/chromium")
def test_renders_in_headless_chromium(study, report, tmp_path):
    shot = tmp_path / "report.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
           (study / "report.html").resolve().as_uri()]
    try:
        subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish within 120 s")
    assert shot.exists() and shot.stat().st_size > 10_000
    # the findings section as Chromium renders it: every question, with a verdict
    text_dump = tmp_path / "dump.html"
    dom = subprocess.run([*cmd[:-3], "--dump-dom", (study / "report.html").resolve().as_uri()],
                         capture_output=True, timeout=120, check=False, text=True).stdout
    text_dump.write_text(dom)
    rendered = html.unescape(dom.split('<section id="findings">')[1].split("</section>")[0])
    summary = json.loads((study / "summary.json").read_text())
    for item in summary["findings"]:
        assert item["question"] in rendered and item["verdict"] in rendered
