"""The `cas-sweep` summary from a small hand-made store: each row's number is worked out by hand below.

Grid: beta1 1, beta2 {0, 1}, t {0.2, 0.5}. Facts (in study order): c0..c4 are K_C, i0 and i1 are K_I, u0 has no
group (one attributed query; its extreme trials would show if it were counted). c1 has three edited queries
where the others have two, so a mean over trials differs from the mean over facts. A point whose selection is
empty for a fact stores that fact's trials as skipped (n_neurons 0, no metrics).
"""

from __future__ import annotations

import numpy as np
import pytest
from summary_helpers import MIN_N, expected_ci, one, summarize

from knowloc.study.experiments import cas_sweep

GRID = {"cas_sweep_beta1": [1.0], "cas_sweep_beta2": [0.0, 1.0], "cas_sweep_thresholds": [0.2, 0.5]}
POINTS = [(1.0, b2, t) for b2 in (0.0, 1.0) for t in (0.2, 0.5)]
FOCUS = ("erase", (1.0, 0.0, 0.2))  # the cell with hand-chosen per-query values
EMPTY = (1.0, 1.0, 0.5)  # the point that selects nothing for some facts


def trial(point, operation, edited, n_neurons, avg=None, dlogppl=0.0):
    beta1, beta2, t = point
    row = {"beta1": beta1, "beta2": beta2, "t": t, "operation": operation, "edited": edited}
    if avg is None:
        return {**row, "n_neurons": 0, "skipped": True}
    return {**row, "n_neurons": n_neurons, "skipped": False, "rel": avg, "gen": avg, "loc": avg, "avg": avg,
            "dppl": 0.0, "dlogppl": dlogppl}


def fact_trials(background, focus=(), n_neurons=1, empty=()):
    """A fact's trials: `focus` = [(avg, dlogppl) per edited query] at FOCUS with `n_neurons` neurons; every
    other cell has one trial per edited query with Avg `background` and one neuron, skipped for the operations
    in `empty` at the point EMPTY."""
    queries = range(max(len(focus), 2))
    rows = []
    for operation in ("erase", "update"):
        for point in POINTS:
            for q in queries:
                if (operation, point) == FOCUS:
                    rows.append(trial(point, operation, q, n_neurons, *focus[q]))
                elif point == EMPTY and operation in empty:
                    rows.append(trial(point, operation, q, 0))
                else:
                    rows.append(trial(point, operation, q, 1, background))
    return rows


GROUPS = {"c0": "K_C", "c1": "K_C", "c2": "K_C", "c3": "K_C", "c4": "K_C", "i0": "K_I", "i1": "K_I", "u0": None}
TRIALS = {  # at FOCUS: (avg, dlogppl) per edited query -> the fact's mean
    "c0": fact_trials(0.1, [(0.9, 0.0), (0.5, 0.2)], n_neurons=4, empty=("erase",)),      # Avg 0.7, dlogPPL 0.1
    "c1": fact_trials(0.2, [(0.3, 0.3), (0.3, 0.3), (0.6, 0.3)], n_neurons=2),            # 0.4, 0.3
    "c2": fact_trials(0.3, [(0.8, 0.05), (0.6, 0.05)], n_neurons=3),                     # 0.7, 0.05
    "c3": fact_trials(0.4, [(0.2, 0.5), (0.4, 0.7)], n_neurons=1, empty=("erase",)),      # 0.3, 0.6
    "c4": fact_trials(0.5, [(1.0, 0.15), (0.8, 0.25)], n_neurons=5),                     # 0.9, 0.2
    "i0": fact_trials(0.6, [(0.4, 0.0), (0.4, 0.0)], empty=("update",)),
    "i1": fact_trials(0.8, [(0.6, 0.0), (0.6, 0.0)], empty=("update",)),
    "u0": fact_trials(9.0, [(9.0, 9.0), (9.0, 9.0)], n_neurons=99, empty=("erase", "update")),
}
KC_AVG = [0.7, 0.4, 0.7, 0.3, 0.9]
KC_DLOGPPL = [0.1, 0.3, 0.05, 0.6, 0.2]


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    return summarize(cas_sweep.summarize, tmp_path_factory.mktemp("cas_sweep"), GROUPS, {"cas-sweep": TRIALS},
                     **GRID)


def at(rows, operation, group, point):
    beta1, beta2, t = point
    return one(rows, operation=operation, group=group, beta1=beta1, beta2=beta2, t=t)


def test_one_row_per_operation_group_and_grid_point(summary):
    rows = summary["cas_sweep"]
    assert sorted((r["operation"], r["group"], (r["beta1"], r["beta2"], r["t"])) for r in rows) == sorted(
        (o, g, p) for o in ("erase", "update") for g in ("K_C", "K_I") for p in POINTS)
    assert all((r["model"], r["method"]) == ("toy-model", "ig") for r in rows)


def test_a_point_is_the_mean_over_facts_of_each_facts_mean(summary):
    row = at(summary["cas_sweep"], "erase", "K_C", FOCUS[1])
    assert (row["n"], row["n_empty"]) == (5, 0)  # u0 has no group
    assert row["avg"] == pytest.approx(sum(KC_AVG) / 5) == pytest.approx(0.6)  # over the 11 trials: 6.4 / 11
    assert row["rel"] == pytest.approx(0.6)
    assert row["n_neurons"] == pytest.approx((4 + 2 + 3 + 1 + 5) / 5)  # each fact's |S| counts once
    assert row["dlogppl_mean"] == pytest.approx(0.25)
    assert row["dlogppl"] == pytest.approx(0.25)
    assert row["dlogppl_median"] == pytest.approx(0.2)  # of the facts' means; of the 11 trials it is 0.25
    assert (row["avg_ci_low"], row["avg_ci_high"]) == pytest.approx(expected_ci(KC_AVG))
    assert min(KC_AVG) <= row["avg_ci_low"] <= row["avg"] <= row["avg_ci_high"] <= max(KC_AVG)
    assert (row["dlogppl_median_ci_low"], row["dlogppl_median_ci_high"]) == pytest.approx(
        expected_ci(KC_DLOGPPL, stat=np.median))
    other = at(summary["cas_sweep"], "update", "K_C", FOCUS[1])  # the background: one value per fact
    assert other["avg"] == pytest.approx(0.3) and other["n_neurons"] == pytest.approx(1.0)


def test_facts_whose_selection_is_empty_are_counted_not_averaged(summary):
    row = at(summary["cas_sweep"], "erase", "K_C", EMPTY)
    assert (row["n"], row["n_empty"]) == (3, 2)  # c0 and c3 select nothing
    assert row["avg"] == pytest.approx((0.2 + 0.3 + 0.5) / 3)  # c1, c2, c4
    assert row["n_neurons"] == pytest.approx(1.0)  # the skipped trials' n_neurons 0 are left out
    assert 3 < MIN_N and row["avg_ci_low"] is None and row["avg_ci_high"] is None
    kept = at(summary["cas_sweep"], "update", "K_C", EMPTY)
    assert (kept["n"], kept["n_empty"]) == (5, 0) and kept["avg"] == pytest.approx(0.3)
    assert kept["avg_ci_low"] is not None and kept["avg_ci_low"] <= kept["avg_ci_high"]
    nothing = at(summary["cas_sweep"], "update", "K_I", EMPTY)
    assert (nothing["n"], nothing["n_empty"]) == (0, 2)
    assert nothing["avg"] is None and nothing["n_neurons"] is None and nothing["avg_ci_low"] is None


def test_below_min_n_facts_the_interval_is_withheld(summary):
    row = at(summary["cas_sweep"], "erase", "K_I", FOCUS[1])
    assert (row["n"], row["n_empty"]) == (2, 0)
    assert row["avg"] == pytest.approx(0.5)  # i0 0.4, i1 0.6
    for metric in ("avg", "rel", "n_neurons", "dlogppl_mean", "dlogppl_median"):
        assert row[f"{metric}_ci_low"] is None and row[f"{metric}_ci_high"] is None
