"""IG's completeness check: the convergence delta, as captum reports it.

Integrated gradients satisfy completeness (Sundararajan et al. 2017): for layer l and baseline b,
``sum_i Attr^l_i = F(a^l) - F(b^l)`` as the number of steps m grows, where ``F(x)`` is the objective with the
last prompt position's activations of layer l set to x. knowloc reports, per layer,

    delta_l = sum_i Attr^l_i - mean_j (F(a^l) - F(b_j^l))

(``j`` over the method's baselines: one for ig / amig / grad_x_act, one per prompt token for sig). A Riemann
sum with m steps has an error of order 1/m, so |delta| shrinks as m grows; grad_x_act (m = 1) is not an
integrated gradient and its delta is large. ``F(b_j^l)`` for every layer and baseline comes from one batched
forward pass (row (j, l) patched at layer l only).
"""

from __future__ import annotations

import torch

from knowloc.attribution.methods import MethodConfig, baselines, objective
from knowloc.models.hooks import hook_sites
from knowloc.models.lm import Encoding, LanguageModel


@torch.no_grad()
def objective_at_baselines(lm: LanguageModel, enc: Encoding, config: MethodConfig,
                           batch_rows: int = 64) -> torch.Tensor:
    """``F(b_j^l)``: the objective with layer l's last-prompt-position activations set to baseline j, for every
    (j, l): ``[J, n_layers]`` float32 on CPU."""
    base = baselines(lm, enc, config)  # [J, L, N]
    n_base, n_layers = base.shape[0], lm.n_layers
    pairs = [(j, l) for j in range(n_base) for l in range(n_layers)]
    ids = torch.tensor([enc.input_ids], device=lm.device)
    target = torch.tensor(enc.target_ids, device=lm.device)
    pos = enc.last_pos
    out = torch.zeros(n_base, n_layers)  # the result: float32 on the CPU
    for start in range(0, len(pairs), batch_rows):
        chunk = pairs[start:start + batch_rows]

        def patcher(layer: int):
            rows = [r for r, (_, l) in enumerate(chunk) if l == layer]
            values = torch.stack([base[chunk[r][0], layer] for r in rows]) if rows else None

            def patch(act: torch.Tensor) -> torch.Tensor:
                act = act.clone()
                act[rows, pos] = values.to(act.dtype)
                return act
            return patch

        layers = sorted({l for _, l in chunk})
        with hook_sites(lm, {layer: patcher(layer) for layer in layers}):
            logits = lm.model(input_ids=ids.expand(len(chunk), -1)).logits
        values = objective(logits[:, pos:pos + enc.n_target], target, config.objective).float().cpu()
        for r, (j, l) in enumerate(chunk):
            out[j, l] = values[r]
    return out


def convergence_delta(lm: LanguageModel, enc: Encoding, config: MethodConfig, scores: torch.Tensor,
                      clean_value: float) -> torch.Tensor:
    """``delta_l = sum_i scores[l, i] - mean_j (F(a) - F(b_j^l))`` per layer, ``[n_layers]`` float32."""
    at_base = objective_at_baselines(lm, enc, config)
    return scores.float().sum(dim=1) - (clean_value - at_base).mean(dim=0)
