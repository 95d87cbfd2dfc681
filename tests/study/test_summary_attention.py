"""The `attention` summary from a small hand-made store: each row's number is worked out by hand below.

Facts (in study order): c0..c5 are K_C, i0 and i1 are K_I, u0 has no group (one attributed query; its extreme
trials would show if it were counted). c5 has no irrelevant-synapse trials (its control set was empty), so the
related-minus-irrelevant contrast pairs only c0..c4. A fact's value is the mean of its matching trials; a row
is the mean over facts. c1 has one trial where the others have two, so a mean over trials would differ.
"""

from __future__ import annotations

import pytest
from summary_helpers import MIN_N, expected_ci, one, summarize

from knowloc.study.experiments import attention

ALPHAS = (0.0, 2.0)


def rows_of(synapses, alpha, dkn, dprob):
    """One trial per value of `dkn` (the query's relative KN change), all with the fact's `dprob`."""
    return [{"qidx": q, "synapses": synapses, "alpha": alpha, "n_synapses": 3, "dkn_activation": v, "dprob": dprob}
            for q, v in enumerate(dkn)]


def fact_trials(related, irrelevant):
    """related / irrelevant: (dkn per query, dprob) at alpha 0, or None for no such synapses; alpha 2 gets a
    fixed background (related dkn +0.5, dprob +0.1; irrelevant 0, 0)."""
    rows = []
    if related is not None:
        rows += rows_of("related", 0.0, *related) + rows_of("related", 2.0, [0.5] * len(related[0]), 0.1)
    if irrelevant is not None:
        rows += rows_of("irrelevant", 0.0, *irrelevant) + rows_of("irrelevant", 2.0, [0.0] * len(irrelevant[0]), 0.0)
    return rows


GROUPS = {"c0": "K_C", "c1": "K_C", "c2": "K_C", "c3": "K_C", "c4": "K_C", "c5": "K_C",
          "i0": "K_I", "i1": "K_I", "u0": None}
TRIALS = {  # alpha 0: (dkn per query, dprob) of related and of irrelevant synapses
    "c0": fact_trials(([-0.8, -0.6], -0.3), ([-0.1, 0.1], -0.4)),   # dkn related -0.7, irrelevant 0.0
    "c1": fact_trials(([-0.2], -0.1), ([-0.2, 0.0], 0.0)),          # -0.2, -0.1
    "c2": fact_trials(([-0.9, -0.7], -0.2), ([-0.1, -0.1], -0.3)),  # -0.8, -0.1
    "c3": fact_trials(([-0.4, -0.2], 0.0), ([0.0, 0.0], 0.1)),      # -0.3, 0.0
    "c4": fact_trials(([-0.6, -0.6], -0.2), ([-0.3, -0.1], -0.2)),  # -0.6, -0.2
    "c5": fact_trials(([-0.1, -0.1], -0.5), None),                  # -0.1, none
    "i0": fact_trials(([-0.4, -0.4], -0.1), ([0.0, 0.0], 0.0)),
    "i1": fact_trials(([-0.2, -0.2], 0.1), ([-0.2, -0.2], 0.1)),
    "u0": fact_trials(([9.0, 9.0], 9.0), ([-9.0, -9.0], -9.0)),
}
# paired per-fact differences (related - irrelevant) of c0..c4 at alpha 0
D_DKN = [-0.7, -0.1, -0.7, -0.3, -0.4]
D_DPROB = [0.1, -0.1, 0.1, -0.1, 0.0]


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    return summarize(attention.summarize, tmp_path_factory.mktemp("attention"), GROUPS, {"attention": TRIALS})


def test_one_row_per_group_synapses_and_alpha(summary):
    rows = summary["attention"]
    assert sorted((r["group"], r["synapses"], r["alpha"]) for r in rows) == sorted(
        (g, s, a) for g in ("K_C", "K_I") for s in ("related", "irrelevant") for a in ALPHAS)
    assert sorted((r["group"], r["alpha"], r["metric"]) for r in summary["attention_contrasts"]) == sorted(
        (g, a, m) for g in ("K_C", "K_I") for a in ALPHAS for m in ("dkn_activation", "dprob"))


def test_rows_are_means_over_facts(summary):
    related = one(summary["attention"], group="K_C", synapses="related", alpha=0.0)
    assert related["n"] == 6  # c0..c5; u0 has no group
    # facts: -0.7, -0.2, -0.8, -0.3, -0.6, -0.1 (over the eleven trials it would be -5.2 / 11)
    assert related["dkn_activation"] == pytest.approx(-2.7 / 6)
    assert related["dprob"] == pytest.approx(-1.3 / 6)
    facts = [-0.7, -0.2, -0.8, -0.3, -0.6, -0.1]
    assert (related["dkn_activation_ci_low"], related["dkn_activation_ci_high"]) == pytest.approx(expected_ci(facts))
    assert min(facts) <= related["dkn_activation_ci_low"] <= related["dkn_activation_ci_high"] <= max(facts)
    irrelevant = one(summary["attention"], group="K_C", synapses="irrelevant", alpha=0.0)
    assert irrelevant["n"] == 5  # c5 has no irrelevant trials
    assert irrelevant["dkn_activation"] == pytest.approx(-0.4 / 5)
    assert irrelevant["dprob"] == pytest.approx(-0.8 / 5)
    enhanced = one(summary["attention"], group="K_C", synapses="related", alpha=2.0)
    assert enhanced["n"] == 6 and enhanced["dkn_activation"] == pytest.approx(0.5)
    assert enhanced["dkn_activation_ci_low"] == enhanced["dkn_activation_ci_high"] == pytest.approx(0.5)


def test_contrast_is_paired_within_facts(summary):
    """related - irrelevant over the facts that have both (c0..c4): -0.44, not the -0.45 - (-0.08) = -0.37 of
    the two rows' means (c5 only has related trials)."""
    dkn = one(summary["attention_contrasts"], group="K_C", alpha=0.0, metric="dkn_activation")
    assert dkn["n"] == 5
    assert dkn["diff"] == pytest.approx(sum(D_DKN) / 5) == pytest.approx(-0.44)
    assert (dkn["ci_low"], dkn["ci_high"]) == pytest.approx(expected_ci(D_DKN))
    assert min(D_DKN) <= dkn["ci_low"] <= dkn["ci_high"] <= max(D_DKN) < 0  # every fact's difference < 0
    assert dkn["beyond_ci"] is True
    dprob = one(summary["attention_contrasts"], group="K_C", alpha=0.0, metric="dprob")
    assert dprob["n"] == 5 and dprob["diff"] == pytest.approx(0.0)
    assert (dprob["ci_low"], dprob["ci_high"]) == pytest.approx(expected_ci(D_DPROB))
    assert dprob["ci_low"] < 0 < dprob["ci_high"] and dprob["beyond_ci"] is False
    enhanced = one(summary["attention_contrasts"], group="K_C", alpha=2.0, metric="dkn_activation")
    assert enhanced["n"] == 5 and enhanced["diff"] == pytest.approx(0.5) and enhanced["beyond_ci"] is True


def test_below_min_n_facts_no_interval_and_no_star(summary):
    row = one(summary["attention"], group="K_I", synapses="related", alpha=0.0)
    assert row["n"] == 2 < MIN_N
    assert row["dkn_activation"] == pytest.approx(-0.3) and row["dprob"] == pytest.approx(0.0)
    for metric in ("dkn_activation", "dprob"):
        assert row[f"{metric}_ci_low"] is None and row[f"{metric}_ci_high"] is None
    contrast = one(summary["attention_contrasts"], group="K_I", alpha=0.0, metric="dkn_activation")
    assert contrast["n"] == 2 and contrast["diff"] == pytest.approx(-0.2)  # i0: -0.4 - 0, i1: -0.2 - (-0.2)
    assert contrast["ci_low"] is None and contrast["ci_high"] is None and contrast["beyond_ci"] is False


def test_a_group_without_trials_has_n_0(tmp_path):
    summary = summarize(attention.summarize, tmp_path, {"c0": "K_C", "i0": "K_I"},
                        {"attention": {"c0": TRIALS["c0"]}})
    row = one(summary["attention"], group="K_I", synapses="related", alpha=0.0)
    assert row["n"] == 0 and row["dkn_activation"] is None
    contrast = one(summary["attention_contrasts"], group="K_I", alpha=0.0, metric="dkn_activation")
    assert contrast["n"] == 0 and contrast["diff"] is None and contrast["beyond_ci"] is False
    assert one(summary["attention"], group="K_C", synapses="related", alpha=0.0)["n"] == 1


def test_each_statistic_counts_its_own_facts(tmp_path):
    """c2's KN activations were all 0 before the manipulation (no relative change: nan) while its P(gold) change
    exists: the row's n counts the facts with a KN activation change (2), n_dprob those with a dP(gold) (3)."""
    nan = float("nan")
    trials = {"c0": TRIALS["c0"], "c1": TRIALS["c1"], "c2": fact_trials(([nan, nan], -0.5), ([nan, nan], 0.2))}
    summary = summarize(attention.summarize, tmp_path, {"c0": "K_C", "c1": "K_C", "c2": "K_C"},
                        {"attention": trials})
    related = one(summary["attention"], group="K_C", synapses="related", alpha=0.0)
    assert related["n"] == 2 and related["dkn_activation"] == pytest.approx((-0.7 - 0.2) / 2)
    assert related["n_dprob"] == 3 and related["dprob"] == pytest.approx((-0.3 - 0.1 - 0.5) / 3)
    enhanced = one(summary["attention"], group="K_C", synapses="related", alpha=2.0)  # every fact has both
    assert enhanced["n"] == enhanced["n_dprob"] == 3
