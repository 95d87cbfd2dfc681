"""Pure maths of the neuron specificity profile and of dlogPPL."""

import math

import numpy as np
import pytest
import torch

from knowloc.analysis import (activation_ratio, delta_log_ppl, kn_frequency, log_perplexity, mask_scores,
                              nonspecific_neurons, perplexity, select_neurons)
from knowloc.errors import KnowlocError


def test_kn_frequency_counts_each_set_once():
    freq = kn_frequency([[(0, 1), (0, 1)], {(0, 1), (1, 2)}, set(), [(1, 2)]], (2, 3))
    assert freq[0, 1] == 0.5 and freq[1, 2] == 0.5 and freq.sum() == 1.0
    assert kn_frequency([], (2, 3)).sum() == 0
    with pytest.raises(KnowlocError, match="outside"):
        kn_frequency([{(2, 0)}], (2, 3))


def test_activation_ratio_is_the_median_over_prompts_of_ratio_to_layer_median():
    acts = torch.tensor([[[1.0, 1.0, -10.0]], [[2.0, -2.0, 4.0]], [[1.0, 1.0, 1.0]]])  # [R=3, L=1, N=3]
    ratio = activation_ratio(acts)
    # per prompt ratios for neuron 2: 10/1, 4/2, 1/1 -> median 2
    assert ratio.shape == (1, 3) and ratio[0, 2] == 2.0 and ratio[0, 0] == 1.0
    zero = activation_ratio(torch.tensor([[[0.0, 0.0, 3.0]]]))
    assert zero[0, 0] == 0 and math.isinf(zero[0, 2])


def test_nonspecific_threshold_and_off():
    freq = np.array([[0.0, 0.5, 0.9], [0.1, 1.0, 0.2]])
    assert nonspecific_neurons(freq, 0.3) == {(0, 1), (0, 2), (1, 1)}
    assert nonspecific_neurons(freq, 1.0) == set()
    with pytest.raises(KnowlocError):
        nonspecific_neurons(freq, 1.5)


def test_masking_rethresholds_relative_to_the_strongest_specific_neuron():
    scores = torch.tensor([[10.0, 1.0, 0.5, 0.1], [0.3, 0.0, -1.0, 0.05]])
    assert select_neurons(scores, 0.2) == [(0, 0)]  # the massive neuron hides everything else
    masked = mask_scores(scores, {(0, 0)})
    assert scores[0, 0] == 10.0 and masked[0, 0] == 0  # a copy
    assert select_neurons(masked, 0.2) == [(0, 1), (0, 2), (1, 0)]
    stack = mask_scores(torch.stack([scores, scores]), [(0, 0), (1, 0)])
    assert stack[:, 0, 0].eq(0).all() and stack[:, 1, 0].eq(0).all() and stack[0, 0, 1] == 1.0


def test_dlogppl_is_exactly_zero_for_equal_and_finite_where_ppl_overflows():
    assert delta_log_ppl(2.345678, 2.345678) == 0.0
    assert delta_log_ppl(1.0, 1.0 + math.log(2)) == pytest.approx(math.log(2))
    nll, n = 900.0 * 10, 10  # log PPL 900: PPL overflows float64
    assert math.isinf(perplexity(nll, n)) and log_perplexity(nll, n) == 900.0
    assert delta_log_ppl(log_perplexity(30.0, 10), log_perplexity(nll, n)) == pytest.approx(897.0)
    with pytest.raises(KnowlocError):
        log_perplexity(1.0, 0)
