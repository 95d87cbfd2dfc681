"""The fast engine must equal the per-layer reference (rtol 1e-4, fp32)."""

import pytest
import torch

from knowloc.attribution import attribute
from knowloc.attribution.cache import engine_cache
from knowloc.attribution.engine import attribute_fast
from knowloc.attribution.methods import MethodConfig
from knowloc.attribution.reference import attribute_reference
from knowloc.errors import KnowlocError
from knowloc.models.tiny import TINY

PROMPT = "The capital of France is"
REFS = ("The weather today is", "Once upon a time there was")


def assert_equivalent(fast: torch.Tensor, ref: torch.Tensor) -> None:
    scale = ref.abs().max()
    assert scale > 0
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4 * float(scale))


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma"])
@pytest.mark.parametrize("method", ["ig", "sig", "amig", "grad_x_act"])
@pytest.mark.parametrize("target", ["Paris", "Paris Berlin Rome"])
@pytest.mark.parametrize("max_rows", [None, 4])
def test_fast_equals_reference(tiny_models, name, method, target, max_rows):
    lm = tiny_models(name)
    config = MethodConfig(method, steps=4, reference_prompts=REFS)
    enc = lm.encode(PROMPT, target)
    fast, _ = attribute_fast(lm, enc, config, max_rows=max_rows)
    assert_equivalent(fast, attribute_reference(lm, enc, config))


@pytest.mark.parametrize("name", sorted(set(TINY) - {"tiny-gpt2", "tiny-llama", "tiny-gemma"}))
def test_fast_equals_reference_other_families(tiny_models, name):
    lm = tiny_models(name)
    config = MethodConfig("ig", steps=3)
    enc = lm.encode(PROMPT, "Paris Rome")
    fast, _ = attribute_fast(lm, enc, config, max_rows=5)
    assert_equivalent(fast, attribute_reference(lm, enc, config))


def test_log_probability_objective_and_pre_activation_site():
    from knowloc.models import load_model

    lm = load_model("tiny-llama", site="pre_act")
    config = MethodConfig("ig", steps=3, objective="logprob")
    enc = lm.encode(PROMPT, "Paris")
    fast, _ = attribute_fast(lm, enc, config)
    assert_equivalent(fast, attribute_reference(lm, enc, config))


def test_riemann_sum_converges_to_probability_difference(tiny_models, device):
    """Completeness of IG for one layer: sum_i Attr_i -> P(o | a) - P(o | a^l = 0)."""
    from knowloc.models.hooks import scale_neurons

    lm = tiny_models("tiny-llama")
    enc = lm.encode(PROMPT, "Paris")
    layer = 1
    ids = torch.tensor([enc.input_ids], device=device)
    with torch.no_grad():
        p_full = torch.softmax(lm.model(input_ids=ids).logits[0, -1], -1)[enc.target_ids[0]]
        with scale_neurons(lm, {layer: list(range(lm.n_neurons))}, 0.0, position=enc.last_pos):
            p_zero = torch.softmax(lm.model(input_ids=ids).logits[0, -1], -1)[enc.target_ids[0]]
    expected = float(p_full - p_zero)
    errors = []
    for steps in (1, 4, 64):
        scores, _ = attribute_fast(lm, enc, MethodConfig("ig", steps), layers=[layer])
        assert torch.count_nonzero(scores[[l for l in range(lm.n_layers) if l != layer]]) == 0
        errors.append(abs(float(scores[layer].sum()) - expected))
    assert errors[2] < errors[0]
    assert errors[2] < 0.02 * abs(expected)


def test_same_inputs_identical_scores(tiny_models):
    lm = tiny_models("tiny-gemma")
    a = attribute(lm, PROMPT, "Paris", method="sig", steps=3)
    b = attribute(lm, PROMPT, "Paris", method="sig", steps=3)
    assert torch.equal(a.scores, b.scores)
    assert a.scores.dtype == torch.float32 and a.scores.device.type == "cpu"
    assert a.scores.shape == (lm.n_layers, lm.n_neurons)


def test_attribution_result_api(tiny_models):
    lm = tiny_models("tiny-llama")
    result = attribute(lm, PROMPT, "Paris", method="ig", steps=3)
    assert result.method == "ig" and result.steps == 3 and "zero" in result.baseline
    top = result.neurons(threshold=5, mode="top_k")
    assert len(top) == 5
    scores = [float(result.scores[l, i]) for l, i in top]
    assert scores == sorted(scores, reverse=True)
    relative = result.neurons(threshold=0.2)
    best = float(result.scores.max())
    assert all(float(result.scores[l, i]) > 0.2 * best for l, i in relative)
    assert top[0] == relative[0]
    assert 0 < result.prob < 1


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt="", target="Paris"), "empty prompt"),
    (dict(prompt=PROMPT, target=" "), "tokenizes to nothing"),
    (dict(prompt=PROMPT, target="Paris", steps=0), "steps must be"),
    (dict(prompt="word " * 300, target="Paris"), "longer than the model's context"),
    (dict(prompt=PROMPT, target="Paris", method="magic"), "unknown method"),
])
def test_bad_attribution_input(tiny_models, kwargs, message):
    kwargs = dict(kwargs)
    with pytest.raises(KnowlocError, match=message):
        attribute(tiny_models("tiny-gpt2"), kwargs.pop("prompt"), kwargs.pop("target"), **kwargs)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma"])
def test_recorded_block_arguments_serve_other_queries_of_the_same_shape(tiny_models, name):
    """Block arguments are recorded once per (prefix length, target length); a different query of that shape
    reuses them and must still equal the reference, and so must a query of another shape."""
    lm = tiny_models(name)
    config = MethodConfig("ig", steps=3)
    first = lm.encode(PROMPT, "Paris")
    same_shape = next(enc for enc in (lm.encode(p, "Rome") for p in (
        "The capital of Italy is", "The capital city of Spain is", "The river in Egypt is", "A dog is",
        "The language of Brazil is")) if len(enc.input_ids) == len(first.input_ids) and enc != first)
    other_shape = lm.encode("Paris is the capital of the country called", "France")
    attribute_fast(lm, first, config)
    recorded = len(engine_cache(lm).block_calls)
    fast, _ = attribute_fast(lm, same_shape, config)
    assert len(engine_cache(lm).block_calls) == recorded  # reused, not recorded again
    assert_equivalent(fast, attribute_reference(lm, same_shape, config))
    fast, _ = attribute_fast(lm, other_shape, config)
    assert_equivalent(fast, attribute_reference(lm, other_shape, config))


@pytest.mark.parametrize("objective", ["prob", "logprob"])
def test_engine_returns_the_clean_objective(tiny_models, device, objective):
    lm = tiny_models("tiny-gemma")
    enc = lm.encode(PROMPT, "Paris Rome")
    _, value = attribute_fast(lm, enc, MethodConfig("ig", steps=2, objective=objective))
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([enc.input_ids], device=device)).logits[0, enc.last_pos:].float()
    gold = torch.log_softmax(logits, -1)[torch.arange(enc.n_target, device=device),
                                         torch.tensor(enc.target_ids, device=device)]
    expected = gold.mean() if objective == "logprob" else gold.exp().mean()
    assert value == pytest.approx(float(expected), rel=1e-5)


def test_chunks_shrink_with_the_prompt_length(tiny_models):
    """Every row keeps the prefix keys/values of all layers for its backward pass: a longer prompt must get
    fewer rows per chunk under the same memory bound, and the chunked result stays exact."""
    from knowloc.attribution.engine import default_max_rows, prepare

    lm = tiny_models("tiny-llama")
    rows = {}
    for words in (2, 100):
        enc = lm.encode(" ".join(["river"] * words), "Paris")
        prep = prepare(lm, enc)
        elements = sum(k.numel() + v.numel() for k, v in prep.prefix_cache.prefix.values())
        rows[words] = default_max_rows(lm, enc.n_target, 0.0002, elements)
    assert rows[100] < rows[2]
    enc = lm.encode(" ".join(["river"] * 100), "Paris")
    config = MethodConfig("ig", steps=3)
    assert rows[100] < 2 * lm.n_layers  # the 3-step run below is split into several chunks
    fast, _ = attribute_fast(lm, enc, config, memory_gb=0.0002)
    assert_equivalent(fast, attribute_reference(lm, enc, config))


def test_the_default_budget_comes_from_the_device(tiny_models, monkeypatch):
    """No fixed 4 GB on an accelerator: half of the memory free on a CUDA device (never below the CPU budget),
    the CPU budget elsewhere; the engine's default chunking reads it from the model's device."""
    from knowloc.attribution.engine import default_max_rows
    from knowloc.attribution.engine.memory import CPU_BUDGET_GB, memory_budget_gb

    free = {"bytes": 80 * 2**30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 141 * 2**30))
    assert memory_budget_gb("cuda:0") == 40.0 and memory_budget_gb("cpu") == CPU_BUDGET_GB == 4.0
    free["bytes"] = 2**30  # a nearly full card still gets the CPU budget's chunks
    assert memory_budget_gb("cuda") == CPU_BUDGET_GB
    lm = tiny_models("tiny-llama")
    budget = memory_budget_gb(lm.device)
    assert default_max_rows(lm, 2, None, 1000) == default_max_rows(lm, 2, budget, 1000)
    assert default_max_rows(lm, 2, 2 * budget, 1000) > default_max_rows(lm, 2, budget, 1000)


@pytest.mark.parametrize("method", ["ig", "amig", "sig"])
def test_convergence_delta_shrinks_with_steps(tiny_models, method):
    """IG's completeness, reported as captum does: sum of a layer's scores vs F(a) - F(baseline)."""
    lm = tiny_models("tiny-llama")
    deltas = []
    for steps in (2, 64):
        result = attribute(lm, PROMPT, "Paris", method=method, steps=steps, reference_prompts=REFS,
                           return_convergence_delta=True)
        assert result.convergence_delta.shape == (lm.n_layers,)
        deltas.append(float(result.convergence_delta.abs().max()))
    assert deltas[1] < deltas[0]
    assert deltas[1] < 0.02 * max(result.prob, 1e-3)
    assert attribute(lm, PROMPT, "Paris", steps=2).convergence_delta is None


def test_convergence_delta_baseline_objective_matches_a_patched_forward(tiny_models, device):
    from knowloc.attribution.completeness import objective_at_baselines
    from knowloc.models.hooks import scale_neurons

    lm = tiny_models("tiny-gpt2")
    enc = lm.encode(PROMPT, "Paris")
    at_zero = objective_at_baselines(lm, enc, MethodConfig("ig", 3), batch_rows=2)
    for layer in range(lm.n_layers):
        with torch.no_grad(), scale_neurons(lm, {layer: list(range(lm.n_neurons))}, 0.0, position=enc.last_pos):
            p = torch.softmax(lm.model(input_ids=torch.tensor([enc.input_ids], device=device)).logits[0, -1], -1)
        assert float(at_zero[0, layer]) == pytest.approx(float(p[enc.target_ids[0]]), rel=1e-5)


def test_engine_state_has_one_owner_and_clears(tiny_models):
    """Recorded block arguments, AMIG baselines and the logits buffer live in one object owned by the model
    (engine_cache(lm), in lm.caches; no other engine state on the model); clearing it changes no result."""
    lm = tiny_models("tiny-llama")
    enc = lm.encode(PROMPT, "Paris")
    config = MethodConfig("amig", steps=3, reference_prompts=REFS)
    before, _ = attribute_fast(lm, enc, config)
    cache = engine_cache(lm)
    assert cache.block_calls and cache.baselines and cache._scratch
    assert not any(k.startswith("_") for k in vars(lm))  # LanguageModel carries no engine state but its caches
    lm.clear_caches()
    assert not engine_cache(lm).block_calls and not engine_cache(lm)._scratch
    again, _ = attribute_fast(lm, enc, config)
    assert torch.equal(before, again)


def test_prepare_returns_a_complete_record_and_chunks_share_the_clean_run(tiny_models):
    from dataclasses import FrozenInstanceError

    from knowloc.attribution.engine import prepare

    lm = tiny_models("tiny-gpt2")
    prep = prepare(lm, lm.encode(PROMPT, "Paris Rome"))
    assert prep.embedded.shape[:2] == (1, 2) and prep.target.tolist() == list(prep.enc.target_ids)
    with pytest.raises(FrozenInstanceError):
        prep.embedded = None
    whole, _ = attribute_fast(lm, prep.enc, MethodConfig("ig", 4))
    chunked, _ = attribute_fast(lm, prep.enc, MethodConfig("ig", 4), max_rows=2)
    assert_equivalent(chunked, whole)


def test_attribution_says_what_the_model_predicts(tiny_models, device):
    """p_first (first target token) is separate from the multi-token objective; top_k lists the model's next
    tokens; a target that is not the top-1 is flagged and warned about."""
    from knowloc.attribution import TargetNotPredicted

    lm = tiny_models("tiny-llama")
    ids = torch.tensor([lm.encode(PROMPT).prompt_ids], device=device)
    with torch.no_grad():
        probs = torch.softmax(lm.model(input_ids=ids).logits[0, -1].float(), -1)
    order = torch.argsort(probs, descending=True)
    top1, other = lm.tokenizer.decode([int(order[0])]).strip(), None
    for idx in order[1:]:
        text = lm.tokenizer.decode([int(idx)])
        if text.startswith(" ") and text.strip() and lm.first_target_token(text.strip()) == int(idx):
            other = text.strip()
            break
    assert other is not None
    with pytest.warns(TargetNotPredicted, match="not the model's prediction"):
        result = attribute(lm, PROMPT, other, steps=2)
    rank = int((probs > probs[lm.first_target_token(other)]).sum()) + 1
    assert result.target_rank == rank > 1 and not result.target_is_top1 and "rank" in result.warning
    assert result.p_first == pytest.approx(float(probs[lm.first_target_token(other)]), rel=1e-5)
    assert [t["token"] for t in result.top_k] == [lm.tokenizer.decode([int(i)]) for i in order[:5]]
    assert [t["id"] for t in result.top_k] == [int(i) for i in order[:5]]
    assert result.top_k[0]["prob"] == pytest.approx(float(probs[order[0]]), rel=1e-5)
    multi = attribute(lm, PROMPT, f"{other} {other}", steps=2, warn=False)
    assert multi.p_first == pytest.approx(result.p_first, rel=1e-5) and multi.prob != pytest.approx(multi.p_first)
    if lm.tokenizer.decode([int(order[0])]).startswith(" ") and top1:
        best = attribute(lm, PROMPT, top1, steps=2)
        assert best.target_rank == 1 and best.warning is None


def test_bench_attribution_ends_with_the_engines_use_of_the_machine(capsys, device):
    """The summary line keeps its key=value form and says the throughput, the share of the measured peak, the
    operator calls of one attribution (the profiler's count: more than one per layer) and the peak memory over
    the weights (CUDA only)."""
    from knowloc.cli import main

    assert main(["bench", "attribution", "--model", "tiny-llama", "--repeats", "1", "--steps", "4"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(kv.split("=", 1) for kv in last.split())
    assert {"speedup", "fast_s", "ref_s", "max_rel_err", "gflops", "peak_gflops", "tflops", "pct_peak", "op_calls",
            "peak_ratio"} == set(fields)
    assert int(fields["op_calls"]) > 3 * 10 and float(fields["max_rel_err"]) < 1e-3
    assert (fields["peak_ratio"] == "n/a") == (device.type != "cuda")
    single = int(fields["op_calls"])
    assert main(["bench", "attribution", "--model", "tiny-llama", "--repeats", "1", "--steps", "4", "--batch", "4"]) == 0
    fields = dict(kv.split("=", 1) for kv in capsys.readouterr().out.strip().splitlines()[-1].split())
    assert fields["batch"] == "4" and int(fields["op_calls"]) < single / 2 and float(fields["max_rel_err"]) < 1e-3
    assert main(["bench", "attribution", "--model", "tiny-llama", "--batch", "0"]) == 2
