"""Per-model derived state is owned by the loaded model (``lm.caches``): it goes with the model, ``clear_caches``
frees it, the weights fingerprint is remembered until a weight changes; weight saves can be observed."""

import dataclasses
import gc
import hashlib
import weakref

import pytest
import torch

from knowloc.attribution import MethodConfig
from knowloc.attribution.cache import engine_cache
from knowloc.attribution.engine import attribute_fast
from knowloc.editing.editors import CovarianceStore, Rome, TextSample
from knowloc.models import load_model
from knowloc.models import fingerprint
from knowloc.models.fingerprint import weights_hash
from knowloc.models.hooks import edit_weights, observe_saved_weights

PROMPT = "The capital of France is"
REFS = ("The weather is", "A dog is")


@pytest.fixture()
def lm(device):
    return load_model("tiny-llama", device=device)  # its own model: these tests clear and drop its caches


def _fill(lm) -> dict:
    """Use every component that keeps derived state of a model; returns what each computed."""
    config = MethodConfig("amig", steps=3, reference_prompts=REFS)
    store = CovarianceStore(None)
    sample = TextSample(n=3, length=4)
    return {"scores": attribute_fast(lm, lm.encode(PROMPT, "Paris"), config)[0],
            "weights": weights_hash(lm), "prefixes": Rome(prefixes=2).prefix_texts(lm),
            "c": store.get(lm, 1, sample), "store": store}


def test_every_per_model_cache_lives_in_lm_caches_and_clearing_changes_no_result(lm):
    first = _fill(lm)
    assert set(lm.caches) == {"knowloc.attribution.cache", "knowloc.models.fingerprint",
                              "knowloc.editing.editors.rome", "knowloc.editing.editors.covariance"}
    assert engine_cache(lm).block_calls and engine_cache(lm).baselines
    lm.clear_caches()
    assert lm.caches == {}
    again = _fill(lm)
    assert torch.equal(first["scores"], again["scores"]) and first["weights"] == again["weights"]
    assert first["prefixes"] == again["prefixes"] and torch.equal(first["c"], again["c"])


def test_a_dropped_model_takes_its_caches_with_it(device):
    lm = load_model("tiny-llama", device=device)
    _fill(lm)
    module, cache = weakref.ref(lm.model), weakref.ref(engine_cache(lm))
    del lm
    gc.collect()
    assert module() is None and cache() is None  # no module-level registry keeps the model or its state


def test_wrappers_of_one_module_share_its_caches(lm):
    other = dataclasses.replace(lm, site="pre_act")
    assert other.caches is lm.caches and engine_cache(other) is engine_cache(lm)
    assert weights_hash(other) == weights_hash(lm)


def test_the_weights_fingerprint_is_remembered_until_a_weight_changes(lm, monkeypatch):
    hashed = []
    real = hashlib.sha256

    def counting_sha256(*args):
        hashed.append(1)
        return real(*args)
    monkeypatch.setattr(fingerprint.hashlib, "sha256", counting_sha256)
    before = weights_hash(lm)
    assert weights_hash(lm) == before and len(hashed) == 1  # remembered
    with edit_weights(lm) as editor:
        editor.add_value(1, 0, torch.ones(lm.value_vector(1, 0).shape, device=lm.device))
        edited = weights_hash(lm)
        assert edited != before and len(hashed) == 2  # an in-place write is seen
        assert weights_hash(lm) == edited and len(hashed) == 2
    assert weights_hash(lm) == before and len(hashed) == 3  # the restoration is a write too
    assert weights_hash(lm.model) == before and len(hashed) == 4  # a bare module: computed at each call
    weight = lm.mlp_out(0).weight
    weight.data = weight.data.clone()  # a replaced tensor, same bytes
    assert weights_hash(lm) == before and len(hashed) == 5


def test_a_covariance_store_remembers_per_model_and_goes_with_the_store(lm):
    sample = TextSample(n=3, length=4)
    store, other = CovarianceStore(None), CovarianceStore(None)
    c = store.get(lm, 1, sample)
    assert torch.equal(store.get(lm, 1, sample), c) and store.computed == 1  # from memory
    assert torch.equal(other.get(lm, 1, sample), c) and other.computed == 1  # another store: its own memory
    by_store = lm.caches["knowloc.editing.editors.covariance"]
    assert len(by_store) == 2
    del other
    gc.collect()
    assert list(by_store) == [store]


def test_observed_weight_saves_count_each_saved_layer_once_and_stop_at_exit(lm):
    seen = []
    delta = torch.ones(lm.value_vector(1, 0).shape, device=lm.device)
    with observe_saved_weights(lambda layer, original: seen.append((layer, original.numel()))):
        with edit_weights(lm) as editor:
            editor.add_value(1, 0, delta)
            editor.add_value(1, 2, delta)  # layer 1 is saved already
            editor.zero_values([(0, 3)])
    weight = lm.mlp_out(1).weight
    assert seen == [(1, weight.numel()), (0, lm.mlp_out(0).weight.numel())]
    with edit_weights(lm) as editor:
        editor.add_value(1, 0, delta)
    assert len(seen) == 2  # removed on exit
