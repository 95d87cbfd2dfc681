"""The `modification` summary from a small hand-made store: each row's number is worked out by hand below.

Facts (in study order): c0..c4 and c5 are K_C, i0 and i1 are K_I, u0 has no group (one attributed query).
c5 has no trials; u0's trials are extreme (Rel = Gen = 1, dlogPPL = 5), so counting either would show.
A fact's value is the mean of its matching trials (skipped ones left out); a row is the mean (or median) over
facts. The erase / N_i trials are chosen so that the mean over trials differs from the mean over facts.
"""

from __future__ import annotations

import numpy as np
import pytest
from summary_helpers import MIN_N, expected_ci, expected_unpaired_ci, one, summarize

from knowloc.study.experiments import modification

OPERATIONS, NEURON_SETS = ("erase", "update"), ("N_i", "N_g", "N_cap")
BACKGROUND = 0.25  # Rel, Gen, Loc, Avg ... of every trial outside erase / N_i (dlogPPL 0)


def trial(qidx, operation, neurons, rel=BACKGROUND, gen=BACKGROUND, dlogppl=0.0, skipped=False):
    row = {"qidx": qidx, "operation": operation, "neurons": neurons, "n_neurons": 0 if skipped else 2,
           "skipped": skipped}
    if skipped:
        return row
    return {**row, "rel": rel, "gen": gen, "loc": 1.0, "avg": (rel + gen + 1.0) / 3, "dppl": 0.0,
            "dlogppl": dlogppl, "dprob_self": 0.0, "dprob_neighbors": 0.0}


def fact_trials(erase_n_i, cap_empty=False, value=None):
    """A fact's trials: the given erase / N_i trials (one (rel, gen, dlogppl) or None = skipped per query),
    the background elsewhere (N_cap skipped for both operations when `cap_empty`), or `value` for every metric."""
    rows = []
    for operation in OPERATIONS:
        for neurons in NEURON_SETS:
            for q in (0, 1):
                if value is not None:
                    rows.append(trial(q, operation, neurons, value, value, 5.0))
                elif (operation, neurons) == ("erase", "N_i"):
                    spec = erase_n_i[q]
                    rows.append(trial(q, operation, neurons, skipped=True) if spec is None
                                else trial(q, operation, neurons, *spec))
                else:
                    rows.append(trial(q, operation, neurons, skipped=cap_empty and neurons == "N_cap"))
    return rows


GROUPS = {"c0": "K_C", "c1": "K_C", "c2": "K_C", "c3": "K_C", "c4": "K_C", "c5": "K_C",
          "i0": "K_I", "i1": "K_I", "u0": None}
TRIALS = {
    # erase / N_i per query: (Rel, Gen, dlogPPL) -> the fact's mean
    "c0": fact_trials([(1, 1.0, 0.1), (0, 0.5, 0.3)]),            # Rel 0.5, Gen 0.75, dlogPPL 0.2
    "c1": fact_trials([(1, 0.5, 0.9), None], cap_empty=True),      # Rel 1,   Gen 0.5,  dlogPPL 0.9
    "c2": fact_trials([(1, 0.0, 0.15), (1, 0.0, 0.05)]),          # Rel 1,   Gen 0,    dlogPPL 0.1
    "c3": fact_trials([(0, 0.5, 0.45), (0, 0.5, 0.55)]),          # Rel 0,   Gen 0.5,  dlogPPL 0.5
    "c4": fact_trials([(1, 1.0, -0.3), (0, 1.0, 0.1)]),           # Rel 0.5, Gen 1,    dlogPPL -0.1
    "i0": fact_trials([(0, 0.2, 0.0), (0, 0.4, 0.0)], cap_empty=True),  # Rel 0, Gen 0.3
    "i1": fact_trials([(1, 0.6, 0.0), None]),                      # Rel 1,   Gen 0.6
    "u0": fact_trials(None, value=1.0),
}
KC_REL = [0.5, 1.0, 1.0, 0.0, 0.5]
KC_GEN = [0.75, 0.5, 0.0, 0.5, 1.0]
KC_DLOGPPL = [0.2, 0.9, 0.1, 0.5, -0.1]


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    return summarize(modification.summarize, tmp_path_factory.mktemp("modification"), GROUPS,
                     {"modification": TRIALS})


def test_one_row_per_operation_group_and_neuron_set(summary):
    rows = summary["modification"]
    assert sorted((r["operation"], r["group"], r["neurons"]) for r in rows) == sorted(
        (o, g, n) for o in OPERATIONS for g in ("K_C", "K_I") for n in NEURON_SETS)
    assert all((r["model"], r["method"]) == ("toy-model", "ig") for r in rows)
    assert {r["update_rule"] for r in rows if r["operation"] == "erase"} == {None}
    assert {r["update_rule"] for r in rows if r["operation"] == "update"} == {"calibrated"}  # the default rule


def test_erase_n_i_k_c_is_the_mean_over_facts_of_each_facts_mean(summary):
    row = one(summary["modification"], operation="erase", group="K_C", neurons="N_i")
    assert row["n"] == 5  # c5 (no trials) and u0 (no group) are not counted
    assert row["rel"] == pytest.approx(sum(KC_REL) / 5) == pytest.approx(0.6)  # over trials it would be 5/9
    assert row["gen"] == pytest.approx(sum(KC_GEN) / 5) == pytest.approx(0.55)  # over trials: 5/9
    assert row["loc"] == pytest.approx(1.0)
    assert row["dlogppl_mean"] == pytest.approx(0.32)  # over trials: 2.3 / 9
    assert row["dlogppl_median"] == pytest.approx(0.2)  # median of the facts' means; of the trials: 0.15
    # enough facts for an interval: the bootstrap over the five facts' means (not over the nine trials)
    for metric, values in (("rel", KC_REL), ("gen", KC_GEN), ("dlogppl_mean", KC_DLOGPPL)):
        low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
        assert min(values) <= low <= row[metric] <= high <= max(values)
        assert (low, high) == pytest.approx(expected_ci(values))
    low, high = expected_ci(KC_DLOGPPL, stat=np.median)
    assert (row["dlogppl_median_ci_low"], row["dlogppl_median_ci_high"]) == pytest.approx((low, high))


def test_below_min_n_facts_the_interval_is_withheld(summary):
    row = one(summary["modification"], operation="erase", group="K_I", neurons="N_i")
    assert row["n"] == 2 < MIN_N
    assert row["rel"] == pytest.approx(0.5)  # i0: 0, i1: 1 (its skipped query left out)
    assert row["gen"] == pytest.approx(0.45)  # i0: (0.2 + 0.4) / 2, i1: 0.6
    for metric in ("rel", "gen", "loc", "avg", "dlogppl_mean", "dlogppl_median"):
        assert row[f"{metric}_ci_low"] is None and row[f"{metric}_ci_high"] is None
    # N_cap: c1's N_cap trials are all skipped, so four K_C facts remain: too few for an interval
    cap = one(summary["modification"], operation="update", group="K_C", neurons="N_cap")
    assert cap["n"] == 4 and cap["rel"] == pytest.approx(BACKGROUND)
    assert cap["rel_ci_low"] is None and cap["rel_ci_high"] is None
    full = one(summary["modification"], operation="update", group="K_C", neurons="N_g")
    assert full["n"] == 5 and full["rel_ci_low"] == full["rel_ci_high"] == pytest.approx(BACKGROUND)


def test_counts_facts_with_trials_and_a_group_and_the_empty_n_cap(summary):
    assert summary["modification_counts"] == [
        {"model": "toy-model", "method": "ig", "n_facts": 7, "n_cap_empty_facts": 2}]  # c1 and i0


def test_gen_contrast_k_c_minus_k_i_without_interval_below_min_n(summary):
    rows = summary["modification_contrasts"]
    assert [(r["operation"], r["neurons"], r["metric"]) for r in rows] == [
        ("erase", "N_i", "gen"), ("update", "N_i", "gen")]
    erase = one(rows, operation="erase")
    assert (erase["n_k_c"], erase["n_k_i"]) == (5, 2)
    assert erase["k_c"] == pytest.approx(0.55) and erase["k_i"] == pytest.approx(0.45)
    assert erase["diff"] == pytest.approx(0.1)
    assert erase["ci_low"] is None and erase["ci_high"] is None and erase["beyond_ci"] is False
    update = one(rows, operation="update")
    assert update["diff"] == pytest.approx(0.0) and update["k_c"] == pytest.approx(BACKGROUND)


def test_gen_contrast_with_enough_facts_in_both_groups(tmp_path):
    kc, ki = [0.9, 0.8, 1.0, 0.9, 0.7], [0.1, 0.3, 0.0, 0.2, 0.4]
    groups = {**{f"c{k}": "K_C" for k in range(5)}, **{f"i{k}": "K_I" for k in range(5)}}
    trials = {fid: fact_trials([(1, v + 0.05, 0.0), (1, v - 0.05, 0.0)])
              for fid, v in zip(groups, kc + ki)}
    summary = summarize(modification.summarize, tmp_path, groups, {"modification": trials})
    row = one(summary["modification_contrasts"], operation="erase")
    assert (row["n_k_c"], row["n_k_i"]) == (5, 5)
    assert row["k_c"] == pytest.approx(0.86) and row["k_i"] == pytest.approx(0.2)
    assert row["diff"] == pytest.approx(0.66)
    # each group resampled within itself: any resample lies in [min K_C - max K_I, max K_C - min K_I]
    assert 0.3 - 1e-9 <= row["ci_low"] <= row["diff"] <= row["ci_high"] <= 1.0 + 1e-9
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(expected_unpaired_ci(kc, ki))
    assert row["beyond_ci"] is True
    assert summary["modification_counts"][0]["n_facts"] == 10
