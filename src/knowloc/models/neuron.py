"""What a neuron is: the tokens its value vector writes towards, and how it fires.

A neuron n = (l, i) adds ``a_n * v_n`` to the residual stream (``v_n`` its value vector; on Gemma-2/3 through the
post-feedforward norm, the registry's ``mlp_tail``). Read through the unembedding like the model's last hidden
state (final norm, then the LM head; the logit lens of nostalgebraist 2020 applied to one value vector, as Geva
et al. 2022 read FFN value vectors), ``logits_n = E final_norm(tail(v_n))``: the tokens with the largest logits are
the ones the neuron *promotes* when it fires positively, the smallest the ones it *suppresses* (their roles
swap when ``a_n < 0``).

How a neuron fires is read on fact-free prompts: its *activation ratio* is the median over prompts of
``|a_n| / median_{n' in its layer} |a_n'|`` (the same number as the specificity profile's,
:func:`knowloc.analysis.specificity.activation_ratio`). A ratio of MASSIVE_RATIO or more is a *massive
activation* (Sun et al. 2024, "Massive activations in large language models": a few neurons fire orders of
magnitude above the rest on every input): such a neuron is large on any prompt, so a large attribution to it says
little about a fact. :func:`explain_ratio` says this in words.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from knowloc.models.hooks import trace_activations
from knowloc.models.lm import LanguageModel
from knowloc.models.scoring import pad_right

__all__ = ["MASSIVE_RATIO", "value_logits", "describe_neurons", "activation_stats", "activation_ratios",
           "explain_ratio"]

MASSIVE_RATIO = 100.0  # |a| / layer median from which an activation is "massive" (two orders of magnitude)


@torch.no_grad()
def value_logits(lm: LanguageModel, neurons: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``E final_norm(tail(v_n))`` for each neuron: float32 ``[len(neurons), vocab]`` (soft-capped like the
    model's logits where the family caps them)."""
    vectors = []
    for layer, index in neurons:
        v = lm.value_vector(layer, index).detach().view(1, 1, -1)
        tail = lm.arch.mlp_tail(lm.blocks[layer]) if lm.arch.mlp_tail is not None else None
        vectors.append(tail(v) if tail is not None else v)
    if not vectors:
        return torch.zeros(0, lm.arch.unembed(lm.model).weight.shape[0])  # the result: float32 on the CPU
    return lm.logits(torch.cat(vectors, dim=1)).float()[0].cpu()


def describe_neurons(lm: LanguageModel, neurons: Sequence[tuple[int, int]], k: int = 10,
                     batch: int = 256) -> list[dict]:
    """For each neuron, the ``k`` tokens its value vector promotes and suppresses most.

    Returns:
        ``[{"layer", "index", "promoted": [[token, logit], ...], "suppressed": [[token, logit], ...]}]`` in the
        order of ``neurons`` (promoted: largest logits first; suppressed: smallest first).

    Example:
        >>> describe_neurons(lm, [(20, 1234)], k=5)[0]["promoted"]
    """
    out = []
    for start in range(0, len(neurons), batch):
        chunk = list(neurons[start:start + batch])
        logits = value_logits(lm, chunk)
        top, bottom = torch.topk(logits, k, dim=-1), torch.topk(-logits, k, dim=-1)
        for row, (layer, index) in enumerate(chunk):
            out.append({"layer": int(layer), "index": int(index),
                        "promoted": [[lm.tokenizer.decode([int(t)]), float(v)]
                                     for v, t in zip(top.values[row], top.indices[row])],
                        "suppressed": [[lm.tokenizer.decode([int(t)]), float(-v)]
                                       for v, t in zip(bottom.values[row], bottom.indices[row])]})
    return out


@torch.no_grad()
def activation_stats(lm: LanguageModel, layer: int, index: int, prompts: Sequence[str]) -> dict:
    """The neuron's activation at the last position of each prompt: mean, std, min, max, the share of positive
    values, and the median over prompts of |a| / (median |a| of its layer)."""
    seqs = [list(lm.encode(p).prompt_ids) for p in prompts]
    ids, mask = pad_right(lm, seqs)
    with trace_activations(lm, [layer]) as acts:
        lm.model(input_ids=ids, attention_mask=mask)
    rows = torch.arange(len(seqs), device=lm.device)
    last = torch.tensor([len(s) - 1 for s in seqs], device=lm.device)
    layer_acts = acts[layer][rows, last].float().cpu()  # [prompts, n_neurons]
    values = layer_acts[:, index]
    ratio = values.abs() / layer_acts.abs().median(dim=1).values.clamp_min(1e-12)
    return {"n_prompts": len(seqs), "mean": float(values.mean()), "std": float(values.std(unbiased=False)),
            "min": float(values.min()), "max": float(values.max()), "positive": float((values > 0).float().mean()),
            "ratio_to_layer_median": float(ratio.median())}


@torch.no_grad()
def activation_ratios(lm: LanguageModel, neurons: Sequence[tuple[int, int]], prompts: Sequence[str]) -> list[float]:
    """The activation ratio of each neuron (the module docstring; as ``activation_stats(...)["ratio_to_layer_median"]``)
    from one batched pass over ``prompts``, in the order of ``neurons``."""
    layers = sorted({int(layer) for layer, _ in neurons})
    if not layers:
        return []
    seqs = [list(lm.encode(p).prompt_ids) for p in prompts]
    ids, mask = pad_right(lm, seqs)
    with trace_activations(lm, layers) as acts:
        lm.model(input_ids=ids, attention_mask=mask)
    rows = torch.arange(len(seqs), device=lm.device)
    last = torch.tensor([len(s) - 1 for s in seqs], device=lm.device)
    out = []
    for layer, index in neurons:
        layer_acts = acts[layer][rows, last].float().cpu()  # [prompts, n_neurons]
        ratio = layer_acts[:, index].abs() / layer_acts.abs().median(dim=1).values.clamp_min(1e-12)
        out.append(float(ratio.median()))
    return out


def explain_ratio(ratio: float, where: str = "fact-free prompts") -> str:
    """An activation ratio in words, e.g. "|activation| is 211.7 x its layer's median on fact-free prompts: a
    massive activation (it fires on any input)"."""
    text = f"|activation| is {ratio:.1f} x its layer's median on {where}"
    if ratio >= MASSIVE_RATIO:
        return text + ": a massive activation (it fires on any input, so a large attribution says little about a fact)"
    if ratio >= 10:
        return text + ": well above its layer's typical neuron"
    return text + ": typical of its layer"
