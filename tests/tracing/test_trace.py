"""Causal tracing: batched maps against full passes with hooks, IE = TE / IE = 0 identities, seeded noise."""

import numpy as np
import pytest
import torch

from knowloc.errors import KnowlocError
from knowloc.models.tiny import TINY
from knowloc.tracing import KINDS, TraceSettings, embedding_std, restored_probability, trace, window_layers
from knowloc.tracing.trace import subject_noise

PROMPT, SUBJECT, TARGET = "The native language of Victor Hugo is", "Victor Hugo", "French"
SETTINGS = TraceSettings(samples=3, noise=3.0, window=2, seed=5)


def weights(lm):
    return [p.detach().clone() for p in lm.model.parameters()]


@pytest.mark.parametrize("name", sorted(TINY))
def test_batched_maps_equal_one_restoration_per_pass(tiny_models, name):
    lm = tiny_models(name)
    before = weights(lm)
    result = trace(lm, PROMPT, SUBJECT, TARGET, settings=SETTINGS)
    first, _ = result.subject
    n_tokens, n_layers = len(result.tokens), lm.n_layers
    assert result.p_corrupted == pytest.approx(restored_probability(lm, PROMPT, SUBJECT, TARGET, None, SETTINGS),
                                               rel=1e-4)
    for kind in KINDS:
        assert result.ie[kind].shape == (n_tokens, n_layers)
        for t in range(first - 1 if first else first, n_tokens):
            for layer in range(n_layers):
                layers = [layer] if kind == "hidden" else list(window_layers(layer, SETTINGS.window, n_layers))
                p = restored_probability(lm, PROMPT, SUBJECT, TARGET, {kind: [(l, t) for l in layers]}, SETTINGS)
                assert result.ie[kind][t, layer] == pytest.approx(p - result.p_corrupted, abs=1e-8, rel=1e-3), \
                    (kind, t, layer)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(lm)))  # nothing left behind


def test_restoring_every_token_of_a_layer_gives_the_total_effect(tiny_models):
    lm = tiny_models("tiny-llama")
    result = trace(lm, PROMPT, SUBJECT, TARGET, kinds=["hidden"], settings=SETTINGS)
    assert abs(result.te) > 1e-6  # the noise does change the answer's probability
    n_tokens = len(result.tokens)
    for layer in range(lm.n_layers):
        p = restored_probability(lm, PROMPT, SUBJECT, TARGET, {"hidden": [(layer, t) for t in range(n_tokens)]},
                                 SETTINGS)
        assert p - result.p_corrupted == pytest.approx(result.te, rel=1e-3, abs=1e-8)
    # the last token's residual state at the last layer is the whole answer
    assert result.ie["hidden"][-1, -1] == pytest.approx(result.te, rel=1e-3, abs=1e-8)


def test_no_restoration_is_zero_and_tokens_before_the_subject_are_zero(tiny_models):
    lm = tiny_models("tiny-gpt2")
    result = trace(lm, PROMPT, SUBJECT, TARGET, settings=SETTINGS)
    first, last = result.subject
    assert first > 0 and last >= first
    assert np.all(result.ie["mlp"][:first] == 0)
    p = restored_probability(lm, PROMPT, SUBJECT, TARGET, {"hidden": [(0, first - 1)]}, SETTINGS)
    assert p == pytest.approx(result.p_corrupted, abs=1e-7)  # the noise cannot reach a token before the subject


def test_noise_is_seeded(tiny_models):
    lm = tiny_models("tiny-gemma")
    a = trace(lm, PROMPT, SUBJECT, TARGET, kinds=["mlp"], settings=SETTINGS)
    b = trace(lm, PROMPT, SUBJECT, TARGET, kinds=["mlp"], settings=SETTINGS)
    c = trace(lm, PROMPT, SUBJECT, TARGET, kinds=["mlp"], settings=TraceSettings(samples=3, window=2, seed=6))
    assert np.array_equal(a.ie["mlp"], b.ie["mlp"]) and a.p_corrupted == b.p_corrupted
    assert a.p_corrupted != c.p_corrupted
    assert a.sigma == pytest.approx(3.0 * embedding_std(lm))


def test_noise_is_drawn_on_the_cpu_and_moved_to_the_model(tiny_models, device):
    """The seeded noise is the same numbers on every device: drawn on the CPU, then moved to the model."""
    lm = tiny_models("tiny-llama")
    eps, sigma = subject_noise(lm, 2, SETTINGS)
    assert eps.device == lm.device and lm.device.type == device.type and eps.dtype == lm.dtype
    d_model = lm.model.get_input_embeddings().weight.shape[1]
    gen = torch.Generator().manual_seed(SETTINGS.seed)  # on the CPU: the draw the product makes
    expected = torch.randn(SETTINGS.samples, 2, d_model, generator=gen) * sigma  # on the CPU, like the product's
    assert torch.equal(eps.cpu(), expected.to(lm.dtype))


def test_gemma_noise_includes_the_embedding_scale(tiny_models):
    lm = tiny_models("tiny-gemma")
    module = lm.model.get_input_embeddings()
    assert embedding_std(lm) == pytest.approx(float(module.weight.std()) * float(module.embed_scale))


def test_window_is_romes_rule():
    assert list(window_layers(10, 10, 48)) == list(range(5, 15))
    assert list(window_layers(0, 6, 30)) == [0, 1, 2]
    assert list(window_layers(29, 6, 30)) == [26, 27, 28, 29]
    assert list(window_layers(4, 1, 30)) == [4]


@pytest.mark.parametrize("kwargs, message", [
    (dict(samples=0), "--trace-samples"), (dict(noise=0.0), "--trace-noise"), (dict(window=0), "--trace-window")])
def test_bad_settings(kwargs, message):
    with pytest.raises(KnowlocError, match=message):
        TraceSettings(**kwargs)


def test_bad_queries(tiny_models):
    lm = tiny_models("tiny-llama")
    with pytest.raises(KnowlocError, match="does not occur"):
        trace(lm, PROMPT, "Dante", TARGET, settings=SETTINGS)
    with pytest.raises(KnowlocError, match="unknown tracing kind"):
        trace(lm, PROMPT, SUBJECT, TARGET, kinds=["resid"], settings=SETTINGS)


def test_bench_tracing_prints_seconds_and_restorations(capsys):
    from knowloc.cli import main

    assert main(["bench", "tracing", "--model", "tiny-llama", "--queries", "2", "--samples", "2"]) == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if "restorations" in l]
    assert len(lines) == 2 and all("P clean" in l for l in lines)
    assert "s per query (median of 2" in out
    assert main(["bench", "tracing", "--model", "tiny-llama", "--window", "0"]) == 2
