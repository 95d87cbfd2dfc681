"""Token classes, KN layer profiles, rank correlation and Hase et al.'s R^2 regression."""

import numpy as np
import pytest

from knowloc.analysis.localization import (class_profiles, hase_delta_r2_ci, hase_r2, layer_mass, rank_correlation,
                                           token_classes)


def test_token_classes_follow_rome():
    # tokens: BOS The Eiffel Tower is located in -> subject 2..3, last 6
    assert token_classes(7, 2, 3) == {"first subject": [2], "last subject": [3], "first subsequent": [4],
                                      "further": [5], "last": [6]}
    assert token_classes(8, 1, 4)["middle subject"] == [2, 3]
    one = token_classes(3, 1, 1)  # a one-token subject is first and last; the next token is the prompt's last
    assert one["first subject"] == one["last subject"] == [1] and "first subsequent" not in one and one["last"] == [2]
    with pytest.raises(ValueError):
        token_classes(4, 2, 5)


def test_class_profiles_average_positions():
    grid = np.arange(32, dtype=float).reshape(8, 4)
    profiles = class_profiles(grid, 1, 3)
    np.testing.assert_allclose(profiles["middle subject"], grid[2])
    np.testing.assert_allclose(profiles["further"], grid[5:7].mean(axis=0))
    np.testing.assert_allclose(profiles["last"], grid[7])


def test_layer_mass_shares_attribution_per_layer():
    scores = np.zeros((3, 4))
    scores[0, 1], scores[2, 0], scores[2, 3], scores[1, 2] = 1.0, 2.0, 1.0, -5.0
    np.testing.assert_allclose(layer_mass(scores, [(0, 1), (2, 0), (2, 3), (1, 2)]), [0.25, 0.0, 0.75])
    assert layer_mass(scores, []) is None and layer_mass(scores, [(1, 2)]) is None


def test_rank_correlation():
    assert rank_correlation([0, 1, 2, 3], [1, 5, 7, 9]) == pytest.approx(1.0)
    assert rank_correlation([0, 1, 2, 3], [9, 7, 5, 1]) == pytest.approx(-1.0)
    assert np.isnan(rank_correlation([1, 1, 1], [0, 1, 2]))


def test_hase_r2_layer_alone_and_with_signal():
    layers = [0, 0, 0, 3, 3, 3]
    success = [0.1, 0.5, 0.9, 0.2, 0.6, 1.0]
    r2_layer, r2_both = hase_r2(success, layers, [0.0, 0.4, 0.8, 0.0, 0.4, 0.8])
    assert r2_layer == pytest.approx(1 - (2 * 0.32) / np.var(success) / 6)  # layer means 0.5 / 0.6
    assert r2_both == pytest.approx(1.0)  # the signal explains the rest exactly
    noise = hase_r2(success, layers, [0.3, 0.3, 0.3, 0.3, 0.3, 0.3])[1]
    assert noise == pytest.approx(r2_layer)  # a constant signal adds nothing


def test_hase_delta_r2_interval_resamples_facts():
    rng = np.random.default_rng(0)
    facts = []
    for _ in range(30):
        rows = []
        for layer in (0, 3, 6):
            signal = rng.random()
            rows.append((layer, signal, 0.2 * layer / 6 + 0.7 * signal + 0.05 * rng.standard_normal()))
        facts.append(rows)
    r2_layer, r2_both, delta, low, high = hase_delta_r2_ci(facts, n_boot=200, seed=1)
    assert delta == pytest.approx(r2_both - r2_layer) and r2_both > r2_layer
    assert 0 < low <= delta <= high
    shuffled = [[(layer, rng.random(), success) for layer, _, success in rows] for rows in facts]
    _, _, d2, low2, _ = hase_delta_r2_ci(shuffled, n_boot=200, seed=1)
    assert d2 < delta and low2 < 0.05
