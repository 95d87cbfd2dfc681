"""Several queries of one shape in one staircase (issue 34): each result equals its own `attribute`, in order."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from knowloc.attribution import attribute, attribute_many
from knowloc.attribution.bench import profile_counts, same_shape_queries
from knowloc.attribution.cache import engine_cache
from knowloc.attribution.disk_cache import AttributionCache
from knowloc.attribution.engine import attribute_fast, attribute_fast_many, batch_key, prefix_attention
from knowloc.attribution.methods import MethodConfig
from knowloc.errors import KnowlocError

REFS = ("The weather today is", "Once upon a time there was")
# mixed shapes: 4-6 prompt tokens (on the tiny tokenizer), one- and two-token targets, interleaved
QUERIES = [("The capital of France is", "Paris"), ("The capital of Italy is", "Rome"),
           ("The capital of France is", "Paris Berlin"), ("The capital city of Spain is", "Paris"),
           ("The river in Egypt is", "Rome"), ("The capital of Italy is", "Rome Berlin"),
           ("The language of Brazil is", "Paris"), ("Paris is the capital of", "Rome"),
           ("A dog is", "Paris"), ("The weather today is", "Paris Berlin")]
ONE_TOKEN = [("The", "Paris"), ("Paris", "Rome"), ("Once", "Paris"), ("The", "Rome")]


def assert_same_attribution(got, want) -> None:
    """Equal to the per-query attribution: scores up to float32 rounding of the batched matmuls, the objective to
    1e-6, and what the model predicts exactly as `attribute` builds it."""
    assert (got.prompt, got.target, got.method, got.steps, got.baseline) == (want.prompt, want.target, want.method,
                                                                             want.steps, want.baseline)
    scale = float(want.scores.abs().max())
    assert scale > 0
    assert got.scores.dtype == torch.float32 and got.scores.device.type == "cpu"
    torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=1e-5 * scale)
    assert got.prob == pytest.approx(want.prob, abs=1e-6)
    assert (got.p_first, got.top_k, got.target_rank, got.warning) == (want.p_first, want.top_k, want.target_rank,
                                                                      want.warning)


def _compare(lm, queries, method="ig", steps=3, batch=3, **kwargs) -> None:
    kwargs = {"reference_prompts": REFS, "warn": False, **kwargs}
    got = list(attribute_many(lm, queries, method, steps, batch=batch, progress=False, **kwargs))
    assert len(got) == len(queries)
    for result, (prompt, target) in zip(got, queries):  # the input order, whatever the grouping
        assert_same_attribution(result, attribute(lm, prompt, target, method=method, steps=steps, **kwargs))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-gemma", "tiny-gemma2"])
@pytest.mark.parametrize("method", ["ig", "sig", "amig"])
def test_batched_attributions_equal_the_per_query_ones(tiny_models, name, method):
    """GQA (LLaMA), GPT-2, Gemma-3 (sliding window) and Gemma-2 (soft-capped eager attention: the concatenated
    prefix copies); groups of several shapes and target lengths, one group larger than the batch."""
    lm = tiny_models(name)
    config = MethodConfig(method, 3, reference_prompts=REFS)
    shapes = [batch_key(lm, lm.encode(p, t), config) for p, t in QUERIES]
    assert len(set(shapes)) >= 3 and max(shapes.count(s) for s in shapes) > 3  # mixed, and a group split by batch
    _compare(lm, QUERIES, method)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma"])
def test_one_token_prompts_and_chunks(tiny_models, name):
    """One-token prompts (no prefix at all on LLaMA; Gemma's BOS is a one-token prefix), and a chunk size that
    splits every query's staircase over several chunks (one row of each query per chunk)."""
    lm = tiny_models(name)
    _compare(lm, ONE_TOKEN, batch=4)
    _compare(lm, QUERIES[:4], batch=4, max_rows=4)
    _compare(lm, QUERIES[:4], method="sig", batch=4, max_rows=9)


def test_pre_activation_site_and_log_probability(device):
    from knowloc.models import load_model

    lm = load_model("tiny-llama", site="pre_act", device=device)
    _compare(lm, QUERIES[:6], objective="logprob", batch=4)
    _compare(lm, QUERIES[:4], batch=4, max_rows=6)


def test_engine_many_equals_engine_one_and_layers(tiny_models):
    lm = tiny_models("tiny-llama")
    config = MethodConfig("ig", 4)
    encs = [lm.encode(p, "Paris Rome") for p in ("The capital of France is", "The capital of Italy is",
                                                  "The weather today is")]
    assert len({batch_key(lm, enc, config) for enc in encs}) == 1
    lm.clear_caches()  # the first group records the shape's block calls (at batch 1) itself
    for layers in (None, [1]):
        many = attribute_fast_many(lm, encs, config, layers=layers, max_rows=5)
        assert len(engine_cache(lm).block_calls) == 1
        for enc, (scores, prob) in zip(encs, many):
            one, one_prob = attribute_fast(lm, enc, config, layers=layers)
            torch.testing.assert_close(scores, one, rtol=0, atol=1e-5 * float(one.abs().max()))
            assert prob == pytest.approx(one_prob, abs=1e-6)
            assert scores.untyped_storage().nbytes() == scores.numel() * 4  # its own storage, not the batch's
            if layers:
                assert torch.count_nonzero(scores[[0, 2]]) == 0
    assert attribute_fast_many(lm, [], config) == []
    with pytest.raises(ValueError, match="one shape"):
        attribute_fast_many(lm, [encs[0], lm.encode("The river in Egypt is", "Paris Rome")], config)


def test_the_stream_keeps_order_reads_the_cache_and_raises_in_place(tiny_models, tmp_path, monkeypatch):
    """Disk-cache hits are read (bit-exact), misses computed in groups and stored; a query that cannot be
    attributed raises when the stream reaches it, after every result before it."""
    from knowloc.attribution import api

    lm = tiny_models("tiny-llama")
    cache = AttributionCache(tmp_path / "cache")
    first = list(attribute_many(lm, QUERIES[:2], steps=2, cache=cache, progress=False, warn=False))
    assert len(cache.entries()) == 2
    groups = []
    real = api.attribute_fast_many
    monkeypatch.setattr(api, "attribute_fast_many", lambda lm_, encs, *a, **k: groups.append(len(encs))
                        or real(lm_, encs, *a, **k))
    again = list(attribute_many(lm, QUERIES[:5], steps=2, cache=cache, progress=False, warn=False))
    assert [torch.equal(a.scores, b.scores) for a, b in zip(again, first)] == [True, True]
    assert sum(groups) == 3 and len(cache.entries()) == 5  # only the misses were computed, then stored
    assert [(a.prompt, a.target) for a in again] == [(p, t) for p, t in QUERIES[:5]]
    stream = attribute_many(lm, [QUERIES[0], ("", "Paris"), QUERIES[1]], steps=2, progress=False, warn=False)
    assert next(stream).target == "Paris"
    with pytest.raises(KnowlocError, match="empty prompt"):
        next(stream)
    with pytest.raises(KnowlocError, match="batch"):
        list(attribute_many(lm, QUERIES[:1], batch=0))


def test_batch_one_is_one_attribution_after_the_other(tiny_models, engine_calls):
    lm = tiny_models("tiny-gpt2")
    results = list(attribute_many(lm, QUERIES[:3], steps=2, batch=1, progress=False, warn=False))
    assert len(engine_calls) == 3 and [r.target for r in results] == [t for _, t in QUERIES[:3]]


def test_one_staircase_of_eight_queries_makes_fewer_operator_calls(tiny_models):
    """The operator calls (kernel launches on a GPU) per attribution fall with the queries in one staircase."""
    lm = tiny_models("tiny-llama")
    config = MethodConfig("ig", 20)
    encs = same_shape_queries(lm, 8, config)
    attribute_fast_many(lm, encs, config)  # record the shape's block calls first
    _, one = profile_counts(lambda: attribute_fast_many(lm, encs[:1], config), lm.device)
    _, eight = profile_counts(lambda: attribute_fast_many(lm, encs, config), lm.device)
    assert eight / 8 * 4 <= one


def _inputs(device, queries: int, per_query: int, heads: int, groups: int, n_q: int, n_pre: int, dim: int = 8):
    gen = torch.Generator().manual_seed(0)  # on the CPU: the same numbers on any device
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(device)  # noqa: E731  # drawn on the CPU, moved
    rows = queries * per_query
    query = rand(rows, heads, n_q, dim)
    key, value = rand(rows, groups, n_q, dim), rand(rows, groups, n_q, dim)
    prefix = (rand(queries, groups, n_pre, dim), rand(queries, groups, n_pre, dim))
    module = type("Attention", (), dict(layer_idx=0, num_key_value_groups=heads // groups, is_causal=True))()
    return module, query, key, value, prefix


@pytest.mark.parametrize("n_q", [1, 3])
@pytest.mark.parametrize("mask_kind", ["none", "float", "per_head"])
def test_prefix_attention_reads_each_querys_own_prefix(device, n_q, mask_kind):
    """Rows q*R .. (q+1)*R - 1 attend to query q's prefix: equal to sdpa on keys with that prefix concatenated
    (repeat_interleave), through the batched path, the fallback of a per-head mask, and `PrefixCache.update`."""
    n_pre, queries, per_query = 5, 3, 2
    module, query, key, value, prefix = _inputs(device, queries, per_query, heads=6, groups=2, n_q=n_q,
                                                n_pre=n_pre)
    causal = torch.ones(n_q, n_pre + n_q, dtype=torch.bool, device=device).tril(n_pre)
    mask = {"none": None,
            "float": torch.zeros(1, 1, n_q, n_pre + n_q, device=device).masked_fill(~causal, -torch.inf),
            "per_head": causal.view(1, 1, n_q, -1).repeat(1, 6, 1, 1)}[mask_kind]
    if mask_kind == "per_head":
        mask[0, 1, :, 2] = False  # one head masks one prefix position: not the batched layout
    reference_mask = causal.view(1, 1, n_q, -1) if mask is None else mask
    keys = torch.cat([prefix[0].repeat_interleave(per_query, dim=0), key], dim=2)
    values = torch.cat([prefix[1].repeat_interleave(per_query, dim=0), value], dim=2)
    want, _ = sdpa_attention_forward(module, query, keys, values, reference_mask)
    cache = prefix_attention.PrefixCache({0: prefix})
    assert cache.queries == queries
    joined = cache.update(key, value, 0)
    assert torch.equal(joined[0], keys) and torch.equal(joined[1], values)
    cache.split = True
    token = prefix_attention._ACTIVE_PREFIX.set(cache)
    try:
        got, _ = prefix_attention.prefix_attention(module, query, key, value, mask)
    finally:
        prefix_attention._ACTIVE_PREFIX.reset(token)
    tolerance = dict(rtol=1e-5, atol=1e-6) if device.type == "cpu" else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, want, **tolerance)


def test_bench_batch_reports_per_attribution_figures():
    """`run_attribution_benchmark(batch=N)` times N same-shape queries in one staircase: per attribution, fewer
    operator calls than one at a time, still equal to the reference; the line says the batch."""
    from knowloc.attribution.bench import run_attribution_benchmark

    runs = {}
    for batch in (1, 4):
        lines = []
        runs[batch] = run_attribution_benchmark("tiny-llama", steps=4, repeats=1, batch=batch, echo=lines.append)
        fields = dict(kv.split("=", 1) for kv in lines[-1].split())
        assert ("batch" in fields) == (batch > 1) and float(fields["max_rel_err"]) < 1e-3
    assert "queries=4" in lines[0] and runs[4]["batch"] == 4
    assert runs[4]["op_calls"] * 2 < runs[1]["op_calls"]
    with pytest.raises(KnowlocError, match="batch"):
        run_attribution_benchmark("tiny-llama", batch=0)
