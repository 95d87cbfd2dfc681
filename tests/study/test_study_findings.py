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
                                        "query-kn-mapping", "knowledge-synapses", "cas-beats-baselines"]
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
