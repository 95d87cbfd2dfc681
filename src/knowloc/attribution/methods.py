"""Attribution methods: their settings and their baselines.

All methods integrate the gradient of the objective F(x) = P(o | q; a^l <- x) (or log P) along a straight
path from a baseline b to the activation a of layer l at the last prompt position (docs/methods.md):

    Attr^l = (1/J) sum_j (a^l - b_j^l) * (1/m) sum_{k=1..m} dF(b_j^l + (k/m)(a^l - b_j^l)) / dx

- ig (Dai et al., 2022, "Knowledge Neurons in Pretrained Transformers"): J = 1, b = 0.
- sig (Enguehard, 2023, "Sequential Integrated Gradients"; on FFN activations as in Chen et al.'s code):
  b_j = the activation at the last position when prompt token j is replaced by a baseline token.
- amig (Chen et al., 2024, "Journey to the Center of the Knowledge Neurons"): J = 1, b = mean last-position
  activation over neutral reference prompts.
- grad_x_act: m = 1, b = 0, i.e. a * dF(a)/dx (what EasyEdit runs for KN on LLaMA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from knowloc.attribution.cache import engine_cache
from knowloc.data import load_amig_reference_prompts
from knowloc.errors import KnowlocError
from knowloc.models.hooks import trace_activations
from knowloc.models.lm import Encoding, LanguageModel
from knowloc.models.scoring import pad_right

METHODS = ("ig", "sig", "amig", "grad_x_act")
OBJECTIVES = ("prob", "logprob")
BASELINE_TOKENS = ("eos", "pad", "unk")


@dataclass(frozen=True)
class MethodConfig:
    method: str = "ig"
    steps: int = 20
    objective: str = "prob"
    baseline_token: str = "eos"
    reference_prompts: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise KnowlocError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise KnowlocError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.objective not in OBJECTIVES:
            raise KnowlocError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.baseline_token not in BASELINE_TOKENS:
            raise KnowlocError(f"unknown baseline token {self.baseline_token!r}; choose one of "
                               f"{', '.join(BASELINE_TOKENS)}")

    @property
    def effective_steps(self) -> int:
        return 1 if self.method == "grad_x_act" else self.steps

    def describe_baseline(self) -> str:
        if self.method == "sig":
            return f"sig: last-position activation with each prompt token replaced by {self.baseline_token}"
        if self.method == "amig":
            n = len(self.reference_prompts) if self.reference_prompts else "the default"
            return f"amig: mean last-position activation over {n} neutral reference prompts"
        return "zero activation"


def baseline_token_id(lm: LanguageModel, which: str) -> int:
    token_id = getattr(lm.tokenizer, f"{which}_token_id", None)
    if token_id is None:
        raise KnowlocError(f"the tokenizer of {lm.name} has no {which} token; choose another --baseline-token")
    return int(token_id)


def sig_positions(lm: LanguageModel, enc: Encoding) -> list[int]:
    """Prompt positions that SIG replaces: all, except a BOS token the tokenizer added itself."""
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    first = 1 if bos is not None and len(enc.prompt_ids) > 1 and enc.prompt_ids[0] == bos else 0
    return list(range(first, len(enc.prompt_ids)))


def reference_prompts(config: MethodConfig) -> tuple[str, ...]:
    if config.reference_prompts:
        return config.reference_prompts
    return tuple(load_amig_reference_prompts())


@torch.no_grad()
def last_position_activations(lm: LanguageModel, sequences: list[list[int]]) -> torch.Tensor:
    """Activations [len(sequences), n_layers, n_neurons] at each sequence's last token, batched with right
    padding (exact: in a causal model padding after the last token changes nothing before it)."""
    ids, mask = pad_right(lm, sequences)
    with trace_activations(lm) as acts:
        lm.model(input_ids=ids, attention_mask=mask)
    rows = torch.arange(len(sequences), device=lm.device)
    last = torch.tensor([len(s) - 1 for s in sequences], device=lm.device)
    return torch.stack([acts[layer][rows, last] for layer in range(lm.n_layers)], dim=1)


def baselines(lm: LanguageModel, enc: Encoding, config: MethodConfig) -> torch.Tensor:
    """Baselines [J, n_layers, n_neurons] for one query (batched; the reference computes them one by one)."""
    if config.method in ("ig", "grad_x_act"):
        return torch.zeros(1, lm.n_layers, lm.n_neurons, device=lm.device, dtype=lm.dtype)
    if config.method == "amig":
        prompts = reference_prompts(config)
        key = ("amig", lm.site, prompts)
        cached = engine_cache(lm).baselines
        if key not in cached:
            seqs = [list(lm.encode(p).prompt_ids) for p in prompts]
            cached[key] = last_position_activations(lm, seqs).mean(dim=0, keepdim=True)
        return cached[key]
    token = baseline_token_id(lm, config.baseline_token)
    seqs = []
    for j in sig_positions(lm, enc):
        seq = list(enc.prompt_ids)
        seq[j] = token
        seqs.append(seq)
    return last_position_activations(lm, seqs)


def n_baselines(lm: LanguageModel, enc: Encoding, config: MethodConfig) -> int:
    """J, the number of baselines :func:`baselines` gives the query (without computing them): one for IG,
    grad x act and AMIG, one per replaced prompt position for SIG."""
    return len(sig_positions(lm, enc)) if config.method == "sig" else 1


def objective(logits: torch.Tensor, target_ids: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-row objective from logits [rows, n_target, vocab] and gold ids [n_target]: the mean over target
    tokens (teacher-forced) of P(token) (kind="prob") or of log P(token) (kind="logprob"), in float32.

    Used forward only (the completeness check, under ``torch.no_grad()``); the engine differentiates its own
    objective (:mod:`knowloc.attribution.engine`)."""
    logits32 = logits.float()
    index = target_ids.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    if kind == "logprob":  # log_softmax at the gold ids without underflow
        return (logits32.gather(-1, index).squeeze(-1) - torch.logsumexp(logits32, dim=-1)).mean(dim=-1)
    return torch.softmax(logits32, dim=-1).gather(-1, index).squeeze(-1).mean(dim=-1)  # [rows]
