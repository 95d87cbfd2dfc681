"""Robustness: every finding re-derived at each point of the split x score grid from the stored results (nothing
attributed or edited); the point at the study's own settings reproduces the headline verdicts; the summary names
the points where a verdict flips."""

import json

import pytest

from knowloc.study.config import StudyConfig
from knowloc.study.robustness import grid, robustness_line, run_robustness, summarize_grid
from knowloc.study.runner import run_study


def test_robustness_rederives_each_finding_from_the_store(tmp_path, study_args, monkeypatch):
    out = tmp_path / "study"
    args = study_args(out, experiments=["consistency", "modification"], facts=6, split="otsu", cs_score="cs1")
    summary = json.loads(run_study(StudyConfig(**args), echo=lambda _: None).read_text())
    for name in ("attribute", "attribute_next_token"):  # nothing is attributed again
        monkeypatch.setattr(f"knowloc.attribution.{name}",
                            lambda *a, **k: (_ for _ in ()).throw(AssertionError("attributed")))
    monkeypatch.setattr("knowloc.editing.trials.measure_edit",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("edited")))
    lines = []
    result = run_robustness(out, echo=lines.append)
    rows, summary_rows = result["robustness"], result["robustness_summary"]
    points = {(r["split"], r["score"]) for r in rows}
    assert points == {(s, c) for s in ("static", "otsu") for c in ("cs1", "cs2", "csp")}
    # the study's own point (otsu, cs1) gives the headline verdicts bit for bit
    own = {r["finding_id"]: r["finding_verdict"] for r in rows if (r["split"], r["score"]) == ("otsu", "cs1")}
    assert own == {f["id"]: f["verdict"] for f in summary["findings"] if f["verdict"] != "not run"}
    for r in summary_rows:
        assert r["headline"] == own[r["finding_id"]] and r["n_settings"] == 6 and 0 < r["same_verdict_share"] <= 1
        assert (r["same_verdict_share"] == 1) == (r["flips"] == "")
    assert {r["threshold"] for r in rows} == {0.2} and all(r["model"] == "tiny-llama" for r in rows)
    stored = json.loads((out / "summary.json").read_text())
    assert stored["robustness_summary"] == summary_rows and (out / "tables" / "robustness.csv").is_file()
    assert len(lines) == len(summary_rows) and lines[0].startswith(summary_rows[0]["finding_id"])
    from knowloc.report.html import build_report

    report = build_report(out).read_text()
    assert report.count("Robustness (knowloc robustness): [tiny-llama]") == len(summary_rows)


def test_the_summary_names_the_one_point_where_a_verdict_flips():
    def row(split, score, verdict, value):
        return {"finding_id": "k-i-share", "model": "m", "split": split, "score": score, "value": value,
                "finding_verdict": verdict}
    rows = [row("static", "cs2", "supports", 0.6), row("static", "cs1", "supports", 0.7),
            row("otsu", "cs2", "cannot decide", 0.3), row("otsu", "cs1", "supports", 0.5)]
    (summary,) = summarize_grid(rows)
    assert summary == {"finding_id": "k-i-share", "model": "m", "n_settings": 4, "headline": "supports",
                       "same_verdict_share": 0.75, "value_min": 0.3, "value_max": 0.7,
                       "flips": "split=otsu score=cs2: cannot decide"}
    assert robustness_line([summary], "k-i-share") == ("[m] supports at 3 of 4 analysis settings "
                                                       "(split=otsu score=cs2: cannot decide).")
    assert robustness_line([summary], "other") is None


def test_the_grid_starts_at_the_studys_own_settings():
    points = grid(StudyConfig(split="otsu", cs_score="csp"))
    assert points[0] == {"split": "otsu", "cs_score": "csp"} and len(points) == 6
    assert len({tuple(p.items()) for p in points}) == 6


def test_robustness_of_a_directory_without_a_study_is_one_line(tmp_path):
    from knowloc.cli import main

    assert main(["robustness", str(tmp_path)]) == 2
    with pytest.raises(Exception):
        run_robustness(tmp_path)
