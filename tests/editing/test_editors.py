"""The editors (knowloc.editing.editors): ROME's rank-one update, FT+L, kn-ft and kn behind one interface."""

import pytest
import torch

from knowloc.editing import compute_baseline
from knowloc.editing.editors import (CovarianceStore, EditRequest, FineTune, KnUpdate, Rome, TextSample,
                                     model_samples, rank_one_update)
from knowloc.editing.trials import kn_trial, measure_edit
from knowloc.study.editor_registry import check_editors
from knowloc.errors import KnowlocError

PROMPTS = ["The capital of France is", "France's capital city is", "In France, the capital is"]
LOCALITY = ["Egypt is located in", "The native language of Victor Hugo is"]
TEXTS = ["The weather today is mild and the river runs quietly through the old town."]
FAMILIES = ["tiny-gpt2", "tiny-llama", "tiny-gemma"]  # Conv1D with bias; Linear; Linear + post-MLP norm


def weights(lm) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in lm.model.named_parameters()}


def assert_unchanged(lm, saved) -> None:
    for name, p in lm.model.named_parameters():
        assert torch.equal(p, saved[name]), name


def projection(lm, layer: int) -> torch.Tensor:
    """The layer's MLP output projection as W [d_model, n_neurons]."""
    w = lm.mlp_out(layer).weight.detach()
    return w.clone() if lm.arch.value_layout == "col" else w.T.clone()


def request(lm, layer=1, **kw) -> EditRequest:
    neurons = kw.pop("neurons", ((layer, 3), (layer, 11), (layer + 1, 5)))
    return EditRequest(PROMPTS[0], "France", "Paris", "Rome", layers=layer, neurons=neurons,
                       activations={n: 1.0 for n in neurons}, **kw)


def rome(**kw) -> Rome:
    return Rome(sample=TextSample(n=24, length=16), covariance=CovarianceStore(None), **kw)


# --- ROME's update -----------------------------------------------------------------------------------------


def _system(g):
    """A positive definite C, a weight W, k* and v*: float64 on the CPU, where ROME's solve runs."""
    a = torch.randn(12, 12, generator=g, dtype=torch.float64)  # cpu
    c = a @ a.T + 0.1 * torch.eye(12, dtype=torch.float64)  # cpu
    w = torch.randn(5, 12, generator=g, dtype=torch.float64)  # cpu
    k_star = torch.randn(12, generator=g, dtype=torch.float64)  # cpu
    v_star = torch.randn(5, generator=g, dtype=torch.float64)  # cpu
    return c, w, k_star, v_star


def test_rank_one_update_writes_v_star_at_k_star_and_nothing_on_the_c_orthogonal_keys():
    g = torch.Generator().manual_seed(0)  # cpu: rank_one_update is pure maths on C's device
    c, w, k_star, v_star = _system(g)
    dw = rank_one_update(c, k_star, v_star - w @ k_star)
    assert torch.allclose((w + dw) @ k_star, v_star, atol=1e-10)
    u = torch.linalg.solve(c, k_star)
    for _ in range(5):  # keys with k^T C^-1 k* = 0 keep their values
        k = torch.randn(12, generator=g, dtype=torch.float64)  # cpu
        k = k - (k @ u) / (u @ u) * u
        assert abs(float(k @ u)) < 1e-10
        assert torch.allclose((w + dw) @ k, w @ k, atol=1e-10)
    other = torch.randn(12, generator=g, dtype=torch.float64)  # cpu; a generic key does change
    assert not torch.allclose((w + dw) @ other, w @ other)


def test_rank_one_update_solves_where_c_is_whatever_the_device_of_k_star(device):
    """C comes from the store on the CPU while k* and the residual may come from the model's device: the solve
    runs on the CPU in float64 and gives the all-CPU result bit for bit."""
    c, w, k_star, v_star = _system(torch.Generator().manual_seed(1))  # cpu
    on_cpu = rank_one_update(c, k_star, v_star - w @ k_star, ridge=1e-6)
    mixed = rank_one_update(c, k_star.to(device), (v_star - w @ k_star).to(device), ridge=1e-6)
    assert mixed.device.type == "cpu" and mixed.dtype == torch.float64
    assert torch.equal(mixed, on_cpu)


def test_rank_one_update_refuses_a_singular_c():
    with pytest.raises(KnowlocError, match="singular"):
        rank_one_update(torch.zeros(3, 3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),  # cpu
                        torch.ones(2, dtype=torch.float64))  # cpu


@pytest.mark.parametrize("name", FAMILIES)
def test_rome_writes_v_star_at_k_star_in_the_model(tiny_models, name, device):
    lm = tiny_models(name)
    editor = rome(steps=5, lr=0.5)
    req = request(lm)
    k_star, v_star, _ = editor.key_and_value(lm, req)
    assert k_star.device.type == v_star.device.type == "cpu"  # float64 results on the CPU
    saved = weights(lm)
    module = lm.mlp_out(req.layer)
    with editor.apply(lm, req) as applied:
        assert applied.start == req.layer
        assert module.weight.device.type == device.type  # edited in place, on the model's device
        with torch.no_grad():
            out = module(k_star.to(device=device, dtype=lm.dtype)[None])[0].double().cpu()
        assert torch.allclose(out, v_star, atol=1e-4, rtol=1e-4)
        changed = [n for n, p in lm.model.named_parameters() if not torch.equal(p, saved[n])]
        assert changed == [n for n, p in lm.model.named_parameters() if p is module.weight]
    assert_unchanged(lm, saved)


# --- fine-tuning -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_ft_never_exceeds_its_bound_and_changes_only_its_layer(tiny_models, name):
    lm = tiny_models(name)
    editor = FineTune(steps=10, lr=1e-2, bound=2e-3)
    req = request(lm, layer=1)
    before = projection(lm, 1)
    saved = weights(lm)
    with editor.apply(lm, req):
        change = projection(lm, 1) - before
        assert 0 < float(change.abs().max()) <= 2e-3 + 1e-7
        others = [n for n, p in lm.model.named_parameters() if not torch.equal(p, saved[n])]
        assert len(others) == 1
    assert_unchanged(lm, saved)


@pytest.mark.parametrize("name", FAMILIES)
def test_kn_ft_changes_only_the_value_vectors_of_n_i(tiny_models, name):
    lm = tiny_models(name)
    neurons = ((1, 3), (1, 11), (2, 5))
    editor = FineTune(steps=5, lr=1e-2, bound=1e-2, neurons=True)
    before = {layer: projection(lm, layer) for layer in range(lm.n_layers)}
    with editor.apply(lm, request(lm, neurons=neurons)) as applied:
        assert applied.start == 1
        for layer in range(lm.n_layers):
            change = projection(lm, layer) - before[layer]
            touched = sorted(int(i) for i in torch.nonzero(change.abs().sum(dim=0)).flatten())
            assert touched == sorted(i for l, i in neurons if l == layer), layer
            assert float(change.abs().max()) <= 1e-2 + 1e-7


# --- every editor ------------------------------------------------------------------------------------------


def editors():
    return {"kn": KnUpdate("calibrated", 1.0, 200.0), "kn-ft": FineTune(steps=40, lr=0.2, bound=1.0, neurons=True),
            "ft": FineTune(steps=30, lr=0.05, bound=0.5), "rome": rome(steps=30, lr=0.5, clamp=400.0, prefixes=2, weight_decay=0.0)}


@pytest.mark.parametrize("which", ["kn", "kn-ft", "ft", "rome"])
def test_each_editor_reaches_rel_1_on_a_toy_fact_and_restores_the_model(tiny_models, which):
    lm = tiny_models("tiny-llama")
    base = compute_baseline(lm, PROMPTS, LOCALITY, TEXTS)
    saved = weights(lm)
    req = request(lm)
    acts = base.activations[0]  # the neurons' own activations on the edited query (kn's sign-aware rule)
    req = EditRequest(req.prompt, req.subject, req.gold, req.new_object, layers=req.layer, neurons=req.neurons,
                      activations={(l, i): float(acts[l, i]) for l, i in req.neurons})
    result, applied, seconds = measure_edit(base, editors()[which], 0, req)
    assert result.rel == 1.0 and applied.n_weights > 0 and seconds >= 0
    assert_unchanged(lm, saved)
    # the unedited model scores as before: the edit left nothing behind
    gold, new = lm.first_target_token("Paris"), lm.first_target_token("Rome")
    again = base.score(base.measure(None), 0, "update", gold, new)
    assert again.rel == 0.0 and again.dprob_self == 0.0


@pytest.mark.parametrize("rule", ["dai", "signed", "calibrated"])
def test_the_kn_editor_makes_the_update_a_trial_makes(tiny_models, rule):
    """One update path: the kn editor with the query's activations and a kn_trial (activations filled in from
    the baseline) apply the same NeuronEdit, so they score bit-for-bit the same, and their rows hold the same
    columns."""
    lm = tiny_models("tiny-llama")
    base = compute_baseline(lm, PROMPTS, LOCALITY, TEXTS)
    neurons = ((1, 3), (1, 11), (2, 5))
    acts = base.activations[0]
    req = EditRequest(PROMPTS[0], "France", "Paris", "Rome", neurons=neurons,
                      activations={(l, i): float(acts[l, i]) for l, i in neurons})
    by_editor, applied, _ = measure_edit(base, KnUpdate(rule, 1.0, 3.0), 0, req)
    trial = kn_trial(PROMPTS, 0, "Paris", list(neurons), "update", "Rome", 1.0, 3.0, rule)
    assert trial[0] == KnUpdate(rule, 1.0, 3.0) and trial[2].activations is None
    by_trial = measure_edit(base, *trial)[0]
    assert applied.start == 1
    assert by_editor.success == by_trial.success and by_editor.dprob == by_trial.dprob
    assert by_editor.dlogppl == by_trial.dlogppl and by_editor.n_neurons == by_trial.n_neurons
    assert by_editor.as_row() == by_trial.as_row() == by_trial.as_row(0)
    assert list(by_trial.as_row()) == ["rel", "gen", "loc", "avg", "dppl", "dlogppl", "dprob_self",
                                       "dprob_neighbors"]


@pytest.mark.parametrize("which", ["kn", "kn-ft", "ft", "rome"])
def test_every_editor_edits_a_bf16_model_and_restores_it_bit_exactly(device, which):
    """A bf16 study edits in bf16: the fitted changes (FT+L's, kn-ft's, ROME's delta) stay fp32 and meet the bf16
    activations in fp32 (FT+L failed with a dtype mismatch before), then land in the weights' dtype."""
    from knowloc.models import load_model

    lm = load_model("tiny-llama", device=device, dtype="bf16")
    saved = weights(lm)
    with editors()[which].apply(lm, request(lm)) as applied:
        assert applied.n_weights > 0
        assert all(p.dtype == torch.bfloat16 and p.device.type == device.type for p in lm.model.parameters())
        assert any(not torch.equal(p, saved[n]) for n, p in lm.model.named_parameters())
    assert_unchanged(lm, saved)


@pytest.mark.parametrize("which", ["kn", "kn-ft", "ft", "rome"])
def test_every_editor_restores_the_weights_when_the_measurement_raises(tiny_models, which):
    lm = tiny_models("tiny-gpt2")
    saved = weights(lm)
    with pytest.raises(RuntimeError, match="measurement failed"):
        with editors()[which].apply(lm, request(lm)):
            assert any(not torch.equal(p, saved[n]) for n, p in lm.model.named_parameters())
            raise RuntimeError("measurement failed")
    assert_unchanged(lm, saved)


@pytest.mark.parametrize("editor", [Rome(steps=0, sample=TextSample(n=4, length=8), covariance=CovarianceStore(None)),
                                    FineTune(steps=0), FineTune(steps=0, neurons=True)], ids=["rome", "ft", "kn-ft"])
def test_a_zero_step_edit_changes_nothing(tiny_models, editor):
    lm = tiny_models("tiny-llama")
    base = compute_baseline(lm, PROMPTS, LOCALITY, TEXTS)
    saved = weights(lm)
    with editor.apply(lm, request(lm)) as applied:
        assert applied.start is None and applied.n_weights == 0
        assert_unchanged(lm, saved)
    result, _, _ = measure_edit(base, editor, 0, request(lm))
    assert result.dprob_self == 0.0 and result.loc == 1.0 and result.dlogppl == 0.0


def test_rome_stops_early_once_its_loss_is_below_stop(tiny_models):
    lm = tiny_models("tiny-llama")
    settings = dict(steps=30, lr=0.5, clamp=400.0, prefixes=1, weight_decay=0.0)
    _, _, every = rome(**settings).key_and_value(lm, request(lm))
    assert every["steps"] == 30
    _, _, first = rome(**{**settings, "steps": 1}).key_and_value(lm, request(lm))  # the unedited loss
    stop = (first["loss"] + every["loss"]) / 2
    assert every["loss"] < stop < first["loss"]
    _, _, early = rome(stop=stop, **settings).key_and_value(lm, request(lm))
    assert 0 < early["steps"] < 30 and early["loss"] < stop
    _, _, none = rome(stop=1e9, **settings).key_and_value(lm, request(lm))
    assert none["steps"] == 0  # the unedited loss is already below it: no step, no change


@pytest.mark.parametrize("make,pattern", [
    (lambda: Rome(stop=-1.0), "rome stop"),
    (lambda: FineTune(steps=-1), "ft steps must be an integer >= 0"),
    (lambda: FineTune(bound=0.0), "ft bound must be a finite number > 0"),
    (lambda: Rome(steps=-2), "rome steps must be an integer >= 0"),
    (lambda: TextSample(n=0), "empty text sample"),
    (lambda: KnUpdate("bogus"), "unknown update rule"),
    (lambda: check_editors("kn,grace"), "unknown editor 'grace'"),
])
def test_bad_editor_settings_raise_one_line(make, pattern):
    with pytest.raises(KnowlocError, match=pattern):
        make()


def test_a_layer_out_of_range_and_a_missing_kn_set_are_refused(tiny_models):
    lm = tiny_models("tiny-llama")
    with pytest.raises(KnowlocError, match="out of range"):
        with FineTune().apply(lm, request(lm, layer=lm.n_layers)):
            pass
    with pytest.raises(KnowlocError, match="KN set"):
        with FineTune(neurons=True).apply(lm, request(lm, neurons=())):
            pass


# --- ROME's text sample and C ------------------------------------------------------------------------------


def test_model_samples_are_seeded_and_leave_the_global_rng_alone(tiny_models):
    lm = tiny_models("tiny-llama")
    state = torch.random.get_rng_state()
    a = model_samples(lm, 5, 6, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a == model_samples(lm, 5, 6, seed=3) and a != model_samples(lm, 5, 6, seed=4)
    starts = {len(lm.tokenizer(w)["input_ids"]) for w in ("The", "In")}
    assert all(len(s) - 6 in starts or len(s) > 6 for s in a)


def test_c_is_computed_once_and_read_back(tiny_models, tmp_path):
    lm = tiny_models("tiny-llama")
    sample = TextSample(n=6, length=8)
    first = CovarianceStore(tmp_path)
    c = first.get(lm, 1, sample)
    assert first.computed == 1 and c.shape == (lm.n_neurons, lm.n_neurons)
    assert torch.allclose(c, c.T) and float(torch.linalg.eigvalsh(c).min()) > -1e-9
    second = CovarianceStore(tmp_path)
    assert torch.equal(second.get(lm, 1, sample), c) and second.computed == 0
    assert not torch.equal(second.get(lm, 1, TextSample(n=7, length=8)), c) and second.computed == 1


def test_bench_editors_prints_each_editors_time_and_what_it_keeps(capsys, device):
    from knowloc.cli import main

    assert main(["bench", "editors", "--model", "tiny-llama", "--queries", "2", "--samples", "4"]) == 0
    out = capsys.readouterr().out
    assert f"tiny-llama on {device.type}" in out  # the suite's device (KNOWLOC_DEVICE), not an assumed CPU
    assert "C of layer 1 over 4 x 64 tokens" in out
    for name in ("kn", "kn-ft", "ft", "rome"):
        line = next(l for l in out.splitlines() if l.strip().startswith(name + " "))
        assert "s per edit (median of 2)" in line and "MiB of weights to restore" in line
    rome = next(l for l in out.splitlines() if l.strip().startswith("rome "))
    assert "(50.0% of the model's" not in rome  # one layer's projection, not a copy of the model


def test_bench_mass_editing_prints_the_batch_and_the_seconds_per_sequential_edit(capsys, device):
    from knowloc.cli import main

    args = ["bench", "mass-editing", "--model", "tiny-llama", "--edits", "3", "--samples", "4"]
    assert main(args + ["--editors", "kn,rome,memit"]) == 0
    out = capsys.readouterr().out
    assert f"tiny-llama on {device.type}" in out and "3 built-in facts edited, 20 locality prompts" in out
    assert "C of layer 0, 1 over 4 x 64 tokens" in out  # memit's range (layers 0-1 of 3) and rome's layer 1
    assert "memit batch of 3:" in out and "s with C); Rel" in out
    for name in ("kn", "rome", "memit"):
        line = next(l for l in out.splitlines() if l.strip().startswith(f"{name} ") and "sequential" in l)
        assert "3 sequential edits:" in line and "s per edit; after the last, Rel" in line
    last = out.strip().splitlines()[-1].split()
    assert last[0] == "mass_editing" and {kv.split("=")[0] for kv in last[1:]} == {
        "c_s", "memit_batch_s", "kn_s_per_edit", "rome_s_per_edit", "memit_s_per_edit"}
    assert main(args + ["--editors", "memit", "--modes", "batch"]) == 0  # the batch alone
    out = capsys.readouterr().out
    assert "memit batch of 3:" in out and "sequential edits" not in out
    assert main(args + ["--editors", "kn,bogus"]) == 2
    assert main(args + ["--modes", "parallel"]) == 2
    assert main(args[:-2] + ["--edits", "0", "--samples", "4"]) == 2
