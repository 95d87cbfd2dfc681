"""Robustness: every finding re-derived at each point of the analysis grid from the stored results (nothing
attributed or edited; the KN threshold's sets selected from the stored maps); the point at the study's own settings
reproduces the headline verdicts; the summary names the points where a verdict flips."""

import json

import pytest

from knowloc.study.config import StudyConfig
from knowloc.errors import KnowlocError
from knowloc.study.robustness import (flip_text, grid, reuses_trials, robustness_line, robustness_plan,
                                      run_robustness, summarize_grid)
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
    point = lambda r: (r["threshold"], r["specificity"], r["split"], r["score"])  # noqa: E731
    own_point = (0.2, 0.05, "otsu", "cs1")
    assert point(rows[0]) == own_point and result["points"] == 3 * 4 * 2 * 3
    # the study's own point gives the headline verdicts bit for bit
    own = {r["finding_id"]: r["finding_verdict"] for r in rows if point(r) == own_point}
    assert own == {f["id"]: f["verdict"] for f in summary["findings"] if f["verdict"] != "not run"}
    # the editing findings vary over split x score only (their trials hold at the study's KN sets); the
    # consistency findings, read from the attribution maps, over every threshold x F x split x score
    for r in summary_rows:
        assert r["headline"] == own[r["finding_id"]] and 0 < r["same_verdict_share"] <= 1
        assert r["n_settings"] == (72 if r["finding_id"] in ("paraphrases-share-kns", "k-i-share") else 6)
        assert (r["same_verdict_share"] == 1) == (r["flips"] == "")
        assert "threshold=0.2" not in r["flips"] and "split=otsu" not in r["flips"]  # only what differs is named
    editing = {point(r) for r in rows if r["finding_id"] == "kc-ki-generalization"}
    assert editing == {(0.2, 0.05, s, c) for s in ("static", "otsu") for c in ("cs1", "cs2", "csp")}
    assert {r["threshold"] for r in rows} == {0.1, 0.2, 0.3} and {r["specificity"] for r in rows} == {1.0, 0.02, 0.05, 0.1}
    assert all(r["model"] == "tiny-llama" for r in rows)
    stored = json.loads((out / "summary.json").read_text())
    assert stored["robustness_summary"] == summary_rows and (out / "tables" / "robustness.csv").is_file()
    assert len(lines) == len(summary_rows) + 1 and lines[0].startswith(summary_rows[0]["finding_id"])
    assert lines[-1].startswith("robustness: 72 grid points in ") and "nothing attributed or edited" in lines[-1]
    curves = stored["figures"]["robustness"]
    assert "robustness_k-i-share.png" in curves and all((out / "figures" / name).is_file() for name in curves)
    from knowloc.report.html import build_report

    report = build_report(out).read_text()
    assert report.count("Robustness (knowloc robustness): [tiny-llama]") == len(summary_rows)
    assert report.count('alt="robustness_') == len(curves)


def test_a_store_read_at_another_threshold_selects_from_the_stored_maps(tmp_path, study_args):
    from knowloc.analysis import select_neurons
    from knowloc.study.reader import StudyReader
    from knowloc.study.robustness import StoreAtThreshold

    out = tmp_path / "study"
    run_study(StudyConfig(**study_args(out, experiments=["consistency"], facts=3)), echo=lambda _: None)
    with StudyReader(out) as study:
        store = study.store()
        fact_id = next(iter(store.kn_lists_all("tiny-llama", "ig")))
        maps = store.scores("tiny-llama", "ig", fact_id)
        same, low, stored = StoreAtThreshold(store, 0.2), StoreAtThreshold(store, 0.1), StoreAtThreshold(store, None)
        assert same.kn_lists("tiny-llama", "ig", fact_id) == store.kn_lists("tiny-llama", "ig", fact_id)
        assert stored.kn_lists("tiny-llama", "ig", fact_id) == store.kn_lists("tiny-llama", "ig", fact_id)
        lists = low.kn_lists("tiny-llama", "ig", fact_id)
        assert lists == {q: select_neurons(m, threshold=0.1) for q, m in maps.items()}
        assert all(len(lists[q]) >= len(kn) for q, kn in store.kn_lists("tiny-llama", "ig", fact_id).items())
        assert any(len(lists[q]) > len(kn) for q, kn in store.kn_lists("tiny-llama", "ig", fact_id).items())
        assert set(low.kn_sets("tiny-llama", "ig")) == set(store.kn_sets("tiny-llama", "ig"))
        assert low.trials("consistency") == store.trials("consistency")  # everything else is the store's


def test_the_summary_names_the_one_point_where_a_verdict_flips():
    def row(threshold, split, verdict, value):
        return {"finding_id": "k-i-share", "model": "m", "threshold": threshold, "specificity": 1.0, "split": split,
                "score": "cs2", "value": value, "finding_verdict": verdict}
    rows = [row(0.2, "static", "supports", 0.6), row(0.1, "static", "supports", 0.7),
            row(0.2, "otsu", "supports", 0.5), row(0.1, "otsu", "cannot decide", 0.3)]
    (summary,) = summarize_grid(rows)
    assert summary == {"finding_id": "k-i-share", "model": "m", "n_settings": 4, "headline": "supports",
                       "budget_points": 0, "same_verdict_share": 0.75, "value_min": 0.3, "value_max": 0.7,
                       "flips": "cannot decide at 1 point (threshold=0.1 split=otsu)"}
    assert robustness_line([summary], "k-i-share") == ("[m] supports at 3 of 4 analysis settings "
                                                       "(cannot decide at 1 point (threshold=0.1 split=otsu)).")
    assert robustness_line([summary], "other") is None


def test_the_flips_name_the_settings_at_which_a_verdict_always_changes():
    point = lambda t, f: (("threshold", t), ("specificity", f))  # noqa: E731
    verdicts = {point(0.2, 0.05): "supports", point(0.1, 0.05): "supports", point(0.3, 0.05): "supports",
                point(0.2, 1.0): "cannot decide", point(0.1, 1.0): "cannot decide", point(0.3, 1.0): "cannot decide",
                point(0.1, 0.02): "contradicts", point(0.2, 0.02): "supports", point(0.3, 0.02): "supports"}
    assert flip_text(verdicts, point(0.2, 0.05)) == ("cannot decide whenever F=off; "
                                                      "contradicts at 1 point (threshold=0.1 F=0.02)")
    assert flip_text({point(0.2, 0.05): "supports"}, point(0.2, 0.05)) == ""
    verdicts[point(0.3, 1.0)] = "supports"  # F=off no longer always flips, but 2 of its 3 points still do
    verdicts[point(0.2, 0.02)] = "cannot decide"
    assert flip_text(verdicts, point(0.2, 0.05)) == ("cannot decide at 3 points (F=off, threshold=0.1 F=off, F=0.02); "
                                                      "contradicts at 1 point (threshold=0.1 F=0.02)")
    verdicts.update({point(0.3, 0.02): "cannot decide", point(0.4, 1.0): "cannot decide",
                     point(0.4, 0.05): "supports"})  # F=off: 3 of its 4 points; no other setting 3 of 4
    assert "cannot decide at 5 points, mostly with F=off (3 of 4)" in flip_text(verdicts, point(0.2, 0.05))


def test_the_grid_starts_at_the_studys_own_settings_then_its_kn_sets():
    cfg = StudyConfig(split="otsu", cs_score="csp", threshold=0.25, specificity=0.05)
    points = grid(cfg)
    assert points[0] == {"threshold": 0.25, "specificity": 0.05, "split": "otsu", "cs_score": "csp"}
    assert len(points) == 4 * 4 * 6 == len({tuple(p.items()) for p in points})  # 0.25 joins 0.1, 0.2, 0.3
    assert all(reuses_trials(p, cfg) for p in points[:6]) and not any(reuses_trials(p, cfg) for p in points[6:])
    assert [p["specificity"] for p in grid(cfg, profiled=False)] == [0.05] * 24  # no profile: F stays the study's


def test_robustness_of_a_directory_without_a_study_is_one_line(tmp_path):
    from knowloc.cli import main

    assert main(["robustness", str(tmp_path)]) == 2
    with pytest.raises(Exception):
        run_robustness(tmp_path)


def test_a_budget_remeasures_the_editing_findings_at_every_other_threshold_and_f(tmp_path, study_args, monkeypatch):
    import knowloc.editing.session as session_module

    out = tmp_path / "study"
    run_study(StudyConfig(**study_args(out, experiments=["consistency", "modification"], facts=5)),
              echo=lambda _: None)
    measured = []  # every edit the grid measures, one entry per edited model
    for name in ("measure_edit", "measure_edits"):
        real = getattr(session_module, name)

        def counting(baseline, trials, *args, _real=real, _name=name, **kwargs):
            measured.extend([trials] if _name == "measure_edit" else trials)
            return _real(baseline, trials, *args, **kwargs)
        monkeypatch.setattr(session_module, name, counting)
    lines = []
    result = run_robustness(out, echo=lines.append, budget=2)
    rows = result["robustness"]
    # 11 other (threshold, F) pairs x 2 facts x 1 method x modification
    assert result["units"] == 11 * 2 and result["edits"] == len(measured) > 0
    kc_ki = [r for r in rows if r["finding_id"] == "kc-ki-generalization"]
    assert len({(r["threshold"], r["specificity"], r["split"], r["score"]) for r in kc_ki}) == 72
    assert all((r["n"] or 0) <= 2 for r in kc_ki if (r["threshold"], r["specificity"]) != (0.2, 0.05))
    (summary,) = [r for r in result["robustness_summary"] if r["finding_id"] == "kc-ki-generalization"]
    assert summary["n_settings"] == 72 and summary["budget_points"] == 66  # 11 other pairs x split x score
    assert {r["budget_facts"] for r in kc_ki if (r["threshold"], r["specificity"]) != (0.2, 0.05)} == {2}
    assert {r["budget_facts"] for r in kc_ki if (r["threshold"], r["specificity"]) == (0.2, 0.05)} == {None}
    assert any(line.startswith("kc-ki-generalization") and "(66 points measured on the first 2 facts only: --budget)"
               in line for line in lines)
    assert robustness_line(result["robustness_summary"], "kc-ki-generalization").endswith(
        "; 66 of them measured on the editing budget's facts only.")
    assert sum("robustness: measuring modification at " in line for line in lines) == 11
    assert "22 fact units edited anew" in lines[-1]


def test_findings_choose_which_editing_trials_a_budget_remeasures(tmp_path, study_args):
    out = tmp_path / "study"
    run_study(StudyConfig(**study_args(out, experiments=["consistency", "modification", "query-mapping"], facts=4)),
              echo=lambda _: None)
    lines = []
    result = run_robustness(out, echo=lines.append, budget=2, findings=["kc-ki-generalization"])
    # only modification is measured anew: 11 other (threshold, F) pairs x 2 facts
    assert result["units"] == 11 * 2
    assert sum("robustness: measuring modification at " in line for line in lines) == 11
    assert not any("query-mapping" in line for line in lines if line.startswith("robustness: measuring"))
    by_finding = {r["finding_id"]: r for r in result["robustness_summary"]}
    assert by_finding["kc-ki-generalization"]["n_settings"] == 72 and by_finding["kc-ki-generalization"][
        "budget_points"] == 66
    assert by_finding["query-kn-mapping"]["n_settings"] == 6 and by_finding["query-kn-mapping"]["budget_points"] == 0
    # a budget that covers every studied fact measures its points on all of them: none is a budget point
    whole = run_robustness(out, budget=100, findings=["kc-ki-generalization"])
    studied = whole["units"] // 11
    assert studied >= 2 and not any(r["budget_facts"] for r in whole["robustness"])
    assert {r["finding_id"]: r["budget_points"] for r in whole["robustness_summary"]}["kc-ki-generalization"] == 0
    cfg = StudyConfig(**study_args(out, experiments=["consistency", "modification", "query-mapping"]))
    assert "(modification x 2 facts" in robustness_plan(cfg, 2, ["kc-ki-generalization"])
    for findings, message in ((["no-such"], r"--findings: no finding 'no-such' \(findings: paraphrases-share-kns"),
                              (["k-i-share"], "--findings: k-i-share has no editing trials this study re-measures "
                                              r"\(those that do: kc-ki-generalization, query-kn-mapping\)$")):
        with pytest.raises(KnowlocError, match=message):
            run_robustness(out, budget=2, findings=findings)
    with pytest.raises(KnowlocError, match=r"^--findings needs --budget"):
        run_robustness(out, findings=["kc-ki-generalization"])


def test_grid_points_share_a_facts_editing_session(monkeypatch, tmp_path):
    """Two grid points' contexts hand out one session per (model, fact), so an edit both points make (the same
    neuron set) is measured once: the session memoizes it (tests/editing)."""
    from types import SimpleNamespace

    from knowloc.study.context import StudyContext
    from knowloc.study.robustness import GridContext

    made = []
    monkeypatch.setattr(StudyContext, "edit_session", lambda self, model, fact: made.append(fact) or object())
    sessions: dict = {}
    contexts = [GridContext(config=StudyConfig(threshold=t), store=None, out=tmp_path, sessions=sessions)
                for t in (0.1, 0.3)]
    fact = SimpleNamespace(fact_id="f1")
    first, second = (ctx.edit_session("m", fact) for ctx in contexts)
    assert first is second and made == [fact]
    assert contexts[0].edit_session("m", SimpleNamespace(fact_id="f2")) is not first and len(made) == 2
