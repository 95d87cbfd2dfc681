"""Tests for knowloc.analysis.otsu_threshold: known bimodal case and brute-force definition."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knowloc.analysis import otsu_threshold, split_groups
from knowloc.errors import KnowlocError


def brute_force_between_variance(values: np.ndarray, bins: int) -> dict[int, float]:
    """sigma_B^2 for every split 'bins < j | bins >= j' (j = 1..bins-1) with both classes non-empty.

    Each value is replaced by the centre of its histogram bin [e_k, e_{k+1}) (last bin closed),
    then the between-class variance w0 * w1 * (mu0 - mu1)^2 is computed directly.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    k = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    centres = (edges[k] + edges[k + 1]) / 2.0
    out = {}
    for j in range(1, bins):
        lo, hi = centres[k < j], centres[k >= j]
        if lo.size and hi.size:
            w0 = lo.size / values.size
            out[j] = w0 * (1 - w0) * (lo.mean() - hi.mean()) ** 2
    return out


def check_against_brute_force(values: np.ndarray, bins: int) -> None:
    tau = otsu_threshold(values, bins=bins)
    variances = brute_force_between_variance(values, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    k = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    if not variances:  # degenerate: one occupied bin
        assert tau == pytest.approx(values.min())
        assert split_groups(values, tau).all()
        return
    best = max(variances.values())
    upper = split_groups(values, tau)
    # tau induces a split of whole bins ...
    js = [j for j in variances if np.array_equal(upper, k >= j)]
    assert js, "threshold does not correspond to a bin split"
    # ... which maximises the between-class variance.
    assert variances[js[0]] == pytest.approx(best, rel=1e-9, abs=1e-15)


def test_bimodal_lands_between_modes():
    rng = np.random.default_rng(0)
    low = np.clip(rng.normal(0.2, 0.05, 300), 0, 1)
    high = np.clip(rng.normal(0.8, 0.05, 200), 0, 1)
    values = np.concatenate([low, high])
    tau = otsu_threshold(values)
    assert low.max() < tau <= high.min()
    assert split_groups(values, tau).sum() == high.size
    check_against_brute_force(values, 256)


def test_two_spikes_midpoint_of_plateau():
    values = np.r_[np.full(10, 0.1), np.full(5, 0.8)]
    tau = otsu_threshold(values, bins=10)
    # bins [0.1, 0.2) and [0.8, 0.9] occupied: every edge 0.2..0.8 is optimal, midpoint 0.5.
    assert tau == pytest.approx(0.5)


def test_degenerate_inputs():
    assert otsu_threshold([0.4, 0.4, 0.4]) == pytest.approx(0.4)
    assert otsu_threshold([0.7]) == pytest.approx(0.7)
    assert otsu_threshold([0.0, 0.0]) == 0.0
    assert split_groups([0.4, 0.4], otsu_threshold([0.4, 0.4])).all()


def test_extremes_zero_and_one():
    tau = otsu_threshold([0.0, 0.0, 1.0, 1.0])
    assert 0.0 < tau <= 1.0
    assert split_groups([0.0, 0.0, 1.0, 1.0], tau).tolist() == [False, False, True, True]


@pytest.mark.parametrize(
    "values,bins",
    [([], 256), ([0.5, 1.2], 256), ([-0.1], 256), ([0.5, float("nan")], 256), ([0.5], 1), ([0.5], 2.5)],
)
def test_bad_arguments_raise(values, bins):
    with pytest.raises(KnowlocError):
        otsu_threshold(values, bins=bins)


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=40),
    st.sampled_from([2, 3, 8, 16, 64, 256]),
)
def test_matches_brute_force(values, bins):
    check_against_brute_force(np.asarray(values), bins)
