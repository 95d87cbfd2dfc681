"""Several trials of one fact in one batched replay (measure_edits, EditSession.prefetch) equal the one-trial
path (measure_edit) on tiny random models, and leave the model as it was."""

import dataclasses
import math

import pytest
import torch

from knowloc.data.texts import load_neutral_texts
from knowloc.editing import EditSession, KnErase, KnUpdate, kn_trial, measure_edit, measure_edits
from knowloc.editing.operations import row_edit, rows_edited
from knowloc.errors import KnowlocError

from model_state import assert_restored, snapshot

PROMPTS = ["The capital of France is", "Paris is the capital city of", "France's capital is"]
LOCALITY = ["The weather today is", "Egypt is located in", "The official language of Spain is",
            "Once upon a time"]
TEXTS = load_neutral_texts()[:5]
GOLD_TOKENS = [5, 6, 7, 8]
THRESHOLDED = ("rel", "gen", "loc", "avg", "success", "operation", "n_neurons")
FAMILIES = ["tiny-gpt2", "tiny-llama", "tiny-gemma2"]  # Conv1D rows with bias, Linear columns, post-MLP norm


def _hook_counts(lm):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in lm.model.modules()]


def _neurons(lm, low, step, offset=0):
    """Every `step`-th neuron (from `offset`) of the layers >= low: a set large enough to move the outputs."""
    return [(layer, i) for layer in range(low, lm.n_layers) for i in range(offset, lm.n_neurons, step)]


def _trials(lm):
    """Erase and every update rule, with lowest layers 2, 0, 1 (not sorted) and different query indices."""
    top = lm.n_layers - 1
    return [
        kn_trial(PROMPTS, 0, "Paris", _neurons(lm, top, 3), "erase"),
        kn_trial(PROMPTS, 1, "Paris", _neurons(lm, 0, 4, 1), "update", "Rome", lambda2=8.0, update_rule="dai"),
        kn_trial(PROMPTS, 2, "Paris", _neurons(lm, 1, 5, 2), "update", "Rome", lambda2=4.0, update_rule="signed"),
        kn_trial(PROMPTS, 0, "Paris", _neurons(lm, 0, 2), "erase"),
        kn_trial(PROMPTS, 1, "Paris", _neurons(lm, 1, 3, 1), "update", "Rome", lambda1=2.0, lambda2=3.0,
                  update_rule="calibrated"),
        kn_trial(PROMPTS, 2, "Paris", _neurons(lm, top, 2, 1), "update", "Berlin", lambda2=6.0,
                  update_rule="dai"),
    ]


def assert_same_result(single, batched):
    """Every TrialResult field: thresholded metrics and flags exactly, floats up to float32 rounding (ppl_after
    and dppl relative to the perplexity, which is in the hundreds on the tiny models)."""
    for f in dataclasses.fields(single):
        a, b = getattr(single, f.name), getattr(batched, f.name)
        if f.name in THRESHOLDED:
            assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), (f.name, a, b)
            continue
        a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)  # cpu: python floats
        assert a.shape == b.shape, f.name
        atol = 1e-6 * single.ppl_before if f.name in ("dppl", "ppl_after", "ppl_before") else 1e-6
        assert torch.allclose(a, b, rtol=1e-5, atol=atol, equal_nan=True), (f.name, a, b)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("schedule", ["join", "lowest", "grouped"])
def test_batched_equals_one_trial_at_a_time(setup, name, schedule):
    lm, baseline = setup(name)
    trials = _trials(lm)
    single = [measure_edit(baseline, *t, GOLD_TOKENS)[0] for t in trials]
    before = snapshot(lm)
    batched = measure_edits(baseline, trials, GOLD_TOKENS, schedule=schedule)
    assert_restored(lm, before)
    assert len(batched) == len(trials)
    for t, s, b in zip(trials, single, batched):
        assert b.operation == t[0].operation
        assert s.dprob_self != 0.0 and s.dlogppl != 0.0  # every edit moves the outputs: a mix-up would show
        assert_same_result(s, b)
    # the trials differ from each other, so results in the wrong order would fail the comparison
    assert len({round(r.dlogppl, 9) for r in single}) == len(single)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_erase_is_exact_and_the_comparison_can_fail(setup, name):
    lm, baseline = setup(name)
    erase = kn_trial(PROMPTS, 0, "Paris", _neurons(lm, 0, 2), "erase")
    update = kn_trial(PROMPTS, 0, "Paris", _neurons(lm, 0, 2), "update", "Rome", lambda2=4.0, update_rule="signed")
    single = measure_edit(baseline, *erase, GOLD_TOKENS)[0]
    batched, other = measure_edits(baseline, [erase, update], GOLD_TOKENS)
    assert_same_result(single, batched)
    with pytest.raises(AssertionError):
        assert_same_result(single, other)  # another edit's result is told apart
    with pytest.raises(AssertionError):  # and so is a float change far below a threshold's reach
        assert_same_result(single, dataclasses.replace(batched, dlogppl=batched.dlogppl + 1e-5))


@pytest.mark.parametrize("max_rows", [1, 7, 14, 15, 1000])
def test_chunk_boundaries(setup, max_rows):
    """Chunks of 1 (max_rows below one copy's rows), 1, 2 and all trials (the batches have 7 and 5 rows)."""
    lm, baseline = setup("tiny-llama")
    trials = _trials(lm)
    assert baseline.recorded.widest == len(PROMPTS) + len(LOCALITY)
    single = [measure_edit(baseline, *t, GOLD_TOKENS)[0] for t in trials]
    for s, b in zip(single, measure_edits(baseline, trials, GOLD_TOKENS, max_rows=max_rows)):
        assert_same_result(s, b)


@pytest.mark.parametrize("rows", [1, 3])
def test_texts_unembedded_in_pieces(setup, monkeypatch, rows):
    """The neutral texts' rows of all copies are unembedded in pieces of UNEMBED_ELEMENTS logits (here 1 and 3
    rows, so pieces straddle copies): the same results as one piece."""
    from knowloc.editing import evaluate
    lm, baseline = setup("tiny-llama")
    trials = _trials(lm)
    whole = measure_edits(baseline, trials, GOLD_TOKENS)
    monkeypatch.setattr(evaluate, "UNEMBED_ELEMENTS", rows * lm.model.config.vocab_size)
    for a, b in zip(whole, measure_edits(baseline, trials, GOLD_TOKENS)):
        assert_same_result(a, b)


def test_token_nll_is_cross_entropy(device):
    from knowloc.editing.evaluate import token_nll
    gen = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(12, 50, generator=gen) * 4).to(device)  # cpu: the seeded generator, then moved
    targets = torch.randint(0, 50, (12,), generator=gen).to(device)  # cpu: the seeded generator, then moved
    expected = torch.nn.functional.cross_entropy(logits.double(), targets, reduction="none")
    got = token_nll(logits.bfloat16(), targets)
    assert got.dtype == torch.float32 and got.device == logits.device
    assert torch.allclose(token_nll(logits, targets).double(), expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(token_nll(logits, targets.roll(1)).double(), expected, atol=1e-3)


def test_same_lowest_layer_trials_and_repeats(setup):
    """Trials sharing a lowest layer (one group), a repeated trial and an empty neuron set among them."""
    lm, baseline = setup("tiny-gpt2")
    trials = [kn_trial(PROMPTS, i % 3, "Paris", _neurons(lm, 1, 3 + i, i), "erase") for i in range(4)]
    trials += [trials[1], kn_trial(PROMPTS, 1, "Paris", [], "update", "Rome")]
    single = [measure_edit(baseline, *t)[0] for t in trials]
    batched = measure_edits(baseline, trials, max_rows=2 * baseline.recorded.widest, schedule="grouped")
    for s, b in zip(single, batched):
        assert_same_result(s, b)
    assert batched[-1].n_neurons == 0 and batched[-1].dprob == (0.0, 0.0, 0.0) and batched[-1].dlogppl == 0.0


def test_empty_list(setup):
    lm, baseline = setup("tiny-llama")
    before, hooks = snapshot(lm), _hook_counts(lm)
    assert measure_edits(baseline, []) == []
    assert measure_edits(baseline, (), GOLD_TOKENS, max_rows=1) == []
    assert_restored(lm, before)
    assert _hook_counts(lm) == hooks


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_model_unchanged_after_an_exception_inside(setup, name):
    lm, baseline = setup(name)
    trials = _trials(lm)
    expected = measure_edits(baseline, trials, GOLD_TOKENS)
    before, hooks = snapshot(lm), _hook_counts(lm)

    def fail(_module, _args, _output):
        raise RuntimeError("boom inside the replay")

    handle = lm.blocks[-1].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            measure_edits(baseline, trials, GOLD_TOKENS)
    finally:
        handle.remove()
    assert_restored(lm, before)
    assert _hook_counts(lm) == hooks  # every row-edit hook was removed
    for a, b in zip(expected, measure_edits(baseline, trials, GOLD_TOKENS)):
        assert a == b  # and the model measures as before, bit for bit


def test_rows_edited_restores_on_an_exception(setup):
    lm, _ = setup("tiny-llama")
    edit = row_edit(lm, "update", _neurons(lm, 0, 3), old_token=5, new_token=6, lambda2=2.0)
    hooks = _hook_counts(lm)
    with pytest.raises(ValueError, match="inside"):
        with rows_edited(lm, [edit, row_edit(lm, "erase", _neurons(lm, 1, 2))], batch=2):
            assert _hook_counts(lm) != hooks
            raise ValueError("inside")
    assert _hook_counts(lm) == hooks


def test_every_trial_is_checked_before_anything_runs(setup):
    lm, baseline = setup("tiny-llama")
    good = _trials(lm)[0]
    bad = kn_trial(["other prompt"], 0, "Paris", [(0, 1)])
    hooks = _hook_counts(lm)
    with pytest.raises(KnowlocError, match="not the baseline's query"):
        measure_edits(baseline, [good, bad])
    with pytest.raises(KnowlocError, match="same token"):
        measure_edits(baseline, [good, kn_trial(PROMPTS, 0, "Paris", [(0, 1)], "update", "Paris")])
    with pytest.raises(KnowlocError, match="out of range"):
        measure_edits(baseline, [good, kn_trial(PROMPTS, 0, "Paris", [(lm.n_layers, 0)])])
    with pytest.raises(KnowlocError, match="locality gold tokens"):
        measure_edits(baseline, [good], [1])
    for bad_rows in (0, -3, True, 2.5):
        with pytest.raises(KnowlocError, match="max_rows"):
            measure_edits(baseline, [good], max_rows=bad_rows)
    with pytest.raises(KnowlocError, match="schedule"):
        measure_edits(baseline, [good], schedule="fastest")
    assert _hook_counts(lm) == hooks


def test_a_baseline_without_recorded_batches_falls_back_to_the_weights(setup):
    lm, baseline = setup("tiny-gpt2")
    plain = dataclasses.replace(baseline, recorded=None)
    assert not plain.replayable()
    trials = _trials(lm)[:3]
    got = measure_edits(plain, trials, GOLD_TOKENS)
    want = [measure_edit(plain, *t, GOLD_TOKENS)[0] for t in trials]
    assert len(got) == len(trials)
    for a, b in zip(got, want):
        assert a == b


def test_run_copies_one_copy_is_run_and_copies_are_exact(setup):
    lm, baseline = setup("tiny-llama")
    batch = baseline.recorded.prompts
    n = len(batch.lengths)
    assert torch.equal(batch.run_copies([1]), batch.run(1))
    stacked = batch.run_copies([0, 0, 1, 2])
    assert stacked.shape[0] == 4 * n
    for c, start in enumerate([0, 0, 1, 2]):
        torch.testing.assert_close(stacked[c * n:(c + 1) * n], batch.run(start), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="non-decreasing"):
        batch.run_copies([2, 1])
    with pytest.raises(ValueError, match="at least one"):
        batch.run_copies([])


# --------------------------------------------------------------------------------------------------------
# EditSession.prefetch


def _session(lm):
    return EditSession(lm, PROMPTS, "Paris", "Rome", LOCALITY, ["sunny", "Africa", "Spanish", "time"], TEXTS)


def _requests(lm):
    """``(editor, index, neurons, generalize_on)`` of a fact's KN trials: erase, the session's former default
    update (dai, lambda2 8) and a calibrated one, for each query's own set and a shared one."""
    top = lm.n_layers - 1
    own = _neurons(lm, top, 3)
    union = _neurons(lm, 1, 4)
    requests = []
    for i in range(len(PROMPTS)):
        for neurons in (own, union):
            requests.append((KnErase(), i, neurons, None))
            requests.append((KnUpdate("dai", 1.0, 8.0), i, neurons, None))
            requests.append((KnUpdate("calibrated", 1.0, 1.0), i, neurons, [(i + 1) % len(PROMPTS)]))
    requests.append((KnErase(), 0, [], None))  # measure says None
    return requests


def _measure(session, request):
    editor, index, neurons, generalize_on = request
    return session.measure(editor, index, neurons, generalize_on=generalize_on)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_prefetch_makes_measure_cache_hits_with_the_same_scores(setup, name, monkeypatch):
    import knowloc.editing.session as session_module

    lm, _ = setup(name)
    requests = _requests(lm)
    plain = _session(lm)
    expected = [_measure(plain, r) for r in requests]
    assert expected[-1] is None and all(e is not None for e in expected[:-1])

    session = _session(lm)
    n = session.prefetch([r[:3] for r in requests])
    # erase and dai update: one edit per neuron set; calibrated: one per set and activation-sign pattern
    assert n == len(plain._results) and 4 <= n < len(requests) - 1
    assert session.prefetch([r[:3] for r in requests]) == 0  # all cached now

    def no_single_trials(*_args, **_kwargs):
        raise AssertionError("measure ran a trial after prefetch")

    monkeypatch.setattr(session_module, "measure_edit", no_single_trials)
    for request, want in zip(requests, expected):
        got = _measure(session, request)
        if want is None:
            assert got is None
            continue
        assert got.keys() == want.keys()
        for key in ("rel", "gen", "loc", "avg"):
            assert got[key] == want[key] or (math.isnan(got[key]) and math.isnan(want[key])), key
        for key in ("dppl", "dlogppl", "dprob_self", "dprob_neighbors"):
            atol = 1e-6 * session.baseline.ppl if key == "dppl" else 1e-6
            assert math.isclose(got[key], want[key], rel_tol=1e-5, abs_tol=atol), (key, got[key], want[key])
    # the spy is live: a new edit would have been measured through it
    with pytest.raises(AssertionError, match="after prefetch"):
        session.measure(KnErase(), 0, _neurons(lm, 0, 7))


def test_prefetch_skips_what_measure_skips(setup):
    lm, _ = setup("tiny-llama")
    session = EditSession(lm, PROMPTS, "Paris", None, LOCALITY, ["sunny", "Africa", "Spanish", "time"], TEXTS)
    assert session.prefetch([]) == 0
    assert session.prefetch([(KnUpdate(), 0, [(0, 1)]), (KnErase(), 1, [])]) == 0
    assert session.prefetch([(KnErase(), 0, [(0, 1)]), (KnErase(), 2, [(0, 1)])]) == 1
