"""Tests for bootstrap CIs, Welch's t-test and the permutation test."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from knowloc.analysis import bootstrap_ci, paired_bootstrap_diff, permutation_test_diff, welch_t
from knowloc.errors import KnowlocError


def test_bootstrap_reproducible_and_contains_estimate():
    values = np.random.default_rng(1).normal(0.5, 0.2, 80)
    first = bootstrap_ci(values, seed=7)
    assert first == bootstrap_ci(values, seed=7)
    assert first != bootstrap_ci(values, seed=8)
    est, low, high = first
    assert est == pytest.approx(values.mean())
    assert low < est < high
    assert all(isinstance(x, float) for x in first)


def test_bootstrap_matches_manual_percentile_definition():
    values = np.arange(12, dtype=float) ** 1.5
    est, low, high = bootstrap_ci(values, np.median, n_boot=300, alpha=0.1, seed=3)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, values.size, size=(300, values.size))
    boots = np.median(values[idx], axis=1)
    assert est == np.median(values)
    assert low == pytest.approx(np.quantile(boots, 0.05))
    assert high == pytest.approx(np.quantile(boots, 0.95))


def test_bootstrap_small_and_vector_cases():
    nan_triple = bootstrap_ci(np.array([]))
    assert all(math.isnan(x) for x in nan_triple)
    assert bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)
    rows = np.random.default_rng(0).random((30, 3))
    est, low, high = bootstrap_ci(rows, lambda x: x.mean(axis=0), n_boot=200)
    assert est.shape == low.shape == high.shape == (3,)
    assert np.all(low <= est) and np.all(est <= high)
    assert bootstrap_ci(torch.arange(5.0), n_boot=50) == bootstrap_ci(np.arange(5.0), n_boot=50)


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0}, {"alpha": 1.0}, {"n_boot": 0}, {"n_boot": 2.5}])
def test_bootstrap_bad_arguments(kwargs):
    with pytest.raises(KnowlocError):
        bootstrap_ci([1.0, 2.0], **kwargs)
    with pytest.raises(KnowlocError):
        bootstrap_ci(3.0)


def test_paired_bootstrap_diff():
    b = np.random.default_rng(2).random(40)
    assert paired_bootstrap_diff(b + 1.0, b, n_boot=200, seed=0) == pytest.approx((1.0, 1.0, 1.0))
    a = b + np.random.default_rng(3).normal(0.3, 0.1, 40)
    est, low, high = paired_bootstrap_diff(a, b, n_boot=500, seed=0)
    assert est == pytest.approx(np.mean(a - b))
    assert 0.0 < low < est < high
    assert paired_bootstrap_diff(a, b, 500, 0) == (est, low, high)
    with pytest.raises(KnowlocError):
        paired_bootstrap_diff([1.0, 2.0], [1.0])


def test_welch_t():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 50), rng.normal(3, 2, 40)
    p = welch_t(a, b)
    assert p < 1e-10
    assert p == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_t(a, rng.normal(0, 1, 50)) > 0.01
    assert math.isnan(welch_t([1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(welch_t([1.0, 2.0], []))
    with warnings.catch_warnings():  # nearly identical values: scipy's precision-loss warning is not shown
        warnings.simplefilter("error")
        near = welch_t([1.0, 1.0, 1.0000000001], [0.5, 0.5, 0.5])
    with pytest.warns(RuntimeWarning, match="Precision loss"):  # scipy warns there, and returns the same p
        assert scipy_stats.ttest_ind([1.0, 1.0, 1.0000000001], [0.5, 0.5, 0.5], equal_var=False).pvalue == near


def test_permutation_test_separated_and_equal():
    rng = np.random.default_rng(0)
    real, null = rng.normal(1.0, 0.1, 30), rng.normal(0.0, 0.1, 30)
    diff, p = permutation_test_diff(real, null, n_perm=999, seed=0)
    assert diff == pytest.approx(real.mean() - null.mean())
    assert p == pytest.approx(1 / 1000)  # the +1 correction: never exactly 0
    same = rng.normal(0, 1, 30)
    diff, p = permutation_test_diff(same, same.copy(), n_perm=999, seed=0)
    assert diff == 0.0
    assert p > 0.3
    _, p_two = permutation_test_diff(same, same.copy(), n_perm=999, seed=0, alternative="two-sided")
    assert p_two == pytest.approx(1.0)  # every |D*| >= |0|


def test_permutation_test_alternatives_and_reproducibility():
    rng = np.random.default_rng(5)
    low, high = rng.normal(0, 1, 20), rng.normal(2, 1, 20)
    assert permutation_test_diff(low, high, 500, 1, "less")[1] < 0.01
    assert permutation_test_diff(low, high, 500, 1, "greater")[1] > 0.99
    assert permutation_test_diff(low, high, 500, 1, "two-sided")[1] < 0.01
    assert permutation_test_diff(low, high, 500, 1) == permutation_test_diff(low, high, 500, 1)


def test_permutation_test_matches_slow_loop():
    rng = np.random.default_rng(9)
    real, null = rng.normal(0.2, 1, 8), rng.normal(0, 1, 6)
    diff, p = permutation_test_diff(real, null, n_perm=300, seed=4)
    pooled = np.concatenate([real, null])
    gen = np.random.default_rng(4)
    perm = gen.permuted(np.broadcast_to(pooled, (300, pooled.size)), axis=1)
    hits = sum(row[:8].mean() - row[8:].mean() >= diff - 1e-12 for row in perm)
    assert p == pytest.approx((1 + hits) / 301)


def test_permutation_test_bad_arguments():
    with pytest.raises(KnowlocError):
        permutation_test_diff([], [1.0])
    with pytest.raises(KnowlocError):
        permutation_test_diff([1.0], [1.0], alternative="bigger")
    with pytest.raises(KnowlocError):
        permutation_test_diff([1.0], [1.0], n_perm=0)


def test_unpaired_bootstrap_difference_of_two_groups():
    from knowloc.analysis import unpaired_bootstrap_diff

    a, b = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([0.0, 0.5, 1.0, 1.5])
    diff, lo, hi = unpaired_bootstrap_diff(a, b, n_boot=500, seed=0)
    assert diff == pytest.approx(3.0 - 0.75) and lo < diff < hi
    assert unpaired_bootstrap_diff(a, b, n_boot=500, seed=0) == (diff, lo, hi)  # seeded
    one = unpaired_bootstrap_diff(a, np.array([2.0]))
    assert one[0] == pytest.approx(1.0) and np.isnan(one[1]) and np.isnan(one[2])
    assert all(np.isnan(unpaired_bootstrap_diff(a, np.array([]))))



def test_estimate_withholds_the_interval_below_min_n_whatever_it_is_given():
    from knowloc.analysis import MIN_N, Estimate

    small = Estimate(MIN_N - 1, 0.5, 0.1, 0.9)
    assert small.withheld and np.isnan(small.low) and np.isnan(small.high) and not small.excludes(0.0)
    big = Estimate(MIN_N, 0.5, 0.1, 0.9)
    assert not big.withheld and (big.low, big.high) == (0.1, 0.9)
    assert big.excludes(0.0) and not big.excludes(0.5) and big.above(0.05) and big.below(1.0) and not big.below(0.9)
    assert Estimate(MIN_N, None, None, None).has_interval is False  # JSON nulls read as nan


def test_estimate_constructors_equal_the_plain_functions():
    from knowloc.analysis import MIN_N, Estimate

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=12), rng.normal(size=12)
    assert Estimate.bootstrap(a, n_boot=300, seed=1) == Estimate(12, *bootstrap_ci(a, n_boot=300, seed=1))
    assert Estimate.bootstrap(a, stat=np.median, n_boot=300).value == pytest.approx(np.median(a))
    assert Estimate.paired(a, b, n_boot=300, seed=2) == Estimate(12, *paired_bootstrap_diff(a, b, 300, 2))
    gap = Estimate.unpaired(a, b[:MIN_N - 1], n_boot=300)
    assert gap.n == MIN_N - 1 and gap.value == pytest.approx(a.mean() - b[:MIN_N - 1].mean()) and gap.withheld
    assert Estimate.paired([], []).n == 0
    row = Estimate(7, 0.2, 0.1, 0.3).contrast("avg_diff")
    assert row == {"n": 7, "avg_diff": 0.2, "ci_low": 0.1, "ci_high": 0.3, "beyond_ci": True}
    assert Estimate.from_row({"d": 0.2, "ci_low": None, "ci_high": 0.4, "n": 9}, "d").has_interval is False
