"""Tests for the Consistency-Aware Score (CAS) and its selection rule."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from knowloc.analysis import cas_components, cas_scores, cas_select, select_neurons
from knowloc.errors import KnowlocError

# s1 = [[1, .5], [0, 0]]; s2 = [[1, 1], [0, -.25]]
HAND = torch.tensor([[[2.0, 1.0], [0.0, 0.0]], [[4.0, 4.0], [0.0, -1.0]]])


def test_hand_computed_scores():
    mu, sigma = cas_components(HAND)
    assert np.allclose(mu.numpy(), [[1.0, 0.75], [0.0, -0.125]])
    assert np.allclose(sigma.numpy(), [[0.0, 0.25], [0.0, 0.125]])
    cas = cas_scores(HAND)
    assert cas.dtype == torch.float64 and cas.shape == (2, 2)
    assert np.allclose(cas.numpy(), [[1.0, 0.5], [0.0, -0.25]])
    assert np.allclose(cas_scores(HAND, beta1=2.0, beta2=0.0).numpy(), [[2.0, 1.5], [0.0, -0.25]])


def test_population_std():
    stack = torch.rand(5, 3, 4, generator=torch.Generator().manual_seed(0)) + 0.1
    s = stack / stack.amax(dim=(1, 2), keepdim=True)
    mu, sigma = cas_components(stack)
    assert torch.allclose(mu, s.double().mean(0))
    assert torch.allclose(sigma, s.double().std(0, unbiased=False))


def test_hand_computed_selection():
    assert cas_select(HAND, 0.2) == [(0, 0), (0, 1)]
    assert cas_select(HAND, 0.5) == [(0, 0)]  # strict: 0.5 is not > 0.5 * 1
    assert cas_select(HAND, 0.2, top_k=1) == [(0, 0)]
    assert cas_select(HAND, 0.2, top_k=0) == []
    assert cas_select([HAND[0], HAND[1]], 0.2) == [(0, 0), (0, 1)]
    assert cas_select(HAND.numpy(), 0.2) == [(0, 0), (0, 1)]


def test_query_with_nonpositive_max_contributes_zero():
    stack = torch.stack([torch.tensor([[1.0, 0.5]]), torch.tensor([[-1.0, -2.0]])])
    mu, sigma = cas_components(stack)
    assert np.allclose(mu.numpy(), [[0.5, 0.25]])
    assert np.allclose(sigma.numpy(), [[0.5, 0.25]])
    assert cas_select(stack, 0.0) == []  # CAS = mu - sigma = 0 everywhere -> max <= 0


def test_all_nonpositive_gives_empty():
    assert cas_select(-torch.rand(3, 2, 2), 0.0) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 1.2}, {"threshold": -0.01}, {"beta1": -1.0}, {"beta2": float("nan")}, {"top_k": -1}],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(KnowlocError):
        cas_select(HAND, **kwargs)


def test_bad_stacks_raise():
    with pytest.raises(KnowlocError):
        cas_scores(torch.zeros(2, 3))
    with pytest.raises(KnowlocError):
        cas_scores(torch.zeros(0, 2, 3))
    with pytest.raises(KnowlocError):
        cas_scores([])
    with pytest.raises(KnowlocError):
        cas_scores([torch.zeros(2, 3), torch.zeros(2, 4)])
    with pytest.raises(KnowlocError):
        cas_scores(torch.tensor([[[1.0, float("nan")]]]))


# --- required property: identical attributions -> sigma = 0 and CAS selection == relative rule ---

# attribution magnitudes: 0 or within [1e-6, 1e6] (a max of 1e-308 would overflow the normalisation)
finite = st.one_of(st.just(0.0), st.floats(1e-6, 1e6), st.floats(-1e6, -1e-6))


@settings(max_examples=200, deadline=None)
@given(
    attribution=arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 6)), elements=finite),
    n=st.integers(1, 6),
    t=st.floats(0.0, 1.0),
)
def test_identical_queries_reduce_to_relative_rule(attribution, n, t):
    stack = np.broadcast_to(attribution, (n, *attribution.shape)).copy()
    _, sigma = cas_components(stack)
    assert torch.count_nonzero(sigma) == 0
    assert cas_select(stack, t) == select_neurons(attribution, t, mode="relative")


@pytest.mark.parametrize("seed", range(20))
def test_identical_queries_reduce_to_relative_rule_random_float32(seed):
    gen = torch.Generator().manual_seed(seed)
    attribution = torch.randn(6, 32, generator=gen, dtype=torch.float32)
    if seed % 5 == 0:
        attribution = attribution.round(decimals=1)  # ties and exact multiples of t
    stack = attribution.expand(7, -1, -1)
    for t in (0.0, 0.1, 0.2, 0.3, 0.5, 0.9, 1.0):
        assert cas_select(stack, t) == select_neurons(attribution, t, mode="relative")
