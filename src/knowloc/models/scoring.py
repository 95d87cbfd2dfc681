"""Batched next-token scoring of prompts (exact: right padding never changes earlier positions)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from knowloc.models.lm import LanguageModel


@dataclass(frozen=True)
class NextToken:
    top_ids: list[int]  # the k most likely next tokens, best first
    probs: torch.Tensor  # full next-token distribution [vocab] (float32, CPU)


def pad_right(lm: LanguageModel, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id sequences as one right-padded batch (ids, attention mask) on the model's device.

    Exact for causal models: padding after a sequence's last token changes nothing at its positions."""
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    width = max(len(s) for s in seqs)
    padded = [list(seq) + [pad] * (width - len(seq)) for seq in seqs]
    ones = [[1] * len(seq) + [0] * (width - len(seq)) for seq in seqs]
    ids = torch.tensor(padded, dtype=torch.long, device=lm.device)  # [batch, width]
    mask = torch.tensor(ones, dtype=torch.long, device=lm.device)  # [batch, width]
    return ids, mask


def pad_left(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id sequences as one left-padded batch (ids, attention mask) on ``device``: what ``generate`` needs
    to continue every row from its own last token."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in seqs], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long, device=device)
    return ids, mask  # [batch, width] each


@torch.no_grad()
def next_token_distributions(lm: LanguageModel, prompts: list[str], top_k: int = 5,
                             batch_size: int = 32) -> list[NextToken]:
    """Next-token distribution after each prompt, in batches."""
    out: list[NextToken] = []
    for start in range(0, len(prompts), batch_size):
        seqs = [list(lm.encode(p).prompt_ids) for p in prompts[start:start + batch_size]]
        ids, mask = pad_right(lm, seqs)
        logits = lm.model(input_ids=ids, attention_mask=mask).logits
        last = torch.tensor([len(s) - 1 for s in seqs], device=lm.device)
        probs = torch.softmax(logits[torch.arange(len(seqs), device=lm.device), last].float(), dim=-1).cpu()
        for row in probs:
            out.append(NextToken(top_ids=torch.topk(row, top_k).indices.tolist(), probs=row))
    return out


@torch.no_grad()
def greedy_continuations(lm: LanguageModel, prompts: list[str], n_tokens: int, batch_size: int = 32) -> list[str]:
    """The greedy continuation of ``n_tokens`` tokens after each prompt, decoded (the prompt left out).

    Prompts are left-padded into batches so that each row continues from its own last token; generation stops
    early only where every row of a batch has produced the end-of-text token.

    Example:
        >>> greedy_continuations(lm, ["The capital of France is"], 5)
        [' Paris. It is the']
    """
    tok = lm.tokenizer
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos or 0)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_left([list(lm.encode(p).prompt_ids) for p in prompts[start:start + batch_size]], pad,
                             lm.device)
        width = ids.shape[1]
        generated = lm.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n_tokens,
                                      pad_token_id=pad, num_beams=1, use_cache=True, top_k=None, top_p=None,
                                      temperature=None)
        out += [tok.decode(row[width:], skip_special_tokens=True) for row in generated.tolist()]
    return out
