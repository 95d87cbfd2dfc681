"""Baselines, their trials (measure_edit of a kn_trial) and padded perplexity on tiny random models."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from knowloc.data.texts import load_neutral_texts
from knowloc.editing import (
    compute_baseline,
    kn_trial,
    measure_edit,
    perplexity_of_texts,
    text_nll,
)
from knowloc.errors import KnowlocError
from knowloc.models.hooks import trace_activations

from model_state import snapshot

PROMPTS = ["The capital of France is", "Paris is the capital city of", "France's capital is"]
LOCALITY = ["The weather today is", "Egypt is located in", "The official language of Spain is"]
TEXTS = load_neutral_texts()[:6]


def _all_neurons(lm):
    return {layer: list(range(lm.n_neurons)) for layer in range(lm.n_layers)}


def _evaluate(lm, trial, baseline, gold_tokens=None):
    assert baseline.lm is lm and baseline.locality_prompts == tuple(LOCALITY) and baseline.neutral_texts == tuple(TEXTS)
    return measure_edit(baseline, *trial, gold_tokens)[0]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_empty_neuron_set_changes_nothing(setup, name):
    lm, baseline = setup(name)
    before = snapshot(lm)
    result = _evaluate(lm, kn_trial(PROMPTS, 1, "Paris", [], "erase"), baseline, [5, 6, 7])
    assert result.n_neurons == 0
    assert result.rel == 0.0 and result.gen == 0.0  # erasure cannot succeed without an edit
    assert result.loc == 1.0
    assert result.avg == pytest.approx(1 / 3)
    assert result.dppl == 0.0
    assert result.dprob_self == 0.0 and result.dprob_neighbors == 0.0
    assert result.dprob == (0.0, 0.0, 0.0) and result.dprob_locality == 0.0
    assert result.ppl_before == result.ppl_after == baseline.ppl > 1
    for key, value in lm.model.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_erasing_all_neurons_changes_the_gold_probability(setup, name, device):
    lm, baseline = setup(name)
    before = snapshot(lm)
    result = _evaluate(lm, kn_trial(PROMPTS, 0, "Paris", _all_neurons(lm), "erase"), baseline)
    assert result.n_neurons == lm.n_layers * lm.n_neurons
    assert result.dprob_self != 0.0 and not math.isnan(result.dprob_self)
    assert result.dprob_neighbors != 0.0
    assert result.dppl != 0.0
    assert result.rel in (0.0, 1.0) and 0.0 <= result.gen <= 1.0 and 0.0 <= result.loc <= 1.0
    assert result.avg == pytest.approx((result.rel + result.gen + result.loc) / 3)
    # the measured dprob is the relative change of the gold first-token probability with all MLPs off
    gold = lm.first_target_token("Paris")
    ids = torch.tensor([list(lm.encode(PROMPTS[0]).prompt_ids)], device=device)
    with torch.no_grad():
        try:  # the model is shared by the whole session: restored whatever happens
            for layer in range(lm.n_layers):
                lm.mlp_out(layer).weight.zero_()
            p_after = float(torch.softmax(lm.model(input_ids=ids).logits[0, -1].float(), -1)[gold])
        finally:
            for key, value in before.items():
                lm.model.state_dict()[key].copy_(value)
    p_before = float(baseline.probs[0, gold])
    assert result.dprob_self == pytest.approx((p_after - p_before) / p_before, rel=1e-4)
    for key, value in lm.model.state_dict().items():
        assert torch.equal(value, before[key])


def _positive_last_layer_neurons(lm, prompt):
    """Last-layer neurons active (> 0) at the prompt's last position: adding E(o') to them pushes o' up."""
    last = lm.n_layers - 1
    with torch.no_grad(), trace_activations(lm, [last]) as records:
        lm.model(input_ids=torch.tensor([list(lm.encode(prompt).prompt_ids)], device=lm.device))
    act = records[last][0, -1]
    return [(last, int(i)) for i in torch.nonzero(act > 0).flatten()]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_update_with_huge_lambda2_ranks_new_object_above_gold(setup, name):
    lm, baseline = setup(name)
    gold = lm.first_target_token("Paris")
    # a new object o' that is not already above o before the edit (so success below is the edit's doing)
    candidates = ["Berlin", "Rome", "Tokyo", "Spanish", "Africa", "Italy", "Japan"]
    target = next(c for c in candidates if lm.first_target_token(c) != gold
                  and baseline.probs[0, lm.first_target_token(c)] < baseline.probs[0, gold])
    control = _evaluate(lm, kn_trial(PROMPTS, 0, "Paris", [], "update", target), baseline)
    assert control.rel == 0.0
    neurons = _positive_last_layer_neurons(lm, PROMPTS[0])
    assert len(neurons) >= 20
    result = _evaluate(lm, kn_trial(PROMPTS, 0, "Paris", neurons, "update", target, lambda2=1000.0), baseline)
    assert result.rel == 1.0
    assert result.success[0] is True
    assert result.operation == "update" and result.n_neurons == len(neurons)


def test_gen_is_nan_with_a_single_prompt_and_loc_dppl_nan_without_data(tiny_models):
    lm = tiny_models("tiny-llama")
    baseline = compute_baseline(lm, PROMPTS[:1])
    assert math.isnan(baseline.ppl)
    result = measure_edit(baseline, *kn_trial(PROMPTS[:1], 0, "Paris", _all_neurons(lm)))[0]
    assert math.isnan(result.gen) and math.isnan(result.dprob_neighbors)
    assert math.isnan(result.loc) and math.isnan(result.dppl)
    assert result.avg == result.rel


def test_locality_counts_changed_argmax(setup):
    lm, baseline = setup("tiny-llama")
    result = _evaluate(lm, kn_trial(PROMPTS, 0, "Paris", _all_neurons(lm)), baseline)
    # recompute loc by hand from a fresh forward with every value vector zeroed
    from knowloc.editing import modified
    from knowloc.models.scoring import next_token_distributions

    with modified(lm, "erase", _all_neurons(lm)):
        after = [d.probs.argmax().item() for d in next_token_distributions(lm, LOCALITY)]
    expected = sum(a == b for a, b in zip(after, baseline.locality_top1)) / len(LOCALITY)
    assert result.loc == pytest.approx(expected)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma"])
def test_perplexity_padding_equals_unpadded(tiny_models, name, device):
    lm = tiny_models(name)
    texts = load_neutral_texts()[:5] + ["Short.", "A much longer sentence about the river, the bridge and the hill."]
    lengths = {len(lm.tokenizer(t)["input_ids"]) for t in texts}
    assert len(lengths) > 2  # really padded
    nll_sum, n_tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:  # one unpadded forward per text
            ids = torch.tensor([lm.tokenizer(text)["input_ids"]], device=device)
            logits = lm.model(input_ids=ids).logits[0, :-1].float()
            nll_sum += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            n_tokens += ids.shape[1] - 1
    got_sum, got_n = text_nll(lm, texts)
    assert got_n == n_tokens
    assert got_sum == pytest.approx(nll_sum, rel=1e-5)
    assert perplexity_of_texts(lm, texts) == pytest.approx(math.exp(nll_sum / n_tokens), rel=1e-5)
    # batch size does not matter
    assert perplexity_of_texts(lm, texts, batch_size=3) == pytest.approx(perplexity_of_texts(lm, texts), rel=1e-5)


def test_perplexity_bad_inputs(tiny_models):
    lm = tiny_models("tiny-gpt2")
    with pytest.raises(KnowlocError, match="non-empty"):
        perplexity_of_texts(lm, [])
    with pytest.raises(KnowlocError, match="one string"):
        perplexity_of_texts(lm, "The dog waited.")
    with pytest.raises(KnowlocError, match="no token"):
        perplexity_of_texts(lm, ["a"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompts=[], index=0, gold="Paris", neurons=[]), "non-empty"),
    (dict(prompts=PROMPTS, index=3, gold="Paris", neurons=[]), "index 3"),
    (dict(prompts=PROMPTS, index=0, gold=" ", neurons=[]), "gold"),
    (dict(prompts=PROMPTS, index=0, gold="Paris", neurons=[], operation="flip"), "operation"),
    (dict(prompts=PROMPTS, index=0, gold="Paris", neurons=[], operation="update"), "new_object"),
])
def test_bad_trials(kwargs, message):
    with pytest.raises(KnowlocError, match=message):
        kn_trial(**kwargs)


def test_a_bad_update_rule_is_refused_when_the_trial_is_made():
    with pytest.raises(KnowlocError, match="update rule"):
        kn_trial(PROMPTS, 0, "Paris", [], "update", "Rome", update_rule="rome")


def test_mismatched_baseline_and_arguments(setup):
    lm, baseline = setup("tiny-gpt2")
    trial = kn_trial(PROMPTS, 0, "Paris", [])
    with pytest.raises(KnowlocError, match="not the baseline's query"):
        measure_edit(baseline, *kn_trial(["Another fact's prompt is"], 0, "Paris", []))
    with pytest.raises(KnowlocError, match="not the baseline's query"):  # the right prompt at the wrong index
        measure_edit(baseline, *kn_trial(PROMPTS, 1, "Paris", [])[:2], trial[2])
    with pytest.raises(KnowlocError, match="index 3"):
        measure_edit(baseline, trial[0], 3, trial[2])
    with pytest.raises(KnowlocError, match="3 locality prompts"):
        measure_edit(baseline, *trial, [1])
    with pytest.raises(KnowlocError, match="not a token id"):
        measure_edit(baseline, *trial, [1, 2, 10**9])
    with pytest.raises(KnowlocError, match="same token"):
        measure_edit(baseline, *kn_trial(PROMPTS, 0, "Paris", [], "update", "Paris"))
    with pytest.raises(KnowlocError, match="holds no model"):
        measure_edit(dataclasses.replace(baseline, lm=None), *trial)


def test_a_trial_is_measured_on_the_baselines_own_locality_prompts_and_texts(setup):
    """The baseline is the single holder of a fact's locality prompts and neutral texts: a baseline computed
    without them measures no Loc and no dlogPPL, one with them measures both (on the same model)."""
    lm, baseline = setup("tiny-gpt2")
    trial = kn_trial(PROMPTS, 0, "Paris", _all_neurons(lm))
    bare = compute_baseline(lm, PROMPTS)
    assert bare.lm is lm and bare.locality_prompts == () and bare.neutral_texts == ()
    without, full = measure_edit(bare, *trial)[0], measure_edit(baseline, *trial)[0]
    assert math.isnan(without.loc) and math.isnan(without.dlogppl) and math.isnan(without.dppl)
    assert 0.0 <= full.loc <= 1.0 and full.dlogppl != 0.0 and math.isfinite(full.dlogppl)
    assert without.success == full.success and without.rel == full.rel and without.gen == full.gen
    only_texts = measure_edit(compute_baseline(lm, PROMPTS, (), TEXTS), *trial)[0]
    assert math.isnan(only_texts.loc) and only_texts.dlogppl == pytest.approx(full.dlogppl, rel=1e-5)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_counterfact_scores_read_the_measured_distributions(setup, name):
    """An update's CounterFact scores are the edited model's first-token probabilities compared by hand; an
    erasure has none."""
    lm, baseline = setup(name)
    measured = baseline.measure(None)  # the unedited model: its own distributions
    probs, loc_probs = measured[0], measured[2]
    gold, new, loc_gold = 5, 9, (3, 4, 11)
    result = baseline.score(measured, 1, "update", gold, new, 0, loc_gold)
    row = result.counterfact_row()
    assert row["efficacy_score"] == float(probs[1, new] > probs[1, gold]) == result.rel
    assert row["efficacy_magnitude"] == pytest.approx(float(probs[1, new] - probs[1, gold]))
    others = [0, 2]
    assert row["paraphrase_score"] == pytest.approx(sum(float(probs[j, new] > probs[j, gold]) for j in others) / 2)
    assert row["paraphrase_magnitude"] == pytest.approx(sum(float(probs[j, new] - probs[j, gold]) for j in others) / 2)
    assert row["neighborhood_score"] == pytest.approx(
        sum(float(loc_probs[c, t] > loc_probs[c, new]) for c, t in enumerate(loc_gold)) / 3)
    erased = baseline.score(measured, 1, "erase", gold, None).counterfact_row()
    assert all(math.isnan(v) for v in erased.values())
    assert math.isnan(baseline.score(measured, 1, "update", gold, new).neighborhood_score)  # no locality answers


def test_generation_scores_are_the_greedy_continuation(tiny_models, device):
    """generation_scores continues each prompt greedily (batched, left-padded): the same tokens as a step-by-step
    argmax loop on each prompt alone; the hit reads the decoded continuation."""
    from knowloc.editing import generation_scores

    lm = tiny_models("tiny-llama")
    scores = generation_scores(lm, PROMPTS[:2], ["Paris", "Paris"], n_tokens=4)
    for prompt, score in zip(PROMPTS[:2], scores):
        ids = list(lm.encode(prompt).prompt_ids)
        for _ in range(4):
            with torch.no_grad():
                logits = lm.model(input_ids=torch.tensor([ids], device=device)).logits
            ids.append(int(logits[0, -1].argmax()))
        expected = lm.tokenizer.decode(ids[-4:], skip_special_tokens=True)
        assert score["generated"] == expected
        words = expected.split()
        if words:
            assert generation_scores(lm, [prompt], [words[0]], n_tokens=4)[0]["generation_hit"] == 1.0
        assert score["generation_entropy"] >= 0.0
    with pytest.raises(KnowlocError, match="1 targets for 2 prompts"):
        generation_scores(lm, PROMPTS[:2], ["Paris"])
