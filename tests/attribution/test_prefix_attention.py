"""The engine's prefix attention (prefix keys/values kept at batch 1) equals sdpa on the concatenated keys."""

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from knowloc.attribution.engine import attribute_fast, prefix_attention
from knowloc.attribution.engine.prepare import Prepared
from knowloc.attribution.methods import MethodConfig
from knowloc.models.tiny import TINY

LAYER = 3


def _inputs(device, rows: int, heads: int, groups: int, n_q: int, n_pre: int, dim: int = 8, seed: int = 0):
    """Seeded query/key/value/prefix on the suite's device (drawn on the CPU, so every device gets the same)."""
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the same numbers on any device
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(device)  # noqa: E731  # drawn on the CPU, moved
    query = rand(rows, heads, n_q, dim)
    key, value = rand(rows, groups, n_q, dim), rand(rows, groups, n_q, dim)
    prefix = (rand(1, groups, n_pre, dim), rand(1, groups, n_pre, dim))
    module = SimpleNamespace(layer_idx=LAYER, num_key_value_groups=heads // groups, is_causal=True)
    return module, query, key, value, prefix


def _tolerance(device) -> dict:
    """fp32 on the CPU agrees to rounding; cuda's fused sdpa kernels accumulate in another order."""
    return dict(rtol=1e-5, atol=1e-6) if device.type == "cpu" else dict(rtol=1e-4, atol=1e-5)


def _replayed(module, query, key, value, prefix, mask, **kwargs):
    replay = prefix_attention.PrefixCache({LAYER: prefix})
    replay.split = True
    token = prefix_attention._ACTIVE_PREFIX.set(replay)
    try:
        out, _ = prefix_attention.prefix_attention(module, query, key, value, mask, **kwargs)
    finally:
        prefix_attention._ACTIVE_PREFIX.reset(token)
    assert replay.served == 1
    return out


def _concatenated(module, query, key, value, prefix, mask, **kwargs):
    rows = query.shape[0]
    keys = torch.cat([prefix[0].expand(rows, -1, -1, -1), key], dim=2)
    values = torch.cat([prefix[1].expand(rows, -1, -1, -1), value], dim=2)
    out, _ = sdpa_attention_forward(module, query, keys, values, mask, **kwargs)
    return out


@pytest.mark.parametrize("heads,groups", [(4, 4), (6, 2), (6, 1)])
@pytest.mark.parametrize("n_q", [1, 3])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
@pytest.mark.parametrize("scaling", [None, 0.3])
def test_prefix_attention_equals_sdpa_on_concatenated_keys(device, heads, groups, n_q, mask_kind, scaling):
    n_pre = 5
    module, query, key, value, prefix = _inputs(device, rows=7, heads=heads, groups=groups, n_q=n_q, n_pre=n_pre)
    causal = torch.ones(n_q, n_pre + n_q, dtype=torch.bool, device=device).tril(n_pre)
    causal[:, 1] = False  # a masked prefix position, as a padding or sliding-window mask has
    mask = {"none": None, "bool": causal.view(1, 1, n_q, -1),
            "float": torch.zeros(1, 1, n_q, n_pre + n_q, device=device).masked_fill(~causal, -torch.inf)}[mask_kind]
    reference_mask = mask
    if mask_kind == "none" and n_q > 1:  # without a mask the replay is causal among its own positions only
        reference_mask = torch.ones(n_q, n_pre + n_q, dtype=torch.bool, device=device).tril(n_pre).view(1, 1, n_q, -1)
    got = _replayed(module, query, key, value, prefix, mask, scaling=scaling)
    want = _concatenated(module, query, key, value, prefix, reference_mask, scaling=scaling)
    assert got.shape == (7, n_q, heads, 8)
    torch.testing.assert_close(got, want, **_tolerance(device))


def test_prefix_attention_gradients_match(device):
    module, query, key, value, prefix = _inputs(device, rows=5, heads=6, groups=2, n_q=1, n_pre=4)
    grads = []
    for fn in (_replayed, _concatenated):
        leaves = [t.clone().requires_grad_(True) for t in (query, key, value)]
        out = fn(module, *leaves, prefix, None)
        (out * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, **_tolerance(device))


def test_a_mask_of_another_length_falls_back_to_the_concatenated_keys(device):
    module, query, key, value, prefix = _inputs(device, rows=3, heads=4, groups=2, n_q=1, n_pre=5)
    short = torch.ones(1, 1, 1, 4, dtype=torch.bool, device=device)  # fits neither layout: sdpa must reject it as before
    with pytest.raises(RuntimeError):
        _replayed(module, query, key, value, prefix, short)


def test_attention_that_bypasses_the_interface_is_an_error(monkeypatch):
    """If a family computed attention without the registered function, the rows would silently miss the prefix."""
    from knowloc.models import load_model

    lm = load_model("tiny-llama")
    prefix_attention.register_prefix_attention()  # registered, then shadowed by plain sdpa for this test
    monkeypatch.setitem(AttentionInterface._global_mapping, prefix_attention.PREFIX_ATTENTION, sdpa_attention_forward)
    enc = lm.encode("The capital of France is", "Paris")
    with pytest.raises(RuntimeError, match="attention interface"):
        attribute_fast(lm, enc, MethodConfig("ig", 2))


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_sdpa_family_runs_the_staircase_through_the_prefix_attention(tiny_models, name, monkeypatch):
    lm = tiny_models(name)
    served = []
    original = Prepared.call_block

    def spy(prep, lm_, b, hidden):
        out = original(prep, lm_, b, hidden)
        served.append(prep.prefix_cache.served)
        return out

    monkeypatch.setattr(Prepared, "call_block", spy)
    attribute_fast(lm, lm.encode("The capital of France is", "Paris"), MethodConfig("ig", 2))
    if name == "tiny-gemma2":  # soft-capped attention stays eager: prefix copies, no prefix attention
        assert served and max(served) == 0
    else:
        assert max(served) >= lm.n_layers  # every block's attention read the prefix through the prefix cache


def test_a_per_head_mask_falls_back_to_sdpa_with_the_same_result(device):
    module, query, key, value, prefix = _inputs(device, rows=3, heads=4, groups=2, n_q=1, n_pre=5)
    mask = torch.ones(1, 4, 1, 6, dtype=torch.bool, device=device)
    mask[0, 1, 0, 2] = False  # one head masks one prefix position
    got = _replayed(module, query, key, value, prefix, mask)
    torch.testing.assert_close(got, _concatenated(module, query, key, value, prefix, mask), **_tolerance(device))


REGISTRATION = textwrap.dedent("""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    import knowloc.attribution
    from knowloc.attribution.engine import attribute_fast, prefix_attention
    from knowloc.attribution.methods import MethodConfig
    from knowloc.models import load_model

    torch.set_num_threads(1)
    name = prefix_attention.PREFIX_ATTENTION
    assert name not in AttentionInterface() and name not in AttentionMaskInterface(), "registered at import"
    registered = []
    for interface in (AttentionInterface, AttentionMaskInterface):
        def spy(cls, key, value, original=interface.register.__func__):
            registered.append((cls.__name__, key))
            original(cls, key, value)
        interface.register = classmethod(spy)
    lm = load_model("tiny-llama")
    enc = lm.encode("The capital of France is", "Paris")
    assert lm.attention_implementation != "knowloc_prefix"
    attribute_fast(lm, enc, MethodConfig("ig", 2))
    assert AttentionInterface()[name] is prefix_attention.prefix_attention
    assert sorted(registered) == [("AttentionInterface", name), ("AttentionMaskInterface", name)], registered
    attribute_fast(lm, enc, MethodConfig("ig", 2))
    assert prefix_attention.register_prefix_attention() is False
    assert len(registered) == 2, registered
    print("ok")
""")


def test_the_attention_function_is_registered_lazily_and_once():
    """Importing knowloc leaves transformers' attention registries as they were; the first staircase registers
    the prefix attention (and its mask layout), later ones do not register it again. A fresh interpreter,
    since this session's earlier tests have registered it already."""
    done = subprocess.run([sys.executable, "-c", REGISTRATION], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
