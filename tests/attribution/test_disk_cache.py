"""The attribution cache: exact hits, misses on any change, one entry per key across processes, torn entries."""

import os
import subprocess
import sys

import pytest
import torch

from knowloc.attribution import MethodConfig, attribute, attribute_next_token
from knowloc.attribution.disk_cache import AttributionCache, attribution_key
from knowloc.errors import KnowlocError
from knowloc.models.fingerprint import weights_hash

PROMPT, TARGET = "The capital of France is", "Paris"


@pytest.fixture()
def lm(tiny_models):
    return tiny_models("tiny-llama")


def test_hit_returns_exactly_the_stored_attribution(lm, tmp_path, engine_calls):
    cache = AttributionCache(tmp_path / "c")
    first = attribute(lm, PROMPT, TARGET, method="ig", steps=3, warn=False, cache=cache)
    again = attribute(lm, PROMPT, TARGET, method="ig", steps=3, warn=False, cache=AttributionCache(tmp_path / "c"))
    assert len(engine_calls) == 1 and len(cache.entries()) == 1
    assert torch.equal(first.scores, again.scores) and again.scores.dtype == torch.float32
    for name in ("prob", "p_first", "top_k", "target_rank", "method", "steps", "baseline", "prompt", "target"):
        assert getattr(first, name) == getattr(again, name), name
    plain = attribute(lm, PROMPT, TARGET, method="ig", steps=3, warn=False)
    assert torch.equal(plain.scores, first.scores)  # the cache changes nothing


def test_next_token_attributions_are_cached_too(lm, tmp_path, engine_calls):
    cache = AttributionCache(tmp_path / "c")
    first = attribute_next_token(lm, "My favourite colour is", method="amig", steps=2, cache=cache)
    again = attribute_next_token(lm, "My favourite colour is", method="amig", steps=2, cache=cache)
    assert len(engine_calls) == 1 and torch.equal(first.scores, again.scores)
    assert again.extra == first.extra and again.target == first.target


@pytest.mark.parametrize("change", ["steps", "method", "prompt", "target", "weight", "baseline_token", "layers"])
def test_any_change_is_another_key(lm, tmp_path, engine_calls, change):
    cache = AttributionCache(tmp_path / "c")
    base = dict(method="sig", steps=3)
    attribute(lm, PROMPT, TARGET, warn=False, cache=cache, **base)
    prompt, target, kwargs = PROMPT, TARGET, dict(base)
    if change == "steps":
        kwargs["steps"] = 4
    elif change == "method":
        kwargs["method"] = "ig"
    elif change == "prompt":
        prompt = "The capital of France is located in"
    elif change == "target":
        target = "Rome"
    elif change == "baseline_token":
        kwargs["baseline_token"] = "pad" if lm.tokenizer.pad_token_id is not None else "unk"
    elif change == "layers":
        kwargs["layers"] = [0]
    weight = lm.mlp_out(0).weight
    saved = weight.detach().clone()
    try:
        if change == "weight":
            with torch.no_grad():
                weight[0, 0] += 1e-3
        attribute(lm, prompt, target, warn=False, cache=cache, **kwargs)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert len(engine_calls) == 2 and len(cache.entries()) == 2
    attribute(lm, PROMPT, TARGET, warn=False, cache=cache, **base)  # restored weights: the first key again
    assert len(engine_calls) == 2


def test_weights_hash_follows_in_place_edits(lm):
    before = weights_hash(lm.model)
    weight = lm.mlp_out(1).weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] += 1.0
        edited = weights_hash(lm.model)
        weight.copy_(saved)
    assert edited != before and weights_hash(lm.model) == before


def test_torn_or_damaged_entry_is_a_miss_and_removed(lm, tmp_path, engine_calls):
    cache = AttributionCache(tmp_path / "c")
    first = attribute(lm, PROMPT, TARGET, method="ig", steps=3, warn=False, cache=cache)
    (path,) = cache.entries()
    blob = path.read_bytes()
    for damaged in (blob[: len(blob) // 2], blob[:-1] + bytes([blob[-1] ^ 1]), b"", b"not an entry"):
        path.write_bytes(damaged)
        key = path.stem
        assert cache.get(key) is None and not path.exists()
        attribute(lm, PROMPT, TARGET, method="ig", steps=3, warn=False, cache=cache)  # recomputed and stored
        assert torch.equal(cache.get(key).scores, first.scores)
    assert len(engine_calls) == 5


def test_lru_eviction_keeps_the_bound_and_the_recently_used(lm, tmp_path):
    probe = AttributionCache(tmp_path / "probe")
    attribute(lm, PROMPT, TARGET, method="ig", steps=2, warn=False, cache=probe)
    size = probe.size_bytes()
    cache = AttributionCache(tmp_path / "c", max_bytes=int(3.5 * size))
    targets = ["Paris", "Rome", "Berlin", "Madrid"]
    keys = [attribution_key(lm, MethodConfig("ig", 2), PROMPT, t) for t in targets]
    for i, target in enumerate(targets[:3]):
        attribute(lm, PROMPT, target, method="ig", steps=2, warn=False, cache=cache)
        os.utime(cache.path(keys[i]), (1000 + i, 1000 + i))  # distinct ages, the first the oldest
    assert cache.get(keys[0]) is not None  # used again: now the most recent
    attribute(lm, PROMPT, targets[3], method="ig", steps=2, warn=False, cache=cache)  # over the bound
    assert cache.size_bytes() <= 3.5 * size
    assert [k in cache for k in keys] == [True, False, True, True]  # the least recently used went


def test_bad_cache_directory_is_one_line_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(KnowlocError, match="not a directory"):
        AttributionCache(tmp_path / "file")
    with pytest.raises(KnowlocError, match="positive"):
        AttributionCache(tmp_path / "d", max_bytes=0)


_FILL = """
import sys, torch
torch.set_num_threads(1)
from knowloc.models import load_model
from knowloc.attribution import attribute
from knowloc.attribution.disk_cache import AttributionCache
lm = load_model("tiny-llama")
cache = AttributionCache(sys.argv[1])
for target in ["Paris", "Rome", "Berlin"]:
    attribute(lm, "The capital of France is", target, method="ig", steps=3, warn=False, cache=cache)
"""


def test_two_processes_filling_one_cache_give_one_entry_per_key(tmp_path, lm):
    directory = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _FILL, str(directory)], env=env) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    cache = AttributionCache(directory)
    entries = cache.entries()
    assert len(entries) == 3 and not list(directory.rglob("*.tmp"))
    for target in ["Paris", "Rome", "Berlin"]:
        key = attribution_key(lm, MethodConfig("ig", 3), PROMPT, target)
        hit = cache.get(key)
        assert hit is not None and torch.equal(
            hit.scores, attribute(lm, PROMPT, target, method="ig", steps=3, warn=False).scores)
