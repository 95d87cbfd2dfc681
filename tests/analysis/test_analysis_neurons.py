"""Tests for knowloc.analysis.neurons.select_neurons."""

import numpy as np
import pytest
import torch

from knowloc.analysis import select_neurons
from knowloc.errors import KnowlocError

SCORES = np.array([[0.1, 1.0, 0.3], [0.5, 0.2, -0.4]])


def test_relative_keeps_strictly_above_fraction_of_max_sorted_desc():
    assert select_neurons(SCORES, 0.2) == [(0, 1), (1, 0), (0, 2)]  # 0.2 itself is not > 0.2
    assert select_neurons(SCORES, 0.0) == [(0, 1), (1, 0), (0, 2), (1, 1), (0, 0)]
    assert select_neurons(SCORES, 1.0) == []  # strict: nothing exceeds the max


def test_relative_nonpositive_max_gives_empty():
    assert select_neurons(-np.abs(SCORES), 0.2) == []
    assert select_neurons(np.zeros((2, 3)), 0.0) == []


def test_absolute_and_top_k():
    assert select_neurons(SCORES, 0.3, mode="absolute") == [(0, 1), (1, 0)]
    assert select_neurons(SCORES, -0.5, mode="absolute")[-1] == (1, 2)
    assert select_neurons(SCORES, 2, mode="top_k") == [(0, 1), (1, 0)]
    assert select_neurons(SCORES, 2.0, mode="top_k") == [(0, 1), (1, 0)]
    assert select_neurons(SCORES, 0, mode="top_k") == []
    assert len(select_neurons(SCORES, 100, mode="top_k")) == SCORES.size


def test_torch_and_numpy_agree_and_ties_sorted_by_position():
    ties = np.array([[1.0, 0.5], [1.0, 1.0]])
    assert select_neurons(torch.tensor(ties), 0.2) == [(0, 0), (1, 0), (1, 1), (0, 1)]
    assert select_neurons(torch.tensor(SCORES, dtype=torch.float64), 0.2) == select_neurons(SCORES, 0.2)
    assert select_neurons(ties, 3, mode="top_k") == [(0, 0), (1, 0), (1, 1)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 1.5},
        {"threshold": -0.1},
        {"threshold": float("nan")},
        {"threshold": 0.5, "mode": "top_k"},
        {"threshold": -1, "mode": "top_k"},
        {"threshold": float("inf"), "mode": "absolute"},
        {"threshold": 0.2, "mode": "bogus"},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(KnowlocError):
        select_neurons(SCORES, **kwargs)


def test_bad_scores_raise():
    with pytest.raises(KnowlocError):
        select_neurons(np.array([1.0, 2.0]))
    with pytest.raises(KnowlocError):
        select_neurons(np.array([[1.0, np.nan]]))


def test_empty_scores():
    assert select_neurons(np.zeros((0, 4)), 0.2) == []
    assert select_neurons(np.zeros((0, 4)), 3, mode="top_k") == []


def test_a_neuron_is_the_plain_pair_in_every_way_that_is_stored_or_shown():
    """Neuron (one type for every (layer, index)) equals, hashes, sorts, prints and serializes as the plain pair, so
    KN lists read back from a store as Neurons compare with the pairs stored and used before."""
    import json

    from knowloc.analysis import Neuron, kn_list, kn_set

    n = Neuron(3, 7)
    assert n == (3, 7) and hash(n) == hash((3, 7)) and (3, 7) in {n} and n in {(3, 7)}
    assert (n.layer, n.index) == (3, 7) and repr(n) == "(3, 7)" and str([n]) == "[(3, 7)]"
    assert json.dumps([n]) == "[[3, 7]]"
    assert sorted([Neuron(2, 9), (1, 5), Neuron(2, 1)]) == [(1, 5), (2, 1), (2, 9)]
    assert kn_list([[3, 7], [0, 1]]) == [(3, 7), (0, 1)] and all(type(x) is Neuron for x in kn_list([[3, 7]]))
    assert kn_set([[3, 7], [3, 7], [0, 1]]) == {(3, 7), (0, 1)} and isinstance(kn_set([]), frozenset)
    picked = select_neurons(torch.tensor([[0.1, 0.9], [0.5, 0.0]]), 0.2)  # cpu: pure maths
    assert picked == [(0, 1), (1, 0)] and all(type(x) is Neuron for x in picked)
    assert select_neurons(torch.tensor([[0.1, 0.9], [0.5, 0.0]]), 1, mode="top_k") == [(0, 1)]  # cpu: pure maths
