"""The objective's gradient through the unembedding, written out by hand for all rows at once."""

from __future__ import annotations

import torch

from knowloc.attribution.cache import engine_cache
from knowloc.models.lm import LanguageModel

UNEMBED_CHUNK_BYTES = 256 * 2**20


def unembedding_gradient(lm: LanguageModel, hidden: torch.Tensor, target: torch.Tensor,
                         kind: str) -> tuple[torch.Tensor, float]:
    """dF/d(last block output) for every row, with the unembedding's gradient written out by hand, and F of
    row 0.

    F = mean_t P(o_t) (or log P): dF/dz = c (e_o - p) per target position with c = P(o_t)/T (or 1/T), z the
    logits (times 1 - tanh^2 under Gemma's soft-capping). Logits go into a reused buffer, in row chunks of at
    most UNEMBED_CHUNK_BYTES; only the final norm is differentiated by autograd.

    hidden: the last block's output [rows, n_target, d_model] (detached); target: gold ids [n_target].
    Returns the gradient [rows, n_target, d_model] (the model's dtype) and F of row 0."""
    rows, n_target, _ = hidden.shape
    head = lm.arch.unembed(lm.model)
    weight, bias = head.weight, getattr(head, "bias", None)  # [vocab, d_model], [vocab] or None
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    vocab = weight.shape[0]
    with torch.enable_grad():
        leaf = hidden.detach().requires_grad_(True)  # [rows, n_target, d_model]
        normed = lm.arch.final_norm(lm.model)(leaf)  # [rows, n_target, d_model]
    flat = normed.detach().reshape(rows * n_target, -1)  # [rows * n_target, d_model]
    gold = target.repeat(rows).view(-1, 1)  # the gold id of each (row, target position) [rows * n_target, 1]
    grad_flat = torch.empty(flat.shape, device=flat.device, dtype=torch.float32)  # [rows * n_target, d_model]
    step = max(n_target, UNEMBED_CHUNK_BYTES // (vocab * 4))
    value = None
    for start in range(0, flat.shape[0], step):
        part = flat[start:start + step]  # [chunk, d_model]
        z = engine_cache(lm).scratch(part.shape[0], vocab, part.device)  # logits, then dF/dz [chunk, vocab] float32
        if weight.dtype == torch.float32:
            torch.mm(part, weight.t(), out=z)
        else:
            z.copy_(part @ weight.t())
        if bias is not None:
            z += bias.float()
        squash = None  # tanh(z / cap) [chunk, vocab]
        if cap:
            squash = torch.tanh(z / cap)
            z.copy_(squash * cap)
        z.sub_(z.amax(dim=-1, keepdim=True))
        if start == 0:  # row 0's objective: mean_t of P(o_t) or of log P(o_t) = z_o - logsumexp(z)
            gold_logit = z[:n_target].gather(-1, gold[:n_target]).squeeze(-1)  # [n_target]
        z.exp_()
        total = z.sum(dim=-1, keepdim=True)  # [chunk, 1]
        if start == 0:
            log_p = gold_logit - total[:n_target, 0].log()  # [n_target]
            value = float((log_p if kind == "logprob" else log_p.exp()).mean())
        z.div_(total)  # z is now the softmax p
        coef = torch.full((part.shape[0], 1), 1.0 / n_target, device=z.device)  # c [chunk, 1]
        if kind == "prob":
            coef = coef * z.gather(-1, gold[start:start + step])
        z.mul_(-coef).scatter_add_(-1, gold[start:start + step], coef)  # dF/dz = c (e_o - p)
        if squash is not None:
            z.mul_(1 - squash.square())
        grad_flat[start:start + step] = z @ weight.float() if weight.dtype != torch.float32 else torch.mm(z, weight)
    (grad,) = torch.autograd.grad(normed, leaf, grad_outputs=grad_flat.view_as(normed).to(normed.dtype))
    return grad, value
