"""Random-init models of the paper's shapes (``random:gpt2-xl``, ``random:gptj-6b``, ``random:llama2-7b``,
``random:llama3-8b``) or of any Hugging Face ``config.json`` (``random:PATH``), built from configs in code.

For speed and memory only: they know no facts. Their parameter counts, layers and neurons are those of the
published models, so a run on one takes the time and memory of the real model, with nothing to download.

The model is built directly on the target device in the compute dtype (``torch.device`` context +
``from_config(dtype=...)``): a 7B model in bf16 on cuda never has an fp32 or CPU copy, and on ``meta`` nothing is
allocated. Weights come from a seed (identical for the same seed on the same device). They share the tiny models'
byte-level tokenizer (ids < 512, valid for any vocabulary of at least that size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, GPT2Config, GPTJConfig, LlamaConfig, PreTrainedConfig,
                          PreTrainedTokenizerFast)

from knowloc.errors import KnowlocError
from knowloc.models.registry import REGISTRY
from knowloc.models.tiny import tiny_tokenizer

PREFIX = "random:"
CAVEAT = "for speed and memory only: knows no facts"


def _gpt2_xl() -> PreTrainedConfig:
    return GPT2Config(n_embd=1600, n_layer=48, n_head=25, vocab_size=50257, n_positions=1024)


def _gptj_6b() -> PreTrainedConfig:
    return GPTJConfig(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, vocab_size=50400, n_positions=2048)


def _llama2_7b() -> PreTrainedConfig:
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       tie_word_embeddings=False)


def _llama3_8b() -> PreTrainedConfig:
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5,
                       rope_theta=500000.0, tie_word_embeddings=False)


# shape -> (config, "published model, its parameter count"); exact counts and memory: docs/methods.md
SHAPES: dict[str, tuple[Callable[[], PreTrainedConfig], str]] = {
    "gpt2-xl": (_gpt2_xl, "GPT-2 XL, 1.56B"),
    "gptj-6b": (_gptj_6b, "GPT-J-6B, 6.05B"),
    "llama2-7b": (_llama2_7b, "LLaMA-2-7B, 6.74B"),
    "llama3-8b": (_llama3_8b, "LLaMA-3-8B, 8.03B"),
}


def random_names() -> dict[str, str]:
    """``random:<shape>`` -> one-line description (for ``knowloc models``)."""
    return {f"{PREFIX}{shape}": f"random-init {about} parameters ({CAVEAT})" for shape, (_, about) in SHAPES.items()}


def is_random(name: str) -> bool:
    return name.startswith(PREFIX)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def random_config(name: str) -> PreTrainedConfig:
    """The config of ``random:<shape>`` or ``random:<path to a config.json or its directory>`` (never downloads).

    Raises:
        KnowlocError: an unknown shape, a missing or unreadable config file, a model_type transformers does not
            know or knowloc has not registered (one line).

    Example:
        >>> random_config("random:gpt2-xl").n_layer
        48
    """
    spec = name[len(PREFIX):] if is_random(name) else name
    if spec in SHAPES:
        return SHAPES[spec][0]()
    looks_like_path = spec.endswith(".json") or "/" in spec or spec.startswith(("~", "."))
    if not looks_like_path:
        raise KnowlocError(f"unknown random-init shape {name!r}; choose one of {', '.join(random_names())} "
                           f"or {PREFIX}<path to a Hugging Face config.json>")
    path = Path(spec).expanduser()
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise KnowlocError(f"config file {file} does not exist")
    try:
        config = AutoConfig.from_pretrained(str(file), local_files_only=True)
    except Exception as exc:
        raise KnowlocError(f"could not read config {file}: {_first_line(exc)}") from None
    if config.model_type not in REGISTRY:
        raise KnowlocError(f"{file}: unregistered model family {config.model_type!r}; registered: "
                           f"{', '.join(sorted(REGISTRY))}")
    return config


def build_random(name: str, device: torch.device | str, dtype: torch.dtype = torch.float32, seed: int = 0,
                 attn_implementation: str = "eager") -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """Return (model, tokenizer) for ``random:<shape>`` or ``random:<config.json>``, built on ``device`` in
    ``dtype``; identical weights for the same seed on the same device. The global RNG is left as it was.

    Example:
        >>> model, _ = build_random("random:llama3-8b", "meta", torch.bfloat16)  # nothing allocated
        >>> sum(p.numel() for p in model.parameters())
        8030261248
    """
    config = random_config(name)
    tok = tiny_tokenizer(config.model_type.startswith("gemma"))  # Gemma's tokenizer adds a BOS token
    if config.vocab_size < len(tok):
        raise KnowlocError(f"{name}: vocab_size {config.vocab_size} is smaller than the built-in tokenizer's "
                           f"{len(tok)} tokens")
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    config._attn_implementation = attn_implementation
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)  # this device's generator only
        try:
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
        except Exception as exc:  # out of memory included: one line, as every load error
            raise KnowlocError(f"could not build {name}: {_first_line(exc)}") from None
    return model, tok
