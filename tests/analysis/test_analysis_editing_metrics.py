"""Tests for the knowledge-editing success rules and scores."""

import math

import numpy as np
import pytest
import torch

from knowloc.analysis import (
    avg_score,
    delta_ppl,
    erase_success,
    locality_kept,
    perplexity,
    relative_change,
    update_success,
)
from knowloc.errors import KnowlocError


@pytest.mark.parametrize(
    "p_before,p_after,top1,expected",
    [
        (0.8, 0.3, False, True),
        (0.8, 0.4, False, True),  # exactly a 50% relative drop counts
        (0.8, 0.41, False, False),  # not enough of a drop
        (0.8, 0.1, True, False),  # still the argmax
        (0.8, 0.9, False, False),  # went up
        (0.0, 0.0, False, False),  # nothing to erase
        (1.0, 0.0, False, True),
    ],
)
def test_erase_success(p_before, p_after, top1, expected):
    assert erase_success(p_before, p_after, top1) is expected


def test_erase_success_accepts_numpy_and_torch_scalars():
    assert erase_success(np.float32(0.6), torch.tensor(0.2), np.bool_(False)) is True


@pytest.mark.parametrize("args", [(1.2, 0.1, False), (0.5, -0.1, False), (float("nan"), 0.1, False)])
def test_erase_success_rejects_bad_probabilities(args):
    with pytest.raises(KnowlocError):
        erase_success(*args)


def test_update_success():
    assert update_success(0.6, 0.3) is True
    assert update_success(0.3, 0.3) is False  # ties fail: must be strictly above
    assert update_success(0.1, 0.3) is False
    with pytest.raises(KnowlocError):
        update_success(2.0, 0.1)


def test_relative_change():
    assert relative_change(2.0, 3.0) == pytest.approx(0.5)
    assert isinstance(relative_change(2.0, 1.0), float)
    assert math.isnan(relative_change(0.0, 1.0))
    out = relative_change(np.array([1.0, 0.0, 4.0]), np.array([0.5, 2.0, 4.0]))
    assert out[0] == pytest.approx(-0.5) and math.isnan(out[1]) and out[2] == 0.0
    out_t = relative_change(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 5.0]))
    assert out_t == pytest.approx([-0.5, 0.25])
    with pytest.raises(KnowlocError):
        relative_change(np.ones(2), np.ones(3))


def test_locality_kept():
    assert locality_kept(5, 5) is True
    assert locality_kept(" Paris", " London") is False
    assert locality_kept([1, 2], [1, 2]) is True
    assert locality_kept(torch.tensor([1, 2]), torch.tensor([1, 2])) is True
    assert locality_kept(torch.tensor([1, 2]), torch.tensor([1, 3])) is False
    assert locality_kept(np.array([1, 2]), np.array([1, 2, 3])) is False


def test_avg_score_mean_of_available():
    assert avg_score(1.0, 0.5, 0.0) == pytest.approx(0.5)
    assert avg_score(1.0, float("nan"), 0.0) == pytest.approx(0.5)
    assert avg_score(None, 0.4, None) == pytest.approx(0.4)
    assert math.isnan(avg_score(None, float("nan"), None))
    out = avg_score(np.array([1.0, np.nan]), np.array([0.0, np.nan]), 1.0)
    assert out == pytest.approx([2 / 3, 1.0])


def test_perplexity_and_delta():
    assert perplexity(3 * math.log(2.0), 3) == pytest.approx(2.0)
    assert perplexity(0.0, 10) == pytest.approx(1.0)
    assert perplexity(np.array([0.0, 2.0]), np.array([1, 2])) == pytest.approx([1.0, math.e])
    assert delta_ppl(10.0, 12.5) == pytest.approx(2.5)
    assert delta_ppl(np.array([1.0, 2.0]), np.array([2.0, 1.0])) == pytest.approx([1.0, -1.0])
    with pytest.raises(KnowlocError):
        perplexity(1.0, 0)
    with pytest.raises(KnowlocError):
        delta_ppl(np.ones(2), np.ones(3))


def test_counterfact_preference_and_neighborhood_by_hand():
    from knowloc.analysis.editing_metrics import neighborhood_score, preference

    # three paraphrases: o* wins on the first two; magnitudes +0.3, +0.1, -0.4
    score, magnitude = preference([0.5, 0.3, 0.1], [0.2, 0.2, 0.5])
    assert score == pytest.approx(2 / 3) and magnitude == pytest.approx(0.0)
    assert preference(torch.tensor(0.4), torch.tensor(0.4)) == (0.0, 0.0)  # a tie is no success
    assert all(math.isnan(x) for x in preference([], []))
    # neighborhood: each prompt's own answer against o*; kept on 2 of 4
    assert neighborhood_score([0.6, 0.1, 0.2, 0.3], [0.1, 0.5, 0.2, 0.05]) == 0.5
    with pytest.raises(KnowlocError, match="shapes differ"):
        preference([0.1, 0.2], [0.1])


def test_generation_entropy_and_hit_by_hand():
    from knowloc.analysis.editing_metrics import generation_entropy, generation_hit, ngram_entropy

    # "a b a b a": bigrams ab, ba, ab, ba -> H2 = 1 bit; trigrams aba, bab, aba -> H3 = H(2/3, 1/3)
    h3 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy(list("ababa"), 2) == pytest.approx(1.0)
    assert ngram_entropy(list("ababa"), 3) == pytest.approx(h3)
    assert generation_entropy("a b a b a") == pytest.approx((2 / 3 * 1.0 + 4 / 3 * h3) / 2)
    assert generation_entropy("Paris Paris Paris Paris Paris") == 0.0  # one phrase repeated
    assert generation_entropy("") == 0.0 and ngram_entropy(["x"], 2) == 0.0
    # words and punctuation split apart: "Rome," names Rome; "Romeo" does not
    assert generation_hit(" in Rome, the capital", "Rome") and generation_hit("NEW YORK city", "New York")
    assert not generation_hit(" Romeo and Juliet", "Rome")
    with pytest.raises(KnowlocError, match="non-empty target"):
        generation_hit("text", " ")
    with pytest.raises(KnowlocError, match="integer >= 1"):
        ngram_entropy(["a"], 0)
