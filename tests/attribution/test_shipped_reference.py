"""Shipped reference attributions: exact KN sets above the floor, used by a study instead of computing, and the
packaged SmolLM2 pack checked against a recomputed sample."""

import gzip
import json
import random

import pytest
import torch

from knowloc.analysis import select_neurons
from knowloc.attribution import attribute, attribute_next_token
from knowloc.attribution import shipped
from knowloc.attribution.disk_cache import attribution_key
from knowloc.attribution.methods import MethodConfig


def test_kept_map_gives_the_full_maps_kn_sets_at_every_threshold_above_the_floor():
    gen = torch.Generator().manual_seed(0)  # on the CPU: score maps are CPU tensors, as attribute() returns them
    for _ in range(20):
        scores = torch.randn(4, 64, generator=gen) ** 3  # a score map: on the CPU
        entry = shipped.ShippedEntry(shipped.encode_entry(scores, 0.5, 1, "x", method="ig", steps=3, prompt="p",
                                                          target=None))
        full = scores.to(torch.float16).float()
        for t in (shipped.FLOOR, 0.15, 0.2, 0.5, 0.99):
            assert select_neurons(entry.scores(), t) == select_neurons(full, t)
        assert len(entry["neurons"]) < full.numel()
    negative = shipped.encode_entry(-torch.rand(2, 8), 0.1, 1, "x", method="ig", steps=3,  # a score map on the CPU
                                    prompt="p", target=None)
    assert negative["neurons"] == []  # no positive score: no KN at any threshold


def test_damaged_pack_is_one_line_error(tmp_path, monkeypatch, tiny_models):
    (tmp_path / "bad.json.gz").write_bytes(b"not gzip")
    monkeypatch.setenv("KNOWLOC_REFERENCE_DIR", str(tmp_path))
    with pytest.raises(Exception, match="damaged"):
        shipped.shipped_entry(tiny_models("tiny-llama"), "ig", 3, "p", None, 0.2)


@pytest.mark.parametrize("fixture, name, methods", [("smollm2", "smollm2-135m", 2), ("gemma3", "gemma3-270m", 1)])
def test_packaged_reference_matches_a_recomputed_sample(request, monkeypatch, fixture, name, methods):
    """The shipped pack was computed on these weights (its keys hold their fingerprint) and two seeded entries,
    a neutral prompt and a shipped reference query (both for the model's own next token), recompute to the same
    KN sets and objective."""
    from knowloc.data import load_specificity_prompts, load_specificity_queries

    monkeypatch.delenv("KNOWLOC_REFERENCE_DIR", raising=False)
    lm = request.getfixturevalue(fixture)
    path = shipped.pack_folder() / f"{name}.json.gz"
    entries = json.loads(gzip.decompress(path.read_bytes()))["entries"]
    rng = random.Random(0)
    prompts = set(load_specificity_prompts())
    reference = {q["prompt"] for q in load_specificity_queries()}
    neutral = [k for k, e in entries.items() if e["prompt"] in prompts]
    queries = [k for k, e in entries.items() if e["prompt"] in reference]
    assert len(neutral) == methods * 48 and len(queries) == methods * 232 and len(entries) == len(neutral) + len(queries)
    for key in (rng.choice(neutral), rng.choice(queries)):
        entry = entries[key]
        assert attribution_key(lm, MethodConfig(entry["method"], entry["steps"]), entry["prompt"],
                               entry["target"]) == key
        if entry["target"] is None:
            attr = attribute_next_token(lm, entry["prompt"], method=entry["method"], steps=entry["steps"])
        else:
            attr = attribute(lm, entry["prompt"], entry["target"], method=entry["method"],
                             steps=entry["steps"], warn=False)
        kept = shipped.ShippedEntry(entry).scores()
        recomputed = attr.scores.to(torch.float16).float()
        assert select_neurons(kept, 0.2) == select_neurons(recomputed, 0.2)
        assert attr.prob == pytest.approx(entry["prob"], rel=1e-4)
        assert shipped.shipped_entry(lm, entry["method"], entry["steps"], entry["prompt"], entry["target"],
                                     0.2) is not None
