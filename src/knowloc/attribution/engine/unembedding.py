"""The objective's gradient through the unembedding, written out by hand for all rows at once."""

from __future__ import annotations

import torch

from knowloc.attribution.cache import engine_cache
from knowloc.models.lm import LanguageModel

UNEMBED_CHUNK_BYTES = 256 * 2**20


def unembedding_gradient(lm: LanguageModel, hidden: torch.Tensor, targets: torch.Tensor,
                         kind: str) -> tuple[torch.Tensor, list[float]]:
    """dF/d(last block output) for every row, with the unembedding's gradient written out by hand, and F of
    each query's first row.

    F = mean_t P(o_t) (or log P): dF/dz = c (e_o - p) per target position with c = P(o_t)/T (or 1/T), z the
    logits (times 1 - tanh^2 under Gemma's soft-capping). Logits go into a reused buffer, in row chunks of at
    most UNEMBED_CHUNK_BYTES; only the final norm is differentiated by autograd.

    hidden: the last block's output [rows, n_target, d_model] (detached), the rows of Q queries query-major (Q
    runs of rows / Q); targets: each query's gold ids [Q, n_target], which its rows are scored against.
    Returns the gradient [rows, n_target, d_model] (the model's dtype) and F of each query's first row (its clean
    row in a staircase's first chunk), a list of Q floats."""
    rows, n_target, _ = hidden.shape
    n_query = targets.shape[0]
    head = lm.arch.unembed(lm.model)
    weight, bias = head.weight, getattr(head, "bias", None)  # [vocab, d_model], [vocab] or None
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    vocab = weight.shape[0]
    with torch.enable_grad():
        leaf = hidden.detach().requires_grad_(True)  # [rows, n_target, d_model]
        normed = lm.arch.final_norm(lm.model)(leaf)  # [rows, n_target, d_model]
    flat = normed.detach().reshape(rows * n_target, -1)  # [rows * n_target, d_model]
    gold = targets.unsqueeze(1).expand(n_query, rows // n_query, n_target).reshape(-1, 1)
    # the gold id of each (row, target position) [rows * n_target, 1]
    grad_flat = torch.empty(flat.shape, device=flat.device, dtype=torch.float32)  # [rows * n_target, d_model]
    log_p = torch.empty(rows * n_target, device=flat.device, dtype=torch.float32)  # log P(o_t) per (row, t)
    step = max(n_target, UNEMBED_CHUNK_BYTES // (vocab * 4))
    for start in range(0, flat.shape[0], step):
        part = flat[start:start + step]  # [chunk, d_model]
        part_gold = gold[start:start + step]  # [chunk, 1]
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
        gold_logit = z.gather(-1, part_gold).squeeze(-1)  # [chunk]
        z.exp_()
        total = z.sum(dim=-1, keepdim=True)  # [chunk, 1]
        log_p[start:start + step] = gold_logit - total[:, 0].log()  # log P(o_t) = z_o - logsumexp(z)
        z.div_(total)  # z is now the softmax p
        coef = torch.full((part.shape[0], 1), 1.0 / n_target, device=z.device)  # c [chunk, 1]
        if kind == "prob":
            coef = coef * z.gather(-1, part_gold)
        z.mul_(-coef).scatter_add_(-1, part_gold, coef)  # dF/dz = c (e_o - p)
        if squash is not None:
            z.mul_(1 - squash.square())
        grad_flat[start:start + step] = z @ weight.float() if weight.dtype != torch.float32 else torch.mm(z, weight)
    (grad,) = torch.autograd.grad(normed, leaf, grad_outputs=grad_flat.view_as(normed).to(normed.dtype))
    first = log_p.view(n_query, rows // n_query, n_target)[:, 0]  # each query's first row [Q, n_target]
    values = (first if kind == "logprob" else first.exp()).mean(dim=-1)  # [Q]
    return grad, values.tolist()
