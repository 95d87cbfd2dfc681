"""Update rules (dai, signed, calibrated) and dlogPPL of trials."""

import math

import pytest
import torch

from knowloc.editing import compute_baseline, kn_trial, measure_edit, modified, rule_deltas
from knowloc.errors import KnowlocError

PROMPTS = ["The capital of France is", "France's capital city is", "The seat of government of France is"]


def _vectors(seed=0, k=5, d=8):
    """Value vectors and two unembedding rows on the CPU: rule_deltas is pure and needs no model."""
    g = torch.Generator().manual_seed(seed)  # cpu
    return torch.randn(k, d, generator=g), torch.randn(d, generator=g), torch.randn(d, generator=g)  # cpu


def test_signed_equals_dai_when_every_activation_is_non_negative():
    values, e_old, e_new = _vectors()
    acts = torch.tensor([0.5, 2.0, 0.0, 1e-6, 3.0])  # cpu, as _vectors
    dai = rule_deltas(values, e_old, e_new, None, 1.0, 8.0, "dai")
    assert torch.equal(rule_deltas(values, e_old, e_new, acts, 1.0, 8.0, "signed"), dai)
    assert torch.allclose(dai, (-e_old + 8 * e_new).expand(5, -1))


def test_signed_flips_the_change_of_negative_neurons():
    values, e_old, e_new = _vectors(1)
    acts = torch.tensor([0.5, -2.0, 1.0, -0.1, 3.0])  # cpu, as _vectors
    dai = rule_deltas(values, e_old, e_new, None, 1.5, 4.0, "dai")
    signed = rule_deltas(values, e_old, e_new, acts, 1.5, 4.0, "signed")
    for k, a in enumerate(acts):
        assert torch.equal(signed[k], dai[k] if a >= 0 else -dai[k])
        # the residual-stream change a_n * dv_n always points to +|a_n| (lambda2 E(o') - lambda1 E(o))
        assert torch.allclose(a * signed[k], abs(a) * (4.0 * e_new - 1.5 * e_old))


def test_calibrated_scales_with_the_value_vector_norm():
    values, e_old, e_new = _vectors(2)
    acts = torch.tensor([1.0, -1.0, 2.0, 0.3, -0.7])  # cpu, as _vectors
    delta = rule_deltas(values, e_old, e_new, acts, 1.0, 2.0, "calibrated")
    direction = -e_old / e_old.norm() + 2.0 * e_new / e_new.norm()
    for k in range(5):
        sign = 1.0 if acts[k] >= 0 else -1.0
        assert torch.allclose(delta[k], sign * values[k].norm() * direction, atol=1e-6)
    doubled = rule_deltas(2 * values, e_old, e_new, acts, 1.0, 2.0, "calibrated")
    assert torch.allclose(doubled, 2 * delta, atol=1e-6)
    # scaling E(o) or E(o') changes nothing: only their directions count
    assert torch.allclose(rule_deltas(values, 5 * e_old, 0.1 * e_new, acts, 1.0, 2.0, "calibrated"), delta, atol=1e-5)


def test_calibrated_with_tied_lambdas_has_no_shared_component():
    """lambda2 e' - lambda1 e = (l1 + l2)/2 (e' - e) + (l2 - l1)/2 (e' + e) for unit e, e': with lambda1 = lambda2
    the change is orthogonal to e + e' (the direction two tokens' rows share); otherwise its dot product with
    e + e' is (lambda2 - lambda1)/2 |e + e'|^2 per unit of |v_n|."""
    values, e_old, e_new = _vectors(3)
    acts = torch.ones(5)  # cpu, as _vectors
    shared = e_old / e_old.norm() + e_new / e_new.norm()
    tied = rule_deltas(values, e_old, e_new, acts, 2.0, 2.0, "calibrated")
    assert torch.allclose(tied @ shared, torch.zeros(5), atol=1e-5)  # cpu, as _vectors
    untied = rule_deltas(values, e_old, e_new, acts, 1.0, 2.0, "calibrated")
    expected = values.norm(dim=1) * 0.5 * shared.norm() ** 2
    assert torch.allclose(untied @ shared, expected, rtol=1e-5)


def test_sign_aware_rules_need_activations():
    values, e_old, e_new = _vectors()
    with pytest.raises(KnowlocError, match="activation"):
        rule_deltas(values, e_old, e_new, None, 1.0, 2.0, "signed")
    with pytest.raises(KnowlocError, match="update rule"):
        rule_deltas(values, e_old, e_new, None, 1.0, 2.0, "rome")


@pytest.mark.parametrize("rule", ["signed", "calibrated"])
def test_modified_applies_the_rule_and_restores(tiny_models, rule, device):
    lm = tiny_models("tiny-llama")
    neurons = [(0, 3), (1, 7), (2, 11)]
    acts = {(0, 3): 0.4, (1, 7): -1.2, (2, 11): 2.0}
    before = {n: lm.value_vector(*n).clone() for n in neurons}
    W = lm.arch.unembed(lm.model).weight.detach()
    expected = rule_deltas(torch.stack([before[n] for n in neurons]), W[5], W[9],
                           torch.tensor([acts[n] for n in neurons], device=device), 1.0, 3.0, rule)
    with modified(lm, "update", neurons, old_token=5, new_token=9, lambda2=3.0, rule=rule, activations=acts):
        for k, n in enumerate(neurons):
            assert torch.allclose(lm.value_vector(*n), before[n] + expected[k], atol=1e-6)
    for n in neurons:
        assert torch.equal(lm.value_vector(*n), before[n])
    with pytest.raises(KnowlocError, match="activations"):
        with modified(lm, "update", neurons, old_token=5, new_token=9, rule=rule):
            pass


def test_unedited_trial_has_dlogppl_exactly_zero(tiny_models):
    from knowloc.data import load_neutral_texts

    lm = tiny_models("tiny-llama")
    texts = load_neutral_texts()[:3]
    locality = ["The sky is", "Water boils at"]
    baseline = compute_baseline(lm, PROMPTS, locality, texts)
    assert math.isfinite(baseline.logppl) and baseline.ppl == pytest.approx(math.exp(baseline.logppl))
    for neurons in ([], [(1, 5)]):
        trial = kn_trial(PROMPTS, 0, "Paris", neurons, "update", "Rome", lambda2=0.0, lambda1=0.0)
        result = measure_edit(baseline, *trial)[0]
        assert result.dlogppl == 0.0 and result.dppl == 0.0 and result.loc == 1.0
    neurons = [(l, i) for l in range(3) for i in range(0, 96, 3)]
    erased = measure_edit(baseline, *kn_trial(PROMPTS, 0, "Paris", neurons))[0]
    assert erased.dlogppl != 0.0 and math.isclose(erased.dlogppl,
                                                  math.log(erased.ppl_after / erased.ppl_before), rel_tol=1e-9)


def test_sign_aware_trial_reads_the_edited_querys_activations(tiny_models):
    """signed on query i uses sign(a_n) at q_i's last position (the baseline's recorded activations)."""
    lm = tiny_models("tiny-llama")
    baseline = compute_baseline(lm, PROMPTS, [], [])
    assert baseline.activations.shape == (3, lm.n_layers, lm.n_neurons)
    acts = baseline.activations[1]
    neurons = [(2, i) for i in range(8)]
    negative = [n for n in neurons if acts[n] < 0]
    assert negative and len(negative) < len(neurons)  # a mix of signs, so the rules differ
    dai = measure_edit(baseline, *kn_trial(PROMPTS, 1, "Paris", neurons, "update", "Rome", lambda2=50.0))[0]
    signed = measure_edit(baseline, *kn_trial(PROMPTS, 1, "Paris", neurons, "update", "Rome", lambda2=50.0,
                                              update_rule="signed"))[0]
    assert dai.dprob != signed.dprob
