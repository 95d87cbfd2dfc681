"""`LanguageModel`: one object holding the HF model, its tokenizer and the resolved architecture adapter."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn

from knowloc.errors import KnowlocError
from knowloc.models.registry import ArchSpec

SITES = {
    "neuron": "input of the MLP output projection (knowloc's convention; lines up with the value vectors)",
    "pre_act": "output of the first FFN projection before the activation (the anchors' hook site, for comparison)",
}
T = TypeVar("T")


@dataclass(frozen=True)
class Encoding:
    """A prompt and its gold target, tokenized under knowloc's rules.

    The model reads prompt + target[:-1] (teacher forcing); target token t is predicted at position
    `last_pos + t`, where `last_pos` is the last prompt position (where neurons are read).
    """

    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]

    @property
    def input_ids(self) -> list[int]:
        return list(self.prompt_ids) + list(self.target_ids[:-1])

    @property
    def last_pos(self) -> int:
        return len(self.prompt_ids) - 1

    @property
    def n_target(self) -> int:
        return len(self.target_ids)


@dataclass
class LanguageModel:
    """The HF model, its tokenizer, the architecture adapter, its name and hook site, and what components derive
    from the loaded model (``caches``).

    ``caches`` holds each component's derived state of this model (the attribution engine's recorded block calls
    and AMIG baselines, ROME's context prefixes and key statistics, the weights fingerprint), one entry per owner
    (its module name, :meth:`cache`), so that state lives and dies with the loaded model: dropping the model drops
    it, :meth:`clear_caches` frees it at once (the study's model pool, when it moves to another model). Results
    never depend on it. Wrappers of one module made with ``dataclasses.replace`` (e.g. another ``site``) share it.
    """

    model: nn.Module
    tokenizer: object
    arch: ArchSpec
    name: str
    site: str = "neuron"
    caches: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, kw_only=True)

    def cache(self, owner: str, make: Callable[[], T]) -> T:
        """The state `owner` (a component's module name) keeps for this model, made by ``make()`` on first use.

        Example:
            >>> lm.cache(__name__, dict)["key"] = value  # kept until lm.clear_caches() or the model goes
        """
        if owner not in self.caches:
            self.caches[owner] = make()
        return self.caches[owner]

    def clear_caches(self) -> None:
        """Drop every component's derived state of this model (it is recomputed when needed)."""
        self.caches.clear()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def blocks(self) -> nn.ModuleList:
        return self.arch.blocks(self.model)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def n_neurons(self) -> int:
        weight = self.mlp_out(0).weight
        return weight.shape[0] if self.arch.value_layout == "row" else weight.shape[1]

    @property
    def max_positions(self) -> int | None:
        config = self.model.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def mlp_out(self, layer: int) -> nn.Module:
        return self.arch.mlp_out(self.blocks[layer])

    def site_module(self, layer: int) -> tuple[nn.Module, str]:
        """(module, "input" | "output") where the activation at this model's hook site lives."""
        if self.site == "neuron":
            return self.mlp_out(layer), "input"
        return self.arch.pre_act(self.blocks[layer]), "output"

    @property
    def attention_implementation(self) -> str:
        """The attention implementation the model runs now (e.g. "eager", "sdpa")."""
        return self.model.config._attn_implementation

    @contextmanager
    def use_attention(self, name: str) -> Iterator[None]:
        """Run the body with another attention implementation (a name of transformers' AttentionInterface),
        then restore the configured one, also on an exception. The one place knowloc switches it."""
        config = self.model.config
        saved = config._attn_implementation
        config._attn_implementation = name
        try:
            yield
        finally:
            config._attn_implementation = saved

    @contextmanager
    def fast_attention(self) -> Iterator[None]:
        """Use PyTorch's fused attention (sdpa) inside the body where the family supports it (same maths as
        eager up to rounding; Gemma-2's soft-capped attention does not), then restore the configured one."""
        if self.attention_implementation == "sdpa" or not getattr(self.model, "_supports_sdpa", False):
            yield
            return
        with self.use_attention("sdpa"):
            yield

    def value_vector(self, layer: int, index: int) -> torch.Tensor:
        """A view of neuron (layer, index)'s value vector in the MLP output projection's weight."""
        weight = self.mlp_out(layer).weight
        return weight[index] if self.arch.value_layout == "row" else weight[:, index]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.arch.logits(self.model, hidden)

    def encode(self, prompt: str, target: str | None = None) -> Encoding:
        """Tokenize a prompt (trailing whitespace removed) and its space-prefixed target continuation."""
        prompt = prompt.rstrip()
        if not prompt:
            raise KnowlocError("empty prompt")
        prompt_ids = tuple(self.tokenizer(prompt)["input_ids"])
        target_ids: tuple[int, ...] = ()
        if target is not None:
            target = target.strip()
            target_ids = tuple(self.tokenizer(" " + target, add_special_tokens=False)["input_ids"]) if target else ()
            if not target_ids:
                raise KnowlocError(f"target {target!r} tokenizes to nothing")
        limit = self.max_positions
        total = len(prompt_ids) + max(len(target_ids) - 1, 0)
        if limit is not None and total > limit:
            raise KnowlocError(f"prompt of {total} tokens is longer than the model's context of {limit}")
        return Encoding(prompt_ids, target_ids)

    def first_target_token(self, target: str) -> int:
        ids = self.tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]
        if not ids:
            raise KnowlocError(f"target {target!r} tokenizes to nothing")
        return ids[0]
