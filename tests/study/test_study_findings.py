"""One verdict per question from the per-method / per-group comparisons (knowloc.study.findings)."""

from knowloc.study.findings import findings


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
