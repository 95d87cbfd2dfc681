"""The `update-sweep` summary and its best frontier point from a small hand-made store: each row's number is
worked out by hand below.

Rules dai and calibrated, lambda2 in {1, 4, 16}, lambda1 = 1. Facts (in study order): c0..c4 are K_C, i0 and i1
are K_I, u0 has no group (one attributed query; its extreme trials would show if it were counted, also in
"all"). At dai / lambda2 = 4 some facts have one trial (the other query skipped) and others two, chosen so that
Loc over facts is >= LOC_FLOOR (0.8) while Loc over trials is not: the best frontier point moves if a summary
averages trials instead of facts. calibrated keeps Loc at 0.5 everywhere: it has no best point.
"""

from __future__ import annotations

import numpy as np
import pytest
from summary_helpers import MIN_N, expected_ci, one, summarize

from knowloc.study.experiments import update_sweep

SETTINGS = {"update_sweep_rules": ["dai", "calibrated"], "update_sweep_lambda2": [1.0, 4.0, 16.0]}
LAMBDA2 = (1.0, 4.0, 16.0)


def trial(rule, lambda2, q, rel_loc, dlogppl=0.0, lambda1=1.0):
    row = {"rule": rule, "lambda1": lambda1, "lambda2": lambda2, "edited": q, "n_neurons": 3}
    if rel_loc is None:
        return {**row, "skipped": True}
    rel, loc = rel_loc
    return {**row, "skipped": False, "rel": rel, "gen": rel, "loc": loc, "avg": (2 * rel + loc) / 3,
            "dprob_self": 0.0, "dlogppl": dlogppl}


def fact_trials(at_1, at_4, dlogppl_16, lambda1=None):
    """dai: (rel, loc) per query at lambda2 = 1 and 4 (None = skipped), (1, 0.5) at 16 with the given dlogPPL
    per query; calibrated: (0.5, 0.5) everywhere. lambda1: 1, or lambda2 itself when 'tied'."""
    l1 = (lambda l2: l2) if lambda1 == "tied" else (lambda l2: 1.0)
    rows = [trial("dai", 1.0, q, v, lambda1=l1(1.0)) for q, v in enumerate(at_1)]
    rows += [trial("dai", 4.0, q, v, lambda1=l1(4.0)) for q, v in enumerate(at_4)]
    rows += [trial("dai", 16.0, q, (1, 0.5), d, lambda1=l1(16.0)) for q, d in enumerate(dlogppl_16)]
    rows += [trial("calibrated", l2, q, (0.5, 0.5), lambda1=l1(l2)) for l2 in LAMBDA2 for q in (0, 1)]
    return rows


GROUPS = {"c0": "K_C", "c1": "K_C", "c2": "K_C", "c3": "K_C", "c4": "K_C", "i0": "K_I", "i1": "K_I", "u0": None}
KEPT = [(0, 1.0), (0, 1.0)]
TRIALS = {  # lambda2 = 1 (rel, loc) per query | lambda2 = 4 | dlogPPL per query at lambda2 = 16
    "c0": fact_trials(KEPT, [(1, 1.0), None], [0.0, 0.4]),                 # lambda2 4: Rel 1,   Loc 1
    "c1": fact_trials(KEPT, [(1, 1.0), None], [0.1, 0.1]),                 #            Rel 1,   Loc 1
    "c2": fact_trials([(1, 1.0), (0, 1.0)], [(0, 1.0), None], [0.9, 0.9]),  #            Rel 0,   Loc 1
    "c3": fact_trials(KEPT, [(1, 0.6), (0, 0.6)], [0.3, 0.3]),             #            Rel 0.5, Loc 0.6
    "c4": fact_trials(KEPT, [(0, 0.6), (0, 0.6)], [0.5, 0.5]),             #            Rel 0,   Loc 0.6
    "i0": fact_trials(KEPT, [(1, 1.0), None], [1.0, 1.0]),                 #            Rel 1,   Loc 1
    "i1": fact_trials([(0, 1.0), (1, 1.0)], [(1, 0.7), (1, 0.7)], [2.0, 2.0]),  #       Rel 1,   Loc 0.7
    "u0": fact_trials([(9, 9.0)] * 2, [(9, 9.0)] * 2, [9.0, 9.0]),
}
KC_REL_4, KC_LOC_4 = [1.0, 1.0, 0.0, 0.5, 0.0], [1.0, 1.0, 1.0, 0.6, 0.6]
ALL_REL_4, ALL_LOC_4 = KC_REL_4 + [1.0, 1.0], KC_LOC_4 + [1.0, 0.7]
KC_DLOGPPL_16 = [0.2, 0.1, 0.9, 0.3, 0.5]


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    return summarize(update_sweep.summarize, tmp_path_factory.mktemp("update_sweep"), GROUPS,
                     {"update-sweep": TRIALS}, **SETTINGS)


def test_one_row_per_group_rule_and_lambda2(summary):
    rows = summary["update_sweep"]
    assert sorted((r["group"], r["rule"], r["lambda2"]) for r in rows) == sorted(
        (g, rule, l2) for g in ("K_C", "K_I", "all") for rule in ("dai", "calibrated") for l2 in LAMBDA2)
    assert all(r["lambda1"] == 1.0 for r in rows)  # --lambda1, not tied
    assert all((r["model"], r["method"]) == ("toy-model", "ig") for r in rows)


def test_a_point_is_the_mean_over_facts_of_each_facts_mean(summary):
    row = one(summary["update_sweep"], group="K_C", rule="dai", lambda2=4.0)
    assert row["n"] == 5
    assert row["rel"] == pytest.approx(0.5)  # over the 7 trials it would be 3 / 7
    assert row["loc"] == pytest.approx(0.84)  # over the 7 trials: 5.4 / 7 = 0.77
    assert row["n_neurons"] == pytest.approx(3.0)
    for metric, values in (("rel", KC_REL_4), ("loc", KC_LOC_4)):
        assert (row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]) == pytest.approx(expected_ci(values))
        assert min(values) <= row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"] <= max(values)
    big = one(summary["update_sweep"], group="K_C", rule="dai", lambda2=16.0)
    assert big["dlogppl_mean"] == pytest.approx(0.4)
    assert big["dlogppl_median"] == pytest.approx(0.3)  # of the facts' means; of the 10 trials it is 0.35
    assert (big["dlogppl_median_ci_low"], big["dlogppl_median_ci_high"]) == pytest.approx(
        expected_ci(KC_DLOGPPL_16, stat=np.median))


def test_all_pools_the_grouped_facts_only(summary):
    row = one(summary["update_sweep"], group="all", rule="dai", lambda2=4.0)
    assert row["n"] == 7  # K_C and K_I; u0 has no group
    assert row["rel"] == pytest.approx(sum(ALL_REL_4) / 7)
    assert row["loc"] == pytest.approx(5.9 / 7)  # >= 0.8; over the 10 trials it would be 0.78
    for metric, values in (("rel", ALL_REL_4), ("loc", ALL_LOC_4)):
        assert min(values) <= row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"] <= max(values)
    small = one(summary["update_sweep"], group="all", rule="dai", lambda2=1.0)
    assert small["n"] == 7 and small["rel"] == pytest.approx(1 / 7) and small["loc"] == pytest.approx(1.0)
    big = one(summary["update_sweep"], group="all", rule="dai", lambda2=16.0)
    assert big["dlogppl_median"] == pytest.approx(0.5) and big["dlogppl_mean"] == pytest.approx(5.0 / 7)


def test_below_min_n_facts_the_interval_is_withheld(summary):
    row = one(summary["update_sweep"], group="K_I", rule="dai", lambda2=4.0)
    assert row["n"] == 2 < MIN_N
    assert row["rel"] == pytest.approx(1.0) and row["loc"] == pytest.approx(0.85)
    for metric in ("rel", "gen", "loc", "avg", "n_neurons", "dlogppl_mean", "dlogppl_median"):
        assert row[f"{metric}_ci_low"] is None and row[f"{metric}_ci_high"] is None


def test_best_frontier_point_is_the_highest_rel_with_loc_at_least_the_floor(summary):
    rows = summary["update_sweep"]
    best = {b["rule"]: b["best"] for b in update_sweep.best_points(rows)}  # group "all"
    # dai: lambda2 = 16 has Rel 1 but Loc 0.5; of 1 (Rel 1/7) and 4 (Rel 4.5/7), both with Loc >= 0.8: 4
    assert best["dai"]["lambda2"] == 4.0 and best["dai"]["group"] == "all"
    assert best["dai"]["rel"] == pytest.approx(4.5 / 7)
    assert best["calibrated"] is None  # Loc 0.5 at every lambda2
    for group, rel in (("K_C", 0.5), ("K_I", 1.0)):
        (dai,) = [b for b in update_sweep.best_points(rows, group) if b["rule"] == "dai"]
        assert dai["best"]["lambda2"] == 4.0 and dai["best"]["rel"] == pytest.approx(rel)


def test_tied_sweep_records_lambda1_equal_to_lambda2(tmp_path):
    trials = {fid: fact_trials(KEPT, KEPT, [0.0, 0.0], lambda1="tied") for fid in ("c0", "i0")}
    summary = summarize(update_sweep.summarize, tmp_path, {"c0": "K_C", "i0": "K_I"}, {"update-sweep": trials},
                        update_sweep_tied=True, **SETTINGS)
    rows = summary["update_sweep"]
    assert len(rows) == 3 * 2 * 3 and all(r["lambda1"] == r["lambda2"] for r in rows)
    assert one(rows, group="all", rule="dai", lambda2=16.0)["n"] == 2
    assert one(rows, group="K_C", rule="dai", lambda2=16.0)["n"] == 1
