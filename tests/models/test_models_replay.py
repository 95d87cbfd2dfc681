"""RecordedBatch: re-running blocks >= L from the recorded input equals the full forward pass under an edit;
the block-call capture it shares with the attribution engine."""

import dataclasses

import pytest
import torch

from knowloc.editing import compute_baseline, kn_trial, measure_edit
from knowloc.editing.operations import modified
from knowloc.models.block_calls import capture_block_calls
from knowloc.models.replay import RecordedBatch
from knowloc.models.tiny import TINY

PROMPTS = ["The capital of France is", "Paris is the capital of", "A dog"]


@pytest.mark.parametrize("name", sorted(TINY))
def test_replay_from_a_middle_block_equals_the_full_forward(tiny_models, device, name):
    lm = tiny_models(name)
    seqs = [list(lm.encode(p).prompt_ids) for p in PROMPTS]
    batch = RecordedBatch(lm, seqs)
    layer = lm.n_layers - 1
    with torch.no_grad():
        full = lm.model(input_ids=batch.ids, attention_mask=batch.mask).logits
        torch.testing.assert_close(lm.logits(batch.output), full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lm.logits(batch.run(0)), full, rtol=1e-5, atol=1e-5)
        with modified(lm, "erase", [(layer, i) for i in range(0, lm.n_neurons, 2)]):
            edited = lm.model(input_ids=batch.ids, attention_mask=batch.mask).logits
            hidden = batch.run(layer)
            replayed = lm.logits(hidden)
    assert not torch.allclose(edited, full, atol=1e-4)  # the edit matters, so the comparison can fail
    keep = batch.mask.bool()  # padded positions are never read
    torch.testing.assert_close(replayed[keep], edited[keep], rtol=1e-5, atol=1e-5)
    last = batch.last_positions(hidden)
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    torch.testing.assert_close(lm.logits(last.unsqueeze(1))[:, 0], edited[torch.arange(3, device=device), lengths - 1],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("operation", ["erase", "update"])
def test_recorded_trials_equal_full_forward_trials(tiny_models, operation):
    lm = tiny_models("tiny-llama")
    texts = ["The weather is nice today and the sun is out.", "Cats sleep a lot."]
    locality = ["The river runs through", "My favourite colour is"]
    baseline = compute_baseline(lm, PROMPTS, locality, texts)
    plain = dataclasses.replace(baseline, recorded=None)
    neurons = [(1, 3), (1, 7), (2, 5), (2, 11)]
    trial = kn_trial(PROMPTS, 0, "Paris", neurons, operation, new_object="Rome", lambda2=50.0)
    assert baseline.replayable() and not plain.replayable()
    fast = measure_edit(baseline, *trial)[0]
    slow = measure_edit(plain, *trial)[0]
    assert fast.success == slow.success and fast.loc == slow.loc
    assert fast.dprob == pytest.approx(slow.dprob, rel=1e-4, abs=1e-6)
    assert fast.ppl_after == pytest.approx(slow.ppl_after, rel=1e-5)
    assert fast.ppl_after != baseline.ppl


def _hooks(lm) -> int:
    return sum(len(b._forward_pre_hooks) + len(b._forward_hooks) for b in lm.blocks)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_block_call_capture_records_every_call_and_stops_when_asked(tiny_models, device, name):
    lm = tiny_models(name)
    ids = torch.tensor([lm.encode(PROMPTS[0]).prompt_ids], device=device)
    hooks = _hooks(lm)
    with torch.no_grad():
        with capture_block_calls(lm.blocks) as full:
            lm.model.base_model(input_ids=ids, use_cache=False)
        assert not full.stopped and all(call is not None for call in full.calls) and _hooks(lm) == hooks
        for b in range(lm.n_layers):  # a recorded call re-run on its recorded input gives the next block's input
            out = full.calls[b].run(lm.blocks[b], full.inputs[b])
            assert torch.equal(out, full.inputs[b + 1] if b + 1 < lm.n_layers else full.output)
        with capture_block_calls(lm.blocks, stop_at=0) as early:
            lm.model.base_model(input_ids=ids, use_cache=False)
    assert early.stopped and early.calls == [None] * lm.n_layers and early.output is None
    assert torch.equal(early.inputs[0], full.inputs[0]) and _hooks(lm) == hooks
    with pytest.raises(ZeroDivisionError), capture_block_calls(lm.blocks):
        1 / 0
    assert _hooks(lm) == hooks
