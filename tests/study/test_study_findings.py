"""One verdict per question from the per-method / per-group comparisons (knowloc.study.findings)."""

import pytest

from knowloc.study.experiments import BUILTIN
from knowloc.study.findings import filter_view
from knowloc.study.findings import findings as _findings


def findings(summary: dict) -> list[dict]:
    return _findings(summary, BUILTIN)


def _cas_row(method: str, group: str, baseline: str, lo: float, hi: float, n: int = 20) -> dict:
    return {"model": "m", "method": method, "operation": "erase", "group": group, "protocol": "transductive",
            "budget": "free", "baseline": baseline, "n": n, "avg_diff": (lo + hi) / 2, "ci_low": lo, "ci_high": hi}


def _cas_finding(rows: list[dict]) -> dict:
    return next(f for f in findings({"cas_comparison": rows}) if f["question"].startswith("Does CAS"))


def test_agreeing_comparisons_give_their_common_verdict():
    item = _cas_finding([_cas_row("ig", "K_C", "N_i", -0.2, -0.1), _cas_row("ig", "K_I", "N_i", -0.3, -0.05)])
    assert item["verdict"] == "contradicts"


def test_contradictions_with_undecided_comparisons_partly_contradict():
    """Negative intervals next to ones that include 0 do not disagree: nothing supports the claim."""
    item = _cas_finding([_cas_row("ig", "K_C", "N_i", -0.2, -0.1), _cas_row("ig", "K_I", "N_i", -0.1, 0.02),
                         _cas_row("amig", "K_I", "N_g", -0.3, -0.1)])
    assert item["verdict"] == "partly contradicts"
    assert item["reason"] == "2 contradict, 1 cannot decide of 3"


def test_support_with_undecided_comparisons_partly_supports():
    item = _cas_finding([_cas_row("ig", "K_C", "N_i", 0.05, 0.2), _cas_row("ig", "K_I", "N_i", -0.1, 0.02, n=3)])
    assert item["verdict"] == "partly supports"
    assert item["reason"] == "1 support, 1 cannot decide of 2"


def test_support_and_contradiction_are_mixed():
    item = _cas_finding([_cas_row("ig", "K_C", "N_i", 0.05, 0.2), _cas_row("amig", "K_C", "N_i", -0.2, -0.05),
                         _cas_row("amig", "K_I", "N_i", -0.2, 0.05)])
    assert item["verdict"] == "mixed"
    assert item["reason"] == "the methods or groups disagree: 1 support, 1 contradict, 1 cannot decide of 3"


def _consistency_row(view: str, lo: float, hi: float) -> dict:
    return {"model": "m", "method": "ig", "threshold_kind": "static", "specificity": view, "n_facts": 20,
            "threshold": 0.3, "k_i_fraction": (lo + hi) / 2, "k_i_ci_low": lo, "k_i_ci_high": hi,
            "null_gap": 0.1, "null_p": 0.001, "n_null": 20, "note": ""}


@pytest.mark.parametrize("stored", [True, False])
def test_specificity_zero_is_a_filtered_study(stored):
    """`--specificity 0` removes every neuron any reference prompt uses: a filtered study, whose findings read
    the filtered ("on") rows, from summary.json's specificity_filter or, for an older summary, its config."""
    summary = {"config": {"specificity": 0.0},
               "consistency": [_consistency_row("on", 0.5, 0.7), _consistency_row("off", 0.01, 0.05)]}
    if stored:
        summary["specificity_filter"] = "on"
    assert filter_view(summary) == "on"
    share = next(f for f in findings(summary) if f["id"] == "k-i-share")
    assert share["verdict"] == "supports" and "0.60 [0.50, 0.70] of 20 facts" in share["text"]
    unfiltered = {"config": {"specificity": 1.0}, "consistency": summary["consistency"]}
    assert next(f for f in findings(unfiltered) if f["id"] == "k-i-share")["verdict"] == "contradicts"


def test_every_finding_has_a_stable_id_and_unrun_experiments_say_so():
    items = findings({"config": {}})
    assert [f["id"] for f in items] == ["paraphrases-share-kns", "k-i-share", "kc-ki-generalization",
                                        "query-kn-mapping", "knowledge-synapses", "attention-carries-subject",
                                        "synapses-agree-with-knockout", "cas-beats-baselines",
                                        "kn-vs-editors", "ki-gap-source", "tracing-agrees-with-kns",
                                        "localization-informs-editing", "edits-at-scale", "cas-at-scale",
                                        "k-c-k-i-at-scale"]
    assert {f["verdict"] for f in items} == {"not run"}
    assert items[2]["text"] == "Not measured: the study has no modification results."


def test_too_few_facts_cannot_decide():
    row = {"model": "m", "method": "ig", "operation": "erase", "metric": "gen", "n_k_c": 3, "n_k_i": 30,
           "k_c": 0.9, "k_i": 0.4, "diff": 0.5, "ci_low": 0.3, "ci_high": 0.7}
    item = next(f for f in findings({"modification_contrasts": [row]}) if f["id"] == "kc-ki-generalization")
    assert item["verdict"] == "cannot decide" and item["reason"] == "fewer than 5 facts (n = 3)"
    assert "(no interval)" in item["text"]  # the interval a row holds below MIN_N is never shown


def test_a_verdict_is_not_repeated_as_its_reason():
    """"Verdict: not run (not run)" said the same thing twice: a reason is shown only when it adds something."""
    from knowloc.report.findings import findings_section
    from knowloc.study.findings import markdown

    items = findings({"config": {}})
    lines = markdown(items)
    assert not any("(not run)" in line for line in lines)
    assert any("Verdict: **not run**. Not measured: the study has no modification results." in line for line in lines)
    assert "(not run)" not in findings_section({"config": {}, "findings": items})
    undecided = next(f for f in findings({"modification_contrasts": [
        {"model": "m", "method": "ig", "operation": "erase", "metric": "gen", "n_k_c": 3, "n_k_i": 30, "k_c": 0.9,
         "k_i": 0.4, "diff": 0.5, "ci_low": 0.3, "ci_high": 0.7}]}) if f["id"] == "kc-ki-generalization")
    assert "Verdict: **cannot decide** (fewer than 5 facts (n = 3))." in markdown([undecided])[-2]


def test_an_experiment_that_ran_with_nothing_to_measure_cannot_decide_and_says_why():
    """An experiment whose rows hold no comparison (here CAS: no fact had a K_C / K_I group) ran: its finding is
    "cannot decide" with the reason, not "not run"."""
    unscored = [{"model": "m", "method": "ig", "specificity": "off", "n_studied": 4, "n_scored": 0, "n_empty_kn": 4,
                 "n_one_query": 0}]
    item = next(f for f in findings({"cas": [], "cas_comparison": [], "consistency": [],
                                     "consistency_unscored": unscored}) if f["id"] == "cas-beats-baselines")
    assert item["verdict"] == "cannot decide"
    assert item["reason"] == "no studied fact has a consistency score, so none has a K_C / K_I group"
    assert item["text"] == "Nothing measured: no studied fact has a consistency score, so none has a K_C / K_I group."
    item = next(f for f in findings({"cas": [], "cas_comparison": []}) if f["id"] == "cas-beats-baselines")
    assert item["verdict"] == "cannot decide" and item["reason"] == "no comparison had facts to measure"


def test_a_missing_null_baseline_is_said_once():
    row = {**_consistency_row("off", 0.5, 0.7), "null_gap": None, "null_p": None,
           "note": "no null baseline: no relation has two studied facts to swap templates between"}
    item = next(f for f in findings({"config": {"specificity": 1.0}, "consistency": [row]})
                if f["id"] == "paraphrases-share-kns")
    assert item["verdict"] == "cannot decide"
    assert item["text"] == "ig: no null baseline: no relation has two studied facts to swap templates between."


# models side by side (findings_by_model)

@pytest.mark.parametrize("verdicts, expected", [
    (["supports", "supports"], "agree: supports"),
    (["contradicts", "contradicts", "contradicts"], "agree: contradicts"),
    (["supports", "contradicts"], "disagree"),
    (["supports", "cannot decide", "contradicts"], "disagree"),  # one supports, another contradicts
    (["mixed", "supports", "contradicts"], "disagree"),
    (["supports", "cannot decide"], "cannot decide"),
    (["supports", "partly supports"], "cannot decide"),  # only decided verdicts agree
    (["contradicts", "mixed"], "cannot decide"),
    (["not run", "not run"], "not run"), (["not run", "supports"], "cannot decide"),
    (["cannot decide", "cannot decide"], "cannot decide"),
    (["partly contradicts", "partly contradicts"], "cannot decide"),
    ([], "cannot decide"),
])
def test_across_models_rule(verdicts, expected):
    from knowloc.study.findings import across

    assert across(verdicts) == expected


def _two_model_summary() -> dict:
    """Model a supports the CAS claim (two comparisons), b contradicts it; both put a substantial share of facts in
    K_I; a supports the generalization gap, b has too few K_C facts to decide."""
    def mod_row(model, lo, hi, n_k_c):
        return {"model": model, "method": "ig", "operation": "erase", "metric": "gen", "n_k_c": n_k_c, "n_k_i": 30,
                "k_c": 0.9, "k_i": 0.4, "diff": (lo + hi) / 2, "ci_low": lo, "ci_high": hi}
    return {
        "config": {"models": ["a", "b"], "specificity": 1.0}, "facts": {"a": 20, "b": 20},
        "cas_comparison": [{**_cas_row("ig", "K_C", "N_i", 0.05, 0.2), "model": "a"},
                           {**_cas_row("amig", "K_I", "N_g", 0.01, 0.3, n=12), "model": "a"},
                           {**_cas_row("ig", "K_C", "N_i", -0.2, -0.05), "model": "b"}],
        "consistency": [{**_consistency_row("off", 0.3, 0.5), "model": "a"},
                        {**_consistency_row("off", 0.25, 0.6), "model": "b", "n_facts": 18}],
        "modification_contrasts": [mod_row("a", 0.1, 0.3, 10), mod_row("b", 0.3, 0.7, 3)],
    }


def test_findings_by_model_judge_each_models_rows_alone():
    from knowloc.study.findings import cell_details, findings_by_model

    summary = _two_model_summary()
    table = findings_by_model(summary, BUILTIN)
    assert table["models"] == ["a", "b"]
    rows = {r["id"]: r for r in table["rows"]}
    assert list(rows) == [f["id"] for f in findings(summary)]
    cas = rows["cas-beats-baselines"]
    assert set(cas["per_model"]) == {"a", "b"}
    assert (cas["per_model"]["a"]["verdict"], cas["per_model"]["b"]["verdict"]) == ("supports", "contradicts")
    assert cas["across"] == "disagree"
    lines = {"support": 0.0, "contradict": 0.0}  # the rule's lines, which the findings figure draws
    assert cas["per_model"]["a"]["estimates"] == [
        {"label": "ig K_C vs N_i", "value": pytest.approx(0.125), "low": 0.05, "high": 0.2, "n": 20,
         "verdict": "supports", **lines},
        {"label": "amig K_I vs N_g", "value": pytest.approx(0.155), "low": 0.01, "high": 0.3, "n": 12,
         "verdict": "supports", **lines}]
    assert cas["per_model"]["b"]["estimates"] == [
        {"label": "ig K_C vs N_i", "value": pytest.approx(-0.125), "low": -0.2, "high": -0.05, "n": 20,
         "verdict": "contradicts", **lines}]
    # the pooled finding lists every model's estimates, each labelled with its model
    pooled = next(f for f in findings(summary) if f["id"] == "cas-beats-baselines")
    assert [e["label"] for e in pooled["estimates"]] == ["a ig K_C vs N_i", "a amig K_I vs N_g", "b ig K_C vs N_i"]
    # the pooled finding mixes both models' comparisons into one verdict
    assert next(f for f in findings(summary) if f["id"] == "cas-beats-baselines")["verdict"] == "mixed"
    share = rows["k-i-share"]
    assert share["across"] == "agree: supports"
    assert share["per_model"]["b"]["estimates"] == [{"label": "ig", "value": pytest.approx(0.425), "low": 0.25,
                                                     "high": 0.6, "n": 18, "verdict": "supports", "support": 0.2,
                                                     "contradict": 0.1}]
    gen = rows["kc-ki-generalization"]
    assert gen["per_model"]["a"]["verdict"] == "supports"
    assert gen["per_model"]["b"] == {"verdict": "cannot decide", "reason": "fewer than 5 facts (n = 3)",
                                     "text": gen["per_model"]["b"]["text"], "estimates": [
                                         {"label": "ig", "value": 0.5, "low": None, "high": None, "n": 3,
                                          "verdict": "cannot decide", "support": 0.0, "contradict": 0.05}]}
    assert gen["across"] == "cannot decide"
    # a finding decided by a test, not an interval (the permutation p of the null gap): its estimate has no
    # interval (the figure draws the gap against 0) and the cell shows its sentence
    sharing = rows["paraphrases-share-kns"]
    assert sharing["across"] == "agree: supports"
    assert [(e["value"], e["low"], e["support"]) for e in sharing["per_model"]["a"]["estimates"]] == [
        (pytest.approx(0.1), None, 0.0)]
    assert cell_details(sharing["per_model"]["a"])[0].startswith("ig: mean CS exceeds the template-matched null by")
    assert rows["query-kn-mapping"]["per_model"]["a"]["verdict"] == "not run"
    assert rows["query-kn-mapping"]["across"] == "not run"
    # a single-model study has no side-by-side table
    assert findings_by_model({**summary, "config": {"models": ["a"]}, "facts": {"a": 20}}, BUILTIN) is None


def test_pooled_findings_of_two_models_name_the_model_of_each_number():
    """The pooled text of a two-model study said "ig: ... ig: ..." without the model of each number: each
    comparison now names its model (the verdict still pools both); a single model's text is as it was."""
    from knowloc.study.findings import model_view

    summary = _two_model_summary()
    items = {f["id"]: f for f in findings(summary)}
    assert items["k-i-share"]["text"] == ("[a] ig: 0.40 [0.30, 0.50] of 20 facts are K_I (static tau 0.30). "
                                          "[b] ig: 0.42 [0.25, 0.60] of 18 facts are K_I (static tau 0.30).")
    cas = items["cas-beats-baselines"]
    assert cas["verdict"] == "mixed" and cas["reason"] == "the methods or groups disagree: 2 support, 1 contradict of 3"
    assert cas["text"] == ("[a] ig K_C: Avg of CAS minus N_i is +0.125 [+0.050, +0.200] (n 20). "
                           "[a] amig K_I: Avg of CAS minus N_g is +0.155 [+0.010, +0.300] (n 12). "
                           "[b] ig K_C: Avg of CAS minus N_i is -0.125 [-0.200, -0.050] (n 20).")
    assert items["query-kn-mapping"]["text"] == "Not measured: the study has no query-mapping results."
    alone = {**model_view(summary, "a"), "config": {"models": ["a"], "specificity": 1.0}, "facts": {"a": 20}}
    assert next(f for f in findings(alone) if f["id"] == "k-i-share")["text"] == \
        "ig: 0.40 [0.30, 0.50] of 20 facts are K_I (static tau 0.30)."


def test_model_view_filters_every_list_of_model_rows():
    from knowloc.study.findings import model_view

    summary = {"config": {"models": ["a", "b"]}, "facts": {"a": 3, "b": 4}, "figures": {"cas": ["x.png"]},
               "rows": [{"model": "a", "v": 1}, {"model": "b", "v": 2}, {"v": 3}], "empty": [], "flag": "on"}
    view = model_view(summary, "b")
    assert view["rows"] == [{"model": "b", "v": 2}, {"v": 3}]
    assert {k: v for k, v in view.items() if k != "rows"} == {k: v for k, v in summary.items() if k != "rows"}
    assert summary["rows"][0] == {"model": "a", "v": 1}  # the summary itself is left as it was


def test_findings_markdown_shows_the_models_side_by_side():
    from knowloc.study.findings import findings_by_model, markdown

    summary = _two_model_summary()
    table = findings_by_model(summary, BUILTIN)
    lines = markdown(findings(summary), table)
    header = lines.index("| Question | a | b | Across models |")
    assert lines[header + 1] == "|---|---|---|---|"
    rows = lines[header + 2:header + 2 + len(table["rows"])]
    assert all(row.startswith("| ") and row.count(" | ") == 3 for row in rows)  # one column per model, then across
    cas = next(row for row in rows if "`cas-beats-baselines`" in row)
    assert ("| **supports**: ig K_C vs N_i +0.125 [+0.050, +0.200], n 20; amig K_I vs N_g +0.155 [+0.010, +0.300], "
            "n 12 | **contradicts**: -0.125 [-0.200, -0.050], n 20 | **disagree** |") in cas
    gen = next(row for row in rows if "`kc-ki-generalization`" in row)
    assert "| **cannot decide** (fewer than 5 facts (n = 3)): +0.500 (no interval), n 3 | **cannot decide** |" in gen
    assert "| **agree: supports** |" in next(row for row in rows if "`k-i-share`" in row)
    # the pooled list follows the table; a single-model section is as it was
    assert lines.index("### All models together") > header
    assert not any("Across models" in line or "###" in line for line in markdown(findings(summary)))


def test_scope_note_names_what_a_study_left_out_and_the_command_for_everything():
    from knowloc.study.findings import scope_note
    from knowloc.study.registry import names

    assert scope_note(["m"], "builtin", ["ig", "sig", "amig"], names()) is None
    ran = [n for n in names() if n != "cas-sweep"]
    text, command = scope_note(["m1", "m2"], "pararel:/d", ["amig", "grad_x_act"], ran)
    assert text.startswith("Left out of this study: methods ig, sig; experiments cas-sweep (a sweep: it feeds no "
                           "finding).")
    assert command == (f"knowloc study --models m1,m2 --data pararel:/d --methods amig,grad_x_act,ig,sig "
                       f"--experiments {','.join(names())} --out runs/full")
    text, _ = scope_note(["m"], "builtin", ["ig", "sig", "amig"], ["consistency", "localization-vs-editing"])
    assert "experiments modification, query-mapping" in text and "localization-vs-editing" not in text
