import pytest
import torch

from knowloc.errors import KnowlocError
from knowloc.models import families, load_model
from knowloc.models.hooks import edit_weights, scale_neurons, trace_activations
from knowloc.models.registry import resolve
from knowloc.models.tiny import TINY

PROMPT = "The capital of France is"


def _logits(lm, text=PROMPT):
    with torch.no_grad():
        return lm.model(input_ids=torch.tensor([lm.encode(text).prompt_ids], device=lm.device)).logits


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_family_loads_and_resolves(name, tiny_models):
    lm = tiny_models(name)
    assert lm.arch is resolve(lm.model)
    assert lm.n_layers == len(lm.blocks) >= 2
    assert lm.n_neurons == 96
    with trace_activations(lm) as acts:
        _logits(lm)
    assert sorted(acts) == list(range(lm.n_layers))
    assert acts[0].shape[-1] == lm.n_neurons


def test_every_registered_family_has_a_tiny_model(tiny_models):
    covered = {tiny_models(name).arch.family for name in TINY}
    assert covered == set(families())


@pytest.mark.parametrize("name", sorted(TINY))
def test_value_vector_lines_up_with_neuron_index(name, tiny_models, device):
    """Zeroing neuron i's activation == zeroing its value vector: the registry's weight layout is right."""
    lm = tiny_models(name)
    layer, index = lm.n_layers - 1, 7
    ids = torch.tensor([lm.encode(PROMPT).prompt_ids], device=device)
    with torch.no_grad():
        with scale_neurons(lm, [(layer, index)], 0.0, position=ids.shape[1] - 1):
            silenced = lm.model(input_ids=ids).logits[0, -1]
        with edit_weights(lm) as editor:
            editor.zero_values([(layer, index)])
            edited_last = lm.model(input_ids=ids).logits[0, -1]
    base = _logits(lm)[0, -1]
    assert not torch.allclose(silenced, base)
    torch.testing.assert_close(silenced, edited_last, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma", "tiny-gpt-neox"])
def test_hooks_and_edits_restore_model_bit_identically(name, tiny_models, device):
    lm = tiny_models(name)
    before = _logits(lm)
    weights = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with trace_activations(lm):
        _logits(lm)
    with scale_neurons(lm, [(0, 1), (1, 2)], 2.0, position=-1):
        assert not torch.equal(_logits(lm), before)
    with pytest.raises(RuntimeError):
        with edit_weights(lm) as editor:
            editor.zero_values([(0, 3), (1, 5)])
            editor.add_value(1, 2, torch.ones(lm.value_vector(1, 2).shape, device=device))
            assert not torch.equal(_logits(lm), before)
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with scale_neurons(lm, [(0, 1)], 0.0, position=-1):
            raise RuntimeError("boom")
    assert torch.equal(_logits(lm), before)
    for key, value in lm.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


def test_gpt2_value_layout_is_rows_llama_is_columns(tiny_models):
    gpt2, llama = tiny_models("tiny-gpt2"), tiny_models("tiny-llama")
    assert gpt2.arch.value_layout == "row" and gpt2.mlp_out(0).weight.shape[0] == gpt2.n_neurons
    assert llama.arch.value_layout == "col" and llama.mlp_out(0).weight.shape[1] == llama.n_neurons


def test_pre_activation_site_differs_and_is_labelled():
    lm = load_model("tiny-gpt2", site="pre_act")
    module, where = lm.site_module(0)
    assert module is lm.blocks[0].mlp.c_fc and where == "output"
    assert "EleutherAI" in lm.arch.pre_act_label
    assert "EasyEdit" in load_model("tiny-llama").arch.pre_act_label


def test_same_seed_same_weights_other_seed_differs():
    a, b, c = load_model("tiny-llama"), load_model("tiny-llama"), load_model("tiny-llama", seed=1)
    assert torch.equal(_logits(a), _logits(b))
    assert not torch.equal(_logits(a), _logits(c))


def test_unregistered_family_lists_registered(tiny_models):
    lm = tiny_models("tiny-gpt2")
    lm.model.config.model_type = "mystery"
    try:
        with pytest.raises(KnowlocError, match="unregistered model family 'mystery'.*llama.*register"):
            resolve(lm.model)
    finally:
        lm.model.config.model_type = "gpt2"
