"""`knowloc neuron`: the tokens a value vector promotes and suppresses, its activations, where it is a KN."""

import json

import pytest
import torch

from knowloc.cli import main
from knowloc.models.neuron import activation_stats, describe_neurons, value_logits


def _manual_logits(lm, layer, index):
    v = lm.value_vector(layer, index).detach().view(1, 1, -1)
    if lm.arch.mlp_tail is not None:  # Gemma-2/3: the post-feedforward norm comes first
        v = lm.arch.mlp_tail(lm.blocks[layer])(v)
    with torch.no_grad():
        h = lm.arch.final_norm(lm.model)(v)
        return (h @ lm.arch.unembed(lm.model).weight.T)[0, 0].float()


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma"])
def test_value_logits_read_the_value_vector_through_the_final_norm(tiny_models, name):
    lm = tiny_models(name)
    logits = value_logits(lm, [(1, 3), (2, 40)])
    for row, (layer, index) in enumerate([(1, 3), (2, 40)]):
        expected = _manual_logits(lm, layer, index)
        cap = getattr(lm.model.config, "final_logit_softcapping", None)
        if cap:
            expected = torch.tanh(expected / cap) * cap
        torch.testing.assert_close(logits[row], expected.cpu(), rtol=1e-5, atol=1e-5)  # value_logits: on the CPU
    item = describe_neurons(lm, [(2, 40)], k=4)[0]
    order = torch.argsort(logits[1], descending=True)
    assert [t for t, _ in item["promoted"]] == [lm.tokenizer.decode([int(i)]) for i in order[:4]]
    assert [t for t, _ in item["suppressed"]] == [lm.tokenizer.decode([int(i)]) for i in order.flip(0)[:4]]


def test_activation_stats_match_a_traced_forward(tiny_models, device):
    from knowloc.models.hooks import trace_activations

    lm = tiny_models("tiny-llama")
    prompts = ["The capital of France is", "A dog"]
    stats = activation_stats(lm, 1, 7, prompts)
    values = []
    for p in prompts:
        with torch.no_grad(), trace_activations(lm, [1]) as acts:
            lm.model(input_ids=torch.tensor([lm.encode(p).prompt_ids], device=device))
        values.append(float(acts[1][0, -1, 7]))
    assert stats["mean"] == pytest.approx(sum(values) / 2, rel=1e-4, abs=1e-6)
    assert stats["min"] == pytest.approx(min(values), rel=1e-4) and stats["max"] == pytest.approx(max(values), rel=1e-4)


def test_cli_neuron_on_a_tiny_model_and_a_study(capsys, tmp_path, study_args):
    from knowloc.study.config import StudyConfig
    from knowloc.study.runner import run_study

    out = tmp_path / "study"
    run_study(StudyConfig(**study_args(out, experiments=["consistency"], facts=3, specificity_prompts=4)),
              echo=lambda _: None)
    code = main(["neuron", "--model", "tiny-llama", "1:5", "2:7", "--top", "3", "--study", str(out), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and [(n["layer"], n["index"]) for n in payload["neurons"]] == [(1, 5), (2, 7)]
    for n in payload["neurons"]:
        assert len(n["promoted"]) == len(n["suppressed"]) == 3 and n["activation"]["n_prompts"] == 48
        where = n["study"]["tiny-llama ig"]
        assert set(where["by_relation"]) <= {"R1", "R2"}
        assert sum(v["queries"] for v in where["by_relation"].values()) >= 6
    code = main(["neuron", "--model", "tiny-llama", "2:7"])
    text = capsys.readouterr().out
    assert code == 0 and "promotes:" in text and "suppresses:" in text and "fact-free prompts" in text
    assert main(["neuron", "--model", "tiny-llama", "9:1"]) == 2
    assert "outside tiny-llama" in capsys.readouterr().err
    assert main(["neuron", "--model", "tiny-llama", "x"]) == 2


@pytest.mark.slow
def test_cli_neuron_on_smollm2(smollm2, capsys):
    """A massive-activation neuron of the embedded model: its promoted tokens are printed."""
    code = main(["neuron", "--model", "smollm2-135m", "28:1095", "--top", "5"])
    text = capsys.readouterr().out
    assert code == 0
    expected = _manual_logits(smollm2, 28, 1095)
    top = [smollm2.tokenizer.decode([int(i)]) for i in torch.topk(expected, 5).indices]
    line = next(line for line in text.splitlines() if "promotes:" in line)
    assert all(repr(t) in line for t in top)
