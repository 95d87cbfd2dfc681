"""Rel / Gen / Avg are computed in one place (edit_scores), by a trial and by an EditSession alike."""

import math

import numpy as np
import pytest

from knowloc.analysis.editing_metrics import avg_score, edit_scores
from knowloc.data.texts import load_neutral_texts
from knowloc.editing import EditSession, KnErase, kn_trial, measure_edit
from knowloc.errors import KnowlocError

PROMPTS = ["The capital of France is", "Paris is the capital city of", "France's capital is"]
LOCALITY = ["The weather today is", "Egypt is located in", "The official language of Spain is"]
TEXTS = load_neutral_texts()[:4]


def test_edit_scores_by_hand():
    success = [True, False, True, True]
    assert edit_scores(success, 0, 0.5) == (1.0, 2 / 3, (1.0 + 2 / 3 + 0.5) / 3)
    assert edit_scores(success, 1, 1.0) == (0.0, 1.0, (0.0 + 1.0 + 1.0) / 3)
    # Gen on chosen queries (held-out ones), and nan when there are none
    assert edit_scores(success, 0, 0.5, [1]) == (1.0, 0.0, 0.5)
    rel, gen, avg = edit_scores(success, 0, 0.5, [])
    assert (rel, avg) == (1.0, 0.75) and math.isnan(gen)
    rel, gen, avg = edit_scores([False], 0, math.nan)
    assert rel == 0.0 and math.isnan(gen) and avg == 0.0  # avg of the available parts: rel alone


@pytest.mark.parametrize("index,others", [(4, None), (-1, None), (0, [1, 7]), (True, None)])
def test_edit_scores_refuses_indices_outside_the_queries(index, others):
    with pytest.raises(KnowlocError, match="out of range"):
        edit_scores([True, False, True, True], index, 0.5, others)


def test_edit_scores_equals_the_mean_the_session_used_to_take():
    """What EditSession computed before (np.mean of the non-nan parts) is bit-for-bit avg_score, so the stored
    trials keep their values."""
    values = sorted({k / m for m in range(1, 21) for k in range(m + 1)}) + [math.nan]
    for rel in (0.0, 1.0):
        for gen in values:
            for loc in values:
                old = float(np.mean([v for v in (rel, gen, loc) if not np.isnan(v)]))
                assert float(avg_score(rel, gen, loc)) == old


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_session_and_trial_agree_on_rel_gen_avg(tiny_models, name):
    lm = tiny_models(name)
    session = EditSession(lm, PROMPTS, "Paris", None, LOCALITY, ["sunny", "Africa", "Spanish"], TEXTS)
    neurons = [(layer, i) for layer in range(lm.n_layers) for i in range(0, lm.n_neurons, 2)]
    for index in range(len(PROMPTS)):
        scores = session.measure(KnErase(), index, neurons)
        result = measure_edit(session.baseline, *kn_trial(PROMPTS, index, "Paris", neurons), session.loc_gold)[0]
        assert (scores["rel"], scores["gen"], scores["avg"]) == (result.rel, result.gen, result.avg)
        assert (result.rel, result.gen, result.avg) == edit_scores(result.success, index, result.loc)
        held_out = session.measure(KnErase(), index, neurons, generalize_on=[index])
        assert held_out["gen"] == scores["rel"]
        assert held_out["avg"] == edit_scores(result.success, index, result.loc, [index])[2]
