import pytest

from knowloc.errors import KnowlocError


def test_prompt_trailing_space_removed_target_space_prefixed(tiny_models):
    lm = tiny_models("tiny-llama")
    enc = lm.encode("The capital of France is  ", "Paris")
    assert enc.prompt_ids == lm.encode("The capital of France is", "Paris").prompt_ids
    assert list(enc.target_ids) == lm.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert lm.tokenizer.decode(list(enc.target_ids)) == " Paris"


def test_multi_token_target_teacher_forced(tiny_models):
    lm = tiny_models("tiny-llama")
    enc = lm.encode("The capital of France is", "Paris Berlin")
    assert enc.n_target > 1
    assert enc.input_ids == list(enc.prompt_ids) + list(enc.target_ids[:-1])
    assert enc.last_pos == len(enc.prompt_ids) - 1


def test_gemma_keeps_bos(tiny_models):
    lm = tiny_models("tiny-gemma")
    enc = lm.encode("The capital of France is", "Paris")
    assert enc.prompt_ids[0] == lm.tokenizer.bos_token_id
    assert lm.tokenizer.bos_token_id not in enc.target_ids


@pytest.mark.parametrize("prompt,target,message", [
    ("", "Paris", "empty prompt"),
    ("   ", "Paris", "empty prompt"),
    ("The capital of France is", "  ", "tokenizes to nothing"),
    ("word " * 200, "Paris", "longer than the model's context"),
])
def test_bad_encodings(tiny_models, prompt, target, message):
    with pytest.raises(KnowlocError, match=message):
        tiny_models("tiny-gpt2").encode(prompt, target)
