"""The straightforward reference: one layer at a time, full sequence, as EleutherAI's knowledge-neurons does.

For tests and the benchmark only. For each layer l it runs the whole prompt (plus teacher-forced target) for a
batch of all integration points with the activation at the last prompt position patched, computes the full
logits and back-propagates with plain autograd through ``log_softmax`` and ``gather`` (none of the fast
engine's hand-written gradients, KV-cache replay or staircase batching), so a wrong formula in the engine
cannot hide in a shared helper. Baselines are also computed one prompt at a time. Slow by design.
"""

from __future__ import annotations

import torch

from knowloc.attribution.methods import MethodConfig, baseline_token_id, reference_prompts, sig_positions
from knowloc.models.hooks import hook_sites, trace_activations
from knowloc.models.lm import Encoding, LanguageModel


@torch.no_grad()
def _last_activations(lm: LanguageModel, ids: list[int]) -> torch.Tensor:
    with trace_activations(lm) as acts:
        lm.model(input_ids=torch.tensor([ids], device=lm.device))
    return torch.stack([acts[layer][0, -1] for layer in range(lm.n_layers)]).float()


def _baselines(lm: LanguageModel, enc: Encoding, config: MethodConfig) -> torch.Tensor:
    if config.method in ("ig", "grad_x_act"):
        return torch.zeros(1, lm.n_layers, lm.n_neurons, device=lm.device)
    if config.method == "amig":
        acts = [_last_activations(lm, list(lm.encode(p).prompt_ids)) for p in reference_prompts(config)]
        return torch.stack(acts).mean(dim=0, keepdim=True)
    token = baseline_token_id(lm, config.baseline_token)
    rows = []
    for j in sig_positions(lm, enc):
        ids = list(enc.prompt_ids)
        ids[j] = token
        rows.append(_last_activations(lm, ids))
    return torch.stack(rows)


def plain_objective(logits: torch.Tensor, target_ids: torch.Tensor, kind: str) -> torch.Tensor:
    """Per row: the mean over target tokens of P(token) ("prob") or log P(token) ("logprob"), from logits
    [rows, n_target, vocab] by ``log_softmax`` + ``gather`` (autograd differentiates it)."""
    index = target_ids.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, index).squeeze(-1)
    return (logp if kind == "logprob" else logp.exp()).mean(dim=-1)


def attribute_reference(lm: LanguageModel, enc: Encoding, config: MethodConfig,
                        layers: list[int] | None = None) -> torch.Tensor:
    """Scores [n_layers, n_neurons] (float32, CPU), one layer at a time."""
    base = _baselines(lm, enc, config).to(lm.device)
    clean = _last_activations(lm, list(enc.prompt_ids)).to(lm.device)
    steps = config.effective_steps
    alphas = torch.arange(1, steps + 1, device=lm.device, dtype=torch.float32) / steps
    ids = torch.tensor([enc.input_ids], device=lm.device)
    target = torch.tensor(enc.target_ids, device=lm.device)
    pos = enc.last_pos
    scores = torch.zeros(lm.n_layers, lm.n_neurons)  # the result: float32 on the CPU
    for layer in range(lm.n_layers) if layers is None else layers:
        b = base[:, layer]  # [J, N]
        x = (b.unsqueeze(1) + alphas.view(1, -1, 1) * (clean[layer] - b).unsqueeze(1)).reshape(-1, lm.n_neurons)
        x = x.to(lm.dtype).requires_grad_(True)

        def patch(act: torch.Tensor) -> torch.Tensor:
            act = act.clone()
            act[:, pos] = x
            return act

        with torch.enable_grad(), hook_sites(lm, {layer: patch}):
            logits = lm.model(input_ids=ids.expand(x.shape[0], -1)).logits
            values = plain_objective(logits[:, pos:pos + enc.n_target], target, config.objective)
            (grad,) = torch.autograd.grad(values.sum(), x)
        grad_mean = grad.float().view(b.shape[0], steps, -1).mean(dim=1)  # [J, N]
        scores[layer] = ((clean[layer] - b) * grad_mean).mean(dim=0).cpu()
    return scores
