import pytest
import torch

from knowloc.attention import attention_rows, n_heads, scale_attention
from knowloc.errors import KnowlocError
from knowloc.models.hooks import hook_module
from knowloc.models.tiny import TINY

PROMPT = "The capital of France is"

# Test-only: the attention output projection, whose input is the concatenation of the heads' outputs.
OUT_PROJ = {
    "gpt2": lambda attn: attn.c_proj,
    "gpt-neox": lambda attn: attn.dense,
    "gpt-j": lambda attn: attn.out_proj,
}


def _out_proj(lm, layer):
    attn = lm.arch.attn(lm.blocks[layer])
    return OUT_PROJ.get(lm.arch.family, lambda a: a.o_proj)(attn)


def _ids(lm, text=PROMPT):
    return torch.tensor([lm.encode(text).prompt_ids], device=lm.device)  # where the model lives


@torch.no_grad()
def _logits(lm, ids):
    return lm.model(input_ids=ids).logits


@torch.no_grad()
def _head_outputs(lm, layer, ids):
    """Input of the attention output projection of `layer`, [seq, n_heads, head_dim]."""
    seen = {}

    def record(x):
        seen["x"] = x.detach().clone()

    with hook_module(_out_proj(lm, layer), "input", record):
        lm.model(input_ids=ids)
    x = seen["x"][0]
    return x.view(x.shape[0], n_heads(lm), -1)


def _every_entry(lm, ids):
    return [(l, h, p) for l in range(lm.n_layers) for h in range(n_heads(lm)) for p in range(ids.shape[1])]


def _no_mode_left():
    return torch._C._len_torch_function_stack() == 0


def _hook_ids(lm):
    return {name: (tuple(m._forward_pre_hooks), tuple(m._forward_hooks)) for name, m in lm.model.named_modules()}


@pytest.mark.parametrize("name", sorted(TINY))
def test_alpha_one_is_bit_identical_and_exit_restores(name, tiny_models):
    lm = tiny_models(name)
    ids = _ids(lm)
    hooks = _hook_ids(lm)
    weights = {k: v.clone() for k, v in lm.model.state_dict().items()}
    base = _logits(lm, ids)
    with scale_attention(lm, _every_entry(lm, ids), 1.0):
        same = _logits(lm, ids)
    assert torch.equal(same, base)
    with scale_attention(lm, [(lm.n_layers - 1, 0, 1), (0, 1, ids.shape[1] - 1)], 0.0):
        changed = _logits(lm, ids)
    assert not torch.equal(changed, base)
    assert torch.equal(_logits(lm, ids), base)
    assert _no_mode_left()
    assert _hook_ids(lm) == hooks
    assert all(torch.equal(v, weights[k]) for k, v in lm.model.state_dict().items())


@pytest.mark.parametrize("name", sorted(TINY))
def test_alpha_zero_on_a_whole_row_zeroes_that_head(name, tiny_models):
    lm = tiny_models(name)
    ids = _ids(lm)
    layer, head = lm.n_layers - 1, 1
    base = _head_outputs(lm, layer, ids)
    row = [(layer, head, p) for p in range(ids.shape[1])]
    with scale_attention(lm, row, 0.0):
        out = _head_outputs(lm, layer, ids)
    assert torch.count_nonzero(out[-1, head]) == 0  # this head, last position: all zeros
    assert torch.count_nonzero(base[-1, head]) > 0
    others = [h for h in range(n_heads(lm)) if h != head]
    assert torch.equal(out[-1, others], base[-1, others])  # other query heads (also GQA partners) untouched
    assert torch.equal(out[:-1], base[:-1])  # other query positions untouched


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma"])
def test_query_position_selects_the_row(name, tiny_models):
    lm = tiny_models(name)
    ids = _ids(lm)
    layer, head, q = 0, 2, 2
    base = _head_outputs(lm, layer, ids)
    with scale_attention(lm, [(layer, head, p) for p in range(q + 1)], 0.0, query_position=q):
        out = _head_outputs(lm, layer, ids)
    assert torch.count_nonzero(out[q, head]) == 0
    keep = [p for p in range(ids.shape[1]) if p != q]
    assert torch.equal(out[keep], base[keep])


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma2"])
def test_scaling_without_and_with_renormalisation(name, tiny_models):
    lm = tiny_models(name)
    layer, head, pos = 1, 0, 2
    base = attention_rows(lm, PROMPT)[layer, head]
    with scale_attention(lm, [(layer, head, pos)], 2.0):
        raw = attention_rows(lm, PROMPT)
    assert raw[layer, head, pos] == 2 * base[pos]
    torch.testing.assert_close(raw[layer, head].sum(), 1 + base[pos])
    others = [p for p in range(base.shape[0]) if p != pos]
    assert torch.equal(raw[layer, head, others], base[others])
    with scale_attention(lm, [(layer, head, pos)], 2.0, renormalize=True):
        norm = attention_rows(lm, PROMPT)
    assert not torch.equal(norm[layer, head], base)
    torch.testing.assert_close(norm[layer, head].sum(), torch.tensor(1.0))  # attention_rows: on the CPU
    torch.testing.assert_close(norm[layer, head], raw[layer, head] / (1 + base[pos]))
    assert norm[layer, head, pos] > base[pos]
    # a row scaled to zero everywhere stays zero (no 0/0)
    with scale_attention(lm, [(layer, head, p) for p in range(base.shape[0])], 0.0, renormalize=True):
        zero = attention_rows(lm, PROMPT)
    assert torch.count_nonzero(zero[layer, head]) == 0


def test_gpt2_scaling_options_and_upcast_path(device):
    """GPT-2's reorder_and_upcast_attn path and inverse-layer scaling go through the same mechanism."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from knowloc.models.lm import LanguageModel
    from knowloc.models.registry import resolve
    from knowloc.models.tiny import tiny_tokenizer

    config = GPT2Config(vocab_size=512, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                        reorder_and_upcast_attn=True, scale_attn_by_inverse_layer_idx=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel._from_config(config, attn_implementation="eager").eval().to(device)
    lm = LanguageModel(model=model, tokenizer=tiny_tokenizer(False), arch=resolve(model), name="gpt2-variant")
    ids = _ids(lm)
    base = _logits(lm, ids)
    with scale_attention(lm, _every_entry(lm, ids), 1.0):
        assert torch.equal(_logits(lm, ids), base)
    with scale_attention(lm, [(1, 3, p) for p in range(ids.shape[1])], 0.0):
        out = _head_outputs(lm, 1, ids)
    assert torch.count_nonzero(out[-1, 3]) == 0
    assert torch.equal(_logits(lm, ids), base)


def test_restored_when_the_body_raises(tiny_models):
    lm = tiny_models("tiny-llama")
    ids = _ids(lm)
    base = _logits(lm, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with scale_attention(lm, [(0, 0, 1)], 0.0):
            raise RuntimeError("boom")
    assert torch.equal(_logits(lm, ids), base)
    assert _no_mode_left()


def test_restored_when_the_forward_raises(tiny_models):
    lm = tiny_models("tiny-gemma")
    ids = _ids(lm)
    base = _logits(lm, ids)
    with pytest.raises(KnowlocError, match="outside"):
        with scale_attention(lm, [(1, 0, 99)], 0.0):  # key position beyond the input: raised inside forward
            _logits(lm, ids)
    assert _no_mode_left()
    assert torch.equal(_logits(lm, ids), base)
    for block in lm.blocks:
        attn = lm.arch.attn(block)
        assert not attn._forward_hooks and not attn._forward_pre_hooks


def test_kv_cache_key_positions_are_absolute(tiny_models):
    from transformers import DynamicCache

    lm = tiny_models("tiny-llama")
    ids = _ids(lm)
    entries = [(0, 0, 1), (1, 3, 2)]
    with torch.no_grad(), scale_attention(lm, entries, 0.0):
        full = lm.model(input_ids=ids).logits[0, -1]
    cache = DynamicCache(config=lm.model.config)
    with torch.no_grad():
        lm.model(input_ids=ids[:, :-1], cache=cache, use_cache=True)
        with scale_attention(lm, entries, 0.0):
            step = lm.model(input_ids=ids[:, -1:], cache=cache, use_cache=True).logits[0, -1]
    torch.testing.assert_close(step, full)


def test_bad_arguments(tiny_models):
    lm = tiny_models("tiny-gpt2")
    for entries, alpha in [([(9, 0, 1)], 0.0), ([(0, 9, 1)], 0.0), ([(0, 0, -1)], 0.0), ([(0, 0)], 0.0),
                           ([(0, 0, 1)], float("nan")), ([(0, 0, 1)], "2")]:
        with pytest.raises(KnowlocError):
            with scale_attention(lm, entries, alpha):
                pass
    with pytest.raises(KnowlocError, match="query_position"):
        with scale_attention(lm, [(0, 0, 1)], 0.0, query_position=50):
            _logits(lm, _ids(lm))
    assert _no_mode_left()


def test_needs_eager_attention():
    from knowloc.models import load_model

    lm = load_model("tiny-qwen2", attn_implementation="sdpa")
    with pytest.raises(KnowlocError, match="eager"):
        with scale_attention(lm, [(0, 0, 1)], 0.0):
            pass
