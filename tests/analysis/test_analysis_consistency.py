"""Tests for the consistency scores CS1, CS2, CS_p and the K_C / K_I split."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knowloc.analysis import (
    consistency_scores,
    cs_pairwise,
    cs_share,
    cs_strict,
    jaccard,
    split_groups,
)
from knowloc.errors import KnowlocError

A, B, C = (0, 1), (0, 2), (3, 7)
EXAMPLE = [{A, B}, {B, C}, {B}]


def test_hand_computed_example():
    assert cs_strict(EXAMPLE) == pytest.approx(1 / 3)
    assert cs_pairwise(EXAMPLE) == pytest.approx(np.mean([1 / 3, 1 / 2, 1 / 2]))
    # counts: A 1, B 3, C 1; n = 3; p = 0.5 -> need >= 1.5 sets -> only B.
    assert cs_share(EXAMPLE, 0.5) == pytest.approx(1 / 3)
    assert cs_share(EXAMPLE, 1 / 3) == pytest.approx(1.0)  # need >= 1 set
    assert cs_share(EXAMPLE, 0.0) == pytest.approx(1.0)
    assert consistency_scores(EXAMPLE) == pytest.approx({"cs1": 1 / 3, "cs2": 4 / 9, "csp": 1 / 3})


def test_identical_disjoint_and_empty():
    assert consistency_scores([{A, B}, {A, B}]) == {"cs1": 1.0, "cs2": 1.0, "csp": 1.0}
    assert consistency_scores([{A}, {B}, {C}]) == {"cs1": 0.0, "cs2": 0.0, "csp": 0.0}
    assert consistency_scores([set(), set()]) == {"cs1": 0.0, "cs2": 0.0, "csp": 0.0}
    assert jaccard(set(), set()) == 0.0
    assert cs_pairwise([set(), set(), {A}]) == 0.0


def test_share_uses_count_at_least_p_times_n_without_float_noise():
    # 10 sets: A in 7 of them, B in 6. 0.7 * 10 == 7.000000000000001 in floating point.
    sets = [{A, B}] * 6 + [{A}] + [set()] * 3
    assert cs_share(sets, 0.7) == pytest.approx(0.5)
    assert cs_share(sets, 0.6) == pytest.approx(1.0)
    assert cs_share(sets, 0.71) == 0.0


def test_accepts_lists_and_tuples_of_neurons():
    assert cs_strict([[A, B], (B,)]) == pytest.approx(0.5)


def test_bad_arguments_raise():
    with pytest.raises(KnowlocError):
        cs_strict([])
    with pytest.raises(KnowlocError):
        cs_pairwise([{A}])
    with pytest.raises(KnowlocError):
        consistency_scores([{A}])
    with pytest.raises(KnowlocError):
        cs_share(EXAMPLE, 1.5)
    with pytest.raises(KnowlocError):
        cs_strict({A, B})  # a single set, not a sequence of sets


neuron = st.tuples(st.integers(0, 3), st.integers(0, 5))
neuron_sets = st.lists(st.sets(neuron, max_size=8), min_size=2, max_size=6)


@settings(max_examples=150, deadline=None)
@given(neuron_sets, st.floats(0.0, 1.0))
def test_properties(sets, p):
    cs1, cs2, csp = cs_strict(sets), cs_pairwise(sets), cs_share(sets, p)
    for v in (cs1, cs2, csp):
        assert 0.0 <= v <= 1.0
    assert cs1 <= cs2 + 1e-12
    assert cs1 <= csp + 1e-12
    assert cs_share(sets, 1.0) == pytest.approx(cs1)
    assert cs_share(sets, p) <= cs_share(sets, p / 2) + 1e-12  # non-increasing in p
    # brute-force CS_p
    union = set().union(*sets)
    if union:
        keep = [u for u in union if sum(u in s for s in sets) >= p * len(sets) - 1e-9]
        assert csp == pytest.approx(len(keep) / len(union))
    else:
        assert csp == 0.0
    # CS2 brute force over ordered pairs
    n = len(sets)
    pairs = [jaccard(sets[i], sets[j]) for i in range(n) for j in range(n) if i != j]
    assert cs2 == pytest.approx(sum(pairs) / len(pairs))
    assert not math.isnan(cs2)


def test_split_groups():
    mask = split_groups([0.1, 0.5, 0.49, 0.9], 0.5)
    assert mask.dtype == bool
    assert mask.tolist() == [False, True, False, True]
    assert split_groups(np.array([]), 0.5).tolist() == []
    with pytest.raises(KnowlocError):
        split_groups([0.1, float("nan")], 0.5)
    with pytest.raises(KnowlocError):
        split_groups([0.1], float("nan"))
