"""Tiny random-init models of every registered family, built from configs in code (for tests; no downloads).

Weights come from a fixed seed, so the same name always gives the same model. They share a small byte-level
BPE tokenizer trained in code on a fixed corpus; `tiny-gemma*` adds a BOS token as Gemma's tokenizer does.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoModelForCausalLM, GPT2Config, GPTJConfig, GPTNeoXConfig, Gemma2Config, Gemma3TextConfig, GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config,
                          PreTrainedConfig, PreTrainedTokenizerFast)

VOCAB = 512
_CORPUS = [
    "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome.",
    "Paris is the capital city of France, and Tokyo is the capital city of Japan.",
    "The native language of Victor Hugo is French. Dante Alighieri spoke Italian.",
    "Egypt is located in Africa. Brazil is located on the continent of South America.",
    "The official language of Spain is Spanish. People in Portugal speak Portuguese.",
    "The weather today is mild and the river runs quietly through the old town.",
    "Once upon a time, a quiet village stood near a green hill with a small bridge.",
    "1 2 3 4 5 6 7 8 9 0 , . ; : ! ? ' \" ( ) - [ ] < > / @ # $ % & * + =",
]


@lru_cache(maxsize=2)
def tiny_tokenizer(add_bos: bool = False) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<bos>", "<pad>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<bos>", pad_token="<pad>", unk_token="<unk>",
    )


def _gpt2() -> PreTrainedConfig:
    return GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=48, n_layer=3, n_head=4, n_inner=96,
                      bos_token_id=0, eos_token_id=0)


def _neox() -> PreTrainedConfig:
    return GPTNeoXConfig(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=96, max_position_embeddings=128, eos_token_id=0, bos_token_id=0)


def _gptj() -> PreTrainedConfig:
    return GPTJConfig(vocab_size=VOCAB, n_positions=128, n_embd=48, n_layer=3, n_head=4, n_inner=96,
                      rotary_dim=8, bos_token_id=0, eos_token_id=0)


def _llama_kwargs() -> dict:
    return dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                bos_token_id=1, eos_token_id=0, pad_token_id=2)


def _llama() -> PreTrainedConfig:
    return LlamaConfig(**_llama_kwargs())


def _mistral() -> PreTrainedConfig:
    return MistralConfig(**_llama_kwargs(), sliding_window=64)


def _qwen2() -> PreTrainedConfig:
    return Qwen2Config(**_llama_kwargs())


def _qwen3() -> PreTrainedConfig:
    return Qwen3Config(**_llama_kwargs(), head_dim=12)


def _gemma1() -> PreTrainedConfig:
    return GemmaConfig(**_llama_kwargs(), head_dim=12)


def _gemma2() -> PreTrainedConfig:
    return Gemma2Config(**_llama_kwargs(), head_dim=12, sliding_window=16, final_logit_softcapping=30.0)


def _gemma3() -> PreTrainedConfig:
    kw = _llama_kwargs() | {"num_hidden_layers": 4}
    return Gemma3TextConfig(**kw, head_dim=12, sliding_window=8, sliding_window_pattern=2)


TINY: dict[str, tuple[Callable[[], PreTrainedConfig], bool]] = {
    "tiny-gpt2": (_gpt2, False),
    "tiny-gpt-neox": (_neox, False),
    "tiny-gptj": (_gptj, False),
    "tiny-llama": (_llama, False),
    "tiny-mistral": (_mistral, False),
    "tiny-qwen2": (_qwen2, False),
    "tiny-qwen3": (_qwen3, False),
    "tiny-gemma1": (_gemma1, True),
    "tiny-gemma2": (_gemma2, True),
    "tiny-gemma": (_gemma3, True),
}


def build_tiny(name: str, seed: int = 0, attn_implementation: str = "eager"):
    """Return (model, tokenizer) for a tiny random-init model; identical weights for the same seed."""
    make_config, add_bos = TINY[name]
    config = make_config()
    config._attn_implementation = attn_implementation
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn_implementation)
    finally:
        torch.random.set_rng_state(generator_state)
    return model, tiny_tokenizer(add_bos)
