import torch

from knowloc.models.hooks import scale_neurons
from knowloc.study.experiments.query_mapping import random_control, scaled_gold_probs

PROMPT = "The capital of France is"


def test_random_control_same_layers_disjoint_reproducible():
    neurons = [(0, 3), (0, 5), (2, 7)]
    a = random_control(neurons, 96, seed=4)
    assert a == random_control(neurons, 96, seed=4)
    assert a != random_control(neurons, 96, seed=5)
    assert sorted(l for l, _ in a) == [0, 0, 2]
    assert not set(a) & set(neurons)


def test_batched_variants_equal_one_at_a_time(tiny_models, device):
    lm = tiny_models("tiny-llama")
    gold = lm.first_target_token("Paris")
    variants = [([(0, 1), (2, 5)], 0.0), ([(1, 4)], 2.0), ([(0, 1), (1, 3), (2, 9)], 2.0)]
    batched = scaled_gold_probs(lm, PROMPT, gold, variants)
    ids = torch.tensor([lm.encode(PROMPT).prompt_ids], device=device)
    with torch.no_grad():
        clean = torch.softmax(lm.model(input_ids=ids).logits[0, -1], -1)[gold]
        singles = [float(clean)]
        for neurons, factor in variants:
            with scale_neurons(lm, neurons, factor, position=ids.shape[1] - 1):
                singles.append(float(torch.softmax(lm.model(input_ids=ids).logits[0, -1], -1)[gold]))
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(singles), rtol=1e-5, atol=1e-8)  # cpu floats
    assert batched[1] != batched[0]
