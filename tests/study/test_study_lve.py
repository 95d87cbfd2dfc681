"""The localization-vs-editing experiment end to end on a tiny model: rome and ft at every chosen layer on a seeded
subset, edits once for both methods, tracing added, Hase et al.'s regression rows and the finding; bad settings."""

import json
import re

import pytest

from knowloc.errors import KnowlocError
from knowloc.study.config import StudyConfig
from knowloc.study.runner import run_study

LVE_ARGS = dict(experiments=["consistency", "localization-vs-editing"], methods=["ig", "amig"], trace_samples=2,
                trace_window=2, lve_facts=6, lve_layers=["every1"], rome_samples=4, rome_steps=3, rome_prefixes=1,
                ft_steps=3)


@pytest.fixture
def edits(monkeypatch) -> list[tuple[str, str, int]]:
    """(prompt, editor class, layer) of every edit localization-vs-editing makes, in order, as the study runs."""
    from knowloc.study.experiments import lve

    made = []
    real = lve.measure_edit

    def spy(baseline, editor, q, request, *a, **k):
        made.append((request.prompt, type(editor).__name__, request.layer))
        return real(baseline, editor, q, request, *a, **k)
    monkeypatch.setattr(lve, "measure_edit", spy)
    return made


def test_lve_study_end_to_end(tmp_path, study_args, edits):
    out = tmp_path / "study"
    config = StudyConfig(**study_args(out, **LVE_ARGS))
    assert "tracing" in config.experiments  # the tracing signal comes with it
    summary = json.loads(run_study(config, echo=lambda _: None).read_text())
    n_subset = min(6, summary["facts"]["tiny-llama"])
    assert len(edits) <= n_subset * 2 * 3 and len(set(edits)) == len(edits)  # once per fact, not per method
    assert {layer for _, _, layer in edits} == {0, 1, 2}
    rows = summary["localization_vs_editing"]
    assert {(r["signal"], r["method"]) for r in rows} == {("tracing", None), ("kn", "ig"), ("kn", "amig")}
    for r in rows:
        assert r["editor"] in ("rome", "ft") and r["n"] <= n_subset
        if r["n"]:
            assert r["r2_layer_signal"] >= r["r2_layer"] - 1e-9  # nested models
    tracing_rows = [r for r in rows if r["signal"] == "tracing"]
    assert all(r["n"] == n_subset for r in tracing_rows) or not edits
    assert {c["layer"] for c in summary["lve_correlations"]} <= {0, 1, 2}
    assert "localization-informs-editing" in {f["id"] for f in summary["findings"]}
    assert "## Localization vs editing" in (out / "summary.md").read_text()
    from knowloc.report.html import build_report

    html = build_report(out).read_text()
    assert "tracing_tiny-llama.png" in html and "Localization vs editing" in html and "R^2 layer + signal" in html


@pytest.mark.parametrize("kwargs, message", [(dict(lve_facts=0), "--lve-facts"),
                                             (dict(lve_layers=["every0"]), "--lve-layers"),
                                             (dict(lve_layers=["x"]), "--lve-layers"),
                                             (dict(lve_editors=["memit"]), "--lve-editors"),
                                             (dict(lve_editors=[]), "--lve-editors"),
                                             (dict(trace_samples=0), "--trace-samples"),
                                             (dict(trace_noise=-1.0), "--trace-noise")])
def test_bad_settings(tmp_path, study_args, kwargs, message):
    with pytest.raises(KnowlocError, match=message):
        StudyConfig(**study_args(tmp_path / "s", **kwargs))


def test_a_layer_beyond_the_model_writes_nothing(tmp_path, study_args):
    out = tmp_path / "s"
    with pytest.raises(KnowlocError, match="--lve-layers 9 out of range"):
        run_study(StudyConfig(**study_args(out, **{**LVE_ARGS, "lve_layers": ["9"]})), echo=lambda _: None)
    assert not (out / "summary.json").exists()


def test_dry_run_counts_only_the_units_that_work(tmp_path, study_args):
    """tracing works in the first method's units, localization-vs-editing on its subset only: the plan has units
    for those alone, and times them once per fact rather than per query."""
    from knowloc.study import plan

    lines = []
    config = StudyConfig(**study_args(tmp_path / "dry", **{**LVE_ARGS, "lve_facts": 2}))
    result = plan.print_plan(config, echo=lines.append)
    units = result["units"]["tiny-llama"]
    n_facts = int(re.search(r"tiny-llama: (\d+) facts studied", "\n".join(lines)).group(1))
    tracing = next(l for l in lines if l.strip().startswith("tracing:"))
    lve_line = next(l for l in lines if l.strip().startswith("localization-vs-editing:") and "units" in l)
    assert f"{units['tracing']} fact units missing" in tracing and "s each" in tracing
    assert units["localization-vs-editing"] == 2 and "2 fact units missing" in lve_line and "s each" in lve_line
    assert units["tracing"] == n_facts  # one unit per fact, not one per method
    assert not (tmp_path / "dry").exists()


def test_more_facts_keep_the_summary_to_the_subset(tmp_path, study_args):
    """--facts is a view: a store grown to more facts may hold edits of an earlier subset, which the summary
    leaves out (n never exceeds --lve-facts)."""
    out = tmp_path / "s"
    args = {**LVE_ARGS, "lve_facts": 2, "lve_layers": ["0"], "methods": ["ig"]}
    run_study(StudyConfig(**study_args(out, facts=3, **args)), echo=lambda _: None)
    summary = json.loads(run_study(StudyConfig(**study_args(out, **args)), echo=lambda _: None).read_text())
    assert summary["localization_vs_editing"] and all(r["n"] <= 2 for r in summary["localization_vs_editing"])


def test_more_facts_keep_the_subset_and_its_edits(tmp_path, study_args, edits):
    """The subset is the first --lve-facts studied facts in the study's seeded order: growing --facts keeps it,
    so the grown study edits nothing new."""
    out = tmp_path / "s"
    args = {**LVE_ARGS, "lve_facts": 2, "lve_layers": ["0"], "methods": ["ig"]}
    small = json.loads(run_study(StudyConfig(**study_args(out, facts=3, **args)), echo=lambda _: None).read_text())
    first = list(edits)
    grown = json.loads(run_study(StudyConfig(**study_args(out, **args)), echo=lambda _: None).read_text())
    assert grown["facts"]["tiny-llama"] > small["facts"]["tiny-llama"] == 3
    assert first and edits == first  # no new edit: the subset stayed


def test_a_larger_lve_facts_edits_only_the_added_facts(tmp_path, study_args, edits):
    """--lve-facts is a view on one seeded order: raising it resumes the store and edits just the facts it adds."""
    out = tmp_path / "s"
    args = {**LVE_ARGS, "lve_layers": ["0"], "methods": ["ig"]}
    run_study(StudyConfig(**study_args(out, **{**args, "lve_facts": 1})), echo=lambda _: None)
    first = {prompt for prompt, _, _ in edits}
    edits.clear()
    summary = json.loads(run_study(StudyConfig(**study_args(out, **{**args, "lve_facts": 2})),
                                   echo=lambda _: None).read_text())
    added = {prompt for prompt, _, _ in edits}
    assert len(first) == 1 and len(added) == 1 and not first & added
    assert {r["n"] for r in summary["localization_vs_editing"]} == {2}


def test_lve_editors_rome_alone_makes_only_the_rome_edits_with_the_same_numbers(tmp_path, study_args, edits):
    """--lve-editors rome: only ROME edits (no ft, so no ft calibration), and its rows equal the rome rows of a
    study with both editors."""
    from knowloc.study import calibration

    args = {**LVE_ARGS, "lve_facts": 2, "lve_layers": ["0", "2"], "methods": ["ig"]}
    both = json.loads(run_study(StudyConfig(**study_args(tmp_path / "both", **args)),
                                echo=lambda _: None).read_text())
    assert {cls for _, cls, _ in edits} == {"Rome", "FineTune"}
    edits.clear()
    config = StudyConfig(**study_args(tmp_path / "rome", **args, lve_editors="rome"))
    assert config.lve.editors == ["rome"] and not calibration.needed(config)
    alone = json.loads(run_study(config, echo=lambda _: None).read_text())
    assert edits and {cls for _, cls, _ in edits} == {"Rome"} and {layer for *_, layer in edits} == {0, 2}

    def rows(summary, key):  # as JSON text, so that a nan bound compares equal to itself
        return json.dumps([r for r in summary[key] if r["editor"] == "rome"], sort_keys=True)
    assert {r["editor"] for r in alone["localization_vs_editing"]} == {"rome"}
    for key in ("localization_vs_editing", "lve_correlations"):
        assert rows(alone, key) != "[]" and rows(alone, key) == rows(both, key)
