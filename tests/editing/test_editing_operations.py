"""Erase / update of value vectors: exact effects and bit-exact restoration (row and column layouts)."""

import pytest
import torch

from knowloc.editing import erase, modified, normalize_neurons, update, update_delta
from knowloc.errors import KnowlocError
from knowloc.models.hooks import edit_weights

from model_state import assert_restored, snapshot

MODELS = ["tiny-gpt2", "tiny-llama"]  # GPT-2 Conv1D rows vs LLaMA Linear columns
NEURONS = [(0, 3), (0, 50), (1, 0), (2, 95), (2, 7)]


def _values(lm):
    return {(l, i): lm.value_vector(l, i).detach().clone() for l in range(lm.n_layers) for i in range(lm.n_neurons)}


def test_layouts_differ(tiny_models):
    assert tiny_models("tiny-gpt2").arch.value_layout == "row"
    assert tiny_models("tiny-llama").arch.value_layout == "col"


@pytest.mark.parametrize("name", MODELS)
def test_erase_zeroes_exactly_the_chosen_vectors_and_restores(tiny_models, name):
    lm = tiny_models(name)
    before_state = snapshot(lm)
    before = _values(lm)
    chosen = set(NEURONS)
    with edit_weights(lm) as editor:
        assert erase(editor, NEURONS) == sorted(chosen)
        for key, vec in before.items():
            now = lm.value_vector(*key)
            if key in chosen:
                assert torch.count_nonzero(now) == 0
                assert torch.count_nonzero(vec) > 0
            else:
                assert torch.equal(now, vec), key
        # only the MLP output projections of the edited layers moved
        state = lm.model.state_dict()
        changed = {state[k].data_ptr() for k in state if not torch.equal(state[k], before_state[k])}
        assert changed == {lm.mlp_out(layer).weight.data_ptr() for layer, _ in NEURONS}
    assert_restored(lm, before_state)


@pytest.mark.parametrize("name", MODELS)
def test_restored_bit_exactly_after_exception(tiny_models, name):
    lm = tiny_models(name)
    before_state = snapshot(lm)
    with pytest.raises(RuntimeError, match="boom"):
        with modified(lm, "erase", NEURONS):
            assert torch.count_nonzero(lm.value_vector(0, 3)) == 0
            raise RuntimeError("boom")
    assert_restored(lm, before_state)
    with pytest.raises(RuntimeError, match="boom"):
        with modified(lm, "update", NEURONS, old_token=10, new_token=20):
            raise RuntimeError("boom")
    assert_restored(lm, before_state)


@pytest.mark.parametrize("name", MODELS)
def test_update_adds_exactly_the_unembedding_delta(tiny_models, name):
    lm = tiny_models(name)
    before_state = snapshot(lm)
    before = _values(lm)
    old, new, l1, l2 = 37, 101, 1.5, 8.0
    W = lm.arch.unembed(lm.model).weight.detach()
    delta = -l1 * W[old] + l2 * W[new]
    assert torch.equal(update_delta(lm, old, new, l1, l2), delta)
    unembed = W.clone()
    chosen = set(NEURONS)
    with modified(lm, "update", NEURONS + [(0, 3)], old_token=old, new_token=new, lambda1=l1, lambda2=l2):
        for key, vec in before.items():
            now = lm.value_vector(*key)
            if key in chosen:  # the duplicate (0, 3) is edited once
                assert torch.equal(now, vec + delta), key
                assert torch.allclose(now - vec, delta, atol=1e-5)
                assert not torch.allclose(now, vec)
            else:
                assert torch.equal(now, vec), key
        # the unembedding itself is untouched
        assert torch.equal(lm.arch.unembed(lm.model).weight, unembed)
    assert_restored(lm, before_state)


def test_update_through_editor_matches_modified(tiny_models):
    lm = tiny_models("tiny-gpt2")
    before_state = snapshot(lm)
    with edit_weights(lm) as editor:
        update(editor, lm, {1: [4, 5]}, 3, 9)
        via_editor = lm.value_vector(1, 4).clone()
    with modified(lm, "update", [(1, 4)], old_token=3, new_token=9):
        assert torch.equal(lm.value_vector(1, 4), via_editor)
    assert_restored(lm, before_state)


def test_lambdas_zero_leave_values(tiny_models):
    lm = tiny_models("tiny-llama")
    v = lm.value_vector(2, 5).clone()
    with modified(lm, "update", [(2, 5)], old_token=3, new_token=9, lambda1=0.0, lambda2=0.0):
        assert torch.equal(lm.value_vector(2, 5), v)


def test_normalize_neurons_forms(tiny_models):
    lm = tiny_models("tiny-llama")
    assert normalize_neurons(lm, {2: [5, 1, 5], 0: []}) == [(2, 1), (2, 5)]
    assert normalize_neurons(lm, [(1, 2), (0, 9), (1, 2)]) == [(0, 9), (1, 2)]
    assert normalize_neurons(lm, []) == []


@pytest.mark.parametrize("kwargs,message", [
    (dict(operation="delete", neurons=[(0, 1)]), "operation"),
    (dict(operation="erase", neurons=[(3, 1)]), "layer 3 out of range"),
    (dict(operation="erase", neurons=[(0, 96)]), "neuron index 96"),
    (dict(operation="erase", neurons=[(0, -1)]), "neuron index -1"),
    (dict(operation="erase", neurons=[(0, 1.5)]), "integer"),
    (dict(operation="erase", neurons=[0, 1]), "pairs"),
    (dict(operation="update", neurons=[(0, 1)], old_token=None, new_token=3), "old_token"),
    (dict(operation="update", neurons=[(0, 1)], old_token=1, new_token=100000), "new_token"),
    (dict(operation="update", neurons=[(0, 1)], old_token=1, new_token=2, lambda2=float("nan")), "lambda2"),
])
def test_bad_arguments_raise_and_leave_model_untouched(tiny_models, kwargs, message):
    lm = tiny_models("tiny-llama")
    before_state = snapshot(lm)
    with pytest.raises(KnowlocError, match=message):
        with modified(lm, **kwargs):
            pass
    assert_restored(lm, before_state)
