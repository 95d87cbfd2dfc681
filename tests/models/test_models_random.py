"""Random-init paper shapes (`random:gpt2-xl`, ...) and `random:<config.json>`: built on the device in the dtype."""

import json

import pytest
import torch
from transformers import LlamaConfig

from knowloc.cli import main
from knowloc.errors import KnowlocError
from knowloc.models import load_model
from knowloc.models.random_init import build_random

# the published models' parameter counts (tied embeddings counted once)
PAPER_SHAPES = {
    "random:gpt2-xl": (1_557_611_200, 48, 6400, "gpt2"),
    "random:gptj-6b": (6_050_882_784, 28, 16384, "gpt-j"),
    "random:llama2-7b": (6_738_415_616, 32, 11008, "llama"),
    "random:llama3-8b": (8_030_261_248, 32, 14336, "llama"),
}


@pytest.mark.parametrize("name", PAPER_SHAPES)
def test_paper_shapes_have_the_published_parameter_counts_and_allocate_nothing_on_meta(name):
    n_params, n_layers, n_neurons, family = PAPER_SHAPES[name]
    lm = load_model(name, device="meta", dtype="bf16")
    params = list(lm.model.parameters())  # shared (tied) parameters once
    assert sum(p.numel() for p in params) == n_params
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in params)
    assert all(b.device.type == "meta" for b in lm.model.buffers())
    assert not any(p.requires_grad for p in params) and not lm.model.training
    assert (lm.n_layers, lm.n_neurons, lm.arch.family, lm.device.type) == (n_layers, n_neurons, family, "meta")
    assert max(lm.encode("The capital of France is", "Paris").input_ids) < lm.model.config.vocab_size


def test_knowloc_models_lists_the_random_shapes(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in PAPER_SHAPES:
        line = next(line for line in out.splitlines() if line.split()[0] == name)
        assert "knows no facts" in line


@pytest.fixture()
def tiny_config(tmp_path):
    LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64).save_pretrained(tmp_path)
    return tmp_path / "config.json"


def _weights(lm):
    return [p.detach() for p in lm.model.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_config_json_is_built_on_the_device_in_the_dtype_from_the_seed(tiny_config, device, dtype):
    name = f"random:{tiny_config}"
    lm = load_model(name, device=device, dtype=dtype, seed=3)
    assert all(p.dtype == dtype and p.device.type == device.type for p in lm.model.parameters())
    assert lm.arch.family == "llama" and lm.n_neurons == 64
    same = load_model(f"random:{tiny_config.parent}", device=device, dtype=dtype, seed=3)  # the directory works too
    other = load_model(name, device=device, dtype=dtype, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(_weights(lm), _weights(same)))
    assert not all(torch.equal(a, b) for a, b in zip(_weights(lm), _weights(other)))
    ids = torch.tensor([lm.encode("The capital of France is", "Paris").input_ids], device=device)
    logits = lm.model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], 600) and logits.dtype == dtype and torch.isfinite(logits).all()


def test_building_leaves_the_global_rng_as_it_was(tiny_config, device):
    torch.manual_seed(123)
    expected = torch.rand(3)  # on the CPU: the global CPU generator's next draw
    torch.manual_seed(123)
    build_random(f"random:{tiny_config}", device, seed=9)
    assert torch.equal(torch.rand(3), expected)  # on the CPU: the same draw


def test_unknown_shape_missing_config_and_unknown_model_type_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(KnowlocError, match=r"random:gpt2-xl, random:gptj-6b, random:llama2-7b, random:llama3-8b"):
        load_model("random:gpt3", device="meta")
    with pytest.raises(KnowlocError, match="does not exist"):
        load_model(f"random:{tmp_path / 'missing.json'}", device="meta")
    unknown = tmp_path / "config.json"
    unknown.write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.raises(KnowlocError, match="could not read config"):
        load_model(f"random:{unknown}", device="meta")
    unknown.write_text(json.dumps({"model_type": "bert"}))  # known to transformers, not registered in knowloc
    with pytest.raises(KnowlocError, match="unregistered model family 'bert'"):
        load_model(f"random:{unknown}", device="meta")
    for model, pattern in [("random:gpt3", "unknown random-init shape"),
                           (f"random:{tmp_path / 'missing.json'}", "does not exist")]:
        code = main(["localize", "--model", model, "--prompt", "x", "--target", "y"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert err.startswith("knowloc: error: ") and pattern in err
