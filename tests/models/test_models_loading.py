import pytest
import torch

from knowloc.errors import KnowlocError
from knowloc.models import load_model


def test_missing_path(tmp_path):
    with pytest.raises(KnowlocError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(KnowlocError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))


def test_corrupt_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("KNOWLOC_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00garbage" * 10)
    with pytest.raises(KnowlocError, match="could not read GGUF file"):
        load_model(str(bad))


def test_pickle_weights_refused_unless_allowed(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(KnowlocError, match="pickle .bin weights.*--allow-pickle"):
        load_model(str(tmp_path))


def test_local_safetensors_directory_roundtrip(tmp_path, tiny_models, device):
    lm = tiny_models("tiny-qwen2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))  # on the suite's device, like lm
    assert again.device == lm.device
    ids = torch.tensor([lm.encode("The capital of France is").prompt_ids], device=device)
    with torch.no_grad():
        assert torch.equal(lm.model(input_ids=ids).logits, again.model(input_ids=ids).logits)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu():  # about a machine without a GPU: the CPU suite only
    with pytest.raises(KnowlocError, match="no CUDA GPU"):
        load_model("tiny-gpt2", device="cuda")


def test_bad_dtype_and_site():
    with pytest.raises(KnowlocError, match="unknown dtype"):
        load_model("tiny-gpt2", dtype="int3")
    with pytest.raises(KnowlocError, match="unknown hook site"):
        load_model("tiny-gpt2", site="nowhere")


@pytest.mark.slow
@pytest.mark.parametrize("fixture, family, shape, prompt, within", [
    ("smollm2", "llama", (30, 1536), "The capital of France is", 1),
    ("gemma3", "gemma3", (18, 2048), "The capital city of France is", 5),  # the base model often says " a" first
])
def test_builtin_models_know_paris(request, device, fixture, family, shape, prompt, within):
    lm = request.getfixturevalue(fixture)
    assert lm.arch.family == family and (lm.n_layers, lm.n_neurons) == shape
    enc = lm.encode(prompt, "Paris")
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([enc.input_ids], device=device)).logits[0, -1]
    assert enc.target_ids[0] in logits.topk(within).indices.tolist()


def test_a_mistyped_builtin_name_is_named_not_looked_up(tmp_path, monkeypatch):
    from knowloc.errors import KnowlocError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(KnowlocError, match=r"'smollm2-999m' is not a built-in model \(did you mean 'smollm2-135m'\?\)"
                                           r"; built-ins are smollm2-135m, gemma3-270m, tiny-"):
        load_model("smollm2-999m")
