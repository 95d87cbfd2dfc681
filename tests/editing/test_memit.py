"""MEMIT and AlphaEdit (knowloc.editing.editors.memit) on tiny models: MEMIT of one request at one layer is ROME's
update, a batch's keys map to their targets, AlphaEdit leaves the preserved keys alone, and every edit restores
the weights bit-exactly."""

import pytest
import torch

from knowloc.editing import compute_baseline, measure_edit, measure_sequence
from knowloc.editing.editors import CovarianceStore, EditRequest, Rome, TextSample
from knowloc.editing.editors.base import subject_last_index
from knowloc.editing.editors.memit import AlphaEdit, Memit, default_layers
from knowloc.errors import KnowlocError
from knowloc.models.hooks import hook_module, trace_activations

from model_state import assert_restored, snapshot

PROMPTS = ["The capital of France is", "The capital of Spain is", "The capital of Egypt is"]
SUBJECTS = ["France", "Spain", "Egypt"]
GOLD = ["Paris", "Madrid", "Cairo"]
NEW = ["Rome", "Berlin", "Tokyo"]
SAMPLE = TextSample(n=24, length=16)


def requests(n=3):
    return [EditRequest(p, s, g, o) for p, s, g, o in zip(PROMPTS, SUBJECTS, GOLD, NEW)][:n]


def projection(lm, layer):
    w = lm.mlp_out(layer).weight.detach()
    return (w if lm.arch.value_layout == "col" else w.T).double().clone()


class FixedC(CovarianceStore):
    """A covariance store that returns a given C for every layer (no text sample)."""

    def __init__(self, c):
        super().__init__(None)
        self.c = c

    def get(self, lm, layer, sample):
        return self.c


def test_the_default_range_is_five_layers_ending_at_the_middle():
    assert default_layers(30) == (11, 12, 13, 14, 15) and default_layers(48) == (20, 21, 22, 23, 24)
    assert default_layers(3) == (0, 1) and default_layers(1) == (0,)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_memit_of_one_request_at_one_layer_is_romes_update(tiny_models, name):
    lm = tiny_models(name)
    store = CovarianceStore(None)
    request = EditRequest(PROMPTS[0], "France", "Paris", "Rome", layers=1)
    before = projection(lm, 1)
    with Rome(steps=5, prefixes=2, sample=SAMPLE, covariance=store).apply(lm, request):
        rome_dw = projection(lm, 1) - before
    with Memit(layers=(1,), update_weight=1e-9, steps=5, prefixes=2, sample=SAMPLE, covariance=store).apply(
            lm, request):
        memit_dw = projection(lm, 1) - before
    assert rome_dw.abs().max() > 0
    # equal up to the weights' rounding (float32) and the keys' batched vs one-by-one forward passes
    assert float((memit_dw - rome_dw).abs().max() / rome_dw.abs().max()) < 1e-5


def test_a_batchs_keys_map_to_their_targets(tiny_models):
    """At one layer with lambda -> 0, W' k_i = W k_i + r_i for each request's (context-averaged) key: the least
    squares residual of the batch is zero up to float64 rounding."""
    lm = tiny_models("tiny-llama")
    editor = Memit(layers=(1,), update_weight=1e-9, steps=3, prefixes=1, sample=SAMPLE,
                   covariance=CovarianceStore(None))
    batch = [r.checked(lm) for r in requests()]
    c = editor.covariance.get(lm, 1, SAMPLE)
    contexts = [editor.contexts(lm, r) for r in batch]
    keys = editor._keys(lm, batch, contexts, 1)  # [n, n_neurons]
    resid = torch.randn(len(batch), lm.value_vector(0, 0).numel(), dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))  # cpu: the solve's own device
    dw = editor._update(c, keys, resid, None)
    assert float((keys @ dw.T - resid).abs().max()) < 1e-6 * float(resid.abs().max())
    # with a large lambda the update shrinks towards 0 (MEMIT's trade-off with the preserved keys)
    shrunk = Memit(update_weight=1e6)._update(c, keys, resid, None)
    assert shrunk.norm() < 1e-2 * dw.norm()


def test_alphaedit_leaves_the_preserved_keys_unchanged(tiny_models):
    lm = tiny_models("tiny-llama")
    g = torch.Generator().manual_seed(1)  # cpu, where C lives
    k0 = torch.randn(20, lm.n_neurons, generator=g, dtype=torch.float64)  # cpu: preserved keys, rank 20 < n_neurons
    c = k0.T @ k0 / len(k0)
    editor = AlphaEdit(layers=(0, 1), steps=3, prefixes=1, sample=SAMPLE, covariance=FixedC(c))
    before = {layer: projection(lm, layer) for layer in (0, 1)}
    saved = snapshot(lm)
    with editor.apply(lm, requests(2)) as applied:
        assert applied.start == 0 and applied.n_weights == 2 * before[0].numel()
        for layer in (0, 1):
            dw = projection(lm, layer) - before[layer]  # float32 weights: their rounding, not the update's
            assert dw.abs().max() > 0
            assert float((dw @ k0.T).norm()) < 1e-3 * float(dw.norm() * k0.norm())
    assert_restored(lm, saved)
    # the update itself, in float64: W' K0 = W K0 to rounding
    batch = [r.checked(lm) for r in requests(2)]
    keys = editor._keys(lm, batch, [editor.contexts(lm, r) for r in batch], 1)
    resid = torch.randn(2, lm.value_vector(0, 0).numel(), dtype=torch.float64, generator=g)  # cpu: the solve's
    dw = editor._update(c, keys, resid, None)
    assert float((dw @ k0.T).abs().max()) < 1e-9 * float(dw.abs().max()) * float(k0.abs().max())


def test_alphaedit_in_sequence_keeps_the_earlier_edits_keys(tiny_models):
    lm = tiny_models("tiny-llama")
    editor = AlphaEdit(layers=(1,), steps=3, prefixes=1, sample=SAMPLE, covariance=CovarianceStore(None),
                       null_threshold=1e9)  # every direction is free: only K_p protects the earlier edits
    saved = snapshot(lm)
    seen = []
    editor.sequential(lm, requests(2), lambda k, applied: seen.append((k, applied.start)))
    assert seen == [(0, 1), (1, 1)]
    assert_restored(lm, saved)
    # the second solve includes the first edit's keys: its update differs from a fresh one
    keys = [editor._keys(lm, [r.checked(lm)], [editor.contexts(lm, r)], 1) for r in requests(2)]
    resid = torch.ones(1, lm.value_vector(0, 0).numel(), dtype=torch.float64)  # cpu
    c = editor.covariance.get(lm, 1, SAMPLE)
    fresh = editor._update(c, keys[1], resid, None)
    kept = editor._update(c, keys[1], resid, keys[0])
    assert not torch.allclose(fresh, kept)
    assert float((kept @ keys[0].T).norm()) < float((fresh @ keys[0].T).norm())  # less written into K_p


@pytest.mark.parametrize("editor", [Memit(layers=(0, 1), steps=2, prefixes=1, sample=SAMPLE,
                                          covariance=CovarianceStore(None)),
                                    AlphaEdit(layers=(1,), steps=2, prefixes=1, sample=SAMPLE,
                                              covariance=CovarianceStore(None))], ids=["memit", "alphaedit"])
def test_batch_sequence_and_measurement_restore_the_weights(tiny_models, editor):
    lm = tiny_models("tiny-llama")
    base = compute_baseline(lm, PROMPTS)
    saved = snapshot(lm)
    result, applied, _ = measure_edit(base, editor, 0, requests(1)[0])
    assert result.operation == "update" and applied.start == editor.layers[0]
    results = measure_sequence(base, editor, list(enumerate(requests())))
    assert len(results) == 3
    assert_restored(lm, saved)
    with pytest.raises(RuntimeError, match="boom"):
        with editor.apply(lm, requests()):
            raise RuntimeError("boom")
    assert_restored(lm, saved)


def test_bad_settings_are_refused_in_one_line(tiny_models):
    lm = tiny_models("tiny-llama")
    with pytest.raises(KnowlocError, match="out of range"):
        with Memit(layers=(lm.n_layers,), sample=SAMPLE, covariance=CovarianceStore(None)).apply(lm, requests(1)):
            pass
    with pytest.raises(KnowlocError, match="at least one layer"):
        Memit(layers=())
    with pytest.raises(KnowlocError):
        AlphaEdit(alpha=0.0)


def test_the_default_weight_is_gptjs_scaled_by_the_width(tiny_models):
    """lambda = 15000 x n_neurons / 16384: on GPT-J's width MEMIT's own 15000, and for a key drawn like C's one
    request writes about the same share of its residual at any width."""
    from knowloc.editing.editors.memit import default_update_weight

    assert default_update_weight(16384) == 15000.0 and default_update_weight(1536) == pytest.approx(1406.25)
    g = torch.Generator().manual_seed(3)  # cpu: the solve's device
    shares = []
    for width in (64, 512):
        keys = torch.randn(4000, width, generator=g, dtype=torch.float64)  # cpu: C of unit-variance keys
        c = keys.T @ keys / len(keys)
        k = torch.randn(1, width, generator=g, dtype=torch.float64)  # cpu: one request's key
        dw = Memit()._update(c, k, torch.ones(1, 3, dtype=torch.float64), None)  # cpu: residual 1 in 3 dims
        shares.append(float((k @ dw.T)[0, 0]))  # the share of the residual written at the key
    assert shares[0] == pytest.approx(shares[1], rel=0.3) and 0.3 < shares[1] < 0.8


@pytest.mark.parametrize("stop", [0.0, 6.3])  # 6.3: between the requests' first losses (6.25-6.35)
def test_targets_fitted_together_are_the_ones_fitted_alone(tiny_models, stop):
    lm = tiny_models("tiny-llama")
    rome = Rome(steps=6, prefixes=2, stop=stop, sample=SAMPLE, covariance=CovarianceStore(None))
    batch = [EditRequest(p, s, g, o, layers=1) for p, s, g, o in zip(PROMPTS, SUBJECTS, GOLD, NEW)]
    together = rome._fit_batch(lm, batch)
    for request, (k_star, out_k, delta, info) in zip(batch, together):
        k_alone, out_alone, delta_alone, info_alone = rome._fit(lm, request)
        assert torch.allclose(k_star, k_alone, atol=1e-5) and torch.allclose(out_k, out_alone, atol=1e-5)
        assert info["steps"] == info_alone["steps"] and info["contexts"] == info_alone["contexts"] == 3
        assert float((delta - delta_alone).norm()) <= 1e-4 * max(float(delta_alone.norm()), 1e-6)
    assert any(info["delta_norm"] > 0 for *_, info in together)
    if stop:  # some rows stop before the others: each row's steps are its own
        assert len({info["steps"] for *_, info in together}) > 1


def test_memits_fit_batch_changes_nothing_but_the_rounding(tiny_models):
    lm = tiny_models("tiny-llama")
    store = CovarianceStore(None)
    before = projection(lm, 1)
    changes = []
    varied = [EditRequest(p, s, g, o) for p, s, g, o in zip(  # 5, 12, 5 tokens: fit_batch 2 fits (0, 2), (1)
        ["The capital of France is", "Madrid, the capital of Spain, is", "Egypt's capital is"], SUBJECTS, GOLD, NEW)]
    for fit_batch in (1, 2, 16):
        with Memit(layers=(0, 1), steps=4, prefixes=1, sample=SAMPLE, covariance=store, fit_batch=fit_batch).apply(
                lm, varied):
            changes.append(projection(lm, 1) - before)
    assert changes[0].abs().max() > 0
    for other in changes[1:]:
        assert float((other - changes[0]).abs().max() / changes[0].abs().max()) < 1e-4
    with pytest.raises(KnowlocError, match="fit batch"):
        Memit(fit_batch=0)


def test_alphaedits_projector_is_computed_once_per_c():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 3, generator=g, dtype=torch.float64)  # cpu: C and P live where the covariance store keeps C
    c, other = a @ a.T, torch.eye(6, dtype=torch.float64)  # cpu: as C
    editor = AlphaEdit()
    p = editor.projector(c)
    assert editor.projector(c) is p and torch.allclose(p @ a, torch.zeros_like(a), atol=1e-9)  # a spans C's range
    assert torch.allclose(editor.projector(other), torch.zeros(6, 6, dtype=torch.float64))  # cpu; C = I: no null space


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_keys_and_hidden_states_in_padded_batches_are_each_requests_own(tiny_models, name):
    lm = tiny_models(name)
    memit = Memit(layers=(1,), prefixes=2, sample=SAMPLE, covariance=CovarianceStore(None))
    batch = [EditRequest(p, s, g, o) for p, s, g, o in zip(
        ["The capital of France is", "Madrid, the capital of Spain, is", "Egypt's capital is"], SUBJECTS, GOLD, NEW)]
    contexts = [memit.contexts(lm, r) for r in batch]
    keys, hidden = memit._keys(lm, batch, contexts, 1), memit._hidden(lm, batch, 1)
    for i, request in enumerate(batch):  # each text alone, unpadded, against its row of the padded batches
        found = []
        for text in contexts[i]:
            ids = torch.tensor([list(lm.encode(text).prompt_ids)], device=lm.device)
            with trace_activations(lm, [1]) as acts:
                lm.model(input_ids=ids)
            found.append(acts[1][0, subject_last_index(lm, text, request.subject)].double().cpu())
        alone = torch.stack(found).mean(dim=0)
        assert torch.allclose(keys[i], alone, atol=1e-5) and alone.abs().max() > 0
        ids = torch.tensor([list(lm.encode(request.prompt).prompt_ids)], device=lm.device)
        seen = {}
        with hook_module(lm.blocks[1], "output", lambda o: seen.update(h=o[0] if isinstance(o, tuple) else o)):
            lm.model(input_ids=ids)
        position = subject_last_index(lm, request.prompt, request.subject)
        assert torch.allclose(hidden[i], seen["h"][0, position].double().cpu(), atol=1e-5)


def test_memit_warns_on_a_family_whose_mlp_output_is_normed_before_the_residual(tiny_models, monkeypatch):
    import dataclasses

    lm = tiny_models("tiny-llama")
    monkeypatch.setattr(lm, "arch", dataclasses.replace(lm.arch, mlp_tail=lambda block: torch.nn.Identity()))
    with pytest.warns(RuntimeWarning, match="post-feedforward norm"):
        with Memit(layers=(1,), steps=1, prefixes=1, sample=SAMPLE, covariance=CovarianceStore(None)).apply(
                lm, requests(1)):
            pass
