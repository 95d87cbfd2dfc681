"""The one editing path (knowloc.editing.trials, Editor.apply / sequential, EditSession's memo, EditRequest) on
tiny random models: a batch of edits is the edits nested, sequential editing measures each prefix of the
sequence, a session measures each distinct edited model once."""

import dataclasses

import pytest
import torch

from knowloc.data.texts import load_neutral_texts
from knowloc.editing import (EditRequest, EditSession, KnErase, KnUpdate, kn_trial, measure_edit, measure_edits,
                             measure_sequence)
from knowloc.editing.editors import FineTune
from knowloc.errors import KnowlocError

from model_state import assert_restored, snapshot

PROMPTS = ["The capital of France is", "Paris is the capital city of", "France's capital is"]
LOCALITY = ["The weather today is", "Egypt is located in", "The official language of Spain is"]
LOCALITY_OBJECTS = ["sunny", "Africa", "Spanish"]
TEXTS = load_neutral_texts()[:4]


def _changed(lm, before):
    return sorted(k for k, v in lm.model.state_dict().items() if not torch.equal(v, before[k]))


def _neurons(lm, layer, step, offset=0):
    return tuple((layer, i) for i in range(offset, lm.n_neurons, step))


def _request(base, index, neurons, new_object="Rome", layers=()):
    """Query ``index``'s request with its neurons' activations on that query (what measure_edit would fill in)."""
    acts = base.activations[index]
    return EditRequest(PROMPTS[index], "France", "Paris", new_object, layers=layers, neurons=neurons,
                       activations={(l, i): float(acts[l, i]) for l, i in neurons})


def _two_requests(lm, base):
    """Two requests of different queries whose neurons overlap (layer 1) and whose lowest layers differ (2, 1)."""
    top = lm.n_layers - 1
    first = _request(base, 0, _neurons(lm, top, 3) + _neurons(lm, 1, 5))
    second = _request(base, 1, _neurons(lm, 1, 4) + _neurons(lm, top, 7, 1))
    return first, second


EDITORS = {"kn": lambda: KnUpdate("calibrated", 1.0, 4.0), "kn-dai": lambda: KnUpdate("dai", 1.0, 8.0),
           "kn-erase": KnErase, "ft": lambda: FineTune(steps=3, lr=1e-2, bound=1e-2),
           "kn-ft": lambda: FineTune(steps=3, lr=1e-2, bound=1e-2, neurons=True)}


def _for(which, request):
    """The request an editor reads: ft edits one chosen layer (the request's lowest neuron layer)."""
    return dataclasses.replace(request, layers=(min(l for l, _ in request.neurons),)) if which == "ft" else request


# --- Editor.apply over a batch -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("which", sorted(EDITORS))
def test_a_batch_of_two_is_the_two_edits_nested_and_restores_bit_exactly(setup, name, which):
    lm, base = setup(name)
    first, second = (_for(which, r) for r in _two_requests(lm, base))
    saved = snapshot(lm)
    editor = EDITORS[which]()
    with editor.apply(lm, first) as one:
        with editor.apply(lm, second) as two:
            nested = snapshot(lm)
    assert_restored(lm, saved)
    with editor.apply(lm, [first, second]) as batch:
        together = snapshot(lm)
        assert _changed(lm, saved)  # the edits are in the weights
    assert_restored(lm, saved)
    assert together.keys() == nested.keys()
    exact = lm.device.type == "cpu" or which not in ("ft", "kn-ft")
    for key, value in nested.items():
        if exact:
            assert torch.equal(together[key], value), key
        else:  # a fit's gradient sums on an accelerator may differ in the last bit from run to run
            torch.testing.assert_close(together[key], value, rtol=1e-5, atol=1e-6)
    assert batch.start == min(one.start, two.start)
    assert batch.n_weights == one.n_weights + two.n_weights > 0
    if exact:
        assert batch.info == {"edits": [one.info, two.info]}
    # the second edit matters: the batch is not the first edit alone
    with editor.apply(lm, first):
        assert _changed(lm, together)
    assert_restored(lm, saved)


def test_a_one_request_batch_is_the_request_and_an_empty_batch_is_refused(setup):
    lm, base = setup("tiny-llama")
    first, _ = _two_requests(lm, base)
    saved = snapshot(lm)
    with KnUpdate().apply(lm, first) as single:
        edited = snapshot(lm)
    with KnUpdate().apply(lm, [first]) as listed:
        assert _changed(lm, edited) == []
    assert single == listed
    for bad in ([], (), [first, "not a request"], "The capital of France is"):
        with pytest.raises(KnowlocError, match="EditRequest"):
            with KnUpdate().apply(lm, bad):
                pass
    assert_restored(lm, saved)


def test_a_batch_restores_the_weights_when_its_second_edit_fails(setup):
    lm, base = setup("tiny-llama")
    first, _ = _two_requests(lm, base)
    bad = dataclasses.replace(first, neurons=((lm.n_layers, 0),), activations=None)
    saved = snapshot(lm)
    with pytest.raises(KnowlocError, match="out of range"):
        with KnUpdate().apply(lm, [first, bad]):
            pass
    assert_restored(lm, saved)


# --- Editor.sequential -------------------------------------------------------------------------------------


def _three_requests(lm, base):
    """Lowest layers top, 0, 1: the combined start goes top, 0, 0."""
    top = lm.n_layers - 1
    return [_request(base, 0, _neurons(lm, top, 3)), _request(base, 1, _neurons(lm, 0, 4, 1)),
            _request(base, 2, _neurons(lm, 1, 5, 2))]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_sequential_calls_after_once_per_request_with_the_edits_so_far(setup, name):
    lm, base = setup(name)
    requests = _three_requests(lm, base)
    editor = KnUpdate("signed", 1.0, 3.0)
    saved = snapshot(lm)
    prefixes = []  # the weights with the first k + 1 edits, nested by hand
    for k in range(len(requests)):
        with editor.apply(lm, requests[:k + 1]) as applied:
            prefixes.append((snapshot(lm), applied))
    assert_restored(lm, saved)
    calls = []

    def after(k, applied):
        calls.append((k, applied.start, applied.n_weights))
        state, expected = prefixes[k]
        for key, value in lm.model.state_dict().items():
            assert torch.equal(value, state[key]), (k, key)
        assert applied == expected
        return f"result {k}"

    assert editor.sequential(lm, requests, after) == ["result 0", "result 1", "result 2"]
    top, per = lm.n_layers - 1, [len(r.neurons) * lm.value_vector(0, 0).numel() for r in requests]
    assert calls == [(0, top, per[0]), (1, 0, per[0] + per[1]), (2, 0, sum(per))]
    assert_restored(lm, saved)


def test_sequential_restores_the_weights_when_after_raises(setup):
    lm, base = setup("tiny-llama")
    requests = _three_requests(lm, base)
    saved = snapshot(lm)
    calls = []

    def after(k, applied):
        calls.append(k)
        assert _changed(lm, saved)
        if k == 1:
            raise RuntimeError("measurement failed")
        return k

    with pytest.raises(RuntimeError, match="measurement failed"):
        KnErase().sequential(lm, requests, after)
    assert calls == [0, 1]  # stopped at the failure: the third edit was never made
    assert_restored(lm, saved)
    with pytest.raises(KnowlocError, match="EditRequest"):
        KnErase().sequential(lm, [], after)


# --- measure_sequence --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_measure_sequence_measures_each_prefix_of_the_sequence(setup, name):
    lm, base = setup(name)
    first, second = _two_requests(lm, base)
    editor = KnUpdate("calibrated", 1.0, 4.0)
    loc = [lm.first_target_token(o) for o in LOCALITY_OBJECTS]
    saved = snapshot(lm)
    results = measure_sequence(base, editor, [(0, first), (1, second)], loc)
    assert_restored(lm, saved)
    assert len(results) == 2
    assert results[0] == measure_edit(base, editor, 0, first, loc)[0]  # the first edit alone
    with editor.apply(lm, [first, second]) as applied:  # both, scored for the second request's query
        measured = base.measure(applied.start)
    both = base.score(measured, 1, "update", lm.first_target_token("Paris"), lm.first_target_token("Rome"),
                      len(second.neurons), loc)
    assert results[1] == both
    alone = measure_edit(base, editor, 1, second, loc)[0]
    assert results[1].dprob != alone.dprob  # the first edit is still in the weights: the comparison can fail
    assert_restored(lm, saved)
    # the requests' activations are filled in from the baseline, as measure_edit does
    bare = [(0, dataclasses.replace(first, activations=None)), (1, dataclasses.replace(second, activations=None))]
    assert measure_sequence(base, editor, bare, loc) == results


def test_measure_sequence_checks_every_request_before_editing(setup):
    lm, base = setup("tiny-llama")
    first, second = _two_requests(lm, base)
    saved = snapshot(lm)
    with pytest.raises(KnowlocError, match="not the baseline's query"):
        measure_sequence(base, KnErase(), [(0, first), (0, second)])
    with pytest.raises(KnowlocError, match="same token"):
        measure_sequence(base, KnUpdate(), [(0, first), (1, dataclasses.replace(second, new_object="Paris"))])
    assert_restored(lm, saved)


# --- KnErase, empty edits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_kn_erase_is_scored_as_an_erasure(setup, name):
    lm, base = setup(name)
    neurons = tuple((layer, i) for layer in range(lm.n_layers) for i in range(0, lm.n_neurons, 2))
    editor = KnErase()
    assert (editor.name, editor.operation, editor.uses_neurons) == ("kn-erase", "erase", True)
    erasure = EditRequest(PROMPTS[0], "France", "Paris", neurons=neurons)
    result, applied, _ = measure_edit(base, editor, 0, erasure)
    assert result.operation == "erase" and result.n_neurons == len(neurons) and applied.start == 0
    assert result.dprob_self != 0.0
    # the erase rule: the gold token is no longer the argmax and its probability halved
    gold = lm.first_target_token("Paris")
    with editor.apply(lm, erasure) as applied:
        probs, top1, _, _, _ = base.measure(applied.start)
    for j in range(len(PROMPTS)):
        p_before, p_after = float(base.probs[j, gold]), float(probs[j, gold])
        assert result.success[j] == (top1[j] != gold and p_after <= 0.5 * p_before)
    # the new object is not read, and a kn_trial erasure is this trial
    assert measure_edit(base, editor, 0, dataclasses.replace(erasure, new_object="Rome"))[0] == result
    assert measure_edit(base, *kn_trial(PROMPTS, 0, "Paris", list(neurons), "erase", subject="France"))[0] == result
    # the same neurons updated are scored as an update
    update = measure_edit(base, KnUpdate("dai", 1.0, 8.0), 0, dataclasses.replace(erasure, new_object="Rome"))[0]
    assert update.operation == "update" and update != result


@pytest.mark.parametrize("editor", [KnErase(), KnUpdate("dai", 1.0, 8.0), KnUpdate("calibrated", 1.0, 2.0)],
                         ids=["kn-erase", "kn-dai", "kn-calibrated"])
def test_an_empty_kn_edit_changes_nothing(setup, editor):
    lm, base = setup("tiny-llama")
    saved = snapshot(lm)
    request = EditRequest(PROMPTS[1], "France", "Paris", "Rome" if editor.operation == "update" else None)
    with editor.apply(lm, request) as applied:
        assert applied.start is None and applied.n_weights == 0
        assert_restored(lm, saved)
    loc = [lm.first_target_token(o) for o in LOCALITY_OBJECTS]
    result = measure_edit(base, editor, 1, request, loc)[0]
    new = lm.first_target_token("Rome") if editor.operation == "update" else None
    unedited = base.score(base.measure(None), 1, editor.operation, lm.first_target_token("Paris"), new, 0, loc)
    assert result == unedited
    assert result.n_neurons == 0 and result.dprob == (0.0,) * len(PROMPTS) and result.dlogppl == 0.0
    assert result.loc == 1.0 and result.dprob_locality == 0.0
    assert measure_edits(base, [(editor, 1, request)], loc) == [unedited]  # the batched replay agrees
    assert_restored(lm, saved)


# --- EditSession's memo ------------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch):
    """The (editor, index, request) of every single-trial measurement an EditSession makes."""
    import knowloc.editing.session as session_module

    calls = []
    real = session_module.measure_edit

    def spy(baseline, editor, index, request, *a, **k):
        calls.append((editor, index, request))
        return real(baseline, editor, index, request, *a, **k)
    monkeypatch.setattr(session_module, "measure_edit", spy)
    return calls


def _session(lm):
    return EditSession(lm, PROMPTS, "Paris", "Rome", LOCALITY, LOCALITY_OBJECTS, TEXTS, subject="France")


@pytest.mark.parametrize("editor", [KnErase(), KnUpdate("dai", 1.0, 8.0)], ids=["kn-erase", "kn-dai"])
def test_the_same_neurons_chosen_by_two_queries_are_measured_once(tiny_models, counted, editor):
    lm = tiny_models("tiny-llama")
    session = _session(lm)
    neurons = [(2, i) for i in range(0, lm.n_neurons, 3)]
    first = session.measure(editor, 0, neurons)
    second = session.measure(editor, 1, list(reversed(neurons)))  # the same set, in another order
    assert len(counted) == 1 and counted[0][1] == 0
    assert editor.model_key(lm, session.request(0, neurons)) == editor.model_key(lm, session.request(1, neurons))
    # scores read off the one model for each query: Rel on the query itself, Gen on the others
    result = measure_edit(session.baseline, editor, 0, session.request(0, neurons), session.loc_gold)[0]
    assert first == result.as_row(0) and second == result.as_row(1)
    assert session.measure(editor, 2, neurons) == result.as_row(2) and len(counted) == 1
    session.measure(editor, 0, neurons[1:])  # another set: another model
    assert len(counted) == 2


def test_a_sign_aware_update_is_shared_only_by_queries_with_the_same_signs(tiny_models, counted):
    lm = tiny_models("tiny-llama")
    session = _session(lm)
    neurons = [(2, i) for i in range(8)]
    acts = session.baseline.activations
    signs = [tuple(bool(acts[q][n] >= 0) for n in neurons) for q in range(len(PROMPTS))]
    for q in range(len(PROMPTS)):
        session.measure(KnUpdate("calibrated", 1.0, 2.0), q, neurons)
    assert len(counted) == len(set(signs)) > 1  # the tiny model's queries do not all share the signs


def test_editors_with_different_settings_are_measured_apart(tiny_models, counted):
    lm = tiny_models("tiny-llama")
    session = _session(lm)
    neurons = [(1, i) for i in range(0, lm.n_neurons, 2)]
    one = session.measure(KnUpdate("dai", 1.0, 1.0), 0, neurons)
    two = session.measure(KnUpdate("dai", 1.0, 2.0), 0, neurons)
    assert len(counted) == 2 and one != two
    assert session.measure(KnUpdate("dai", 1.0, 2.0), 1, neurons) == \
        measure_edit(session.baseline, KnUpdate("dai", 1.0, 2.0), 0, session.request(0, neurons),
                     session.loc_gold)[0].as_row(1)
    assert len(counted) == 2  # an equal editor (a new instance) is a cache hit
    session.measure(KnErase(), 0, neurons)
    assert len(counted) == 3  # the erasure of the same neurons is another model
    assert session.measure(KnUpdate(), 0, []) is None and len(counted) == 3


def test_a_session_memoizes_a_layer_editor_by_its_request(tiny_models, counted):
    lm = tiny_models("tiny-llama")
    session = _session(lm)
    editor = FineTune(steps=2, lr=1e-2, bound=1e-2)
    first = session.measure(editor, 0, layers=(1,))
    assert session.measure(editor, 0, layers=1) == first and len(counted) == 1  # layers=1 is layers=(1,)
    session.measure(editor, 1, layers=(1,))  # another query's request: another model
    session.measure(editor, 0, layers=(0,))
    assert len(counted) == 3


def test_measure_many_is_measure_of_each_after_one_batched_prefetch(tiny_models, counted):
    lm = tiny_models("tiny-llama")
    session = _session(lm)
    a, b = [(1, i) for i in range(0, lm.n_neurons, 4)], [(2, i) for i in range(1, lm.n_neurons, 5)]
    trials = [(KnErase(), 0, a), (KnUpdate("dai", 1.0, 4.0), 1, b), (KnErase(), 2, a), (KnUpdate(), 0, [])]
    scores = session.measure_many(trials, [None, [0], None, None])
    assert not counted  # every distinct edit came from the batched replay
    fresh = _session(lm)
    one_by_one = [fresh.measure(*trials[0]), fresh.measure(*trials[1], generalize_on=[0]), fresh.measure(*trials[2])]
    assert len(counted) == 2  # the single-trial path, for comparison: equal up to float rounding
    for batched, single in zip(scores, one_by_one):
        assert batched == pytest.approx(single, rel=1e-5, abs=1e-5)
        thresholded = ("rel", "gen", "loc", "avg")
        assert [batched[k] for k in thresholded] == [single[k] for k in thresholded]
    assert scores[3] is None and scores[0] != scores[2]  # the same model, read off for another query


# --- EditRequest -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers,expected", [(4, (4,)), ((4,), (4,)), ([4], (4,)), ([1, 3], (1, 3)), ((), ()),
                                             (None, ())])
def test_edit_request_layers_are_a_tuple(layers, expected):
    request = EditRequest("The capital of France is", "France", "Paris", "Rome", layers=layers)
    assert request.layers == expected
    assert request == EditRequest("The capital of France is", "France", "Paris", "Rome", layers=expected)
    assert hash(request) == hash(EditRequest("The capital of France is", "France", "Paris", "Rome", layers=expected))
    if len(expected) == 1:
        assert request.layer == expected[0]
    else:
        with pytest.raises(KnowlocError, match=f"names {len(expected)}") as info:
            request.layer
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("layers", ["4", 1.5, True, {4}])
def test_edit_request_refuses_layers_that_are_not_integers(layers):
    with pytest.raises(KnowlocError, match="layers must be an integer or a list") as info:
        EditRequest("The capital of France is", "France", "Paris", "Rome", layers=layers)
    assert "\n" not in str(info.value)


def test_edit_request_defaults_to_an_erasure_and_normalizes_neurons():
    request = EditRequest("The capital of France is", "France", "Paris", neurons=[[1, 2], (0, 5)])
    assert request.new_object is None and request.layers == () and request.neurons == ((1, 2), (0, 5))
    assert request == dataclasses.replace(request, activations={(1, 2): 0.5})  # activations are not compared
    with pytest.raises(KnowlocError, match="pairs"):
        EditRequest("The capital of France is", "France", "Paris", neurons=[1, 2])


def test_a_layer_out_of_range_is_refused_by_the_check(tiny_models):
    lm = tiny_models("tiny-llama")
    request = EditRequest(PROMPTS[0], "France", "Paris", "Rome", layers=(0, lm.n_layers))
    with pytest.raises(KnowlocError, match="out of range"):
        request.checked(lm)
    with pytest.raises(KnowlocError, match="names 2"):
        request.checked(lm, needs_layer=True)
    with pytest.raises(KnowlocError, match="new_object"):
        dataclasses.replace(request, new_object=None, layers=1).checked(lm)
    assert dataclasses.replace(request, new_object=None, layers=1).checked(lm, operation="erase").layer == 1


def test_calibrate_bisects_to_the_smallest_value_that_reaches_the_target(tiny_models):
    """On tiny-llama, ft's Rel at every value of a grid, measured one by one, grows with the bound; calibrate's
    bisection lands on the smallest value that reaches the target, measuring fewer values than the grid holds."""
    from knowloc.editing import calibrate

    lm = tiny_models("tiny-llama")
    requests = [EditRequest(p, "", "Paris", new, layers=1) for p in PROMPTS for new in ("Rome", "Berlin")]
    grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    before = snapshot(lm)
    exhaustive = {b: calibrate(lm, requests, lambda _: FineTune(steps=3, lr=b, bound=b), (b,)).rel[b] for b in grid}
    assert list(exhaustive.values()) == sorted(exhaustive.values())  # monotone here
    for target in (0.5, 0.8, 1.0):
        result = calibrate(lm, requests, lambda b: FineTune(steps=3, lr=b, bound=b), grid, target)
        reaching = [b for b in grid if exhaustive[b] >= target]
        assert result.value == (reaching[0] if reaching else grid[-1]) and result.reached == bool(reaching)
        assert len(result.rel) < len(grid) and all(result.rel[b] == exhaustive[b] for b in result.rel)
        assert [r["value"] for r in result.rows() if r["chosen"]] == [result.value]
    assert_restored(lm, before)
    with pytest.raises(KnowlocError, match="ascending"):
        calibrate(lm, requests, lambda b: FineTune(bound=b), (1e-2, 1e-3))
    with pytest.raises(KnowlocError, match="at least one request"):
        calibrate(lm, [], lambda b: FineTune(bound=b), (1e-2,))
