"""Architecture registry: every per-family fact knowloc needs, in one place.

Neuron convention (docs/methods.md): neuron (l, i) is component i of the INPUT of block l's MLP output
projection at the last prompt position (GELU(c_fc x) for GPT-2, SiLU(gate x) * up x for LLaMA). Its value
vector is row i of a Conv1D weight [n_neurons, d_model] or column i of a Linear weight [d_model, n_neurons].

Adding a family is one `register(ArchSpec(...))` call with accessors; nothing matches module names as strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from knowloc.errors import KnowlocError

Accessor = Callable[[nn.Module], nn.Module]


@dataclass(frozen=True)
class ArchSpec:
    """How to find the parts of one model family.

    blocks(model) -> the ModuleList of transformer blocks.
    mlp_out(block) -> MLP output projection; its input is the neuron activation vector.
    value_layout: "row" (Conv1D, weight [n_neurons, d]) or "col" (nn.Linear, weight [d, n_neurons]).
    pre_act(block) -> first FFN projection whose OUTPUT is the pre-activation (anchor hook site).
    attn(block) -> the self-attention module. final_norm(model), unembed(model) -> logits head.
    mlp_tail(block) -> the module applied to the MLP output before it is added to the residual stream (Gemma-2/3's
    post-feedforward norm), or None: block output = (everything else) + mlp_tail(mlp_out(activation)).
    """

    family: str
    model_types: tuple[str, ...]
    blocks: Callable[[nn.Module], nn.ModuleList]
    mlp_out: Accessor
    value_layout: Literal["row", "col"]
    pre_act: Accessor
    attn: Accessor
    final_norm: Accessor
    unembed: Accessor
    pre_act_label: str = "gate_proj output (EasyEdit's hook site)"
    mlp_tail: Accessor | None = None

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding (+ Gemma-2/3 logit soft-capping) of the last block's output."""
        logits = self.unembed(model)(self.final_norm(model)(hidden))
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


REGISTRY: dict[str, ArchSpec] = {}


def register(arch: ArchSpec) -> ArchSpec:
    for model_type in arch.model_types:
        REGISTRY[model_type] = arch
    return arch


def families() -> list[str]:
    return sorted({arch.family for arch in REGISTRY.values()})


def resolve(model: nn.Module) -> ArchSpec:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in REGISTRY:
        raise KnowlocError(
            f"unregistered model family {model_type!r}; registered: {', '.join(sorted(REGISTRY))}. "
            "Add one with knowloc.models.registry.register(ArchSpec(...)) (see docs/methods.md)"
        )
    return REGISTRY[model_type]


register(ArchSpec(
    family="gpt2", model_types=("gpt2",),
    blocks=lambda m: m.transformer.h,
    mlp_out=lambda b: b.mlp.c_proj, value_layout="row",
    pre_act=lambda b: b.mlp.c_fc, pre_act_label="c_fc output before GELU (EleutherAI knowledge-neurons' hook site)",
    attn=lambda b: b.attn,
    final_norm=lambda m: m.transformer.ln_f, unembed=lambda m: m.lm_head,
))
register(ArchSpec(
    family="gpt-neox", model_types=("gpt_neox",),
    blocks=lambda m: m.gpt_neox.layers,
    mlp_out=lambda b: b.mlp.dense_4h_to_h, value_layout="col",
    pre_act=lambda b: b.mlp.dense_h_to_4h, pre_act_label="dense_h_to_4h output before GELU",
    attn=lambda b: b.attention,
    final_norm=lambda m: m.gpt_neox.final_layer_norm, unembed=lambda m: m.get_output_embeddings(),
))
register(ArchSpec(
    family="gpt-j", model_types=("gptj",),
    blocks=lambda m: m.transformer.h,
    mlp_out=lambda b: b.mlp.fc_out, value_layout="col",
    pre_act=lambda b: b.mlp.fc_in, pre_act_label="fc_in output before GELU",
    attn=lambda b: b.attn,
    final_norm=lambda m: m.transformer.ln_f, unembed=lambda m: m.lm_head,
))


def _llama_like(family: str, *model_types: str, mlp_tail: Accessor | None = None) -> ArchSpec:
    """LLaMA, Mistral, Qwen2/3 and Gemma 1/2/3 share the gated-MLP layout model.model.layers[i].mlp.down_proj."""
    return register(ArchSpec(
        family=family, model_types=model_types,
        blocks=lambda m: m.model.layers,
        mlp_out=lambda b: b.mlp.down_proj, value_layout="col",
        pre_act=lambda b: b.mlp.gate_proj,
        attn=lambda b: b.self_attn,
        final_norm=lambda m: m.model.norm, unembed=lambda m: m.lm_head, mlp_tail=mlp_tail,
    ))


_llama_like("llama", "llama")
_llama_like("mistral", "mistral")
_llama_like("qwen2", "qwen2")
_llama_like("qwen3", "qwen3")
_llama_like("gemma", "gemma")
_llama_like("gemma2", "gemma2", mlp_tail=lambda b: b.post_feedforward_layernorm)
_llama_like("gemma3", "gemma3_text", mlp_tail=lambda b: b.post_feedforward_layernorm)
